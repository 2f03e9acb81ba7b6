"""Subvolume ioctls: create, snapshot, delete, read-only flag, received UUID, subvolume info.

    info(fd) / subvol_info(path)  # root id, uuids, transids, read-only
    info.send_identity            # (uuid, ctransid) as the kernel's send stream names it

A send stream names its subvolume (SUBVOL, SNAPSHOT) and its parent (SNAPSHOT's clone
fields) by received_uuid when that is set, else by uuid, with the ctransid
(fs/btrfs/send.c send_subvol_begin); btrfs receive finds the parent by that pair.

The argument structs hold no pointers (a snapshot's qgroup_inherit pointer stays NULL), so
struct.Struct layouts and fcntl.ioctl on a bytearray do (linux/btrfs.h, 64-bit Linux).  All of
them but GET_SUBVOL_INFO and SET_RECEIVED_SUBVOL need CAP_SYS_ADMIN.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from dataclasses import dataclass

from rawsend.btrfs.inode import (
    FS_COMPR_FL, FS_NOCOMP_FL, FS_NOCOW_FL, INODE_FLAGS, has_cap_sys_admin, inode_flags, is_btrfs,
)
from rawsend.btrfs.ioctl import _IOR, _IOW, _IOWR, BTRFS_IOCTL_MAGIC

BTRFS_FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's top directory
BTRFS_SUBVOL_RDONLY = 1 << 1       # SUBVOL_GETFLAGS / SETFLAGS
BTRFS_ROOT_SUBVOL_RDONLY = 1 << 0  # the root item's flags, as GET_SUBVOL_INFO gives them
UUID_SIZE = 16
NO_UUID = bytes(UUID_SIZE)

# struct btrfs_ioctl_vol_args: s64 fd; char name[4088]
VOL_ARGS = struct.Struct("=q4088s")
# struct btrfs_ioctl_vol_args_v2: s64 fd; u64 transid; u64 flags; u64 unused[4]; char name[4040]
VOL_ARGS_V2 = struct.Struct("=qQQ32s4040s")
# struct btrfs_ioctl_received_subvol_args: uuid[16]; u64 stransid; u64 rtransid (out);
# timespec stime {u64 sec; u32 nsec; pad}; timespec rtime (out); u64 flags; u64 reserved[16]
RECEIVED_ARGS = struct.Struct("=16sQQQI4xQI4xQ128s")
# struct btrfs_ioctl_get_subvol_info_args: u64 treeid; char name[256]; u64 parent_id, dirid,
# generation, flags; u8 uuid[16], parent_uuid[16], received_uuid[16]; u64 ctransid, otransid,
# stransid, rtransid; timespec ctime, otime, stime, rtime; u64 reserved[8]
SUBVOL_INFO = struct.Struct("=Q256sQQQQ16s16s16sQQQQ" + "QI4x" * 4 + "64s")
FLAGS = struct.Struct("=Q")
assert (VOL_ARGS.size, VOL_ARGS_V2.size, RECEIVED_ARGS.size, SUBVOL_INFO.size) == (4096, 4096, 200, 504)

BTRFS_IOC_SUBVOL_CREATE = _IOW(BTRFS_IOCTL_MAGIC, 14, VOL_ARGS.size)
BTRFS_IOC_SNAP_DESTROY = _IOW(BTRFS_IOCTL_MAGIC, 15, VOL_ARGS.size)
BTRFS_IOC_SNAP_CREATE_V2 = _IOW(BTRFS_IOCTL_MAGIC, 23, VOL_ARGS_V2.size)
BTRFS_IOC_SUBVOL_GETFLAGS = _IOR(BTRFS_IOCTL_MAGIC, 25, FLAGS.size)
BTRFS_IOC_SUBVOL_SETFLAGS = _IOW(BTRFS_IOCTL_MAGIC, 26, FLAGS.size)
BTRFS_IOC_SET_RECEIVED_SUBVOL = _IOWR(BTRFS_IOCTL_MAGIC, 37, RECEIVED_ARGS.size)
BTRFS_IOC_GET_SUBVOL_INFO = _IOR(BTRFS_IOCTL_MAGIC, 60, SUBVOL_INFO.size)
assert (BTRFS_IOC_SUBVOL_CREATE, BTRFS_IOC_SNAP_DESTROY, BTRFS_IOC_SNAP_CREATE_V2) == (
    0x5000940E, 0x5000940F, 0x50009417)
assert (BTRFS_IOC_SET_RECEIVED_SUBVOL, BTRFS_IOC_GET_SUBVOL_INFO) == (0xC0C89425, 0x81F8943C)

FS_IOC_SETFLAGS = _IOW(ord("f"), 2, struct.calcsize("l"))
assert struct.calcsize("l") != 8 or FS_IOC_SETFLAGS == 0x40086602
# what a new directory takes from its parent: a new subvolume is given them by hand
INHERITED_FLAGS = FS_NOCOW_FL | FS_COMPR_FL | FS_NOCOMP_FL
COMPRESSION_PROPERTY = b"btrfs.compression"

NAME_MAX = 255


def _name(name: str | bytes) -> bytes:
    raw = os.fsencode(name)
    if not raw or len(raw) > NAME_MAX or b"/" in raw or b"\0" in raw or raw in (b".", b".."):
        raise ValueError(f"not one path component: {raw!r}")
    return raw


def create(parent_fd: int, name: str | bytes) -> None:
    """A new, empty, writable subvolume ``name`` in the directory ``parent_fd``."""
    fcntl.ioctl(parent_fd, BTRFS_IOC_SUBVOL_CREATE, bytearray(VOL_ARGS.pack(0, _name(name))))


def inherit(parent_fd: int, fd: int) -> None:
    """Give the new subvolume ``fd`` what a new directory in ``parent_fd`` would inherit: the
    NOCOW and compression flags and the compression property (a subvolume's top directory
    inherits nothing)."""
    flags = inode_flags(parent_fd) & INHERITED_FLAGS
    if flags:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, bytearray(INODE_FLAGS.pack(inode_flags(fd) | flags)))
    try:
        value = os.getxattr(parent_fd, COMPRESSION_PROPERTY)
    except OSError:
        return
    os.setxattr(fd, COMPRESSION_PROPERTY, value)


def snapshot(source_fd: int, parent_fd: int, name: str | bytes, *, readonly: bool = False) -> None:
    """A snapshot of the subvolume ``source_fd`` (its top directory) as ``name`` in ``parent_fd``."""
    flags = BTRFS_SUBVOL_RDONLY if readonly else 0
    fcntl.ioctl(parent_fd, BTRFS_IOC_SNAP_CREATE_V2,
                bytearray(VOL_ARGS_V2.pack(source_fd, 0, flags, b"", _name(name))))


def delete(parent_fd: int, name: str | bytes) -> None:
    """Delete the subvolume ``name`` of ``parent_fd`` with what it holds, read-only or not."""
    fcntl.ioctl(parent_fd, BTRFS_IOC_SNAP_DESTROY, bytearray(VOL_ARGS.pack(0, _name(name))))


def flags(fd: int) -> int:
    buf = bytearray(FLAGS.size)
    fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_GETFLAGS, buf)
    return FLAGS.unpack(buf)[0]


def set_readonly(fd: int) -> None:
    buf = bytearray(FLAGS.pack(flags(fd) | BTRFS_SUBVOL_RDONLY))
    fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_SETFLAGS, buf)


def set_received(fd: int, uuid: bytes, stransid: int, stime_ns: int) -> int:
    """Mark the writable subvolume ``fd`` as received: received_uuid, stransid and stime; the
    kernel sets rtransid and rtime and files the UUID in the UUID tree.  Returns rtransid."""
    if len(uuid) != UUID_SIZE:
        raise ValueError("a received UUID is 16 bytes")
    sec, nsec = divmod(max(stime_ns, 0), 1_000_000_000)
    buf = bytearray(RECEIVED_ARGS.pack(uuid, stransid, 0, sec, nsec, 0, 0, 0, b""))
    fcntl.ioctl(fd, BTRFS_IOC_SET_RECEIVED_SUBVOL, buf)
    return RECEIVED_ARGS.unpack(buf)[2]


@dataclass(frozen=True)
class SubvolInfo:
    root_id: int
    flags: int
    uuid: bytes
    parent_uuid: bytes
    received_uuid: bytes
    ctransid: int
    stransid: int
    rtransid: int

    @property
    def readonly(self) -> bool:
        return bool(self.flags & BTRFS_ROOT_SUBVOL_RDONLY)

    @property
    def send_identity(self) -> tuple[bytes, int]:
        """(uuid, ctransid) as a send stream names this subvolume."""
        return (self.received_uuid if self.received_uuid != NO_UUID else self.uuid), self.ctransid


def info(fd: int) -> SubvolInfo:
    """What GET_SUBVOL_INFO says of the subvolume ``fd`` is in (no capability needed)."""
    buf = bytearray(SUBVOL_INFO.size)
    fcntl.ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, buf)
    f = SUBVOL_INFO.unpack(buf)
    return SubvolInfo(root_id=f[0], flags=f[5], uuid=f[6], parent_uuid=f[7], received_uuid=f[8],
                      ctransid=f[9], stransid=f[11], rtransid=f[12])


def subvol_info(path) -> SubvolInfo:
    """The info of the subvolume whose top directory is ``path``; OSError when the ioctl
    fails (ENOTTY: not btrfs), ValueError when ``path`` is not a subvolume's top directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_ino != BTRFS_FIRST_FREE_OBJECTID:
            raise ValueError("not the top directory of a btrfs subvolume")
        return info(fd)
    finally:
        os.close(fd)


def is_subvolume(path_or_fd) -> bool:
    """A directory that is the top of a btrfs subvolume (never follows a symlink)."""
    try:
        st = os.fstat(path_or_fd) if isinstance(path_or_fd, int) else os.lstat(path_or_fd)
        return stat.S_ISDIR(st.st_mode) and st.st_ino == BTRFS_FIRST_FREE_OBJECTID and is_btrfs(path_or_fd)
    except OSError:
        return False


def can_create(parent_fd: int) -> bool:
    """Subvolumes can be made in ``parent_fd``: it is on btrfs and we have CAP_SYS_ADMIN."""
    try:
        return is_btrfs(parent_fd) and has_cap_sys_admin()
    except OSError:
        return False


def remove(path) -> bool:
    """Delete the subvolume at ``path`` if it is one; True when it was deleted.  Never raises."""
    if not is_subvolume(path):
        return False
    parent, name = os.path.split(os.path.abspath(path))
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        delete(fd, name)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
