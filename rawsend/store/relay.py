"""Sending a stored stream on: the bytes out are the bytes that came in, checked as they are copied.

Every stored stream is read back through the StreamReader and compared with
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
from rawsend.stream.reader import StreamReader
from rawsend.stream.records import PREAMBLE, End, Header, RecordType

FLUSH_AT = 1 << 20  # bytes gathered before one write to the output


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


def send_from_store(store_path: str | os.PathLike, stream_id: str | None,
                    write: Callable[[bytes], None]) -> IndexEntry:
    """Write the stored stream ``stream_id`` (a unique prefix; None: the newest) to ``write``."""
    with Store.open(store_path) as store:
        entry = store.find(stream_id)
        stored = StoredStream(store, entry)
    buf = bytearray()
    try:
        reader = StreamReader(stored)
        for raw in reader:
            if raw.type == RecordType.HEADER:
                stored.check_header(reader.header)
                buf += reader.preamble
            elif raw.type == RecordType.END:
                stored.check_end(reader.end, raw.index, raw.offset)
            buf += raw.header
            buf += raw.body
            buf += raw.payload
            if len(buf) >= FLUSH_AT:
                write(buf)  # its errors are the output's (OutputError), blame leaves them alone
                buf = bytearray()
    except RawsendError as e:
        stored.blame(e)
        raise
    finally:
        stored.close()
    write(buf)
    return entry
