"""ctypes layer for btrfs encoded I/O (BTRFS_IOC_ENCODED_READ/WRITE) and FIEMAP.

Everything here is a thin, explicit wrapper around one kernel interface. The
struct layouts follow the uapi headers (linux/btrfs.h, linux/fiemap.h,
linux/fs.h) for 64-bit Linux; the sizes are asserted at import time so a
layout mistake fails loudly instead of corrupting memory inside an ioctl.

Facts checked on a real kernel (6.18, 4 KiB sectors) are marked "[run]".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import re
from dataclasses import dataclass

# --------------------------------------------------------------------------
# libc access. use_errno=True so ctypes.get_errno() reports the ioctl's errno.
# ctypes releases the GIL around foreign calls, so long ioctls do not block
# other Python threads.
# --------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int


def _check_call(ret: int, what: str) -> int:
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


_64BIT = ctypes.sizeof(ctypes.c_void_p) == 8

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

# BTRFS_ENCODED_IO_COMPRESSION_*. LZO is framed per sector, so each sector
# size has its own value (LZO_4K = 3 ... LZO_64K = 7); see codecs/lzo.py.
COMPRESSION_NONE = 0
COMPRESSION_ZLIB = 1
COMPRESSION_ZSTD = 2
COMPRESSION_LZO_4K = 3
COMPRESSION_LZO_8K = 4
COMPRESSION_LZO_16K = 5
COMPRESSION_LZO_32K = 6
COMPRESSION_LZO_64K = 7
COMPRESSION_TYPES = 8  # sentinel: first invalid value

COMPRESSION_NAMES = {
    COMPRESSION_NONE: "none",
    COMPRESSION_ZLIB: "zlib",
    COMPRESSION_ZSTD: "zstd",
    COMPRESSION_LZO_4K: "lzo-4k",
    COMPRESSION_LZO_8K: "lzo-8k",
    COMPRESSION_LZO_16K: "lzo-16k",
    COMPRESSION_LZO_32K: "lzo-32k",
    COMPRESSION_LZO_64K: "lzo-64k",
}

ENCRYPTION_NONE = 0  # the only value the kernel knows today

# BTRFS_MAX_UNCOMPRESSED / BTRFS_MAX_COMPRESSED: a compressed extent covers
# at most 128 KiB of file data and takes at most 128 KiB on disk.
MAX_UNENCODED = 128 * 1024
MAX_ENCODED = 128 * 1024


def lzo_compression_for_sector_size(sector_size: int) -> int:
    """The LZO_* compression value matching a sector size (4K -> 3 ... 64K -> 7)."""
    bits = sector_size.bit_length() - 1
    if sector_size != 1 << bits or not 12 <= bits <= 16:
        raise ValueError(f"no btrfs LZO variant for sector size {sector_size}")
    return COMPRESSION_LZO_4K + bits - 12


def lzo_sector_size(compression: int) -> int:
    """Inverse of lzo_compression_for_sector_size (3 -> 4096 ... 7 -> 65536)."""
    if not COMPRESSION_LZO_4K <= compression <= COMPRESSION_LZO_64K:
        raise ValueError(f"compression {compression} is not an LZO variant")
    return 1 << (12 + compression - COMPRESSION_LZO_4K)


@dataclass(frozen=True)
class EncodedExtent:
    """One BTRFS_IOC_ENCODED_READ result.

    offset:           file offset that was asked for.
    num_bytes:        the kernel's `len`: bytes of file data covered starting
                      at `offset` (already clamped to i_size).
    unencoded_len:    length of the whole decoded extent (ram_bytes).
    unencoded_offset: where `offset` falls inside the decoded extent. Not
                      always sector aligned (inline extents), see
                      encoded_write_refusal().
    compression:      COMPRESSION_*; 0 means `data` is plain file bytes.
    encryption:       always ENCRYPTION_NONE today.
    data:             the encoded bytes (for compressed regular extents the
                      whole on-disk extent, zero padded to the sector size).
                      A memoryview into the read buffer: copy it before the
                      buffer is reused.
    """

    offset: int
    num_bytes: int
    unencoded_len: int
    unencoded_offset: int
    compression: int
    encryption: int
    data: bytes | memoryview

    @property
    def end(self) -> int:
        """File offset just past the data this extent covers."""
        return self.offset + self.num_bytes


# Largest buffer encoded_read() grows to after ENOBUFS. ENOBUFS means the
# buffer is smaller than the extent's encoded size; a compressed extent's
# disk_num_bytes is at most MAX_ENCODED (128 KiB) and inline extents are far
# smaller. The extra 64 KiB is slack (one sector at the largest sector size)
# so an off-by-a-sector future kernel change does not turn into an error.
ENCODED_READ_MAX_BUFFER = MAX_ENCODED + 64 * 1024


def _encoded_read_once(fd: int, offset: int, buf) -> tuple[int, EncodedIoArgs]:
    view = memoryview(buf)
    if view.readonly:
        raise TypeError("encoded_read needs a writable buffer (e.g. bytearray)")
    cbuf = (ctypes.c_char * view.nbytes).from_buffer(view)
    try:
        iov = Iovec(ctypes.addressof(cbuf), view.nbytes)
        args = EncodedIoArgs()
        args.iov = ctypes.pointer(iov)
        args.iovcnt = 1
        args.offset = offset
        ret = _ioctl(fd, BTRFS_IOC_ENCODED_READ, ctypes.addressof(args))
        _check_call(ret, f"BTRFS_IOC_ENCODED_READ at offset {offset}")
        return ret, args
    finally:
        # Release the buffer export so the caller may resize a bytearray.
        del cbuf
        view.release()


def encoded_read(fd: int, offset: int, buf) -> EncodedExtent | None:
    """Read one extent's raw (possibly compressed) bytes starting at `offset`.

    `buf` is a writable buffer (bytearray, mmap...). 128 KiB covers every
    compressed extent. On ENOBUFS (buffer smaller than the extent's encoded
    size) the read is retried once with a private ENCODED_READ_MAX_BUFFER
    bytearray, so the returned `data` does not always live in `buf`.

    Returns None at or past EOF. Raises OSError otherwise (EPERM without
    CAP_SYS_ADMIN, ENOTTY off btrfs or on kernels without encoded I/O).

    [run] Holes and prealloc come back as zero-filled plain data
    (compression 0), as long as the buffer: use fiemap() or SEEK_DATA to tell
    them from written zeros. Uncompressed extents come back at most 128 KiB
    per call. A compressed extent comes back whole (all of disk_num_bytes,
    sector padded) even when `offset` is in its middle; unencoded_offset then
    says where `offset` falls. Inline extents come back unpadded.
    """
    try:
        ret, args = _encoded_read_once(fd, offset, buf)
    except OSError as e:
        if e.errno != errno.ENOBUFS or len(buf) >= ENCODED_READ_MAX_BUFFER:
            raise
        buf = bytearray(ENCODED_READ_MAX_BUFFER)
        ret, args = _encoded_read_once(fd, offset, buf)
    if ret == 0 and args.len == 0:
        return None  # at or past EOF the kernel returns 0 and fills nothing
    return EncodedExtent(
        offset=offset,
        num_bytes=args.len,
        unencoded_len=args.unencoded_len,
        unencoded_offset=args.unencoded_offset,
        compression=args.compression,
        encryption=args.encryption,
        data=memoryview(buf)[:ret],
    )


def encoded_write(
    fd: int,
    offset: int,
    data,
    num_bytes: int,
    unencoded_len: int,
    unencoded_offset: int,
    compression: int,
) -> int:
    """Write already-encoded bytes as one extent at `offset`.

    `num_bytes` is the kernel's `len` (file bytes this write covers);
    `data` is the encoded payload. Returns the kernel's result (the number of
    encoded bytes taken). Raises OSError with the kernel's errno on failure:
    EINVAL/ENOTTY/ENOSPC mean "decode and pwrite instead" (btrfs receive
    falls back on exactly these), EPERM means no CAP_SYS_ADMIN, EBADF means
    the fd is not open for writing.

    Call encoded_write_refusal() first: it catches the EINVAL cases without
    a syscall and says which rule failed, which the bare errno does not.

    [run] The payload does NOT need to be padded to the sector size: an
    exact (unpadded) zstd/zlib/lzo frame is accepted and the kernel pads the
    on-disk extent with zeros itself; a padded payload (as ENCODED_READ
    returns it) is accepted too. The kernel does not check the payload:
    garbage is written and later reads fail with EIO.
    """
    view = memoryview(data)
    if view.readonly:
        # ctypes can only point at writable memory; one copy of <= 128 KiB.
        cbuf = (ctypes.c_char * view.nbytes).from_buffer_copy(view)
    else:
        cbuf = (ctypes.c_char * view.nbytes).from_buffer(view)
    try:
        iov = Iovec(ctypes.addressof(cbuf), view.nbytes)
        args = EncodedIoArgs()
        args.iov = ctypes.pointer(iov)
        args.iovcnt = 1
        args.offset = offset
        args.len = num_bytes
        args.unencoded_len = unencoded_len
        args.unencoded_offset = unencoded_offset
        args.compression = compression
        args.encryption = ENCRYPTION_NONE
        ret = _ioctl(fd, BTRFS_IOC_ENCODED_WRITE, ctypes.addressof(args))
        return _check_call(ret, f"BTRFS_IOC_ENCODED_WRITE at offset {offset}")
    finally:
        del cbuf
        view.release()


def encoded_write_refusal(
    *,
    offset: int,
    data_len: int,
    num_bytes: int,
    unencoded_len: int,
    unencoded_offset: int,
    compression: int,
    sector_size: int,
    dest_size: int,
    nodatasum: bool = False,
    encryption: int = ENCRYPTION_NONE,
) -> str | None:
    """Why the kernel would refuse this ENCODED_WRITE, or None if it may be tried.

    Mirrors the argument checks of btrfs_ioctl_encoded_write() and
    btrfs_do_encoded_write() (kernel 6.x). `data_len` is the payload size,
    `dest_size` the destination file's current size (st_size) at the time of
    the write: an unaligned end is only allowed when the write reaches or
    passes it. `nodatasum` is what is_nodatasum() says about the destination.

    Not covered (the caller checks them separately): CAP_SYS_ADMIN
    (has_cap_sys_admin), an fd not open for writing, a file on a whole mount
    with -o nodatasum/nodatacow (not visible from userspace; the kernel says
    EINVAL and the caller falls back), ENOSPC and file size limits.
    """
    if encryption != ENCRYPTION_NONE:
        return f"encryption {encryption} not supported"
    if compression == COMPRESSION_NONE:
        return "payload is not compressed"
    if not 0 < compression < COMPRESSION_TYPES:
        return f"unknown compression {compression}"
    if COMPRESSION_LZO_4K <= compression <= COMPRESSION_LZO_64K:
        if lzo_sector_size(compression) != sector_size:
            return (
                f"LZO variant for {lzo_sector_size(compression)}-byte sectors "
                f"on a {sector_size}-byte sector filesystem"
            )
    if nodatasum:
        return "destination file has no data checksums (nodatasum/nocow)"
    if num_bytes <= 0:
        return "empty write"
    if unencoded_offset > unencoded_len:
        return "unencoded_offset past unencoded_len"
    if num_bytes > unencoded_len - unencoded_offset:
        return "len larger than unencoded_len - unencoded_offset"
    if unencoded_len > MAX_UNENCODED:
        return f"unencoded_len {unencoded_len} over {MAX_UNENCODED}"
    if data_len == 0:
        return "empty payload"
    if data_len > MAX_ENCODED:
        return f"payload {data_len} bytes over {MAX_ENCODED}"
    if data_len >= unencoded_len:
        return f"payload {data_len} bytes not smaller than unencoded_len {unencoded_len}"
    if offset % sector_size:
        return f"offset {offset} not sector aligned"
    end = offset + num_bytes
    if end < dest_size and end % sector_size:
        return f"end {end} not sector aligned and before file size {dest_size}"
    if unencoded_offset % sector_size:
        return f"unencoded_offset {unencoded_offset} not sector aligned"
    return None


def may_be_inline(*, offset: int, num_bytes: int, unencoded_len: int, unencoded_offset: int,
                  sector_size: int, dest_size: int) -> bool:
    """Whether ENCODED_WRITE may store this extent inline (in the file's b-tree leaf).

    btrfs_do_encoded_write() tries an inline extent for a write at offset 0 of a whole
    extent (len == unencoded_len, unencoded_offset 0), and can_cow_file_range_inline()
    takes it when it is at most one sector, reaches i_size and the payload fits
    max_inline. max_inline is a mount option userspace cannot read reliably, so the
    payload size is left out: this says True for every extent that might go inline.
    """
    return (offset == 0 and unencoded_offset == 0 and num_bytes == unencoded_len
            and unencoded_len <= sector_size and num_bytes >= dest_size)


def readback_refusal(*, payload, decoded_len: int | None, compression: int, unencoded_len: int,
                     inline: bool) -> str | None:
    """Why btrfs would not read this extent back as its decoded bytes, or None.

    A regular compressed extent whose payload decodes short reads back zero-filled
    (the read path zero-fills the rest of the bio), as the stream format says. An
    inline extent does not: zlib_decompress(), zstd_decompress() and lzo_decompress()
    fail the read with EIO when they produce fewer than ram_bytes (= len) bytes, and
    lzo_decompress() also wants exactly one segment and no padding (else EUCLEAN).
    `decoded_len` None means the payload could not be decoded here (LZO without
    python-lzo): only the framing is checked.
    """
    if not inline:
        return None
    if COMPRESSION_LZO_4K <= compression <= COMPRESSION_LZO_64K:
        total = int.from_bytes(bytes(payload[:4]), "little") if len(payload) >= 4 else -1
        segment = int.from_bytes(bytes(payload[4:8]), "little") if len(payload) >= 8 else -1
        if total != len(payload) or segment != len(payload) - 8:
            return "LZO frame not one unpadded segment where btrfs may store the extent inline"
    if decoded_len is not None and decoded_len < unencoded_len:
        return (f"payload decodes to {decoded_len} of {unencoded_len} bytes where btrfs may store"
                " the extent inline")
    return None


@functools.lru_cache(maxsize=256)  # the same few reasons come back for every extent
def refusal_kind(reason: str) -> str:
    """A refusal reason without its numbers ("offset N not sector aligned"),
    so refusals can be counted by kind."""
    return re.sub(r"\b\d+\b", "N", reason)


def count_by_kind(counts: dict[str, int], reason: str) -> None:
    kind = refusal_kind(reason)
    counts[kind] = counts.get(kind, 0) + 1


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


class FiemapExtentStruct(ctypes.Structure):
    _fields_ = [
        ("fe_logical", ctypes.c_uint64),
        ("fe_physical", ctypes.c_uint64),
        ("fe_length", ctypes.c_uint64),
        ("fe_reserved64", ctypes.c_uint64 * 2),
        ("fe_flags", ctypes.c_uint32),
        ("fe_reserved", ctypes.c_uint32 * 3),
    ]


class FiemapHeader(ctypes.Structure):
    # struct fiemap without its flexible fm_extents[] array; the extents
    # follow it directly in memory (see _fiemap_request).
    _fields_ = [
        ("fm_start", ctypes.c_uint64),
        ("fm_length", ctypes.c_uint64),
        ("fm_flags", ctypes.c_uint32),
        ("fm_mapped_extents", ctypes.c_uint32),
        ("fm_extent_count", ctypes.c_uint32),
        ("fm_reserved", ctypes.c_uint32),
    ]


assert ctypes.sizeof(FiemapExtentStruct) == 56
assert ctypes.sizeof(FiemapHeader) == 32

FS_IOC_FIEMAP = _IOWR(ord("f"), 11, ctypes.sizeof(FiemapHeader))
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


def _fiemap_request(count: int):
    class _Fiemap(ctypes.Structure):
        _fields_ = [
            ("hdr", FiemapHeader),
            ("extents", FiemapExtentStruct * count),
        ]

    return _Fiemap()


def fiemap(fd: int, start: int = 0, length: int | None = None, *, flags: int = 0) -> list[FiemapExtent]:
    """Mapped extents overlapping [start, start+length), in file order.

    Holes have no entry. The first extent may begin before `start`; extents
    are reported whole, not clipped. `length` None means to the end of the
    file (FIEMAP_MAX_OFFSET). Pass flags=FIEMAP_FLAG_SYNC to flush dirty
    data first; otherwise not yet written data shows up as DELALLOC.
    """
    end = 2**64 - 1 if length is None else start + length
    req = _fiemap_request(FIEMAP_BATCH)
    result: list[FiemapExtent] = []
    pos = start
    while pos < end:
        ctypes.memset(ctypes.addressof(req), 0, ctypes.sizeof(req))
        req.hdr.fm_start = pos
        req.hdr.fm_length = end - pos
        req.hdr.fm_flags = flags
        req.hdr.fm_extent_count = FIEMAP_BATCH
        _check_call(_ioctl(fd, FS_IOC_FIEMAP, ctypes.addressof(req)), "FS_IOC_FIEMAP")
        mapped = req.hdr.fm_mapped_extents
        if mapped == 0:
            break
        for i in range(mapped):
            e = req.extents[i]
            result.append(FiemapExtent(e.fe_logical, e.fe_physical, e.fe_length, e.fe_flags))
        last = result[-1]
        if last.flags & FIEMAP_EXTENT_LAST or mapped < FIEMAP_BATCH:
            break
        if last.end <= pos:
            # Never loop forever on a confused filesystem.
            raise OSError(errno.EIO, f"FS_IOC_FIEMAP made no progress at offset {pos}")
        pos = last.end
    return result


# --------------------------------------------------------------------------
# statfs / inode flags / capabilities
# --------------------------------------------------------------------------

BTRFS_SUPER_MAGIC = 0x9123683E


class Statfs(ctypes.Structure):
    """struct statfs for 64-bit Linux (os.statvfs lacks f_type)."""

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
        _check_call(_libc.fstatfs(fd_or_path, ctypes.byref(buf)), "fstatfs")
    else:
        _check_call(_libc.statfs(os.fsencode(fd_or_path), ctypes.byref(buf)), f"statfs {fd_or_path}")
    return buf


def is_btrfs(fd_or_path) -> bool:
    # f_type is a signed long; mask so the comparison does not depend on sign.
    return statfs(fd_or_path).f_type & 0xFFFFFFFF == BTRFS_SUPER_MAGIC


def sector_size(fd_or_path) -> int:
    """The filesystem's sector size. btrfs reports its sectorsize as f_bsize
    (and as st_blksize); ENCODED_WRITE alignment rules use this value."""
    return statfs(fd_or_path).f_bsize


# FS_IOC_GETFLAGS is declared with `long` but the kernel reads/writes an int.
FS_IOC_GETFLAGS = _IOR(ord("f"), 1, ctypes.sizeof(ctypes.c_long))
FS_NOCOW_FL = 0x00800000  # chattr +C
FS_NOCOMP_FL = 0x00000400
FS_COMPR_FL = 0x00000004

if _64BIT:
    assert FS_IOC_GETFLAGS == 0x80086601


def inode_flags(fd: int) -> int:
    flags = ctypes.c_uint(0)
    _check_call(_ioctl(fd, FS_IOC_GETFLAGS, ctypes.addressof(flags)), "FS_IOC_GETFLAGS")
    return flags.value


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
