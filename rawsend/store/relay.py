"""Sending a stored stream on: the bytes out are the bytes that came in, checked as they are copied.

Every stored stream is read back through the checks of receive --store (the
CheckedReader without a key, and a decode check of each clear payload) and compared with
its index entry (stream id, END digest, size, SHA-256 of the file), so a
store damaged on disk is never relayed silently.  The END record, the last
bytes out, is only written once the whole file matched: a fault stops the
relay with an error and the receiving side sees a truncated stream, which it
refuses.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from rawsend.errors import (
    ChecksumMismatch, DigestMismatch, KeyProblem, MalformedRecord, RawsendError, StoreError, StreamError,
)
from rawsend.store.index import IndexEntry
from rawsend.store.layout import Store, damaged_hint
from rawsend.pipeline import ReceiveStats
from rawsend.store.payloads import PayloadCheck
from rawsend.store.receive import stored_events
from rawsend.stream.checked import EndEvent, HeaderEvent
from rawsend.stream.records import END_BODY, PREAMBLE, RECORD_HEADER, End, Header
from rawsend.stream.tee import TeeReader
from rawsend.stream.writer import FLUSH_AT

END_SIZE = RECORD_HEADER.size + END_BODY.size  # the END record, the last bytes of a good stream


class StoredStream:
    """A stored stream's file, read for a StreamReader and checked against its index entry."""

    def __init__(self, store: Store, entry: IndexEntry):
        self.entry = entry
        self.path = store.stream_path(entry.stream_id)
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._file = store.open_stream(entry.stream_id)

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._file.read(n)
        except OSError as e:
            raise self._read_error(e) from None
        self._sha256.update(data)
        self.size += len(data)
        return data

    def readinto(self, buf) -> int:
        try:
            n = self._file.readinto(buf)
        except OSError as e:
            raise self._read_error(e) from None
        self._sha256.update(memoryview(buf)[:n])
        self.size += n
        return n

    def _read_error(self, e: OSError) -> StoreError:
        return StoreError(f"stored stream {self.entry.stream_id}: reading its file failed: {e.strerror}",
                          offset=self.size, path=str(self.path))

    def close(self) -> None:
        self._file.close()

    def check_header(self, header: Header) -> None:
        if header.stream_id.hex() != self.entry.stream_id:
            raise MalformedRecord(f"the file holds stream {header.stream_id.hex()}", record=0,
                                  offset=PREAMBLE.size)

    def check_end(self, end: End, index: int, offset: int) -> None:
        """After the reader checked END and that nothing follows: the file must be the one indexed."""
        if end.digest.hex() != self.entry.end_digest:
            raise DigestMismatch("END digest differs from the one in the index entry", record=index, offset=offset)
        if self.size != self.entry.stored_bytes:
            raise ChecksumMismatch(f"file is {self.size} bytes, the index entry says {self.entry.stored_bytes}",
                                   record=index, offset=offset)
        if self._sha256.hexdigest() != self.entry.sha256:
            raise ChecksumMismatch("SHA-256 of the file differs from the index entry", record=index, offset=offset)

    def blame(self, e: RawsendError) -> None:
        """Name this stored stream in an error found while reading it."""
        if isinstance(e, (StreamError, KeyProblem)):
            e.detail = f"stored stream {self.entry.stream_id}: {e.detail}"
            e.path = str(self.path)
        if isinstance(e, StreamError):
            e.hint = damaged_hint(self.entry.stream_id)


class _HeldBack:
    """Output buffer that keeps the last END_SIZE bytes back until ``close``: END, the last
    record of a good stream, goes out only after every check of the stream passed."""

    def __init__(self, write: Callable[[bytes], None]):
        self._write = write
        self._buf = bytearray()

    def add(self, data) -> None:
        self._buf += data
        if len(self._buf) >= FLUSH_AT + END_SIZE:
            self._write(self._buf[:-END_SIZE])  # its errors are the output's (OutputError)
            del self._buf[:-END_SIZE]

    def close(self) -> None:
        self._write(self._buf)


def send_from_store(store_path: str | os.PathLike, stream_id: str | None,
                    write: Callable[[bytes], None]) -> IndexEntry:
    """Write the stored stream ``stream_id`` (a unique prefix; None: the newest) to ``write``.

    The bytes out are the bytes read, copied as the checked reader consumes them, and the
    checks are those of receive --store (no key): what a store would refuse is not relayed.
    """
    with Store.open(store_path) as store:
        entry = store.find(stream_id)
        stored = StoredStream(store, entry)
    out = _HeldBack(write)
    payloads = PayloadCheck()
    try:
        for event in stored_events(TeeReader(stored, out.add), payloads, ReceiveStats()):
            if isinstance(event, HeaderEvent):
                stored.check_header(event.header)
            elif isinstance(event, EndEvent):
                stored.check_end(event.end, event.raw.index, event.raw.offset)
    except RawsendError as e:
        stored.blame(e)
        raise
    finally:
        payloads.close()
        stored.close()
    out.close()
    return entry
