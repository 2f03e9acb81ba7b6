#!/usr/bin/env python3
"""Regenerate the golden vectors of stream format v1 in this directory.

Each vector is NAME.rs (the stream), NAME.expect (the rule it breaks and what a
reader must say: `expect: success` or the error class, with the record number
and byte offset of the fault) and NAME.dump (what `rawsend dump` prints, then
`error: ...` for a damaged stream).  One scenario per vector.  The good
streams are built from the fixed item list below with a fixed stream id and
creation time, so the writer must reproduce them byte for byte.

Every verdict is written here by hand, next to the damage that earns it: the
record numbers and byte offsets come from the layouts of the two base streams
(landmarks below), never from a reader.  The reader is run only to check it
agrees; if it does not, nothing is written and the exit status is 1, so
regenerating cannot approve a reader's mistake.

    python spec/vectors/generate.py          # rewrite the vectors
    python spec/vectors/generate.py --check  # exit 1 if any vector differs
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import sys
from pathlib import Path
from typing import NamedTuple

import lz4
import zstandard
import zlib
from crc32c import crc32c

from rawsend.dump import Dumper, dump_stream
from rawsend.errors import RawsendError
from rawsend.pipeline import send
from rawsend.sources.tree import DataChunk, EncodedChunk
from rawsend.stream.records import (
    CRC_COVERED, FLAG_SKIPPABLE, HEADER_BODY, PREAMBLE, RECORD_HEADER, Base, Chmod, Chown, Compression, Create,
    End, Extent, Feature, Label, Link, PunchHole, RecordType, RemoveXattr, Rename, Rmdir, SetXattr, Truncate, Unlink,
    UpdateFile, Utimes,
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


def refinish(stream: bytes) -> bytes:
    """Recompute the last record (END)'s counts and digest from the framing: a stream whose only
    fault is the one a vector is about."""
    spans = record_spans(stream)
    end_start = spans[-1][0]
    digest = hashlib.sha256(stream[:PREAMBLE.size])
    for start, _ in spans[:-1]:
        digest.update(stream[start:start + RECORD_HEADER.size])
    end = End(len(spans) - 1, end_start, digest.digest())
    return stream[:end_start] + frame(RecordType.END, 0, end.pack())


def reframe(stream: bytes, index: int, *, rtype: int | None = None, flags: int | None = None,
            body: bytes | None = None, extra: bytes = b"") -> bytes:
    """Record ``index`` with some header fields or its body replaced (``extra`` appended to the
    body), CRC and END recomputed."""
    start, end = record_spans(stream)[index]
    t, f, body_len, _, _ = RECORD_HEADER.unpack_from(stream, start)
    old_body = stream[start + RECORD_HEADER.size:start + RECORD_HEADER.size + body_len]
    payload = stream[start + RECORD_HEADER.size + body_len:end]
    new = frame(t if rtype is None else rtype, f if flags is None else flags,
                (old_body if body is None else body) + extra, payload)
    return refinish(stream[:start] + new + stream[end:])


def insert(stream: bytes, index: int, record: bytes) -> bytes:
    """``record`` inserted to become record ``index``, END recomputed."""
    start = record_spans(stream)[index][0]
    return refinish(stream[:start] + record + stream[start:])


def small(*extra_items) -> bytes:
    """A small stream: the root, then ``extra_items`` (default: a dir d and a 6-byte file d/f)."""
    d, f = stat.S_IFDIR, stat.S_IFREG
    body = list(extra_items) or [Create(RecordType.MKDIR, 2, 1, b"d", d | 0o755, 0, 0, T1, T2),
                                 Create(RecordType.MKFILE, 3, 2, b"f", f | 0o644, 0, 0, T1, T1, 6),
                                 DataChunk(3, 0, b"hello\n")]
    out = bytearray()
    send([Create(RecordType.MKDIR, 1, 0, b"", d | 0o755, 0, 0, T1, T1), *body], out.extend,
         compression=Compression.NONE, threads=1, stream_id=STREAM_ID, created_ns=CREATED_NS)
    return bytes(out)


# -- verdicts, written by hand ----------------------------------------------------------------------

class Verdict(NamedTuple):
    """What a reader must say of a vector, and which rule of stream-format.md it is about."""

    rule: str
    expect: str = "success"
    record: int | None = None
    offset: int | None = None
    reason: str = ""  # words the reader's message must contain
    needs: str = ""   # a module without which the reader reaches the verdict for another reason

    def text(self) -> str:
        lines = [f"rule: {self.rule}", f"expect: {self.expect}"]
        if self.expect != "success":
            lines += [f"record: {self.record}", f"offset: {self.offset}"]
        if self.reason:
            lines.append(f"reason: {self.reason}")
        if self.needs:
            lines.append(f"needs: {self.needs}")
        return "\n".join(lines) + "\n"


# Landmarks of good_plain (see good_plain.dump): the byte offset of each record's header.
# HEADER is 16 + 89 bytes, a create record 16 + 64 + name + target, an extent 16 + 80 + payload.
PLAIN_ROOT = 117            # record 1
PLAIN_FIRST_EXTENT = 423    # record 5: 16 + 80 + 131072 bytes, ends at 131591
PLAIN_END = 173589          # record 18, 16 + 80 bytes: the stream is 173685 bytes
# good_zstd: its first extent is record 5 at 423 as well (the records before it are the same).
# small(): HEADER at 12, the root at 117, d at 197, d/f at 278, its extent at 359, END at 461.
SMALL_2 = 197               # the record after the root, in every small() stream
SMALL_D_F = 278             # record 3 when record 2 is a one-letter name (16 + 64 + 1 = 81 bytes)
SMALL_EXTENT = 359          # record 4

GOOD = Verdict("a good stream: every rule kept")

# zlib would do, but lz4 is the codec that needs a feature bit: lz4.block.compress(b"abcd" * 16)
LZ4_ABCD = bytes.fromhex("4f61626364040024506461626364")
# encode_btrfs_lzo(b"z" * 8192, 4096): two 4 KiB sectors of LZO1X, total_len 100
LZO_Z8192 = bytes.fromhex(
    "640000002c000000027a7a7a7a7a20000000000000000000000000000000da10000c7a7a7a7a7a7a7a7a7a7a7a7a7a7a"
    "7a1100002c000000027a7a7a7a7a20000000000000000000000000000000da10000c7a7a7a7a7a7a7a7a7a7a7a7a7a7a"
    "7a110000")


def damaged(plain: bytes, packed: bytes) -> dict[str, tuple[bytes, Verdict]]:
    spans = record_spans(plain)
    types = record_types(plain)
    first_extent = types.index(RecordType.EXTENT)
    ext_start, ext_end = spans[first_extent]
    end_start, _ = spans[-1]
    # the landmarks above are what the framing of good_plain says
    assert (ext_start, end_start, spans[1][0]) == (PLAIN_FIRST_EXTENT, PLAIN_END, PLAIN_ROOT)
    out: dict[str, tuple[bytes, Verdict]] = {}

    def add(name: str, data: bytes, rule: str, expect: str, record: int | None, offset: int | None,
            **more) -> None:
        out[name] = (data, Verdict(rule, expect, record, offset, **more))

    cut = "Layout: a stream ends only after END"
    add("empty", b"", cut, "TruncatedStream", None, 0)
    add("truncated_in_magic", plain[:5], cut, "TruncatedStream", None, 5)
    add("truncated_in_version", plain[:10], cut, "TruncatedStream", None, 10)
    add("truncated_in_record_header", plain[:spans[1][0] + 7], cut, "TruncatedStream", 1, PLAIN_ROOT + 7)
    add("truncated_in_payload", plain[:ext_end - 3], cut, "TruncatedStream", 5, 131591 - 3)
    add("truncated_before_end", plain[:end_start], cut, "TruncatedStream", 18, PLAIN_END)
    add("truncated_in_end", plain[:end_start + 20], cut, "TruncatedStream", 18, PLAIN_END + 20)
    add("bad_magic", b"RAWSEND\n" + plain[8:], "Preamble: the magic", "BadMagic", None, 0)
    add("unsupported_version", PREAMBLE.pack(b"rawsend\n", 2) + plain[PREAMBLE.size:],
        "Preamble: a version the reader does not implement", "UnsupportedVersion", None, 8)

    s = bytearray(plain)
    s[ext_end - 1] ^= 0x01
    add("bitflip_payload", bytes(s), "Record header: the CRC covers the payload", "ChecksumMismatch",
        5, PLAIN_FIRST_EXTENT)

    s = bytearray(plain)
    s[ext_start + RECORD_HEADER.size + 9] ^= 0x80  # extent offset field
    add("bitflip_extent_body", bytes(s), "Record header: the CRC covers the body", "ChecksumMismatch",
        5, PLAIN_FIRST_EXTENT)

    s = bytearray(plain)
    s[spans[0][0] + 4] ^= 0x01  # header record's body_len
    add("bitflip_record_length", bytes(s), "Record header: the CRC covers the header's lengths",
        "ChecksumMismatch", 0, 12)

    s = bytearray(plain)
    body = spans[0][0] + RECORD_HEADER.size
    required = HEADER_BODY.unpack_from(s, body)[2] | (1 << 40)
    HEADER_BODY.pack_into(s, body, *(lambda f: f[:2] + (required,) + f[3:])(HEADER_BODY.unpack_from(s, body)))
    fix_crc(s, spans[0][0])
    add("unknown_required_feature", bytes(s), "HEADER: a required feature bit the reader does not implement",
        "UnsupportedFeature", 0, 12, reason="required feature bit 40")

    # whole-record damage that every CRC still passes: only END can catch it
    xattr_a, xattr_b = [i for i, t in enumerate(types) if t == RecordType.SET_XATTR][1:3]
    a, b = spans[xattr_a], spans[xattr_b]  # records 7 (37 bytes) and 8 (38 bytes)
    digest = "END: record_count, byte_count and digest"
    add("swapped_records", plain[:a[0]] + plain[b[0]:b[1]] + plain[a[0]:a[1]] + plain[b[1]:], digest,
        "DigestMismatch", 18, PLAIN_END)
    add("dropped_record", plain[:a[0]] + plain[a[1]:], digest, "DigestMismatch", 17, PLAIN_END - 37)
    add("duplicated_record", plain[:b[1]] + plain[b[0]:b[1]] + plain[b[1]:], digest, "DigestMismatch",
        19, PLAIN_END + 38)

    s = bytearray(plain)
    s[end_start + RECORD_HEADER.size + 20] ^= 0xFF  # inside the digest
    fix_crc(s, end_start)
    add("end_digest_wrong", bytes(s), digest, "DigestMismatch", 18, PLAIN_END)

    trailing = "Layout: nothing may follow the END record"
    add("trailing_garbage_byte", plain + b"\0", trailing, "TrailingData", 19, PLAIN_END + 96)
    add("trailing_garbage_record", plain + plain[spans[1][0]:spans[1][1]], trailing, "TrailingData",
        19, PLAIN_END + 96)
    add("concatenated_streams", plain + packed, trailing, "TrailingData", 19, PLAIN_END + 96)

    s = bytearray(packed)
    pspans = record_spans(packed)
    ptypes = record_types(packed)
    zs, ze = pspans[ptypes.index(RecordType.EXTENT)]
    s[ze - 2] ^= 0x10
    fix_crc(s, zs)
    add("zstd_payload_corrupt", bytes(s), "EXTENT: decoding", "DecodeError", 5, PLAIN_FIRST_EXTENT)

    # -- rules every reader checks (small streams) ---------------------------------------------------
    base = small()
    assert [st for st, _ in record_spans(base)] == [12, 117, SMALL_2, SMALL_D_F, SMALL_EXTENT, 461]
    d, f = stat.S_IFDIR, stat.S_IFREG
    add("skippable_with_payload",
        insert(base, 2, frame(63, FLAG_SKIPPABLE, b"a later version's record", b"data")),
        "Record types: a payload only on EXTENT, known type or not", "MalformedRecord", 2, SMALL_2,
        reason="type 63 record with a payload")
    add("lz4_without_feature",
        small(Create(RecordType.MKFILE, 2, 1, b"f", f | 0o644, 0, 0, T1, T1, 64),
              EncodedChunk(Extent(2, 0, 64, 64, 0, len(LZ4_ABCD), Compression.LZ4), LZ4_ABCD)),
        "HEADER: an lz4 extent needs the required feature lz4", "MalformedRecord", 3, SMALL_D_F,
        reason="lz4 extent in a stream whose header does not set")
    add("symlink_with_size",
        small(Create(RecordType.SYMLINK, 2, 1, b"s", stat.S_IFLNK | 0o777, 0, 0, T1, T1, 5, b"t")),
        "Create records: size_or_rdev is 0 on SYMLINK", "MalformedRecord", 2, SMALL_2,
        reason="symlink with a nonzero size_or_rdev")
    add("name_twice_fifo_then_file",
        small(Create(RecordType.MKNOD, 2, 1, b"x", stat.S_IFIFO | 0o644, 0, 0, T1, T1),
              Create(RecordType.MKFILE, 3, 1, b"x", f | 0o644, 0, 0, T1, T1, 0)),
        "Record order, rule 5: a name once per directory", "MalformedRecord", 3, SMALL_D_F,
        reason="the same name twice in one directory: b'x' again in directory id 1")
    add("name_twice_link",
        small(Create(RecordType.MKFILE, 2, 1, b"a", f | 0o644, 0, 0, T1, T1, 0),
              Create(RecordType.MKFILE, 3, 1, b"b", f | 0o644, 0, 0, T1, T1, 0),
              Link(2, 1, b"b")),
        "Record order, rule 5: a name once per directory", "MalformedRecord", 4, SMALL_EXTENT,
        reason="the same name twice in one directory: b'b' again in directory id 1")
    add("lzo_longer_than_unencoded_len",
        small(Create(RecordType.MKFILE, 2, 1, b"f", f | 0o644, 0, 0, T1, T1, 4096),
              EncodedChunk(Extent(2, 0, 4096, 4096, 0, len(LZO_Z8192), Compression.LZO_4K), LZO_Z8192)),
        "EXTENT: output longer than unencoded_len is rejected", "DecodeError", 3, SMALL_D_F,
        reason="decodes past unencoded_len 4096", needs="lzo")

    # -- one vector per row of "What a reader does with what it does not know" -------------------------
    s = bytearray(base)
    h = list(HEADER_BODY.unpack_from(s, 12 + RECORD_HEADER.size))
    h[3] |= 1 << 5
    HEADER_BODY.pack_into(s, 12 + RECORD_HEADER.size, *h)
    fix_crc(s, 12)
    growth = "Versioning and extension: "
    out["unknown_optional_feature"] = (refinish(bytes(s)), Verdict(growth + "an unknown optional bit is ignored"))
    # 63: the last type of the notes range, always skippable and assigned last
    out["skippable_unknown_record"] = (insert(base, 2, frame(63, FLAG_SKIPPABLE, b"a later version's record")),
                                       Verdict(growth + "an unknown type with SKIPPABLE is skipped"))
    add("unknown_type_not_skippable", insert(base, 2, frame(64, 0, b"a later version's record")),
        growth + "an unknown type without SKIPPABLE", "MalformedRecord", 2, SMALL_2,
        reason="unknown record type 64 not marked skippable")
    add("reserved_type_marked_skippable", insert(base, 2, frame(19, FLAG_SKIPPABLE, b"clone")),
        growth + "SKIPPABLE on a never-skippable range", "MalformedRecord", 2, SMALL_2,
        reason="record type 19 (reserved for clone) marked skippable")
    add("type_zero_marked_skippable", insert(base, 2, frame(0, FLAG_SKIPPABLE, b"")),
        growth + "SKIPPABLE on type 0", "MalformedRecord", 2, SMALL_2, reason="record type 0 marked skippable")
    add("known_type_marked_skippable", reframe(base, 2, flags=FLAG_SKIPPABLE),
        growth + "SKIPPABLE on a type of this version", "MalformedRecord", 2, SMALL_2,
        reason="mkdir record marked skippable")
    add("unknown_flag_bit", reframe(base, 2, flags=0x0004),
        growth + "an unknown flag bit", "MalformedRecord", 2, SMALL_2, reason="unknown flag bits 0x0004")
    add("create_body_longer", reframe(base, 2, extra=bytes(4)),
        growth + "a body longer than its type defines", "MalformedRecord", 2, SMALL_2,
        reason="mkdir body is 69 bytes, expected 65")
    add("extent_body_longer", reframe(base, 4, extra=bytes(8)),
        growth + "a body longer than its type defines", "MalformedRecord", 4, SMALL_EXTENT,
        reason="extent body is 88 bytes, expected 80")
    return out


# -- LABEL: a note, record 2, always SKIPPABLE ----------------------------------------------------------

LABEL = Label("nightly \u00e9t\u00e9".encode(), b"host.example", b"/srv/data", b"0.1.0")


def label_body(label: bytes = LABEL.label, host: bytes = LABEL.host, source: bytes = LABEL.source,
               version: bytes = LABEL.version, lens: tuple | None = None) -> bytes:
    """A LABEL body from the spec's table; ``lens`` overrides the four length fields."""
    lens = lens or (len(label), len(host), len(source), len(version))
    return struct.pack("<HHHH", *lens) + label + host + source + version


