"""send --exclude, --exclude-from and -x: what is left out, counted in the summary."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_rawsend


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    for d in ("a/build", "b", "build"):
        (src / d).mkdir(parents=True)
    for f in ("a/x.o", "a/x.c", "a/build/y.c", "b/z.c", "build/w.c", "top.o"):
        (src / f).write_bytes(f.encode())
    return src


def _sent(tmp_path, tree, *args):
    out = tmp_path / "s.rs"
    proc = run_rawsend("send", *args, "-o", str(out), str(tree))
    assert proc.returncode == 0, proc.stderr
    listed = run_rawsend("list", str(out), check=True).stdout.decode().splitlines()
    return proc.stderr.decode(), listed


def test_exclude_matches_base_names_and_relative_paths_and_is_counted(tmp_path, tree):
    err, listed = _sent(tmp_path, tree, "--exclude", "*.o", "--exclude", "a/build")
    assert listed == ["./", "a/", "a/x.c", "b/", "b/z.c", "build/", "build/w.c"]
    assert "; 3 paths excluded" in err


def test_a_leading_slash_anchors_the_pattern_at_the_source(tmp_path, tree):
    _, listed = _sent(tmp_path, tree, "--exclude", "/build")
    assert "build/" not in listed and "a/build/" in listed and "a/build/y.c" in listed
    _, listed = _sent(tmp_path, tree, "--exclude", "build")
    assert not any("build" in p for p in listed)


def test_exclude_from_reads_patterns_skipping_blanks_and_comments(tmp_path, tree):
    patterns = tmp_path / "ex"
    patterns.write_text("# objects\n*.o\n\nb\n")
    err, listed = _sent(tmp_path, tree, "--exclude-from", str(patterns))
    assert listed == ["./", "a/", "a/build/", "a/build/y.c", "a/x.c", "build/", "build/w.c"]
    assert "; 3 paths excluded" in err


def test_a_missing_exclude_file_is_a_local_problem(tmp_path, tree):
    proc = run_rawsend("send", "--exclude-from", str(tmp_path / "nope"), "-o", str(tmp_path / "s.rs"), str(tree))
    assert proc.returncode == 3 and b"cannot read the exclude file" in proc.stderr
    assert not (tmp_path / "s.rs").exists()


def test_nothing_excluded_says_nothing(tmp_path, tree):
    err, _ = _sent(tmp_path, tree)
    assert "excluded" not in err


@pytest.fixture
def mounted(tree):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tree / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    (mnt / "inside").write_bytes(b"other fs")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_one_file_system_sends_a_mount_point_empty_with_a_note(tmp_path, tree, mounted):
    err, listed = _sent(tmp_path, tree, "-x")
    assert "mnt/" in listed and "mnt/inside" not in listed
    assert f"note: {mounted}: directory is on another filesystem; sent empty (--one-file-system)" in err
    _, listed = _sent(tmp_path, tree)
    assert "mnt/inside" in listed
