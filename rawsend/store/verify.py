"""Verifying a store: every stored stream rechecked from disk, with or without its key.

Each stream goes through the CheckedReader and a NullSink, as
``rawsend verify FILE`` does: framing, CRCs, caps, END, structure of clear
records and, where no key is needed, a full decode of every payload.  With a
keyring the sealed records are opened and END's MAC checked too.  The file
must also match its index entry (stream id, END digest, size, SHA-256), and its chain must be whole: every base it
rests on in the store, with the END digest its link names (chains.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from rawsend.errors import RawsendError, StoreDamaged, StoreError
from rawsend.pipeline import NullSink, ReceiveStats, deliver
from rawsend.store.chains import Chains, describe
from rawsend.store.index import IndexEntry
from rawsend.store.layout import Store
from rawsend.store.relay import StoredStream
from rawsend.stream.checked import CheckedReader, EndEvent, HeaderEvent


@dataclass
class StreamVerdict:
    entry: IndexEntry | None           # None when the index entry itself is damaged
    stats: ReceiveStats | None = None  # when intact
    error: RawsendError | None = None  # the first fault of its bytes, naming the stream, record and offset
    chain_error: StoreDamaged | None = None  # a base it rests on is missing, another stream, or a loop

    @property
    def ok(self) -> bool:
        return self.error is None and self.chain_error is None


def verify_store(store_path: str | os.PathLike, stream_id: str | None = None,
                 keyring=None) -> Iterator[StreamVerdict]:
    """One verdict per stored stream (or only for the stream whose id starts with ``stream_id``)."""
    with Store.open(store_path) as store:
        if stream_id is not None:
            entry = store.find(stream_id)
            yield verify_stream(store, entry, keyring, Chains(store.entries()))
            return
        damaged: list[StoreError] = []
        entries = store.entries(damaged)
        for error in damaged:
            yield StreamVerdict(None, error=error)
        chains = Chains(entries)
        for entry in entries:
            yield verify_stream(store, entry, keyring, chains)


def verify_stream(store: Store, entry: IndexEntry, keyring=None, chains: Chains | None = None) -> StreamVerdict:
    """The stream's bytes checked from disk and, given the store's ``chains``, its chain."""
    verdict = _verify_bytes(store, entry, keyring)
    if chains is not None and (broken := chains.of(entry.stream_id).broken) is not None:
        verdict.chain_error = describe(entry.stream_id, broken)
    return verdict


def _verify_bytes(store: Store, entry: IndexEntry, keyring) -> StreamVerdict:
    try:
        stored = StoredStream(store, entry)
    except RawsendError as e:
        return StreamVerdict(entry, error=e)

    stats = ReceiveStats()
    try:
        for event in deliver(CheckedReader(stored, keyring, require_key=False), NullSink(), stats):
            if isinstance(event, HeaderEvent):
                stored.check_header(event.header)
            elif isinstance(event, EndEvent):
                stored.check_end(event.end, event.raw.index, event.raw.offset)
    except RawsendError as e:
        stored.blame(e)
        return StreamVerdict(entry, error=e)
    finally:
        stored.close()
    return StreamVerdict(entry, stats=stats)