def label_vectors() -> dict[str, tuple[bytes, Verdict]]:
    """good_label (small() with a LABEL, from the writer) and one damaged vector per LABEL rule."""
    out = {}
    base = small()
    good = bytearray()
    d, f = stat.S_IFDIR, stat.S_IFREG
    send([Create(RecordType.MKDIR, 1, 0, b"", d | 0o755, 0, 0, T1, T1),
          Create(RecordType.MKDIR, 2, 1, b"d", d | 0o755, 0, 0, T1, T2),
          Create(RecordType.MKFILE, 3, 2, b"f", f | 0o644, 0, 0, T1, T1, 6), DataChunk(3, 0, b"hello\n")],
         good.extend, compression=Compression.NONE, threads=1, stream_id=STREAM_ID, created_ns=CREATED_NS,
         label=LABEL)
    # the writer's LABEL is record 2, SKIPPABLE, and exactly the spec's layout
    assert bytes(good) == insert(base, 2, frame(RecordType.LABEL, FLAG_SKIPPABLE, label_body()))
    out["good_label"] = (bytes(good), Verdict("LABEL: every rule kept"))

    def add(name, record, rule, expect, index, offset, reason):
        out[name] = (insert(base, index, record), Verdict("LABEL: " + rule, expect, index, offset, reason))

    skip = FLAG_SKIPPABLE  # the good body is 8 + 13 + 12 + 9 + 5 = 47 bytes ("\u00e9" is 2 bytes)
    add("label_too_long", frame(48, skip, label_body(b"x" * 1025)), "label_len at most 1024",
        "LimitExceeded", 2, SMALL_2, "label of 1025 bytes, over 1024")
    add("label_not_utf8", frame(48, skip, label_body(b"caf\xe9")), "label is UTF-8",
        "MalformedRecord", 2, SMALL_2, "label is not valid UTF-8 (byte 3)")
    add("label_host_not_utf8", frame(48, skip, label_body(host=b"h\xffst")), "host is UTF-8",
        "MalformedRecord", 2, SMALL_2, "host name is not valid UTF-8 (byte 1)")
    add("label_not_skippable", frame(48, 0, label_body()), "LABEL carries SKIPPABLE",
        "MalformedRecord", 2, SMALL_2, "label record not marked skippable")
    add("label_body_longer", frame(48, skip, label_body() + b"!"), "body_len is 8 plus the four lengths",
        "MalformedRecord", 2, SMALL_2, "label body is 48 bytes, expected 47")
    # inserted as record 3: it takes the place of d/f, which followed d
    add("label_out_of_place", frame(48, skip, label_body()), "LABEL is record 2 only",
        "RecordOrderError", 3, SMALL_D_F, "a label record as record 3")
    return out


