"""Structural rules of a stream's records (spec section "Record order").

Shared by receive, verify and dump, so every consumer refuses the same
streams with the same errors.
"""

from __future__ import annotations

from hashlib import blake2b
from dataclasses import dataclass, field

from rawsend.errors import LimitExceeded, MalformedRecord, RecordOrderError
from rawsend.stream.records import (
    FLAG_SEALED, ROOT_ID, Base, Chmod, Chown, Compression, Create, Extent, Feature, Header, Link, PunchHole, RecordType,
    RemoveXattr, Rename, Rmdir, SetXattr, Truncate, Unlink, UpdateFile, Utimes,
)


def _name_key(parent_id: int, name: bytes) -> bytes:
    return blake2b(parent_id.to_bytes(8, "little") + name, digest_size=16).digest()


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


_MKDIR, _MKFILE = RecordType.MKDIR, RecordType.MKFILE  # as globals: cheaper per record than the class's
_BASE_DIR = _Inode(_MKDIR, 0, 0)  # a directory of the base: the receiver knows its depth


@dataclass
class StreamChecker:
    limits: Limits = field(default_factory=Limits)
    inodes: dict[int, _Inode] = field(default_factory=dict)
    current: int = 0            # file id the EXTENT/SET_XATTR records refer to
    data_file: int = 0          # the current file when EXTENT and PUNCH_HOLE may write it (a regular file)
    extent_end: int = 0         # end of the current file's last extent
    xattr_count: int = 0
    xattr_bytes: int = 0
    declared_bytes: int = 0
    links: int = 0
    # rule 5: one 16-byte digest per (parent, name), not the name itself, so memory per
    # entry stays small whatever the names' lengths (a 128-bit digest makes a false clash
    # as likely as guessing a random key)
    names: set[bytes] = field(default_factory=set)
    # incremental streams: ids below first_id are the base's, which only a receiver holding
    # the base can check; ids from first_id on are this stream's creates
    first_id: int = 0           # 0: a full stream
    current_size: int = 0       # size of the current file (its MKFILE, or UPDATE_FILE)
    removed: set[int] = field(default_factory=set)      # ids of this stream's creates removed again
    xattrs_of: dict[int, list[int]] = field(default_factory=dict)  # incremental: [count, bytes] per id

    def check(self, rec, index: int) -> None:
        rule = self._RULES.get(type(rec))
        if rule is not None:
            rule(self, rec, index)

    def _parent(self, parent_id: int, index: int) -> _Inode:
        if self._in_base(parent_id):  # the receiver checks that it holds a directory there
            return _BASE_DIR
        parent = self.inodes.get(parent_id)
        if parent is None or parent.type != _MKDIR or parent_id in self.removed:
            raise RecordOrderError(f"parent id {parent_id} is not a directory created earlier", record=index)
        return parent

    def _in_base(self, file_id: int) -> bool:
        return 0 < file_id < self.first_id

    def _live(self, file_id: int, index: int, what: str) -> _Inode | None:
        """This stream's inode ``file_id``, or None for one of the base's."""
        if self._in_base(file_id):
            return None
        inode = self.inodes.get(file_id)
        if inode is None or file_id in self.removed:
            raise RecordOrderError(f"{what} of file id {file_id}, which neither the base nor this stream"
                                   " created before", record=index)
        return inode

    def _create(self, rec: Create, index: int) -> None:
        inodes, file_id, rtype = self.inodes, rec.file_id, rec.type
        expected = len(inodes) + (self.first_id or ROOT_ID)
        if file_id != expected:
            raise RecordOrderError(f"file id {file_id}, expected the next id {expected}", record=index)
        if not inodes and rtype != _MKDIR and not self.first_id:
            raise RecordOrderError("the first record after the header must create the root", record=index)
        self._count_name(index)
        depth = 0
        if file_id != ROOT_ID:
            depth = self._parent(rec.parent_id, index).depth + 1
            self._new_name(rec.parent_id, rec.name, index)
            if depth > self.limits.max_depth:
                raise LimitExceeded(f"directory depth over {self.limits.max_depth}", record=index,
                                    hint="raise --max-depth if this stream is trusted")
        if rtype == _MKFILE:
            self._declare(rec.size, index)
        inodes[file_id] = _Inode(rtype, rec.parent_id, depth, rec.size)
        self.current, self.extent_end, self.xattr_count, self.xattr_bytes = file_id, 0, 0, 0
        self.data_file = file_id if rtype == _MKFILE else 0
        self.current_size = rec.size

    def _link(self, rec: Link, index: int) -> None:
        if self.first_id:  # incremental: any non-directory, of the base or of this stream
            target = self._live(rec.file_id, index, "link")
            if target is not None and target.type == _MKDIR:
                raise RecordOrderError(f"link to file id {rec.file_id}, a directory", record=index)
        else:
            target = self.inodes.get(rec.file_id)
            if target is None or target.type != _MKFILE:
                raise RecordOrderError(f"link to file id {rec.file_id}, which is not a regular file created"
                                       " earlier in this stream", record=index)
        self._parent(rec.parent_id, index)
        self._count_name(index)
        self._new_name(rec.parent_id, rec.name, index)
        self.links += 1
        self.current = self.data_file = 0  # records after a link do not continue the previous file

    def _new_name(self, parent_id: int, name: bytes, index: int) -> None:
        key = _name_key(parent_id, name)
        names = self.names
        if key in names:
            raise MalformedRecord(f"the same name twice in one directory: {name!r} again in directory id"
                                  f" {parent_id}", record=index,
                                  hint="a name is created once per directory (spec rule 5); the stream is damaged")
        names.add(key)

    def _drop_name(self, parent_id: int, name: bytes) -> None:
        """A name goes away (unlink, rmdir, the old name of a rename): it may be created again."""
        self.names.discard(_name_key(parent_id, name))

    def _count_name(self, index: int) -> None:
        if len(self.inodes) + self.links >= self.limits.max_files:
            raise LimitExceeded(f"more than {self.limits.max_files} files", record=index,
                                hint="raise --max-files if this stream is trusted")

    def _extent(self, rec: Extent, index: int) -> None:
        self._data_range(rec.file_id, rec.offset, rec.num_bytes, "extent", index)

    def _data_range(self, file_id: int, offset: int, length: int, what: str, index: int) -> None:
        """EXTENT and PUNCH_HOLE: the current regular file, in offset order, within its size."""
        if file_id != self.data_file or not file_id:
            raise RecordOrderError(f"{what} for file id {file_id}, but the file being written is"
                                   f" {self.current or 'none'}", record=index)
        if offset < self.extent_end:
            raise RecordOrderError(f"{what} at offset {offset} overlaps or precedes the previous one"
                                   f" (which ends at {self.extent_end})", record=index)
        end = offset + length
        if end > self.current_size:
            raise RecordOrderError(f"{what} ends at {end}, beyond the file's declared size {self.current_size}",
                                   record=index)
        self.extent_end = end

    def _xattr(self, rec: SetXattr, index: int) -> None:
        if self.first_id:  # incremental: any live file, counted per file
            self._live(rec.file_id, index, "set_xattr")
            tally = self.xattrs_of.setdefault(rec.file_id, [0, 0])
            tally[0] += 1
            tally[1] += len(rec.name) + len(rec.value)
            self._xattr_caps(tally[0], tally[1], index)
            return
        if not self.current or rec.file_id != self.current:  # id 0: no file is current
            raise RecordOrderError(f"xattr for file id {rec.file_id}, but the current file is"
                                   f" {self.current or 'none'}", record=index)
        self.xattr_count += 1
        self.xattr_bytes += len(rec.name) + len(rec.value)
        self._xattr_caps(self.xattr_count, self.xattr_bytes, index)

    def _xattr_caps(self, count: int, size: int, index: int) -> None:
        if count > self.limits.max_xattrs_per_file:
            raise LimitExceeded(f"more than {self.limits.max_xattrs_per_file} xattrs on one file", record=index)
        if size > self.limits.max_xattr_bytes_per_file:
            raise LimitExceeded(f"xattrs of one file over {self.limits.max_xattr_bytes_per_file} bytes",
                                record=index)

    # -- incremental streams (spec "Incremental streams") ------------------------------------

    def _base(self, rec: Base, index: int) -> None:
        if index != 1 or self.inodes:
            raise RecordOrderError("a base record anywhere but right after the header", record=index)
        self.first_id = rec.first_id

    def _rename(self, rec: Rename, index: int) -> None:
        self._live(rec.file_id, index, "rename")
        self._parent(rec.parent_id, index)
        to_parent = self._parent(rec.to_parent_id, index)
        if rec.file_id == rec.to_parent_id:
            raise RecordOrderError(f"rename of directory id {rec.file_id} into itself", record=index)
        self._drop_name(rec.parent_id, rec.name)
        self._new_name(rec.to_parent_id, rec.to_name, index)
        inode = self.inodes.get(rec.file_id)
        if inode is not None:  # keep depths right for what is created under it later
            inode.parent_id = rec.to_parent_id
            inode.depth = to_parent.depth + 1

    def _unlink(self, rec: Unlink, index: int) -> None:
        self._remove(rec, index, is_dir=False)

    def _rmdir(self, rec: Rmdir, index: int) -> None:
        self._remove(rec, index, is_dir=True)

    def _remove(self, rec: Unlink, index: int, is_dir: bool) -> None:
        what = RecordType.NAMES[rec.type]
        inode = self._live(rec.file_id, index, what)
        self._parent(rec.parent_id, index)
        if inode is not None and (inode.type == _MKDIR) != is_dir:
            kind = "directory" if inode.type == _MKDIR else "non-directory"
            raise RecordOrderError(f"{what} of file id {rec.file_id}, a {kind}", record=index)
        self._drop_name(rec.parent_id, rec.name)
        if inode is not None and is_dir:
            self.removed.add(rec.file_id)  # a directory has one name; a file may have others

    def _declare(self, size: int, index: int) -> None:
        """Count a size a file is given (MKFILE, TRUNCATE) against the receiver's bytes cap."""
        self.declared_bytes += size
        if self.declared_bytes > self.limits.max_bytes:
            raise LimitExceeded(f"files declare more than {self.limits.max_bytes} bytes", record=index,
                                hint="raise --max-bytes if this stream is trusted")

    def _truncate(self, rec: Truncate, index: int) -> None:
        self._regular(rec.file_id, index, "truncate")
        self._declare(rec.size, index)  # a truncate may grow a file of the base to any size
        if self.current == rec.file_id:
            self.current = self.data_file = 0  # data records after a truncate need a new update_file

    def _regular(self, file_id: int, index: int, what: str) -> None:
        inode = self._live(file_id, index, what)
        if inode is not None and inode.type != _MKFILE:
            raise RecordOrderError(f"{what} of file id {file_id}, which is not a regular file", record=index)

    def _update_file(self, rec: UpdateFile, index: int) -> None:
        self._regular(rec.file_id, index, "update_file")
        self.current, self.extent_end, self.current_size = rec.file_id, 0, rec.size
        self.data_file = rec.file_id  # the receiver checks that the base's file is a regular file

    def _punch_hole(self, rec: PunchHole, index: int) -> None:
        self._data_range(rec.file_id, rec.offset, rec.length, "punch_hole", index)

    def _attribute(self, rec, index: int) -> None:  # chmod, chown, utimes, remove_xattr
        self._live(rec.file_id, index, RecordType.NAMES[rec.type])

    _RULES = {Create: _create, Link: _link, Extent: _extent, SetXattr: _xattr, Base: _base, Rename: _rename,
              Unlink: _unlink, Rmdir: _rmdir, Truncate: _truncate, UpdateFile: _update_file,
              PunchHole: _punch_hole, Chmod: _attribute, Chown: _attribute, Utimes: _attribute,
              RemoveXattr: _attribute}  # by record class

    def finish(self, index: int, offset: int | None = None) -> None:
        if not self.inodes and not self.first_id:
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


