"""Extent compression: make payloads the way btrfs stores them, decode them with bounded memory.

zstd: one frame per extent, windowLog <= 17 (what btrfs's decoder accepts).
zlib: one zlib stream per extent (RFC 1950), as btrfs.
lz4:  rawsend's own id 16, an lz4 block without size prefix (the size is
      unencoded_len in the record).
LZO:  only ever taken from btrfs as it lies on disk; decoded by codecs/lzo.py.
"""

from __future__ import annotations

import threading
import zlib

import lz4.block
import zstandard

from rawsend.errors import DecodeError, DecoderMissing
from rawsend.stream.records import Compression

ZSTD_WINDOW_LOG = 17  # btrfs decodes zstd frames with a 128 KiB window at most
DEFAULT_LEVELS = {Compression.ZSTD: 3, Compression.ZLIB: 3, Compression.LZ4: 0, Compression.NONE: 0}

_local = threading.local()  # zstandard contexts are not thread-safe: one per thread


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    cache = _local.__dict__.setdefault("zc", {})
    cctx = cache.get(level)
    if cctx is None:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, window_log=ZSTD_WINDOW_LOG, write_content_size=True, write_checksum=False)
        cctx = cache[level] = zstandard.ZstdCompressor(compression_params=params)
    return cctx


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "zd", None)
    if dctx is None:
        # a frame asking for a larger window is refused before the decoder allocates it
        dctx = _local.zd = zstandard.ZstdDecompressor(max_window_size=1 << ZSTD_WINDOW_LOG)
    return dctx


def compress(data, compression: int, level: int) -> tuple[int, bytes]:
    """Return (compression id, payload); data that does not get smaller is left as it is."""
    if compression == Compression.ZSTD:
        out = _zstd_compressor(level).compress(data)
    elif compression == Compression.LZ4:
        out = lz4.block.compress(data, store_size=False)
    elif compression == Compression.ZLIB:
        out = zlib.compress(data, level)
    else:
        return Compression.NONE, data
    if len(out) >= len(data):
        return Compression.NONE, data
    return compression, out


def decode(payload, compression: int, unencoded_len: int, sector_size: int = 4096) -> bytes:
    """Decode one payload to at most unencoded_len bytes; shorter output is zero-extended.

    Memory is bounded by unencoded_len (at most 128 KiB): no decoder is ever
    asked for more than unencoded_len + 1 bytes, whatever the payload declares.
    """
    out = decode_short(payload, compression, unencoded_len)
    if len(out) < unencoded_len:
        out = out + bytes(unencoded_len - len(out))
    return out


def decode_short(payload, compression: int, unencoded_len: int) -> bytes:
    """decode() without the zero extension: what the payload itself decodes to.

    A btrfs receiver needs the real length: the kernel zero-fills a short regular
    extent but fails every read of a short inline one (spec/btrfs.md section 3).
    """
    if compression == Compression.NONE:
        out = bytes(payload)
    elif compression == Compression.ZSTD:
        out = _decode_zstd(payload, unencoded_len)
    elif compression == Compression.ZLIB:
        out = _decode_zlib(payload, unencoded_len)
    elif compression == Compression.LZ4:
        try:
            out = lz4.block.decompress(payload, uncompressed_size=unencoded_len)
        except lz4.block.LZ4BlockError as e:
            raise DecodeError(f"lz4: {e}") from None
    elif Compression.LZO_4K <= compression <= Compression.LZO_4K + 4:
        from rawsend.codecs import lzo
        try:
            out = lzo.decode_btrfs_lzo(payload, unencoded_len, 4096 << (compression - Compression.LZO_4K),
                                       zero_extend=False)
        except lzo.LzoUnavailableError:
            raise DecoderMissing("a btrfs LZO extent, and the optional LZO support is not installed;"
                                 " the stream is not known to be damaged",
                                 hint="install it with: pip install 'rawsend[lzo]' (python-lzo, needs liblzo2-dev),"
                                      " or receive on btrfs (verbatim) or with --store") from None
        except ValueError as e:
            raise DecodeError(f"lzo: {e}") from None
    else:
        raise DecodeError(f"unknown compression {compression}")
    if len(out) > unencoded_len:
        raise DecodeError(f"payload decodes to more than unencoded_len {unencoded_len}")
    return out


def _decode_zstd(payload, limit: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as e:
        raise DecodeError(f"zstd frame header: {e}") from None
    if params.content_size not in (zstandard.CONTENTSIZE_UNKNOWN,) and params.content_size > limit:
        raise DecodeError(f"zstd frame declares {params.content_size} bytes, over unencoded_len {limit}")
    # btrfs pads extents with zeros to the sector size: only zeros may follow the frame
    size = _zstd_frame_size(payload, zstandard.frame_header_size(payload), params.has_checksum)
    if size > len(payload):
        raise DecodeError(f"zstd frame is cut short: its blocks need {size} bytes, the payload has {len(payload)}")
    tail = bytes(payload[size:])
    if tail.count(0) != len(tail):
        raise DecodeError(f"data after the end of the zstd frame (at payload byte {size})")
    payload = memoryview(payload)[:size]
    try:
        reader = _zstd_decompressor().stream_reader(payload, read_across_frames=False)
        out = reader.read(limit + 1)
        if len(out) <= limit and reader.read(1):
            raise DecodeError("zstd payload holds more than one frame or extra data")
    except zstandard.ZstdError as e:
        raise DecodeError(f"zstd: {e}") from None
    return out


def _zstd_frame_size(payload, header_size: int, has_checksum: bool) -> int:
    """Length of the zstd frame at the start of payload, from its block headers (RFC 8878
    section 3.1.1.2, as ZSTD_findFrameCompressedSize). More than len(payload) when the
    frame is cut short: the decoder would otherwise return what it has, without an error."""
    pos = header_size
    while pos + 3 <= len(payload):
        block = int.from_bytes(payload[pos:pos + 3], "little")  # last bit, type (2 bits), size (21 bits)
        pos += 3 + (1 if (block >> 1) & 3 == 1 else block >> 3)  # an RLE block holds one byte
        if block & 1:
            return pos + (4 if has_checksum else 0)
    return len(payload) + 1  # no last block


def _decode_zlib(payload, limit: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, limit + 1)
    except zlib.error as e:
        raise DecodeError(f"zlib: {e}") from None
    if len(out) <= limit and not d.eof:
        raise DecodeError("zlib stream is incomplete")
    if d.unused_data and any(d.unused_data):
        # btrfs pads compressed extents with zeros to the sector size
        raise DecodeError("data after the end of the zlib stream")
    return out