# -- SNAPSHOT: a note, record 2 (3 after LABEL), always SKIPPABLE -------------------------------------

SNAP_UUID = bytes(range(1, 17))
PARENT_UUID = bytes(range(17, 33))


def snapshot_body(uuid: bytes = SNAP_UUID, ctransid: int = 12, parent_uuid: bytes = PARENT_UUID,
                  parent_ctransid: int = 9) -> bytes:
    """A SNAPSHOT body from the spec's table."""
    return uuid + struct.pack("<Q", ctransid) + parent_uuid + struct.pack("<Q", parent_ctransid)


def snapshot_vectors() -> dict[str, tuple[bytes, Verdict]]:
    """good_snapshot (small() with a SNAPSHOT as record 2) and one damaged vector per SNAPSHOT rule."""
    base = small()
    skip = FLAG_SKIPPABLE
    out = {"good_snapshot": (insert(base, 2, frame(49, skip, snapshot_body(parent_uuid=bytes(16), parent_ctransid=0))),
                             Verdict("SNAPSHOT: every rule kept (a full stream: no parent)"))}

    def add(name, record, rule, expect, index, offset, reason):
        out[name] = (insert(base, index, record), Verdict("SNAPSHOT: " + rule, expect, index, offset, reason))

    add("snapshot_not_skippable", frame(49, 0, snapshot_body()), "SNAPSHOT carries SKIPPABLE",
        "MalformedRecord", 2, SMALL_2, "snapshot record not marked skippable")
    add("snapshot_body_shorter", frame(49, skip, snapshot_body()[:40]), "body_len is 48",
        "MalformedRecord", 2, SMALL_2, "snapshot body is 40 bytes, expected 48")
    add("snapshot_uuid_zero", frame(49, skip, snapshot_body(uuid=bytes(16))), "uuid is never zero",
        "MalformedRecord", 2, SMALL_2, "the snapshot's uuid is zero")
    add("snapshot_parent_ctransid_alone", frame(49, skip, snapshot_body(parent_uuid=bytes(16))),
        "parent_ctransid is zero exactly when parent_uuid is", "MalformedRecord", 2, SMALL_2,
        "a parent ctransid without a parent uuid")
    # inserted as record 4: it takes the place of the extent, which followed d/f
    add("snapshot_out_of_place", frame(49, skip, snapshot_body()), "SNAPSHOT is record 2 or 3 only",
        "RecordOrderError", 4, SMALL_EXTENT, "a snapshot record as record 4")
    return out


