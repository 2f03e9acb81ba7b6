"""Where a received tree is built: a private temporary directory beside DEST, the names in it,
its directories' fds, and the rename that puts it in place.

Confinement by construction: every name is a single checked component and every entry is
created relative to its parent directory's fd (dirfds.DirCache), so nothing a stream says can
reach outside the temporary directory.  The destination only appears, complete, after END was
checked (spec section "Receiving").
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from rawsend.btrfs import subvol
from rawsend.errors import DestinationError
from rawsend.fsutil import fsync_dir, left_by_dead_process
from rawsend.sinks.dirfds import DirCache
from rawsend.stream.records import ROOT_ID, Create, RecordType

TEMP_MARK = ".rawsend-"

# as globals: cheaper per record than the enum's class attributes
_MKDIR = RecordType.MKDIR


@dataclass(slots=True)
class Node:
    parent_id: int
    name: bytes
    rec: Create | None  # directories only


def _real_dir(p) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def remove_tree(path: Path) -> None:
    """Remove a temporary tree of ours, also where the stream made directories read-only.

    Only real directories at or below ``path`` are made writable again, and no symlink is
    followed.  Best effort, never raises (it runs while another error is on its way out):
    whatever stays is removed by the next receive into the same destination.
    """
    if not _real_dir(path) or subvol.remove(path):  # a subvolume goes whole, read-only or not
        return
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    for top, dirs, _files in os.walk(path):  # top-down: each directory opens before it is listed
        for name in list(dirs):
            sub = os.path.join(top, name)
            if subvol.remove(sub):
                dirs.remove(name)
            elif _real_dir(sub):
                try:
                    os.chmod(sub, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


def clean_stale_temps(dest: Path) -> list[Path]:
    """Remove temporary directories of earlier receives into ``dest`` whose process is gone."""
    removed = []
    prefix = f".{dest.name}{TEMP_MARK}"
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not p.name.startswith(prefix):
            continue
        if left_by_dead_process(p.name[len(prefix):]) and _real_dir(p):  # never a symlink
            remove_tree(p)
            removed.append(p)
    return removed


def _make_subvolume(parent: Path, name: str) -> bool:
    """Create ``name`` in ``parent`` as a subvolume of mode 0700; False where the parent is not
    on btrfs or we lack CAP_SYS_ADMIN (the caller makes a plain directory)."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not subvol.can_create(fd):
            return False
        subvol.create(fd, name)
        top = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            os.fchmod(top, 0o700)
            subvol.inherit(fd, top)  # NOCOW and compression, as a directory made there would have
        finally:
            os.close(top)
        return True
    finally:
        os.close(fd)


NEW_PATH = "choose a new directory; receive never overwrites"
NO_FOLLOW = "receive never follows a symlink at DEST"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISCHR, "a character device")):
        if test(mode):
            return name
    return "an unknown kind of file"