def check_clear_rules(header: Header, raw_type: int, index: int, flags: int = 0) -> None:
    """Rules on what a keyless reader sees too: incremental records need their feature bit,
    an incremental stream's record 1 is BASE, and BASE is never sealed."""
    incremental = header.required_features & Feature.INCREMENTAL
    if raw_type in RecordType.INCREMENTAL and not incremental:
        raise MalformedRecord(f"{RecordType.NAMES[raw_type]} record in a stream whose header does not set"
                              " the required feature incremental",
                              hint="incremental records change a base tree; the stream is damaged or not"
                                   " conforming")
    if incremental and (index == 1) != (raw_type == RecordType.BASE):
        raise RecordOrderError("an incremental stream's record 1 must be its base record, and only record 1")
    if raw_type == RecordType.BASE and flags & FLAG_SEALED:
        # sealed, it would hide the base link from a store without the key, which would keep the
        # stream as a full one
        raise MalformedRecord("base record sealed; BASE stays in the clear in an encrypted stream",
                              hint="the stream is damaged or not conforming")
    if raw_type == RecordType.LABEL and index != 2:
        raise RecordOrderError(f"a label record as record {index}; it may only be record 2 (after the root, or"
                               " after BASE), once")
    if raw_type == RecordType.SNAPSHOT and index not in (2, 3):
        raise RecordOrderError(f"a snapshot record as record {index}; it may only be record 2 (after the root, or"
                               " after BASE) or record 3 (after LABEL)")


# the types check_clear_rules can refuse in a stream that is not incremental (a reader skips
# the call for the others: it cannot fail); a new rule there adds its type here
CLEAR_RULE_TYPES = RecordType.INCREMENTAL | {RecordType.LABEL, RecordType.SNAPSHOT}