# -- incremental streams ------------------------------------------------------------------------------

# The base every incremental vector names: good_plain (ids 1..9; its next id is 10).
BASE_ID = STREAM_ID
INCREMENTAL_ID = bytes.fromhex("ffeeddccbbaa99887766554433221100")


def incremental_items(base_digest: bytes) -> list:
    """Changes to good_plain's tree: one record of each incremental type, in the writer's order."""
    d, f = stat.S_IFDIR, stat.S_IFREG
    return [
        Base(BASE_ID, base_digest, 10),
        Unlink(8, 1, b"dangling"),                         # a symlink goes
        Unlink(3, 1, b"fox-link.txt"),                     # one name of a hard-linked file goes
        Rename(4, 1, "h\u00e9llo w\u00f6rld.txt".encode(), 2, b"hello.txt"),  # moved into docs
        Create(RecordType.MKDIR, 10, 1, b"new", d | 0o755, 0, 0, T1, T1),
        Create(RecordType.MKFILE, 11, 10, b"n.txt", f | 0o644, 0, 0, T1, T1, 4),
        DataChunk(11, 0, b"new\n"),
        Link(6, 10, b"empty-too"),
        Rmdir(9, 1, b"read-only"),
        Truncate(5, 2 << 20),                              # sparse.img grows to 2 MiB
        UpdateFile(5, 2 << 20),
        PunchHole(5, 512 * 1024, 4096),                    # its data block becomes a hole
        DataChunk(5, 1 << 20, b"tail"),                    # and it gets data further on
        Chown(4, 1000, 1000),
        Chmod(4, 0o640),
        RemoveXattr(3, b"user.b"),
        SetXattr(2, b"user.purpose", b"docs, changed"),
        Utimes(2, T2, T2),
    ]


