"""Opening the names inside a store without trusting them.

Anyone who can write to a store can replace ``tmp/`` or ``streams/`` with a
symlink, an index entry with a FIFO or a link to /dev/zero, ``lock`` with a
dangling symlink (spec/encryption.md, "Threat model").  So every name is
opened relative to its directory's descriptor with O_NOFOLLOW, files with
O_NONBLOCK (a FIFO would block the open) and an fstat that they are regular,
and a small file is read only up to a cap.  What is not what rawsend made is
a StoreDamaged naming the entry.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from rawsend.errors import StoreDamaged

NOT_OURS_HINT = ("rawsend did not make this, something else changed the store: look at what did,"
                 " move the entry out of the store, and run the command again")

_KINDS = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISREG, "a regular file")]


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), f"file type 0o{stat.S_IFMT(mode):o}")


def not_ours(path: Path, what: str, kind: str) -> StoreDamaged:
    return StoreDamaged(f"{what} is {kind}, not what rawsend makes there", path=str(path), hint=NOT_OURS_HINT)


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """The entry itself (a symlink is not followed), or None when there is none."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir(dir_fd: int, name: str, path: Path, what: str) -> int:
    """Descriptor of the directory ``name`` in ``dir_fd``; a symlink or anything else is refused.

    FileNotFoundError passes through: the caller knows whether the directory may be missing.
    """
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        st = lstat_at(dir_fd, name)
        raise not_ours(path, what, kind_of(st.st_mode) if st else "gone") from None


def open_file(dir_fd: int, name: str, path: Path, what: str, flags: int = os.O_RDONLY,
              mode: int = 0o600) -> tuple[int, os.stat_result]:
    """Descriptor and fstat of the regular file ``name``; a symlink, FIFO, device or directory is refused.

    FileNotFoundError passes through (only without O_CREAT); other OSErrors too.
    """
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR):
            raise
        st = lstat_at(dir_fd, name)
        raise not_ours(path, what, kind_of(st.st_mode) if st else "gone") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise not_ours(path, what, kind_of(st.st_mode))
    return fd, st


def read_small(dir_fd: int, name: str, path: Path, what: str, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes; a larger one is refused before it is read."""
    fd, st = open_file(dir_fd, name, path, what)
    try:
        if st.st_size > cap:
            raise StoreDamaged(f"{what} is {st.st_size} bytes, more than the {cap} rawsend writes",
                               path=str(path), hint=NOT_OURS_HINT)
        data = os.read(fd, cap + 1)  # the size may have changed since fstat: never more than cap + 1
    finally:
        os.close(fd)
    if len(data) > cap:
        raise StoreDamaged(f"{what} grew past {cap} bytes while it was read", path=str(path), hint=NOT_OURS_HINT)
    return data
