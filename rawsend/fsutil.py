"""Small filesystem helpers shared by the stream writer, the tree sink, the store and key files."""

from __future__ import annotations

import ctypes
import functools
import os


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a temporary file's owner may still be writing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def write_all(fd: int, data) -> None:
    """os.write until every byte is written (a pipe or a signal can cut a write short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
