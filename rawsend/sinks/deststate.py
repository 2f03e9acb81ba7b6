"""What a destination holds: the stream chain and the manifest of what rawsend wrote there.

It lives beside DEST, never inside the tree: ``PARENT/.DEST.rawsend/`` holds ``state.db`` (SQLite:
the chain and the manifest), ``lock`` (one rawsend command at a time on DEST), and while an
incremental stream is applied its staging directory and, in the commit phase, ``journal``.
The database records DEST's own inode number and device (on btrfs: subvolume UUID, see
root_identity), so a state directory that outlived
its DEST (DEST removed, or replaced by another tree) is recognised and ignored: nothing is set
on DEST itself, which a comparison of trees would see.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from rawsend.btrfs import is_btrfs, subvol
from rawsend.errors import DestStateError
from rawsend.fsutil import fsync_dir
from rawsend.sinks.namespace import remove_tree

STATE_SUFFIX = ".rawsend"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x72735244  # "rsRD"
BATCH = 1000  # manifest rows written per executemany, so a full receive's rows never pile up

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE chain (seq INTEGER PRIMARY KEY, stream_id BLOB NOT NULL, digest BLOB NOT NULL,
                    first_id INTEGER NOT NULL, next_id INTEGER NOT NULL, created_ns INTEGER NOT NULL,
                    received_ns INTEGER NOT NULL, key_id BLOB);
CREATE TABLE files (id INTEGER PRIMARY KEY, type INTEGER NOT NULL, ino INTEGER NOT NULL,
                    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL);
CREATE TABLE names (parent INTEGER NOT NULL, name BLOB NOT NULL, id INTEGER NOT NULL,
                    PRIMARY KEY (parent, name)) WITHOUT ROWID;
CREATE INDEX names_by_id ON names (id);
"""


def state_dir(dest: Path) -> Path:
    return dest.parent / f".{dest.name}{STATE_SUFFIX}"


@dataclass(frozen=True)
class Held:
    """One stream of the chain DEST holds."""

    seq: int
    stream_id: bytes
    digest: bytes
    first_id: int
    next_id: int       # one more than every file id the chain has used
    created_ns: int
    received_ns: int
    key_id: bytes | None


@dataclass(slots=True)
class FileRow:
    type: int      # stat.S_IFMT of the inode
    ino: int       # 0: not on disk (a special file the receive skipped)
    size: int      # regular files and symlinks; 0 for the others
    mtime_ns: int


def row_of(st: os.stat_result) -> FileRow:
    """What the manifest keeps of an inode: the fields a local change shows in."""
    kind = stat.S_IFMT(st.st_mode)
    size = st.st_size if kind in (stat.S_IFREG, stat.S_IFLNK) else 0
    return FileRow(kind, st.st_ino, size, st.st_mtime_ns)


def root_identity(fd: int) -> dict:
    """What the state database names DEST's top directory by (``meta``): its inode number and, on
    btrfs, the UUID of the subvolume it is in, whose device number is handed out anew at every
    mount; elsewhere its device number."""
    st = os.fstat(fd)
    try:
        if is_btrfs(fd):
            return {"root_uuid": subvol.info(fd).uuid, "root_ino": st.st_ino}
    except OSError:  # a kernel without GET_SUBVOL_INFO (before 4.18)
        pass
    return {"root_dev": st.st_dev, "root_ino": st.st_ino}


def _same_root(meta: dict, fd: int) -> bool:
    if "root_uuid" not in meta:  # a state that names the device (off btrfs, or written before)
        st = os.fstat(fd)
        return (meta.get("root_dev"), meta.get("root_ino")) == (st.st_dev, st.st_ino)
    found = root_identity(fd)
    return (found.get("root_uuid"), found["root_ino"]) == (meta["root_uuid"], meta.get("root_ino"))


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA trusted_schema = OFF")
    db.execute("PRAGMA synchronous = FULL")
    return db


def make_state_dir(sdir: Path) -> bool:
    """The state directory beside DEST; True when this call made it."""
    try:
        st = os.lstat(sdir)
    except FileNotFoundError:
        os.mkdir(sdir, 0o700)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise DestStateError("the state path beside DEST is not a directory", path=str(sdir),
                             hint="remove it; rawsend keeps what DEST holds there")
    return False


