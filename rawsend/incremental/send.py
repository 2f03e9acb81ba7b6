"""A send with STATE: a full stream marked ``tracked``, or an incremental one against a stream
STATE holds.

    send = TrackedSend.open(state_path, src, parent=prefix)  # STATE locked; the parent's manifest read
    send.scan(...)                                           # SRC walked, diffed, new ids numbered
    stats = send.send(write, ...)                            # the stream written and flushed
    send.commit(keep)                                        # only now: the manifest recorded
    send.close()

The file ids the stream carries are the ids STATE records.  New inodes get their ids in the
order their create records are emitted, from ``first_id`` on (2 in a full stream, whose root
is 1; STATE's counter in an incremental one), so they are dense in stream order as the format
requires.  A file whose data changed is read again and only the extents whose keyed digest
differs from the parent's are sent, after an UPDATE_FILE; ranges that held data and are holes
now are punched.  The new file's data is cut at the parent's extent boundaries, so an append
sends the tail only and a 4 KiB overwrite one extent.
"""

from __future__ import annotations

import bisect
import errno
import gc
import os
import stat
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from rawsend.errors import ChangedWhileRead, Replaced, SendWarning, SourceError, Unreadable, Vanished
from rawsend.fsutil import data_regions
from rawsend.incremental import diff as ops
from rawsend.incremental.diff import GRANULARITY_NS, ExtentMatcher, Plan, diff
from rawsend.incremental.manifest import Entry, FileIds, Scan, ScanReport, scan
from rawsend.incremental.state import DEFAULT_KEEP, State, StreamInfo
from rawsend.pipeline import SendStats
from rawsend.pipeline import send as pipeline_send
from rawsend.sources.items import DataChunk
from rawsend.stream import records as rec
from rawsend.stream.records import MAX_EXTENT_LEN, ROOT_ID, Feature, RecordType

CHUNK = MAX_EXTENT_LEN  # extents of at most 128 KiB, as the tree source cuts them
READ_AHEAD = 8               # extents read and digested ahead of the stream, at most (1 MiB)
THREADED_FROM = 8 * CHUNK    # files with less data are read on the main thread: a hand-off costs more

_CREATE_TYPE = {stat.S_IFDIR: RecordType.MKDIR, stat.S_IFREG: RecordType.MKFILE, stat.S_IFLNK: RecordType.SYMLINK,
                stat.S_IFCHR: RecordType.MKNOD, stat.S_IFBLK: RecordType.MKNOD, stat.S_IFIFO: RecordType.MKNOD}

# the summary's change counts, by operation class
KINDS = {ops.Create: "created", ops.Link: "linked", ops.Unlink: "unlinked", ops.Rmdir: "removed dirs",
         ops.Rename: "renamed", ops.Truncate: "truncated", ops.DataChanged: "re-read", ops.Chown: "chowned",
         ops.Chmod: "chmoded", ops.SetXattr: "xattrs set", ops.RemoveXattr: "xattrs removed",
         ops.Utimes: "times set"}


@dataclass
class TrackedStats:
    """What the summary says beyond SendStats."""

    changes: dict[str, int] = field(default_factory=dict)   # KINDS value -> operations
    files_read: int = 0          # regular files read (new or changed)
    bytes_read: int = 0
    extents_sent: int = 0        # of the files read, extents sent
    extents_unchanged: int = 0   # ... and extents whose digest was the parent's
    holes_punched: int = 0
    warnings: list = field(default_factory=list)  # SendWarning, as the tree source reports them


