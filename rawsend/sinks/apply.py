"""Applying an incremental stream to the tree DEST holds (spec "What a receiver holding the base
checks", receiver-guarantees.md "Incremental receive").

Two phases.  While the stream is read, DEST is not touched: every record is checked against a
model of DEST's tree (the manifest in deststate, with this stream's changes laid over it), new
files, directories and symlinks are made in a staging directory in DEST's state directory, and a
file whose data changes is copied there (its unchanged ranges with copy_file_range, which
reflinks where the filesystem can) and changed in the copy.  The namespace and attribute changes
become a list of operations.  After END, the files the stream touches are compared with the
manifest (one lstat each), the operations are written to an fsynced journal, and only then run
on DEST (journal.execute): the commit phase, which the next rawsend command on DEST completes
if this one dies in it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path

from rawsend import btrfs
from rawsend.errors import (
    DestinationError, DestStateError, LocallyModified, RawsendError, RecordOrderError, WrongBase,
)
from rawsend.fsutil import data_regions, syncfs
from rawsend.sinks import journal
from rawsend.sinks.deststate import DestState, FileRow, Held, now_ns, row_of, state_dir
from rawsend.sinks.dirfds import openat2_dir, openat2_works, DIR_FLAGS, DirCache
from rawsend.sinks.extents import ExtentWriter, PwriteWriter, pick_writer
from rawsend.sinks.namespace import remove_tree
from rawsend.stream.records import ROOT_ID, Compression, RecordType
from rawsend.text import escape

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
COPY_CHUNK = 1 << 30
ZEROS = bytes(1 << 16)

_KIND = {RecordType.MKDIR: stat.S_IFDIR, RecordType.MKFILE: stat.S_IFREG, RecordType.SYMLINK: stat.S_IFLNK}
_libc = ctypes.CDLL(None, use_errno=True)


def _hex_path(names: list[bytes]) -> list[str]:
    return [n.hex() for n in names]


@dataclass(slots=True)
class Node:
    """One inode of DEST's tree as this stream has changed it so far."""

    type: int                          # stat.S_IFMT
    ino: int                           # on DEST (the base's), or in staging (a new inode); 0: not on disk
    size: int
    names: list[tuple[int, bytes]]     # (parent id, name)
    base: FileRow | None = None        # the manifest's row: a file of the base
    staged: str | None = None          # its name in the staging directory: new, or a copy being changed
    new_ino: int = 0                   # the copy's inode (a changed file of the base)
    orig: os.stat_result | None = None  # the base file the copy was made from
    names_changed: bool = False
    attrs: list = field(default_factory=list)  # (kind, args) in stream order


