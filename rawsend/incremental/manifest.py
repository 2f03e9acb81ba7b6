"""Manifest entries (one per inode) and the scanner that takes them from a tree.

An ``Entry`` is what STATE keeps about one inode of one stream: the inode's identity
(dev, ino), its persistent file id, its names as (parent file id, name), its attributes,
keyed digests of its xattr values and of its extents (for a symlink: of its target).
File contents, xattr values and link targets are never stored.

``scan()`` walks SRC by the rules of rawsend.sources.tree (names in byte order, lstat,
never following a symlink, sockets left out, specials without xattrs) and, by default,
stays on SRC's filesystem.  A regular file is one entry however many names it has; the
names of a hard-linked symlink, FIFO or device are separate entries, as a full stream sends
them (its LINK names only regular files).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from rawsend.errors import SourceError
from rawsend.incremental.digest import DIGEST_LEN, Digester
from rawsend.stream.records import MAX_NAME_LEN, ROOT_ID

Name = tuple[int, bytes]                 # (parent file id, name); the root is (0, b"")
Extent = tuple[int, int, bytes]          # (offset, length, digest)
XattrDigest = tuple[bytes, bytes]        # (name, digest of the value)

ROOT_NAME: Name = (0, b"")
FIRST_FILE_ID = ROOT_ID + 1              # the root is always ROOT_ID, whatever its inode

# -- blob layouts (the names, xattrs and extents columns of STATE) ------------------------

NAME_ENTRY = struct.Struct("<QH")        # parent file id u64, name length u16; then the name
XATTR_ENTRY = struct.Struct("<H")        # name length u16; then the name, then a 16-byte digest
EXTENT_ENTRY = struct.Struct(f"<QI{DIGEST_LEN}s")  # offset u64, length u32, digest


class BlobError(ValueError):
    """A names, xattrs or extents blob does not parse (STATE turns it into StateDamaged)."""


def pack_names(names: tuple[Name, ...]) -> bytes:
    return b"".join(NAME_ENTRY.pack(p, len(n)) + n for p, n in names)


def unpack_names(blob: bytes) -> tuple[Name, ...]:
    out, pos = [], 0
    while pos < len(blob):
        if len(blob) - pos < NAME_ENTRY.size:
            raise BlobError(f"names cut short at byte {pos}")
        parent, n = NAME_ENTRY.unpack_from(blob, pos)
        pos += NAME_ENTRY.size
        if len(blob) - pos < n:
            raise BlobError(f"name at byte {pos} longer than the blob")
        out.append((parent, bytes(blob[pos:pos + n])))
        pos += n
    if not out:
        raise BlobError("no names")
    return tuple(out)


def pack_xattrs(xattrs: tuple[XattrDigest, ...]) -> bytes | None:
    if not xattrs:
        return None  # most files have none: a NULL costs one byte
    return b"".join(XATTR_ENTRY.pack(len(n)) + n + d for n, d in xattrs)


def unpack_xattrs(blob: bytes | None) -> tuple[XattrDigest, ...]:
    if blob is None:
        return ()
    out, pos = [], 0
    while pos < len(blob):
        if len(blob) - pos < XATTR_ENTRY.size:
            raise BlobError(f"xattrs cut short at byte {pos}")
        (n,) = XATTR_ENTRY.unpack_from(blob, pos)
        pos += XATTR_ENTRY.size
        if not 0 < n <= 255 or len(blob) - pos < n + DIGEST_LEN:
            raise BlobError(f"xattr name length {n} at byte {pos} does not fit")
        out.append((bytes(blob[pos:pos + n]), bytes(blob[pos + n:pos + n + DIGEST_LEN])))
        pos += n + DIGEST_LEN
    return tuple(out)


def pack_extents(extents: tuple[Extent, ...]) -> bytes | None:
    if not extents:
        return None
    return b"".join(EXTENT_ENTRY.pack(*e) for e in extents)


def unpack_extents(blob: bytes | None) -> tuple[Extent, ...]:
    if blob is None:
        return ()
    if len(blob) % EXTENT_ENTRY.size:
        raise BlobError(f"extents blob of {len(blob)} bytes is not a multiple of {EXTENT_ENTRY.size}")
    return tuple(EXTENT_ENTRY.iter_unpack(blob))


# -- the entry ------------------------------------------------------------------------------

class Entry(NamedTuple):
    """One inode in one stream's manifest.

    A tuple: a manifest of many inodes is built, compared and copied field by field in C
    (a frozen dataclass costs several times as much per entry)."""

    file_id: int
    dev: int
    ino: int
    mode: int          # st_mode: type and permission bits
    uid: int
    gid: int
    size: int          # regular file: st_size; device: st_rdev; others 0
    mtime_ns: int
    ctime_ns: int
    names: tuple[Name, ...]                 # sorted; a directory has exactly one
    xattrs: tuple[XattrDigest, ...] = ()    # sorted by name
    extents: tuple[Extent, ...] = ()        # data extents in offset order; symlink: its target
    btime_ns: int = 0                       # birth time (statx), 0 where the filesystem has none

    @property
    def kind(self) -> int:
        return self[3] & _IFMT

    @property
    def is_dir(self) -> bool:
        return self[3] & _IFMT == stat.S_IFDIR

    def with_extents(self, extents: tuple[Extent, ...]) -> "Entry":
        """This entry with other extents."""
        return _new_entry(Entry, (*self[:11], tuple(extents), self[12]))

    def identity(self):
        """What cannot change while an inode lives: a symlink's target, a device's number."""
        if stat.S_ISLNK(self.mode):
            return self.extents
        if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode):
            return self.size
        return None


_IFMT = 0o170000
_new_entry = tuple.__new__  # Entry from a tuple of its 13 fields, without the keyword parsing of Entry()


@dataclass
class ScanReport:
    """What scan() counted, and what it has to say (as one line each) about single entries."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    specials: int = 0
    logical_bytes: int = 0
    excluded: int = 0  # paths left out by exclude patterns (a directory counts once)
    warnings: list[str] = field(default_factory=list)  # an entry that could not be read: send warns
    notices: list[str] = field(default_factory=list)   # left out on purpose (sockets, other filesystems)

    def warn(self, text: str) -> None:
        self.warnings.append(text)


