"""Durability of one received tree: on success, what this receive wrote is on disk, and the
receive waited for as little else as it could.

syncfs of DEST's filesystem would also write, and wait for, every other program's dirty data
there.  Instead, at commit, every regular file the receive wrote gets its writeback started
(sync_file_range WRITE, which does not wait), then is fsynced, then every directory, once each;
files are reopened by name relative to their directory's fd, so no descriptor is kept per file.
All of it runs on a thread pool: fsync releases the GIL, and concurrent fsyncs share the
journal's commits and the disk's cache flushes.  A file whose owner may not read it (mode without
u+r) cannot be opened again: it is fsynced before it is closed.  Symlinks and special files
cannot be fsynced themselves; their directory's fsync commits them with its entries.

Per file that costs a cache flush and a few system calls, which for a tree of very many small
files is more than writing back everything else the filesystem has dirty would.  So when the receive wrote many
files and little else is dirty on the whole system (/proc/meminfo's Dirty and Writeback less
what this receive wrote: an estimate for DEST's filesystem, too high where other filesystems
have dirty data), one syncfs is the cheaper way, and it waits for little of anyone else's: the
rule is prefer_syncfs, its numbers are at FSYNC_ALWAYS.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
from array import array
from concurrent.futures import Future, ThreadPoolExecutor

# 20,000 files of 4 KiB on the bench's ext4 (bench/README.md, "Durability"): with 8 threads the
# fsyncs took 6.5 s, with 64 3.9 s, with 128 no less; without starting the writeback first, 6.1 s
# with 128 threads and 20 s with 8.
WORKERS = 64
IN_FLIGHT = 2 * WORKERS  # tasks queued at most, each holding one directory fd
CHUNK = 64               # files of one directory per task

# The choice between per-file fsync and syncfs, measured on the same ext4: syncfs of those files
# took 1.0 s, 1.8 s with 512 MiB of another file dirty (so about 650 MiB/s of writeback; 512 is
# taken, erring towards the fsyncs); the fsyncs took 3.5-3.9 s either way, 90-145 us per file
# more than syncfs.  Below FSYNC_ALWAYS entries the fsyncs cost at most about 15 ms: not worth
# a look at /proc/meminfo.
FSYNC_ALWAYS = 100
FSYNC_FILE_S = 140e-6
WRITEBACK_BPS = 512 << 20
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start the writeback of the dirty pages, do not wait


class FsyncFailed(Exception):
    """An fsync failed: ``file_id`` is the file or directory, ``error`` the OSError."""

    def __init__(self, file_id: int, error: OSError):
        super().__init__(file_id, error)
        self.file_id, self.error = file_id, error


def dirty_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """Dirty + Writeback of the whole system, in bytes; None where it cannot be read."""
    try:
        with open(meminfo, "rb") as f:
            text = f.read()
    except OSError:
        return None
    total, found = 0, 0
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        if key in (b"Dirty", b"Writeback"):
            fields = value.split()
            if not fields or not fields[0].isdigit():
                return None
            total += int(fields[0]) << 10  # kB
            found += 1
    return total if found == 2 else None


def prefer_syncfs(entries: int, others: int | None) -> bool:
    """Whether one syncfs is the cheaper way to make ``entries`` files and directories durable,
    with about ``others`` bytes of other programs' data dirty (None: unknown).

    Both write this receive's data back; beyond that syncfs costs the time to write ``others``
    back, the fsyncs about FSYNC_FILE_S each.  So syncfs is chosen only where it waits no longer
    than the fsyncs would take, and never for a receive of FSYNC_ALWAYS entries or fewer."""
    if entries <= FSYNC_ALWAYS or others is None:
        return False
    return others / WRITEBACK_BPS < entries * FSYNC_FILE_S


@functools.cache
def _sync_file_range():
    fn = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if fn is not None:
        fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return fn


class Durability:
    """Collects what one receive wrote and makes it durable at commit, and only that."""

    def __init__(self):
        self.files = array("Q")  # ids of the regular files to fsync at commit
        self.written = 0         # bytes of file data written (page cache made dirty, about)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: collections.deque[Future] = collections.deque()

    def file_done(self, fd: int, file_id: int, mode: int) -> None:
        """A regular file is complete (``fd`` stays the caller's to close)."""
        if mode & 0o400:
            self.files.append(file_id)
            return
        try:
            os.fsync(fd)  # its name cannot be opened for reading again
        except OSError as e:
            raise FsyncFailed(file_id, e) from None

    def use_syncfs(self, dirs: int) -> bool:
        """Whether to syncfs rather than fsync the files and ``dirs`` directories (read now)."""
        entries = len(self.files) + dirs
        if entries <= FSYNC_ALWAYS:
            return False  # without reading /proc/meminfo
        dirty = dirty_bytes()
        return prefer_syncfs(entries, None if dirty is None else max(0, dirty - self.written))

    def fsync_files(self, ns) -> None:
        """Start every file's writeback, then fsync each (waits for both: FsyncFailed)."""
        for fn in (_start_writeback, _fsync_names):
            self._each_chunk(ns, fn)
            self.wait()
        self.files = array("Q")

    def _each_chunk(self, ns, fn) -> None:
        """``fn(dir_fd, [(file id, name)...])`` on the pool for runs of files of one directory (a
        stream names a directory's files together), at most CHUNK a run."""
        nodes, run, run_dir = ns.nodes, [], -1
        for file_id in self.files:
            node = nodes[file_id]
            if node.parent_id != run_dir or len(run) >= CHUNK:
                if run:
                    self._submit(fn, ns.dir_fd(run_dir), run)
                run, run_dir = [], node.parent_id
            run.append((file_id, node.name))
        if run:
            self._submit(fn, ns.dir_fd(run_dir), run)

    def directory(self, dir_fd: int, dir_id: int) -> None:
        """fsync the directory open at ``dir_fd`` (a copy is taken): its entries and attributes."""
        self._submit(_fsync_dir, dir_fd, dir_id)

    def wait(self) -> None:
        """Wait for everything handed over so far; the first failure is raised (FsyncFailed)."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Stop the pool; tasks still queued run (they close their fds), nobody waits for them."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending.clear()

    def _submit(self, fn, dir_fd: int, arg) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="rawsend-fsync")
        while len(self._pending) >= IN_FLIGHT:  # bounded: each queued task holds one fd
            self._pending.popleft().result()
        fd = os.dup(dir_fd)  # the sink's directory fd cache may close its own meanwhile
        try:
            self._pending.append(self._pool.submit(fn, fd, arg))
        except BaseException:
            os.close(fd)  # no task owns it
            raise


def _open(dir_fd: int, file_id: int, name: bytes) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        raise FsyncFailed(file_id, e) from None


def _start_writeback(dir_fd: int, names: list[tuple[int, bytes]]) -> None:
    """Start the writeback of each (file id, name) of the directory ``dir_fd``; closes dir_fd.
    Only a hint: nothing happens where sync_file_range is missing, fsync reports the errors."""
    fn = _sync_file_range()
    try:
        for file_id, name in names:
            fd = _open(dir_fd, file_id, name)
            try:
                if fn is not None:
                    fn(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


def _fsync_names(dir_fd: int, names: list[tuple[int, bytes]]) -> None:
    """fsync each (file id, name) of the directory ``dir_fd``; closes dir_fd."""
    try:
        for file_id, name in names:
            fd = _open(dir_fd, file_id, name)
            try:
                os.fsync(fd)
            except OSError as e:
                raise FsyncFailed(file_id, e) from None
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)


def _fsync_dir(dir_fd: int, dir_id: int) -> None:
    try:
        os.fsync(dir_fd)
    except OSError as e:
        raise FsyncFailed(dir_id, e) from None
    finally:
        os.close(dir_fd)
