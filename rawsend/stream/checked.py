"""CheckedReader: one pass over a stream that makes every check of the spec, for every consumer.

receive (into a tree or a store), verify, dump, rekey, relay and verify STORE
all read through it, so they refuse the same streams with the same error,
record and byte offset.  The rules run in the spec's order: framing and CRC
(StreamReader), the sealing rules, the record's own fields, the record order
rules (StreamChecker), the nonce window (Opener), at END its counts and digest,
then its MAC, then that nothing follows, then that the root was created.

Keyed or keyless: with the stream's key every sealed record is opened and END
authenticated; without it (``require_key=False``) a sealed metadata record is
a SealedEvent and the record order rules, which need names, are not checked.
The key policy (which key, a key missing, a stream that is not encrypted) is
decided here, once, at the header.

All the state of a read (StreamReader's counts and digest, the checker's
tables, the opener's nonce window) hangs off this one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

from rawsend.codecs.sealing import check_sealing
from rawsend.errors import KeyMissing, KeyProblem, MalformedRecord, RawsendError, RecordOrderError, WrongKey
from rawsend.stream.checker import (
    CLEAR_RULE_TYPES, Limits, StreamChecker, check_clear_rules, check_extent_features,
)
from rawsend.stream.reader import RawRecord, StreamReader
from rawsend.stream.records import FLAG_SEALED, End, Extent, Feature, Header, RecordType, unpack_body

# per-record code reads these as globals: an IntEnum's class attribute costs several times more
_HEADER, _END, _TYPE_NAMES = RecordType.HEADER, RecordType.END, RecordType.NAMES


@dataclass(slots=True)
class HeaderEvent:
    raw: RawRecord
    header: Header


@dataclass(slots=True)
class RecordEvent:
    """A known record, every check passed.  ``payload``: an extent's encoded payload, opened
    when it was sealed (None: sealed and no key); ``body``: the clear body the record came from."""

    raw: RawRecord
    record: object
    body: bytes
    payload: object = None


@dataclass(slots=True)
class SealedEvent:
    """A sealed metadata record read without the key: framing, CRC and sealing rules checked."""

    raw: RawRecord


@dataclass(slots=True)
class SkippedEvent:
    """A skippable record of a later version; ``body`` is its clear body (opened when keyed)."""

    raw: RawRecord
    body: bytes


@dataclass(slots=True)
class EndEvent:
    raw: RawRecord
    end: End
    authenticated: bool


Event = HeaderEvent | RecordEvent | SealedEvent | SkippedEvent | EndEvent


class CheckedReader:
    """Iterate over the checked events of one stream.

    ``keyring``: the keys given; a stream whose key is not among them is refused
    (WrongKey), even when ``require_key`` is False, since a keyless check is not
    what was asked.  ``require_key``: refuse an encrypted stream when no keyring
    was given (KeyMissing).  ``require_encrypted``: refuse a stream that is not
    encrypted (rekey).
    """

    def __init__(self, stream: BinaryIO, keyring=None, *, require_key: bool = True,
                 require_encrypted: bool = False, limits: Limits | None = None):
        self.reader = StreamReader(stream, on_end=self._authenticate)
        self.checker = StreamChecker(limits or Limits())
        self.keyring = keyring
        self.require_key = require_key
        self.require_encrypted = require_encrypted
        self.opener = None
        self.header: Header | None = None
        self._encrypted = self._incremental = False  # of the header, once it is read
        # the record being checked when an error came, once its body was understood (dump shows it)
        self.pending: tuple[RawRecord, object] | None = None

    @property
    def keyless(self) -> bool:
        """An encrypted stream read without its key: no names, so no record order rules."""
        return self.header is not None and self.header.encrypted and self.opener is None

    @property
    def record_count(self) -> int:
        return self.reader.record_count

    @property
    def offset(self) -> int:
        return self.reader.offset

    def __iter__(self) -> Iterator[Event]:
        record = self._record
        for raw in self.reader:
            rtype = raw.type
            if rtype == _HEADER:
                yield self._header(raw)
            elif rtype == _END:
                yield self._end(raw)
            else:
                yield record(raw)

    def _header(self, raw: RawRecord) -> HeaderEvent:
        header = self.header = self.reader.header
        self._encrypted = header.encrypted
        self._incremental = bool(header.required_features & Feature.INCREMENTAL)
        try:
            if self.require_encrypted and not header.encrypted:
                raise KeyProblem("the stream is not encrypted, so it has no key to change",
                                 hint="make an encrypted stream with 'rawsend send --encrypt KEYFILE'")
            if header.encrypted:
                if self.keyring is not None:
                    self.opener = self.keyring.opener(header)
                    if self.opener is None:
                        raise WrongKey.for_stream(header.key_id.hex(), self.keyring.key_ids, offset=raw.offset)
                elif self.require_key:
                    raise KeyMissing(f"it needs key id {header.key_id.hex()}", record=0, offset=raw.offset)
        except RawsendError as e:
            e.locate(raw.index, raw.offset)
            raise
        return HeaderEvent(raw, header)

    def _record(self, raw: RawRecord):
        self.pending = None
        header, opener, rtype = self.header, self.opener, raw.type
        try:
            # The guards skip calls that cannot fail: a clear record of a stream that is not
            # encrypted passes check_sealing, check_clear_rules has rules for few types of a full stream.
            if self._encrypted or raw.flags & FLAG_SEALED:
                check_sealing(header, raw)
            if self._incremental or rtype in CLEAR_RULE_TYPES:
                check_clear_rules(header, rtype, raw.index, raw.flags)
            if rtype not in _TYPE_NAMES:  # skippable, of a later version: the reader said so
                body = opener.open_metadata(raw) if opener is not None else raw.body
                return SkippedEvent(raw, body)  # authenticated like any record, then skipped
            if raw.flags & FLAG_SEALED:
                if opener is None:
                    return SealedEvent(raw)
                body = opener.open_metadata(raw)
            else:
                body = raw.body
            rec = unpack_body(rtype, body)
            payload = None
            if rec.PAYLOAD:  # an extent
                if self._encrypted or rec.encryption:
                    check_sealing(header, raw, rec)  # its encryption fields agree with the header
                check_extent_features(header, rec)
            self.pending = (raw, rec)
            if opener is not None or not self._encrypted:  # not keyless: the record order rules
                self.checker.check(rec, raw.index)
            if rec.PAYLOAD:
                payload = self._payload(raw, rec)
            self.pending = None
            return RecordEvent(raw, rec, body, payload)
        except RawsendError as e:
            e.locate(raw.index, raw.offset)
            raise

    def _payload(self, raw: RawRecord, rec: Extent):
        if len(raw.payload) != rec.disk_num_bytes:
            raise MalformedRecord(f"payload is {len(raw.payload)} bytes, disk_num_bytes says {rec.disk_num_bytes}")
        if not rec.encryption:
            return raw.payload
        if self.opener is None:
            return None
        return self.opener.open_extent(raw.index, rec, raw.payload, raw.offset)

    def _authenticate(self, raw: RawRecord, end: End) -> None:
        """END's MAC, after its counts and digest and before the check that nothing follows."""
        if self.opener is not None:
            self.opener.check_end(self.reader.header_body, end, raw.index, raw.offset)

    def _end(self, raw: RawRecord) -> EndEvent:
        if raw.index == 1 and self.header.required_features & Feature.INCREMENTAL:
            raise RecordOrderError("an incremental stream that ends without its base record", record=raw.index,
                                   offset=raw.offset)
        if not self.keyless:
            self.checker.finish(raw.index, raw.offset)
        return EndEvent(raw, self.reader.end, self.opener is not None)
