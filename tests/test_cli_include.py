"""receive --include: only matching paths, what is under a matching directory, and their parents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_rawsend


@pytest.fixture
def stream(tmp_path) -> Path:
    src = tmp_path / "src"
    for d in ("etc/app", "var/log", "home/u/docs"):
        (src / d).mkdir(parents=True)
    files = {"etc/app/conf": b"c", "etc/hosts": b"h", "var/log/x.log": b"l", "home/u/docs/a.txt": b"a",
             "home/u/b.txt": b"b"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    if _user_xattrs(src):
        os.setxattr(src / "home", "user.tag", b"kept")
    os.link(src / "etc/hosts", src / "var/hosts-link")
    out = tmp_path / "s.rs"
    run_rawsend("send", "-o", str(out), str(src), check=True)
    return out


def _user_xattrs(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
        return True
    except OSError:
        return False


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*"))


def _receive(tmp_path, stream, *patterns):
    dst = tmp_path / "dst"
    args = [a for p in patterns for a in ("--include", p)]
    proc = run_rawsend("receive", *args, "-f", str(stream), str(dst))
    assert proc.returncode == 0, proc.stderr
    return dst, proc.stderr.decode()


def test_include_restores_matching_files_and_their_parents_only(tmp_path, stream):
    dst, err = _receive(tmp_path, stream, "*.txt")
    assert _tree(dst) == ["home/", "home/u/", "home/u/b.txt", "home/u/docs/", "home/u/docs/a.txt"]
    assert (dst / "home/u/docs/a.txt").read_bytes() == b"a"
    assert "--include: 2 paths restored, " in err


def test_a_matching_directory_brings_everything_under_it(tmp_path, stream):
    dst, _ = _receive(tmp_path, stream, "/etc")
    assert _tree(dst) == ["etc/", "etc/app/", "etc/app/conf", "etc/hosts"]
    assert (dst / "etc/app/conf").read_bytes() == b"c"


def test_a_held_parent_gets_its_xattrs_when_created(tmp_path, stream):
    dst, _ = _receive(tmp_path, stream, "b.txt")
    if not _user_xattrs(tmp_path):
        pytest.skip("no user xattrs here")
    assert os.getxattr(dst / "home", "user.tag") == b"kept"


def test_a_hard_link_comes_with_its_first_name_or_is_named_in_a_warning(tmp_path, stream):
    dst, err = _receive(tmp_path, stream, "hosts", "hosts-link")
    assert _tree(dst) == ["etc/", "etc/hosts", "var/", "var/hosts-link"]
    assert os.stat(dst / "etc/hosts").st_ino == os.stat(dst / "var/hosts-link").st_ino
    import shutil
    shutil.rmtree(dst)
    dst, err = _receive(tmp_path, stream, "hosts-link")
    assert _tree(dst) == []  # var/ held back: nothing under it was restored
    assert "warning: hard link var/hosts-link (its data is under etc/hosts) not restored" in err


def test_include_with_store_is_a_usage_error(tmp_path, stream):
    proc = run_rawsend("receive", "--store", "--include", "x", "-f", str(stream), str(tmp_path / "st"))
    assert proc.returncode == 2 and b"--include cannot apply with --store" in proc.stderr
