"""The ctypes layer: libc's ioctl and statfs, the ioctl number encoding, and the
encoded I/O argument struct.

ctypes is needed where the kernel reads pointers out of the argument
(btrfs_ioctl_encoded_io_args points at an iovec array) and for statfs(2), whose
f_type os.statvfs does not give. The layouts follow the uapi headers
(linux/btrfs.h, asm-generic/ioctl.h, bits/statfs.h) for 64-bit Linux; sizes are
asserted at import so a layout mistake fails loudly instead of corrupting memory
inside an ioctl.
"""

from __future__ import annotations

import ctypes
import os

# use_errno=True so ctypes.get_errno() reports the call's errno. ctypes releases
# the GIL around foreign calls, so long ioctls do not block other Python threads.
_libc = ctypes.CDLL(None, use_errno=True)  # libc, linked into the interpreter (find_library runs ldconfig)

ioctl = _libc.ioctl
ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
ioctl.restype = ctypes.c_int

_64BIT = ctypes.sizeof(ctypes.c_void_p) == 8


def check_call(ret: int, what: str) -> int:
    """Turn a failed libc call (-1) into an OSError carrying the real errno."""
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


# --------------------------------------------------------------------------
# ioctl number encoding (asm-generic/ioctl.h, used by x86, arm64, riscv...).
# --------------------------------------------------------------------------

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IOR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, type_, nr, size)


def _IOW(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOWR(type_: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


# --------------------------------------------------------------------------
# Encoded I/O: struct btrfs_ioctl_encoded_io_args (linux/btrfs.h)
# --------------------------------------------------------------------------


class Iovec(ctypes.Structure):
    _fields_ = [
        ("iov_base", ctypes.c_void_p),
        ("iov_len", ctypes.c_size_t),
    ]


class EncodedIoArgs(ctypes.Structure):
    """struct btrfs_ioctl_encoded_io_args.

    For reads the kernel fills len..encryption; for writes we fill them.
    flags and reserved must be zero in both directions (else EINVAL).
    """

    _fields_ = [
        ("iov", ctypes.POINTER(Iovec)),
        ("iovcnt", ctypes.c_ulong),
        ("offset", ctypes.c_int64),
        ("flags", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("unencoded_len", ctypes.c_uint64),
        ("unencoded_offset", ctypes.c_uint64),
        ("compression", ctypes.c_uint32),
        ("encryption", ctypes.c_uint32),
        ("reserved", ctypes.c_uint8 * 64),
    ]


BTRFS_IOCTL_MAGIC = 0x94

BTRFS_IOC_ENCODED_READ = _IOR(BTRFS_IOCTL_MAGIC, 64, ctypes.sizeof(EncodedIoArgs))
BTRFS_IOC_ENCODED_WRITE = _IOW(BTRFS_IOCTL_MAGIC, 64, ctypes.sizeof(EncodedIoArgs))

if _64BIT:
    # The ioctl number embeds the struct size, so a wrong layout would give a
    # wrong number (ENOTTY) or, worse, a right number with a wrong layout.
    assert ctypes.sizeof(Iovec) == 16
    assert ctypes.sizeof(EncodedIoArgs) == 128
    assert BTRFS_IOC_ENCODED_READ == 0x80809440
    assert BTRFS_IOC_ENCODED_WRITE == 0x40809440


# --------------------------------------------------------------------------
# statfs(2) (os.statvfs lacks f_type)
# --------------------------------------------------------------------------


class Statfs(ctypes.Structure):
    """struct statfs for 64-bit Linux."""

    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_uint64),
        ("f_bfree", ctypes.c_uint64),
        ("f_bavail", ctypes.c_uint64),
        ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


if _64BIT:
    assert ctypes.sizeof(Statfs) == 120

_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.POINTER(Statfs)]
_libc.fstatfs.restype = ctypes.c_int
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(Statfs)]
_libc.statfs.restype = ctypes.c_int


def statfs(fd_or_path) -> Statfs:
    """statfs(2)/fstatfs(2): an int is a file descriptor, anything else a path."""
    buf = Statfs()
    if isinstance(fd_or_path, int):
        check_call(_libc.fstatfs(fd_or_path, ctypes.byref(buf)), "fstatfs")
    else:
        check_call(_libc.statfs(os.fsencode(fd_or_path), ctypes.byref(buf)), f"statfs {fd_or_path}")
    return buf