_NO_VALUES: dict = {}  # the xattr values of an entry whose xattrs were not read: shared, never written


@dataclass(slots=True)
class Scanned:
    """An entry as found by scan(), with what a sender needs and STATE does not keep."""

    entry: Entry
    atime_ns: int
    target: bytes = b""                                     # symlink text
    xattr_values: dict[bytes, bytes] = field(default_factory=dict)
    paths: list[bytes] = field(default_factory=list)        # relative to SRC, as found

    @property
    def path(self) -> bytes:
        return self.paths[0]


@dataclass
class Scan:
    """A tree as it is now: entries by file id, in walk order (parents before children)."""

    root: Path
    started_ns: int
    entries: dict[int, Scanned]
    report: ScanReport


class FileIds:
    """Gives each inode its persistent file id.

    ``known`` maps (dev, ino) to the parent manifest's entry.  An inode keeps its id when
    it is still there with the same type (and, for a symlink or a device, the same target
    or device number, which cannot change in place); anything else is a new inode and gets
    a new id from a counter that STATE keeps and never winds back, so an id is never given
    to two inodes within a chain of streams.
    """

    def __init__(self, known: dict[tuple[int, int], Entry], next_id: int):
        self.known = known
        self.next_id = max(next_id, FIRST_FILE_ID)
        self._given: set[int] = set()  # a kept id goes to one inode only

    def new(self) -> int:
        file_id = self.next_id
        self.next_id += 1
        return file_id

    def assign(self, dev: int, ino: int, mode: int, btime_ns: int, identity=None) -> int:
        """The file id of the inode (dev, ino); a birth time that differs from the parent's means
        the inode number was freed and given to a new file."""
        old = self.known.get((dev, ino))
        if (old is not None and old.file_id != ROOT_ID and old.kind == stat.S_IFMT(mode)
                and old.identity() == identity and old.btime_ns == btime_ns and old.file_id not in self._given):
            self._given.add(old.file_id)
            return old.file_id
        return self.new()


# -- the scanner ----------------------------------------------------------------------------

_KEPT = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO)


def _entry(file_id: int, st, names, size: int = 0, xattrs=(), extents=(), btime_ns: int = 0) -> Entry:
    return Entry(file_id, st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, size,
                 st.st_mtime_ns, st.st_ctime_ns, names, xattrs, extents, btime_ns)


# statx(2) for the birth time, which os.stat does not give on Linux: struct statx is 256
# bytes; stx_mask at 0, stx_btime {i64 tv_sec, u32 tv_nsec} at 80.
_STATX_BTIME = 0x800
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_EMPTY_PATH = 0x1000
_BTIME = struct.Struct("<qI")


@functools.cache
def _statx():
    try:
        fn = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    return fn


