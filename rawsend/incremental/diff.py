"""The change operations that turn a parent stream's tree into the tree now.

``diff(parent, scan)`` returns a ``Plan``: the operations a sender emits, in an order a
receiver can apply one by one, and the entries of the new manifest.  Operations address
inodes by persistent file id (spec/incremental.md) and also carry the path each one
acts on at that point of the stream, for receivers and messages that want paths.

Order.  Namespace operations first:

1. unlink the names that go away from inodes that go away or lose a hard link;
2. then, as each becomes possible: rename or move (a name whose target is still taken
   waits; a directory never moves into its own subtree), create a new inode at its first
   name and link its others, link names added to an inode, rmdir a directory once it is
   empty (so children always go before their parents);
3. when nothing more is possible (a cycle: a and b swapped, or a moved under its own
   child), one waiting rename moves to a temporary name in the root first.  Every inode
   moves to a temporary name at most once, and once all waiting ones have, everything
   left is possible: the new tree has no cycle.

Then per inode, in the walk order of the tree now: truncate, data, chown, chmod,
xattrs; utimes last, after every operation that touches a directory's mtime.

A regular file's data is unchanged when type, size, mtime, ctime and inode match the
parent's (restic's rule) and its times are not within ``GRANULARITY_NS`` of the parent
scan's start (borg's race guard: a change in the same timestamp tick as the parent read
would leave the times equal).  Otherwise it gets a DataChanged: the sender reads it, and
an ExtentMatcher keeps the extents whose keyed digest is the parent's from being sent.
"""

from __future__ import annotations

import stat
from collections import Counter
from dataclasses import dataclass, replace

from rawsend.incremental.manifest import Entry, Extent, Name, Scan, Scanned, path_of
from rawsend.stream.records import ROOT_ID

# Coarsest local timestamp granularity (FAT: 2 s; ext4, xfs, btrfs tick at most every 10 ms).
GRANULARITY_NS = 2_000_000_000
_IFMT = 0o170000
TEMP_PREFIX = b".rawsend-tmp-"


# -- operations -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Create:
    """A new inode at its first name; ``entry`` has its type, mode, owner, size or rdev."""
    file_id: int
    parent_id: int
    name: bytes
    path: bytes
    entry: Entry
    atime_ns: int
    target: bytes = b""      # symlink text


@dataclass(frozen=True, slots=True)
class Link:
    """Another name for an existing (non-directory) inode."""
    file_id: int
    parent_id: int
    name: bytes
    path: bytes


@dataclass(frozen=True, slots=True)
class Unlink:
    """Remove one name of a non-directory (its last name: the inode goes)."""
    file_id: int
    parent_id: int
    name: bytes
    path: bytes


@dataclass(frozen=True, slots=True)
class Rmdir:
    """Remove an empty directory."""
    file_id: int
    parent_id: int
    name: bytes
    path: bytes


@dataclass(frozen=True, slots=True)
class Rename:
    """Move one name of an inode; the target name is free when this op comes."""
    file_id: int
    parent_id: int
    name: bytes
    to_parent_id: int
    to_name: bytes
    path: bytes
    to_path: bytes


@dataclass(frozen=True, slots=True)
class Truncate:
    file_id: int
    size: int
    path: bytes


@dataclass(frozen=True, slots=True)
class DataChanged:
    """Read the file and send the extents ``ExtentMatcher(parent_extents)`` does not know.

    ``reason``: "new", "size", "mtime", "ctime", "inode" (the root directory replaced) or "racy"
    (times within the race guard).
    It may end up sending nothing: a renamed file has a new ctime but the same extents.
    """
    file_id: int
    size: int
    parent_extents: tuple[Extent, ...]
    reason: str
    path: bytes


@dataclass(frozen=True, slots=True)
class Chown:
    file_id: int
    uid: int
    gid: int
    path: bytes


@dataclass(frozen=True, slots=True)
class Chmod:
    file_id: int
    mode: int            # permission bits (S_IMODE)
    path: bytes


@dataclass(frozen=True, slots=True)
class SetXattr:
    file_id: int
    name: bytes
    value: bytes
    path: bytes


@dataclass(frozen=True, slots=True)
class RemoveXattr:
    file_id: int
    name: bytes
    path: bytes


@dataclass(frozen=True, slots=True)
class Utimes:
    file_id: int
    atime_ns: int
    mtime_ns: int
    path: bytes


Op = (Create | Link | Unlink | Rmdir | Rename | Truncate | DataChanged | Chown | Chmod | SetXattr
      | RemoveXattr | Utimes)


