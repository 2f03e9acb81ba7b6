"""StreamReader: parses a stream with hard bounds and checks every CRC, the digest and END.

It yields RawRecord objects in order.  Nothing is trusted before it is
checked: lengths are compared with their caps before any buffer is sized,
and a record is handed on only after its CRC matched.  The END record is
checked against the count, byte count and digest of everything before it,
and the stream must end right after END.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from rawsend.crc import crc32c

from rawsend.errors import (
    BadMagic, ChecksumMismatch, DigestMismatch, LimitExceeded, MalformedRecord, RecordOrderError,
    StreamError, TrailingData, TruncatedStream, UnsupportedFeature, UnsupportedVersion,
)
from rawsend.stream.records import (
    CRC_COVERED, FLAG_SEALED, FLAG_SKIPPABLE, KNOWN_FLAGS, MAGIC, MAX_BODY_LEN, MAX_PAYLOAD_LEN,
    PAYLOAD_TYPES, PREAMBLE, RECORD_HEADER, VERSION, End, Feature, Header, RecordType,
)

# per-record code reads these as globals: an IntEnum's class attribute costs several times more
_HEADER, _END = RecordType.HEADER, RecordType.END
# types whose records _check_type passes unless they are marked SKIPPABLE
_NOT_SKIPPED = frozenset(RecordType.NAMES) - RecordType.ALWAYS_SKIPPABLE
_HEADER_LEN = RECORD_HEADER.size
_unpack_header = RECORD_HEADER.unpack


@dataclass(slots=True)
class RawRecord:
    """One framed record, CRC checked.  ``payload`` is only valid until the next record."""

    index: int
    offset: int          # byte offset of the record header in the stream
    type: int
    flags: int
    header: bytes        # the 16 framing bytes, as read
    body: bytes
    payload: memoryview

    @property
    def sealed(self) -> bool:
        return bool(self.flags & FLAG_SEALED)

    @property
    def size(self) -> int:
        return RECORD_HEADER.size + len(self.body) + len(self.payload)

    def raw_bytes(self) -> bytes:
        return self.header + self.body + bytes(self.payload)


_NO_PAYLOAD = memoryview(b"")


class StreamReader:
    """Iterate over a stream's records.  After iteration, ``end`` holds the checked END."""

    def __init__(self, stream: BinaryIO, on_end: Callable[[RawRecord, End], None] | None = None):
        self._stream = stream
        self._on_end = on_end  # END's further checks (its MAC), before the check that nothing follows
        self._payload_buf = bytearray(MAX_PAYLOAD_LEN)
        self._digest = hashlib.sha256()
        self.offset = 0
        self.record_count = 0
        self.header: Header | None = None
        self.header_body: bytes = b""
        self.end: End | None = None
        self.preamble = b""
        self.digest = b""

    # -- low-level reads ------------------------------------------------------------

    def _read_exact(self, n: int, what: str, record: int | None) -> bytes:
        data = self._stream.read(n)
        if len(data) != n:
            raise TruncatedStream(f"{what}: expected {n} bytes, got {len(data)}",
                                  record=record, offset=self.offset + len(data))
        self.offset += n
        return data

    def _read_payload(self, n: int, record: int) -> memoryview:
        view = memoryview(self._payload_buf)[:n]
        got = 0
        while got < n:
            k = self._stream.readinto(view[got:])
            if not k:
                raise TruncatedStream(f"payload: expected {n} bytes, got {got}",
                                      record=record, offset=self.offset + got)
            got += k
        self.offset += n
        return view

    # -- parsing --------------------------------------------------------------------

    def _read_preamble(self) -> None:
        data = self._stream.read(PREAMBLE.size)
        if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
            if MAGIC.startswith(data):
                raise TruncatedStream(f"stream is {len(data)} bytes, shorter than its magic",
                                      offset=len(data))
            raise BadMagic(f"first bytes are {data[:8]!r}, expected {MAGIC!r}", offset=0,
                           hint="is this a rawsend stream?")
        if len(data) < PREAMBLE.size:
            raise TruncatedStream("stream ends inside its version field", offset=len(data))
        _, version = PREAMBLE.unpack(data)
        if version != VERSION:
            raise UnsupportedVersion(f"stream version {version}, this rawsend reads {VERSION}",
                                     offset=len(MAGIC))
        self.preamble = data
        self._digest.update(data)
        self.offset = PREAMBLE.size

    def _read_record(self) -> RawRecord:
        index, start = self.record_count, self.offset
        header = self._stream.read(_HEADER_LEN)
        if len(header) != _HEADER_LEN:
            if not header:
                raise TruncatedStream("no END record", record=index, offset=start)
            raise TruncatedStream(f"record header: expected {_HEADER_LEN} bytes, got {len(header)}",
                                  record=index, offset=start + len(header))
        self.offset = start + _HEADER_LEN
        rtype, flags, body_len, payload_len, crc = _unpack_header(header)
        if flags & ~KNOWN_FLAGS:
            raise MalformedRecord(f"unknown flag bits 0x{flags & ~KNOWN_FLAGS:04x}", record=index, offset=start)
        if body_len > MAX_BODY_LEN:
            raise LimitExceeded(f"body length {body_len} over the cap {MAX_BODY_LEN}", record=index, offset=start)
        if payload_len > MAX_PAYLOAD_LEN:
            raise LimitExceeded(f"payload length {payload_len} over the cap {MAX_PAYLOAD_LEN}",
                                record=index, offset=start)
        if payload_len and rtype not in PAYLOAD_TYPES:
            # a skippable record carries no file data, so no unknown type may have a payload either
            raise MalformedRecord(f"{RecordType.name_of(rtype)} record with a payload of {payload_len} bytes;"
                                  " only extents carry one", record=index, offset=start)
        body = self._read_exact(body_len, "record body", index) if body_len else b""
        got = crc32c(body, crc32c(header[:CRC_COVERED]))
        if payload_len:
            payload = self._read_payload(payload_len, index)
            got = crc32c(payload, got)
        else:
            payload = _NO_PAYLOAD
        if got != crc:
            raise ChecksumMismatch(f"record CRC-32C is 0x{got:08x}, header says 0x{crc:08x}",
                                   record=index, offset=start)
        return RawRecord(index, start, rtype, flags, header, body, payload)

    def __iter__(self) -> Iterator[RawRecord]:
        self._read_preamble()
        first = self._read_record()
        if first.type != RecordType.HEADER or first.flags:
            raise RecordOrderError(f"first record is type {first.type}, expected header",
                                   record=0, offset=first.offset)
        try:
            self.header = Header.unpack(first.body)
        except StreamError as e:
            e.locate(0, first.offset)
            raise
        unknown = self.header.required_features & ~Feature.SUPPORTED_REQUIRED
        if unknown:
            bits = ", ".join(str(b) for b in range(64) if unknown >> b & 1)
            raise UnsupportedFeature(f"required feature bit {bits} (0x{unknown:x}) unknown to this rawsend",
                                     record=0, offset=first.offset)
        self.header_body = first.body
        self._account(first)
        yield first
        read_record, digest = self._read_record, self._digest.update
        while True:
            rec = read_record()
            rtype = rec.type
            if rtype == _END:
                self._check_end(rec)
                yield rec
                return
            if rtype == _HEADER:
                raise RecordOrderError("a second header record", record=rec.index, offset=rec.offset)
            if rtype not in _NOT_SKIPPED or rec.flags & FLAG_SKIPPABLE:
                self._check_type(rec)
            digest(rec.header)  # _account, inline: once per record
            self.record_count += 1
            yield rec

    @staticmethod
    def _check_type(rec: RawRecord) -> None:
        """SKIPPABLE is for unknown types of the skippable ranges only (spec "Versioning and extension")."""
        skippable = rec.flags & FLAG_SKIPPABLE
        if rec.type in RecordType.ALWAYS_SKIPPABLE:  # a note this reader knows: older ones skip it
            if not skippable:
                raise MalformedRecord(f"{RecordType.NAMES[rec.type]} record not marked skippable",
                                      record=rec.index, offset=rec.offset,
                                      hint="notes are always skippable; the stream is damaged or not conforming")
            return
        if rec.type in RecordType.NAMES:
            if skippable:
                raise MalformedRecord(f"{RecordType.NAMES[rec.type]} record marked skippable",
                                      record=rec.index, offset=rec.offset)
            return
        later = RecordType.RESERVED.get(rec.type)
        what = f"record type {rec.type}" + (f" (reserved for {later})" if later else "")
        if not skippable:
            raise MalformedRecord(f"unknown {what} not marked skippable", record=rec.index, offset=rec.offset,
                                  hint="a newer stream would have named what it needs in its header;"
                                       " the stream is damaged or not conforming")
        if not RecordType.may_skip(rec.type):
            raise MalformedRecord(f"{what} marked skippable, but records of its range change the tree",
                                  record=rec.index, offset=rec.offset)

    def _account(self, rec: RawRecord) -> None:
        self._digest.update(rec.header)
        self.record_count += 1

    def _check_end(self, rec: RawRecord) -> None:
        if rec.flags or rec.payload:
            raise MalformedRecord("END record with flags or payload", record=rec.index, offset=rec.offset)
        try:
            end = End.unpack(rec.body)
        except StreamError as e:
            e.locate(rec.index, rec.offset)
            raise
        self.digest = self._digest.digest()
        if end.record_count != self.record_count:
            raise DigestMismatch(f"END counts {end.record_count} records, the stream has {self.record_count}",
                                 record=rec.index, offset=rec.offset)
        if end.byte_count != rec.offset:
            raise DigestMismatch(f"END counts {end.byte_count} bytes before it, the stream has {rec.offset}",
                                 record=rec.index, offset=rec.offset)
        if end.digest != self.digest:
            raise DigestMismatch("END digest differs from the digest of the stream",
                                 record=rec.index, offset=rec.offset)
        if self._on_end is not None:
            self._on_end(rec, end)
        extra = self._stream.read(1)
        if extra:
            raise TrailingData("bytes follow the END record", record=rec.index + 1, offset=self.offset,
                               hint="the stream was damaged or concatenated")
        self.end = end
