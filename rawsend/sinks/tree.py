"""Tree sink: rebuilds files inside a private temporary directory, then renames it into place.

Three jobs, three places: the namespace (temporary directory, names, directory fds, commit and
rename) is namespace.Namespace, what is kept of owners, modes, special files and privileged
xattrs is policy.MetadataPolicy, and the sink itself writes the records' contents: files,
links and xattrs; a file's data goes through an extents.ExtentWriter picked in begin()
(verbatim with ENCODED_WRITE where btrfs takes them, else decoded with pwrite).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path

from rawsend import btrfs
from rawsend.errors import DestinationError, DestStateError, MalformedRecord, RawsendError
from rawsend.fsutil import syncfs
from rawsend.sinks import deststate
from rawsend.sinks.durable import Durability, FsyncFailed
from rawsend.sinks.journal import test_hook
from rawsend.sinks.extents import ExtentWriter, PwriteWriter, pick_writer
from rawsend.sinks.namespace import Namespace
from rawsend.sinks.policy import MetadataPolicy
from rawsend.sinks.received import received_identity
from rawsend.stream.records import ROOT_ID, Compression, Create, Extent, Feature, Link, RecordType, SetXattr

# as globals: cheaper per record than the enum's class attributes
_MKDIR, _MKFILE, _SYMLINK, _MKNOD = (RecordType.MKDIR, RecordType.MKFILE, RecordType.SYMLINK,
                                     RecordType.MKNOD)
_NO_COMPRESSION = Compression.NONE


@dataclass
class TreeReport:
    skipped_special: int = 0
    skipped_devices: int = 0   # of which block and character devices (--preserve-devices)
    skipped_xattrs: int = 0
    stripped_modes: int = 0
    kept_setid: int = 0         # files, specials kept setuid/setgid (owners preserved)
    kept_capabilities: int = 0  # security.capability xattrs set (owners preserved)
    warnings: list[str] = field(default_factory=list)
    encoded_extents: int = 0   # compressed extents written verbatim (BTRFS_IOC_ENCODED_WRITE)
    decoded_extents: int = 0   # compressed extents decoded and written with pwrite
    decoded_reasons: dict[btrfs.RefusalKind, int] = field(default_factory=dict)  # why, by kind
    unchecked_extents: int = 0  # LZO extents written verbatim without python-lzo to check them

    def count_decoded(self, why: btrfs.Refusal) -> None:
        self.decoded_extents += 1
        btrfs.count_by_kind(self.decoded_reasons, why)


class TreeSink:
    def __init__(self, dest: str | Path, *, preserve_owner: bool | None = None,
                 preserve_special: bool = False, preserve_devices: bool = False, sync: bool = True,
                 encoded_writes: bool = True, track: bool = True, subvolume: bool = False):
        # subvolume: DEST is made a read-only received btrfs subvolume where its parent allows
        self.ns = Namespace(dest, subvolume=subvolume)
        self.dest = self.ns.dest
        self.report = TreeReport()
        self.policy = MetadataPolicy(self.report, preserve_owner=preserve_owner,
                                     preserve_special=preserve_special, preserve_devices=preserve_devices)
        self.sync = sync
        self.durable = Durability()
        self._cur_id = 0
        self._cur_fd = -1
        self._cur_rec: Create | None = None
        self.encoded_writes = encoded_writes
        self.writer: ExtentWriter = PwriteWriter(self.report, btrfs.NO_RAW)  # picked in begin()
        # (uid, gid) every new file gets here, when that is ours (set in begin())
        self._owner_as_created: tuple[int, int] | None = None
        # a tracked stream: what DEST will hold is recorded beside it (deststate), unless
        # only a selection of the tree is received
        self.track = track
        self.recorder: deststate.Recorder | None = None
        self._header = None
        self._end = None
        self._creates = 0

    # -- set-up and tear-down ---------------------------------------------------------------

    def begin(self, header) -> None:
        if header.required_features & Feature.INCREMENTAL:
            raise DestinationError("the stream is incremental: it changes a tree received before, and this"
                                   " receiver builds only new trees from full streams",
                                   hint="receive a full stream (rawsend send without --state) into a new DEST")
        fd = self.ns.begin()
        self._header = header
        if self.track and header.optional_features & Feature.TRACKED:
            try:
                self.recorder = deststate.Recorder(self.dest)
            except (OSError, sqlite3.Error) as e:
                raise DestinationError(f"cannot record what DEST holds: {e.strerror}",
                                       path=str(deststate.state_dir(self.dest))) from None
        self.writer = pick_writer(fd, self.report, self.encoded_writes)
        st = os.fstat(fd)
        # new files get our euid and, also below a setgid or grpid directory, this gid
        if st.st_uid == os.geteuid() and st.st_gid == os.getegid():
            self._owner_as_created = (st.st_uid, st.st_gid)

    def abort(self) -> None:
        self._close_file()
        self.durable.close()
        if self.recorder is not None:
            self.recorder.abort()
            self.recorder = None
        self.ns.abort()

    def _close_file(self) -> None:
        if self._cur_fd >= 0:
            os.close(self._cur_fd)
            self._cur_fd = -1

    @property
    def dir_opens(self) -> int:
        """Directories opened so far (the cost the fd cache saves)."""
        return self.ns.dir_opens

    # -- records ------------------------------------------------------------------------------

    def create(self, rec: Create) -> None:
        self._finish_file()
        self.ns.add(rec)
        self._cur_id, self._cur_rec = rec.file_id, rec
        self._creates += 1
        if self.recorder is not None and rec.file_id != ROOT_ID:
            self.recorder.name(rec.parent_id, rec.name, rec.file_id)
        if rec.file_id == ROOT_ID:
            self.ns.dirs.append(ROOT_ID)
            return
        try:
            parent_fd = self.ns.dir_fd(rec.parent_id)  # O_NOFOLLOW: a symlink here is an error
            if rec.type == _MKDIR:
                os.mkdir(rec.name, 0o700, dir_fd=parent_fd)
                self.ns.dirs.append(rec.file_id)
            elif rec.type == _MKFILE:
                self._cur_fd = os.open(rec.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                       | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
                self.writer.start_file(self._cur_fd, rec.size)
                # before its xattrs: chown clears security.capability; a new file has none yet,
                # so a chown to the owner it already has is skipped
                if self.policy.preserve_owner and (rec.uid, rec.gid) != self._owner_as_created:
                    os.fchown(self._cur_fd, rec.uid, rec.gid)
            elif rec.type == _SYMLINK:
                os.symlink(rec.target, rec.name, dir_fd=parent_fd)
                self._apply_symlink_meta(rec, parent_fd)
                self._record_entry(rec, parent_fd)
            elif rec.type == _MKNOD:
                self._mknod(rec, parent_fd)
        except OSError as e:
            raise self._os_error(e, rec.file_id) from None

    def _record_entry(self, rec: Create, parent_fd: int) -> None:
        if self.recorder is not None:
            self.recorder.file(rec.file_id, deststate.row_of(os.stat(rec.name, dir_fd=parent_fd,
                                                                     follow_symlinks=False)))

    def _mknod(self, rec: Create, parent_fd: int) -> None:
        if not self.policy.special_allowed(rec):
            if self.recorder is not None:  # its name is held, its inode is not on disk
                self.recorder.file(rec.file_id, deststate.FileRow(stat.S_IFMT(rec.mode), 0, 0, rec.mtime_ns))
            return
        os.mknod(rec.name, stat.S_IFMT(rec.mode) | 0o600, rec.size, dir_fd=parent_fd)
        if self.policy.preserve_owner:
            os.chown(rec.name, rec.uid, rec.gid, dir_fd=parent_fd, follow_symlinks=False)
        # after chown, which clears setuid and setgid; mknod's mode went through the umask
        os.chmod(rec.name, self.policy.mode(rec), dir_fd=parent_fd, follow_symlinks=False)
        os.utime(rec.name, ns=(rec.atime_ns, rec.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
        self._record_entry(rec, parent_fd)

    def _apply_symlink_meta(self, rec: Create, parent_fd: int) -> None:
        if self.policy.preserve_owner:
            os.chown(rec.name, rec.uid, rec.gid, dir_fd=parent_fd, follow_symlinks=False)
        os.utime(rec.name, ns=(rec.atime_ns, rec.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def link(self, rec: Link) -> None:
        self._finish_file()
        self._cur_id, self._cur_rec = 0, None
        if self.recorder is not None:
            self.recorder.name(rec.parent_id, rec.name, rec.file_id)
        src = self.ns.nodes[rec.file_id]
        try:
            src_fd = self.ns.dir_fd(src.parent_id)
            # Opening the destination may refill the cache: were the source's fd closed, a
            # directory opened after it would get its number, and the name would be looked up
            # there (a link to another file of that name, or to a symlink).
            with self.ns.hold(src.parent_id):
                dst_fd = self.ns.dir_fd(rec.parent_id)
            os.link(src.name, rec.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except OSError as e:
            raise self._os_error(e, rec.file_id) from None

    def xattr(self, rec: SetXattr) -> None:
        cur = self._cur_rec
        refusal = self.policy.xattr_refusal(rec.name)
        if refusal is not None:
            self._skip_xattr(rec, refusal)
            return
        try:
            if cur.type == _MKFILE:
                os.setxattr(self._cur_fd, rec.name, rec.value)
            elif cur.type == _MKDIR:
                os.setxattr(self.ns.dir_fd(rec.file_id), rec.name, rec.value)
            elif cur.type == _SYMLINK:
                # no fd can be opened on a symlink itself: go through the parent's fd
                path = f"/proc/self/fd/{self.ns.dir_fd(cur.parent_id)}/{os.fsdecode(cur.name)}"
                os.setxattr(path, rec.name, rec.value, follow_symlinks=False)
            else:
                self.report.skipped_xattrs += 1
                return
            self.policy.xattr_set(rec.name)
        except OSError as e:
            # ENOSPC, E2BIG, ERANGE: more or larger xattrs than this filesystem holds (ext4)
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.EINVAL, errno.ENOSPC,
                           errno.E2BIG, errno.ERANGE):
                self._skip_xattr(rec, e.strerror)
            else:
                raise self._os_error(e, rec.file_id) from None

    def _skip_xattr(self, rec: SetXattr, why: str) -> None:
        self.report.skipped_xattrs += 1
        if len(self.report.warnings) < 20:
            self.report.warnings.append(f"{self.ns.path(rec.file_id)}: xattr {os.fsdecode(rec.name)} not set: {why}")

    def wants_encoded(self, rec: Extent) -> bool:
        # Every compressed extent comes here still encoded: the writer writes it verbatim
        # where btrfs takes it, else decodes it, and counts which and why.
        return rec.compression != _NO_COMPRESSION

    def extent_encoded(self, rec: Extent, payload) -> None:
        """Write one compressed extent: verbatim with ENCODED_WRITE, or decoded with pwrite."""
        try:
            self.writer.write_encoded(rec, payload)
        except OSError as e:
            raise self._os_error(e, rec.file_id) from None
        self.durable.written += len(payload)  # decoded or not: at least this much was written

    def extent(self, rec: Extent, data) -> None:
        try:
            self.writer.write(rec.offset, data)
        except OSError as e:
            raise self._os_error(e, rec.file_id) from None
        self.durable.written += len(data)

    def _finish_file(self) -> None:
        if self._cur_fd < 0:
            return
        rec, fd = self._cur_rec, self._cur_fd
        self._cur_fd = -1
        try:
            self.writer.finish_file()
            mode = self.policy.mode(rec)
            os.fchmod(fd, mode)
            os.utime(fd, ns=(rec.atime_ns, rec.mtime_ns))
            if self.recorder is not None:
                self.recorder.file(rec.file_id, deststate.row_of(os.fstat(fd)))
            if self.sync:
                self.durable.file_done(fd, rec.file_id, mode)
        except FsyncFailed as e:
            raise self._os_error(e.error, e.file_id) from None
        except OSError as e:
            raise self._os_error(e, rec.file_id) from None
        finally:
            os.close(fd)

    def commit(self) -> None:
        self._finish_file()
        # What this receive wrote goes to disk before the rename (durable.py): each file and
        # directory fsynced, or one syncfs where that is cheaper.  Either also reports a failed
        # encoded write: its data goes to disk after the ioctl returned.
        durable = self.durable
        whole_fs = self.sync and durable.use_syncfs(len(self.ns.dirs))
        per_file = self.sync and not whole_fs
        try:
            if per_file:  # while every directory can still be searched: before their modes
                durable.fsync_files(self.ns)
                durable.wait()
            # deepest first: a child always has a larger id than its parent, so read-only
            # directories get their mode only after everything inside them is written
            for dir_id in sorted(self.ns.dirs, reverse=True):
                rec = self.ns.nodes[dir_id].rec
                fd = self.ns.dir_fd(dir_id)
                if self.policy.preserve_owner:
                    os.fchown(fd, rec.uid, rec.gid)
                os.fchmod(fd, self.policy.mode(rec))
                os.utime(fd, ns=(rec.atime_ns, rec.mtime_ns))
                if self.recorder is not None:
                    self.recorder.file(dir_id, deststate.row_of(os.fstat(fd)))
                if per_file:  # its entries and attributes, now final
                    durable.directory(fd, dir_id)
            if whole_fs:
                syncfs(self.ns.root_fd)
            durable.wait()
        except FsyncFailed as e:
            raise self._os_error(e.error, e.file_id) from None
        except OSError as e:
            raise self._os_error(e, 0) from None
        finally:
            durable.close()
        if self.ns.subvolume:  # after its last write: read-only from here on
            uuid, stransid = received_identity(self._header)
            self.ns.finish_subvolume(uuid, stransid, self._header.created_ns)
            test_hook("subvolume")
        if self.recorder is not None:
            # before the rename, which keeps the inode: a DEST in place always has its state
            self._commit_state()
        self.ns.rename_into_place(self.sync)

    def end(self, end) -> None:
        """END, checked: its digest names the tree a later incremental stream changes."""
        self._end = end

    def _commit_state(self) -> None:
        header = self._header
        held = deststate.Held(0, header.stream_id, self._end.digest, 2, self._creates + 1, header.created_ns,
                              deststate.now_ns(), header.key_id if header.encrypted else None)
        try:
            self.recorder.commit(self.ns.root_fd, held)
        except OSError as e:
            raise self._os_error(e, 0) from None
        except sqlite3.Error as e:
            raise DestStateError(f"cannot record what DEST holds: {e}",
                                 path=str(deststate.state_dir(self.dest))) from None
        self.recorder = None

    def _os_error(self, e: OSError, file_id: int) -> RawsendError:
        path = self.ns.where(file_id)
        if e.errno == errno.ENOSPC:
            return DestinationError("no space left on the destination", path=path,
                                    hint="free space and receive again; nothing was kept")
        if e.errno == errno.EEXIST:
            return MalformedRecord("the stream creates the same name twice in one directory",
                                   path=path)
        return DestinationError(e.strerror or str(e), path=path)