def describe(op) -> str:
    """One line per operation, paths as they are at that point: for tests, logs and dumps."""
    def p(path: bytes) -> str:
        return path.decode("utf-8", "backslashreplace") or "."
    match op:
        case Create():
            kind = {stat.S_IFDIR: "mkdir", stat.S_IFREG: "mkfile", stat.S_IFLNK: "symlink"}.get(op.entry.kind, "mknod")
            return f"{kind} {p(op.path)}"
        case Link():
            return f"link {p(op.path)} #{op.file_id}"
        case Unlink():
            return f"unlink {p(op.path)}"
        case Rmdir():
            return f"rmdir {p(op.path)}"
        case Rename():
            return f"rename {p(op.path)} -> {p(op.to_path)}"
        case Truncate():
            return f"truncate {p(op.path)} {op.size}"
        case DataChanged():
            return f"data {p(op.path)} ({op.reason})"
        case Chown():
            return f"chown {p(op.path)} {op.uid}:{op.gid}"
        case Chmod():
            return f"chmod {p(op.path)} {op.mode:o}"
        case SetXattr():
            return f"setxattr {p(op.path)} {op.name.decode(errors='backslashreplace')}"
        case RemoveXattr():
            return f"removexattr {p(op.path)} {op.name.decode(errors='backslashreplace')}"
        case Utimes():
            return f"utimes {p(op.path)}"
    raise TypeError(op)


# -- extents of a re-read file --------------------------------------------------------------

class ExtentMatcher:
    """Which extents of a re-read file must be sent, from the parent's digests.

    The sender calls ``unchanged(offset, length, digest)`` for every extent of plain data it
    reads (digest from Digester.extent) and sends those for which it is False; after the
    last, ``stale(extents, size)`` gives the ranges that held data in the parent and are
    holes now (below ``size``), to punch.
    """

    def __init__(self, parent_extents: tuple[Extent, ...]):
        self._known = {(o, n): d for o, n, d in parent_extents}
        self._parent = parent_extents

    def unchanged(self, offset: int, length: int, digest: bytes) -> bool:
        return self._known.get((offset, length)) == digest

    def stale(self, extents: tuple[Extent, ...], size: int) -> list[tuple[int, int]]:
        covered = sorted((o, o + n) for o, n, _ in extents)
        out: list[tuple[int, int]] = []
        for o, n, _ in self._parent:
            start, end = o, min(o + n, size)
            for c_start, c_end in covered:
                if c_end <= start or c_start >= end:
                    continue
                if c_start > start:
                    _add_range(out, start, c_start)
                start = max(start, c_end)
                if start >= end:
                    break
            if start < end:
                _add_range(out, start, end)
        return out


def _add_range(out: list, start: int, end: int) -> None:
    if out and out[-1][1] == start:
        out[-1] = (out[-1][0], end)
    else:
        out.append((start, end))


# -- the plan -------------------------------------------------------------------------------

@dataclass
class Plan:
    ops: list
    entries: dict[int, Entry]   # the new manifest; files with a DataChanged still need extents
    reread: set[int]            # file ids with a DataChanged

    def entry(self, file_id: int, extents: tuple[Extent, ...] | None = None) -> Entry:
        """The new manifest's entry, with the extents the sender digested when it re-read it."""
        e = self.entries[file_id]
        return e if extents is None else e.with_extents(extents)

    def lines(self) -> list[str]:
        return [describe(op) for op in self.ops]


