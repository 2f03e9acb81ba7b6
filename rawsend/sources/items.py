"""What a source yields and the encoder takes: a closed set, in a module both import.

Metadata records go into the stream as they are; file data comes as a DataChunk
(bytes the encoder compresses) or an EncodedChunk (a payload already encoded,
read raw from btrfs, which is sent as it is).
"""

from __future__ import annotations

from dataclasses import dataclass

from rawsend.stream.records import Create, Extent, Link, SetXattr


@dataclass(slots=True)
class DataChunk:
    """Unencoded file bytes the encoder turns into one EXTENT record."""

    file_id: int
    offset: int
    data: bytes


@dataclass(slots=True)
class EncodedChunk:
    """An extent whose payload is already encoded (read raw from btrfs): sent as it is."""

    extent: Extent
    payload: bytes


SourceItem = Create | Link | SetXattr | DataChunk | EncodedChunk
