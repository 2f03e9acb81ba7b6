"""What a btrfs subvolume says about itself: BTRFS_IOC_GET_SUBVOL_INFO.

    info = subvol_info(path)      # root id, uuids, transids, read-only
    info.send_identity            # (uuid, ctransid) as the kernel's send stream names it

A send stream names its subvolume (SUBVOL, SNAPSHOT) and its parent (SNAPSHOT's clone
fields) by received_uuid when that is set, else by uuid, with the ctransid
(fs/btrfs/send.c send_subvol_begin); btrfs receive finds the parent by that pair.
GET_SUBVOL_INFO needs no privilege.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from rawsend.btrfs.ioctl import _IOR, BTRFS_IOCTL_MAGIC, _64BIT, check_call, ioctl

BTRFS_ROOT_SUBVOL_RDONLY = 1 << 0   # root item flags, which GET_SUBVOL_INFO gives (not the ioctl flag 1 << 1)
NO_UUID = bytes(16)


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_uint64), ("nsec", ctypes.c_uint32)]


class SubvolInfoArgs(ctypes.Structure):
    """struct btrfs_ioctl_get_subvol_info_args (linux/btrfs.h)."""

    _fields_ = [
        ("treeid", ctypes.c_uint64),
        ("name", ctypes.c_char * 256),
        ("parent_id", ctypes.c_uint64),
        ("dirid", ctypes.c_uint64),
        ("generation", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("uuid", ctypes.c_uint8 * 16),
        ("parent_uuid", ctypes.c_uint8 * 16),
        ("received_uuid", ctypes.c_uint8 * 16),
        ("ctransid", ctypes.c_uint64),
        ("otransid", ctypes.c_uint64),
        ("stransid", ctypes.c_uint64),
        ("rtransid", ctypes.c_uint64),
        ("ctime", _Timespec),
        ("otime", _Timespec),
        ("stime", _Timespec),
        ("rtime", _Timespec),
        ("reserved", ctypes.c_uint64 * 8),
    ]


BTRFS_IOC_GET_SUBVOL_INFO = _IOR(BTRFS_IOCTL_MAGIC, 60, ctypes.sizeof(SubvolInfoArgs))

if _64BIT:
    assert ctypes.sizeof(SubvolInfoArgs) == 504
    assert BTRFS_IOC_GET_SUBVOL_INFO == 0x81F8943C


@dataclass(frozen=True)
class SubvolInfo:
    root_id: int
    uuid: bytes
    parent_uuid: bytes       # the subvolume it is a snapshot of; zero for a plain subvolume
    received_uuid: bytes     # set by btrfs receive (and rawsend receive into a subvolume)
    ctransid: int
    stransid: int
    readonly: bool

    @property
    def send_identity(self) -> tuple[bytes, int]:
        """(uuid, ctransid) as a send stream names this subvolume."""
        return (self.received_uuid if self.received_uuid != NO_UUID else self.uuid), self.ctransid


def subvol_info(path) -> SubvolInfo:
    """The info of the subvolume whose top directory is `path`; OSError when the ioctl
    fails (ENOTTY: not btrfs), ValueError when `path` is not a subvolume's top directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_ino != 256:  # BTRFS_FIRST_FREE_OBJECTID: a subvolume's top directory
            raise ValueError("not the top directory of a btrfs subvolume")
        args = SubvolInfoArgs()
        check_call(ioctl(fd, BTRFS_IOC_GET_SUBVOL_INFO, ctypes.addressof(args)), "BTRFS_IOC_GET_SUBVOL_INFO")
    finally:
        os.close(fd)
    return SubvolInfo(args.treeid, bytes(args.uuid), bytes(args.parent_uuid), bytes(args.received_uuid),
                      args.ctransid, args.stransid, bool(args.flags & BTRFS_ROOT_SUBVOL_RDONLY))

