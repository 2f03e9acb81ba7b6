"""Encoded I/O: BTRFS_IOC_ENCODED_READ and BTRFS_IOC_ENCODED_WRITE.

Facts checked on a real kernel (6.18, 4 KiB sectors) are marked "[run]".
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from rawsend.btrfs.ioctl import (
    BTRFS_IOC_ENCODED_READ,
    BTRFS_IOC_ENCODED_WRITE,
    EncodedIoArgs,
    Iovec,
    check_call,
    ioctl,
)
from rawsend.btrfs.rules import ENCRYPTION_NONE, MAX_ENCODED


@dataclass(frozen=True)
class EncodedExtent:
    """One BTRFS_IOC_ENCODED_READ result.

    offset:           file offset that was asked for.
    num_bytes:        the kernel's `len`: bytes of file data covered starting
                      at `offset` (already clamped to i_size).
    unencoded_len:    length of the whole decoded extent (ram_bytes).
    unencoded_offset: where `offset` falls inside the decoded extent. Not
                      always sector aligned (inline extents), see
                      rules.encoded_write_refusal().
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
        ret = ioctl(fd, BTRFS_IOC_ENCODED_READ, ctypes.addressof(args))
        check_call(ret, f"BTRFS_IOC_ENCODED_READ at offset {offset}")
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

    Call rules.encoded_write_refusal() first: it catches the EINVAL cases
    without a syscall and says which rule failed, which the bare errno does not.

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
        ret = ioctl(fd, BTRFS_IOC_ENCODED_WRITE, ctypes.addressof(args))
        return check_call(ret, f"BTRFS_IOC_ENCODED_WRITE at offset {offset}")
    finally:
        del cbuf
        view.release()
