"""Tree source: walks a directory and yields metadata records and raw data chunks.

Everything is opened relative to its parent directory's fd with O_NOFOLLOW,
so a tree that changes under the walk cannot redirect it.  Holes are found
with SEEK_DATA/SEEK_HOLE and never read.  A file that changes while it is
read, or vanishes before it is opened, is reported (as tar does) and the
stream stays valid.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rawsend.errors import (
    ChangedWhileRead, OtherFilesystem, Replaced, SendNotice, SendWarning, SkippedOutput, SkippedSocket, SourceError,
    Unreadable, Vanished,
)
from rawsend.fsutil import data_regions
from rawsend.patterns import matches
from rawsend.sources.items import DataChunk, EncodedChunk  # noqa: F401  (EncodedChunk: importable here too)
from rawsend.stream.records import MAX_EXTENT_LEN, ROOT_ID, Create, Link, RecordType, SetXattr

CHUNK = MAX_EXTENT_LEN  # extents of at most 128 KiB, as btrfs


@dataclass
class SourceReport:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    specials: int = 0
    logical_bytes: int = 0
    excluded: int = 0  # paths left out by --exclude (a directory counts once, not its contents)
    warnings: list[SendWarning] = field(default_factory=list)  # send exits SendWarning.exit_code
    notices: list[SendNotice | str] = field(default_factory=list)  # worth saying, but not a failure (exit 0)

    def warn(self, warning: SendWarning) -> None:
        self.warnings.append(warning)


_TYPES = {stat.S_IFREG: RecordType.MKFILE, stat.S_IFDIR: RecordType.MKDIR,
          stat.S_IFLNK: RecordType.SYMLINK, stat.S_IFCHR: RecordType.MKNOD,
          stat.S_IFBLK: RecordType.MKNOD, stat.S_IFIFO: RecordType.MKNOD}


@dataclass
class WalkRules:
    """What the walk leaves out.

    ``exclude``: patterns as rawsend.patterns matches them; an excluded directory is not entered.
    ``one_filesystem``: directories on another filesystem than SOURCE (mount points, btrfs
    subvolumes) are sent empty.  ``skip_inodes``: (st_dev, st_ino) of files never sent, such as the
    stream being written inside the tree, each with the name to note it by.
    """

    exclude: tuple[str, ...] = ()
    one_filesystem: bool = False
    skip_inodes: dict = field(default_factory=dict)

    def excludes(self, rel: str) -> bool:
        return matches(self.exclude, rel)


def _create(rtype, file_id, parent_id, name, st, size=0, target=b"") -> Create:
    return Create(rtype, file_id, parent_id, name, st.st_mode, st.st_uid, st.st_gid,
                  st.st_atime_ns, st.st_mtime_ns, size, target)


class TreeSource:
    """Iterate a directory tree as stream items, depth first, names in byte order."""

    rules = WalkRules()  # set on the instance to leave paths out

    def __init__(self, root: str | Path, report: SourceReport | None = None):
        self.root = Path(root)
        self.report = report or SourceReport()
        self._root_dev = None
        self._next_id = ROOT_ID
        self._inodes: dict[tuple[int, int], int] = {}  # (dev, ino) of multiply-linked files

    def _new_id(self) -> int:
        file_id = self._next_id
        self._next_id += 1
        return file_id

    def __iter__(self) -> Iterator:
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise SourceError(f"{e.strerror}", path=str(self.root),
                              hint="give a directory that exists and can be read") from None
        try:
            st = os.fstat(root_fd)
            self._root_dev = st.st_dev
            yield _create(RecordType.MKDIR, self._new_id(), 0, b"", st)
            self.report.dirs += 1
            yield from self._xattrs(ROOT_ID, root_fd, str(self.root))
            yield from self._walk_dir(root_fd, ROOT_ID, str(self.root))
        finally:
            os.close(root_fd)

    def _walk_dir(self, dir_fd: int, dir_id: int, path: str) -> Iterator:
        try:
            names = sorted(os.fsencode(e.name) for e in os.scandir(dir_fd))
        except OSError as e:
            self.report.warn(Unreadable(path, f"list the directory: {e.strerror}"))
            return
        rules = self.rules
        for name in names:
            child = f"{path}/{os.fsdecode(name)}"
            if rules.exclude and rules.excludes(child[len(str(self.root)) + 1:]):
                self.report.excluded += 1
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                self.report.warn(Vanished(child))
                continue
            shown = rules.skip_inodes.get((st.st_dev, st.st_ino))
            if shown is not None:
                # as tar: "file is the archive; not dumped"; the temporary file and the one it replaces, once
                if not any(isinstance(n, SkippedOutput) and n.path == shown for n in self.report.notices):
                    self.report.notices.append(SkippedOutput(shown))
                continue
            kind = stat.S_IFMT(st.st_mode)
            rtype = _TYPES.get(kind)
            if rtype is None:
                self.report.notices.append(SkippedSocket(child))  # as tar: not an error
                continue
            if kind == stat.S_IFDIR:
                yield from self._dir(dir_fd, dir_id, name, child)
            elif kind == stat.S_IFREG:
                yield from self._file(dir_fd, dir_id, name, child, st)
            elif kind == stat.S_IFLNK:
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except OSError as e:
                    self.report.warn(Unreadable(child, f"read the link: {e.strerror}"))
                    continue
                file_id = self._new_id()
                yield _create(RecordType.SYMLINK, file_id, dir_id, name, st, target=target)
                self.report.symlinks += 1
                yield from self._xattrs(file_id, None, child)
            else:
                file_id = self._new_id()
                yield _create(RecordType.MKNOD, file_id, dir_id, name, st, size=st.st_rdev)
                self.report.specials += 1

    def _dir(self, parent_fd: int, parent_id: int, name: bytes, path: str) -> Iterator:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        except OSError as e:
            self.report.warn(Unreadable(path, f"open the directory: {e.strerror}"))
            return
        try:
            st = os.fstat(fd)
            file_id = self._new_id()
            yield _create(RecordType.MKDIR, file_id, parent_id, name, st)
            self.report.dirs += 1
            yield from self._xattrs(file_id, fd, path)
            if self.rules.one_filesystem and st.st_dev != self._root_dev:
                self.report.notices.append(OtherFilesystem(path))  # the mount point stays, as rsync -x
                return
            yield from self._walk_dir(fd, file_id, path)
        finally:
            os.close(fd)

    def _file(self, parent_fd: int, parent_id: int, name: bytes, path: str, lst) -> Iterator:
        key = (lst.st_dev, lst.st_ino)
        if lst.st_nlink > 1 and key in self._inodes:
            yield Link(self._inodes[key], parent_id, name)
            self.report.hardlinks += 1
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent_fd)
        except FileNotFoundError:
            self.report.warn(Vanished(path))
            return
        except OSError as e:
            self.report.warn(Unreadable(path, f"open it: {e.strerror}"))
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.report.warn(Replaced(path))
                return
            file_id = self._new_id()
            if st.st_nlink > 1:
                self._inodes[(st.st_dev, st.st_ino)] = file_id
            size = st.st_size
            yield _create(RecordType.MKFILE, file_id, parent_id, name, st, size=size)
            self.report.files += 1
            self.report.logical_bytes += size
            yield from self._data(fd, file_id, size, path)
            yield from self._xattrs(file_id, fd, path)
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (size, st.st_mtime_ns, st.st_ctime_ns):
                self.report.warn(ChangedWhileRead(path, "changed"))
        finally:
            os.close(fd)

    def _data(self, fd: int, file_id: int, size: int, path: str) -> Iterator[DataChunk]:
        regions = data_regions(fd, size)
        while True:
            try:
                start, end = next(regions)
            except StopIteration:
                return
            except OSError as e:
                raise SourceError(f"seek failed: {e.strerror}", path=path) from None
            if not (yield from self._read_range(fd, file_id, start, end, path)):
                return

    def _read_range(self, fd: int, file_id: int, start: int, end: int, path: str):
        """Yield [start, end) as DataChunks; return False when the file cannot be read further."""
        while start < end:
            n = min(CHUNK, end - start)
            try:
                data = os.pread(fd, n, start)
            except OSError as e:
                self.report.warn(Unreadable(path, f"read at byte {start}: {e.strerror}"))
                return False
            if len(data) < n:
                self.report.warn(ChangedWhileRead(path, "shrank"))
                if data:
                    yield DataChunk(file_id, start, data)
                return False
            yield DataChunk(file_id, start, data)
            start += n
        return True

    def _xattrs(self, file_id: int, fd: int | None, path: str) -> Iterator[SetXattr]:
        target = fd if fd is not None else path
        try:
            names = os.listxattr(target, follow_symlinks=fd is not None)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM):
                self.report.warn(Unreadable(path, f"list its xattrs: {e.strerror}"))
            return
        for xname in sorted(names):
            try:
                value = os.getxattr(target, xname, follow_symlinks=fd is not None)
            except OSError as e:
                self.report.warn(Unreadable(path, f"read its xattr {xname}: {e.strerror}"))
                continue
            yield SetXattr(file_id, os.fsencode(xname), value)