def birth_time(dir_fd: int, name: bytes) -> int:
    """Birth time in ns of ``name`` in ``dir_fd`` (b"" with an fd: the fd itself), not following
    a symlink; 0 when the kernel or the filesystem does not know it."""
    fn = _statx()
    if fn is None:
        return 0
    buf = _statx_buffer()
    flags = _AT_SYMLINK_NOFOLLOW | (_AT_EMPTY_PATH if not name else 0)
    if fn(dir_fd, name, flags, _STATX_BTIME, buf) != 0:
        return 0
    if not _MASK.unpack_from(buf)[0] & _STATX_BTIME:
        return 0
    sec, nsec = _BTIME.unpack_from(buf, 80)
    return sec * 1_000_000_000 + nsec


_MASK = struct.Struct("<I")
_buffers = threading.local()


def _statx_buffer():
    """One struct statx buffer per thread, reused: allocating one per file costs more than the call."""
    buf = getattr(_buffers, "buf", None)
    if buf is None:
        buf = _buffers.buf = ctypes.create_string_buffer(256)
    return buf


def scan(root: str | os.PathLike, ids: FileIds, digester: Digester, *, one_file_system: bool = True,
         report: ScanReport | None = None, started_ns: int | None = None,
         exclude: Callable[[str], bool] | None = None, skip_inodes: dict | None = None,
         trusted_before_ns: int = 0) -> Scan:
    """Walk ``root`` and return every inode under it with its file id.

    ``started_ns`` (default: now, taken before the walk) is the time the race guard of the
    next send compares timestamps with.  ``exclude(path relative to root)`` leaves a path out
    (a directory is not entered); ``skip_inodes`` maps (dev, ino) of files never sent (the
    stream being written inside the tree) to the name a notice gives them.  An inode whose ctime
    is its parent entry's and before ``trusted_before_ns`` keeps the parent's birth time and
    xattr digests without reading them (their values are then not in Scanned).  Problems with
    single entries are warnings in ``report``, as in the tree source; an unreadable root is a
    SourceError.
    """
    if started_ns is None:
        started_ns = time.time_ns()
    report = report or ScanReport()
    scanner = _Scanner(Path(root), ids, digester, one_file_system, report, exclude, skip_inodes or {})
    scanner.trusted_before_ns = trusted_before_ns
    return scanner.run(started_ns)


