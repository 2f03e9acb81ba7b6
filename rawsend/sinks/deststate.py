"""What a destination holds: the stream chain and the manifest of what rawsend wrote there.

It lives beside DEST, never inside the tree: ``PARENT/.DEST.rawsend/`` holds ``state.db`` (SQLite:
the chain and the manifest), ``lock`` (one rawsend at a time on DEST), and while an incremental
stream is applied its staging directory and, in the commit phase, ``journal``.  DEST's xattr
``user.rawsend.held`` carries a random token that the database also holds, so a DEST that was
replaced, or a state directory that outlived its DEST, is noticed (receiver-guarantees.md,
"Destination state").
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from rawsend.errors import DestStateError
from rawsend.fsutil import fsync_dir
from rawsend.sinks.namespace import remove_tree

HELD_XATTR = b"user.rawsend.held"
STATE_SUFFIX = ".rawsend"
SCHEMA_VERSION = 1
APPLICATION_ID = 0x72735244  # "rsRD"

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
    next_id: int
    created_ns: int
    received_ns: int
    key_id: bytes | None


@dataclass(slots=True)
class FileRow:
    type: int      # RecordType of its create (MKDIR, MKFILE, SYMLINK, MKNOD)
    ino: int       # 0: not on disk (a special file the receive skipped)
    size: int
    mtime_ns: int


def read_token(dest_fd: int) -> bytes | None:
    try:
        return os.getxattr(dest_fd, HELD_XATTR)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return None
        raise


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA trusted_schema = OFF")
    db.execute("PRAGMA synchronous = FULL")
    return db


def write_new_state(dest: Path, token: bytes, held: Held, files, names) -> Path:
    """Write a fresh state directory for a full stream, replacing any left by an earlier DEST.

    ``files``: (id, type, ino, size, mtime_ns) rows; ``names``: (parent, name, id) rows.  The
    database is built beside ``state.db`` and renamed over it, so a crash leaves the old one
    (whose token no DEST carries) or the new one.
    """
    sdir = state_dir(dest)
    _make_state_dir(sdir)
    with _Lock(sdir):
        for p in sdir.iterdir():  # staging and journals of the DEST that was here before
            if p.name.startswith(("stage-", "journal")):
                remove_tree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        tmp = sdir / f"state.db.tmp-{os.getpid()}"
        if tmp.exists():
            tmp.unlink()
        db = _connect(tmp)
        try:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("BEGIN")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('token', ?)", (token,))
            _insert_chain(db, held)
            db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?)", files)
            db.executemany("INSERT INTO names VALUES (?, ?, ?)", names)
            db.execute("COMMIT")
        finally:
            db.close()
        os.chmod(tmp, 0o600)
        os.rename(tmp, sdir / "state.db")
        fsync_dir(sdir)
    return sdir


def _insert_chain(db, held: Held) -> None:
    db.execute("INSERT INTO chain (stream_id, digest, first_id, next_id, created_ns, received_ns, key_id)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)",
               (held.stream_id, held.digest, held.first_id, held.next_id, held.created_ns, held.received_ns,
                held.key_id))


def _make_state_dir(sdir: Path) -> None:
    try:
        st = os.lstat(sdir)
    except FileNotFoundError:
        os.mkdir(sdir, 0o700)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise DestStateError("the state path beside DEST is not a directory", path=str(sdir),
                             hint="remove it; rawsend keeps what DEST holds there")


def remove_stale_state(dest: Path) -> None:
    """An untracked full stream into ``dest``: the state of a DEST that was here before goes."""
    sdir = state_dir(dest)
    try:
        st = os.lstat(sdir)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree(sdir)


class _Lock:
    """flock of ``lock`` in the state directory: one rawsend at a time on a DEST."""

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


class DestState:
    """The open, locked state of a DEST that holds a tracked tree.  Use ``open``."""

    def __init__(self, dest: Path, sdir: Path, lock: _Lock, db: sqlite3.Connection, dest_fd: int, token: bytes):
        self.dest, self.dir, self._lock, self.db, self.dest_fd, self.token = dest, sdir, lock, db, dest_fd, token
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
                                 hint="receive never follows a symlink at DEST") from None
        try:
            token = read_token(dest_fd)
            sdir = state_dir(dest)
            if token is None or not (sdir / "state.db").is_file() or (sdir / "state.db").is_symlink():
                os.close(dest_fd)
                return None
            lock = _Lock(sdir).__enter__()
        except BaseException:
            if dest_fd >= 0:
                try:
                    os.close(dest_fd)
                except OSError:
                    pass
            raise
        try:
            db = _connect(sdir / "state.db")
            ok = (db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
                  and db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION)
            row = db.execute("SELECT value FROM meta WHERE key = 'token'").fetchone() if ok else None
        except sqlite3.DatabaseError as e:
            lock.__exit__()
            os.close(dest_fd)
            raise DestStateError(f"its state database cannot be read: {e}", path=str(sdir / "state.db"),
                                 hint="receive a full stream into a new DEST") from None
        if row is None or row[0] != token:
            db.close()
            lock.__exit__()
            os.close(dest_fd)
            return None  # the state of another DEST that was here once
        state = cls(dest, sdir, lock, db, dest_fd, token)
        try:
            if recover:
                state.recover()
        except BaseException:
            state.close()
            raise
        return state

    def recover(self) -> None:
        """Roll a pending journal forward; remove staging directories no journal needs."""
        from rawsend.sinks import journal
        jpath = self.dir / "journal"
        if jpath.exists():
            self.rolled_forward = journal.roll_forward(self, jpath)
        for p in self.dir.iterdir():
            if p.name.startswith("stage-") or p.name.startswith("journal."):
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

    def manifest(self) -> tuple[dict[int, FileRow], list[tuple[int, bytes, int]]]:
        files = {r[0]: FileRow(r[1], r[2], r[3], r[4])
                 for r in self.db.execute("SELECT id, type, ino, size, mtime_ns FROM files")}
        names = self.db.execute("SELECT parent, name, id FROM names").fetchall()
        return files, names

    def record_apply(self, held: Held, removed, upserts, names_of) -> None:
        """One transaction: the manifest changes and the new head of the chain (idempotent: a
        chain already ending at ``held`` is left as it is)."""
        db = self.db
        if self.held.stream_id == held.stream_id:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in removed])
            db.executemany("DELETE FROM names WHERE id = ?", [(i,) for i in list(removed) + list(names_of)])
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", upserts)
            db.executemany("INSERT INTO names VALUES (?, ?, ?)",
                           [(p, n, i) for i, ns in names_of.items() for p, n in ns])
            _insert_chain(db, held)
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


def new_token() -> bytes:
    return secrets.token_bytes(16)


def now_ns() -> int:
    return time.time_ns()