def build_incremental(base_digest: bytes, items_: list | None = None) -> bytes:
    out = bytearray()
    send(items_ if items_ is not None else incremental_items(base_digest), out.extend,
         compression=Compression.NONE, threads=1, stream_id=INCREMENTAL_ID, created_ns=CREATED_NS,
         required=Feature.INCREMENTAL)
    return bytes(out)


def incremental_vectors(plain: bytes) -> dict[str, tuple[bytes, Verdict]]:
    """good_incremental and one damaged vector per rule of "What a reader checks without the base"."""
    digest = End.unpack(plain[-80:]).digest
    good = build_incremental(digest)
    out = {"good_incremental": (good, Verdict("Incremental streams: every rule kept"))}
    inc = "Incremental streams: "
    # landmarks of good_incremental: HEADER at 12, BASE at 117 (16 + 56), then the unlinks
    base_at, first_unlink = 117, 189

    def add(name, data, rule, expect, record, offset, reason):
        out[name] = (data, Verdict(inc + rule, expect, record, offset, reason))

    spans = record_spans(good)
    at = [s for s, _ in spans]
    assert at[1] == base_at and at[2] == first_unlink
    kinds = record_types(good)
    i_mkfile = kinds.index(RecordType.MKFILE)
    i_rmdir = kinds.index(RecordType.RMDIR)
    i_update = kinds.index(RecordType.UPDATE_FILE)
    i_punch = kinds.index(RecordType.PUNCH_HOLE)
    i_chmod = kinds.index(RecordType.CHMOD)
    i_truncate = kinds.index(RecordType.TRUNCATE)
    i_mkdir = kinds.index(RecordType.MKDIR)

    # rule 1: BASE is record 1 exactly when the stream is incremental
    no_bit = bytearray(good)
    h = list(HEADER_BODY.unpack_from(no_bit, 12 + RECORD_HEADER.size))
    h[2] = 0  # required_features: incremental cleared
    HEADER_BODY.pack_into(no_bit, 12 + RECORD_HEADER.size, *h)
    fix_crc(no_bit, 12)
    add("incremental_without_feature", refinish(bytes(no_bit)), "an incremental record needs the feature",
        "MalformedRecord", 1, base_at, "does not set the required feature incremental")
    add("incremental_without_base", reframe(good, 1, rtype=RecordType.UNLINK, body=Unlink(7, 2, b"up").pack()),
        "record 1 is BASE", "RecordOrderError", 1, base_at, "record 1 must be its base record")
    second = frame(RecordType.BASE, 0, Base(BASE_ID, digest, 10).pack())
    add("second_base", insert(good, 2, second), "BASE appears nowhere else", "RecordOrderError", 2,
        first_unlink, "record 1 must be its base record, and only record 1")
    add("base_first_id_one", reframe(good, 1, body=Base(BASE_ID, digest, 1).pack()),
        "BASE first_id is 2 or more", "MalformedRecord", 1, base_at, "base first_id 1 not in 2..")
    add("base_body_shorter", reframe(good, 1, body=Base(BASE_ID, digest, 10).pack()[:-1]),
        "a body shorter than its type defines", "MalformedRecord", 1, base_at,
        "base body is 55 bytes, expected 56")
    add("base_marked_skippable", reframe(good, 1, flags=FLAG_SKIPPABLE),
        "incremental records are never skippable", "MalformedRecord", 1, base_at, "base record marked skippable")
    # rule 2: creates carry first_id, first_id + 1, ...
    wrong_id = Create(RecordType.MKDIR, 12, 1, b"new", stat.S_IFDIR | 0o755, 0, 0, T1, T1)
    add("incremental_create_wrong_id", reframe(good, i_mkdir, body=wrong_id.pack()),
        "creates carry first_id, first_id + 1, ...", "RecordOrderError", i_mkdir, at[i_mkdir],
        "file id 12, expected the next id 10")
    # rule 3: an id at or above first_id must have been created; types fit the record
    add("chmod_of_id_never_created", reframe(good, i_chmod, body=Chmod(40, 0o640).pack()),
        "an id of this stream was created before", "RecordOrderError", i_chmod, at[i_chmod],
        "chmod of file id 40, which neither the base nor this stream created before")
    add("rmdir_of_a_new_file", reframe(good, i_rmdir, body=Rmdir(11, 10, b"n.txt").pack()),
        "RMDIR removes a directory", "RecordOrderError", i_rmdir, at[i_rmdir], "rmdir of file id 11, a non-directory")
    # rule 4: the root is never renamed, unlinked, removed, truncated or updated
    add("rename_of_the_root", reframe(good, 4, body=Rename(1, 1, b"x", 2, b"y").pack()),
        "no rename of the root", "MalformedRecord", 4, at[4], "rename of file id 1, the root")
    # rule 5: EXTENT and PUNCH_HOLE go to the current file, in order
    swapped = [r for r in incremental_items(digest) if not isinstance(r, UpdateFile)]
    add("punch_hole_without_update_file", build_incremental(digest, swapped),
        "data records change the current file", "RecordOrderError", i_update, at[i_update],
        "punch_hole for file id 5, but the file being written is")
    overlap = PunchHole(5, 0, 1 << 20)
    items_ = incremental_items(digest)
    items_.insert(items_.index(next(r for r in items_ if isinstance(r, PunchHole))) + 1, overlap)
    add("punch_hole_overlaps", build_incremental(digest, items_), "in increasing, non-overlapping order",
        "RecordOrderError", i_punch + 1, at[i_punch + 1], "punch_hole at offset 0 overlaps or precedes")
    add("chmod_beyond_permission_bits", reframe(good, i_chmod, body=Chmod(4, 0o10640).pack()),
        "CHMOD carries permission bits only", "MalformedRecord", i_chmod, at[i_chmod],
        "bits beyond the permission bits")
    add("truncate_body_longer", reframe(good, i_truncate, extra=bytes(1)),
        "a body longer than its type defines", "MalformedRecord", i_truncate, at[i_truncate],
        "truncate body is 17 bytes, expected 16")
    # rule 7: a name twice in a directory this stream made
    twice = [*incremental_items(digest)]
    twice.insert(twice.index(next(r for r in twice if isinstance(r, Link))) + 1, Link(6, 10, b"n.txt"))
    i_link2 = kinds.index(RecordType.LINK) + 1
    add("incremental_name_twice", build_incremental(digest, twice), "rule 5 for the names a stream adds",
        "MalformedRecord", i_link2, at[i_link2], "the same name twice in one directory")
    _ = i_mkfile
    return out


