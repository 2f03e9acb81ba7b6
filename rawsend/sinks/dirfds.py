"""Descriptors of the directories being received: a bounded cache, and one call per directory.

A directory that is not cached is opened from its nearest cached ancestor with one openat2()
of the relative path, resolved by the kernel with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: no
component may be a symlink or leave that ancestor.  Opening one level at a time instead would
cost one call per level whenever the stream moves between deep directories, whatever their
order (two 500-deep chains named in turn reopen a whole chain for every file).  Where the
kernel has no openat2 (before Linux 5.6, or filtered by seccomp) the levels are opened one by
one with O_NOFOLLOW, one call each.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, Mapping, Protocol

from rawsend.stream.records import ROOT_ID

CACHE_SIZE = 64
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PATH_MAX = 4096  # bytes of one path given to the kernel, its NUL included

# struct open_how (linux/openat2.h): flags, mode, resolve; all u64
OPEN_HOW = struct.Struct("=QQQ")
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
AT_FDCWD = -100
EAGAIN_TRIES = 100  # the lookup is retried; a system renaming without pause cannot hold it forever
SYS_OPENAT2 = 437  # the same number on every Linux architecture but alpha
_HOW = OPEN_HOW.pack(DIR_FLAGS, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
                     | RESOLVE_NO_XDEV)

_libc = ctypes.CDLL(None, use_errno=True)  # libc, linked into the interpreter (find_library runs ldconfig)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Node(Protocol):
    parent_id: int
    name: bytes


def openat2_dir(dir_fd: int, path: bytes) -> int:
    """Open the directory ``path`` below ``dir_fd``; OSError as os.open raises it."""
    for _ in range(EAGAIN_TRIES):
        fd = _syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(path),
                      ctypes.c_char_p(_HOW), ctypes.c_size_t(OPEN_HOW.size))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != errno.EAGAIN:  # EAGAIN: a rename or mount somewhere raced the lookup
            break
    raise OSError(err, os.strerror(err), os.fsdecode(path))


def openat2_works() -> bool:
    """Whether openat2 works here: ENOSYS before Linux 5.6, EPERM or ENOSYS under some seccomp."""
    try:
        os.close(openat2_dir(AT_FDCWD, b"."))
    except OSError:
        return False
    return True


class DirCache:
    """Open fds of received directories, by file id; the root's fd stays open throughout.

    ``nodes`` maps every directory's file id to its parent id and name.  An fd handed out stays
    valid until the next ``get`` (which may evict it) unless ``hold`` keeps it.
    """

    use_openat2: bool | None = None  # probed on first use, for the process

    def __init__(self, root_fd: int, nodes: Mapping[int, _Node], size: int = CACHE_SIZE):
        self.nodes = nodes
        self.size = size
        self.opens = 0  # open calls made, for the cost tests and the bench
        self._fds: OrderedDict[int, int] = OrderedDict({ROOT_ID: root_fd})
        self._held: set[int] = {ROOT_ID}
        if DirCache.use_openat2 is None:
            DirCache.use_openat2 = openat2_works()

    @property
    def root(self) -> int:
        return self._fds[ROOT_ID]

    def get(self, dir_id: int) -> int:
        fd = self._fds.get(dir_id)
        if fd is not None:
            self._fds.move_to_end(dir_id)
            return fd
        chain = []  # (id, name) from dir_id up to, not including, its nearest cached ancestor
        while fd is None:
            node = self.nodes[dir_id]
            chain.append((dir_id, node.name))
            dir_id = node.parent_id
            fd = self._fds.get(dir_id)
        chain.reverse()
        # The fd each step opens from is the one added (or used) last, so the eviction that
        # follows the next open, which closes the oldest, never closes it.
        self._fds.move_to_end(dir_id)
        if self.use_openat2 and len(chain) > 1:
            return self._open_path(fd, chain)
        for dir_id, name in chain:
            fd = os.open(name, DIR_FLAGS, dir_fd=fd)
            self.opens += 1
            self._add(dir_id, fd)
        return fd

    def _open_path(self, fd: int, chain: list[tuple[int, bytes]]) -> int:
        """One openat2 per PATH_MAX bytes of names: one for any tree of short names."""
        start = 0
        while start < len(chain):
            end, length = start + 1, len(chain[start][1])
            while end < len(chain) and length + 1 + len(chain[end][1]) < PATH_MAX:
                length += 1 + len(chain[end][1])
                end += 1
            fd = openat2_dir(fd, b"/".join(name for _, name in chain[start:end]))
            self.opens += 1
            self._add(chain[end - 1][0], fd)  # where a chunk ends: an ancestor worth keeping
            start = end
        return fd

    def _add(self, dir_id: int, fd: int) -> None:
        self._fds[dir_id] = fd
        while len(self._fds) > self.size:
            old_id = next(iter(self._fds))
            if old_id in self._held:
                self._fds.move_to_end(old_id)
                continue
            os.close(self._fds.pop(old_id))

    @contextmanager
    def hold(self, dir_id: int) -> Iterator[None]:
        """Keep ``dir_id``'s fd open (and its number ours) while more directories are opened."""
        if dir_id in self._held:
            yield
            return
        self._held.add(dir_id)
        try:
            yield
        finally:
            self._held.discard(dir_id)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
