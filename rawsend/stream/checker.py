"""Structural rules of a stream's records (spec section "Record order").

Shared by receive, verify and dump, so every consumer refuses the same
streams with the same errors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from rawsend.errors import LimitExceeded, MalformedRecord, RecordOrderError
from rawsend.stream.records import (
    ROOT_ID, Compression, Create, Extent, Feature, Header, Link, RecordType, SetXattr,
)


@dataclass
class Limits:
    """Caps a receiver enforces on top of the format's own (spec section "Limits")."""

    max_files: int = 10_000_000  # names: every create record and every hard link
    max_depth: int = 512
    max_xattrs_per_file: int = 1024
    max_xattr_bytes_per_file: int = 1 << 20
    max_bytes: int = 1 << 50  # logical bytes declared by all files together


@dataclass(slots=True)  # one per file of the stream: keep it small
class _Inode:
    type: int
    parent_id: int
    depth: int
    size: int = 0


@dataclass
class StreamChecker:
    limits: Limits = field(default_factory=Limits)
    inodes: dict[int, _Inode] = field(default_factory=dict)
    current: int = 0            # file id the EXTENT/SET_XATTR records refer to
    extent_end: int = 0         # end of the current file's last extent
    xattr_count: int = 0
    xattr_bytes: int = 0
    declared_bytes: int = 0
    links: int = 0
    # rule 5: one 16-byte digest per (parent, name), not the name itself, so memory per
    # entry stays small whatever the names' lengths (a 128-bit digest makes a false clash
    # as likely as guessing a random key)
    names: set[bytes] = field(default_factory=set)

    def check(self, rec, index: int) -> None:
        rule = self._RULES.get(type(rec))
        if rule is not None:
            rule(self, rec, index)

    def _parent(self, parent_id: int, index: int) -> _Inode:
        parent = self.inodes.get(parent_id)
        if parent is None or parent.type != RecordType.MKDIR:
            raise RecordOrderError(f"parent id {parent_id} is not a directory created earlier", record=index)
        return parent

    def _create(self, rec: Create, index: int) -> None:
        expected = len(self.inodes) + ROOT_ID
        if rec.file_id != expected:
            raise RecordOrderError(f"file id {rec.file_id}, expected the next id {expected}", record=index)
        if not self.inodes and rec.type != RecordType.MKDIR:
            raise RecordOrderError("the first record after the header must create the root", record=index)
        self._count_name(index)
        depth = 0
        if rec.file_id != ROOT_ID:
            depth = self._parent(rec.parent_id, index).depth + 1
            self._new_name(rec.parent_id, rec.name, index)
            if depth > self.limits.max_depth:
                raise LimitExceeded(f"directory depth over {self.limits.max_depth}", record=index,
                                    hint="raise --max-depth if this stream is trusted")
        if rec.type == RecordType.MKFILE:
            self.declared_bytes += rec.size
            if self.declared_bytes > self.limits.max_bytes:
                raise LimitExceeded(f"files declare more than {self.limits.max_bytes} bytes", record=index,
                                    hint="raise --max-bytes if this stream is trusted")
        self.inodes[rec.file_id] = _Inode(rec.type, rec.parent_id, depth, rec.size)
        self.current, self.extent_end, self.xattr_count, self.xattr_bytes = rec.file_id, 0, 0, 0

    def _link(self, rec: Link, index: int) -> None:
        target = self.inodes.get(rec.file_id)
        if target is None or target.type != RecordType.MKFILE:
            raise RecordOrderError(f"link to file id {rec.file_id}, which is not a regular file created"
                                   " earlier in this stream", record=index)
        self._parent(rec.parent_id, index)
        self._count_name(index)
        self._new_name(rec.parent_id, rec.name, index)
        self.links += 1
        self.current = 0  # records after a link do not continue the previous file

    def _new_name(self, parent_id: int, name: bytes, index: int) -> None:
        key = hashlib.blake2b(parent_id.to_bytes(8, "little") + name, digest_size=16).digest()
        if key in self.names:
            raise MalformedRecord(f"the same name twice in one directory: {name!r} again in directory id"
                                  f" {parent_id}", record=index,
                                  hint="a name is created once per directory (spec rule 5); the stream is damaged")
        self.names.add(key)

    def _count_name(self, index: int) -> None:
        if len(self.inodes) + self.links >= self.limits.max_files:
            raise LimitExceeded(f"more than {self.limits.max_files} files", record=index,
                                hint="raise --max-files if this stream is trusted")

    def _extent(self, rec: Extent, index: int) -> None:
        inode = self.inodes.get(rec.file_id)
        if rec.file_id != self.current or inode is None or inode.type != RecordType.MKFILE:
            raise RecordOrderError(f"extent for file id {rec.file_id}, but the file being written is"
                                   f" {self.current or 'none'}", record=index)
        if rec.offset < self.extent_end:
            raise RecordOrderError(f"extent at offset {rec.offset} overlaps or precedes the previous one"
                                   f" (which ends at {self.extent_end})", record=index)
        end = rec.offset + rec.num_bytes
        if end > inode.size:
            raise RecordOrderError(f"extent ends at {end}, beyond the file's declared size {inode.size}",
                                   record=index)
        self.extent_end = end

    def _xattr(self, rec: SetXattr, index: int) -> None:
        if not self.current or rec.file_id != self.current:  # id 0: no file is current
            raise RecordOrderError(f"xattr for file id {rec.file_id}, but the current file is"
                                   f" {self.current or 'none'}", record=index)
        self.xattr_count += 1
        self.xattr_bytes += len(rec.name) + len(rec.value)
        if self.xattr_count > self.limits.max_xattrs_per_file:
            raise LimitExceeded(f"more than {self.limits.max_xattrs_per_file} xattrs on one file", record=index)
        if self.xattr_bytes > self.limits.max_xattr_bytes_per_file:
            raise LimitExceeded(f"xattrs of one file over {self.limits.max_xattr_bytes_per_file} bytes",
                                record=index)

    _RULES = {Create: _create, Link: _link, Extent: _extent, SetXattr: _xattr}  # by record class

    def finish(self, index: int, offset: int | None = None) -> None:
        if not self.inodes:
            raise RecordOrderError("the stream ends without creating its root directory", record=index,
                                   offset=offset)


def check_extent_features(header: Header, extent: Extent) -> None:
    """An extent uses only what the header announced: lz4 needs the required bit ``lz4``.

    A rule on clear fields, so keyless readers of encrypted streams check it too.
    """
    if extent.compression == Compression.LZ4 and not header.required_features & Feature.LZ4:
        raise MalformedRecord("lz4 extent in a stream whose header does not set the required feature lz4",
                              hint="a reader without lz4 would have refused the stream at its header;"
                                   " the stream is damaged or not conforming")
