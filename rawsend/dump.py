"""Human and JSON lines describing each record of a stream, like `btrfs receive --dump`.

Names, link targets and xattr names are kept as the stream's bytes and shown only through
rawsend.text: quoted and escaped in text lines, exact (or escaped plus hex) in JSON.
"""

from __future__ import annotations

import stat
from datetime import datetime, timezone

from rawsend import text
from rawsend.errors import RawsendError
from rawsend.stream.checked import CheckedReader, EndEvent, HeaderEvent, RecordEvent
from rawsend.stream.reader import RawRecord
from rawsend.stream.records import (
    ROOT_ID, VERSION, Base, Chmod, Chown, Cipher, Compression, Create, End, Extent, Feature, Header, Label, SnapshotNote,
    Link, PunchHole, RecordType, RemoveXattr, Rename, Rmdir, SetXattr, Truncate, Unlink, UpdateFile, Utimes,
)


def _uuid(b: bytes) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _time(ns: int) -> str:
    sec, nsec = divmod(ns, 1_000_000_000)
    try:
        base = datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        base = f"@{sec}"
    return f"{base}.{nsec:09d}Z"


def _features(bits: int, names: dict[int, str]) -> str:
    out = [name for bit, name in names.items() if bits & bit]
    unknown = bits & ~sum(names)
    if unknown:
        out.append(f"0x{unknown:x}")
    return ",".join(out) or "-"


