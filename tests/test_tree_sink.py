"""The tree sink's directory descriptors: links between deep directories, and the cost of
reaching a directory whatever order the stream names them in."""

from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from rawsend.pipeline import receive, send
from rawsend.sinks.dirfds import CACHE_SIZE, DirCache, openat2_works
from rawsend.sinks.tree import TreeSink
from rawsend.sources.tree import TreeSource
from rawsend.stream.records import Link
from tests.conftest import pipeline, run_rawsend
from tests.hostile import mkdir, mkfile, plain_extent, symlink, tree_stream

DEPTH = CACHE_SIZE + 6  # each chain is deeper than the descriptor cache holds


@dataclass
class _N:
    parent_id: int
    name: bytes


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


# -- cost: directory opens per record -----------------------------------------------------------

def _alternating(depth: int, files: int) -> tuple[bytes, int, int]:
    """Two chains ``depth`` deep, then ``files`` files alternating between their tips.

    (stream, directories, files).  Reached one level at a time from a cache smaller than a
    chain, every file would reopen the other chain from the top.
    """
    records, tips, next_id = [], [], 2
    for top in (b"a", b"b"):
        parent = 1
        for i in range(depth):
            records.append(mkdir(next_id, parent, top if i == 0 else b"d%d" % i))
            parent, next_id = next_id, next_id + 1
        tips.append(parent)
    for i in range(files):
        records.append(mkfile(next_id, tips[i % 2], b"f%d" % i))
        next_id += 1
    data, _ = tree_stream(*records)
    return data, 2 * depth + 1, files


class _Counting:
    """Wraps a TreeSink: the most directory opens any one record (or the commit) cost."""

    def __init__(self, sink):
        self.sink, self.worst, self.commit_opens = sink, 0, 0

    def __getattr__(self, name):
        method = getattr(self.sink, name)
        if name not in ("create", "link", "xattr", "extent", "extent_encoded"):
            return method

        def counted(*args):
            before = self.sink.dir_opens
            method(*args)
            self.worst = max(self.worst, self.sink.dir_opens - before)
        return counted

    def commit(self):
        before = self.sink.dir_opens
        self.sink.commit()
        self.commit_opens = self.sink.dir_opens - before


def test_directory_opens_per_record_are_bounded_whatever_the_order(tmp_path):
    data, dirs, files = _alternating(300, 400)
    sink = _Counting(TreeSink(tmp_path / "dest", sync=False))
    receive(io.BytesIO(data), sink)
    assert sink.worst <= 2, f"one record opened {sink.worst} directories"
    assert sink.commit_opens <= dirs  # each directory at most once to set its metadata
    assert sink.sink.dir_opens <= 2 * (dirs + files)
    tips = [tmp_path / "dest" / top / Path(*[f"d{i}" for i in range(1, 300)]) for top in ("a", "b")]
    assert sorted(os.listdir(tips[0])) == sorted(f"f{i}" for i in range(0, 400, 2))
    assert sorted(os.listdir(tips[1])) == sorted(f"f{i}" for i in range(1, 400, 2))


@pytest.fixture(params=[True, False], ids=["openat2", "one-level-at-a-time"])
def open_mode(request, monkeypatch):
    """Both ways of reaching a directory: openat2 of a path, and the fallback without it."""
    if request.param and not openat2_works():
        pytest.skip("openat2 is not available here")
    monkeypatch.setattr(DirCache, "use_openat2", request.param)
    return request.param


def test_links_between_deep_directories_either_way(tmp_path, open_mode):
    src, dest = tmp_path / "src", tmp_path / "dest"
    target, link = _two_chains(src, "symlink")
    out = io.BytesIO()
    send(TreeSource(src), out.write, threads=1)
    receive(io.BytesIO(out.getvalue()), TreeSink(dest, sync=False))
    _assert_linked(dest, target, link)
    assert (dest / link.parent / "t").is_symlink()


def test_a_symlink_swapped_in_for_a_directory_is_not_followed(tmp_path, open_mode):
    """Defence in depth: a symlink where a received directory was is never resolved."""
    root = tmp_path / "root"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "elsewhere" / "c").mkdir(parents=True)
    nodes = {2: _N(1, b"a"), 3: _N(2, b"b"), 4: _N(3, b"c")}
    cache = DirCache(os.open(root, os.O_RDONLY | os.O_DIRECTORY), nodes)
    try:
        os.rename(root / "a" / "b", tmp_path / "b-moved")
        os.symlink(tmp_path / "elsewhere", root / "a" / "b")
        with pytest.raises(OSError) as info:
            cache.get(4)
        assert info.value.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)
    finally:
        cache.close()


def _walk(root: Path, names: list[bytes]) -> os.stat_result:
    """The directory root/names..., reached one level at a time (paths here pass PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        try:
            os.mkdir(name, dir_fd=fd)
        except FileExistsError:
            pass
        fd, old = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
        os.close(old)
    st = os.fstat(fd)
    os.close(fd)
    return st


def test_long_names_take_one_call_per_path_max(tmp_path):
    if not openat2_works():
        pytest.skip("openat2 is not available here")
    root = tmp_path / "root"
    root.mkdir()
    names = [bytes([97 + i % 26]) * 255 for i in range(40)]  # 16 names fit in one path: 3 calls
    expected = _walk(root, names)
    nodes = {2 + i: _N(1 + i, name) for i, name in enumerate(names)}
    cache = DirCache(os.open(root, os.O_RDONLY | os.O_DIRECTORY), nodes)
    try:
        assert os.fstat(cache.get(41)).st_ino == expected.st_ino
        assert cache.opens == 3
        # id 30 is reached from id 17, where the first call ended and which stayed cached
        assert os.fstat(cache.get(30)).st_ino == _walk(root, names[:29]).st_ino
        assert cache.opens == 4
    finally:
        cache.close()
