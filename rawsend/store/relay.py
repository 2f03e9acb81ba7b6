"""Sending a stored stream on: the bytes out are the bytes that came in, proved the ones indexed.

A stored stream passed every check of receive --store when it came in, and its index entry
records the SHA-256 of the file it became. A relay copies the file out (``_copy``) while it
hashes it, and compares size, SHA-256, HEADER stream id and END digest with the entry: when
all match, the bytes are the ones that were checked, and checking them again would only
spend time (every receiver checks them itself in any case). The END record, the last bytes
out, is written only after that comparison passed: a fault stops the relay and the receiving
side sees a truncated stream, which it refuses. To name the fault, a file that does not match
is then read again through every check of receive --store (``_first_fault``), so a damaged
stored stream gets from a relay the error, record and offset verify STORE gives it.
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
from rawsend.store.chains import Break, Chains, describe
from rawsend.store.receive import stored_events
from rawsend.stream.chain import chain_preamble, member_header
from rawsend.stream.checked import EndEvent, HeaderEvent
from rawsend.stream.records import END_BODY, PREAMBLE, RECORD_HEADER, End, Header
from rawsend.stream.writer import FLUSH_AT

END_SIZE = RECORD_HEADER.size + END_BODY.size  # the END record, the last bytes of a good stream
COPY_CHUNK = 1 << 20
# where a stored file holds what its index entry names: HEADER's stream id, END's digest
_HEADER_AT = PREAMBLE.size + RECORD_HEADER.size
HEAD_SIZE = _HEADER_AT + 16
HEADER_ID = slice(_HEADER_AT, _HEADER_AT + 16)
END_DIGEST = slice(RECORD_HEADER.size + 16, RECORD_HEADER.size + 48)


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
        blame(e, self.entry, self.path)


def blame(e: RawsendError, entry: IndexEntry, path) -> None:
    """Name the stored stream ``entry`` in an error found while reading its file ``path``."""
    if isinstance(e, (StreamError, KeyProblem)):
        e.detail = f"stored stream {entry.stream_id}: {e.detail}"
        e.path = str(path)
    if isinstance(e, StreamError):
        e.hint = damaged_hint(entry.stream_id)


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

    def tail(self) -> bytes:
        return bytes(self._buf[-END_SIZE:])

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
        _relay(store, entry, write)
    return entry


def send_chain_from_store(store_path: str | os.PathLike, stream_id: str | None,
                          write: Callable[[bytes], None]) -> list[IndexEntry]:
    """Write the chain that ends at ``stream_id`` (spec/chain-format.md): its full stream and each
    incremental stream after it, every one relayed as ``send_from_store`` relays one stream."""
    with Store.open(store_path) as store:
        chain = chain_to(store, store.find(stream_id))
        write(chain_preamble(len(chain)))
        for entry in chain:
            write(member_header(entry.stored_bytes))
            _relay(store, entry, write)
    return chain


def chain_to(store: Store, entry: IndexEntry) -> list[IndexEntry]:
    """``entry`` and the bases it rests on, oldest (the full stream) first; StoreDamaged naming the
    break when the store does not hold the whole chain (chains.py)."""
    chains = Chains(store.entries(damaged=[]))  # a damaged entry of the chain shows as a missing base
    path, end = chains.walk(entry.stream_id, ())
    if isinstance(end, Break):
        error = describe(entry.stream_id, end)
        error.path = str(store.root)
        raise error
    return [chains.entries[sid] for sid in reversed(path)]


def _relay(store: Store, entry: IndexEntry, write: Callable[[bytes], None]) -> None:
    try:
        _copy(store, entry, write)
    except StreamError as mismatch:
        fault = _first_fault(store, entry)
        if fault is None:
            blame(mismatch, entry, store.stream_path(entry.stream_id))
            raise
        raise fault from None


def _copy(store: Store, entry: IndexEntry, write: Callable[[bytes], None]) -> None:
    """Write the stored file out, END last and only once the file is the one ``entry`` indexes."""
    path = store.stream_path(entry.stream_id)
    with store.open_stream(entry.stream_id) as f:
        size = os.fstat(f.fileno()).st_size
        if size != entry.stored_bytes:  # checked first: a file grown without bound is never read
            raise ChecksumMismatch(f"file is {size} bytes, the index entry says {entry.stored_bytes}", offset=0)
        sha256 = hashlib.sha256()
        out = _HeldBack(write)
        head = b""
        done = 0
        while done < size:
            try:
                chunk = f.read(min(COPY_CHUNK, size - done))
            except OSError as e:
                raise StoreError(f"stored stream {entry.stream_id}: reading its file failed: {e.strerror}",
                                 offset=done, path=str(path)) from None
            if not chunk:
                raise ChecksumMismatch(f"file ends at byte {done}, the index entry says {size}", offset=done)
            if len(head) < HEAD_SIZE:
                head += chunk[:HEAD_SIZE - len(head)]
            sha256.update(chunk)
            out.add(chunk)
            done += len(chunk)
    if sha256.hexdigest() != entry.sha256:
        raise ChecksumMismatch("SHA-256 of the file differs from the index entry", offset=0)
    if head[HEADER_ID].hex() != entry.stream_id or out.tail()[END_DIGEST].hex() != entry.end_digest:
        raise MalformedRecord("the file is not the stream its index entry describes", offset=0)
    out.close()


def _first_fault(store: Store, entry: IndexEntry) -> RawsendError | None:
    """The first rule of receive --store the stored file breaks, blamed on it; None if it breaks none."""
    stored = StoredStream(store, entry)
    payloads = PayloadCheck()
    try:
        for event in stored_events(stored, payloads, ReceiveStats()):
            if isinstance(event, HeaderEvent):
                stored.check_header(event.header)
            elif isinstance(event, EndEvent):
                stored.check_end(event.end, event.raw.index, event.raw.offset)
    except RawsendError as e:
        stored.blame(e)
        return e
    finally:
        payloads.close()
        stored.close()
    return None
