"""The commit phase of an incremental apply: a journal of namespace and attribute operations on
DEST, written and fsynced before the first of them runs, each one idempotent.

Every operation names the inode it moves or changes by its inode number, and every inode it
names existed before the commit phase began (new files, directories and symlinks are built in
the staging directory first), so an inode number means one inode throughout.  An operation runs
only when the entry it starts from holds that inode; otherwise it was done already.  So a commit
phase cut short anywhere is completed by running the journal again from its first operation not
known to be done (``journal.progress``, a hint), which is what the next rawsend command that opens
DEST does (``roll_forward``).

Paths are lists of names from DEST's root, as they are at that point of the sequence; directories
are opened beneath DEST's fd with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), or one level at
a time with O_NOFOLLOW where the kernel has no openat2.  Nothing is ever replaced: renames use
RENAME_NOREPLACE, links fail on an existing name, and a rewritten file takes its old file's place
with RENAME_EXCHANGE, after which the old inode is in the staging directory and goes with it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import stat
import struct
from collections import OrderedDict
from pathlib import Path

from rawsend.errors import DestinationError, DestStateError
from rawsend.fsutil import fsync_dir, syncfs
from rawsend.sinks.dirfds import DIR_FLAGS, DirCache, openat2_dir, openat2_works
from rawsend.sinks.namespace import remove_tree

JOURNAL_VERSION = 1
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
PROGRESS = struct.Struct("<Q")
STAGE_IN_DEST = ".rawsend-stage-"  # the staging directory's prefix where it is in DEST's top directory
KILL_HOOK = "RAWSEND_TEST_KILL_AT"  # tests: SIGKILL this process at a named point of the commit

_libc = ctypes.CDLL(None, use_errno=True)  # libc, linked into the interpreter (find_library runs ldconfig)


def test_hook(point: str) -> None:
    """Die here with SIGKILL when the tests ask for it (crash-safety tests, never set otherwise)."""
    if os.environ.get(KILL_HOOK) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def renameat2(src_fd: int, src: bytes, dst_fd: int, dst: bytes, flags: int) -> None:
    if _libc.renameat2(src_fd, src, dst_fd, dst, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(dst))


def enc(name: bytes | None) -> str | None:
    return None if name is None else name.hex()


def dec(name: str | None) -> bytes | None:
    return None if name is None else bytes.fromhex(name)


class DirOpener:
    """Directories below DEST's root by path, opened without following a symlink; a bounded cache."""

    SIZE = 128

    def __init__(self, root_fd: int):
        self.root = root_fd
        self._fds: OrderedDict[tuple, int] = OrderedDict()
        if DirCache.use_openat2 is None:
            DirCache.use_openat2 = openat2_works()

    def get(self, path) -> int:
        key = tuple(path)
        if not key:
            return self.root
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        if DirCache.use_openat2:
            fd = openat2_dir(self.root, b"/".join(key))
        else:
            fd = self.root
            for i, name in enumerate(key):
                nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
                if fd != self.root:
                    os.close(fd)
                fd = nxt
        self._fds[key] = fd
        while len(self._fds) > self.SIZE:  # the two opened last (a link's two directories) stay
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def clear(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def ino_at(dir_fd: int, name: bytes) -> tuple[int, int] | None:
    """(inode number, file type) of the entry, or None when there is none."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_ino, stat.S_IFMT(st.st_mode)


# -- attributes, on an entry (dir_fd, name) or on a directory's own fd (name None) ------------

_SKIP_XATTR_ERRORS = (errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.EINVAL, errno.ENOSPC, errno.E2BIG,
                      errno.ERANGE, errno.ENODATA)


def set_attr(dir_fd: int, name: bytes | None, ftype: int, kind: str, args) -> None:
    """One attribute change (chown, chmod, utimes, setxattr, rmxattr); a symlink is never followed."""
    if name is None:  # a directory, by its fd
        target, fd = f"/proc/self/fd/{dir_fd}", dir_fd
        if kind == "chown":
            os.chown(fd, *args)
        elif kind == "chmod":
            os.chmod(fd, args[0])
        elif kind == "utimes":
            os.utime(fd, ns=tuple(args))
        else:
            _xattr(target, kind, args, True)
        return
    if kind == "chown":
        os.chown(name, *args, dir_fd=dir_fd, follow_symlinks=False)
    elif kind == "utimes":
        os.utime(name, ns=tuple(args), dir_fd=dir_fd, follow_symlinks=False)
    elif ftype == stat.S_IFLNK:
        if kind != "chmod":  # Linux has no lchmod: a symlink's mode is ignored
            _xattr(f"/proc/self/fd/{dir_fd}/{os.fsdecode(name)}", kind, args, False)
    else:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if kind == "chmod":
                os.chmod(f"/proc/self/fd/{fd}", args[0])
            else:
                _xattr(f"/proc/self/fd/{fd}", kind, args, True)
        finally:
            os.close(fd)


def _xattr(path: str, kind: str, args, follow: bool) -> None:
    try:
        if kind == "setxattr":
            os.setxattr(path, dec(args[0]), dec(args[1]), follow_symlinks=follow)
        else:
            os.removexattr(path, dec(args[0]), follow_symlinks=follow)
    except OSError as e:
        if e.errno not in _SKIP_XATTR_ERRORS:
            raise


# -- running the operations -------------------------------------------------------------------

class _Gone(OSError):
    """A directory an operation names by its path is not there (or is no directory now)."""


def _dir(dirs: DirOpener, path) -> int:
    try:
        return dirs.get(_p(path))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise _Gone(e.errno, e.strerror, e.filename) from None
        raise


def _run(op, dirs: DirOpener, stage_fd: int) -> None:
    kind = op[0]
    if kind == "place":  # a staged inode to its place
        _, sname, path, name, ino = op
        if _ino(stage_fd, sname.encode()) == ino:
            renameat2(stage_fd, sname.encode(), _dir(dirs, path), dec(name), RENAME_NOREPLACE)
    elif kind in ("rename", "link"):
        _, path, name, to_path, to_name, ino = op
        src_fd = _dir(dirs, path)
        dst_fd = _dir(dirs, to_path)
        src_fd = _dir(dirs, path)  # both held: opened last
        if _ino(src_fd, dec(name)) != ino:
            return
        if kind == "rename":
            renameat2(src_fd, dec(name), dst_fd, dec(to_name), RENAME_NOREPLACE)
            dirs.clear()  # paths below a moved directory changed
        elif _ino(dst_fd, dec(to_name)) is None:
            os.link(dec(name), dec(to_name), src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    elif kind in ("unlink", "rmdir"):
        _, path, name, ino = op
        fd = _dir(dirs, path)
        if _ino(fd, dec(name)) == ino:
            if kind == "unlink":
                os.unlink(dec(name), dir_fd=fd)
            else:
                os.rmdir(dec(name), dir_fd=fd)
                dirs.clear()
    elif kind == "swap":  # a rewritten file takes the place of its old inode
        _, sname, new_ino, path, name, old_ino = op
        fd = _dir(dirs, path)
        if _ino(stage_fd, sname.encode()) == new_ino and _ino(fd, dec(name)) == old_ino:
            renameat2(stage_fd, sname.encode(), fd, dec(name), RENAME_EXCHANGE)
    elif kind == "attr":
        _, path, name, ino, what, args = op
        fd = _dir(dirs, path)
        if name is None:
            st = os.fstat(fd)
            if st.st_ino == ino:
                set_attr(fd, None, stat.S_IFDIR, what, args)
        else:
            found = ino_at(fd, dec(name))
            if found is not None and found[0] == ino:
                set_attr(fd, dec(name), found[1], what, args)
    else:
        raise DestStateError(f"unknown journal operation {kind!r}")


def _ino(dir_fd: int, name: bytes) -> int | None:
    found = ino_at(dir_fd, name)
    return None if found is None else found[0]


def _p(path) -> list[bytes]:
    return [bytes.fromhex(c) for c in path]


# -- journal file ---------------------------------------------------------------------------

def write(sdir: Path, journal: dict) -> Path:
    """Write the journal durably: a temporary file, fsynced, renamed to ``journal``."""
    tmp = sdir / "journal.tmp"
    data = json.dumps(journal, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    path = sdir / "journal"
    os.rename(tmp, path)
    fsync_dir(sdir)
    return path


def execute(state, journal: dict, jpath: Path, *, sync: bool = True, resume: bool = False) -> None:
    """Run the journal's operations from the first not known to be done, record what DEST now holds
    (one lstat per file the stream touched), then remove the journal and the staging directory.

    ``resume``: the journal ran before and was cut short.  Its progress is not synced (an fsync
    per operation would cost more than the operations), so after a crash of the machine it may
    name an earlier operation than the last one done, or none; the operations from there on run
    again.  One of those whose directory is gone was done: a later one moved or removed that
    directory, and each operation's paths are those at its point of the sequence."""
    from rawsend.sinks.deststate import FileRow, Held, row_of
    sdir = state.dir
    stage = (state.dest if journal.get("stage_in_dest") else sdir) / journal["stage"]
    try:
        stage_fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        stage_fd = -1  # removed already: every operation that needed it was done
    progress_fd = os.open(sdir / "journal.progress", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    dirs = DirOpener(state.dest_fd)
    try:
        raw = os.pread(progress_fd, PROGRESS.size, 0)
        start = PROGRESS.unpack(raw)[0] if len(raw) == PROGRESS.size else 0
        ops = journal["ops"]
        for i in range(min(start, len(ops)), len(ops)):
            try:
                _run(ops[i], dirs, stage_fd)
            except _Gone as e:
                if not resume:  # the first run: something else changed DEST during the commit
                    raise DestinationError(f"applying the stream stopped in its commit phase at operation {i + 1}"
                                           f" of {len(ops)}: a directory it changes is gone: {e.strerror}",
                                           path=str(state.dest),
                                           hint="fix the cause; the next 'rawsend status DEST' or receive"
                                                " completes it") from None
            except OSError as e:
                raise DestinationError(f"applying the stream stopped in its commit phase at operation {i + 1}"
                                       f" of {len(ops)}: {e.strerror}", path=str(state.dest),
                                       hint="fix the cause; the next 'rawsend status DEST' or receive"
                                            " completes it") from None
            os.pwrite(progress_fd, PROGRESS.pack(i + 1), 0)  # a hint; every operation is idempotent
            test_hook(f"op:{i + 1}")
        test_hook("ops")
        if sync:
            syncfs(state.dest_fd)  # the operations are on disk before the state says so
        rows = []
        for file_id, path, name in journal["stat"]:
            if path is None:  # a special file that was skipped: its type, nothing on disk
                rows.append((file_id, FileRow(name, 0, 0, 0)))
                continue
            try:
                fd = dirs.get(_p(path))
                st = os.fstat(fd) if name is None else os.stat(dec(name), dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            rows.append((file_id, row_of(st)))
        h = journal["held"]
        held = Held(0, bytes.fromhex(h["stream_id"]), bytes.fromhex(h["digest"]), h["first_id"], h["next_id"],
                    h["created_ns"], h["received_ns"], bytes.fromhex(h["key_id"]) if h["key_id"] else None)
        names = {int(i): [(p, bytes.fromhex(n)) for p, n in ns] for i, ns in journal["names"].items()}
        state.record_apply(held, journal["removed"], rows, names)
        test_hook("db")
    finally:
        dirs.clear()
        os.close(progress_fd)
        if stage_fd >= 0:
            os.close(stage_fd)
    os.unlink(jpath)
    fsync_dir(sdir)
    try:
        os.unlink(sdir / "journal.progress")
    except FileNotFoundError:
        pass
    remove_tree(stage)


def roll_forward(state, jpath: Path) -> bytes:
    """Complete an interrupted commit phase; the stream id it applied."""
    try:
        journal = json.loads(jpath.read_bytes())
        ok = journal.get("version") == JOURNAL_VERSION and journal["root_ino"] == os.fstat(state.dest_fd).st_ino
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DestStateError(f"the journal of an interrupted apply cannot be read: {e}", path=str(jpath),
                             hint="DEST may be half changed: receive a full stream into a new DEST") from None
    if not ok:
        raise DestStateError("the journal of an interrupted apply does not belong to this DEST", path=str(jpath),
                             hint="remove the state directory and receive a full stream into a new DEST")
    execute(state, journal, jpath, resume=True)
    return bytes.fromhex(journal["held"]["stream_id"])