def remove_unused_state_dir(sdir: Path) -> None:
    """After a failed receive, the state directory it made, when nothing but its lock is there.

    Called with the lock still held: a command that opens ``lock`` after the unlink makes a new
    one, and the rmdir then leaves the directory to it."""
    try:
        if os.listdir(sdir) == ["lock"]:
            os.unlink(sdir / "lock")
            os.rmdir(sdir)
    except OSError:
        pass


def remove_leftovers(sdir: Path, prefixes: tuple[str, ...]) -> None:
    """Remove what a DEST that was here before left in the state directory: staging directories,
    journals, a database or chain build never finished (the names starting with ``prefixes``)."""
    for p in sdir.iterdir():
        if p.name.startswith(prefixes):
            remove_tree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


class Lock:
    """flock of ``lock`` in the state directory: one rawsend command at a time on a DEST."""

    def __init__(self, sdir: Path):
        self.path = sdir / "lock"
        self.fd = -1

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = -1
            raise DestStateError("another rawsend command is working on this DEST", path=str(self.path.parent),
                                 hint="wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Recorder:
    """The state of a tree a full tracked stream is building: rows as files are made, in one
    transaction of a new database that replaces ``state.db`` only when the tree is in place."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.dir = state_dir(dest)
        self.made_dir = make_state_dir(self.dir)
        self.lock = Lock(self.dir).__enter__()
        remove_leftovers(self.dir, ("stage-", "journal", "state.db.tmp", "restore-"))
        self.tmp = self.dir / f"state.db.tmp-{os.getpid()}"
        self.db = _connect(self.tmp)
        os.chmod(self.tmp, 0o600)
        self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.db.execute("BEGIN")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)
        self._files: list[tuple] = []
        self._names: list[tuple] = []

    def file(self, file_id: int, row: FileRow) -> None:
        self._files.append((file_id, row.type, row.ino, row.size, row.mtime_ns))
        if len(self._files) >= BATCH:
            self._flush()

    def name(self, parent_id: int, name: bytes, file_id: int) -> None:
        self._names.append((parent_id, name, file_id))
        if len(self._names) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        self.db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?)", self._files)
        self.db.executemany("INSERT INTO names VALUES (?, ?, ?)", self._names)
        self._files.clear()
        self._names.clear()

    def commit(self, root_fd: int, held: Held) -> None:
        """The tree is complete: ``root_fd`` is its top directory, ``held`` the stream it came from."""
        self._flush()
        db = self.db
        db.executemany("INSERT INTO meta VALUES (?, ?)", list(root_identity(root_fd).items()))
        insert_chain(db, held)
        db.execute("COMMIT")
        db.close()
        self.db = None
        os.rename(self.tmp, self.dir / "state.db")
        fsync_dir(self.dir)
        self.lock.__exit__()

    def abort(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
            try:
                self.tmp.unlink()
            except OSError:
                pass
        if self.made_dir:
            remove_unused_state_dir(self.dir)
        self.lock.__exit__()


def insert_chain(db, held: Held) -> None:
    db.execute("INSERT INTO chain (stream_id, digest, first_id, next_id, created_ns, received_ns, key_id)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)",
               (held.stream_id, held.digest, held.first_id, held.next_id, held.created_ns, held.received_ns,
                held.key_id))


class DestState:
    """The open, locked state of a DEST that holds a tracked tree.  Use ``open``."""

    def __init__(self, dest: Path, sdir: Path, lock: Lock, db: sqlite3.Connection, dest_fd: int):
        self.dest, self.dir, self._lock, self.db, self.dest_fd = dest, sdir, lock, db, dest_fd
        self.rolled_forward: bytes | None = None  # stream id of an interrupted apply completed on open

    @classmethod
    def open(cls, dest, *, recover: bool = True) -> "DestState | None":
        """DEST's state, locked, with an interrupted apply rolled forward; None when DEST holds no
        tracked tree (no state beside it, or a state that belongs to another DEST)."""
        dest = Path(os.path.abspath(dest))
        try:
            dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DestStateError("it does not exist", path=str(dest),
                                 hint="an incremental stream changes a tree received before") from None
        except OSError as e:
            raise DestStateError(f"it cannot be opened as a directory: {e.strerror}", path=str(dest),
                                 hint="rawsend never follows a symlink at DEST") from None
        sdir = state_dir(dest)
        db = lock = None
        try:
            db_path = sdir / "state.db"
            try:
                st = os.lstat(db_path)
            except FileNotFoundError:
                os.close(dest_fd)
                return None
            if not stat.S_ISREG(st.st_mode):
                raise DestStateError("its state database is not a regular file", path=str(db_path),
                                     hint="remove it and receive a full stream into a new DEST")
            lock = Lock(sdir).__enter__()
            try:
                db = _connect(db_path)
                ok = (db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
                      and db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION)
                meta = dict(db.execute("SELECT key, value FROM meta")) if ok else {}
            except sqlite3.DatabaseError as e:
                raise DestStateError(f"its state database cannot be read: {e}", path=str(db_path),
                                     hint="receive a full stream into a new DEST") from None
            if not ok:
                raise DestStateError("its state database is not one rawsend wrote", path=str(db_path),
                                     hint="remove it and receive a full stream into a new DEST")
            if not _same_root(meta, dest_fd):
                db.close()
                lock.__exit__()
                os.close(dest_fd)
                return None  # the state of another DEST that was here once
        except BaseException:
            if db is not None:
                db.close()
            if lock is not None:
                lock.__exit__()
            os.close(dest_fd)
            raise
        state = cls(dest, sdir, lock, db, dest_fd)
        try:
            if recover:
                state.recover()
        except BaseException:
            state.close()
            raise
        return state

    @property
    def pending(self) -> bool:
        """An apply's commit phase was cut short and is not rolled forward yet."""
        return (self.dir / "journal").exists()

    def recover(self) -> None:
        """Roll a pending journal forward; remove staging directories no journal needs (the
        lock is ours, so whoever made them is gone)."""
        from rawsend.sinks import journal
        jpath = self.dir / "journal"
        if jpath.exists():
            self.rolled_forward = journal.roll_forward(self, jpath)
        for p in self.dir.iterdir():
            if p.name.startswith(("stage-", "journal.")):
                remove_tree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    # -- what DEST holds --------------------------------------------------------------------

    @property
    def held(self) -> Held:
        return self.chain[-1]

    @property
    def chain(self) -> list[Held]:
        return [Held(*r) for r in self.db.execute(
            "SELECT seq, stream_id, digest, first_id, next_id, created_ns, received_ns, key_id FROM chain"
            " ORDER BY seq")]

    def file_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM files").fetchone()[0]

    def file(self, file_id: int) -> FileRow | None:
        r = self.db.execute("SELECT type, ino, size, mtime_ns FROM files WHERE id = ?", (file_id,)).fetchone()
        return None if r is None else FileRow(*r)

    def names_of(self, file_id: int) -> list[tuple[int, bytes]]:
        return [(p, bytes(n)) for p, n in self.db.execute(
            "SELECT parent, name FROM names WHERE id = ? ORDER BY parent, name", (file_id,))]

    def entry(self, parent_id: int, name: bytes) -> int | None:
        r = self.db.execute("SELECT id FROM names WHERE parent = ? AND name = ?", (parent_id, name)).fetchone()
        return None if r is None else r[0]

    def children(self, parent_id: int) -> list[tuple[bytes, int]]:
        return [(bytes(n), i) for n, i in self.db.execute(
            "SELECT name, id FROM names WHERE parent = ?", (parent_id,))]

    def record_apply(self, held: Held, removed, rows, names_of) -> None:
        """One transaction: the manifest changes and the new head of the chain (idempotent: a
        chain already ending at ``held`` is left as it is).  ``rows``: (id, FileRow);
        ``names_of``: id -> its names now, for every id whose names changed."""
        db = self.db
        if self.held.stream_id == held.stream_id:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in removed])
            db.executemany("DELETE FROM names WHERE id = ?", [(i,) for i in [*removed, *names_of]])
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                           [(i, r.type, r.ino, r.size, r.mtime_ns) for i, r in rows])
            db.executemany("INSERT INTO names VALUES (?, ?, ?)",
                           [(p, n, i) for i, ns in names_of.items() for p, n in ns])
            insert_chain(db, held)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self._lock.__exit__()
        if self.dest_fd >= 0:
            os.close(self.dest_fd)
            self.dest_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def now_ns() -> int:
    return time.time_ns()
