"""An incremental stream between two read-only btrfs snapshots, diffed by the kernel.

    with SnapshotSend.open(state_path, snap, parent_snap) as ss:   # checks, STATE locked
        stats = ss.send(write, compression=..., level=...)          # the stream written and flushed
        ss.commit(keep)                                             # only now: STATE records it

The base is the stream STATE recorded as sent from PARENT_SNAP (found by the snapshot's
btrfs identity, received_uuid or uuid with its ctransid).  BTRFS_IOC_SEND with NO_FILE_DATA
and the parent's root id gives the kernel's diff: namespace commands by path (orphan names and
delayed moves included) and UPDATE_EXTENT ranges instead of data.  Its commands are replayed
on a SendTree started from the base's manifest, so each becomes a record that names its inode
by file id; the data of exactly the UPDATE_EXTENT ranges (and of CLONE ranges: a CLONE record
is not defined yet) is read from SNAP, compressed extents with ENCODED_READ as they lie on
disk.  The kernel's stream is spooled and checked whole before anything is emitted
(rawsend.btrfs.send), and read twice: once to learn every inode's final path in SNAP (where
its sizes, modes and data are read), once to emit.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from rawsend import btrfs
from rawsend.btrfs import sendstream as ss
from rawsend.btrfs.send import send_to_file
from rawsend.btrfs.sendstream import SendStreamReader
from rawsend.btrfs.sendtree import ROOT_INO, Inode, SendTree
from rawsend.btrfs.subvol import NO_UUID, SubvolInfo, subvol_info
from rawsend.errors import SourceError
from rawsend.incremental.manifest import Entry, birth_time
from rawsend.incremental.state import DEFAULT_KEEP, State, StreamInfo
from rawsend.pipeline import SendStats
from rawsend.pipeline import send as pipeline_send
from rawsend.sources.btrfs import BtrfsSource, BtrfsSourceReport
from rawsend.stream import records as rec
from rawsend.stream.records import ROOT_ID, Feature, RecordType


class SnapshotError(SourceError):
    """cannot send the btrfs snapshot: {detail}"""

    hint = "give read-only snapshots of one subvolume: 'btrfs subvolume snapshot -r'"


class NotReadOnly(SnapshotError):
    """btrfs snapshot is not read-only: {detail}"""

    hint = "send a read-only snapshot ('btrfs subvolume snapshot -r SUBVOL SNAP'), or send without -p"


class OtherLineage(SnapshotError):
    """btrfs snapshots are not of one subvolume: {detail}"""

    hint = "give as -p a snapshot of the same subvolume as SNAP, taken before it"


class ParentNotSent(SnapshotError):
    """-p names a snapshot STATE holds no stream of: {detail}"""

    hint = ("send that snapshot first ('rawsend send --state STATE PARENT_SNAP'), or give as -p a snapshot"
            " STATE lists")


KIND = {ss.MKFILE: RecordType.MKFILE, ss.MKDIR: RecordType.MKDIR, ss.SYMLINK: RecordType.SYMLINK,
        ss.MKNOD: RecordType.MKNOD, ss.MKFIFO: RecordType.MKNOD}
_IGNORED = (ss.SNAPSHOT, ss.END)


@dataclass
class SnapshotStats:
    changes: dict[str, int] = field(default_factory=dict)   # kernel command name -> count
    commands: int = 0            # in the kernel's stream, END included
    kernel_bytes: int = 0        # its length (no file data)
    ranges: int = 0              # UPDATE_EXTENT and CLONE ranges read
    range_bytes: int = 0
    attempts: int = 1            # BTRFS_IOC_SEND calls (2: the first was discarded)


class SnapshotSend:
    """See the module docstring for the calls, in order."""

    def __init__(self, state: State, base: StreamInfo, snap: str, snap_info: SubvolInfo, parent_info: SubvolInfo):
        self.state, self.base, self.snap = state, base, snap
        self.snap_info, self.parent_info = snap_info, parent_info
        self.old = state.manifest(base)
        self.ids = state.file_ids(self.old)
        self.first_id = self.ids.next_id
        self.stats = SnapshotStats()
        self.recording = None
        self.sent: SendStats | None = None
        self._spool = None
        self._root_fd: int | None = None

    @classmethod
    def open(cls, state_path, snap, parent_snap, *, warn: Callable[[str], None] | None = None) -> "SnapshotSend":
        snap, parent_snap = os.fspath(snap), os.fspath(parent_snap)
        snap_info = _info(snap, "SNAP")
        parent_info = _info(parent_snap, "-p")
        for path, info in ((snap, snap_info), (parent_snap, parent_info)):
            if not info.readonly:
                raise NotReadOnly("the kernel sends only read-only snapshots (it could change while sent)",
                                  path=path)
        if snap_info.root_id == parent_info.root_id:
            raise OtherLineage("SNAP and -p are the same subvolume", path=snap)
        if snap_info.parent_uuid == NO_UUID or snap_info.parent_uuid not in (parent_info.parent_uuid,
                                                                             parent_info.uuid):
            raise OtherLineage(f"{snap} is a snapshot of {_uuid(snap_info.parent_uuid)}, {parent_snap} is"
                               f" {_uuid(parent_info.uuid)}, a snapshot of {_uuid(parent_info.parent_uuid)}",
                               path=snap)
        state = State.open(state_path, None, create=False, warn=warn)
        try:
            uuid, ctransid = parent_info.send_identity
            base = state.snapshot_stream(uuid, ctransid)
            if base is None:
                known = ", ".join(f"{_uuid(u)} ctransid {c}" for u, c in state.snapshots().values()) or "none"
                raise ParentNotSent(f"{parent_snap} is {_uuid(uuid)} ctransid {ctransid}; STATE holds streams of"
                                    f" the snapshots: {known}", path=state.path)
            return cls(state, base, snap, snap_info, parent_info)
        except BaseException:
            state.close()
            raise

    # -- the kernel's diff ----------------------------------------------------------------

    def diff(self) -> None:
        """Run BTRFS_IOC_SEND into a spool (checked whole) and replay it once for the final tree."""
        self._spool = tempfile.TemporaryFile(prefix="rawsend-btrfs-send-")
        try:
            result = send_to_file(self.snap, self._spool, parent=self.parent_info.root_id, version=1,
                                  no_file_data=True)
        except BaseException:
            self._spool.close()
            self._spool = None
            raise
        self.stats.commands, self.stats.kernel_bytes, self.stats.attempts = \
            result.commands, result.bytes, result.attempts
        tree = self._tree()
        self.touched: set[int] = set()
        for cmd in self._commands():
            if cmd.cmd == ss.SNAPSHOT:
                self._check_identity(cmd)
            ino = tree.apply(cmd)
            if ino is not None:
                self.touched.add(ino)
                self.stats.changes[cmd.name] = self.stats.changes.get(cmd.name, 0) + 1
        self.final = tree
        self._root_fd = os.open(self.snap, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._stat: dict[int, os.stat_result] = {}
        for ino in self.touched:
            path = tree.path(ino)
            if path is None:
                continue  # gone in SNAP
            st = os.lstat(path or ".", dir_fd=self._root_fd)
            if st.st_ino != ino:
                raise SnapshotError(f"the kernel's stream puts inode {ino} at {os.fsdecode(path)!r}, where SNAP has"
                                    f" inode {st.st_ino}", path=self.snap)
            self._stat[ino] = st

    def _check_identity(self, cmd) -> None:
        want = (self.snap_info.send_identity, self.parent_info.send_identity)
        got = ((cmd["uuid"].bytes, cmd["ctransid"]), (cmd["clone_uuid"].bytes, cmd["clone_ctransid"]))
        if got != want:
            raise SnapshotError(f"the kernel's stream names snapshot {_uuid(got[0][0])} against"
                                f" {_uuid(got[1][0])}, not the ones asked for", path=self.snap)

    def _commands(self) -> Iterator[ss.SendCommand]:
        self._spool.seek(0)
        reader = SendStreamReader(self._spool)
        for cmd in reader:
            if cmd.cmd == ss.SUBVOL:
                raise SnapshotError("the kernel sent a full stream, not one against -p", path=self.snap)
            yield cmd

    def _tree(self) -> SendTree:
        """The namespace of the base as the kernel sees the parent snapshot: STATE's manifest by inode."""
        tree = SendTree()
        self.ino_of: dict[int, int] = {}
        fid_of: dict[int, int] = {}
        for fid, e in self.old.items():
            if fid == ROOT_ID:
                self.ino_of[fid] = ROOT_INO
                continue
            if e.ino in fid_of or e.ino == ROOT_INO:
                raise SnapshotError(f"inode {e.ino} is more than one file of the base (a hard-linked symlink or"
                                    " special file): send it with the walk ('send --state' without -p)",
                                    path=self.snap)
            fid_of[e.ino] = fid
            self.ino_of[fid] = e.ino
            tree.inodes[e.ino] = Inode(e.ino, _kind(e.mode))
        for fid, e in self.old.items():
            if fid == ROOT_ID:
                continue
            for parent, name in e.names:
                tree._link(tree.inodes[e.ino], self.ino_of[parent], name)
        self.fid_of = fid_of
        fid_of[ROOT_INO] = ROOT_ID
        return tree

    # -- the stream ------------------------------------------------------------------------

    def send(self, write: Callable[[bytes], None], *, compression: int, level: int, threads: int | None = None,
             sealer=None, label=None) -> SendStats:
        if self._spool is None:
            self.diff()
        self.recording = self.state.begin(self.ids, self.base, time.time_ns())
        self.recording.snapshot = self.snap_info.send_identity
        self.sent = pipeline_send(self._items(), write, compression=compression, level=level, threads=threads,
                                  sealer=sealer, required=Feature.INCREMENTAL, optional=Feature.TRACKED,
                                  label=label)
        return self.sent

    def commit(self, keep: int = DEFAULT_KEEP) -> StreamInfo:
        """Record the stream in STATE: call it only once the stream is written and flushed."""
        return self.recording.commit(self.sent.stream_id, self.sent.end_digest, keep=keep)

    def _items(self) -> Iterator:
        yield rec.Base(self.base.stream_id, self.base.end_digest, self.first_id)
        yield rec.SnapshotNote(*self.snap_info.send_identity, *self.parent_info.send_identity)
        tree = self._tree()
        fid_of = self.fid_of
        sizes = {fid: e.size for fid, e in self.old.items() if stat.S_ISREG(e.mode)}
        created: set[int] = set()
        current = None        # the file EXTENT and PUNCH_HOLE records change, and how far they reached
        reader = _RangeReader(self.snap)
        for cmd in self._commands():
            c = cmd.cmd
            if c in _IGNORED:
                continue
            if c in (ss.RENAME, ss.UNLINK, ss.RMDIR, ss.LINK) or c in KIND or c == ss.MKSOCK:
                current = None  # extents follow an UPDATE_FILE after any change of names
            if c in KIND or c == ss.MKSOCK:
                parent, name = self._slot(tree, cmd["path"])
                ino = tree.apply(cmd)
                if c == ss.MKSOCK:
                    continue  # sockets are not sent (as the walk leaves them out)
                fid = fid_of[ino] = self.ids.new()
                created.add(fid)
                st = self._stat[ino]
                size = st.st_size if c == ss.MKFILE else (st.st_rdev if c == ss.MKNOD else 0)
                if c == ss.MKFILE:
                    sizes[fid] = size
                yield rec.Create(KIND[c], fid, fid_of[parent], name, st.st_mode, st.st_uid, st.st_gid,
                                 st.st_atime_ns, st.st_mtime_ns, size,
                                 cmd["path_link"] if c == ss.SYMLINK else b"")
                continue
            if c == ss.RENAME:
                ino = tree.lookup(cmd["path"])
                src, to = self._slot(tree, cmd["path"]), self._slot(tree, cmd["path_to"])
                tree.apply(cmd)
                if ino in fid_of:
                    yield rec.Rename(fid_of[ino], fid_of[src[0]], src[1], fid_of[to[0]], to[1])
                continue
            if c in (ss.UNLINK, ss.RMDIR):
                ino = tree.lookup(cmd["path"])
                parent, name = self._slot(tree, cmd["path"])
                tree.apply(cmd)
                if ino in fid_of:
                    yield (rec.Unlink if c == ss.UNLINK else rec.Rmdir)(fid_of[ino], fid_of[parent], name)
                continue
            if c == ss.LINK:
                parent, name = self._slot(tree, cmd["path"])
                ino = tree.apply(cmd)
                if ino in fid_of:
                    yield rec.Link(fid_of[ino], fid_of[parent], name)
                continue
            ino = tree.apply(cmd)
            fid = fid_of.get(ino)
            if fid is None:
                continue  # a socket
            if c == ss.SET_XATTR:
                yield rec.SetXattr(fid, cmd["xattr_name"], cmd["xattr_data"])
            elif c == ss.REMOVE_XATTR:
                yield rec.RemoveXattr(fid, cmd["xattr_name"])
            elif c == ss.CHOWN:
                yield rec.Chown(fid, cmd["uid"], cmd["gid"])
            elif c == ss.CHMOD:
                yield rec.Chmod(fid, cmd["mode"] & 0o7777)
            elif c == ss.UTIMES:
                pass  # every changed inode's times are sent last, from SNAP
            elif c == ss.TRUNCATE:
                if sizes.get(fid) != cmd["size"]:
                    sizes[fid] = cmd["size"]
                    current = None
                    yield rec.Truncate(fid, cmd["size"])
            elif c in (ss.UPDATE_EXTENT, ss.CLONE):
                offset = cmd["file_offset"]
                length = cmd["size"] if c == ss.UPDATE_EXTENT else cmd["clone_len"]
                final = self._stat[ino].st_size
                if sizes.get(fid) != final:  # the file's final size first: extents end within it
                    sizes[fid] = final
                    current = None
                    yield rec.Truncate(fid, final)
                end = min(offset + length, final)
                if current is not None and current[0] == fid and current[1].covers(offset, end):
                    continue  # sent already (a compressed extent goes whole)
                if current is None or current[0] != fid or offset < current[1].reached:
                    # records of one UPDATE_FILE go up in offset order: a range before the last needs another
                    current = (fid, _Sent())
                    yield rec.UpdateFile(fid, final)
                sent = current[1]
                start = max(offset, sent.reached)
                if start < end:
                    self.stats.ranges += 1
                    self.stats.range_bytes += end - start
                    reached = yield from reader.range(ino, self.final.path(ino), fid, start, end, final,
                                                      punch=fid not in created)
                    sent.add(start, reached)
            else:
                raise SnapshotError(f"the kernel's stream has a {cmd.name} command (record {cmd.index}), which a"
                                    " stream without file data should not have", path=self.snap)
        reader.close()
        for ino in sorted(self.touched):  # times last, after everything that changes them
            fid = fid_of.get(ino)
            st = self._stat.get(ino)
            if fid is not None and st is not None:
                yield rec.Utimes(fid, st.st_atime_ns, st.st_mtime_ns)
        self._record(tree)

    @staticmethod
    def _slot(tree: SendTree, path: bytes) -> tuple[int, bytes]:
        head, _, name = path.rpartition(b"/")
        return tree.lookup(head), name

    def _record(self, tree: SendTree) -> None:
        """The new manifest: the base's entries of the inodes the kernel did not mention, new
        entries (from SNAP) of those it did.  Their extent digests are not known (the data was
        not read whole): the entries carry none and a ctime no file has, so a send by the walk
        would read those files again."""
        digester = self.state.digester
        for fid, e in self.old.items():
            ino = self.ino_of[fid]
            if ino not in self.touched:
                self.recording.add(e)
        for ino in self.touched:
            st = self._stat.get(ino)
            fid = self.fid_of.get(ino)
            if st is None or fid is None:
                continue
            names = tuple(sorted((self.fid_of[p], n) for p, n in tree.inodes[ino].links)) if ino != ROOT_INO \
                else self.old[ROOT_ID].names
            path = tree.path(ino)
            where = os.path.join(os.fsencode(self.snap), path) if path else os.fsencode(self.snap)
            kind = stat.S_IFMT(st.st_mode)
            xattrs, extents, ctime = (), (), st.st_ctime_ns
            if kind in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                xattrs = tuple((n, digester.xattr_value(v)) for n, v in _xattrs(where))
            if kind == stat.S_IFREG:
                ctime = -1
            elif kind == stat.S_IFLNK:
                target = os.readlink(where)
                extents = ((0, len(target), digester.symlink_target(target)),)
            size = st.st_size if kind == stat.S_IFREG else (st.st_rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0)
            old = self.old.get(fid)
            btime = old.btime_ns if old is not None else _btime(where)
            dev = old.dev if old is not None else st.st_dev
            self.recording.add(Entry(fid, dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns,
                                     ctime, names, xattrs, extents, btime))

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        self.state.close()

    def __enter__(self) -> "SnapshotSend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Sent:
    """The ranges one UPDATE_FILE's records covered, in increasing order."""

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    @property
    def reached(self) -> int:
        return self.ends[-1] if self.ends else 0

    def add(self, start: int, end: int) -> None:
        if self.ends and self.ends[-1] == start:
            self.ends[-1] = end
        else:
            self.starts.append(start)
            self.ends.append(end)

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start) - 1
        return start >= end or (i >= 0 and self.ends[i] >= end)