class TrackedSend:
    """One send with STATE; see the module docstring for the calls, in order."""

    def __init__(self, state: State, parent: StreamInfo | None, old: dict[int, Entry]):
        self.state, self.parent, self.old = state, parent, old
        self.ids: FileIds = state.file_ids(old)
        # the full stream's ids count from 2 after the root; an incremental one's from STATE's counter,
        # above every id any stream of STATE used
        self.first_id = self.ids.next_id if parent is not None else ROOT_ID + 1
        self.plan: Plan | None = None
        self.now: Scan | None = None
        self.report = ScanReport()
        self.stats = TrackedStats()
        self.recording = None
        self.sent: SendStats | None = None
        self._root_fd: int | None = None
        self._dirs = _DirCache()
        self._pool: ThreadPoolExecutor | None = None  # readers of large changed files, made when first needed
        self._scratch = None  # a dry run's throwaway STATE

    @classmethod
    def open(cls, state_path, src, *, parent: str | None = None, warn: Callable[[str], None] | None = None,
             dry_run: bool = False) -> "TrackedSend":
        """Open and lock STATE, pick the parent (the newest stream, or ``parent``, an id prefix).

        ``dry_run`` with no STATE yet: a throwaway one, so that nothing is created."""
        scratch = None
        if dry_run and not os.path.lexists(state_path):
            scratch = tempfile.TemporaryDirectory(prefix="rawsend-dry-run-")
            state_path = os.path.join(scratch.name, "STATE")
        try:
            state = State.open(state_path, src, warn=warn)
        except BaseException:
            if scratch is not None:
                scratch.cleanup()
            raise
        try:
            info = state.pick_parent(parent)
            with _gc_paused():
                old = state.manifest(info) if info is not None else {}
                send = cls(state, info, old)
            send._scratch = scratch
            return send
        except BaseException:
            state.close()
            if scratch is not None:
                scratch.cleanup()
            raise

    @property
    def incremental(self) -> bool:
        return self.parent is not None

    def scan(self, src, *, one_file_system: bool = False, exclude=None, skip_inodes=None) -> Plan:
        """Walk SRC, diff it against the parent and give the new inodes their ids in stream order."""
        try:
            self._root_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SourceError(e.strerror, path=os.fspath(src), hint="give a directory that exists and can be read") \
                from None
        self.src = os.fspath(src)
        skip_inodes = dict(skip_inodes or {})
        st = os.fstat(self.state._fd)  # STATE inside SRC changes as it is written: never sent
        skip_inodes[(st.st_dev, st.st_ino)] = self.state.path
        # the parent's xattrs and birth times hold for inodes whose ctime is the parent's, outside the race guard
        trusted = self.parent.started_ns - GRANULARITY_NS if self.parent else 0
        with _gc_paused():
            now = scan(src, self.ids, self.state.digester, one_file_system=one_file_system, report=self.report,
                       exclude=exclude, skip_inodes=skip_inodes, trusted_before_ns=trusted)
            plan = diff(self.old, now, parent_started_ns=self.parent.started_ns if self.parent else 0)
            self.plan, self.scanned = _renumber(plan, now, self.first_id)
        self.now = now
        for op in self.plan.ops:
            kind = KINDS[type(op)]
            self.stats.changes[kind] = self.stats.changes.get(kind, 0) + 1
        return self.plan

    def bytes_to_read(self) -> int:
        return sum(self.plan.entries[fid].size for fid in self.plan.reread)

    def send(self, write: Callable[[bytes], None], *, compression: int, level: int, threads: int | None = None,
             sealer=None, progress: Callable[[int], None] | None = None, label=None) -> SendStats:
        """Write the whole stream through ``write`` (the last byte flushed when this returns);
        ``label``: a records.Label, record 2."""
        assert self.plan is not None, "scan() first"
        self.recording = self.state.begin(self.ids, self.parent, self.now.started_ns)
        self._snapshot = _snapshot_identity(self.src)
        self.recording.snapshot = self._snapshot  # a later 'send -p SRC SNAP' finds this stream by it
        required = Feature.INCREMENTAL if self.incremental else 0
        self.sent = pipeline_send(self._items(progress), write, compression=compression, level=level,
                                  threads=threads, sealer=sealer, required=required, optional=Feature.TRACKED,
                                  label=label)
        return self.sent

    def commit(self, keep: int = DEFAULT_KEEP) -> StreamInfo:
        """Record the stream's manifest in STATE: call it only once the stream is written and flushed."""
        return self.recording.commit(self.sent.stream_id, self.sent.end_digest, keep=keep)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._dirs.close()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        self.state.close()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> "TrackedSend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the records ------------------------------------------------------------------------

    def _items(self, progress) -> Iterator:
        plan, parent = self.plan, self.parent
        self._recorded: set[int] = set()   # entries recorded with the extents read
        self._touched: set[int] = set()    # base files whose data records were sent: their mtime is reset
        created: set[int] = set()          # new inodes: their data and xattrs follow their create
        dirs: set[int] = set()             # directories whose entries change: their mtime is reset
        timed: set[int] = set()
        if parent is not None:
            yield rec.Base(parent.stream_id, parent.end_digest, self.first_id)
        noted = self._snapshot is None or parent is not None  # 'send -p' names the parent snapshot too
        for op in plan.ops:
            t = type(op)
            if t is ops.Create:
                created.add(op.file_id)
                dirs.add(op.parent_id)
                items = self._create(op, progress)
                if not noted:  # record 2 (3 after LABEL): right after the root
                    noted = True
                    yield next(items)
                    yield rec.SnapshotNote(*self._snapshot, bytes(16), 0)
                yield from items
            elif t is ops.Link:
                dirs.add(op.parent_id)
                yield rec.Link(op.file_id, op.parent_id, op.name)
            elif t is ops.Unlink:
                dirs.add(op.parent_id)
                yield rec.Unlink(op.file_id, op.parent_id, op.name)
            elif t is ops.Rmdir:
                dirs.add(op.parent_id)
                yield rec.Rmdir(op.file_id, op.parent_id, op.name)
            elif t is ops.Rename:
                dirs.update((op.parent_id, op.to_parent_id))
                yield rec.Rename(op.file_id, op.parent_id, op.name, op.to_parent_id, op.to_name)
            elif t is ops.Truncate:
                self._touched.add(op.file_id)
                yield rec.Truncate(op.file_id, op.size)
            elif t is ops.DataChanged:
                if op.file_id in created:
                    continue  # sent right after its MKFILE
                yield from self._data(op.file_id, plan.entries[op.file_id], op.parent_extents, progress,
                                      update=True)
            elif t is ops.Chown:
                yield rec.Chown(op.file_id, op.uid, op.gid)
            elif t is ops.Chmod:
                yield rec.Chmod(op.file_id, op.mode)
            elif t is ops.SetXattr:
                if op.file_id in created:
                    continue  # sent right after its create
                yield rec.SetXattr(op.file_id, op.name, op.value)
            elif t is ops.RemoveXattr:
                yield rec.RemoveXattr(op.file_id, op.name)
            elif t is ops.Utimes:
                if parent is None:
                    continue  # a full stream's creates carry the times, applied after the contents
                old = self.old.get(op.file_id)
                if (old is not None and old.mtime_ns == op.mtime_ns and op.file_id not in self._touched
                        and op.file_id not in dirs):
                    continue  # re-read (the race guard, a rename's ctime) and found unchanged: nothing to restore
                timed.add(op.file_id)
                yield rec.Utimes(op.file_id, op.atime_ns, op.mtime_ns)
        if parent is not None:
            # a directory the receiver changed though its mtime here did not (the root, which held a
            # name parked to break a rename cycle): its times as they are here
            for fid in sorted(dirs - timed):
                if fid in plan.entries:
                    yield rec.Utimes(fid, self.scanned[fid].atime_ns, plan.entries[fid].mtime_ns)
        for fid, entry in plan.entries.items():
            if fid not in self._recorded:
                self.recording.add(entry)

    def _create(self, op: ops.Create, progress) -> Iterator:
        e = op.entry
        kind = e.kind
        size = e.size if kind in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK) else 0
        yield rec.Create(_CREATE_TYPE[kind], op.file_id, op.parent_id, op.name, e.mode, e.uid, e.gid,
                         op.atime_ns, e.mtime_ns, size, op.target)
        if kind == stat.S_IFREG and e.size:
            yield from self._data(op.file_id, e, (), progress, update=False)
        if e.xattrs:  # right after the create: in a full stream they belong to the current file
            values = self.scanned[op.file_id].xattr_values
            for name, _ in e.xattrs:
                yield rec.SetXattr(op.file_id, name, values[name])

    def _data(self, fid: int, entry: Entry, parent_extents, progress, *, update: bool) -> Iterator:
        """The file's extents that the parent does not have, and its stale ranges punched; records
        the entry with the digests of every extent read."""
        path = self.scanned[fid].path
        shown = os.path.join(self.src, os.fsdecode(path))
        fd = self._open(path, entry, shown)
        self._recorded.add(fid)
        if fd is None:  # not in the stream: the receiver keeps what it had, and the next send reads it again
            self.recording.add(_poisoned(entry, parent_extents))
            return
        size = entry.size
        self.stats.files_read += 1
        matcher = ExtentMatcher(parent_extents)
        lens = {o: n for o, n, _ in parent_extents}
        starts = sorted(lens)
        extents: list = []
        pending = [rec.UpdateFile(fid, size)] if update else []  # sent before the first record that needs it
        failed_at = None
        reads = None
        try:
            regions = _regions(fd, size, shown)
            stale = matcher.stale(tuple((s, e - s, b"") for s, e in regions), size) if parent_extents else []
            si = 0
            reads = self._reads(fd, _cuts(regions, lens, starts), sum(e - s for s, e in regions))
            for pos, n, data, digest in reads:
                while si < len(stale) and stale[si][0] < pos:  # the holes before this data region
                    yield from pending
                    pending = []
                    self._touched.add(fid)
                    yield rec.PunchHole(fid, stale[si][0], stale[si][1] - stale[si][0])
                    self.stats.holes_punched += 1
                    si += 1
                if data is None:  # digest: the OSError
                    self.stats.warnings.append(Unreadable(shown, f"read at byte {pos}: {digest.strerror}"))
                    failed_at = pos
                    break
                if progress is not None:
                    progress(len(data))
                self.stats.bytes_read += len(data)
                if data:
                    extents.append((pos, len(data), digest))
                    if matcher.unchanged(pos, len(data), digest):
                        self.stats.extents_unchanged += 1
                    else:
                        yield from pending
                        pending = []
                        self._touched.add(fid)
                        yield DataChunk(fid, pos, data)
                        self.stats.extents_sent += 1
                if len(data) < n:
                    self.stats.warnings.append(ChangedWhileRead(shown, "shrank"))
                    failed_at = pos + len(data)
                    break
            if failed_at is None:
                for s, e in stale[si:]:
                    yield from pending
                    pending = []
                    self._touched.add(fid)
                    yield rec.PunchHole(fid, s, e - s)
                    self.stats.holes_punched += 1
                after = os.fstat(fd)
                if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (size, entry.mtime_ns, entry.ctime_ns):
                    self.stats.warnings.append(ChangedWhileRead(shown, "changed"))
        finally:
            if reads is not None:
                reads.close()  # waits for the reads in flight: none may use fd once it is closed
            os.close(fd)
        if failed_at is None:
            self.recording.add(entry.with_extents(tuple(extents)))
        else:  # the receiver holds what was sent up to there, and the parent's bytes after it
            kept = tuple(x for x in parent_extents if x[0] >= failed_at)
            self.recording.add(_poisoned(entry, tuple(extents) + kept))

    def _reads(self, fd: int, cuts: Iterator[tuple[int, int]], data_bytes: int) -> Iterator[tuple]:
        """(offset, length, data, digest) of each extent in ``cuts``, in order, reading stopping at
        the first error: (offset, length, None, the OSError).  A file with much data is read and
        digested READ_AHEAD extents ahead on two threads (pread and BLAKE2b of a large buffer
        release the GIL), so the digests of a large changed file take half the wall time."""
        digest = self.state.digester.extent
        if data_bytes < THREADED_FROM:
            for pos, n in cuts:
                try:
                    data = os.pread(fd, n, pos)
                except OSError as e:
                    yield pos, n, None, e
                    return
                yield pos, n, data, digest(data) if data else b""
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rawsend-digest")
        submit = self._pool.submit
        ahead: deque = deque()
        try:
            for pos, n in cuts:
                ahead.append((pos, n, submit(_read_digest, fd, pos, n, digest)))
                if len(ahead) < READ_AHEAD:
                    continue
                pos, n, done = ahead.popleft()
                result = done.result()
                yield pos, n, *result
                if result[0] is None:
                    return
            while ahead:
                pos, n, done = ahead.popleft()
                result = done.result()
                yield pos, n, *result
                if result[0] is None:
                    return
        finally:
            for *_, f in ahead:
                f.cancel()
            wait([f for *_, f in ahead])

    def _open(self, path: bytes, entry: Entry, shown: str) -> int | None:
        """The file the scan found at ``path``, opened through its directories without following
        a symlink; None (with a warning) when it is gone or another file is there now."""
        head, _, name = path.rpartition(b"/")
        try:
            dir_fd = self._dirs.open(self._root_fd, head)
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            self.stats.warnings.append(Vanished(shown))
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                self.stats.warnings.append(Replaced(shown))
            else:
                self.stats.warnings.append(Unreadable(shown, f"open it: {e.strerror}"))
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (entry.dev, entry.ino):
            os.close(fd)
            self.stats.warnings.append(Replaced(shown))
            return None
        return fd


