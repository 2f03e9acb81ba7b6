"""A tree received on btrfs reads back as the stream's bytes, every byte of it.

The kernel stores an ENCODED_WRITE payload unchecked and decodes it only when the
file is read. A payload that decodes to fewer than unencoded_len bytes reads back
zero-filled from a regular extent, but fails every read (EIO, or EUCLEAN for LZO
framing) from an inline one (spec/btrfs.md section 3). These tests craft such
streams, receive them through the CLI on a loop-mounted btrfs, read every byte
back from disk and compare it with the spec's bytes: the payload's decoded bytes,
zero-extended to unencoded_len.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import pytest
import zstandard

from rawsend import btrfs
from rawsend.codecs import lzo as lzo_codec
from tests.btrfs_fixtures import btrfs_mount, require_encoded_io
from tests.conftest import run_rawsend

SECTOR = 4096
RECEIVE_COUNTS = re.compile(r"(\d+) extents? written encoded, (\d+) decoded(?: \((.*?)\))?(?:;|$)", re.M)
SHORT_INLINE = "payload decodes to N of N bytes where btrfs may store the extent inline"
LZO_NOT_INLINE_FORM = "LZO frame not one unpadded segment where btrfs may store the extent inline"


def needs_lzo() -> None:
    if not lzo_codec.AVAILABLE:
        pytest.skip("python-lzo not installed (pip install 'rawsend[lzo]', needs liblzo2-dev):"
                    " no LZO payloads can be made or checked")


def lzo_frame(segments: list[bytes]) -> bytes:
    """A btrfs LZO frame with one segment per item, unpadded (total_len == its length)."""
    import lzo

    out = bytearray(4)
    for plain in segments:
        data = lzo.compress(plain, 1, False)
        out += struct.pack("<I", len(data)) + data
    struct.pack_into("<I", out, 0, len(out))
    return bytes(out)


def payload_for(codec: str, plain: bytes) -> tuple[int, bytes]:
    if codec == "zlib":
        return btrfs.COMPRESSION_ZLIB, zlib.compress(plain)
    if codec == "zstd":
        return btrfs.COMPRESSION_ZSTD, zstandard.ZstdCompressor().compress(plain)
    needs_lzo()
    return btrfs.COMPRESSION_LZO_4K, lzo_codec.encode_btrfs_lzo(plain, SECTOR)


def plain_bytes(n: int, seed: int) -> bytes:
    line = b"readback %02d %06d: the quick brown fox\n"
    return b"".join(line % (seed, i) for i in range(n // 30 + 1))[:n]


def stream_file(tmp_path: Path, size: int, compression: int, payload: bytes, *, offset: int = 0,
                unencoded_len: int) -> Path:
    """A stream of one file `f` of `size` bytes holding one whole compressed extent."""
    from rawsend.pipeline import send
    from rawsend.sources.tree import EncodedChunk
    from rawsend.stream.records import ROOT_ID, Create, Extent, RecordType

    items = [Create(RecordType.MKDIR, ROOT_ID, 0, b"", 0o40755, 0, 0, 0, 0),
             Create(RecordType.MKFILE, 2, ROOT_ID, b"f", 0o100644, 0, 0, 0, 0, size=size),
             EncodedChunk(Extent(2, offset, unencoded_len, unencoded_len, 0, len(payload), compression),
                          payload)]
    path = tmp_path / "stream.rs"
    with open(path, "wb") as f:
        send(items, f.write, threads=1)
    return path


def read_from_disk(path: Path) -> bytes:
    """Every byte of the file as the kernel decodes it from disk, not from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        out = bytearray()
        while chunk := os.read(fd, 1 << 20):
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def encoded_flags(path: Path) -> list[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return [e.flags & (btrfs.FIEMAP_EXTENT_ENCODED | btrfs.FIEMAP_EXTENT_DATA_INLINE)
                for e in btrfs.fiemap(fd, flags=btrfs.FIEMAP_FLAG_SYNC)]
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def dest_fs(tmp_path_factory):
    require_encoded_io()
    with btrfs_mount(tmp_path_factory.mktemp("readback"), options="", size="256M") as mnt:
        yield mnt


def receive(stream: Path, dest: Path) -> tuple[int, int, str]:
    proc = run_rawsend("receive", "-f", str(stream), str(dest))
    assert proc.returncode == 0, proc.stderr.decode()
    m = RECEIVE_COUNTS.search(proc.stderr.decode())
    assert m, proc.stderr.decode()
    return int(m[1]), int(m[2]), m[3] or ""


CODECS = ["zlib", "zstd", "lzo"]


# (name, file size, unencoded_len, bytes the payload decodes to): extents at offset 0 that
# ENCODED_WRITE would store inline, whose payload decodes short
SHORT_INLINE_CASES = [
    ("sector", SECTOR, SECTOR, 100),
    ("small-file", 1000, 1000, 100),
    ("one-byte-short", SECTOR, SECTOR, SECTOR - 1),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name, size, unencoded_len, decoded", SHORT_INLINE_CASES,
                         ids=[c[0] for c in SHORT_INLINE_CASES])
def test_short_inline_extent_is_decoded_and_reads_back(codec, name, size, unencoded_len, decoded,
                                                       dest_fs, tmp_path):
    plain = plain_bytes(decoded, seed=1)
    compression, payload = payload_for(codec, plain)
    dest = dest_fs / f"short-inline-{codec}-{name}"
    counts = receive(stream_file(tmp_path, size, compression, payload, unencoded_len=unencoded_len), dest)
    # the spec's bytes: what the payload decodes to, zero-extended to unencoded_len
    assert read_from_disk(dest / "f") == plain + bytes(size - decoded)
    assert counts == (0, 1, f"{SHORT_INLINE}: 1")
    assert not any(f & btrfs.FIEMAP_EXTENT_ENCODED for f in encoded_flags(dest / "f"))  # written with pwrite


@pytest.mark.parametrize("codec", CODECS)
def test_whole_inline_extent_still_goes_verbatim(codec, dest_fs, tmp_path):
    plain = plain_bytes(SECTOR, seed=2)
    compression, payload = payload_for(codec, plain)
    dest = dest_fs / f"whole-inline-{codec}"
    assert receive(stream_file(tmp_path, SECTOR, compression, payload, unencoded_len=SECTOR), dest) == (1, 0, "")
    assert read_from_disk(dest / "f") == plain
    assert encoded_flags(dest / "f") == [btrfs.FIEMAP_EXTENT_ENCODED | btrfs.FIEMAP_EXTENT_DATA_INLINE]


# (name, file size, offset, unencoded_len, bytes decoded): regular extents, which the kernel
# zero-fills when they decode short
SHORT_REGULAR_CASES = [
    ("one-sector-not-at-0", 2 * SECTOR, SECTOR, SECTOR, 100),
    ("sector-at-0-before-eof", 2 * SECTOR, 0, SECTOR, 100),
    ("two-sectors", 2 * SECTOR, 0, 2 * SECTOR, 100),
    ("128k", 128 * 1024, 0, 128 * 1024, 5000),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name, size, offset, unencoded_len, decoded", SHORT_REGULAR_CASES,
                         ids=[c[0] for c in SHORT_REGULAR_CASES])
def test_short_regular_extent_goes_verbatim_and_reads_back_zero_filled(
        codec, name, size, offset, unencoded_len, decoded, dest_fs, tmp_path):
    plain = plain_bytes(decoded, seed=3)
    compression, payload = payload_for(codec, plain)
    dest = dest_fs / f"short-regular-{codec}-{name}"
    stream = stream_file(tmp_path, size, compression, payload, offset=offset, unencoded_len=unencoded_len)
    assert receive(stream, dest) == (1, 0, "")
    want = bytes(offset) + plain + bytes(size - offset - decoded)
    assert read_from_disk(dest / "f") == want
    assert btrfs.FIEMAP_EXTENT_ENCODED in encoded_flags(dest / "f")


@pytest.mark.parametrize("name, make", [
    ("padded", lambda plain: lzo_frame([plain]) + bytes(50)),
    ("two-segments", lambda plain: lzo_frame([plain[:2048], plain[2048:]])),
])
def test_lzo_inline_extent_not_in_the_inline_form_is_decoded(name, make, dest_fs, tmp_path):
    # lzo_decompress() takes an inline extent only as total_len == its length and one
    # segment; rawsend's decoder accepts both forms, and so must read back the same bytes.
    needs_lzo()
    plain = plain_bytes(SECTOR, seed=4)
    dest = dest_fs / f"lzo-form-{name}"
    counts = receive(stream_file(tmp_path, SECTOR, btrfs.COMPRESSION_LZO_4K, make(plain),
                                 unencoded_len=SECTOR), dest)
    assert read_from_disk(dest / "f") == plain
    assert counts == (0, 1, f"{LZO_NOT_INLINE_FORM}: 1")
    assert not any(f & btrfs.FIEMAP_EXTENT_ENCODED for f in encoded_flags(dest / "f"))
