"""send -p PARENT_SNAP SNAP: the kernel's diff between read-only btrfs snapshots as a rawsend
incremental stream.  A full tracked send of the first snapshot, then -p incrementals, received
into a plain directory (on btrfs, so compressed extents land as they were), must give the
snapshot's tree: contents, metadata, hard links, and the changed compressed extents byte for
byte.  Bad parents are refused with typed errors.  Needs root and btrfs-progs (else skipped)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from rawsend import btrfs
from rawsend.cli import main
from tests import treeutil
from tests.btrfs_fixtures import btrfs_mount, require_btrfs


def _btrfs(*argv) -> str:
    return subprocess.run(["btrfs", *map(str, argv)], check=True, capture_output=True, text=True,
                          timeout=300).stdout


def _rawsend(*argv, input_path=None) -> subprocess.CompletedProcess:
    stdin = open(input_path, "rb") if input_path else subprocess.DEVNULL
    try:
        return subprocess.run([sys.executable, "-m", "rawsend", *map(str, argv)], stdin=stdin, capture_output=True,
                              timeout=300)
    finally:
        if input_path:
            stdin.close()


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


def _fill(sv: Path) -> None:
    os.mkdir(sv / "d")
    for i in range(40):
        (sv / "d" / f"f{i}").write_bytes(b"file %d\n" % i * (i * 300 + 1))
    (sv / "log").write_bytes(b"".join(b"log line %08d\n" % i for i in range(200_000)))  # zstd extents
    (sv / "rand").write_bytes(os.urandom(600_000))
    with open(sv / "sparse", "wb") as f:
        f.write(b"head" * 5000)
        f.seek(4 << 20)
        f.write(b"tail" * 5000)
    os.link(sv / "d" / "f1", sv / "hard")
    os.symlink("d/f2", sv / "sym")
    os.mkfifo(sv / "fifo")
    os.setxattr(sv / "d" / "f3", "user.a", b"one")
    os.mkdir(sv / "a")
    os.mkdir(sv / "b")
    (sv / "a" / "in-a").write_bytes(b"A" * 5000)
    (sv / "b" / "in-b").write_bytes(b"B" * 5000)
    os.mkdir(sv / "ro")
    (sv / "ro" / "x").write_bytes(b"x")
    os.chmod(sv / "ro", 0o555)


def _change(sv: Path, round_: int) -> None:
    """Renames (a swap, a move into a new directory), deletes, overwrites in the middle of a
    compressed file, an append, truncates, a punched hole, a new link, modes, owners, xattrs, a clone."""
    os.rename(sv / "a", sv / "t")  # a and b swapped: a rename cycle for the kernel
    os.rename(sv / "b", sv / "a")
    os.rename(sv / "t", sv / "b")
    os.mkdir(sv / f"new{round_}")
    os.rename(sv / "d" / f"f{10 + round_}", sv / f"new{round_}" / "moved")
    if round_ == 2:
        os.rename(sv / "new1", sv / "new2" / "new1")  # a directory moved into a new one
    (sv / f"new{round_}" / "fresh").write_bytes(b"fresh %d\n" % round_ * 1000)
    os.unlink(sv / "d" / f"f{20 + round_}")
    with open(sv / "log", "r+b") as f:
        f.seek((1 << 20) + round_ * 4096)
        f.write(b"X%d" % round_ * 30_000)
    with open(sv / "rand", "ab") as f:
        f.write(os.urandom(70_000))
    os.truncate(sv / "d" / "f30", 1000)
    os.truncate(sv / "d" / "f31", 300_000)
    fd = os.open(sv / "sparse", os.O_RDWR)
    try:
        _punch(fd, 4096, 8192)
    finally:
        os.close(fd)
    os.link(sv / "d" / "f2", sv / f"link{round_}")
    os.chmod(sv / "d" / "f8", 0o600)
    os.chown(sv / "d" / "f9", 1234, 5678)
    os.setxattr(sv / "d" / "f7", "user.b", b"two %d" % round_)
    os.removexattr(sv / "d" / "f3", "user.a") if round_ == 1 else os.setxattr(sv / "d" / "f3", "user.a", b"1")
    os.unlink(sv / "sym")
    os.symlink(f"target{round_}", sv / "sym")
    os.chmod(sv / "ro", 0o755)
    (sv / "ro" / f"y{round_}").write_bytes(b"y")
    os.chmod(sv / "ro", 0o555)
    # a reflinked range: the kernel sends CLONE, which goes out as the range's data
    subprocess.run(["cp", "--reflink=always", str(sv / "log"), str(sv / f"clone{round_}")], check=True)


def _punch(fd: int, offset: int, length: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
    if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, ctypes.c_long(offset),
                      ctypes.c_long(length)) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """(mount, [s1, s2, s3] read-only snapshots of one subvolume, the subvolume, STATE with s1's full stream,
    the full stream)."""
    require_btrfs()
    work = tmp_path_factory.mktemp("snapshot-send")
    with btrfs_mount(work, options="compress=zstd", size="1G") as mnt:
        sv = mnt / "sv"
        _btrfs("subvolume", "create", sv)
        _fill(sv)
        snaps = []
        for n in (1, 2, 3):
            if n > 1:
                _change(sv, n - 1)
            _btrfs("subvolume", "snapshot", "-r", sv, mnt / f"s{n}")
            snaps.append(mnt / f"s{n}")
        state, full = mnt / "STATE", mnt / "full.rs"
        _ok(_rawsend("send", "--state", state, "-o", full, snaps[0]))
        yield mnt, snaps, sv, state, full


def _tree(path: Path) -> dict:
    return treeutil.snapshot(path, blocks=False)


def _encoded(path: Path) -> list[tuple]:
    """(offset, compression, on-disk bytes) of each compressed extent of a file."""
    out = []
    buf = bytearray(btrfs.MAX_ENCODED)
    fd = os.open(path, os.O_RDONLY)
    try:
        for ext in btrfs.fiemap(fd, 0, os.fstat(fd).st_size):
            if ext.flags & btrfs.FIEMAP_EXTENT_ENCODED:
                e = btrfs.encoded_read(fd, ext.logical, buf)
                out.append((e.offset, e.compression, bytes(e.data)))
    finally:
        os.close(fd)
    return out


def _receive(dest: Path, *streams, key=None) -> None:
    """Into a plain directory, each incremental applied in place (a subvolume receive has its own tests)."""
    for s in streams:
        extra = ("--key-file", key) if key else ()
        _ok(_rawsend("receive", "--no-subvolume", "--preserve-special", *extra, dest, input_path=s))


def test_incremental_chain_gives_each_snapshot(lineage, tmp_path):
    mnt, (s1, s2, s3), sv, state, full = lineage
    inc2, inc3 = mnt / "inc2.rs", mnt / "inc3.rs"
    _ok(_rawsend("send", "--state", state, "-p", s1, "-o", inc2, s2))
    _ok(_rawsend("send", "--state", state, "-p", s2, "-o", inc3, s3))
    dest = mnt / "recv-plain"  # on btrfs: compressed extents are written as they came
    _receive(dest, full)
    assert treeutil.diff(_tree(dest), _tree(s1)) == []
    _receive(dest, inc2)
    assert treeutil.diff(_tree(dest), _tree(s2)) == []
    _receive(dest, inc3)
    assert treeutil.diff(_tree(dest), _tree(s3)) == []
    # the overwritten range of the compressed log went out and landed as the snapshot stores it
    changed = [x for x in _encoded(s3 / "log") if (1 << 20) <= x[0] < (1 << 20) + 200_000]
    assert changed and all(c == btrfs.COMPRESSION_ZSTD for _, c, _ in changed)
    got = {x[0]: x for x in _encoded(dest / "log")}
    assert [got.get(x[0]) for x in changed] == changed


def test_incremental_encrypted(lineage, tmp_path):
    mnt, (s1, s2, s3), sv, state, full = lineage
    key = tmp_path / "key"
    _ok(_rawsend("keygen", "-o", key))
    inc2 = tmp_path / "inc2.rs"
    _ok(_rawsend("send", "--state", state, "-p", s1, "--encrypt", key, "-o", inc2, s2))
    # the names and data are sealed: a changed name is not in the clear
    assert b"fresh" not in inc2.read_bytes() and b"new1" not in inc2.read_bytes()
    dest = mnt / "recv-enc"
    _receive(dest, full)
    _receive(dest, inc2, key=key)
    assert treeutil.diff(_tree(dest), _tree(s2)) == []


def test_snapshot_note_names_both_snapshots(lineage, tmp_path):
    mnt, (s1, s2, s3), sv, state, full = lineage
    inc = tmp_path / "inc.rs"
    _ok(_rawsend("send", "--state", state, "-p", s1, "-o", inc, s2))
    dumped = _ok(_rawsend("dump", inc)).stdout.decode()
    line = next(line for line in dumped.splitlines() if " snapshot " in line)

    def show(path):
        text = _btrfs("subvolume", "show", path)
        u = re.search(r"^\s*UUID:\s*(\S+)", text, re.M).group(1)
        return u, int(re.search(r"Generation:\s*(\d+)", text).group(1))

    (u2, _), (u1, _) = show(s2), show(s1)
    assert f"uuid={uuid.UUID(u2)}" in line and f"parent_uuid={uuid.UUID(u1)}" in line
    full_line = next(line for line in _ok(_rawsend("dump", full)).stdout.decode().splitlines() if " snapshot " in line)
    assert f"uuid={uuid.UUID(u1)}" in full_line and "parent_uuid" not in full_line


def _refused(argv) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in argv])
    return result.exit_code, result.output


def test_parent_not_sent_from_state(lineage, tmp_path):
    mnt, (s1, s2, s3), sv, state, full = lineage
    other = mnt / "s-unsent"
    if not other.exists():
        _btrfs("subvolume", "snapshot", "-r", sv, other)
    code, out = _refused(["send", "--state", state, "-p", other, "-o", tmp_path / "x.rs", s3])
    assert code == 3
    assert "-p names a snapshot STATE holds no stream of" in out and "STATE holds streams of the snapshots" in out
    assert not (tmp_path / "x.rs").exists()


def test_parent_not_read_only(lineage, tmp_path):
    mnt, (s1, s2, s3), sv, state, full = lineage
    code, out = _refused(["send", "--state", state, "-p", sv, "-o", tmp_path / "x.rs", s2])
    assert code == 3
    assert "btrfs snapshot is not read-only" in out and str(sv) in out


def test_parent_of_another_subvolume(lineage, tmp_path):
    mnt, (s1, s2, s3), sv, state, full = lineage
    other = mnt / "other"
    if not other.exists():
        _btrfs("subvolume", "create", other)
        (other / "f").write_bytes(b"f")
        _btrfs("subvolume", "snapshot", "-r", other, mnt / "other-s1")
    code, out = _refused(["send", "--state", state, "-p", mnt / "other-s1", "-o", tmp_path / "x.rs", s2])
    assert code == 3
    assert "btrfs snapshots are not of one subvolume" in out


def test_parent_not_a_subvolume(lineage, tmp_path):
    mnt, (s1, s2, s3), sv, state, full = lineage
    code, out = _refused(["send", "--state", state, "-p", s1 / "d", "-o", tmp_path / "x.rs", s2])
    assert code == 3
    assert "not the top directory of a btrfs subvolume" in out


def test_p_needs_state(lineage, tmp_path):
    mnt, (s1, s2, s3), sv, state, full = lineage
    code, out = _refused(["send", "-p", s1, "-o", tmp_path / "x.rs", s2])
    assert code == 2
    assert "-p needs --state" in out


def test_the_wrong_base_is_refused_by_the_receiver(lineage, tmp_path):
    """A stream against s2 applied to a tree at s1 names a base the receiver does not hold."""
    mnt, (s1, s2, s3), sv, state, full = lineage
    inc3 = tmp_path / "inc3.rs"
    _ok(_rawsend("send", "--state", state, "-p", s2, "-o", inc3, s3))
    dest = mnt / "recv-wrong-base"
    _receive(dest, full)
    before = _tree(dest)
    proc = _rawsend("receive", "--no-subvolume", dest, input_path=inc3)
    assert proc.returncode == 3, proc.stderr
    assert b"base" in proc.stderr
    assert treeutil.diff(_tree(dest), before) == []