@contextmanager
def _gc_paused():
    """The cyclic garbage collector off while a manifest or a scan is built: tens of thousands of
    tuples that hold no cycles, which every collection would walk again (a quarter of the CPU
    time of loading, scanning and diffing)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _snapshot_identity(src) -> tuple[bytes, int] | None:
    """(uuid, ctransid) as btrfs send names SRC, when SRC is a read-only btrfs snapshot; else None."""
    from rawsend.btrfs.subvol import subvol_info
    try:
        info = subvol_info(src)
    except (OSError, ValueError):
        return None
    return info.send_identity if info.readonly else None


def _poisoned(entry: Entry, extents) -> Entry:
    """The entry with a ctime no file has, so the next send reads the file again."""
    return entry._replace(ctime_ns=-1, extents=tuple(extents))


def _read_digest(fd: int, pos: int, n: int, digest) -> tuple:
    """(data, digest) of ``n`` bytes at ``pos``, or (None, the OSError): on a reader thread."""
    try:
        data = os.pread(fd, n, pos)
    except OSError as e:
        return None, e
    return data, digest(data) if data else b""


def _cuts(regions, lens: dict, starts: list) -> Iterator[tuple[int, int]]:
    """(offset, length) of the extents the data regions are read in (see _cut)."""
    for start, end in regions:
        pos = start
        while pos < end:
            n = _cut(pos, end, lens, starts)
            yield pos, n
            pos += n


def _cut(pos: int, end: int, lens: dict, starts: list) -> int:
    """Length of the extent at ``pos``: the parent's extent there when it still fits, else up to
    128 KiB, stopping at the next parent extent so that the ones after line up again."""
    n = lens.get(pos)
    if n is not None and pos + n <= end:
        return n
    n = min(CHUNK, end - pos)
    i = bisect.bisect_right(starts, pos)
    if i < len(starts) and starts[i] < pos + n:
        n = starts[i] - pos
    return n


def _regions(fd: int, size: int, shown: str) -> list[tuple[int, int]]:
    """The data regions [start, end) of the file (holes never read)."""
    try:
        return list(data_regions(fd, size))
    except OSError as e:
        raise SourceError(f"seek failed: {e.strerror}", path=shown) from None


class _DirCache:
    """The directories along the last path opened, so files read in walk order cost one open each."""

    def __init__(self):
        self._chain: list[tuple[bytes, int]] = []  # (component, fd), from the root down

    def open(self, root_fd: int, head: bytes) -> int:
        parts = head.split(b"/") if head else []
        keep = 0
        while keep < len(parts) and keep < len(self._chain) and self._chain[keep][0] == parts[keep]:
            keep += 1
        for _, fd in self._chain[keep:]:
            os.close(fd)
        del self._chain[keep:]
        fd = self._chain[-1][1] if self._chain else root_fd
        for part in parts[keep:]:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            self._chain.append((part, fd))
        return fd

    def close(self) -> None:
        for _, fd in self._chain:
            os.close(fd)
        self._chain = []


# -- numbering new inodes in stream order -------------------------------------------------

def _renumber(plan: Plan, now: Scan, first_id: int):
    """Give the new inodes (those with a Create) the ids ``first_id``, ``first_id + 1``, ... in
    the order of their Create operations; the root keeps id 1.  Returns the plan and the scanned
    entries by the new ids."""
    ids: dict[int, int] = {}
    k = first_id
    for op in plan.ops:
        if type(op) is ops.Create and op.file_id != ROOT_ID:
            ids[op.file_id] = k
            k += 1
    if all(a == b for a, b in ids.items()):
        return plan, now.entries
    m = ids.get

    def entry(e: Entry) -> Entry:
        fid, names = e[0], e[9]
        for p, _ in names:
            if p in ids:
                names = tuple(sorted((m(p, p), n) for p, n in names))
                break
        else:
            if fid not in ids:
                return e  # most inodes: neither they nor their directories are new
        return e._replace(file_id=m(fid, fid), names=names)

    new_ops = []
    for op in plan.ops:
        changes = {}
        for f in ("file_id", "parent_id", "to_parent_id"):
            v = getattr(op, f, None)
            if v is not None and v in ids:
                changes[f] = ids[v]
        if type(op) is ops.Create:
            changes["entry"] = entry(op.entry)
        new_ops.append(replace(op, **changes) if changes else op)
    entries = {m(fid, fid): entry(e) for fid, e in plan.entries.items()}
    scanned = {m(fid, fid): s for fid, s in now.entries.items()}
    return Plan(new_ops, entries, {m(f, f) for f in plan.reread}), scanned


def warnings_of(send: TrackedSend) -> list:
    """Every warning of the send, the scan's (text) and the reads' (SendWarning), in that order."""
    return list(send.report.warnings) + list(send.stats.warnings)


__all__ = ["TrackedSend", "TrackedStats", "KINDS", "SendWarning", "warnings_of"]
