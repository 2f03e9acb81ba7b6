"""send --dry-run: walk the source as send would and estimate the stream's size, writing nothing.

Metadata records are packed for their exact size.  Extents are the guess: one chunk in
SAMPLE_EVERY is compressed as send would, and the ratio seen is applied to the rest;
extents taken as stored from btrfs count their exact payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from rawsend.codecs.compress import compress
from rawsend.sources.tree import DataChunk, EncodedChunk
from rawsend.stream.records import EXTENT_BODY, PREAMBLE, RECORD_HEADER

SAMPLE_EVERY = 8  # one 128 KiB chunk in 8: within a few percent on real trees, an eighth of the CPU
SEALED_EXTRA = 16  # an AEAD tag per sealed payload


@dataclass
class Estimate:
    records: int = 0
    extents: int = 0
    data_bytes: int = 0       # file bytes the extents carry
    metadata_bytes: int = 0   # exact: framed records other than extents
    stored_bytes: int = 0     # exact: extents sent as they lie on btrfs
    sampled_in: int = 0
    sampled_out: int = 0
    unsampled_in: int = 0

    @property
    def stream_bytes(self) -> int:
        ratio = self.sampled_out / self.sampled_in if self.sampled_in else 1.0
        framing = self.extents * (RECORD_HEADER.size + EXTENT_BODY.size)
        data = self.sampled_out + round(self.unsampled_in * ratio)
        return PREAMBLE.size + self.metadata_bytes + framing + self.stored_bytes + data


def estimate(items, compression: int, level: int, sealed: bool = False) -> Estimate:
    est = Estimate()
    chunks = 0
    for item in items:
        est.records += 1
        if isinstance(item, DataChunk):
            est.extents += 1
            est.data_bytes += len(item.data)
            if chunks % SAMPLE_EVERY == 0:
                est.sampled_in += len(item.data)
                est.sampled_out += len(compress(item.data, compression, level)[1])
            else:
                est.unsampled_in += len(item.data)
            chunks += 1
            est.metadata_bytes += SEALED_EXTRA if sealed else 0
        elif isinstance(item, EncodedChunk):
            est.extents += 1
            est.data_bytes += item.extent.num_bytes
            est.stored_bytes += len(item.payload) + (SEALED_EXTRA if sealed else 0)
        else:
            est.metadata_bytes += RECORD_HEADER.size + len(item.pack()) + (SEALED_EXTRA if sealed else 0)
    est.records += 2  # HEADER and END
    return est
