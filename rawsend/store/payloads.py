"""Decode checks of the clear payloads of a stream being stored, on a small thread pool.

A store keeps payload bytes as they came, and still makes every check that
needs no key (spec/store-format.md): a payload that is not encrypted is
decoded with the bounded decode every receiver uses (codecs.compress.decode)
and the output dropped, so a bomb, a corrupt frame or a payload that decodes
longer than its extent says is refused on the way in, as ``verify STORE``
would refuse it later.

Payloads are copied into batches of about BATCH_BYTES, and a batch is decoded
on a thread (zstandard, zlib and lz4 release the GIL) while the main thread
reads, checks and writes the next records; batches rather than single
payloads, because most extents are small and a hand-over to a thread costs
more than decoding one of them.  At most IN_FLIGHT_PER_THREAD batches per
thread wait, so memory stays bounded.  A failure carries its record and byte
offset.  Since it is found a little after its record was read, an error the
stream raised later is replaced by it (``earlier_failure``): the first fault
in the stream is the one reported, as verify reports it.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from rawsend.codecs import lzo
from rawsend.codecs.compress import decode
from rawsend.errors import RawsendError
from rawsend.stream.records import Compression, Extent

THREADS = min(2, os.cpu_count() or 1)
BATCH_BYTES = 1 << 20      # payload bytes gathered before a batch goes to a thread
IN_FLIGHT_PER_THREAD = 2   # batches queued or being decoded, per thread


class _Payload(NamedTuple):
    index: int    # the EXTENT record
    offset: int   # its byte offset in the stream
    compression: int
    unencoded_len: int
    data: bytes


def _decode_batch(batch: list[_Payload]) -> tuple[_Payload, RawsendError] | None:
    """Decode each payload in turn; the first that fails, with its error, or None."""
    for p in batch:
        try:
            decode(p.data, p.compression, p.unencoded_len)
        except RawsendError as e:
            e.locate(p.index, p.offset)
            return p, e
    return None


def _is_lzo(compression: int) -> bool:
    return Compression.LZO_4K <= compression <= Compression.LZO_4K + 4


class PayloadCheck:
    """Decode every clear payload of one stream; ``finish`` raises the first that fails."""

    def __init__(self, threads: int | None = None):
        threads = threads or THREADS
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="store-decode") if threads > 1 else None
        self._max_pending = threads * IN_FLIGHT_PER_THREAD
        self._pending: deque[Future] = deque()  # batches in stream order
        self._batch: list[_Payload] = []
        self._batch_bytes = 0
        self.unchecked = 0  # LZO extents, when the optional LZO decoder is not installed

    def add(self, index: int, offset: int, rec: Extent, payload) -> None:
        """Check the payload of EXTENT record ``index``; ``payload`` may be reused once this returns."""
        if rec.encryption or rec.compression == Compression.NONE:
            return  # sealed: only the key opens it; plain: its length, already checked, is all there is
        if _is_lzo(rec.compression) and not lzo.AVAILABLE:
            self.unchecked += 1
            return
        # a copy: the reader reuses its buffer for the next record
        self._batch.append(_Payload(index, offset, rec.compression, rec.unencoded_len, bytes(payload)))
        self._batch_bytes += len(payload)
        if self._batch_bytes >= BATCH_BYTES or self._pool is None:
            self._submit()

    def _submit(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if self._pool is None:
            _raise(_decode_batch(batch))
            return
        self._pending.append(self._pool.submit(_decode_batch, batch))
        while len(self._pending) > self._max_pending or (self._pending and self._pending[0].done()):
            _raise(self._pending.popleft().result())

    def finish(self) -> None:
        """Wait for every decode; raise the failure of the earliest record that failed."""
        if self._batch:
            self._submit()
        while self._pending:
            _raise(self._pending.popleft().result())

    def earlier_failure(self, error: RawsendError) -> RawsendError:
        """The failure of a payload read before ``error``'s record, if one failed; else ``error``."""
        if error.record is None:
            return error  # not a fault of a record (a local write failed): that is what to report
        for job in self._pending:
            failed = job.result()
            if failed is not None:
                return failed[1] if failed[0].index < error.record else error
        failed = _decode_batch([p for p in self._batch if p.index < error.record])
        return failed[1] if failed is not None else error

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        self._batch = []


def _raise(failed: tuple[_Payload, RawsendError] | None) -> None:
    if failed is not None:
        raise failed[1]
