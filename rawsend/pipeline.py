"""send(): source -> encoder -> writer.  receive(): reader -> checks -> sink.

Parallelism lives in one place, the Encoder: a bounded thread pool
(zstandard, lz4, zlib and cryptography release the GIL) whose results are
written strictly in submission order, with a cap on the records in flight so
memory stays bounded whatever the input size.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

from rawsend.codecs.compress import compress, decode
from rawsend.errors import RawsendError
from rawsend.sources.items import DataChunk, EncodedChunk
from rawsend.stream.checked import CheckedReader, EndEvent, HeaderEvent, RecordEvent, SealedEvent, SkippedEvent
from rawsend.stream.sink import NullSink, Sink  # noqa: F401  (NullSink: importable here too)
from rawsend.stream.checker import Limits
from rawsend.stream.reader import RawRecord
from rawsend.stream.records import FLAG_SEALED, FLAG_SKIPPABLE, Compression, Create, Extent, Feature, Header, RecordType
from rawsend.stream.writer import StreamWriter

INLINE_BELOW = 16 * 1024  # chunks this small are cheaper to encode than to hand to a thread


class _Framed(NamedTuple):
    """A record ready for the writer; ``extent`` is set for EXTENT records (for the stats)."""

    type: int
    body: bytes
    payload: bytes
    flags: int
    extent: Extent | None


@dataclass
class SendStats:
    records: int = 0
    extents: int = 0
    logical_bytes: int = 0     # bytes of file data carried
    payload_bytes: int = 0     # extent payload bytes on the wire
    stream_bytes: int = 0
    by_compression: dict[str, int] = field(default_factory=dict)
    stream_id: bytes = b""     # the HEADER's, and END's digest: what a tracked send records
    end_digest: bytes = b""


class Encoder:
    """Turns source items into framed records, in order, encoding extents on a thread pool."""

    def __init__(self, writer: StreamWriter, compression: int, level: int, threads: int,
                 sealer=None, max_in_flight: int | None = None, progress: Callable[[int], None] | None = None):
        self.writer = writer
        self.compression = compression
        self.level = level
        self.sealer = sealer
        self.threads = max(1, threads)
        self.max_in_flight = max_in_flight or 8 * self.threads
        self.stats = SendStats()
        self.progress = progress
        self._pool = None
        if self.threads > 1:
            from concurrent.futures import ThreadPoolExecutor  # here: receive and verify need no pool
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="encode")
        self._pending: deque = deque()
        self._next_index = writer.next_index

    def _encode_chunk(self, index: int, chunk: DataChunk) -> _Framed:
        compression, payload = compress(chunk.data, self.compression, self.level)
        n = len(chunk.data)
        return self._extent(index, Extent(chunk.file_id, chunk.offset, n, n, 0, len(payload), compression),
                            payload)

    def _extent(self, index: int, extent: Extent, payload) -> _Framed:
        if self.sealer:
            extent, payload = self.sealer.seal_extent(index, extent, payload)
        return _Framed(RecordType.EXTENT, extent.pack(), payload, 0, extent)

    def add(self, item) -> None:
        index = self._next_index
        self._next_index += 1
        if isinstance(item, DataChunk):
            if self._pool is not None and len(item.data) >= INLINE_BELOW:
                self._pending.append(self._pool.submit(self._encode_chunk, index, item))
            else:
                self._pending.append(self._encode_chunk(index, item))
        elif isinstance(item, EncodedChunk):
            if self._pool is not None and self.sealer:
                self._pending.append(self._pool.submit(self._extent, index, item.extent, item.payload))
            else:
                self._pending.append(self._extent(index, item.extent, item.payload))
        else:
            body, flags = item.pack(), FLAG_SKIPPABLE if item.SKIPPABLE else 0
            if self.sealer and item.SEALED:  # BASE stays clear, for keyless stores
                body, flags = self.sealer.seal_metadata(index, item.type, body), flags | FLAG_SEALED
            self._pending.append(_Framed(item.type, body, b"", flags, None))
        while len(self._pending) > self.max_in_flight:
            self._write_one()

    def _write_one(self) -> None:
        done = self._pending.popleft()
        if done.__class__ is not _Framed:  # a Future of the pool
            done = done.result()
        self.writer.write_record(done.type, done.body, done.payload, done.flags)
        extent = done.extent
        if extent is None:
            return
        st = self.stats
        st.extents += 1
        st.logical_bytes += extent.num_bytes
        st.payload_bytes += len(done.payload)
        name = Compression.NAMES[extent.compression]
        st.by_compression[name] = st.by_compression.get(name, 0) + 1
        if self.progress:
            self.progress(extent.num_bytes)

    def finish(self):
        try:
            while self._pending:
                self._write_one()
            end = self.writer.finish(self.sealer.end_mac if self.sealer else None)
        finally:
            self.close()
        self.stats.records = self.writer.record_count
        self.stats.stream_bytes = self.writer.byte_count
        self.stats.stream_id = self.writer.header.stream_id
        self.stats.end_digest = end.digest
        return end

    def close(self) -> None:
        if self._pool is not None:
            for f in self._pending:
                if f.__class__ is not _Framed:
                    f.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def make_header(*, compression: int, sealer=None, stream_id: bytes | None = None,
                created_ns: int | None = None, required: int = 0, optional: int = 0) -> Header:
    """The HEADER of a new stream; ``required`` and ``optional`` add feature bits (incremental, tracked)."""
    required |= Feature.LZ4 if compression == Compression.LZ4 else 0
    fields = dict(stream_id=stream_id or os.urandom(16),
                  created_ns=time.time_ns() if created_ns is None else created_ns,
                  required_features=required, optional_features=optional)
    if sealer is not None:
        fields.update(sealer.header_fields())
        fields["required_features"] |= Feature.ENCRYPTED
    return Header(**fields)


def send(items: Iterable, write: Callable[[bytes], None], *, compression: int = Compression.ZSTD,
         level: int = 3, threads: int | None = None, sealer=None, stream_id: bytes | None = None,
         created_ns: int | None = None, progress=None, required: int = 0, optional: int = 0,
         label=None) -> SendStats:
    """Write one complete stream of ``items`` (records and chunks from a source); ``label`` (a
    records.Label) becomes record 2, after the first item (the root, or BASE)."""
    header = make_header(compression=compression, sealer=sealer, stream_id=stream_id,
                         created_ns=created_ns, required=required, optional=optional)
    if sealer is not None:
        sealer.start(header)
    writer = StreamWriter(write, header)
    threads = threads if threads is not None else min(4, os.cpu_count() or 1)
    encoder = Encoder(writer, compression, level, threads, sealer, progress=progress)
    try:
        for item in items:
            encoder.add(item)
            if label is not None:
                encoder.add(label)
                label = None
        encoder.finish()
    finally:
        encoder.close()
    return encoder.stats


# -- receiving --------------------------------------------------------------------------------

@dataclass
class ReceiveStats:
    records: int = 0
    changes: int = 0          # incremental records (rename, unlink, ...) and the base
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    specials: int = 0
    xattrs: int = 0
    extents: int = 0
    logical_bytes: int = 0
    payload_bytes: int = 0
    stream_bytes: int = 0
    authenticated: bool = False
    encrypted: bool = False
    sealed_skipped: int = 0    # records a keyless verify could only check structurally
    by_compression: dict[str, int] = field(default_factory=dict)  # extents per compression


# the ReceiveStats counter of each record type
_COUNTERS = {RecordType.MKDIR: "dirs", RecordType.MKFILE: "files", RecordType.SYMLINK: "symlinks",
             RecordType.MKNOD: "specials", RecordType.LINK: "hardlinks", RecordType.SET_XATTR: "xattrs"}


def _count_header(stats: ReceiveStats, event: HeaderEvent) -> None:
    stats.encrypted = event.header.encrypted


def _count_sealed(stats: ReceiveStats, event: SealedEvent) -> None:
    stats.sealed_skipped += 1


def _count_record(stats: ReceiveStats, event: RecordEvent) -> None:
    rec = event.record
    if rec.PAYLOAD:  # an extent
        stats.extents += 1
        stats.payload_bytes += rec.disk_num_bytes
        stats.logical_bytes += rec.num_bytes
        name = _COMPRESSION_NAMES[rec.compression]
        stats.by_compression[name] = stats.by_compression.get(name, 0) + 1
    elif rec.SINK:  # notes (LABEL) are no change
        counter = _COUNTERS.get(event.raw.type, "changes")  # incremental records: changes
        setattr(stats, counter, getattr(stats, counter) + 1)


_COMPRESSION_NAMES = Compression.NAMES  # as a global: cheaper per extent than the enum's attribute


def _count_end(stats: ReceiveStats, event: EndEvent) -> None:
    stats.authenticated = event.authenticated


_COUNT = {HeaderEvent: _count_header, SealedEvent: _count_sealed, RecordEvent: _count_record,
          EndEvent: _count_end, SkippedEvent: lambda stats, event: None}


def count(stats: ReceiveStats, event) -> None:
    """Add one checked event to ``stats``."""
    _COUNT[type(event)](stats, event)


def receive(stream, sink, *, keyring=None, limits: Limits | None = None, require_key: bool = True,
            progress=None, on_record: Callable[[RawRecord, object], None] | None = None) -> ReceiveStats:
    """Read a whole stream, check it, and hand every record to ``sink``.

    ``sink`` gets ``begin(header)``, ``create``, ``link``, ``xattr``,
    ``extent(extent, data)`` with the decoded file bytes, and ``commit()``
    only after END checked; on any error it gets ``abort()``.  A keyless
    reader (``require_key=False``) of an encrypted stream checks framing,
    CRCs, digest and the clear extent fields only.
    """
    reader = CheckedReader(stream, keyring, require_key=require_key, limits=limits)
    stats = ReceiveStats()
    for event in deliver(reader, sink, stats, progress):
        if on_record is not None:  # -v and list: each record as it is read, its body when known
            on_record(event.raw, _EVENT_BODY[type(event)](event))
    return stats


_EVENT_BODY = {HeaderEvent: lambda e: e.header, RecordEvent: lambda e: e.record, EndEvent: lambda e: e.end,
               SealedEvent: lambda e: None, SkippedEvent: lambda e: None}


def deliver(reader: CheckedReader, sink: Sink, stats: ReceiveStats, progress=None) -> Iterator:
    """Hand each checked event of ``reader`` to ``sink``; yield it first, so the caller sees it
    (dump shows it, a store checks it) before the sink acts on it."""
    try:
        for event in reader:
            kind = type(event)
            if kind is RecordEvent:  # all but a few events: one test first
                _count_record(stats, event)
                yield event
                _apply(event, sink)
                if progress and event.record.PAYLOAD:
                    progress(event.record.num_bytes)
                continue
            _COUNT[kind](stats, event)
            yield event
            if kind is HeaderEvent:
                sink.begin(event.header)
            elif kind is EndEvent:
                stats.records = reader.record_count + 1
                stats.stream_bytes = reader.offset
                sink.end(event.end)
                sink.commit()
    except BaseException:
        sink.abort()
        raise


def _apply(event: RecordEvent, sink: Sink) -> None:
    """Call the sink's method for the record (its class's SINK); an extent's payload is decoded
    unless the sink takes it encoded."""
    rec, raw = event.record, event.raw
    try:
        if not rec.SINK:
            return  # a note (LABEL): nothing changes in the tree
        if not rec.PAYLOAD:
            getattr(sink, rec.SINK)(rec)
        elif event.payload is None:
            return  # sealed, and no key to open it
        elif sink.wants_encoded(rec):
            sink.extent_encoded(rec, event.payload)
        else:
            data = decode(event.payload, rec.compression, rec.unencoded_len)
            sink.extent(rec, memoryview(data)[rec.unencoded_offset:rec.unencoded_offset + rec.num_bytes])
    except RawsendError as e:
        e.locate(raw.index, raw.offset)
        raise
