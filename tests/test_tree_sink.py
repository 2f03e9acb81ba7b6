"""The tree sink's directory descriptors: links between deep directories, and the cost of
reaching a directory whatever order the stream names them in."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rawsend.sinks.tree import DIR_FD_CACHE
from rawsend.stream.records import Link
from tests.conftest import pipeline, run_rawsend
from tests.hostile import mkdir, mkfile, plain_extent, symlink, tree_stream

DEPTH = DIR_FD_CACHE + 6  # each chain is deeper than the descriptor cache holds


def _chain(root: Path, depth: int) -> list[Path]:
    """root/z0/z1/.../z{depth-1}, every level returned."""
    levels, p = [], root
    for i in range(depth):
        p = p / f"z{i}"
        levels.append(p)
    levels[-1].mkdir(parents=True)
    return levels


def _two_chains(src: Path, decoy: str | None) -> tuple[Path, Path]:
    """src/a/... holds the file t; src/b/... holds w, a hard link to it.

    Every level of b also holds an entry named t (a file or a symlink) that sorts before the
    next level, so it is received before the link: a link looked up in the wrong directory of
    b finds it.
    """
    a = _chain(src / "a", DEPTH)
    b = _chain(src / "b", DEPTH)
    target = a[-1] / "t"
    target.write_bytes(b"the real file\n")
    for i, level in enumerate(b):
        if decoy == "file":
            (level / "t").write_bytes(f"decoy {i}\n".encode())
        elif decoy == "symlink":
            os.symlink(f"decoy-{i}", level / "t")
    os.link(target, b[-1] / "w")
    return target.relative_to(src), (b[-1] / "w").relative_to(src)


def _assert_linked(dest: Path, target: Path, link: Path) -> None:
    t, w = os.lstat(dest / target), os.lstat(dest / link)
    assert stat.S_ISREG(w.st_mode), "the link is not a regular file"
    assert (w.st_ino, w.st_nlink) == (t.st_ino, 2)
    assert (dest / link).read_bytes() == b"the real file\n"


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("key") / "k.key"
    assert run_rawsend("keygen", "-o", str(path)).returncode == 0
    return path


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("decoy", [None, "file", "symlink"])
def test_a_link_between_deep_directories_links_the_right_file(tmp_path, key, decoy, encrypted):
    src, dest = tmp_path / "src", tmp_path / "dest"
    target, link = _two_chains(src, decoy)
    send_args = ["--no-progress", str(src)] + (["--encrypt", str(key)] if encrypted else [])
    receive_args = ["--no-progress", "--no-sync", str(dest)] + (["--key-file", str(key)] if encrypted else [])
    sent, received = pipeline(send_args, receive_args)
    assert sent.returncode == 0, sent.stderr.decode()
    assert received.returncode == 0, received.stderr.decode()
    _assert_linked(dest, target, link)
    if decoy:
        assert (dest / link.parent / "t").is_symlink() == (decoy == "symlink")


def test_a_crafted_stream_cannot_link_a_symlink_decoy(tmp_path):
    """The same shape as a crafted stream: ids and records as a hostile sender would write them."""
    records, next_id = [], 2

    def add(rec):
        nonlocal next_id
        records.append(rec)
        next_id += 1

    chains = {}
    for top in (b"a", b"b"):
        parent = next_id
        add(mkdir(next_id, 1, top))
        for i in range(DEPTH):
            level = next_id
            add(mkdir(next_id, parent, b"z%d" % i))
            if top == b"b":
                add(symlink(next_id, level, b"t", b"decoy"))
            parent = level
        chains[top] = parent
        if top == b"a":
            file_id = next_id
            add(mkfile(file_id, parent, b"t", 4))
            records.append(plain_extent(file_id, 0, b"real"))
    records.append(Link(file_id, chains[b"b"], b"w"))
    data, _ = tree_stream(*records)
    stream, dest = tmp_path / "crafted.rs", tmp_path / "dest"
    stream.write_bytes(data)
    proc = run_rawsend("receive", "--no-progress", "--no-sync", "-f", str(stream), str(dest))
    assert proc.returncode == 0, proc.stderr.decode()
    tip = dest / "b" / Path(*[f"z{i}" for i in range(DEPTH)])
    assert not (tip / "w").is_symlink()
    assert (tip / "w").read_bytes() == b"real"
    real = dest / "a" / Path(*[f"z{i}" for i in range(DEPTH)]) / "t"
    assert os.lstat(tip / "w").st_ino == os.lstat(real).st_ino