def check_parent(parent: Path) -> None:
    """DestinationError saying what is wrong with the directory DEST is to be made in, if anything."""
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise DestinationError("its parent directory does not exist", path=str(parent),
                               hint="create it first; receive makes DEST only") from None
    except NotADirectoryError:
        # an ancestor is a file (or the like): name the first one, from the top
        for up in [*reversed(parent.parents), parent]:
            try:
                kind = os.stat(up).st_mode
            except OSError:
                break
            if not stat.S_ISDIR(kind):
                raise DestinationError(f"its parent path goes through {_kind(kind)}, not a directory",
                                       path=str(up), hint="give a DEST whose parent is a directory") from None
        raise DestinationError("its parent path is not a directory", path=str(parent)) from None
    except OSError as e:  # EACCES: a directory above cannot be searched; ELOOP
        raise DestinationError(f"its parent directory cannot be reached: {e.strerror}", path=str(parent)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise DestinationError(f"its parent is {_kind(st.st_mode)}, not a directory", path=str(parent),
                               hint="give a DEST whose parent is a directory")


def check_dest(dest: Path) -> None:
    """DestinationError unless ``dest`` is absent or an empty directory (not through a symlink)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    except OSError as e:
        raise DestinationError(f"it cannot be looked at: {e.strerror}", path=str(dest)) from None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(dest)
        except OSError as e:  # replaced or removed since the lstat
            raise DestinationError(f"it is a symlink that cannot be read: {e.strerror}", path=str(dest),
                                   hint=f"{NO_FOLLOW}: choose a new directory") from None
        try:
            pointed = os.stat(dest)
        except FileNotFoundError:
            raise DestinationError(f"it is a symlink to {target!r}, which does not exist", path=str(dest),
                                   hint=f"{NO_FOLLOW}: remove it or choose a new directory") from None
        except OSError as e:
            raise DestinationError(f"it is a symlink to {target!r}, which cannot be reached: {e.strerror}",
                                   path=str(dest), hint=f"{NO_FOLLOW}: choose a new directory") from None
        where = (f"name {os.path.realpath(dest)!r} itself, or a new directory" if stat.S_ISDIR(pointed.st_mode)
                 else "choose a new directory")
        raise DestinationError(f"it is a symlink to {target!r}, {_kind(pointed.st_mode)}", path=str(dest),
                               hint=f"{NO_FOLLOW}: {where}")
    if not stat.S_ISDIR(st.st_mode):
        raise DestinationError(f"it exists and is {_kind(st.st_mode)}, not a directory", path=str(dest),
                               hint=NEW_PATH)
    try:
        with os.scandir(dest) as entries:
            empty = next(entries, None) is None
    except OSError as e:
        raise DestinationError(f"it is a directory that cannot be listed: {e.strerror}", path=str(dest),
                               hint="receive fills only an empty directory") from None
    if not empty:
        raise DestinationError("it exists and is not an empty directory", path=str(dest), hint=NEW_PATH)


class Namespace:
    """The temporary tree of one receive: names by file id, directory fds, commit and abort."""

    def __init__(self, dest: str | Path, *, subvolume: bool = False):
        self.dest = Path(os.path.abspath(dest))
        self.subvolume = subvolume  # make it a btrfs subvolume where the parent allows (begin)
        self.temp: Path | None = None
        self.nodes: dict[int, Node] = {}
        self.dirs: list[int] = []  # directories created, for their metadata at commit
        self._fds: DirCache | None = None  # set in begin()

    def begin(self) -> int:
        """Check DEST, create the temporary directory; its fd (the root's)."""
        parent = self.dest.parent
        check_parent(parent)
        check_dest(self.dest)
        clean_stale_temps(self.dest)
        self.temp = parent / f".{self.dest.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            if self.subvolume:
                self.subvolume = _make_subvolume(parent, self.temp.name)
            if not self.subvolume:
                os.mkdir(self.temp, 0o700)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                raise DestinationError("its parent directory is not writable", path=str(parent),
                                       hint="receive builds the tree beside DEST, then renames it: "
                                            "choose a DEST in a directory you can write") from None
            if e.errno == errno.EROFS:
                raise DestinationError("its parent directory is on a read-only filesystem",
                                       path=str(parent)) from None
            raise DestinationError(f"cannot create a temporary directory: {e.strerror}",
                                   path=str(self.temp)) from None
        fd = os.open(self.temp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._fds = DirCache(fd, self.nodes)
        return fd

    def add(self, rec: Create) -> None:
        # only directories need their record again (in commit): a file keeps just its name
        self.nodes[rec.file_id] = Node(rec.parent_id, rec.name, rec if rec.type == _MKDIR else None)

    def dir_fd(self, dir_id: int) -> int:
        return self._fds.get(dir_id)

    def hold(self, dir_id: int) -> AbstractContextManager:
        """Keep ``dir_id``'s fd open (and so its number ours) while more directories are opened."""
        return self._fds.hold(dir_id)

    @property
    def root_fd(self) -> int:
        return self._fds.root

    @property
    def dir_opens(self) -> int:
        return self._fds.opens if self._fds is not None else 0

    def path(self, file_id: int) -> str:
        parts = []
        while file_id != ROOT_ID:
            node = self.nodes[file_id]
            parts.append(os.fsdecode(node.name))
            file_id = node.parent_id
        return "/".join(reversed(parts)) or "."

    def where(self, file_id: int) -> str:
        """The path an error names: where the entry will be in DEST."""
        return str(self.dest / self.path(file_id)) if file_id in self.nodes else str(self.dest)

    def close(self) -> None:
        if self._fds is not None:
            self._fds.close()

    def finish_subvolume(self, uuid: bytes, stransid: int, stime_ns: int) -> None:
        """A subvolume is marked received (received_uuid, stransid, stime) and made read-only,
        after its last write and before its rename: under DEST's name it is always complete."""
        try:
            subvol.set_received(self.root_fd, uuid, stransid, stime_ns)
            subvol.set_readonly(self.root_fd)
        except OSError as e:
            raise DestinationError(f"cannot mark the received subvolume read-only and received: {e.strerror}",
                                   path=str(self.temp),
                                   hint="receive with --no-subvolume for a plain directory") from None

    def rename_into_place(self, sync: bool) -> None:
        self.close()
        try:
            os.rename(self.temp, self.dest)
        except OSError as e:
            raise DestinationError(f"cannot move the received tree into place: {e.strerror}",
                                   path=str(self.dest)) from None
        self.temp = None
        if sync:
            fsync_dir(self.dest.parent)

    def abort(self) -> None:
        self.close()
        if self.temp is not None:
            remove_tree(self.temp)
            self.temp = None
