"""Small filesystem helpers shared by the stream writer, the tree sink, the store and key files."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import stat

PID_MAX_LIMIT = 1 << 22  # the kernel's ceiling for pid_max (include/linux/threads.h)


def left_by_dead_process(tag: str) -> bool:
    """Whether a temporary name's tag, "<pid>" or "<pid>-<anything>", names a process that is gone.

    Temporary files and directories carry their writer's pid, so the next run can remove
    those whose writer died, and only those.
    """
    pid = tag.split("-", 1)[0]
    if not (pid.isascii() and pid.isdigit()) or int(pid) > PID_MAX_LIMIT:
        return False  # not a pid this host hands out: nothing rawsend made, left alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


def write_all(fd: int, data) -> None:
    """os.write until every byte is written (a pipe or a signal can cut a write short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_capped(fd: int, cap: int) -> bytes:
    """Read ``fd`` to its end, but never more than ``cap + 1`` bytes: a result longer than
    ``cap`` says the file is too large, without reading all of it."""
    data = b""
    while len(data) <= cap:
        chunk = os.read(fd, cap + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return data


def fsync_dir(path) -> None:
    """Make a rename or create in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # loaded on first use, not at every start


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd``; raises OSError with its error."""
    if _libc().syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def data_regions(fd: int, size: int):
    """The data regions [start, end) of a file of ``size`` bytes, found with SEEK_DATA/SEEK_HOLE so
    that holes are never read; one region of all of it where the filesystem has no SEEK_DATA.
    Other seek errors are raised as OSError for the caller to name the file."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole from pos to the end
                return
            if e.errno != errno.EINVAL:
                raise
            start, end = pos, size  # a filesystem without SEEK_DATA: all data
        if start >= size:
            return
        yield start, end
        pos = end


PIPE_SIZE = 1 << 20  # a 1 MiB pipe moves about 3x more than the default 64 KiB one, with fewer wake-ups


def enlarge_pipe(fd: int) -> None:
    """Make ``fd``'s pipe PIPE_SIZE bytes, when it is a pipe and the kernel allows it."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for an unprivileged user: the default pipe still works
