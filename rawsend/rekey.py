"""rekey: reseal an encrypted stream under another key.

Every record is opened with the old key (so the whole input is
authenticated on the way) and sealed again under the new key, with a fresh
salt and fresh nonces.  The stream keeps its stream id, creation time,
features and cipher; each record keeps its index, type and flags; each
extent keeps its encoded (compressed) payload byte for byte: rekey never
decompresses or recompresses, so every payload length stays the same.

A new END is written only after the old END authenticated.  If anything
fails, the output has no END, and every reader refuses it as truncated.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable

from rawsend.codecs.crypto import Keyring, Sealer
from rawsend.codecs.keys import Key
from rawsend.stream.checked import CheckedReader, EndEvent, HeaderEvent, RecordEvent
from rawsend.stream.checker import Limits
from rawsend.stream.records import FLAG_SEALED, Cipher, Extent, RecordType
from rawsend.stream.writer import StreamWriter


@dataclass
class RekeyStats:
    old_key_id: str = ""
    new_key_id: str = ""
    records: int = 0
    extents: int = 0
    payload_bytes: int = 0     # extent payload bytes, the same in and out
    stream_bytes: int = 0      # bytes written


def rekey(stream: BinaryIO, write: Callable[[bytes], None], old: Key | Keyring, new: Key, *,
          limits: Limits | None = None, random: Callable[[int], bytes] = os.urandom) -> RekeyStats:
    """Read an encrypted stream sealed under ``old``, write it sealed under ``new``."""
    keyring = old if isinstance(old, Keyring) else Keyring([old])
    reader = CheckedReader(stream, keyring, require_encrypted=True, limits=limits)
    stats = RekeyStats(new_key_id=new.key_id.hex())
    sealer = writer = None
    for event in reader:
        raw = event.raw
        if isinstance(event, HeaderEvent):
            header = event.header
            stats.old_key_id = header.key_id.hex()
            sealer = Sealer(new, header.cipher, random=random)
            new_header = dataclasses.replace(header, **sealer.header_fields())
            sealer.start(new_header)
            writer = StreamWriter(write, new_header)
            continue
        assert writer.next_index == raw.index  # every record is written, so indexes stay put
        if isinstance(event, EndEvent):
            writer.finish(sealer.end_mac)
            stats.records = writer.record_count
            stats.stream_bytes = writer.byte_count
            return stats
        if isinstance(event, RecordEvent) and isinstance(event.record, Extent):
            extent, encoded = event.record, event.payload
            clear = dataclasses.replace(extent, disk_num_bytes=len(encoded), encryption=Cipher.NONE,
                                        key_id=bytes(16), nonce=bytes(12))
            sealed, payload = sealer.seal_extent(raw.index, clear, encoded)
            assert len(payload) == len(raw.payload)
            writer.write_record(RecordType.EXTENT, sealed.pack(), payload, flags=raw.flags)
            stats.extents += 1
            stats.payload_bytes += len(payload)
        elif raw.flags & FLAG_SEALED:  # a metadata record, or a skippable one of a later version: only resealed
            writer.write_record(raw.type, sealer.seal_metadata(raw.index, raw.type, event.body), flags=raw.flags)
        else:  # BASE, the one clear metadata record: copied as it is (the new END's MAC covers it)
            writer.write_record(raw.type, raw.body, flags=raw.flags)
    raise AssertionError("unreachable: the reader ends with END or an error")