# -- expectations ---------------------------------------------------------------------------------

def describe(stream: bytes) -> tuple[RawsendError | None, str]:
    """(the reader's error or None, dump text) of a stream."""
    dumper = Dumper()
    lines: list[str] = []
    try:
        dump_stream(io.BytesIO(stream), lambda raw, rec: lines.append(dumper.line(raw, rec)))
    except RawsendError as e:
        lines.append(f"error: {e}")
        return e, "\n".join(lines) + "\n"
    return None, "\n".join(lines) + "\n"


def disagreement(verdict: Verdict, err: RawsendError | None) -> str | None:
    """How the reader's outcome differs from the declared verdict, or None when it agrees."""
    said = ("success" if err is None else f"{type(err).__name__} at record {err.record}, offset {err.offset}")
    wanted = ("success" if verdict.expect == "success"
              else f"{verdict.expect} at record {verdict.record}, offset {verdict.offset}")
    if said != wanted:
        return f"declared {wanted}, the reader says {said}" + (f": {err}" if err else "")
    if err is not None and verdict.reason and verdict.reason not in str(err) and _has(verdict.needs):
        return f"declared reason {verdict.reason!r}, the reader says: {err}"
    return None


def _has(module: str) -> bool:
    if not module:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def vectors() -> dict[str, tuple[bytes, Verdict]]:
    plain = build(Compression.NONE)
    packed = build(Compression.ZSTD)
    out = {"good_plain": (plain, GOOD), "good_zstd": (packed, GOOD),
           "good_lz4": (build(Compression.LZ4), GOOD), "good_zlib": (build(Compression.ZLIB), GOOD)}
    out.update(damaged(plain, packed))
    out.update(incremental_vectors(plain))
    out.update(label_vectors())
    out.update(snapshot_vectors())
    return out


