#!/usr/bin/env python3
"""Regenerate the golden vectors of stream format v1 in this directory.

Each vector is NAME.rs (the stream), NAME.expect (what a reader must say:
`expect: success` or the error class, with the record number and byte offset
of the fault) and NAME.dump (what `rawsend dump` prints, then `error: ...`
for a damaged stream).  One scenario per vector.  The good streams are built
from the fixed item list below with a fixed stream id and creation time, so
the writer must reproduce them byte for byte.

    python spec/vectors/generate.py          # rewrite the vectors
    python spec/vectors/generate.py --check  # exit 1 if any vector differs
"""

from __future__ import annotations

import io
import stat
import sys
from pathlib import Path

import lz4
import zstandard
import zlib
from crc32c import crc32c

from rawsend.dump import Dumper
from rawsend.errors import RawsendError
from rawsend.pipeline import NullSink, receive, send
from rawsend.sources.tree import DataChunk
from rawsend.stream.records import (
    CRC_COVERED, HEADER_BODY, PREAMBLE, RECORD_HEADER, Compression, Create, Link, RecordType,
    SetXattr,
)

HERE = Path(__file__).resolve().parent
STREAM_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
CREATED_NS = 1_795_000_000_123_456_789  # 2026-11-18T...Z
T1 = 1_700_000_000_000_000_001
T2 = 1_600_000_000_999_999_999


def items() -> list:
    """A small tree: dirs, text and binary files, a sparse file, links and xattrs."""
    text = b"".join(b"line %05d: the quick brown fox jumps over the lazy dog\n" % i for i in range(3000))
    pattern = bytes(range(256)) * 16  # 4 KiB
    d, f, ln = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
    return [
        Create(RecordType.MKDIR, 1, 0, b"", d | 0o755, 1000, 1000, T1, T1),
        Create(RecordType.MKDIR, 2, 1, b"docs", d | 0o750, 1000, 100, T1, T2),
        SetXattr(2, b"user.purpose", b"documentation"),
        Create(RecordType.MKFILE, 3, 2, b"fox.txt", f | 0o644, 1000, 100, T2, T1, len(text)),
        DataChunk(3, 0, text[:131072]),
        DataChunk(3, 131072, text[131072:]),
        SetXattr(3, b"user.a", b"1"),
        SetXattr(3, b"user.b", b"22"),
        Create(RecordType.MKFILE, 4, 1, "h\u00e9llo w\u00f6rld.txt".encode(), f | 0o600, 0, 0, T1, T1, 6),
        DataChunk(4, 0, b"hello\n"),
        Create(RecordType.MKFILE, 5, 1, b"sparse.img", f | 0o644, 0, 0, T1, T2, 1 << 20),
        DataChunk(5, 512 * 1024, pattern),
        Create(RecordType.MKFILE, 6, 1, b"empty", f | 0o444, 0, 0, T1, T1, 0),
        Link(3, 1, b"fox-link.txt"),
        Create(RecordType.SYMLINK, 7, 2, b"up", ln | 0o777, 0, 0, T1, T1, 0, b"../fox-link.txt"),
        Create(RecordType.SYMLINK, 8, 1, b"dangling", ln | 0o777, 0, 0, T1, T1, 0, b"/no/such/file"),
        Create(RecordType.MKDIR, 9, 1, b"read-only", d | 0o555, 0, 0, T2, T2),
    ]


def build(compression: int) -> bytes:
    out = bytearray()
    send(items(), out.extend, compression=compression, level=3, threads=1,
         stream_id=STREAM_ID, created_ns=CREATED_NS)
    return bytes(out)


# -- record surgery -------------------------------------------------------------------------------

def record_spans(stream: bytes) -> list[tuple[int, int]]:
    """(start, end) of each record, read from the framing alone."""
    spans, pos = [], PREAMBLE.size
    while pos < len(stream):
        _, _, body_len, payload_len, _ = RECORD_HEADER.unpack_from(stream, pos)
        end = pos + RECORD_HEADER.size + body_len + payload_len
        spans.append((pos, end))
        pos = end
    return spans


def frame(rtype: int, flags: int, body: bytes, payload: bytes = b"") -> bytes:
    """One record with its CRC, built from the framing rules alone."""
    header = RECORD_HEADER.pack(rtype, flags, len(body), len(payload), 0)
    crc = crc32c(payload, crc32c(body, crc32c(header[:CRC_COVERED])))
    return RECORD_HEADER.pack(rtype, flags, len(body), len(payload), crc) + body + payload


def fix_crc(stream: bytearray, start: int) -> None:
    """Recompute the CRC of the record at ``start`` after its bytes were changed."""
    rtype, flags, body_len, payload_len, _ = RECORD_HEADER.unpack_from(stream, start)
    rest = bytes(stream[start + RECORD_HEADER.size:start + RECORD_HEADER.size + body_len + payload_len])
    stream[start:start + RECORD_HEADER.size + body_len + payload_len] = \
        frame(rtype, flags, rest[:body_len], rest[body_len:])


def record_types(stream: bytes) -> list[int]:
    return [RECORD_HEADER.unpack_from(stream, s)[0] for s, _ in record_spans(stream)]