class _Scanner:
    def __init__(self, root: Path, ids: FileIds, digester: Digester, one_fs: bool, report: ScanReport,
                 exclude: Callable[[str], bool] | None = None, skip_inodes: dict | None = None):
        self.root, self.ids, self.digester, self.one_fs, self.report = root, ids, digester, one_fs, report
        self.exclude, self.skip_inodes = exclude, skip_inodes or {}
        self.skipped_noted: set = set()
        self.trusted_before_ns = 0
        self.entries: dict[int, Scanned] = {}
        self.by_inode: dict[tuple[int, int], int] = {}   # non-directories: (dev, ino) -> file id
        self.dirs_seen: set[tuple[int, int]] = set()     # a bind mount can show a directory twice
        self.proc = os.path.isdir("/proc/self/fd")

    def run(self, started_ns: int) -> Scan:
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SourceError(e.strerror, path=str(self.root),
                              hint="give a directory that exists and can be read") from None
        stack: list[tuple[int, int, bytes, Iterator[bytes]]] = []
        try:
            st = os.fstat(root_fd)
            self.root_dev = st.st_dev
            self.dirs_seen.add((st.st_dev, st.st_ino))
            self._add(ROOT_ID, st, ROOT_NAME, b"", xattrs=self._xattrs(root_fd, b""),
                      btime_ns=birth_time(root_fd, b""))
            self.report.dirs += 1
            stack.append((root_fd, ROOT_ID, b"", self._names(root_fd, b"")))
            self._walk(stack)
        finally:
            for dir_fd, *_ in stack:
                os.close(dir_fd)
        return Scan(self.root, started_ns, self.entries, self.report)

    def _walk(self, stack: list) -> None:
        """Depth first, names in byte order.  A regular file whose inode, type, mode, owner, size,
        mtime, ctime and name are the parent's, with that ctime before the race guard, is the
        parent's entry itself (what _child would build, the extents aside, which diff() takes from
        the parent for such a file anyway): one lstat and a few comparisons per unchanged file."""
        known, given, entries, by_inode = self.ids.known, self.ids._given, self.entries, self.by_inode
        skip, exclude, report, trusted = self.skip_inodes, self.exclude, self.report, self.trusted_before_ns
        one_dev = self.root_dev if self.one_fs else None
        lstat, reg = os.stat, stat.S_IFREG
        while stack:
            dir_fd, dir_id, dir_path, names = stack[-1]
            prefix = dir_path + b"/" if dir_path else b""
            for name in names:
                path = prefix + name
                if exclude is not None and exclude(os.fsdecode(path)):
                    report.excluded += 1
                    continue
                try:
                    st = lstat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    report.warn(f"{self._show(path)}: file removed before we read it")
                    continue
                except OSError as e:
                    report.warn(f"{self._show(path)}: cannot stat: {e.strerror}")
                    continue
                key = (st.st_dev, st.st_ino)
                old = known.get(key)
                if (old is not None and old[8] == st.st_ctime_ns and old[8] < trusted and old[3] == st.st_mode
                        and st.st_mode & _IFMT == reg and old[7] == st.st_mtime_ns and old[6] == st.st_size
                        and old[4] == st.st_uid and old[5] == st.st_gid and old[9] == ((dir_id, name),)
                        and old[0] != ROOT_ID and old[0] not in given and key not in by_inode
                        and key not in skip and (one_dev is None or one_dev == st.st_dev)):
                    fid = old[0]
                    given.add(fid)
                    by_inode[key] = fid
                    entries[fid] = Scanned(old, st.st_atime_ns, b"", _NO_VALUES, [path])
                    report.files += 1
                    report.logical_bytes += old[6]
                    continue
                child = self._child(dir_fd, dir_id, name, path, st)
                if child is not None:
                    stack.append(child)
                    break
            else:
                stack.pop()
                os.close(dir_fd)

    def _show(self, path: bytes) -> str:
        return os.fsdecode(os.path.join(os.fsencode(self.root), path))

    def _names(self, dir_fd: int, path: bytes) -> Iterator[bytes]:
        try:
            return iter(sorted(map(os.fsencode, os.listdir(dir_fd))))
        except OSError as e:
            self.report.warn(f"{self._show(path)}: cannot list directory: {e.strerror}")
            return iter(())

    def _add(self, file_id: int, st, name: Name, path: bytes, *, size=0, xattrs=(), extents=(),
             target=b"", btime_ns=0) -> None:
        entry = _entry(file_id, st, (name,), size, tuple((n, d) for n, d, _ in xattrs), extents, btime_ns)
        self.entries[file_id] = Scanned(entry, st.st_atime_ns, target,
                                        {n: v for n, _, v in xattrs if v is not None}, [path])

    def _child(self, dir_fd: int, dir_id: int, name: bytes, path: bytes, st):
        """Record one directory entry (``st``: its lstat); return a stack frame when it is a
        directory to enter."""
        shown = self.skip_inodes.get((st.st_dev, st.st_ino))
        if shown is not None:
            if shown not in self.skipped_noted:  # as tar: "file is the archive; not dumped"
                self.skipped_noted.add(shown)
                self.report.notices.append(f"{shown}: the stream being written; left out")
            return None
        kind = stat.S_IFMT(st.st_mode)
        if kind not in _KEPT:
            self.report.notices.append(f"{self._show(path)}: socket ignored")
            return None
        if self.one_fs and st.st_dev != self.root_dev:
            self.report.notices.append(f"{self._show(path)}: on another filesystem; left out")
            return None
        if len(name) > MAX_NAME_LEN:
            self.report.warn(f"{self._show(path)}: name longer than {MAX_NAME_LEN} bytes; left out")
            return None
        if kind == stat.S_IFDIR:
            return self._dir(dir_fd, dir_id, name, path)
        key = (st.st_dev, st.st_ino)
        if kind != stat.S_IFREG:
            key = None  # a full stream links regular files only: other inodes are one entry per name
        if key is not None and key in self.by_inode:  # another name of an inode already found
            scanned = self.entries[self.by_inode[key]]
            scanned.entry = scanned.entry._replace(names=tuple(sorted(scanned.entry.names + ((dir_id, name),))))
            scanned.paths.append(path)
            self.report.hardlinks += 1
            return None
        known = self._unchanged(st) if kind == stat.S_IFREG else None
        btime = known.btime_ns if known is not None else birth_time(dir_fd, name)
        if kind == stat.S_IFLNK:
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError as e:
                self.report.warn(f"{self._show(path)}: cannot read link: {e.strerror}")
                return None
            extents = ((0, len(target), self.digester.symlink_target(target)),)
            file_id = self.ids.assign(st.st_dev, st.st_ino, st.st_mode, btime, extents)
            self._add(file_id, st, (dir_id, name), path, extents=extents, target=target, btime_ns=btime,
                      xattrs=self._xattrs(self._at(dir_fd, name, path), path))
            self.report.symlinks += 1
        elif kind == stat.S_IFREG:
            file_id = self.ids.assign(st.st_dev, st.st_ino, st.st_mode, btime)
            xattrs = self._kept_xattrs(known, file_id)
            if xattrs is None:
                xattrs = self._xattrs(self._at(dir_fd, name, path), path)
            self._add(file_id, st, (dir_id, name), path, size=st.st_size, btime_ns=btime, xattrs=xattrs)
            self.report.files += 1
            self.report.logical_bytes += st.st_size
        else:  # FIFOs and devices: the tree source sends no xattrs for them, nor does this
            rdev = st.st_rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
            file_id = self.ids.assign(st.st_dev, st.st_ino, st.st_mode, btime,
                                      rdev if kind != stat.S_IFIFO else None)
            self._add(file_id, st, (dir_id, name), path, size=rdev, btime_ns=btime)
            self.report.specials += 1
        if key is not None:
            self.by_inode[key] = file_id
        return None

    def _at(self, dir_fd: int, name: bytes, path: bytes) -> bytes:
        if self.proc:
            return _at(dir_fd, name)
        return os.path.join(os.fsencode(self.root), path)  # no /proc: the path string, as the tree source

    def _dir(self, parent_fd: int, parent_id: int, name: bytes, path: bytes):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        except OSError as e:
            self.report.warn(f"{self._show(path)}: cannot open directory: {e.strerror}")
            return None
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in self.dirs_seen:
            os.close(fd)
            self.report.warn(f"{self._show(path)}: directory already seen (a bind mount?); left out")
            return None
        self.dirs_seen.add(key)
        known = self._unchanged(st)
        btime = known.btime_ns if known is not None else birth_time(fd, b"")
        file_id = self.ids.assign(st.st_dev, st.st_ino, st.st_mode, btime)
        xattrs = self._kept_xattrs(known, file_id)
        if xattrs is None:
            xattrs = self._xattrs(fd, path)
        self._add(file_id, st, (parent_id, name), path, xattrs=xattrs, btime_ns=btime)
        self.report.dirs += 1
        return (fd, file_id, path, self._names(fd, path))

    def _unchanged(self, st) -> Entry | None:
        """The parent's entry of this inode when its ctime is the parent's, and older than the race
        guard: then its birth time and xattrs are the parent's (every change of either sets ctime),
        and neither needs a system call."""
        old = self.ids.known.get((st.st_dev, st.st_ino))
        if (old is not None and old.ctime_ns == st.st_ctime_ns and old.ctime_ns < self.trusted_before_ns
                and old.kind == stat.S_IFMT(st.st_mode)):
            return old
        return None

    @staticmethod
    def _kept_xattrs(known: Entry | None, file_id: int):
        """(name, digest, None) of the parent's xattrs, when ``known`` kept its id; None otherwise."""
        if known is None or known.file_id != file_id:
            return None
        return [(n, d, None) for n, d in known.xattrs]

    def _xattrs(self, target, path: bytes) -> list[tuple[bytes, bytes, bytes]]:
        """(name, digest, value) of every xattr, sorted by name; ``target`` an fd or a path."""
        follow = isinstance(target, int)
        try:
            names = os.listxattr(target, follow_symlinks=follow)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM):
                self.report.warn(f"{self._show(path)}: cannot list xattrs: {e.strerror}")
            return []
        out = []
        for xname in sorted(os.fsencode(n) for n in names):
            try:
                value = os.getxattr(target, xname, follow_symlinks=follow)
            except OSError as e:
                self.report.warn(f"{self._show(path)}: cannot read xattr {os.fsdecode(xname)}: {e.strerror}")
                continue
            out.append((xname, self.digester.xattr_value(value), value))
        return out


def _at(dir_fd: int, name: bytes) -> bytes:
    """A path to ``name`` in the open directory ``dir_fd``, resolved through the fd rather than
    through a path string that a rename elsewhere in the tree could redirect (it is used without
    following its last component)."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def walk_paths(entries: dict[int, Entry]) -> dict[int, bytes]:
    """file id -> the path of its first name (b"" for the root), for messages and tests.

    The entries must form a tree (State.manifest and scan() make sure they do).
    """
    out: dict[int, bytes] = {}
    for fid in entries:
        path_of(entries, fid, out)
    return out


def path_of(entries: dict[int, Entry], fid: int, known: dict[int, bytes]) -> bytes:
    """The path of ``fid``'s first name; ``known`` caches it and every directory above it."""
    path = known.get(fid)
    if path is not None:
        return path
    chain = []
    while fid not in known:
        parent, name = entries[fid].names[0]
        if parent == 0:
            known[fid] = b""
            break
        chain.append((fid, name))
        fid = parent
    for child, name in reversed(chain):
        up = known[fid]
        known[child] = up + b"/" + name if up else name
        fid = child
    return known[fid]