class _RangeReader:
    """Ranges of SNAP's files as EXTENT items (compressed extents as they lie on disk) and holes."""

    def __init__(self, snap: str):
        self.snap = os.fsencode(snap)
        self.report = BtrfsSourceReport()
        self.source = BtrfsSource(snap, self.report)
        if not btrfs.has_cap_sys_admin():
            self.source._stop_raw("reading compressed btrfs extents as they lie on disk needs CAP_SYS_ADMIN")
        self._open: tuple[int, int] | None = None   # (ino, fd)

    def _fd(self, ino: int, path: bytes) -> int:
        if self._open is not None and self._open[0] == ino:
            return self._open[1]
        self.close()
        fd = os.open(os.path.join(self.snap, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._open = (ino, fd)
        return fd

    def range(self, ino: int, path: bytes, fid: int, start: int, end: int, size: int, *, punch: bool):
        """Yield the items of [start, end); return the offset they reached (a compressed extent
        is sent whole, so this may be past ``end``)."""
        shown = os.fsdecode(os.path.join(self.snap, path))
        fd = self._fd(ino, path)
        src = self.source
        sector = src._btrfs_sector_size(fd, os.fstat(fd).st_dev) if src.raw else None
        pos = start
        for ext in btrfs.fiemap(fd, start, end - start):
            s, e = max(ext.logical, pos), min(ext.end, size)
            if s >= end:
                break
            if s >= e or ext.flags & btrfs.FIEMAP_EXTENT_UNWRITTEN:
                continue
            if s > pos and punch:
                yield rec.PunchHole(fid, pos, s - pos)
            if sector is not None and ext.flags & btrfs.FIEMAP_EXTENT_ENCODED:
                reached = yield from src._encoded_range(fd, fid, s, min(e, end), size, sector, shown)
            else:
                reached = min(e, end) if (yield from src._read_range(fd, fid, s, min(e, end), shown)) else None
            if reached is None or self.report.warnings:
                why = self.report.warnings[0] if self.report.warnings else "a read failed"
                raise SnapshotError(f"cannot read the snapshot: {why}", path=shown)
            pos = reached
        if pos < end and punch:
            yield rec.PunchHole(fid, pos, end - pos)
        return max(pos, end)

    def close(self) -> None:
        if self._open is not None:
            os.close(self._open[1])
            self._open = None


def _info(path: str, what: str) -> SubvolInfo:
    try:
        return subvol_info(path)
    except ValueError as e:
        raise SnapshotError(f"{what}: {e}", path=path) from None
    except OSError as e:
        detail = "not on btrfs" if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP) else e.strerror
        raise SnapshotError(f"{what}: {detail}", path=path) from None


def _kind(mode: int) -> str:
    return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
            stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(mode), "node")


def _uuid(b: bytes) -> str:
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _xattrs(path: bytes) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for n in sorted(os.fsencode(n) for n in names):
        try:
            out.append((n, os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            pass
    return out


def _btime(path: bytes) -> int:
    head, name = os.path.split(path)
    fd = os.open(head or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return birth_time(fd, name)
    finally:
        os.close(fd)
