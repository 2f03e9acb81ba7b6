"""Index entries: what a store knows about each stored stream without its key.

One JSON object per stream in ``index/<stream-id-hex>.json``
(spec/store-format.md, "Index entries").  Every field is computed from the
clear parts of the stream as it arrives: the header, the framing, the clear
EXTENT bodies and, for streams that are not encrypted, the metadata records.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from rawsend.errors import StoreDamaged

UNKNOWN = "unknown"  # file count of an encrypted stream: its metadata is sealed

_HEX_LENGTHS = {"stream_id": 32, "end_digest": 64, "sha256": 64}


@dataclass(frozen=True)
class IndexEntry:
    stream_id: str            # 32 lowercase hex digits, also the file names' stem
    created_ns: int           # the stream header's creation time
    received_ns: int          # when the stream became part of the store
    logical_bytes: int        # file bytes the extents fill (sum of num_bytes)
    stored_bytes: int         # size of the stored stream file, preamble to END
    records: int              # records including HEADER and END
    files: int | str          # regular files (MKFILE records), or UNKNOWN when sealed
    compression: dict[str, int] = field(default_factory=dict)  # extents per compression name
    encrypted: bool = False
    cipher: str = "none"
    key_id: str | None = None  # hex, only when encrypted
    end_digest: str = ""      # the END record's digest, hex
    sha256: str = ""          # SHA-256 of the whole stored file, hex

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, path: str) -> IndexEntry:
        """Parse and check one entry; a damaged entry is a StoreError naming its file."""
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise _damaged(f"not valid JSON ({e})", path) from None
        if not isinstance(obj, dict):
            raise _damaged("not a JSON object", path)
        expected = set(cls.__dataclass_fields__)
        missing = expected - set(obj)
        if missing:
            raise _damaged(f"missing fields {', '.join(sorted(missing))}", path)
        values = {k: obj[k] for k in expected}  # fields of later versions are ignored
        if not isinstance(values["created_ns"], int) or isinstance(values["created_ns"], bool):
            raise _damaged("created_ns is not an integer", path)  # a sender's clock may be before 1970
        for name in ("received_ns", "logical_bytes", "stored_bytes", "records"):
            if not _is_count(values[name]):
                raise _damaged(f"{name} is not a non-negative integer", path)
        if not (_is_count(values["files"]) or values["files"] == UNKNOWN):
            raise _damaged(f"files is neither a count nor {UNKNOWN!r}", path)
        mix = values["compression"]
        if not isinstance(mix, dict) or not all(isinstance(k, str) and _is_count(v) for k, v in mix.items()):
            raise _damaged("compression is not a map of names to counts", path)
        if not isinstance(values["encrypted"], bool) or not isinstance(values["cipher"], str):
            raise _damaged("encrypted or cipher has the wrong type", path)
        for name, length in _HEX_LENGTHS.items():
            if not _is_hex(values[name], length):
                raise _damaged(f"{name} is not {length} lowercase hex digits", path)
        if values["key_id"] is not None and not _is_hex(values["key_id"], 32):
            raise _damaged("key_id is neither null nor 32 lowercase hex digits", path)
        return cls(**values)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_hex(v, length: int) -> bool:
    return isinstance(v, str) and len(v) == length and all(c in "0123456789abcdef" for c in v)


def _damaged(what: str, path: str) -> StoreDamaged:
    return StoreDamaged(f"index entry is damaged: {what}", path=path,
                      hint="delete this entry and its stream file, then receive the stream again")
