"""The kernel's rules for encoded extents, as pure functions: no I/O, no state.

encoded_write_refusal() mirrors the argument checks of
btrfs_ioctl_encoded_write() and btrfs_do_encoded_write() (kernel 6.x);
readback_refusal() says which written extents would not read back as their
decoded bytes (spec/btrfs.md section 3). A refusal is typed: its kind is what
the summaries count, its detail the same sentence with this extent's numbers.
"""

from __future__ import annotations

import enum
import errno
import struct
from dataclasses import dataclass

from rawsend.stream.records import MAX_ENCODED, MAX_UNENCODED, Compression

# BTRFS_ENCODED_IO_COMPRESSION_*: the stream's Compression numbers 0..7 are btrfs's.
# LZO is framed per sector, so each sector size has its own value; see codecs/lzo.py.
COMPRESSION_NONE = Compression.NONE
COMPRESSION_ZLIB = Compression.ZLIB
COMPRESSION_ZSTD = Compression.ZSTD
COMPRESSION_LZO_4K = Compression.LZO_4K
COMPRESSION_LZO_8K = Compression.LZO_8K
COMPRESSION_LZO_16K = Compression.LZO_16K
COMPRESSION_LZO_32K = Compression.LZO_32K
COMPRESSION_LZO_64K = Compression.LZO_64K
COMPRESSION_TYPES = 8  # sentinel: first invalid value

COMPRESSION_NAMES = {c: Compression.NAMES[c] for c in range(COMPRESSION_TYPES)}

ENCRYPTION_NONE = 0  # the only value the kernel knows today

# BTRFS_MAX_UNCOMPRESSED / BTRFS_MAX_COMPRESSED (records.py): a compressed extent
# covers at most 128 KiB of file data and takes at most 128 KiB on disk.

# The start of a btrfs LZO frame: total_len, then the first segment's length
LZO_FRAME_START = struct.Struct("<II")


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


class RefusalKind(enum.StrEnum):
    """Why a compressed extent is not sent or written as it is. The value is the
    label the summaries print, the detail's sentence with its numbers as N."""

    # the receiver cannot write any extent verbatim
    NO_RAW = "decoding asked for (--no-raw)"
    NOT_BTRFS = "destination is not btrfs"
    NO_CAP = "no CAP_SYS_ADMIN for encoded writes (run as root)"
    NOT_BTRFS_COMPRESSION = "not a btrfs compression"
    # the kernel's answer to the write
    KERNEL_EINVAL = "kernel refused the encoded write (EINVAL)"
    KERNEL_ENOSPC = "kernel refused the encoded write (ENOSPC)"
    KERNEL_ENOTTY = "kernel refused the encoded write (ENOTTY)"
    KERNEL_EOPNOTSUPP = "kernel refused the encoded write (EOPNOTSUPP)"
    KERNEL_EPERM = "kernel refused the encoded write (EPERM)"
    # encoded_write_refusal: the kernel's argument checks
    ENCRYPTION = "encryption N not supported"
    NOT_COMPRESSED = "payload is not compressed"
    UNKNOWN_COMPRESSION = "unknown compression N"
    LZO_SECTOR_SIZE = "LZO variant for N-byte sectors on a N-byte sector filesystem"
    NODATASUM = "destination file has no data checksums (nodatasum/nocow)"
    EMPTY_WRITE = "empty write"
    UNENCODED_OFFSET_PAST = "unencoded_offset past unencoded_len"
    LEN_PAST_EXTENT = "len larger than unencoded_len - unencoded_offset"
    UNENCODED_LEN_OVER = "unencoded_len N over N"
    EMPTY_PAYLOAD = "empty payload"
    PAYLOAD_OVER = "payload N bytes over N"
    PAYLOAD_NOT_SMALLER = "payload N bytes not smaller than unencoded_len N"
    OFFSET_UNALIGNED = "offset N not sector aligned"
    END_UNALIGNED = "end N not sector aligned and before file size N"
    UNENCODED_OFFSET_UNALIGNED = "unencoded_offset N not sector aligned"
    # readback_refusal: written, it would not read back as its decoded bytes
    SHORT_INLINE = "payload decodes to N of N bytes where btrfs may store the extent inline"
    LZO_INLINE_FORM = "LZO frame not one unpadded segment where btrfs may store the extent inline"
    # the sender's own reasons to send an extent decoded
    SOURCE_UNKNOWN_COMPRESSION = "compression N unknown to the stream format"
    PARTLY_REFERENCED = "extent of N bytes on disk covers only N bytes of the file"


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: RefusalKind
    detail: str  # the kind's sentence with this extent's numbers

    def __str__(self) -> str:
        return self.detail