def damaged(plain: bytes, packed: bytes) -> dict[str, bytes]:
    spans = record_spans(plain)
    types = record_types(plain)
    first_extent = types.index(RecordType.EXTENT)
    ext_start, ext_end = spans[first_extent]
    end_start, _ = spans[-1]
    out: dict[str, bytes] = {}

    out["empty"] = b""
    out["truncated_in_magic"] = plain[:5]
    out["truncated_in_version"] = plain[:10]
    out["truncated_in_record_header"] = plain[:spans[1][0] + 7]
    out["truncated_in_payload"] = plain[:ext_end - 3]
    out["truncated_before_end"] = plain[:end_start]
    out["truncated_in_end"] = plain[:end_start + 20]
    out["bad_magic"] = b"RAWSEND\n" + plain[8:]
    out["unsupported_version"] = PREAMBLE.pack(b"rawsend\n", 2) + plain[PREAMBLE.size:]

    s = bytearray(plain)
    s[ext_end - 1] ^= 0x01
    out["bitflip_payload"] = bytes(s)

    s = bytearray(plain)
    s[ext_start + RECORD_HEADER.size + 9] ^= 0x80  # extent offset field
    out["bitflip_extent_body"] = bytes(s)

    s = bytearray(plain)
    s[spans[0][0] + 4] ^= 0x01  # header record's body_len
    out["bitflip_record_length"] = bytes(s)

    s = bytearray(plain)
    body = spans[0][0] + RECORD_HEADER.size
    required = HEADER_BODY.unpack_from(s, body)[2] | (1 << 40)
    HEADER_BODY.pack_into(s, body, *(lambda f: f[:2] + (required,) + f[3:])(HEADER_BODY.unpack_from(s, body)))
    fix_crc(s, spans[0][0])
    out["unknown_required_feature"] = bytes(s)

    # whole-record damage that every CRC still passes: only END can catch it
    xattr_a, xattr_b = [i for i, t in enumerate(types) if t == RecordType.SET_XATTR][1:3]
    a, b = spans[xattr_a], spans[xattr_b]
    out["swapped_records"] = plain[:a[0]] + plain[b[0]:b[1]] + plain[a[0]:a[1]] + plain[b[1]:]
    out["dropped_record"] = plain[:a[0]] + plain[a[1]:]
    out["duplicated_record"] = plain[:b[1]] + plain[b[0]:b[1]] + plain[b[1]:]

    s = bytearray(plain)
    s[end_start + RECORD_HEADER.size + 20] ^= 0xFF  # inside the digest
    fix_crc(s, end_start)
    out["end_digest_wrong"] = bytes(s)

    out["trailing_garbage_byte"] = plain + b"\0"
    out["trailing_garbage_record"] = plain + plain[spans[1][0]:spans[1][1]]
    out["concatenated_streams"] = plain + packed

    s = bytearray(packed)
    pspans = record_spans(packed)
    ptypes = record_types(packed)
    zs, ze = pspans[ptypes.index(RecordType.EXTENT)]
    s[ze - 2] ^= 0x10
    fix_crc(s, zs)
    out["zstd_payload_corrupt"] = bytes(s)
    return out


# -- expectations ---------------------------------------------------------------------------------

def describe(stream: bytes) -> tuple[str, str]:
    """(expect text, dump text) of a stream, as the reader sees it."""
    dumper = Dumper()
    lines: list[str] = []
    try:
        receive(io.BytesIO(stream), NullSink(), require_key=False,
                on_record=lambda raw, rec: lines.append(dumper.line(raw, rec)))
    except RawsendError as e:
        expect = f"expect: {type(e).__name__}\nrecord: {e.record}\noffset: {e.offset}\n"
        lines.append(f"error: {e}")
        return expect, "\n".join(lines) + "\n"
    return "expect: success\n", "\n".join(lines) + "\n"


def vectors() -> dict[str, bytes]:
    plain = build(Compression.NONE)
    packed = build(Compression.ZSTD)
    out = {"good_plain": plain, "good_zstd": packed,
           "good_lz4": build(Compression.LZ4), "good_zlib": build(Compression.ZLIB)}
    out.update(damaged(plain, packed))
    return out


def codec_versions() -> str:
    """Codec output is byte-stable only for one library version: record which made the vectors."""
    return (f"zstd {'.'.join(map(str, zstandard.ZSTD_VERSION))}\n"
            f"zlib {zlib.ZLIB_RUNTIME_VERSION}\n"
            f"lz4 {lz4.library_version_string()}\n")


def main(argv: list[str]) -> int:
    check = "--check" in argv
    bad = 0
    for name, data in sorted(vectors().items()):
        expect, dump = describe(data)
        files = {f"{name}.rs": data, f"{name}.expect": expect.encode(), f"{name}.dump": dump.encode()}
        for fname, content in files.items():
            path = HERE / fname
            if check:
                if not path.exists() or path.read_bytes() != content:
                    print(f"differs: {fname}")
                    bad += 1
            else:
                path.write_bytes(content)
    if not check:
        (HERE / "CODEC_VERSIONS").write_text(codec_versions())
        print(f"wrote {len(vectors())} vectors to {HERE}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
