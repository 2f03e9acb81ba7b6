"""A stream cut at any byte, with any bit flipped, or with bytes appended is refused with the
fault's location, and a receive of it leaves nothing at the destination."""

from __future__ import annotations

import io
import os
import stat

import pytest

from rawsend.errors import (
    BadMagic, ChecksumMismatch, DigestMismatch, RawsendError, TrailingData, TruncatedStream,
    UnsupportedVersion,
)
from rawsend.pipeline import NullSink, receive, send
from rawsend.sinks.tree import TreeSink
from rawsend.sources.tree import DataChunk
from rawsend.stream.records import Compression, Create, RecordType, SetXattr
from tests.conftest import run_rawsend


def small_stream(compression=Compression.ZSTD) -> bytes:
    text = b"abcdefgh" * 300
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644
    items = [Create(RecordType.MKDIR, 1, 0, b"", d, 0, 0, 1, 2),
             Create(RecordType.MKFILE, 2, 1, b"a", f, 0, 0, 3, 4, len(text)),
             DataChunk(2, 0, text), SetXattr(2, b"user.x", b"y"),
             Create(RecordType.MKDIR, 3, 1, b"d", d, 0, 0, 5, 6),
             Create(RecordType.MKFILE, 4, 3, b"b", f, 0, 0, 7, 8, 5), DataChunk(4, 0, b"hello")]
    out = bytearray()
    send(items, out.extend, compression=compression, threads=1, stream_id=bytes(range(16)), created_ns=9)
    return bytes(out)


def check(data: bytes) -> RawsendError:
    with pytest.raises(RawsendError) as info:
        receive(io.BytesIO(data), NullSink())
    return info.value


def test_the_small_stream_itself_is_good():
    data = small_stream()
    assert receive(io.BytesIO(data), NullSink()).stream_bytes == len(data)


def test_cut_at_every_byte_is_a_truncated_stream():
    data = small_stream()
    for cut in range(len(data)):
        err = check(data[:cut])
        assert isinstance(err, TruncatedStream), (cut, err)
        assert err.offset is not None and err.offset <= cut, (cut, err)


def test_every_single_bit_flip_is_detected():
    data = small_stream()
    for pos in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[pos] ^= 1 << bit
            err = check(bytes(damaged))
            # a flip in a length field can also make the stream look truncated or over a cap
            assert err.offset is not None, (pos, bit, err)
            if pos >= 12:
                assert not isinstance(err, (BadMagic, UnsupportedVersion)), (pos, bit, err)


def test_flips_inside_records_are_checksum_or_length_errors():
    data = small_stream()
    payload_pos = len(data) // 2
    damaged = bytearray(data)
    damaged[payload_pos] ^= 0x04
    assert isinstance(check(bytes(damaged)), (ChecksumMismatch, TruncatedStream))


@pytest.mark.parametrize("extra", [b"\0", b"x" * 100, None])
def test_appended_bytes_are_trailing_data(extra):
    data = small_stream()
    extra = data if extra is None else extra
    err = check(data + extra)
    assert isinstance(err, TrailingData)
    assert err.offset == len(data)


def test_dropping_the_end_record_is_truncation():
    data = small_stream()
    err = check(data[:-(16 + 80)])
    assert isinstance(err, TruncatedStream) and "no END record" in str(err)


def test_receive_of_damaged_streams_leaves_nothing(tmp_path):
    data = small_stream()
    cuts = list(range(0, len(data), max(1, len(data) // 60)))
    flips = list(range(12, len(data), max(1, len(data) // 40)))
    cases = [data[:c] for c in cuts]
    for pos in flips:
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        cases.append(bytes(damaged))
    cases.append(data + b"garbage")
    for i, case in enumerate(cases):
        dest = tmp_path / f"dst{i}"
        with pytest.raises(RawsendError):
            receive(io.BytesIO(case), TreeSink(dest, sync=False))
        assert not dest.exists()
    assert sorted(os.listdir(tmp_path)) == []  # no temporary directory left either


def test_cli_verify_and_receive_name_the_fault_and_keep_nothing(tmp_path):
    data = small_stream()
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0x01
    path = tmp_path / "bad.rs"
    path.write_bytes(bytes(damaged))
    proc = run_rawsend("verify", str(path))
    assert proc.returncode == 1
    assert b"(at record " in proc.stderr and b"byte offset " in proc.stderr
    proc = run_rawsend("receive", str(tmp_path / "dst"), input=bytes(damaged))
    assert proc.returncode == 1
    assert not (tmp_path / "dst").exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.rs"]
    proc = run_rawsend("verify", "-", input=data[:len(data) - 5])
    assert proc.returncode == 1 and b"stream ends early" in proc.stderr


def test_digest_catches_a_removed_record_that_crcs_cannot(tmp_path):
    from tests.conftest import VECTORS
    err = check((VECTORS / "dropped_record.rs").read_bytes())
    assert isinstance(err, DigestMismatch)