def refusal(kind: RefusalKind, detail: str | None = None) -> Refusal:
    return Refusal(kind, kind.value if detail is None else detail)


NO_RAW = refusal(RefusalKind.NO_RAW)
NOT_BTRFS = refusal(RefusalKind.NOT_BTRFS)
NO_CAP = refusal(RefusalKind.NO_CAP)

# the errnos a receiver falls back on, and what each one is counted as
KERNEL_REFUSALS = {
    errno.EINVAL: refusal(RefusalKind.KERNEL_EINVAL),
    errno.ENOSPC: refusal(RefusalKind.KERNEL_ENOSPC),
    errno.ENOTTY: refusal(RefusalKind.KERNEL_ENOTTY),
    errno.EOPNOTSUPP: refusal(RefusalKind.KERNEL_EOPNOTSUPP),
    errno.EPERM: refusal(RefusalKind.KERNEL_EPERM),
}


def count_by_kind(counts: dict[RefusalKind, int], why: Refusal) -> None:
    counts[why.kind] = counts.get(why.kind, 0) + 1


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
) -> Refusal | None:
    """Why the kernel would refuse this ENCODED_WRITE, or None if it may be tried.

    `data_len` is the payload size, `dest_size` the destination file's current
    size (st_size) at the time of the write: an unaligned end is only allowed
    when the write reaches or passes it. `nodatasum` is what is_nodatasum()
    says about the destination.

    Not covered (the caller checks them separately): CAP_SYS_ADMIN
    (has_cap_sys_admin), an fd not open for writing, a file on a whole mount
    with -o nodatasum/nodatacow (not visible from userspace; the kernel says
    EINVAL and the caller falls back), ENOSPC and file size limits.
    """
    K = RefusalKind
    if encryption != ENCRYPTION_NONE:
        return refusal(K.ENCRYPTION, f"encryption {encryption} not supported")
    if compression == COMPRESSION_NONE:
        return refusal(K.NOT_COMPRESSED)
    if not 0 < compression < COMPRESSION_TYPES:
        return refusal(K.UNKNOWN_COMPRESSION, f"unknown compression {compression}")
    if COMPRESSION_LZO_4K <= compression <= COMPRESSION_LZO_64K:
        if lzo_sector_size(compression) != sector_size:
            return refusal(K.LZO_SECTOR_SIZE, f"LZO variant for {lzo_sector_size(compression)}-byte sectors "
                                              f"on a {sector_size}-byte sector filesystem")
    if nodatasum:
        return refusal(K.NODATASUM)
    if num_bytes <= 0:
        return refusal(K.EMPTY_WRITE)
    if unencoded_offset > unencoded_len:
        return refusal(K.UNENCODED_OFFSET_PAST)
    if num_bytes > unencoded_len - unencoded_offset:
        return refusal(K.LEN_PAST_EXTENT)
    if unencoded_len > MAX_UNENCODED:
        return refusal(K.UNENCODED_LEN_OVER, f"unencoded_len {unencoded_len} over {MAX_UNENCODED}")
    if data_len == 0:
        return refusal(K.EMPTY_PAYLOAD)
    if data_len > MAX_ENCODED:
        return refusal(K.PAYLOAD_OVER, f"payload {data_len} bytes over {MAX_ENCODED}")
    if data_len >= unencoded_len:
        return refusal(K.PAYLOAD_NOT_SMALLER,
                       f"payload {data_len} bytes not smaller than unencoded_len {unencoded_len}")
    if offset % sector_size:
        return refusal(K.OFFSET_UNALIGNED, f"offset {offset} not sector aligned")
    end = offset + num_bytes
    if end < dest_size and end % sector_size:
        return refusal(K.END_UNALIGNED, f"end {end} not sector aligned and before file size {dest_size}")
    if unencoded_offset % sector_size:
        return refusal(K.UNENCODED_OFFSET_UNALIGNED, f"unencoded_offset {unencoded_offset} not sector aligned")
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
                     inline: bool) -> Refusal | None:
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
        if len(payload) < LZO_FRAME_START.size:
            return refusal(RefusalKind.LZO_INLINE_FORM)
        total, segment = LZO_FRAME_START.unpack_from(payload, 0)
        if total != len(payload) or segment != len(payload) - LZO_FRAME_START.size:
            return refusal(RefusalKind.LZO_INLINE_FORM)
    if decoded_len is not None and decoded_len < unencoded_len:
        return refusal(RefusalKind.SHORT_INLINE, f"payload decodes to {decoded_len} of {unencoded_len} bytes"
                                                 " where btrfs may store the extent inline")
    return None
