"""FIEMAP, inode flags and what a file's filesystem is: plain fcntl.ioctl calls.

These ioctls take flat structs without pointers, so struct.Struct layouts
(linux/fiemap.h, linux/fs.h) and fcntl.ioctl on a bytearray do; only statfs
needs ctypes (ioctl.py).
"""

from __future__ import annotations

import errno
import fcntl
import struct
from dataclasses import dataclass

from rawsend.btrfs.ioctl import _IOR, _IOWR, statfs

# --------------------------------------------------------------------------
# FIEMAP (linux/fiemap.h)
# --------------------------------------------------------------------------

FIEMAP_FLAG_SYNC = 0x00000001  # flush dirty data first (else DELALLOC extents)
FIEMAP_FLAG_XATTR = 0x00000002
FIEMAP_FLAG_CACHE = 0x00000004

FIEMAP_EXTENT_LAST = 0x00000001
FIEMAP_EXTENT_UNKNOWN = 0x00000002
FIEMAP_EXTENT_DELALLOC = 0x00000004
FIEMAP_EXTENT_ENCODED = 0x00000008  # btrfs: compressed
FIEMAP_EXTENT_DATA_ENCRYPTED = 0x00000080
FIEMAP_EXTENT_NOT_ALIGNED = 0x00000100
FIEMAP_EXTENT_DATA_INLINE = 0x00000200
FIEMAP_EXTENT_DATA_TAIL = 0x00000400
FIEMAP_EXTENT_UNWRITTEN = 0x00000800  # prealloc: allocated, reads as zeros
FIEMAP_EXTENT_MERGED = 0x00001000
FIEMAP_EXTENT_SHARED = 0x00002000  # reflinked / snapshotted

# struct fiemap without its flexible fm_extents[] array: fm_start, fm_length,
# fm_flags, fm_mapped_extents, fm_extent_count, fm_reserved
FIEMAP_HEADER = struct.Struct("=QQIIII")
# struct fiemap_extent: fe_logical, fe_physical, fe_length, fe_reserved64[2],
# fe_flags, fe_reserved[3]
FIEMAP_EXTENT = struct.Struct("=QQQ16xI12x")
assert FIEMAP_HEADER.size == 32 and FIEMAP_EXTENT.size == 56

FS_IOC_FIEMAP = _IOWR(ord("f"), 11, FIEMAP_HEADER.size)
assert FS_IOC_FIEMAP == 0xC020660B

# Extents asked for per FIEMAP call; 256 * 56 B = 14 KiB of buffer.
FIEMAP_BATCH = 256


@dataclass(frozen=True)
class FiemapExtent:
    """One mapped extent. On btrfs `length` is the logical (file) length even
    for compressed extents; `physical` is the btrfs logical address, not a
    device offset."""

    logical: int
    physical: int
    length: int
    flags: int

    @property
    def end(self) -> int:
        return self.logical + self.length


def fiemap(fd: int, start: int = 0, length: int | None = None, *, flags: int = 0) -> list[FiemapExtent]:
    """Mapped extents overlapping [start, start+length), in file order.

    Holes have no entry. The first extent may begin before `start`; extents
    are reported whole, not clipped. `length` None means to the end of the
    file (FIEMAP_MAX_OFFSET). Pass flags=FIEMAP_FLAG_SYNC to flush dirty
    data first; otherwise not yet written data shows up as DELALLOC.
    """
    end = 2**64 - 1 if length is None else start + length
    buf = bytearray(FIEMAP_HEADER.size + FIEMAP_BATCH * FIEMAP_EXTENT.size)
    result: list[FiemapExtent] = []
    pos = start
    while pos < end:
        buf[:] = bytes(len(buf))
        FIEMAP_HEADER.pack_into(buf, 0, pos, end - pos, flags, 0, FIEMAP_BATCH, 0)
        # mutate_flag=True: the kernel writes into buf itself, whatever its size
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        mapped = FIEMAP_HEADER.unpack_from(buf, 0)[3]
        if mapped == 0:
            break
        for i in range(mapped):
            logical, physical, length_, fe_flags = FIEMAP_EXTENT.unpack_from(
                buf, FIEMAP_HEADER.size + i * FIEMAP_EXTENT.size)
            result.append(FiemapExtent(logical, physical, length_, fe_flags))
        last = result[-1]
        if last.flags & FIEMAP_EXTENT_LAST or mapped < FIEMAP_BATCH:
            break
        if last.end <= pos:
            # Never loop forever on a confused filesystem.
            raise OSError(errno.EIO, f"FS_IOC_FIEMAP made no progress at offset {pos}")
        pos = last.end
    return result


# --------------------------------------------------------------------------
# Inode flags (linux/fs.h)
# --------------------------------------------------------------------------

# FS_IOC_GETFLAGS is declared with `long` but the kernel reads/writes an int.
FS_IOC_GETFLAGS = _IOR(ord("f"), 1, struct.calcsize("l"))
FS_NOCOW_FL = 0x00800000  # chattr +C
FS_NOCOMP_FL = 0x00000400
FS_COMPR_FL = 0x00000004
INODE_FLAGS = struct.Struct("=I")

if struct.calcsize("l") == 8:
    assert FS_IOC_GETFLAGS == 0x80086601


def inode_flags(fd: int) -> int:
    buf = bytearray(INODE_FLAGS.size)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
    return INODE_FLAGS.unpack(buf)[0]


def is_nodatasum(fd: int) -> bool:
    """True if the file is known to have no data checksums, which makes
    ENCODED_WRITE fail with EINVAL.

    btrfs sets NODATASUM together with NODATACOW, and NODATACOW shows up as
    FS_NOCOW_FL (chattr +C, or files created on a -o nodatacow mount).
    A file created on a -o nodatasum mount has NODATASUM alone, which no
    userspace interface shows: for those this returns False and the caller
    must treat EINVAL from encoded_write() as "fall back to plain writes".
    """
    return bool(inode_flags(fd) & FS_NOCOW_FL)


# --------------------------------------------------------------------------
# The filesystem and the process
# --------------------------------------------------------------------------

BTRFS_SUPER_MAGIC = 0x9123683E


def is_btrfs(fd_or_path) -> bool:
    # f_type is a signed long; mask so the comparison does not depend on sign.
    return statfs(fd_or_path).f_type & 0xFFFFFFFF == BTRFS_SUPER_MAGIC


def sector_size(fd_or_path) -> int:
    """The filesystem's sector size. btrfs reports its sectorsize as f_bsize
    (and as st_blksize); ENCODED_WRITE alignment rules use this value."""
    return statfs(fd_or_path).f_bsize


CAP_SYS_ADMIN = 21


def has_cap_sys_admin() -> bool:
    """Whether this process has CAP_SYS_ADMIN in its effective set, which
    both encoded ioctls require (else EPERM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return False
