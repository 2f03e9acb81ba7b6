"""Receiving into a store: check every record as it arrives, keep the bytes exactly as they came.

No payload byte is changed and none is decrypted.  The CheckedReader
(without a key) makes every check a reader makes: framing, every CRC, the
caps, END and that nothing follows it, the sealing rules, and for streams
that are not encrypted the structural checks of StreamChecker on their
metadata; every payload that is not encrypted is decoded as a check and the
output dropped (payloads.py).  The stream file is written into STORE/tmp and
becomes part of the store only after all of that passed and its bytes were
fsynced (Store.commit); on any error, or if the process dies, the store is as
it was.  The bytes kept are the bytes the reader consumed, copied as it
consumed them (TeeReader): nothing is framed again.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rawsend.errors import MalformedRecord, RawsendError
from rawsend.fsutil import write_all
from rawsend.pipeline import ReceiveStats, count
from rawsend.store.index import UNKNOWN, IndexEntry, Parent
from rawsend.store.layout import STREAM_SUFFIX, Store, os_error
from rawsend.store.payloads import PayloadCheck
from rawsend.stream.chain import ChainReader, Member
from rawsend.stream.checked import CheckedReader, EndEvent, Event, HeaderEvent, RecordEvent
from rawsend.stream.checker import Limits
from rawsend.stream.records import Base, Cipher, End, Extent, Header
from rawsend.stream.tee import TeeReader
from rawsend.stream.writer import FLUSH_AT



@dataclass
class StoreReceipt:
    entry: IndexEntry
    stored: bool  # False: the identical stream was already in the store, nothing was added
    store: Path
    unchecked_extents: int = 0  # LZO extents stored without a decode check: no LZO decoder here
    base_problem: str = ""  # an incremental stream whose base the store lacks: what is wrong, else ""


def _index_entry(header: Header, base: Base | None, end: End, stats: ReceiveStats, stored_bytes: int, sha256: str,
                 received_ns: int) -> IndexEntry:
    return IndexEntry(
        stream_id=header.stream_id.hex(), created_ns=header.created_ns, received_ns=received_ns,
        logical_bytes=stats.logical_bytes, stored_bytes=stored_bytes, records=stats.records,
        files=UNKNOWN if header.encrypted else stats.files,  # sealed metadata: only the key can count
        compression=dict(sorted(stats.by_compression.items())),
        encrypted=header.encrypted, cipher=Cipher.NAMES[header.cipher],
        key_id=header.key_id.hex() if header.encrypted else None,
        end_digest=end.digest.hex(), sha256=sha256,
        parent=Parent(base.stream_id.hex(), base.digest.hex()) if base else None)


class _StreamFile:
    """The temporary stream file: buffered writes, a SHA-256 of every byte, errors as StoreError.

    Hashing and writing run on a second thread, a batch of FLUSH_AT bytes at a
    time (hashlib and os.write release the GIL), while the caller parses the
    next records; at most IN_FLIGHT batches wait, so memory stays bounded.
    """

    IN_FLIGHT = 4

    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()
        self._batches: queue.Queue = queue.Queue(self.IN_FLIGHT)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._drain, name="store-write", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (batch := self._batches.get()) is not None:
            if self._error is not None:
                continue  # keep taking batches so the producer never blocks
            try:
                self.sha256.update(batch)
                write_all(self.fd, batch)
            except OSError as e:
                self._error = e

    def write(self, data) -> None:
        self.size += len(data)
        self._buf += data
        if len(self._buf) >= FLUSH_AT:
            self._hand_over()

    def _hand_over(self) -> None:
        self._check()
        if self._buf:
            self._batches.put(self._buf)
            self._buf = bytearray()

    def _check(self) -> None:
        if self._error is not None:
            raise os_error(self._error, "writing the stream into the store failed", self.path) from None

    def close(self) -> None:
        """Stop the writer thread, after the batches already handed over (or an error)."""
        if self._thread.is_alive():
            self._batches.put(None)
            self._thread.join()

    def sync(self) -> None:
        self._hand_over()
        self.close()
        self._check()
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise os_error(e, "syncing the stream to disk failed", self.path) from None


def stored_events(stream: BinaryIO, payloads: PayloadCheck, stats: ReceiveStats,
                  limits: Limits | None = None) -> Iterator[Event]:
    """The checks of receive --store, for the store and for a relay alike: the checked reader
    without a key, and a decode check of every clear payload; the first fault in the stream wins."""
    reader = CheckedReader(stream, require_key=False, limits=limits)
    try:
        for event in reader:
            count(stats, event)
            if isinstance(event, RecordEvent) and isinstance(event.record, Extent):
                payloads.add(event.raw.index, event.raw.offset, event.record, event.raw.payload)
            elif isinstance(event, EndEvent):
                stats.records = reader.record_count + 1
                stats.stream_bytes = reader.offset
                payloads.finish()  # before the caller's own checks of END: the first fault wins
            yield event
    except RawsendError as e:
        first = payloads.earlier_failure(e)
        if first is e:
            raise
        raise first from None


def receive_into_store(stream: BinaryIO, store_path: str | os.PathLike, *, limits: Limits | None = None,
                       progress: Callable[[int], None] | None = None) -> StoreReceipt:
    """Read one stream from ``stream``, check it, and add it verbatim to the store (created if missing)."""
    with Store.create(store_path) as store:
        store.clean_stale_temps()
        temp, fd = store.new_temp(STREAM_SUFFIX)
        payloads = PayloadCheck()
        try:
            out = _StreamFile(fd, temp)
            stats = ReceiveStats()
            base = None
            try:
                for event in stored_events(TeeReader(stream, out.write), payloads, stats, limits):
                    if isinstance(event, HeaderEvent):
                        header = event.header
                    elif isinstance(event, EndEvent):
                        end = event.end
                    elif isinstance(event, RecordEvent) and isinstance(event.record, Base):
                        base = event.record  # record 1 of an incremental stream, clear even when sealed
                    if progress:
                        progress(event.raw.size)
                out.sync()
            finally:
                payloads.close()
                out.close()
                os.close(fd)
            entry = _index_entry(header, base, end, stats, out.size, out.sha256.hexdigest(), time.time_ns())
            stored = store.commit(temp, entry)
        except BaseException:
            store.remove_temp(temp)
            try:
                store.remove_if_unused()  # a new store that got nothing is not left behind
            except OSError:
                pass  # the receive's own error is the one to report
            raise
        if not stored:
            entry = store.read_entry(entry.stream_id) or entry  # the copy that was there first
        # a base still to come is no fault here: receives may arrive in any order; verify reports it
        return StoreReceipt(entry, stored, store.root, payloads.unchecked, base_problem(store, entry))


def base_problem(store: Store, entry: IndexEntry) -> str:
    """What keeps the store from holding the base ``entry`` names: "" when it holds it (or needs none)."""
    if entry.parent is None:
        return ""
    base = store.read_entry(entry.parent.stream_id)
    if base is None:
        return f"its base {entry.parent.stream_id} is not in the store"
    if base.end_digest != entry.parent.end_digest:
        return (f"the store's stream {base.stream_id} is not its base: its END digest is {base.end_digest[:16]}...,"
                f" the base record names {entry.parent.end_digest[:16]}...")
    return ""


def receive_chain_into_store(chain: ChainReader, store_path: str | os.PathLike, *, limits: Limits | None = None,
                             on_member: Callable[[Member, StoreReceipt], None] | None = None) -> list[StoreReceipt]:
    """Store every member of a chain (spec/chain-format.md) as ``receive_into_store`` stores one stream.

    Each member is a stream the store could have received alone, so one that fails leaves the members
    before it stored; a member that does not continue the chain is refused after it was stored."""
    receipts: list[StoreReceipt] = []
    for member in chain:
        try:
            receipt = receive_into_store(member.input, store_path, limits=limits)
        except RawsendError as e:
            member.blame(e)
            raise
        before = receipts[-1].entry if receipts else None
        want = Parent(before.stream_id, before.end_digest) if before is not None else None
        if receipt.entry.parent != want:
            raise MalformedRecord(f"chain member {member.number} of {member.count}, stream {receipt.entry.stream_id},"
                                  " does not continue the chain: " + ("it is incremental" if want is None else
                                                                      f"its base is not member {member.number - 1}"),
                                  offset=member.start, hint="it was stored as a stream of its own; the chain was"
                                  " not written by 'rawsend send STORE --chain'")
        receipts.append(receipt)
        if on_member is not None:
            on_member(member, receipt)
    return receipts