def codec_versions() -> str:
    """Codec output is byte-stable only for one library version: record which made the vectors."""
    return (f"zstd {'.'.join(map(str, zstandard.ZSTD_VERSION))}\n"
            f"zlib {zlib.ZLIB_RUNTIME_VERSION}\n"
            f"lz4 {lz4.library_version_string()}\n")


def main(argv: list[str]) -> int:
    check = "--check" in argv
    out_dir = Path(argv[argv.index("--out") + 1]) if "--out" in argv else HERE
    files: dict[str, bytes] = {}
    wrong = []
    for name, (data, verdict) in sorted(vectors().items()):
        err, dump = describe(data)
        why = disagreement(verdict, err)
        if why:
            wrong.append(f"{name}: {why}")
        files.update({f"{name}.rs": data, f"{name}.expect": verdict.text().encode(), f"{name}.dump": dump.encode()})
    if wrong:  # a reader that changed its mind is a regression until the verdict is changed by hand
        print("the reader disagrees with the declared verdicts; nothing written:", *wrong, sep="\n  ")
        return 1
    bad = 0
    for fname, content in files.items():
        path = out_dir / fname
        if check:
            if not path.exists() or path.read_bytes() != content:
                print(f"differs: {fname}")
                bad += 1
        else:
            path.write_bytes(content)
    if not check:
        (out_dir / "CODEC_VERSIONS").write_text(codec_versions())
        print(f"wrote {len(files) // 3} vectors to {out_dir}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