def diff(parent: dict[int, Entry], scan: Scan, *, parent_started_ns: int = 0) -> Plan:
    """Operations from ``parent`` (a manifest; {} for a full stream) to ``scan``."""
    new = {fid: s.entry for fid, s in scan.entries.items()}
    ops: list = []
    reread: set[int] = set()
    entries: dict[int, Entry] = {}
    _Namespace(parent, new, scan.entries, ops).run()
    new_paths = _Paths(new)
    utimes = []
    racy_from = parent_started_ns - GRANULARITY_NS
    get_old = parent.get
    for fid, scanned in scan.entries.items():
        e = scanned.entry
        old = get_old(fid)
        if old is e:  # the scan found the parent's regular file unchanged (manifest._Scanner._walk)
            entries[fid] = e
            if e.size and (e.mtime_ns >= racy_from or e.ctime_ns >= racy_from):  # _data_reason's "racy"
                path = new_paths[fid]
                ops.append(DataChanged(fid, e.size, old.extents, "racy", path))
                reread.add(fid)
                utimes.append(Utimes(fid, scanned.atime_ns, e.mtime_ns, path))
            continue
        path = new_paths[fid]
        if old is not None and old.kind != e.kind:
            old = None  # cannot happen with FileIds, kept safe: treat as new
        entries[fid] = e
        if old is None:
            if stat.S_ISREG(e.mode) and e.size:
                ops.append(DataChanged(fid, e.size, (), "new", path))
                reread.add(fid)
            if e.xattrs:
                ops.extend(SetXattr(fid, n, scanned.xattr_values[n], path) for n, _ in e.xattrs)
            utimes.append(Utimes(fid, scanned.atime_ns, e.mtime_ns, path))
            continue
        if stat.S_ISREG(e.mode):
            reason = _data_reason(old, e, parent_started_ns)
            if e.size != old.size:
                ops.append(Truncate(fid, e.size, path))
            if reason is None:
                entries[fid] = e.with_extents(old.extents)
            elif e.size:  # an empty file has no extents to read
                ops.append(DataChanged(fid, e.size, old.extents, reason, path))
                reread.add(fid)
        chown = (e.uid, e.gid) != (old.uid, old.gid)
        if chown:
            ops.append(Chown(fid, e.uid, e.gid, path))
        if stat.S_IMODE(e.mode) != stat.S_IMODE(old.mode) or (
                chown and e.mode & (stat.S_ISUID | stat.S_ISGID)):  # chown clears setuid/setgid
            ops.append(Chmod(fid, stat.S_IMODE(e.mode), path))
        if old.xattrs != e.xattrs:
            old_x, new_x = dict(old.xattrs), dict(e.xattrs)
            ops.extend(RemoveXattr(fid, n, path) for n in old_x if n not in new_x)
            ops.extend(SetXattr(fid, n, scanned.xattr_values[n], path) for n, d in e.xattrs if old_x.get(n) != d)
        if e.mtime_ns != old.mtime_ns or fid in reread:
            utimes.append(Utimes(fid, scanned.atime_ns, e.mtime_ns, path))
    ops.extend(utimes)
    return Plan(ops, entries, reread)


class _Paths:
    """file id -> the path of its first name in ``entries`` (as walk_paths), worked out only for
    the ids asked for: most inodes of an incremental send have no operation to name."""

    def __init__(self, entries: dict[int, Entry]):
        self.entries = entries
        self.known: dict[int, bytes] = {}

    def __getitem__(self, fid: int) -> bytes:
        return path_of(self.entries, fid, self.known)


def _data_reason(old: Entry, new: Entry, parent_started_ns: int) -> str | None:
    if new.size != old.size:
        return "size"
    if new.mtime_ns != old.mtime_ns:
        return "mtime"
    if new.ctime_ns != old.ctime_ns:
        return "ctime"
    if (new.dev, new.ino) != (old.dev, old.ino):
        return "inode"
    if max(old.mtime_ns, old.ctime_ns) >= parent_started_ns - GRANULARITY_NS:
        return "racy"
    return None


class _NamesNow(dict):
    """file id -> the set of its names now; an inode not touched yet has its parent names."""

    def __init__(self, old: dict[int, Entry]):
        super().__init__()
        self.old = old

    def __missing__(self, fid: int) -> set:
        names = self[fid] = set(self.old[fid].names)
        return names


