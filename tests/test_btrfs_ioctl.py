"""rawsend.btrfs and rawsend.codecs.lzo: pure rules first, then real btrfs.

Tests needing btrfs loop-mount small sparse images and skip (see -rs) when
that is impossible: not root, no btrfs-progs, no loop devices.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import re
import struct
import subprocess
import zlib

import pytest
import zstandard

from rawsend import btrfs
from rawsend.btrfs import (
    COMPRESSION_LZO_4K,
    COMPRESSION_LZO_8K,
    COMPRESSION_NONE,
    COMPRESSION_ZLIB,
    COMPRESSION_ZSTD,
    FIEMAP_EXTENT_ENCODED,
    FIEMAP_EXTENT_LAST,
    FIEMAP_EXTENT_UNWRITTEN,
    encoded_read,
    encoded_write,
    Refusal,
    RefusalKind,
    encoded_write_refusal,
    fiemap,
)
from tests import btrfs_fixtures
from tests.btrfs_fixtures import btrfs_mount, require_encoded_io

# Module-scoped mounts; pytest finds fixtures by their name in this module.
btrfs_zstd = btrfs_fixtures.btrfs_zstd
btrfs_plain = btrfs_fixtures.btrfs_plain

KiB = 1024


def compressible(n: int, seed: int = 0) -> bytes:
    line = b"rawsend test line %08d: the quick brown fox jumps over the lazy dog\n"
    out = b"".join(line % (seed * 1_000_000 + i) for i in range(n // 60 + 1))
    return out[:n]


def write_synced(path, data: bytes) -> None:
    # fsync forces writeback, which is when btrfs compresses and allocates.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_all_extents(fd: int) -> list[btrfs.EncodedExtent]:
    out, pos, buf = [], 0, bytearray(128 * KiB)
    while (e := encoded_read(fd, pos, buf)) is not None:
        # data is a view into buf: keep a copy
        out.append(dataclasses.replace(e, data=bytes(e.data)))
        pos = e.end
    return out


# --------------------------------------------------------------------------
# Layout and constants (no btrfs needed)
# --------------------------------------------------------------------------


def test_struct_layout_and_ioctl_numbers():
    assert ctypes.sizeof(btrfs.EncodedIoArgs) == 128
    assert btrfs.EncodedIoArgs.reserved.offset == 64
    assert btrfs.BTRFS_IOC_ENCODED_READ == 0x80809440
    assert btrfs.BTRFS_IOC_ENCODED_WRITE == 0x40809440
    assert btrfs.FS_IOC_FIEMAP == 0xC020660B
    assert btrfs.FS_IOC_GETFLAGS == 0x80086601


def test_lzo_variants():
    assert [btrfs.lzo_compression_for_sector_size(4096 << i) for i in range(5)] == [3, 4, 5, 6, 7]
    assert btrfs.lzo_sector_size(COMPRESSION_LZO_8K) == 8192
    with pytest.raises(ValueError):
        btrfs.lzo_compression_for_sector_size(2048)
    with pytest.raises(ValueError):
        btrfs.lzo_sector_size(COMPRESSION_ZSTD)


def test_has_cap_sys_admin_matches_proc():
    with open("/proc/self/status") as f:
        capeff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    assert btrfs.has_cap_sys_admin() == bool(capeff & (1 << 21))


def test_is_btrfs_false_for_proc():
    assert not btrfs.is_btrfs("/proc")


# --------------------------------------------------------------------------
# encoded_write_refusal: one case per kernel rule
# --------------------------------------------------------------------------

GOOD = dict(
    offset=0, data_len=4096, num_bytes=128 * KiB, unencoded_len=128 * KiB, unencoded_offset=0,
    compression=COMPRESSION_ZSTD, sector_size=4096, dest_size=0,
)


# (change to GOOD, words in the reason, whether the real kernel can show the
# refusal here as EINVAL: not for another sector size, for flags that
# encoded_write() cannot pass, or for empty writes, which return 0)
REFUSALS = [
    ({"compression": COMPRESSION_NONE}, "not compressed", True),
    ({"compression": 8}, "unknown compression", True),
    ({"compression": COMPRESSION_LZO_8K}, "LZO variant", True),
    ({"compression": COMPRESSION_LZO_4K, "sector_size": 16384}, "LZO variant", False),
    ({"encryption": 1}, "encryption", False),
    ({"nodatasum": True}, "no data checksums", False),
    ({"num_bytes": 0}, "empty write", False),
    ({"unencoded_offset": 132 * KiB}, "unencoded_offset past", True),
    ({"unencoded_offset": 4096}, "len larger than", True),
    ({"unencoded_len": 256 * KiB, "num_bytes": 256 * KiB}, "unencoded_len 262144 over", True),
    ({"data_len": 0}, "empty payload", False),
    ({"data_len": 128 * KiB + 1, "unencoded_len": 128 * KiB}, "over 131072", True),
    ({"data_len": 4096, "unencoded_len": 4096, "num_bytes": 4096}, "not smaller than unencoded_len", True),
    ({"offset": 100}, "offset 100 not sector aligned", True),
    ({"num_bytes": 1000, "dest_size": 1 << 20}, "end 1000 not sector aligned", True),
    ({"unencoded_offset": 100, "num_bytes": 4096}, "unencoded_offset 100 not sector aligned", True),
]

ACCEPTED = [
    {},
    # mid-extent piece with aligned unencoded_offset (a read from offset 4096)
    {"offset": 4096, "num_bytes": 124 * KiB, "unencoded_offset": 4096},
    # an unaligned end is fine when it reaches or passes EOF
    {"num_bytes": 1000, "dest_size": 1000},
    {"num_bytes": 1000, "dest_size": 0},
    {"compression": COMPRESSION_LZO_4K},
]


@pytest.mark.parametrize("change", ACCEPTED)
def test_refusal_accepts_valid_extents(change):
    assert encoded_write_refusal(**{**GOOD, **change}) is None


@pytest.mark.parametrize("change, words, _", REFUSALS)
def test_refusal_rejects_each_rule(change, words, _):
    why = encoded_write_refusal(**{**GOOD, **change})
    assert why is not None and words in why.detail, why
    # the kind is the detail with its numbers as N: what the summaries print
    assert re.sub(r"\b\d+\b", "N", why.detail) == why.kind


# --------------------------------------------------------------------------
# readback_refusal: what would not read back as its decoded bytes
# --------------------------------------------------------------------------

WHOLE = dict(offset=0, num_bytes=4096, unencoded_len=4096, unencoded_offset=0, sector_size=4096,
             dest_size=4096)


@pytest.mark.parametrize("change, inline", [
    ({}, True),
    ({"num_bytes": 1000, "unencoded_len": 1000, "dest_size": 1000}, True),
    ({"dest_size": 0}, True),                                    # the write sets i_size
    ({"offset": 4096, "dest_size": 8192}, False),                 # inline extents start at 0
    ({"dest_size": 8192}, False),                                 # not the whole file
    ({"num_bytes": 8192, "unencoded_len": 8192, "dest_size": 8192}, False),  # over a sector
    ({"num_bytes": 2048, "dest_size": 2048}, False),              # part of an extent
    ({"unencoded_offset": 4096, "unencoded_len": 8192}, False),
])
def test_may_be_inline(change, inline):
    assert btrfs.may_be_inline(**{**WHOLE, **change}) is inline


def _lzo_start(total: int, segment: int, length: int) -> bytes:
    return struct.pack("<II", total, segment) + bytes(length - 8)


@pytest.mark.parametrize("args, kind", [
    (dict(payload=b"x" * 50, decoded_len=4096, compression=COMPRESSION_ZSTD, inline=True), None),
    (dict(payload=b"x" * 50, decoded_len=4095, compression=COMPRESSION_ZSTD, inline=True),
     RefusalKind.SHORT_INLINE),
    (dict(payload=b"x" * 50, decoded_len=100, compression=COMPRESSION_ZLIB, inline=True),
     RefusalKind.SHORT_INLINE),
    # a regular extent reads back zero-filled: short is fine there
    (dict(payload=b"x" * 50, decoded_len=100, compression=COMPRESSION_ZLIB, inline=False), None),
    (dict(payload=_lzo_start(60, 52, 60), decoded_len=4096, compression=COMPRESSION_LZO_4K, inline=True),
     None),
    (dict(payload=_lzo_start(60, 52, 70), decoded_len=4096, compression=COMPRESSION_LZO_4K, inline=True),
     RefusalKind.LZO_INLINE_FORM),                               # padded
    (dict(payload=_lzo_start(60, 20, 60), decoded_len=4096, compression=COMPRESSION_LZO_4K, inline=True),
     RefusalKind.LZO_INLINE_FORM),                               # more than one segment
    (dict(payload=b"\x04\x00", decoded_len=None, compression=COMPRESSION_LZO_4K, inline=True),
     RefusalKind.LZO_INLINE_FORM),
    # no LZO decoder: the framing is all that is checked
    (dict(payload=_lzo_start(60, 52, 60), decoded_len=None, compression=COMPRESSION_LZO_4K, inline=True),
     None),
    (dict(payload=_lzo_start(60, 52, 70), decoded_len=100, compression=COMPRESSION_LZO_4K, inline=False),
     None),
])
def test_readback_refusal(args, kind):
    why = btrfs.readback_refusal(unencoded_len=4096, **args)
    assert (why and why.kind) == kind


def test_decode_short_does_not_zero_extend():
    from rawsend.codecs.compress import decode, decode_short

    payload = zlib.compress(b"a" * 100)
    assert decode_short(payload, COMPRESSION_ZLIB, 4096) == b"a" * 100
    assert decode(payload, COMPRESSION_ZLIB, 4096) == b"a" * 100 + bytes(3996)


# --------------------------------------------------------------------------
# LZO framing (no btrfs needed)
# --------------------------------------------------------------------------


@pytest.fixture
def lzo_codec():
    pytest.importorskip("lzo", reason="python-lzo not installed")
    from rawsend.codecs import lzo as codec

    return codec


def test_lzo_roundtrip_and_padding(lzo_codec):
    data = compressible(128 * KiB - 1000)
    frame = lzo_codec.encode_btrfs_lzo(data, 4096)
    assert struct.unpack_from("<I", frame)[0] == len(frame)
    out = lzo_codec.decode_btrfs_lzo(frame, 128 * KiB, 4096)
    assert out == data + bytes(1000)  # short data is zero-extended
    padded = frame + bytes(-len(frame) % 4096)  # as it lies on disk
    assert lzo_codec.decode_btrfs_lzo(padded, 128 * KiB, 4096) == out
    # output longer than unencoded_len is refused, and unencoded_len is capped at 128 KiB
    with pytest.raises(ValueError, match="decodes past unencoded_len 5000"):
        lzo_codec.decode_btrfs_lzo(frame, 5000, 4096)
    with pytest.raises(ValueError, match="unencoded_len"):
        lzo_codec.decode_btrfs_lzo(frame, 1 << 40, 4096)


def _sector_compressing_to(lzo, target: int) -> bytes:
    """A 4096-byte input whose LZO1X form is exactly `target` bytes long."""
    import random

    for k in range(3800, 4096):
        # leading zeros compress, the random rest does not: length ~ k + 30
        chunk = bytes(4096 - k) + random.Random(k).randbytes(k)
        if len(lzo.compress(chunk, 1, False)) == target:
            return chunk
    raise AssertionError(f"no input compresses to {target} bytes")


def test_lzo_pads_when_no_room_for_a_header(lzo_codec):
    import lzo

    # first segment ends 2 bytes before the sector end: 4 + 4 + 4086 = 4094
    first = _sector_compressing_to(lzo, 4086)
    data = first + compressible(4096)
    frame = lzo_codec.encode_btrfs_lzo(data, 4096)
    assert frame[4094:4096] == b"\0\0"  # padding, then the next header
    assert struct.unpack_from("<I", frame, 4096)[0] == len(frame) - 4100
    assert lzo_codec.decode_btrfs_lzo(frame, 8192, 4096) == data

    # without the padding the second header straddles the sector boundary;
    # a decoder following the kernel skips to 4096 and reads garbage there
    bad = bytearray(frame[:4094] + frame[4096:])
    struct.pack_into("<I", bad, 0, len(bad))
    with pytest.raises(ValueError, match="at offset 4096"):
        lzo_codec.decode_btrfs_lzo(bytes(bad), 8192, 4096)


def test_lzo_incompressible_roundtrip(lzo_codec):
    data = os.urandom(64 * KiB)  # segments longer than a sector
    frame = lzo_codec.encode_btrfs_lzo(data, 4096)
    assert len(frame) > len(data)
    assert lzo_codec.decode_btrfs_lzo(frame, 64 * KiB, 4096) == data


def _frame(*segments: bytes) -> bytearray:
    body = b"".join(struct.pack("<I", len(s)) + s for s in segments)
    return bytearray(struct.pack("<I", 4 + len(body)) + body)


@pytest.mark.parametrize("mutate, words", [
    (lambda f: f[:2], "too short"),
    (lambda f: struct.pack("<I", 2) + f[4:], "smaller than its own field"),
    (lambda f: struct.pack("<I", len(f) + 1) + f[4:], "past the end"),
    (lambda f: f + bytes(8192), "longer than total length"),
    (lambda f: f[:4] + struct.pack("<I", 0) + f[8:], "empty segment at offset 4"),
    (lambda f: f[:4] + struct.pack("<I", 99999) + f[8:], "segment length 99999 at offset 4 is over"),
    (lambda f: f[:4] + struct.pack("<I", len(f)) + f[8:], "runs past total length"),
    (lambda f: f[:8] + b"\xff" * (len(f) - 8), "does not decompress"),
])
def test_lzo_rejects_malformed_frames(lzo_codec, mutate, words):
    seg = __import__("lzo").compress(compressible(4096), 1, False)
    frame = _frame(seg)
    with pytest.raises(ValueError) as info:
        lzo_codec.decode_btrfs_lzo(bytes(mutate(frame)), 4096, 4096)
    assert words in str(info.value)


def test_lzo_missing_dependency_is_named(monkeypatch):
    from rawsend.codecs import lzo as codec

    monkeypatch.setattr(codec, "_lzo", None)
    with pytest.raises(ImportError, match="python-lzo"):
        codec.decode_btrfs_lzo(b"\x04\0\0\0", 4096, 4096)


# --------------------------------------------------------------------------
# Real btrfs
# --------------------------------------------------------------------------


@pytest.fixture
def encoded_io():
    require_encoded_io()


def test_zstd_extents_copy_verbatim(encoded_io, btrfs_zstd, btrfs_plain):
    data = compressible(300 * KiB)
    src = btrfs_zstd / "text"
    write_synced(src, data)
    fd = os.open(src, os.O_RDONLY)
    try:
        assert btrfs.is_btrfs(fd) and btrfs.sector_size(fd) == 4096
        extents = read_all_extents(fd)
        src_map = fiemap(fd)
    finally:
        os.close(fd)

    assert sum(e.num_bytes for e in extents) == len(data)
    for e in extents:
        assert e.compression == COMPRESSION_ZSTD
        assert len(e.data) < e.num_bytes
        assert len(e.data) % 4096 == 0  # whole on-disk extent, sector padded
        assert e.unencoded_offset == 0 and e.encryption == 0

    dst = btrfs_plain / "text"
    fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert not btrfs.is_nodatasum(fd)
        for e in extents:
            assert encoded_write_refusal(
                offset=e.offset, data_len=len(e.data), num_bytes=e.num_bytes,
                unencoded_len=e.unencoded_len, unencoded_offset=e.unencoded_offset,
                compression=e.compression, sector_size=4096, dest_size=os.fstat(fd).st_size,
            ) is None
            n = encoded_write(fd, e.offset, e.data, e.num_bytes, e.unencoded_len,
                              e.unencoded_offset, e.compression)
            assert n == len(e.data)
        os.fsync(fd)
        dst_map = fiemap(fd)
        assert read_all_extents(fd) == extents  # same bytes on disk
    finally:
        os.close(fd)

    assert dst.read_bytes() == data
    # FIEMAP on btrfs reports only logical lengths (no physical length on
    # 6.18: fe_reserved64 stays 0); on-disk equality is checked above.
    assert [(x.logical, x.length) for x in dst_map] == [(x.logical, x.length) for x in src_map]
    assert all(x.flags & FIEMAP_EXTENT_ENCODED for x in dst_map)
    assert dst_map[-1].flags & FIEMAP_EXTENT_LAST


def test_unpadded_payload_and_mid_extent_read(encoded_io, btrfs_plain):
    # A frame made in userspace, not padded to the sector size, is accepted.
    data = compressible(128 * KiB, seed=7)
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    assert len(frame) % 4096
    path = btrfs_plain / "unpadded"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert encoded_write(fd, 0, frame, len(data), len(data), 0, COMPRESSION_ZSTD) == len(frame)
        os.fsync(fd)
        # reading from the middle returns the whole extent, padded by the kernel
        e = encoded_read(fd, 8192, bytearray(128 * KiB))
        assert (e.num_bytes, e.unencoded_len, e.unencoded_offset) == (120 * KiB, 128 * KiB, 8192)
        assert bytes(e.data) == frame + bytes(-len(frame) % 4096)
        assert encoded_read(fd, len(data), bytearray(4096)) is None  # EOF
        assert encoded_read(fd, len(data) + 12345, bytearray(4096)) is None
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_small_buffer_grows_on_enobufs(encoded_io, btrfs_zstd):
    data = os.urandom(4096) + compressible(124 * KiB)  # several sectors on disk
    write_synced(btrfs_zstd / "grow", data)
    fd = os.open(btrfs_zstd / "grow", os.O_RDONLY)
    try:
        small = bytearray(100)
        e = encoded_read(fd, 0, small)
        assert e.compression == COMPRESSION_ZSTD and len(e.data) > 4096
        assert zstandard.ZstdDecompressor().decompressobj().decompress(bytes(e.data)) == data
    finally:
        os.close(fd)


def test_inline_extent_has_unaligned_unencoded_offset(encoded_io, btrfs_zstd):
    data = b"small inline file " * 10
    write_synced(btrfs_zstd / "small", data)
    fd = os.open(btrfs_zstd / "small", os.O_RDONLY)
    try:
        e = encoded_read(fd, 0, bytearray(4096))
        assert (e.num_bytes, e.unencoded_len, e.compression) == (len(data), len(data), COMPRESSION_ZSTD)
        assert len(e.data) < 4096 and len(e.data) % 4096  # inline: not padded
        e100 = encoded_read(fd, 100, bytearray(4096))
        assert (e100.num_bytes, e100.unencoded_offset) == (len(data) - 100, 100)
        assert bytes(e100.data) == bytes(e.data)
        assert encoded_write_refusal(
            offset=0, data_len=len(e100.data), num_bytes=e100.num_bytes,
            unencoded_len=e100.unencoded_len, unencoded_offset=e100.unencoded_offset,
            compression=e100.compression, sector_size=4096, dest_size=0,
        ) == Refusal(RefusalKind.UNENCODED_OFFSET_UNALIGNED, "unencoded_offset 100 not sector aligned")
        [m] = fiemap(fd)
        assert m.flags & btrfs.FIEMAP_EXTENT_DATA_INLINE and m.flags & FIEMAP_EXTENT_ENCODED
    finally:
        os.close(fd)


def test_holes_read_as_zeros_and_have_no_extent(encoded_io, btrfs_plain):
    path = btrfs_plain / "sparse"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, b"a" * 4096, 0)
        os.pwrite(fd, b"b" * 4096, 1 << 20)
        os.fsync(fd)
        # ENCODED_READ cannot tell a hole from written zeros: plain zeros
        e = encoded_read(fd, 64 * KiB, bytearray(64 * KiB))
        assert e.compression == COMPRESSION_NONE
        assert e.num_bytes == len(e.data) == 64 * KiB
        assert not any(e.data)
        m = fiemap(fd)
        assert [(x.logical, x.length) for x in m] == [(0, 4096), (1 << 20, 4096)]
        assert fiemap(fd, 8192, 64 * KiB) == []  # nothing mapped inside the hole
    finally:
        os.close(fd)


def test_prealloc_is_unwritten(encoded_io, btrfs_plain):
    path = btrfs_plain / "prealloc"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, 256 * KiB)
        [m] = fiemap(fd)
        assert m.flags & FIEMAP_EXTENT_UNWRITTEN and m.length == 256 * KiB
        e = encoded_read(fd, 0, bytearray(128 * KiB))
        assert e.compression == COMPRESSION_NONE and not any(e.data)
    finally:
        os.close(fd)


def test_nocow_file_refuses_encoded_write(encoded_io, btrfs_plain):
    path = btrfs_plain / "nocow"
    path.write_bytes(b"")
    subprocess.run(["chattr", "+C", str(path)], check=True, capture_output=True)
    data = compressible(128 * KiB)
    frame = zstandard.ZstdCompressor().compress(data)
    fd = os.open(path, os.O_RDWR)
    try:
        assert btrfs.is_nodatasum(fd)
        assert encoded_write_refusal(
            offset=0, data_len=len(frame), num_bytes=len(data), unencoded_len=len(data),
            unencoded_offset=0, compression=COMPRESSION_ZSTD, sector_size=4096, dest_size=0,
            nodatasum=True).kind == RefusalKind.NODATASUM
        with pytest.raises(OSError) as info:
            encoded_write(fd, 0, frame, len(data), len(data), 0, COMPRESSION_ZSTD)
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)


def test_zlib_and_lzo_mounts(encoded_io, tmp_path):
    data = compressible(200 * KiB, seed=3)
    small = b"tiny lzo inline file " * 8
    with btrfs_mount(tmp_path, options="compress=zlib") as mnt:
        write_synced(mnt / "f", data)
        fd = os.open(mnt / "f", os.O_RDONLY)
        try:
            out = b""
            for e in read_all_extents(fd):
                assert e.compression == COMPRESSION_ZLIB
                out += zlib.decompressobj().decompress(e.data)[:e.num_bytes]
            assert out == data
        finally:
            os.close(fd)

    with btrfs_mount(tmp_path, options="compress=lzo") as mnt:
        write_synced(mnt / "f", data)
        write_synced(mnt / "small", small)
        fd = os.open(mnt / "f", os.O_RDONLY)
        try:
            extents = read_all_extents(fd)
        finally:
            os.close(fd)
        fd = os.open(mnt / "small", os.O_RDONLY)
        try:
            [inline] = read_all_extents(fd)
        finally:
            os.close(fd)
    assert all(e.compression == COMPRESSION_LZO_4K for e in extents)
    assert inline.compression == COMPRESSION_LZO_4K and len(inline.data) < 4096

    try:
        import lzo  # noqa: F401
    except ImportError:
        pytest.skip("python-lzo not installed: LZO payloads not decoded")
    from rawsend.codecs.lzo import decode_btrfs_lzo, encode_btrfs_lzo

    out = b""
    for e in extents:
        plain = decode_btrfs_lzo(e.data, e.unencoded_len, 4096)
        out += plain[e.unencoded_offset:e.unencoded_offset + e.num_bytes]
        # our encoder frames like the kernel: the same bytes before the padding
        frame = encode_btrfs_lzo(data[e.offset:e.end], 4096)
        assert bytes(e.data) == frame + bytes(-len(frame) % 4096)
    assert out == data
    assert decode_btrfs_lzo(inline.data, inline.unencoded_len, 4096)[:len(small)] == small


def _try_write(directory, name, args) -> int:
    # The payload is arbitrary bytes: the kernel does not look inside it,
    # and these files are never read back.
    path = directory / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, args["dest_size"])
        return encoded_write(fd, args["offset"], bytes(args["data_len"]), args["num_bytes"],
                             args["unencoded_len"], args["unencoded_offset"], args["compression"])
    finally:
        os.close(fd)
        path.unlink()


def test_refusal_agrees_with_the_kernel(encoded_io, btrfs_plain):
    for i, (change, words, kernel) in enumerate(REFUSALS):
        if kernel:
            with pytest.raises(OSError) as info:
                _try_write(btrfs_plain, f"refused-{i}", {**GOOD, **change})
            assert info.value.errno == errno.EINVAL, words
    for i, change in enumerate(ACCEPTED):
        args = {**GOOD, **change}
        assert _try_write(btrfs_plain, f"accepted-{i}", args) == args["data_len"]
