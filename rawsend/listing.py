"""The names in a stream, one per line like `tar -t`: for `rawsend list` and `-v`.

A path is relative to the tree's root, a directory's ends in ``/``, the root is ``./``.  Names
are the stream's bytes, shown only through rawsend.text (escaped; exact bytes in JSON).
"""

from __future__ import annotations

import stat
import time

from rawsend import text
from rawsend.stream.records import ROOT_ID, Create, Link, RecordType


class Paths:
    """Full paths from (parent id, name), as records arrive: parents always come first."""

    def __init__(self):
        self._paths: dict[int, bytes] = {ROOT_ID: b""}

    def of(self, rec: Create | Link) -> bytes:
        """The record's path (b"" for the root); remembered for its children and hard links."""
        if isinstance(rec, Create) and rec.file_id == ROOT_ID:
            return b""
        parent = self._paths.get(rec.parent_id, b"?")
        path = parent + b"/" + rec.name if parent else rec.name
        if isinstance(rec, Create):
            self._paths[rec.file_id] = path
        return path

    def file(self, file_id: int) -> bytes | None:
        return self._paths.get(file_id)


def shown(path: bytes, rec: Create | Link) -> str:
    """A path as `tar -t` shows it: escaped, a directory with a trailing slash, the root as ./"""
    is_dir = isinstance(rec, Create) and rec.type == RecordType.MKDIR
    if not path:
        return "./"
    return text.escape(path) + ("/" if is_dir else "")


_KIND = {RecordType.MKDIR: "dir", RecordType.MKFILE: "file", RecordType.SYMLINK: "symlink",
         RecordType.MKNOD: "special"}


def long_line(path: bytes, rec: Create | Link, link_target: bytes | None) -> str:
    """`tar -tv` style: mode, uid/gid, size, mtime (UTC), path, and where it points."""
    if isinstance(rec, Link):
        return f"{'h---------':<10} {'-':>11} {'-':>12} {'-':16}  {shown(path, rec)} link to " + \
            (text.escape(link_target) if link_target is not None else "?")
    size = rec.size if rec.type == RecordType.MKFILE else 0
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rec.mtime_ns // 1_000_000_000))
    line = f"{stat.filemode(rec.mode):<10} {f'{rec.uid}/{rec.gid}':>11} {size:>12} {when:16}  {shown(path, rec)}"
    if rec.type == RecordType.SYMLINK:
        line += " -> " + text.escape(rec.target)
    return line


def json_entry(path: bytes, rec: Create | Link, link_target: bytes | None) -> str:
    """One JSON object: path (and path_hex when not UTF-8), type and the record's fields."""
    out: dict = {}

    def put(key: str, value: bytes) -> None:
        out[key], exact = text.json_bytes(value)
        if exact is not None:
            out[f"{key}_hex"] = exact

    put("path", path or b".")
    if isinstance(rec, Link):
        out["type"] = "hardlink"
        if link_target is not None:
            put("link_to", link_target)
        return text.json_line(out)
    out.update(type=_KIND[rec.type], mode=stat.S_IMODE(rec.mode), uid=rec.uid, gid=rec.gid,
               mtime_ns=rec.mtime_ns)
    if rec.type == RecordType.MKFILE:
        out["size"] = rec.size
    if rec.type == RecordType.SYMLINK:
        put("target", rec.target)
    return text.json_line(out)
