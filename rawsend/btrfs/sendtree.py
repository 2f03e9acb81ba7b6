"""Replay a btrfs send stream's namespace operations on a table keyed by inode.

A send stream names files by their path *at that point of the stream*: new inodes
are made under orphan names `o<ino>-<gen>-<idx>` in the subvolume root and renamed
into place later, existing inodes are moved out of the way to orphan names, and
directory moves are delayed until their parents exist.  A consumer that wants to
know which file a command (WRITE, UPDATE_EXTENT, SET_XATTR, ...) concerns in the
finished snapshot replays every namespace command in order:

    tree = SendTree()                       # full stream; SendTree.from_directory(parent)
    concerns = [(cmd, tree.apply(cmd)) for cmd in reader]   # incremental: the parent's tree
    tree.paths(ino)                         # the inode's final paths, once END is read

`apply` returns the inode a command concerns (None for SUBVOL, SNAPSHOT and END).
Inode numbers are the sending subvolume's, so they equal st_ino in the snapshot.
A command that does not fit the tree (a missing path, a name that exists, a
non-empty rmdir) raises BtrfsTreeError (exit 1) naming the command.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

from rawsend.btrfs import sendstream as ss

ROOT_INO = 256          # BTRFS_FIRST_FREE_OBJECTID: a subvolume's top directory

# gen_unique_name() in fs/btrfs/send.c: "o%llu-%llu-%llu" (ino, gen, idx)
ORPHAN_NAME = re.compile(rb"o(\d+)-(\d+)-(\d+)\Z")

KIND_BY_COMMAND = {ss.MKFILE: "file", ss.MKDIR: "dir", ss.MKNOD: "node", ss.MKFIFO: "fifo",
                   ss.MKSOCK: "socket", ss.SYMLINK: "symlink"}


class BtrfsTreeError(ss.BtrfsMalformedCommand):
    """btrfs send command does not fit the tree: {detail}"""


@dataclass
class Inode:
    ino: int
    kind: str                                   # file, dir, symlink, node, fifo, socket
    gen: int | None = None                      # from an orphan name, when one was seen
    links: set = field(default_factory=set)     # {(parent ino, name)}
    children: dict = field(default_factory=dict)  # dirs: name -> ino


class SendTree:
    """The namespace of the subvolume being received, as the stream builds it."""

    def __init__(self):
        self.inodes: dict[int, Inode] = {ROOT_INO: Inode(ROOT_INO, "dir")}

    @classmethod
    def from_directory(cls, root) -> "SendTree":
        """The tree of a mounted snapshot: the starting point of an incremental stream
        whose parent that snapshot is.  Does not follow symlinks or cross mounts."""
        tree = cls()
        root = os.fsencode(root)
        root_dev = os.lstat(root).st_dev

        pending = [(root, ROOT_INO)]       # a stack, not recursion: trees can be deep
        while pending:
            path, ino = pending.pop()
            with os.scandir(path) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    if st.st_dev != root_dev:
                        continue  # a nested subvolume is not part of this one's stream
                    kind = _kind_of_mode(st.st_mode)
                    child = tree.inodes.setdefault(st.st_ino, Inode(st.st_ino, kind))
                    tree._link(child, ino, entry.name)
                    if kind == "dir":
                        pending.append((entry.path, st.st_ino))
        return tree

    # -- queries ------------------------------------------------------------------

    def paths(self, ino: int) -> list[bytes]:
        """Every current path of `ino`, sorted; [] when it has none (unlinked)."""
        inode = self.inodes.get(ino)
        if inode is None:
            return []
        if ino == ROOT_INO:
            return [b""]
        return sorted(self._join(parent, name) for parent, name in inode.links)

    def path(self, ino: int) -> bytes | None:
        """One current path of `ino` (the first in sort order), None when unlinked."""
        found = self.paths(ino)
        return found[0] if found else None

    def walk(self) -> dict[bytes, int]:
        """{path: ino} for every linked name, the root (b"") excluded."""
        out = {}

        def walk(ino: int, prefix: bytes) -> None:
            for name, child in self.inodes[ino].children.items():
                path = prefix + name
                out[path] = child
                if self.inodes[child].kind == "dir":
                    walk(child, path + b"/")

        walk(ROOT_INO, b"")
        return out

    def lookup(self, path: bytes) -> int | None:
        """The inode at `path` now, None when there is none."""
        ino = ROOT_INO
        if path == b"":
            return ino
        for part in path.split(b"/"):
            inode = self.inodes[ino]
            if part not in inode.children:
                return None
            ino = inode.children[part]
        return ino

    # -- replay -------------------------------------------------------------------

    def apply(self, cmd: ss.SendCommand) -> int | None:
        """Replay one command; return the inode it concerns (None for SUBVOL, SNAPSHOT, END)."""
        if cmd.cmd in (ss.SUBVOL, ss.SNAPSHOT, ss.END):
            return None
        if cmd.cmd in KIND_BY_COMMAND:
            return self._create(cmd)
        if cmd.cmd == ss.RENAME:
            ino = self._existing(cmd, cmd["path"], removing=True)
            parent, name = self._free_slot(cmd, cmd["path_to"])
            if self._is_within(parent, ino):
                raise BtrfsTreeError(f"rename of {cmd['path']!r} into itself ({cmd['path_to']!r})",
                                     record=cmd.index, offset=cmd.offset)
            self._unlink(self.inodes[ino], cmd["path"])
            self._link(self.inodes[ino], parent, name)
            return ino
        if cmd.cmd == ss.LINK:
            # PATH is the new name, PATH_LINK the existing one (btrfs-progs process_link)
            ino = self._existing(cmd, cmd["path_link"])
            if self.inodes[ino].kind == "dir":
                raise BtrfsTreeError(f"link to directory {cmd['path_link']!r}",
                                     record=cmd.index, offset=cmd.offset)
            parent, name = self._free_slot(cmd, cmd["path"])
            self._link(self.inodes[ino], parent, name)
            return ino
        if cmd.cmd in (ss.UNLINK, ss.RMDIR):
            ino = self._existing(cmd, cmd["path"], removing=True)
            inode = self.inodes[ino]
            if (cmd.cmd == ss.RMDIR) != (inode.kind == "dir"):
                raise BtrfsTreeError(f"{cmd.name} of {cmd['path']!r}, which is a {inode.kind}",
                                     record=cmd.index, offset=cmd.offset)
            if inode.children:
                raise BtrfsTreeError(f"rmdir of {cmd['path']!r}, which is not empty",
                                     record=cmd.index, offset=cmd.offset)
            self._unlink(inode, cmd["path"])
            if not inode.links:
                del self.inodes[ino]
            return ino
        return self._existing(cmd, cmd["path"])

    def _create(self, cmd: ss.SendCommand) -> int:
        ino = cmd["ino"]
        if ino in self.inodes:
            raise BtrfsTreeError(f"{cmd.name} of inode {ino}, which exists at"
                                 f" {self.path(ino)!r}", record=cmd.index, offset=cmd.offset)
        parent, name = self._free_slot(cmd, cmd["path"])
        inode = Inode(ino, KIND_BY_COMMAND[cmd.cmd])
        orphan = ORPHAN_NAME.match(name) if parent == ROOT_INO else None
        if orphan and int(orphan.group(1)) == ino:
            inode.gen = int(orphan.group(2))
        self.inodes[ino] = inode
        self._link(inode, parent, name)
        return ino

    def _existing(self, cmd: ss.SendCommand, path: bytes, removing: bool = False) -> int:
        if removing and path == b"":
            raise BtrfsTreeError(f"{cmd.name} of the subvolume root", record=cmd.index, offset=cmd.offset)
        ino = self.lookup(path)
        if ino is None:
            raise BtrfsTreeError(f"{cmd.name}: no file at {path!r}", record=cmd.index, offset=cmd.offset)
        return ino

    def _free_slot(self, cmd: ss.SendCommand, path: bytes) -> tuple[int, bytes]:
        """(parent ino, name) for a new name at `path`: the parent must be a directory
        and the name unused and a plain component."""
        head, _, name = path.rpartition(b"/")
        if name in (b"", b".", b"..") or b"\0" in path:
            raise BtrfsTreeError(f"{cmd.name}: bad name {path!r}", record=cmd.index, offset=cmd.offset)
        parent = self.lookup(head)
        if parent is None or self.inodes[parent].kind != "dir":
            raise BtrfsTreeError(f"{cmd.name}: no directory at {head!r} for {path!r}",
                                 record=cmd.index, offset=cmd.offset)
        if name in self.inodes[parent].children:
            raise BtrfsTreeError(f"{cmd.name}: {path!r} exists", record=cmd.index, offset=cmd.offset)
        return parent, name

    def _is_within(self, ino: int, ancestor: int) -> bool:
        """Whether directory `ino` is `ancestor` or below it (a move there would make a cycle)."""
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = next(iter(self.inodes[ino].links))[0]

    def _link(self, inode: Inode, parent: int, name: bytes) -> None:
        self.inodes[parent].children[name] = inode.ino
        inode.links.add((parent, name))

    def _unlink(self, inode: Inode, path: bytes) -> None:
        head, _, name = path.rpartition(b"/")
        parent = self.lookup(head)
        del self.inodes[parent].children[name]
        inode.links.discard((parent, name))

    def _join(self, parent: int, name: bytes) -> bytes:
        """The path of `name` in directory `parent` (directories have exactly one link)."""
        parts = [name]
        while parent != ROOT_INO:
            parent, name = next(iter(self.inodes[parent].links))
            parts.append(name)
        return b"/".join(reversed(parts))


def _kind_of_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "node"


def replay(commands, tree: SendTree | None = None) -> tuple[SendTree, list[tuple[ss.SendCommand, int | None]]]:
    """Apply every command to `tree` (a new, empty one by default); return the tree and
    each command with the inode it concerns.  Keeps the commands: for small streams
    (NO_FILE_DATA) or tests; a consumer of data streams calls SendTree.apply itself."""
    tree = tree if tree is not None else SendTree()
    return tree, [(cmd, tree.apply(cmd)) for cmd in commands]