class Dumper:
    """Turns (raw record, typed record) pairs into fields; keeps id -> path for display.

    Fields taken from the stream (path, dest, target, name) are bytes, None for a path
    not known (a sealed stream read without its key).
    """

    def __init__(self):
        self.paths: dict[int, bytes] = {}

    def _child(self, parent_id: int, name: bytes) -> bytes:
        parent = self.paths.get(parent_id, b"")
        return (parent + b"/" if parent not in (b"", b".") else b"") + name

    def fields(self, raw: RawRecord, rec) -> dict:
        f: dict = {"record": raw.index, "offset": raw.offset,
                   "type": RecordType.NAMES.get(raw.type, f"type{raw.type}")}
        show = self._FIELDS.get(type(rec))
        if show is not None:
            show(self, f, rec)
        elif rec is None and raw.sealed:
            f.update(sealed=True, body_len=len(raw.body))
        else:
            f.update(skipped=True, body_len=len(raw.body), payload_len=len(raw.payload))
        return f

    def _header(self, f: dict, rec: Header) -> None:
        # the reader accepts no other version, so this is the stream's own
        f.update(version=VERSION, stream_id=rec.stream_id.hex(), created=_time(rec.created_ns),
                 required=_features(rec.required_features, Feature.REQUIRED_NAMES),
                 optional=_features(rec.optional_features, Feature.OPTIONAL_NAMES),
                 cipher=Cipher.NAMES[rec.cipher])
        if rec.encrypted:
            f["key_id"] = rec.key_id.hex()

    def _create(self, f: dict, rec: Create) -> None:
        path = b"." if rec.file_id == ROOT_ID else self._child(rec.parent_id, rec.name)
        self.paths[rec.file_id] = path
        f.update(id=rec.file_id, path=path, mode=f"{stat.S_IMODE(rec.mode):o}", uid=rec.uid, gid=rec.gid,
                 mtime=_time(rec.mtime_ns))
        if rec.type == RecordType.MKFILE:
            f["size"] = rec.size
        elif rec.type == RecordType.MKNOD:
            f["kind"] = {stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
                         stat.S_IFSOCK: "socket"}[stat.S_IFMT(rec.mode)]
            f["rdev"] = rec.size
        elif rec.type == RecordType.SYMLINK:
            f["target"] = rec.target

    def _link(self, f: dict, rec: Link) -> None:
        f.update(id=rec.file_id, path=self._child(rec.parent_id, rec.name), dest=self.paths.get(rec.file_id))

    def _xattr(self, f: dict, rec: SetXattr) -> None:
        f.update(id=rec.file_id, path=self.paths.get(rec.file_id), name=rec.name, len=len(rec.value))

    def _extent(self, f: dict, rec: Extent) -> None:
        f.update(id=rec.file_id, path=self.paths.get(rec.file_id), file_offset=rec.offset,
                 num_bytes=rec.num_bytes, unencoded_len=rec.unencoded_len,
                 unencoded_offset=rec.unencoded_offset, disk_num_bytes=rec.disk_num_bytes,
                 compression=Compression.NAMES[rec.compression], encryption=Cipher.NAMES[rec.encryption])
        if rec.encryption:
            f["key_id"] = rec.key_id.hex()

    # incremental records: a base file's path is not known without the base (shown as ?)

    def _base(self, f: dict, rec: Base) -> None:
        f.update(base=rec.stream_id.hex(), base_digest=rec.digest.hex(), first_id=rec.first_id)
        self.paths[ROOT_ID] = b"."

    def _rename(self, f: dict, rec: Rename) -> None:
        dest = self._child(rec.to_parent_id, rec.to_name) if rec.to_parent_id in self.paths else None
        f.update(id=rec.file_id, path=self._named(rec.parent_id, rec.name), dest=dest)
        if dest is None:
            self.paths.pop(rec.file_id, None)
        else:
            self.paths[rec.file_id] = dest

    def _unlink(self, f: dict, rec: Unlink) -> None:
        f.update(id=rec.file_id, path=self._named(rec.parent_id, rec.name))

    def _named(self, parent_id: int, name: bytes) -> bytes:
        """An entry's path when its parent's is known, else its name alone."""
        return self._child(parent_id, name) if parent_id in self.paths else name

    def _by_id(self, f: dict, rec) -> None:
        f.update(id=rec.file_id, path=self.paths.get(rec.file_id))

    def _sized(self, f: dict, rec: Truncate | UpdateFile) -> None:
        self._by_id(f, rec)
        f["size"] = rec.size

    def _chmod(self, f: dict, rec: Chmod) -> None:
        self._by_id(f, rec)
        f["mode"] = f"{rec.mode:o}"

    def _chown(self, f: dict, rec: Chown) -> None:
        self._by_id(f, rec)
        f.update(uid=rec.uid, gid=rec.gid)

    def _utimes(self, f: dict, rec: Utimes) -> None:
        self._by_id(f, rec)
        f["mtime"] = _time(rec.mtime_ns)

    def _remove_xattr(self, f: dict, rec: RemoveXattr) -> None:
        self._by_id(f, rec)
        f["name"] = rec.name

    def _punch_hole(self, f: dict, rec: PunchHole) -> None:
        self._by_id(f, rec)
        f.update(file_offset=rec.offset, len=rec.length)

    def _label(self, f: dict, rec: Label) -> None:
        f.update(label=rec.label, host=rec.host, source=rec.source, version=rec.version)

    def _snapshot(self, f: dict, rec: SnapshotNote) -> None:
        f.update(uuid=_uuid(rec.uuid), ctransid=rec.ctransid)
        if rec.parent_ctransid:
            f.update(parent_uuid=_uuid(rec.parent_uuid), parent_ctransid=rec.parent_ctransid)

    def _end(self, f: dict, rec: End) -> None:
        f.update(records=rec.record_count, bytes=rec.byte_count, digest=rec.digest.hex())
        if any(rec.mac):
            f["mac"] = rec.mac.hex()

    # each record class's fields, after record, offset and type
    _FIELDS = {Header: _header, Create: _create, Link: _link, SetXattr: _xattr, Extent: _extent, End: _end,
               Base: _base, Rename: _rename, Unlink: _unlink, Rmdir: _unlink, Truncate: _sized, Chmod: _chmod,
               Chown: _chown, Utimes: _utimes, RemoveXattr: _remove_xattr, UpdateFile: _sized,
               PunchHole: _punch_hole, Label: _label, SnapshotNote: _snapshot}

    def line(self, raw: RawRecord, rec) -> str:
        f = self.fields(raw, rec)
        head = f"{f.pop('record'):>6} {f.pop('offset'):>10} {f.pop('type'):<10}"
        if "path" in f:
            head += f" {_text_value(f.pop('path')):<24}"
        return head + "".join(f" {k}={_text_value(v)}" for k, v in f.items())

    def json_line(self, raw: RawRecord, rec) -> str:
        out: dict = {}
        for k, v in self.fields(raw, rec).items():
            if isinstance(v, bytes):
                out[k], exact = text.json_bytes(v)
                if exact is not None:  # not UTF-8: out[k] is the escaped form, this the bytes
                    out[f"{k}_hex"] = exact
            else:
                out[k] = v
        return text.json_line(out)


def _text_value(v) -> str:
    """Stream bytes quoted and escaped, so no name can end a field or a line; ? when unknown."""
    if isinstance(v, bytes):
        return text.quote(v)
    return "?" if v is None else str(v)


_SHOWN = {HeaderEvent: lambda e: e.header, RecordEvent: lambda e: e.record, EndEvent: lambda e: e.end}


def shown(event):
    """The (raw record, typed record) pair a Dumper shows for one checked event; None for a
    record sealed without the key, or skipped."""
    typed = _SHOWN.get(type(event))
    return event.raw, typed(event) if typed is not None else None


def dump_stream(stream, show, keyring=None, limits=None) -> None:
    """Check ``stream`` as verify does and call ``show(raw, rec)`` for each record, in order.

    A record whose body was understood is shown even when a later check of it fails,
    so the last line before an error is the record the error names.
    """
    from rawsend.pipeline import NullSink, ReceiveStats, deliver

    reader = CheckedReader(stream, keyring, require_key=False, limits=limits)
    try:
        for event in deliver(reader, NullSink(), ReceiveStats()):
            show(*shown(event))
    except RawsendError:
        if reader.pending is not None:
            show(*reader.pending)
        raise
