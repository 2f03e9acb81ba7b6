"""Craft streams record by record, honest or hostile, for the hostile-stream tests and the fuzzers.

``HostileWriter`` is the real StreamWriter with one more method, ``raw``, that
frames any bytes with any header fields (lying lengths, unknown types or
flags, a wrong CRC) and still keeps the running digest, so END matches and a
test reaches the one check it aims at instead of failing an earlier one.
``reseal`` does the same for a stream that was damaged as bytes: it recomputes
every CRC and the END fields, so a mutation reaches the parsers behind them.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from crc32c import crc32c

from rawsend.pipeline import NullSink, receive, send
from rawsend.sinks.tree import TreeSink
from rawsend.sources.tree import DataChunk
from rawsend.stream.checker import Limits
from rawsend.stream.records import (
    CRC_COVERED,
    END_BODY,
    PREAMBLE,
    RECORD_HEADER,
    Compression,
    Create,
    End,
    Extent,
    Feature,
    Header,
    Link,
    RecordType,
    SetXattr,
)
from rawsend.stream.writer import StreamWriter

STREAM_ID = bytes(range(16))
T0 = 1_700_000_000_000_000_000

DIR, FILE, SYMLINK = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK


# -- records ------------------------------------------------------------------------------------

def mkdir(file_id: int, parent_id: int, name: bytes, mode: int = 0o755) -> Create:
    return Create(RecordType.MKDIR, file_id, parent_id, name, DIR | mode, 0, 0, T0, T0)


ROOT = mkdir(1, 0, b"")


def mkfile(file_id: int, parent_id: int, name: bytes, size: int = 0, mode: int = 0o644,
           uid: int = 0, gid: int = 0) -> Create:
    return Create(RecordType.MKFILE, file_id, parent_id, name, FILE | mode, uid, gid, T0, T0, size)


def symlink(file_id: int, parent_id: int, name: bytes, target: bytes) -> Create:
    return Create(RecordType.SYMLINK, file_id, parent_id, name, SYMLINK | 0o777, 0, 0, T0, T0, 0, target)


def mknod(file_id: int, parent_id: int, name: bytes, kind: int, rdev: int = 0, mode: int = 0o644) -> Create:
    return Create(RecordType.MKNOD, file_id, parent_id, name, kind | mode, 0, 0, T0, T0, rdev)


def plain_extent(file_id: int, offset: int, data: bytes) -> tuple[Extent, bytes]:
    return Extent(file_id, offset, len(data), len(data), 0, len(data)), data


# -- writing ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Written:
    """Where one record went: its number and the byte offset of its header."""

    index: int
    offset: int


class HostileWriter(StreamWriter):
    """StreamWriter that also frames arbitrary bytes with arbitrary header fields."""

    def __init__(self, header: Header | None = None):
        self.out = bytearray()
        # lz4 announced: hostile streams may carry lz4 extents (a reader refuses them otherwise)
        super().__init__(self.out.extend, header or Header(STREAM_ID, T0, required_features=Feature.LZ4))

    def record(self, rec, payload: bytes = b"", flags: int = 0) -> Written:
        """A typed record (Create, Link, SetXattr, Extent or End), framed honestly."""
        return self.raw(rec.type, rec.pack(), payload, flags=flags)

    def extent(self, extent: Extent, payload: bytes) -> Written:
        return self.raw(RecordType.EXTENT, extent.pack(), payload)

    def raw(self, rtype: int, body: bytes, payload: bytes = b"", *, flags: int = 0,
            body_len: int | None = None, payload_len: int | None = None, crc: int | None = None) -> Written:
        """Frame ``body`` and ``payload`` as given; header fields left None are the true ones."""
        at = Written(self.record_count, self.byte_count)
        header = bytearray(RECORD_HEADER.pack(rtype, flags, len(body) if body_len is None else body_len,
                                              len(payload) if payload_len is None else payload_len, 0))
        if crc is None:
            crc = crc32c(payload, crc32c(body, crc32c(bytes(header[:CRC_COVERED]))))
        RECORD_HEADER.pack_into(header, 0, rtype, flags, len(body) if body_len is None else body_len,
                                len(payload) if payload_len is None else payload_len, crc)
        self._digest.update(header)
        self._emit(bytes(header))
        self._emit(body)
        self._emit(payload)
        self.record_count += 1
        return at

    def stream(self, *, end: bool = True, trailing: bytes = b"") -> bytes:
        """The stream so far, with a correct END unless ``end`` is False, then ``trailing``."""
        if end:
            self.finish()
        self.flush()
        return bytes(self.out) + trailing


def tree_stream(*records) -> tuple[bytes, list[Written]]:
    """A stream of ROOT then ``records`` (typed, or (Extent, payload) pairs), honest framing."""
    w = HostileWriter()
    at = [w.record(ROOT)]
    for rec in records:
        at.append(w.extent(*rec) if isinstance(rec, tuple) else w.record(rec))
    return w.stream(), at


def sent_stream(items, compression: int = Compression.ZSTD) -> bytes:
    """A stream made by the real send() from an in-memory list of records and DataChunks."""
    out = bytearray()
    send(items, out.extend, compression=compression, threads=1, stream_id=STREAM_ID, created_ns=T0)
    return bytes(out)


def small_trees() -> list[bytes]:
    """A few small streams of every record kind, one per codec, for mutation and splicing."""
    text = b"the quick brown fox jumps over the lazy dog\n" * 120
    items = [ROOT, mkdir(2, 1, b"d", 0o750), SetXattr(2, b"user.k", b"v"),
             mkfile(3, 2, b"f.txt", len(text)), DataChunk(3, 0, text), SetXattr(3, b"user.a", b"1"),
             mkfile(4, 1, b"small", 5), DataChunk(4, 0, b"hello"), Link(3, 1, b"hard"),
             symlink(5, 1, b"sym", b"d/f.txt"), mkfile(6, 1, b"sparse", 1 << 20),
             DataChunk(6, 4096, bytes(range(256)) * 4), mkdir(7, 2, b"ro", 0o555)]
    return [sent_stream(items, c) for c in
            (Compression.NONE, Compression.ZSTD, Compression.ZLIB, Compression.LZ4)]


# -- surgery on bytes ---------------------------------------------------------------------------

@dataclass
class Frame:
    """One record cut out of a stream by its framing alone (nothing checked)."""

    type: int
    flags: int
    body: bytes
    payload: bytes

    def pack(self) -> bytes:
        header = bytearray(RECORD_HEADER.pack(self.type, self.flags, len(self.body), len(self.payload), 0))
        crc = crc32c(self.payload, crc32c(self.body, crc32c(bytes(header[:CRC_COVERED]))))
        RECORD_HEADER.pack_into(header, 0, self.type, self.flags, len(self.body), len(self.payload), crc)
        return bytes(header) + self.body + self.payload


def split(data: bytes) -> tuple[bytes, list[Frame], bytes]:
    """(preamble, frames, rest): the records the framing describes, and bytes no frame covers."""
    preamble, pos, frames = data[:PREAMBLE.size], PREAMBLE.size, []
    while pos + RECORD_HEADER.size <= len(data):
        rtype, flags, body_len, payload_len, _ = RECORD_HEADER.unpack_from(data, pos)
        body_at = pos + RECORD_HEADER.size
        end = body_at + body_len + payload_len
        if end > len(data):
            break
        frames.append(Frame(rtype, flags, data[body_at:body_at + body_len], data[body_at + body_len:end]))
        pos = end
    return preamble, frames, data[pos:]


def reseal(preamble: bytes, frames: list[Frame], rest: bytes = b"") -> bytes:
    """Join frames with fresh CRCs; an END-shaped record gets the true count, bytes and digest."""
    digest = hashlib.sha256(preamble)
    out = bytearray(preamble)
    for count, frame in enumerate(frames):
        if frame.type == RecordType.END and len(frame.body) == END_BODY.size:
            mac = END_BODY.unpack(frame.body)[3]
            frame = Frame(frame.type, frame.flags, End(count, len(out), digest.digest(), mac).pack(),
                          frame.payload)
        packed = frame.pack()
        digest.update(packed[:RECORD_HEADER.size])
        out += packed
    return bytes(out) + rest


# -- receiving ------------------------------------------------------------------------------------

def verify_bytes(data: bytes, limits: Limits | None = None):
    """Read, check and decode a whole stream, keeping nothing."""
    return receive(io.BytesIO(data), NullSink(), limits=limits)


def receive_bytes(data: bytes, dest: Path, limits: Limits | None = None, **sink_options):
    sink = TreeSink(dest, sync=False, **sink_options)
    stats = receive(io.BytesIO(data), sink, limits=limits)
    return stats, sink


def listing(root: Path) -> dict[str, tuple]:
    """Every entry under root (root itself included) with type, mode, size, target and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            entry: tuple = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns)
            if stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(p),)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    entry += (hashlib.sha256(f.read()).hexdigest(),)
            out[os.path.relpath(p, root)] = entry
    return out
