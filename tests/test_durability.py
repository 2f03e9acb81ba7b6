"""receive makes durable what it wrote before the rename that makes DEST visible, and then DEST's
parent: an fsync of every file and directory of the tree, or (a receive of many files while
little is dirty on the system) one syncfs; never both, never sync, never nothing.

Watched with strace (the real system calls of the real command): -y shows the path behind each
fd, so every fsync can be matched to a file of the received tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rawsend.sinks import durable
from tests.conftest import rawsend_argv, run_rawsend

strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")

_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_UNFINISHED = re.compile(r"^(\d+)\s+(\w+)\((.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(-?\d+)")
_FD_PATH = re.compile(r"^-?\d+<(.*)>")
SYNCS = ("fsync", "fdatasync", "syncfs", "sync")


def _tree(src: Path) -> None:
    (src / "a" / "deep").mkdir(parents=True)
    (src / "a" / "deep" / "f.txt").write_bytes(b"deep data\n" * 100)
    (src / "top.bin").write_bytes(os.urandom(200_000))
    (src / "empty").write_bytes(b"")
    (src / "secret").write_bytes(b"nobody may read me\n")
    os.chmod(src / "secret", 0o000)  # fsynced before it is closed: it cannot be opened again
    os.link(src / "top.bin", src / "a" / "hard")
    os.symlink("top.bin", src / "sym")
    (src / "ro").mkdir()
    (src / "ro" / "inside").write_bytes(b"x")
    os.chmod(src / "ro", 0o555)


def _traced_receive(tmp_path: Path, src: Path, *extra: str):
    dest, log = tmp_path / "out" / "dest", tmp_path / "strace.log"
    (tmp_path / "out").mkdir()
    stream = run_rawsend("send", str(src), check=True).stdout
    proc = subprocess.run(["strace", "-f", "-qq", "-y", "-o", str(log),
                           "-e", "trace=" + ",".join([*SYNCS, "rename", "renameat", "renameat2"]),
                           *rawsend_argv("receive", *extra, str(dest))],
                          input=stream, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    return dest, _calls(log.read_text())


def _calls(log: str) -> list[tuple[str, str, int]]:
    """(name, arguments, result) in the order the calls returned; a call another thread
    interrupted in the log ("<unfinished ...>", "<... resumed>") is joined again."""
    calls, started = [], {}
    for line in log.splitlines():
        if m := _UNFINISHED.match(line):
            started[m.group(1)] = m.group(3)
        elif m := _RESUMED.match(line):
            calls.append((m.group(2), started.pop(m.group(1)) + m.group(3), int(m.group(4))))
        elif m := _CALL.match(line):
            calls.append((m.group(2), m.group(3), int(m.group(4))))
    assert not started, started
    return calls


def _below(path: str, root: str) -> str | None:
    return os.path.relpath(path, root) if path == root or path.startswith(root + "/") else None


def _inodes(dest: Path) -> dict[int, str]:
    """Every directory and regular file of the tree, by inode (of a file's hard links one name)."""
    wanted = {os.lstat(dest).st_ino: "."}
    for top, dirs, files in os.walk(dest):
        for n in dirs + files:
            p = os.path.join(top, n)
            if not os.path.islink(p):
                wanted.setdefault(os.lstat(p).st_ino, os.path.relpath(p, dest))
    return wanted


def _sorted_out(dest: Path, calls):
    """The one rename into place; the paths in the temporary tree fsynced before it; syncfs calls
    before it (the fd's path); paths fsynced after it."""
    renames = [i for i, c in enumerate(calls) if c[0].startswith("rename") and str(dest) in c[1]]
    assert len(renames) == 1, calls
    rename = renames[0]
    temp = re.search(r'"([^"]*\.dest\.rawsend-[^"]*)"', calls[rename][1]).group(1)
    assert not [c for c in calls if c[0] == "sync"], calls
    before, syncfs_before, after = set(), [], set()
    for i, (name, args, ret) in enumerate(calls):
        if name not in SYNCS:
            continue
        assert ret == 0, (name, args)
        path = _FD_PATH.match(args).group(1)
        rel = _below(path, temp)
        if name == "syncfs":
            assert i < rename and rel is not None, (name, args)
            syncfs_before.append(rel)
        elif rel is not None:
            assert i < rename, f"{rel} fsynced after the rename"
            before.add(rel)
        elif i > rename:
            after.add(path)
    return before, syncfs_before, after


@strace
def test_every_file_and_directory_is_fsynced_before_the_rename_and_no_syncfs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    dest, calls = _traced_receive(tmp_path, src)
    before, syncfs_calls, after = _sorted_out(dest, calls)
    assert syncfs_calls == []  # 9 files and directories: fewer than FSYNC_ALWAYS
    wanted = _inodes(dest)
    synced = {os.lstat(dest / rel).st_ino for rel in before}
    assert len(wanted) == 9 and synced >= set(wanted), [wanted[i] for i in set(wanted) - synced]
    assert after == {str(dest.parent)}
    assert (dest / "a" / "deep" / "f.txt").read_bytes() == b"deep data\n" * 100
    assert (dest / "top.bin").read_bytes() == (src / "top.bin").read_bytes()
    assert os.stat(dest / "secret").st_mode & 0o777 == 0
    assert os.stat(dest / "ro").st_mode & 0o777 == 0o555


@strace
def test_many_files_are_fsynced_each_or_by_one_syncfs_before_the_rename(tmp_path):
    src = tmp_path / "src"
    for d in range(3):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(durable.FSYNC_ALWAYS):
            (src / f"d{d}" / f"f{i}").write_bytes(b"%d/%d\n" % (d, i))
    dest, calls = _traced_receive(tmp_path, src)
    before, syncfs_calls, after = _sorted_out(dest, calls)
    wanted = _inodes(dest)
    assert len(wanted) == 4 + 3 * (durable.FSYNC_ALWAYS)
    if syncfs_calls:  # chosen from /proc/meminfo at the time: either way is right, not a mix
        assert syncfs_calls == ["."] and before == set(), (syncfs_calls, sorted(before)[:5])
    else:
        synced = {os.lstat(dest / rel).st_ino for rel in before}
        assert synced >= set(wanted), [wanted[i] for i in set(wanted) - synced][:5]
    assert after == {str(dest.parent)}
    assert (dest / "d2" / f"f{durable.FSYNC_ALWAYS - 1}").read_bytes() == \
        b"2/%d\n" % (durable.FSYNC_ALWAYS - 1)


@strace
def test_no_sync_makes_no_fsync_of_the_tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    dest, calls = _traced_receive(tmp_path, src, "--no-sync")
    assert not [c for c in calls if c[0] in SYNCS and "dest" in c[1]], calls
    assert (dest / "a" / "deep" / "f.txt").read_bytes() == b"deep data\n" * 100


def test_syncfs_only_for_many_files_and_little_dirty_data():
    def edge(entries):  # others' dirty bytes whose writeback costs what the fsyncs would
        return int(entries * durable.FSYNC_FILE_S * durable.WRITEBACK_BPS)

    n = durable.FSYNC_ALWAYS
    assert not durable.prefer_syncfs(n, 0)              # few files: always each file
    assert durable.prefer_syncfs(n + 1, 0)
    assert not durable.prefer_syncfs(n + 1, None)       # dirty data unknown: never wait for it
    assert durable.prefer_syncfs(n + 1, edge(n + 1) - 4096)  # writing back the rest costs less
    assert not durable.prefer_syncfs(n + 1, edge(n + 1) + 4096)
    assert durable.prefer_syncfs(200_000, edge(200_000) // 2)
    assert not durable.prefer_syncfs(200_000, 2 * edge(200_000))


def test_dirty_bytes_reads_meminfo(tmp_path):
    assert isinstance(durable.dirty_bytes(), int)       # the real /proc/meminfo
    sample = tmp_path / "meminfo"
    sample.write_bytes(b"MemTotal:       24683520 kB\nDirty:              1024 kB\nWriteback:   12 kB\n"
                       b"WritebackTmp:        7 kB\n")
    assert durable.dirty_bytes(str(sample)) == (1024 + 12) << 10
    sample.write_bytes(b"MemTotal:       24683520 kB\nDirty:              1024 kB\n")
    assert durable.dirty_bytes(str(sample)) is None
    assert durable.dirty_bytes(str(tmp_path / "absent")) is None