class _Namespace:
    """Simulates the receiver's tree while ordering the namespace operations."""

    def __init__(self, old: dict[int, Entry], new: dict[int, Entry], scanned: dict[int, Scanned], ops: list):
        self.old, self.new, self.scanned, self.ops = old, new, scanned, ops
        # built in bulk from the parent; most inodes keep their names and are never looked at again
        self.slot: dict[Name, int] = {n: fid for fid, e in old.items() for n in e.names}  # (parent, name) -> id
        self.names = _NamesNow(old)               # file id -> its names now
        self.children: dict[int, int] = Counter(p for e in old.values() for p, _ in e.names)  # dir -> names in it
        dirs = [(fid, e.names[0][0]) for fid, e in old.items() if e.mode & _IFMT == stat.S_IFDIR]
        self.dirs = {0, *(fid for fid, _ in dirs)}  # directories that exist (0: above the root)
        self.parent_of: dict[int, int] = dict(dirs)  # directory -> its parent directory
        self._new_root_names: set | None = None

    @property
    def new_root_names(self) -> set:
        if self._new_root_names is None:
            self._new_root_names = {n for e in self.new.values() for p, n in e.names if p == ROOT_ID}
        return self._new_root_names

    # the simulated tree

    def _put(self, fid: int, e: Entry) -> None:
        self.names[fid] = set()
        if e.is_dir:
            self.dirs.add(fid)

    def _add_name(self, fid: int, n: Name) -> None:
        self.slot[n] = fid
        self.names[fid].add(n)
        self.children[n[0]] = self.children.get(n[0], 0) + 1
        if fid in self.dirs:
            self.parent_of[fid] = n[0]

    def _drop_name(self, fid: int, n: Name) -> None:
        del self.slot[n]
        self.names[fid].discard(n)
        self.children[n[0]] -= 1

    def path(self, n: Name) -> bytes:
        parts = []
        parent, name = n
        while parent != 0:
            parts.append(name)
            up = self.names_of_dir(parent)
            parent, name = up
        return b"/".join(reversed(parts))

    def names_of_dir(self, fid: int) -> Name:
        (n,) = self.names[fid]
        return n

    def _inside(self, directory: int, fid: int) -> bool:
        """Whether ``directory`` is ``fid`` or under it, now."""
        while directory != 0:
            if directory == fid:
                return True
            directory = self.parent_of.get(directory, 0)
        return False

    def _can_take(self, fid: int | None, n: Name) -> bool:
        parent = n[0]
        if n in self.slot or parent not in self.dirs:
            return False
        return fid is None or fid not in self.dirs or not self._inside(parent, fid)

    # ordering

    def run(self) -> None:
        old, new = self.old, self.new
        removed, renames, links, creates, rmdirs = [], {}, [], [], []
        for fid, e in old.items():
            now = new.get(fid)
            if now is None:
                if e.is_dir:
                    rmdirs.append(fid)
                else:
                    removed.extend((fid, n) for n in e.names)
                continue
            if now is e or now.names == e.names:
                continue
            gone = sorted(set(e.names) - set(now.names))
            added = sorted(set(now.names) - set(e.names))
            for src, dst in zip(gone, added):
                renames[src] = (fid, dst)
            removed.extend((fid, n) for n in gone[len(added):])
            links.extend((fid, n, False) for n in added[len(gone):])
        for fid, e in new.items():  # walk order: a directory before what is in it
            if fid not in old:
                creates.append((fid, e.names[0], True))
                creates.extend((fid, n, False) for n in e.names[1:])
        for fid, n in sorted(removed, key=lambda r: self.path(r[1])):
            self.ops.append(Unlink(fid, n[0], n[1], self.path(n)))
            self._drop_name(fid, n)
        pending_links = links + creates
        rmdirs.sort(key=lambda fid: (-self.path(self.names_of_dir(fid)).count(b"/"), self.path(self.names_of_dir(fid))))
        temp_moved: set[Name] = set()
        while renames or pending_links or rmdirs:
            progress = False
            for src in sorted(renames, key=lambda s: self.path(renames[s][1]) if renames[s][1][0] in self.dirs else b""):
                fid, dst = renames[src]
                if self._can_take(fid, dst):
                    self._rename(fid, src, dst)
                    del renames[src]
                    progress = True
            still = []
            for fid, n, first in pending_links:
                if (first or fid in self.names or fid in old) and self._can_take(None, n):
                    if first:
                        self._create(fid, n)
                    else:
                        self.ops.append(Link(fid, n[0], n[1], self.path(n)))
                        self._add_name(fid, n)
                    progress = True
                else:
                    still.append((fid, n, first))
            pending_links = still
            left = []
            for fid in rmdirs:
                if self.children.get(fid, 0) == 0:
                    n = self.names_of_dir(fid)
                    self.ops.append(Rmdir(fid, n[0], n[1], self.path(n)))
                    self._drop_name(fid, n)
                    self.dirs.discard(fid)
                    progress = True
                else:
                    left.append(fid)
            rmdirs = left
            if not progress:
                self._park(renames, temp_moved)

    def _park(self, renames: dict, temp_moved: set) -> None:
        """Move one waiting rename to a temporary name in the root, to break a cycle."""
        wanted = {dst for _, dst in renames.values()}
        candidates = [s for s in renames if s not in temp_moved]
        if not candidates:
            raise RuntimeError(f"namespace operations cannot be ordered: {len(renames)} renames left")
        blocking = [s for s in candidates if s in wanted] or candidates
        src = min(blocking, key=self.path)
        fid, dst = renames.pop(src)
        i = 0
        while True:
            tmp = (ROOT_ID, TEMP_PREFIX + b"%d" % fid + (b"-%d" % i if i else b""))
            if tmp not in self.slot and tmp[1] not in self.new_root_names:
                break
            i += 1
        self._rename(fid, src, tmp)
        renames[tmp] = (fid, dst)
        temp_moved.add(tmp)

    def _rename(self, fid: int, src: Name, dst: Name) -> None:
        op = Rename(fid, src[0], src[1], dst[0], dst[1], self.path(src), b"")
        self._drop_name(fid, src)
        self._add_name(fid, dst)
        self.ops.append(replace(op, to_path=self.path(dst)))

    def _create(self, fid: int, n: Name) -> None:
        s = self.scanned[fid]
        self._put(fid, s.entry)
        self._add_name(fid, n)
        self.ops.append(Create(fid, n[0], n[1], self.path(n), s.entry, s.atime_ns, s.target))