class ChangeApplier:
    """A ChangeSink that applies an incremental stream to the tracked tree at ``dest``."""

    def __init__(self, dest: Path, policy, report, *, sync: bool = True, force: bool = False,
                 encoded_writes: bool = True, stage_in_dest: bool = False):
        self.dest = Path(os.path.abspath(dest))
        self.policy, self.report, self.sync, self.force = policy, report, sync, force
        self.encoded_writes = encoded_writes
        # the staging directory in DEST's top directory instead of its state directory: for a DEST
        # that is a subvolume of its own, which renames cannot enter from outside
        self.stage_in_dest = stage_in_dest
        self.state: DestState | None = None
        self.header = None
        self.base_rec = None
        self._end = None
        self.stage: Path | None = None
        self.stage_fd = -1
        self.nodes: dict[int, Node] = {}
        self.entries: dict[tuple[int, bytes], int | None] = {}  # laid over the manifest; None: freed
        self.added: dict[int, set[bytes]] = {}   # names this stream put in each directory
        self.ops: list[list] = []                # namespace operations; file ids still to resolve
        self.order: list[int] = []               # ids of the base in the order the stream touches them
        self._creates = 0
        self._cur_id = 0
        self._cur_fd = -1
        self._cur_create = None
        self.journal_written = False
        self.writer: ExtentWriter = PwriteWriter(report, btrfs.NO_RAW)
        self.opened_dirs: dict[tuple, int] = {}

    # -- set-up ------------------------------------------------------------------------------

    def begin(self, header) -> None:
        self.header = header
        refusal = WrongBase("the stream is incremental, and DEST holds no tree received from a tracked stream"
                            " for it to change", path=str(self.dest),
                            hint="receive the chain's full stream (the first send --state) into a new DEST first")
        if not os.path.lexists(self.dest):
            raise refusal
        self.state = DestState.open(self.dest)
        if self.state is None:  # refused at the header, before any record
            raise refusal

    def base(self, rec) -> None:
        self.base_rec = rec
        need = rec.stream_id.hex()
        resend = "rawsend send --state STATE --parent {} SRC"
        if self.state is None:
            raise WrongBase(f"DEST holds no tree received from a tracked stream, and this stream changes stream"
                            f" {need}", path=str(self.dest),
                            hint="receive the chain's full stream (the first send --state) into a new DEST first")
        chain = self.state.chain
        held = chain[-1]
        have = held.stream_id.hex()
        if held.stream_id == self.header.stream_id:
            raise WrongBase(f"DEST holds this stream already (stream {have}): it was applied before",
                            path=str(self.dest), hint="nothing to do; nothing was changed")
        if held.stream_id != rec.stream_id:
            older = [h for h in chain[:-1] if h.stream_id == rec.stream_id]
            applied = [h for h in chain if h.stream_id == self.header.stream_id]
            if applied:
                what = (f"DEST holds stream {have}, and this stream ({self.header.stream_id.hex()}) was applied"
                        f" before it: it is older than what DEST holds")
            elif older:
                what = (f"DEST holds stream {have}, newer than stream {need} that this stream changes:"
                        f" it is older than what DEST holds")
            else:
                what = f"DEST holds stream {have}, and this stream changes stream {need}"
            raise WrongBase(what, path=str(self.dest),
                            hint="nothing was changed; send a stream against what DEST holds: "
                                 + resend.format(have))
        if held.digest != rec.digest:
            # the same stream id with another END: another copy of the stream (rekeyed, or sealed
            # again), which the sender's STATE does not know, so a resend against it would not help
            sealed = f" (sealed with key id {held.key_id.hex()})" if held.key_id else ""
            raise WrongBase(f"DEST holds stream {have} with END digest {held.digest.hex()}{sealed}, but this"
                            f" stream's base is that stream with END digest {rec.digest.hex()}: another copy of it"
                            f" (a stream rekeyed or sealed again has another END)", path=str(self.dest),
                            hint=f"nothing was changed; an incremental stream applies only to the copy of its base"
                                 f" it was sent against: receive the copy of stream {have} this stream was sent"
                                 f" against into a new DEST, then this stream")
        if rec.first_id < held.next_id:
            raise WrongBase(f"this stream's new files start at id {rec.first_id}, but ids up to"
                            f" {held.next_id - 1} are in use in the tree DEST holds", path=str(self.dest),
                            hint="nothing was changed; send a stream against what DEST holds: "
                                 + resend.format(have))
        self._make_stage()

    def _make_stage(self) -> None:
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        if self.stage_in_dest:
            self.stage = self.dest / f"{journal.STAGE_IN_DEST}{tag}"
            top = os.fstat(self.state.dest_fd)  # its times, which the mkdir changes, as the manifest has them
        else:
            self.stage = self.state.dir / f"stage-{tag}"
        try:
            os.mkdir(self.stage, 0o700)
            self.stage_fd = os.open(self.stage, DIR_FLAGS)
            if self.stage_in_dest:
                os.utime(self.state.dest_fd, ns=(top.st_atime_ns, top.st_mtime_ns))
        except OSError as e:
            raise DestinationError(f"cannot create the staging directory: {e.strerror}", path=str(self.stage)) from None
        if os.fstat(self.stage_fd).st_dev != os.fstat(self.state.dest_fd).st_dev:
            raise DestinationError("DEST is on another filesystem than its parent directory (a mount point):"
                                   " files are staged beside DEST and renamed into it", path=str(self.dest),
                                   hint="receive into a directory below the mount point")
        self.writer = pick_writer(self.stage_fd, self.report, self.encoded_writes)

    # -- the model ---------------------------------------------------------------------------

    def node(self, file_id: int, what: str) -> Node:
        """The live inode ``file_id``; RecordOrderError when DEST's tree has none."""
        n = self.nodes.get(file_id)
        if n is None:
            row = self.state.file(file_id)
            if row is None or file_id >= self.base_rec.first_id:
                raise RecordOrderError(f"{what} names file id {file_id}, which the tree DEST holds does not have")
            n = self.nodes[file_id] = Node(row.type, row.ino, row.size, self.state.names_of(file_id), base=row)
            self.order.append(file_id)
        if not n.names and file_id != ROOT_ID:
            raise RecordOrderError(f"{what} names file id {file_id}, which has no name left in DEST")
        return n

    def directory(self, file_id: int, what: str) -> Node:
        n = self.node(file_id, what)
        if n.type != stat.S_IFDIR:
            raise RecordOrderError(f"{what}: file id {file_id} is not a directory in DEST")
        return n

    def entry(self, parent_id: int, name: bytes) -> int | None:
        key = (parent_id, name)
        if key in self.entries:
            return self.entries[key]
        return self.state.entry(parent_id, name)

    def path(self, file_id: int) -> list[bytes]:
        """Names from DEST's root to ``file_id`` as the tree is at this point of the stream."""
        parts = []
        while file_id != ROOT_ID:
            parent, name = self.node(file_id, "a path").names[0]
            parts.append(name)
            file_id = parent
        parts.reverse()
        return parts

    def shown(self, file_id: int) -> str:
        """The path of ``file_id`` for a message, escaped."""
        try:
            return escape(os.path.join(os.fsencode(self.dest), *self.path(file_id)))
        except RawsendError:
            return f"file id {file_id}"

    def _free(self, parent_id: int, name: bytes, what: str) -> None:
        if self.entry(parent_id, name) is not None:
            raise RecordOrderError(f"{what}: {escape(name)} is taken in directory {self.shown(parent_id)};"
                                   " an incremental receive never replaces an entry")

    def _add_name(self, parent_id: int, name: bytes, file_id: int) -> None:
        self.entries[(parent_id, name)] = file_id
        self.added.setdefault(parent_id, set()).add(name)

    def _drop_name(self, node: Node, parent_id: int, name: bytes) -> None:
        self.entries[(parent_id, name)] = None
        self.added.get(parent_id, set()).discard(name)
        node.names.remove((parent_id, name))
        node.names_changed = True

    def _holds(self, parent_id: int, name: bytes, file_id: int, what: str) -> Node:
        n = self.node(file_id, what)
        self.directory(parent_id, what)
        if self.entry(parent_id, name) != file_id:
            raise RecordOrderError(f"{what}: {escape(name)} in {self.shown(parent_id)} is not file id {file_id}")
        return n

    def _empty(self, dir_id: int) -> bool:
        if any(self.entries.get((dir_id, name)) is not None for name in self.added.get(dir_id, ())):
            return False
        return all((dir_id, name) in self.entries and self.entries[(dir_id, name)] is None
                   for name, _ in self.state.children(dir_id))

    def _op(self, *op) -> None:
        self.ops.append(list(op))

    # -- namespace records -------------------------------------------------------------------

    def create(self, rec) -> None:
        self._finish_file()
        what = f"{RecordType.NAMES[rec.type]} {escape(rec.name)}"
        self.directory(rec.parent_id, what)
        self._free(rec.parent_id, rec.name, what)
        self._creates += 1
        sname = f"n{rec.file_id}"
        kind = _KIND.get(rec.type, stat.S_IFMT(rec.mode))
        node = Node(kind, 0, rec.size if rec.type == RecordType.MKFILE else 0, [(rec.parent_id, rec.name)],
                    staged=sname)
        fd = self.stage_fd
        try:
            if rec.type == RecordType.MKDIR:
                os.mkdir(sname, 0o700, dir_fd=fd)
                if self.policy.preserve_owner:
                    node.attrs.append(("chown", [rec.uid, rec.gid]))
                node.attrs.append(("chmod", [self.policy.mode(rec)]))
                node.attrs.append(("utimes", [rec.atime_ns, rec.mtime_ns]))
            elif rec.type == RecordType.MKFILE:
                self._cur_fd = os.open(sname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                       0o600, dir_fd=fd)
                self._cur_id, self._cur_create = rec.file_id, rec
                self.writer.start_file(self._cur_fd, rec.size)
                if self.policy.preserve_owner:
                    os.fchown(self._cur_fd, rec.uid, rec.gid)
            elif rec.type == RecordType.SYMLINK:
                os.symlink(rec.target, sname, dir_fd=fd)
                node.size = len(rec.target)
                if self.policy.preserve_owner:
                    os.chown(sname, rec.uid, rec.gid, dir_fd=fd, follow_symlinks=False)
                node.attrs.append(("utimes", [rec.atime_ns, rec.mtime_ns]))
            elif self.policy.special_allowed(rec):
                os.mknod(sname, stat.S_IFMT(rec.mode) | 0o600, rec.size, dir_fd=fd)
                if self.policy.preserve_owner:
                    os.chown(sname, rec.uid, rec.gid, dir_fd=fd, follow_symlinks=False)
                node.attrs.append(("chmod", [self.policy.mode(rec)]))
                node.attrs.append(("utimes", [rec.atime_ns, rec.mtime_ns]))
            else:
                node.staged = None  # skipped: its name is held, nothing is on disk
            if node.staged is not None:
                node.ino = os.stat(sname, dir_fd=fd, follow_symlinks=False).st_ino
        except OSError as e:
            raise self._os_error(e) from None
        self.nodes[rec.file_id] = node
        if node.staged is not None:
            self._op("place", sname, _hex_path(self.path(rec.parent_id)), rec.name.hex(), rec.file_id)
        self._add_name(rec.parent_id, rec.name, rec.file_id)

    def link(self, rec) -> None:
        self._finish_file()
        what = f"link {escape(rec.name)}"
        node = self.node(rec.file_id, what)
        if node.type == stat.S_IFDIR:
            raise RecordOrderError(f"{what}: file id {rec.file_id} is a directory")
        self.directory(rec.parent_id, what)
        self._free(rec.parent_id, rec.name, what)
        src_parent, src_name = node.names[0]
        if node.ino:
            self._op("link", _hex_path(self.path(src_parent)), src_name.hex(), _hex_path(self.path(rec.parent_id)),
                     rec.name.hex(), rec.file_id)
        self._add_name(rec.parent_id, rec.name, rec.file_id)
        node.names.append((rec.parent_id, rec.name))
        node.names_changed = True

    def rename(self, rec) -> None:
        self._finish_file()
        what = f"rename of {escape(rec.name)} to {escape(rec.to_name)}"
        if rec.file_id == ROOT_ID:
            raise RecordOrderError(f"{what}: file id 1 is DEST itself")
        node = self._holds(rec.parent_id, rec.name, rec.file_id, what)
        self.directory(rec.to_parent_id, what)
        self._free(rec.to_parent_id, rec.to_name, what)
        if node.type == stat.S_IFDIR:
            up = rec.to_parent_id
            while up != ROOT_ID:
                if up == rec.file_id:
                    raise RecordOrderError(f"{what}: a directory cannot move into itself or below itself")
                up = self.node(up, what).names[0][0]
        if node.ino:
            self._op("rename", _hex_path(self.path(rec.parent_id)), rec.name.hex(),
                     _hex_path(self.path(rec.to_parent_id)), rec.to_name.hex(), rec.file_id)
        self._drop_name(node, rec.parent_id, rec.name)
        self._add_name(rec.to_parent_id, rec.to_name, rec.file_id)
        node.names.append((rec.to_parent_id, rec.to_name))

    def unlink(self, rec) -> None:
        self._remove(rec, "unlink")

    def rmdir(self, rec) -> None:
        self._remove(rec, "rmdir")

    def _remove(self, rec, kind: str) -> None:
        self._finish_file()
        what = f"{kind} of {escape(rec.name)}"
        if rec.file_id == ROOT_ID:
            raise RecordOrderError(f"{what}: file id 1 is DEST itself")
        node = self._holds(rec.parent_id, rec.name, rec.file_id, what)
        if (node.type == stat.S_IFDIR) != (kind == "rmdir"):
            raise RecordOrderError(f"{what}: file id {rec.file_id} is {'not ' if kind == 'rmdir' else ''}a directory")
        if kind == "rmdir" and not self._empty(rec.file_id):
            raise RecordOrderError(f"{what}: the directory is not empty at this point of the stream")
        if node.ino:
            self._op(kind, _hex_path(self.path(rec.parent_id)), rec.name.hex(), rec.file_id)
        self._drop_name(node, rec.parent_id, rec.name)

    # -- data --------------------------------------------------------------------------------

    def _regular(self, file_id: int, what: str) -> Node:
        node = self.node(file_id, what)
        if node.type != stat.S_IFREG:
            raise RecordOrderError(f"{what}: file id {file_id} is not a regular file in DEST")
        return node

    def truncate(self, rec) -> None:
        if rec.file_id == self._cur_id:
            self._finish_file()
        node = self._regular(rec.file_id, "truncate")
        self._staged_copy(rec.file_id, node)
        try:
            fd = os.open(node.staged, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.stage_fd)
            try:
                os.ftruncate(fd, rec.size)
            finally:
                os.close(fd)
        except OSError as e:
            raise self._os_error(e) from None
        node.size = rec.size

    def update_file(self, rec) -> None:
        self._finish_file()
        node = self._regular(rec.file_id, "update_file")
        if rec.size != node.size:
            raise RecordOrderError(f"update_file of {self.shown(rec.file_id)} says its size is {rec.size},"
                                   f" but it is {node.size} at this point")
        self._staged_copy(rec.file_id, node)
        try:
            self._cur_fd = os.open(node.staged, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.stage_fd)
        except OSError as e:
            raise self._os_error(e) from None
        self._cur_id, self._cur_create = rec.file_id, None
        self.writer.start_file(self._cur_fd, rec.size)

    def wants_encoded(self, rec) -> bool:
        return rec.compression != Compression.NONE

    def extent(self, rec, data) -> None:
        try:
            self.writer.write(rec.offset, data)
        except OSError as e:
            raise self._os_error(e) from None

    def extent_encoded(self, rec, payload) -> None:
        try:
            self.writer.write_encoded(rec, payload)
        except OSError as e:
            raise self._os_error(e) from None

    def punch_hole(self, rec) -> None:
        fd = self._cur_fd
        if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ctypes.c_int64(rec.offset),
                           ctypes.c_int64(rec.length)) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise self._os_error(OSError(err, os.strerror(err))) from None
        try:  # no hole punching here: the range is written with zeros
            pos, end = rec.offset, min(rec.offset + rec.length, self.nodes[self._cur_id].size)
            while pos < end:
                pos += os.pwrite(fd, ZEROS[:min(len(ZEROS), end - pos)], pos)
        except OSError as e:
            raise self._os_error(e) from None

    def _finish_file(self) -> None:
        if self._cur_fd < 0:
            return
        fd, rec = self._cur_fd, self._cur_create
        self._cur_fd, self._cur_id, self._cur_create = -1, 0, None
        try:
            self.writer.finish_file()
            if rec is not None:  # a new file: the create's metadata, its times after its data
                os.fchmod(fd, self.policy.mode(rec))
                os.utime(fd, ns=(rec.atime_ns, rec.mtime_ns))
        except OSError as e:
            raise self._os_error(e) from None
        finally:
            os.close(fd)

    def _base_dir_fd(self, names: list[bytes]) -> int:
        """A directory of DEST by its path in the base (DEST is unchanged until the commit phase)."""
        if not names:
            return self.state.dest_fd
        key = tuple(names)
        fd = self.opened_dirs.get(key)
        if fd is None:
            if DirCache.use_openat2 is None:
                DirCache.use_openat2 = openat2_works()
            if DirCache.use_openat2:
                fd = openat2_dir(self.state.dest_fd, b"/".join(names))
            else:
                fd = self.state.dest_fd
                for name in names:
                    nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
                    if fd != self.state.dest_fd:
                        os.close(fd)
                    fd = nxt
            if len(self.opened_dirs) >= 64:
                os.close(self.opened_dirs.pop(next(iter(self.opened_dirs))))
            self.opened_dirs[key] = fd
        return fd

    def base_path(self, file_id: int) -> list[bytes]:
        """Names from DEST's root to ``file_id`` in the tree DEST holds now (the base)."""
        parts = []
        while file_id != ROOT_ID:
            names = self.state.names_of(file_id)
            if not names:
                raise DestStateError(f"the manifest of DEST has no name for file id {file_id}",
                                     path=str(self.state.dir), hint="receive a full stream into a new DEST")
            parent, name = names[0]
            parts.append(name)
            file_id = parent
        parts.reverse()
        return parts

    def _staged_copy(self, file_id: int, node: Node) -> None:
        """A file of the base whose data changes: copy it into staging (once) with its attributes."""
        if node.staged is not None:
            return
        where = self.base_path(file_id)
        try:
            src = os.open(where[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=self._base_dir_fd(where[:-1]))
        except OSError as e:
            raise LocallyModified(f"a file the stream changes cannot be opened: {e.strerror}",
                                  path=os.fsdecode(os.path.join(os.fsencode(self.dest), *where))) from None
        sname = f"u{file_id}"
        try:
            st = os.fstat(src)
            self._check(file_id, node, st, where)
            dst = os.open(sname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=self.stage_fd)
            try:
                os.ftruncate(dst, st.st_size)
                for start, end in data_regions(src, st.st_size):
                    _copy_range(src, dst, start, end)
                _copy_xattrs(src, dst)
                try:
                    os.fchown(dst, st.st_uid, st.st_gid)
                except PermissionError:
                    pass
                os.fchmod(dst, stat.S_IMODE(st.st_mode))
                node.new_ino = os.fstat(dst).st_ino
            finally:
                os.close(dst)
        except OSError as e:
            raise self._os_error(e) from None
        finally:
            os.close(src)
        node.staged, node.orig, node.size = sname, st, st.st_size

    # -- attributes --------------------------------------------------------------------------

    def chmod(self, rec) -> None:
        node = self.node(rec.file_id, "chmod")
        mode = rec.mode
        if not self.policy.preserve_owner:
            keep = 0o3777 if node.type == stat.S_IFDIR else 0o777
            if mode & ~keep:
                self.report.stripped_modes += 1
            mode &= keep
        if node.type != stat.S_IFLNK:
            node.attrs.append(("chmod", [mode]))

    def chown(self, rec) -> None:
        node = self.node(rec.file_id, "chown")
        if self.policy.preserve_owner:
            node.attrs.append(("chown", [rec.uid, rec.gid]))

    def utimes(self, rec) -> None:
        self.node(rec.file_id, "utimes").attrs.append(("utimes", [rec.atime_ns, rec.mtime_ns]))

    def xattr(self, rec) -> None:
        node = self.node(rec.file_id, "set_xattr")
        refusal = self.policy.xattr_refusal(rec.name)
        if refusal is not None or node.type not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            self.report.skipped_xattrs += 1
            if refusal is not None and len(self.report.warnings) < 20:
                self.report.warnings.append(f"{self.shown(rec.file_id)}: xattr {escape(rec.name)} not set: {refusal}")
            return
        self.policy.xattr_set(rec.name)
        node.attrs.append(("setxattr", [rec.name.hex(), bytes(rec.value).hex()]))

    def remove_xattr(self, rec) -> None:
        self.node(rec.file_id, "remove_xattr").attrs.append(("rmxattr", [rec.name.hex()]))

    # -- END and the commit phase ------------------------------------------------------------

    def end(self, end) -> None:
        self._end = end

    def _check(self, file_id: int, node: Node, st: os.stat_result, where: list[bytes]) -> None:
        """Refuse, naming it, a file of the base that changed since DEST received it."""
        found = row_of(st)
        if (found.type, found.ino, found.size, found.mtime_ns) == (
                node.base.type, node.base.ino, node.base.size, node.base.mtime_ns):
            return
        path = os.fsdecode(os.path.join(os.fsencode(self.dest), *where))
        if node.type == stat.S_IFDIR and found.type == stat.S_IFDIR and found.ino == node.base.ino:
            raise LocallyModified("a directory the stream changes was changed since DEST received it"
                                  " (entries added or removed)", path=path,
                                  hint="nothing was changed; undo the local change (or receive a full stream"
                                       " into a new DEST): --force applies over changed files, not directories")
        if self.force and found.type == node.base.type:
            node.ino = found.ino  # the operations act on what is there now
            return
        changed = [what for what, a, b in (("type", found.type, node.base.type), ("inode", found.ino, node.base.ino),
                                           ("size", found.size, node.base.size),
                                           ("mtime", found.mtime_ns, node.base.mtime_ns)) if a != b]
        raise LocallyModified(f"a file the stream changes was modified since DEST received it"
                              f" ({', '.join(changed)} differ)", path=path)

    def _check_touched(self) -> None:
        """One lstat per file of the base the stream touches, in the order it touches them."""
        for file_id in self.order:
            node = self.nodes[file_id]
            if node.base.ino == 0 or node.orig is not None:
                continue  # not on disk; or checked when it was copied
            where = self.base_path(file_id)
            try:
                if not where:
                    st = os.fstat(self.state.dest_fd)
                else:
                    st = os.stat(where[-1], dir_fd=self._base_dir_fd(where[:-1]), follow_symlinks=False)
            except FileNotFoundError:
                raise LocallyModified("a file the stream changes was removed since DEST received it",
                                      path=os.fsdecode(os.path.join(os.fsencode(self.dest), *where))) from None
            except OSError as e:
                raise LocallyModified(f"a file the stream changes cannot be looked at: {e.strerror}",
                                      path=os.fsdecode(os.path.join(os.fsencode(self.dest), *where))) from None
            self._check(file_id, node, st, where)

    def _staged_attrs(self) -> None:
        """Attributes of files whose inode is in staging (new ones, changed copies): set there now."""
        for node in self.nodes.values():
            if node.staged is None or node.type == stat.S_IFDIR:
                continue
            if node.orig is not None:
                os.utime(node.staged, ns=(node.orig.st_atime_ns, node.orig.st_mtime_ns), dir_fd=self.stage_fd)
            for kind, args in node.attrs:
                journal.set_attr(self.stage_fd, node.staged.encode(), node.type, kind, args)

    def _journal(self) -> dict:
        ops = []
        for op in self.ops:  # file ids to inode numbers, now that the checks have read them
            op = list(op)
            node = self.nodes[op[-1]]
            op[-1] = node.ino
            ops.append(op)
        stat_list, names, removed = [], {}, []
        swapped_in: set[int] = set()  # directories where a changed copy takes its old inode's names
        # (the loops walk over copies: self.path() loads the directories it passes through)
        for file_id, node in list(self.nodes.items()):
            if node.new_ino and node.names:  # a changed copy takes the place of the base's inode
                (parent, name), *others = node.names
                ppath = _hex_path(self.path(parent))
                ops.append(["swap", node.staged, node.new_ino, ppath, name.hex(), node.ino])
                for p, n in others:
                    ops.append(["unlink", _hex_path(self.path(p)), n.hex(), node.ino])
                    ops.append(["link", ppath, name.hex(), _hex_path(self.path(p)), n.hex(), node.new_ino])
                swapped_in.update(p for p, _ in node.names)
        for file_id, node in list(self.nodes.items()):
            if node.staged is not None and node.type != stat.S_IFDIR:
                continue  # set in staging
            if not node.names and file_id != ROOT_ID:
                continue
            for kind, args in node.attrs:
                if node.type == stat.S_IFDIR:
                    ops.append(["attr", _hex_path(self.path(file_id)), None, node.ino, kind, args])
                else:
                    parent, name = node.names[0]
                    ops.append(["attr", _hex_path(self.path(parent)), name.hex(), node.ino, kind, args])
        ops.extend(self._times_kept(swapped_in))
        for file_id, node in list(self.nodes.items()):
            if not node.names and file_id != ROOT_ID:
                if node.base is not None:
                    removed.append(file_id)
                continue
            if node.names_changed or node.base is None:
                names[file_id] = [(p, n.hex()) for p, n in node.names]
            if node.type == stat.S_IFDIR:
                stat_list.append((file_id, _hex_path(self.path(file_id)), None))
            elif node.ino or node.new_ino:
                parent, name = node.names[0]
                stat_list.append((file_id, _hex_path(self.path(parent)), name.hex()))
            else:  # a special file that was skipped: its name is held, its inode is not on disk
                stat_list.append((file_id, None, node.type))
        h, base = self.header, self.base_rec
        held = {"stream_id": h.stream_id.hex(), "digest": self._end.digest.hex(), "first_id": base.first_id,
                "next_id": max(self.state.held.next_id, base.first_id + self._creates), "created_ns": h.created_ns,
                "received_ns": now_ns(), "key_id": h.key_id.hex() if h.encrypted else None}
        return {"version": journal.JOURNAL_VERSION, "root_ino": os.fstat(self.state.dest_fd).st_ino,
                "stage": self.stage.name, "stage_in_dest": self.stage_in_dest, "ops": ops, "stat": stat_list,
                "names": names, "removed": removed, "held": held}

    def _times_kept(self, dir_ids) -> list[list]:
        """A swap changes its directory's mtime, which the stream did not change unless it set the
        times: those of the directories it did not set, as they are now, restored after the swaps."""
        ops = []
        for dir_id in sorted(dir_ids):
            node = self.node(dir_id, "a directory")
            if node.base is None or any(kind == "utimes" for kind, _ in node.attrs):
                continue  # new (its create's times are set), or timed by the stream
            st = os.fstat(self._base_dir_fd(self.base_path(dir_id)))
            ops.append(["attr", _hex_path(self.path(dir_id)), None, node.ino, "utimes",
                        [st.st_atime_ns, st.st_mtime_ns]])
        return ops

    def commit(self) -> None:
        self._finish_file()
        try:
            self._check_touched()
            self._staged_attrs()
            if self.sync:
                syncfs(self.stage_fd)
            record = self._journal()
            journal.test_hook("stage")
            jpath = journal.write(self.state.dir, record)
        except OSError as e:
            raise self._os_error(e) from None
        self.journal_written = True
        journal.test_hook("journal")
        self._close_dirs()
        try:
            journal.execute(self.state, record, jpath, sync=self.sync)
        except sqlite3.Error as e:
            raise DestStateError(f"cannot record what DEST holds: {e}", path=str(self.state.dir),
                                 hint="the tree is applied; the next 'rawsend status DEST' records it") from None
        self.stage = None
        self._close()

    def abort(self) -> None:
        if self._cur_fd >= 0:
            os.close(self._cur_fd)
            self._cur_fd = -1
        if not self.journal_written and self.stage is not None:
            remove_tree(self.stage)  # DEST was not touched: what was staged goes
            try:
                os.unlink(self.state.dir / "journal.tmp")
            except OSError:
                pass
        self._close()

    def _close_dirs(self) -> None:
        for fd in self.opened_dirs.values():
            os.close(fd)
        self.opened_dirs.clear()

    def _close(self) -> None:
        self._close_dirs()
        if self.stage_fd >= 0:
            os.close(self.stage_fd)
            self.stage_fd = -1
        if self.state is not None:
            self.state.close()
            self.state = None

    def _os_error(self, e: OSError) -> RawsendError:
        if e.errno == errno.ENOSPC:
            return DestinationError("no space left on the destination's filesystem to stage the changes",
                                    path=str(self.dest), hint="free space and receive again; DEST was not changed")
        return DestinationError(e.strerror or str(e), path=str(self.dest))


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    """Copy [start, end) with copy_file_range (a reflink where the filesystem can), else by reading."""
    pos = start
    while pos < end:
        try:
            n = os.copy_file_range(src, dst, min(COPY_CHUNK, end - pos), pos, pos)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = 0
        if n == 0:  # not supported here (or nothing copied): plain reads and writes
            data = os.pread(src, min(1 << 20, end - pos), pos)
            if not data:
                return
            n = os.pwrite(dst, data, pos)
        pos += n


def _copy_xattrs(src: int, dst: int) -> None:
    for name in os.listxattr(src):
        try:
            os.setxattr(dst, name, os.getxattr(src, name))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
