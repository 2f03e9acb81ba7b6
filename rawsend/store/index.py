"""Index entries: what a store knows about each stored stream without its key.

One JSON object per stream in ``index/<stream-id-hex>.json``
(spec/store-format.md, "Index entries").  Every field is computed from the
clear parts of the stream as it arrives: the header, the framing, the clear
EXTENT bodies, record 1 of an incremental stream (BASE, clear even when the
stream is encrypted) and, for streams that are not encrypted, the metadata
records.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from rawsend.errors import StoreDamaged
from rawsend.stream.records import Cipher, Compression

UNKNOWN = "unknown"  # file count of an encrypted stream: its metadata is sealed
MAX_INT = 2**63 - 1  # every number in an entry: a count, a size or a time in ns fits a signed 64-bit field
_COMPRESSIONS = frozenset(Compression.NAMES.values())
_CIPHERS = frozenset(Cipher.NAMES.values())

_HEX_LENGTHS = {"stream_id": 32, "end_digest": 64, "sha256": 64}
_PARENT_FIELDS = {"stream_id": 32, "end_digest": 64}
UNRECORDED = "unrecorded"  # parent of an entry written before stores recorded parents: the stream file says


@dataclass(frozen=True)
class Parent:
    """The base an incremental stream changes, from its BASE record."""
    stream_id: str            # the base's stream id, hex
    end_digest: str           # the base's END digest, hex


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
    parent: Parent | None = None  # the base of an incremental stream; None: a full stream

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
        expected = set(cls.__dataclass_fields__) - {"parent"}
        missing = expected - set(obj)
        if missing:
            raise _damaged(f"missing fields {', '.join(sorted(missing))}", path)
        values = {k: obj[k] for k in expected}  # fields of later versions are ignored
        # every number within 64 bits: ls formats sizes and times, and 10**400 is valid JSON
        if not _is_int(values["created_ns"], -MAX_INT - 1):
            raise _damaged(f"created_ns is not an integer in {-MAX_INT - 1}..{MAX_INT}", path)  # may be before 1970
        for name in ("received_ns", "logical_bytes", "stored_bytes", "records"):
            if not _is_int(values[name]):
                raise _damaged(f"{name} is not an integer in 0..{MAX_INT}", path)
        if not (_is_int(values["files"]) or values["files"] == UNKNOWN):
            raise _damaged(f"files is neither a count in 0..{MAX_INT} nor {UNKNOWN!r}", path)
        mix = values["compression"]
        if not isinstance(mix, dict) or not all(k in _COMPRESSIONS and _is_int(v) for k, v in mix.items()):
            raise _damaged(f"compression is not a map of compression names ({', '.join(sorted(_COMPRESSIONS))})"
                           f" to counts in 0..{MAX_INT}", path)
        if not isinstance(values["cipher"], str) or values["cipher"] not in _CIPHERS:
            raise _damaged(f"cipher is not one of {', '.join(sorted(_CIPHERS))}", path)
        if values["encrypted"] is not (values["cipher"] != "none"):  # also refuses a non-boolean
            raise _damaged("encrypted does not agree with cipher", path)
        for name, length in _HEX_LENGTHS.items():
            if not _is_hex(values[name], length):
                raise _damaged(f"{name} is not {length} lowercase hex digits", path)
        if values["encrypted"]:
            if not _is_hex(values["key_id"], 32):
                raise _damaged("key_id of an encrypted stream is not 32 lowercase hex digits", path)
            if values["files"] != UNKNOWN:
                raise _damaged(f"files of an encrypted stream is not {UNKNOWN!r} (its metadata is sealed)", path)
        else:
            if values["key_id"] is not None:
                raise _damaged("key_id of a stream that is not encrypted is not null", path)
            if values["files"] == UNKNOWN:
                raise _damaged("files of a stream that is not encrypted is not a count", path)
        values["parent"] = _parent(obj["parent"], path) if "parent" in obj else UNRECORDED
        return cls(**values)


def _parent(v, path: str) -> Parent | None:
    """The entry's parent field: null (a full stream) or a base."""
    if v is None:
        return None
    if not isinstance(v, dict) or not all(_is_hex(v.get(k), n) for k, n in _PARENT_FIELDS.items()):
        raise _damaged("parent is neither null nor an object with stream_id (32 lowercase hex digits)"
                       " and end_digest (64)", path)
    return Parent(v["stream_id"], v["end_digest"])


def _is_int(v, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= MAX_INT


def _is_hex(v, length: int) -> bool:
    return isinstance(v, str) and len(v) == length and all(c in "0123456789abcdef" for c in v)


def _damaged(what: str, path: str) -> StoreDamaged:
    return StoreDamaged(f"index entry is damaged: {what}", path=path,
                      hint="delete this entry and its stream file, then receive the stream again")
