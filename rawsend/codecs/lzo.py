"""btrfs LZO extents: the per-sector framing around raw LZO1X blocks.

btrfs does not store one LZO stream per extent. It compresses each sector of
file data separately and frames the pieces (kernel fs/btrfs/lzo.c):

    __le32 total_len         bytes of the whole frame, these 4 included
    then per segment:
      __le32 seg_len         bytes of LZO1X data that follow
      seg_len bytes          raw LZO1X (no python-lzo header), one sector
                             of file data at most when decoded

A segment header never straddles a sector boundary: when fewer than 4 bytes
remain in the current sector after a segment, they are zero padding and the
next header starts at the next sector. Segment data itself may cross sector
boundaries. On disk the frame is zero padded up to the sector size, so an
ENCODED_READ payload is usually longer than total_len; an inline extent's
payload is exactly total_len long.

The raw LZO1X codec comes from the optional PyPI package `python-lzo`
(module `lzo`), which binds liblzo2 and uses lzo1x_decompress_safe, so a
corrupt segment cannot write past the output buffer.
"""

from __future__ import annotations

import struct

_U32 = struct.Struct("<I")
LZO_LEN = _U32.size  # every length field is a 4-byte little-endian u32

from rawsend.stream.records import MAX_ENCODED, MAX_UNENCODED  # the kernel rejects longer frames

try:
    import lzo as _lzo
except ImportError:  # optional dependency
    _lzo = None

AVAILABLE = _lzo is not None


class LzoUnavailableError(ImportError):
    """The optional `python-lzo` package is not installed."""


class LzoFramingError(ValueError):
    """A btrfs LZO frame whose lengths do not add up."""


class LzoDataError(ValueError):
    """A segment whose LZO1X data does not decompress."""


def _require_lzo():
    if _lzo is None:
        raise LzoUnavailableError(
            "LZO-compressed btrfs extents need the optional package python-lzo "
            "(pip install python-lzo; building it needs liblzo2-dev and a C compiler)"
        )
    return _lzo


def lzo1x_worst_compress(n: int) -> int:
    """Largest LZO1X output for n input bytes (linux/lzo.h). A segment longer
    than this for one sector of input cannot be valid."""
    return n + n // 16 + 64 + 3


def decode_btrfs_lzo(payload, unencoded_len: int, sector_size: int, *, zero_extend: bool = True) -> bytes:
    """Decode one btrfs LZO extent to exactly `unencoded_len` bytes.

    `payload` is the encoded extent as ENCODED_READ returns it (padded or
    not). Like the kernel, decoded data shorter than unencoded_len is
    zero-extended. Data longer than unencoded_len is rejected (the kernel
    would truncate it; the stream format says a payload that decodes to more
    than its record declares is damaged). Memory use is bounded by
    unencoded_len plus one sector: no segment is ever decoded into more than
    `sector_size` bytes.

    Raises LzoFramingError / LzoDataError (both ValueError) naming the byte
    offset in `payload`, and LzoUnavailableError if python-lzo is missing.
    zero_extend=False returns the decoded bytes as they are, possibly fewer.
    """
    payload = memoryview(payload).cast("B")
    size = len(payload)
    if sector_size <= 0 or sector_size & (sector_size - 1):
        raise ValueError(f"sector size {sector_size} is not a power of two")
    if not 0 <= unencoded_len <= MAX_UNENCODED:
        # btrfs never makes a compressed extent longer than 128 KiB; the
        # check also keeps a hostile length from sizing the output buffer.
        raise ValueError(f"unencoded_len {unencoded_len} outside 0..{MAX_UNENCODED}")

    if size < LZO_LEN:
        raise LzoFramingError(f"payload of {size} bytes is too short for the 4-byte total length at offset 0")
    total_len = _U32.unpack_from(payload, 0)[0]
    # Same checks as the kernel's lzo_decompress_bio(): the frame fits in the
    # payload and the 128 KiB limit, and the payload is not longer than the
    # frame rounded up to a sector (i.e. only padding follows the frame).
    if total_len < LZO_LEN:
        raise LzoFramingError(f"total length {total_len} at offset 0 is smaller than its own field")
    if total_len > size:
        raise LzoFramingError(f"total length {total_len} at offset 0 is past the end of the {size}-byte payload")
    if total_len > MAX_ENCODED:
        raise LzoFramingError(f"total length {total_len} at offset 0 is over the {MAX_ENCODED}-byte limit")
    if -(-total_len // sector_size) * sector_size < size:
        raise LzoFramingError(
            f"payload of {size} bytes is longer than total length {total_len} rounded up to a sector"
        )

    lzo = _require_lzo()  # after the framing checks: damage is found without the decoder too
    max_seg = lzo1x_worst_compress(sector_size)
    out = bytearray()
    pos = LZO_LEN
    while pos < total_len:
        # (A header cannot straddle a sector here: the padding skip at the
        # end of this loop always leaves at least 4 bytes in the sector.)
        if pos + LZO_LEN > total_len:
            raise LzoFramingError(f"segment header at offset {pos} runs past total length {total_len}")
        seg_len = _U32.unpack_from(payload, pos)[0]
        data_start = pos + LZO_LEN
        if seg_len == 0:
            raise LzoFramingError(f"empty segment at offset {pos}")
        if seg_len > max_seg:
            raise LzoFramingError(
                f"segment length {seg_len} at offset {pos} is over {max_seg}, the most one sector can take"
            )
        if data_start + seg_len > total_len:
            raise LzoFramingError(
                f"segment length {seg_len} at offset {pos} runs past total length {total_len}"
            )
        try:
            # header=False: raw LZO1X; the third argument caps the output.
            chunk = lzo.decompress(bytes(payload[data_start:data_start + seg_len]), False, sector_size)
        except lzo.error as e:
            raise LzoDataError(f"segment at offset {pos} ({seg_len} bytes) does not decompress: {e}") from None
        if len(out) + len(chunk) > unencoded_len:
            raise LzoDataError(f"segment at offset {pos} decodes past unencoded_len {unencoded_len}"
                                  f" (to {len(out) + len(chunk)} bytes)")
        out += chunk
        pos = data_start + seg_len
        left_in_sector = sector_size - pos % sector_size
        if left_in_sector < LZO_LEN:
            pos += left_in_sector  # zero padding: no room for a header here

    if zero_extend and len(out) < unencoded_len:
        out += bytes(unencoded_len - len(out))
    return bytes(out)


def encode_btrfs_lzo(data, sector_size: int) -> bytes:
    """Frame `data` the way the kernel's lzo_compress_folios() does.

    Meant for tests, so frames can be built without btrfs. Returns the frame
    without the trailing sector padding (its length equals total_len; an
    extent on disk would be zero padded to a sector). The LZO1X bytes come
    from liblzo2 and need not match the kernel's compressor byte for byte;
    the framing does. Unlike the kernel it never gives up on data that grows.
    """
    lzo = _require_lzo()
    data = memoryview(data).cast("B")
    out = bytearray(LZO_LEN)  # total_len, filled in at the end
    for start in range(0, len(data), sector_size):
        seg = lzo.compress(bytes(data[start:start + sector_size]), 1, False)
        out += _U32.pack(len(seg))
        out += seg
        left_in_sector = sector_size - len(out) % sector_size
        if left_in_sector < LZO_LEN:
            out += bytes(left_in_sector)
    _U32.pack_into(out, 0, len(out))
    return bytes(out)
