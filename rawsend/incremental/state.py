"""STATE: the sender's SQLite database of the streams sent from one SRC.

One STATE belongs to one source directory.  It holds the streams sent from it (newest
``keep`` of them), the manifest of each, the counter that hands out file ids and the
secret that keys every digest.  A manifest row is valid over a range of streams
[first_seq, last_seq] (last_seq NULL: up to the newest), so a stream adds rows only for
the inodes that changed; spec/incremental.md has the reasons.

The file is opened without following a symlink, checked before SQLite parses it (SQLite
header, application id, schema version), then checked again as a database (integrity,
exact schema, meta rows, source).  It is flock()ed for as long as it is open: one send at
a time, and a killed send leaves no lock.  A new stream's rows are written in a transaction
that only ``Recording.commit()`` commits, after the stream's last byte was flushed; a crash
before that leaves STATE as it was (SQLite rolls the journal back on the next open).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable

from rawsend import fsutil
from rawsend.incremental.digest import SECRET_LEN, Digester, new_secret
from rawsend.incremental.errors import (NotAState, StateDamaged, StateError, StateLocked, StateOtherSource,
                                        StateVersion, UnknownParent)
from rawsend.incremental.manifest import (EXTENT_ENTRY, FIRST_FILE_ID, NAME_ENTRY, ROOT_NAME, BlobError, Entry,
                                          FileIds, _new_entry, pack_extents, pack_names, pack_xattrs,
                                          unpack_extents, unpack_names, unpack_xattrs)
from rawsend.stream.records import MAX_NAME_LEN, ROOT_ID

_IFMT = 0o170000
SQLITE_MAGIC = b"SQLite format 3\0"
APPLICATION_ID = 0x72735354   # "rsST", at byte 68 of the SQLite header (big-endian)
SCHEMA_VERSION = 2            # PRAGMA user_version, at byte 60; version 1 is upgraded on open
DEFAULT_KEEP = 10
STREAM_ID_LEN = 16
END_DIGEST_LEN = 32

SCHEMA = (
    # key/value rows: source, secret, next_file_id, next_seq
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    # one row per committed stream; seq orders them and is never reused
    "CREATE TABLE streams (seq INTEGER PRIMARY KEY, stream_id BLOB NOT NULL UNIQUE,"
    " parent_seq INTEGER, started_ns INTEGER NOT NULL, committed_ns INTEGER NOT NULL,"
    " end_digest BLOB NOT NULL, files INTEGER NOT NULL)",
    # one row per version of an inode, part of every stream from first_seq to last_seq
    "CREATE TABLE inodes (file_id INTEGER NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER,"
    " dev INTEGER NOT NULL, ino INTEGER NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL,"
    " gid INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
    " names BLOB NOT NULL, xattrs BLOB, extents BLOB, btime_ns INTEGER NOT NULL)",
    # the read-only btrfs snapshot a stream was sent from, as its send stream names it (version 2)
    "CREATE TABLE snapshots (seq INTEGER PRIMARY KEY, uuid BLOB NOT NULL, ctransid INTEGER NOT NULL)",
)
SCHEMA_V1 = SCHEMA[:3]
_COLUMNS = "file_id, dev, ino, mode, uid, gid, size, mtime_ns, ctime_ns, names, xattrs, extents, btime_ns"
_IN_STREAM = "first_seq <= ?1 AND (last_seq IS NULL OR last_seq >= ?1)"
_ROWS = f"SELECT rowid, {_COLUMNS} FROM inodes WHERE {_IN_STREAM} ORDER BY file_id"
_OPEN_ROWS = f"SELECT rowid, {_COLUMNS} FROM inodes WHERE last_seq IS NULL"
# rows whose columns _decode() would refuse: SQLite checks the types of every row at once, and
# Python unpacks only rows known to hold the right types
_WELL_TYPED = (" AND ".join(f"typeof({c}) = 'integer'" for c in ("file_id", "dev", "ino", "mode", "uid", "gid",
                                                                   "size", "mtime_ns", "ctime_ns", "btime_ns"))
               + " AND min(file_id, dev, ino, mode, uid, gid, size) >= 0 AND typeof(names) = 'blob'"
               " AND typeof(xattrs) IN ('blob', 'null') AND typeof(extents) IN ('blob', 'null')")
_BAD_ROW = f"SELECT {_COLUMNS} FROM inodes WHERE {_IN_STREAM} AND NOT ({_WELL_TYPED}) LIMIT 1"
_BAD_OPEN_ROW = f"SELECT {_COLUMNS} FROM inodes WHERE last_seq IS NULL AND NOT ({_WELL_TYPED}) LIMIT 1"
_META_KEYS = {"source", "secret", "next_file_id", "next_seq"}


@dataclass(frozen=True)
class StreamInfo:
    """One committed stream."""

    seq: int
    stream_id: bytes
    parent_seq: int | None   # None: a full stream
    started_ns: int          # when its scan began (the race guard of the next send uses it)
    committed_ns: int
    end_digest: bytes
    files: int               # inodes in its manifest

    @property
    def id_hex(self) -> str:
        return self.stream_id.hex()


def _row(entry: Entry) -> tuple:
    return (entry.file_id, entry.dev, entry.ino, entry.mode, entry.uid, entry.gid, entry.size,
            entry.mtime_ns, entry.ctime_ns, pack_names(entry.names), pack_xattrs(entry.xattrs),
            pack_extents(entry.extents), entry.btime_ns)


class State:
    """An open, locked STATE.  Use ``State.open()``; close it (or use ``with``)."""

    def __init__(self, path: str, fd: int, db: sqlite3.Connection, source: bytes, secret: bytes,
                 next_file_id: int, next_seq: int):
        self.path = path
        self._fd = fd                 # holds the flock
        self._db = db
        self.source = source
        self.digester = Digester(secret)
        self.next_file_id = next_file_id
        self.next_seq = next_seq
        self._recording: Recording | None = None
        self._loaded: tuple | None = None  # (seq, entries, rowids by file id) of the last manifest read

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, source: str | os.PathLike | None, *, create: bool = True,
             warn: Callable[[str], None] | None = None) -> "State":
        """Open STATE for ``source`` (created, mode 0600, when missing and ``create``).

        ``source`` None: any source (a send of btrfs snapshots checks its parent snapshot's
        identity against the snapshots table instead); STATE must exist."""
        path = os.fspath(path)
        source_id = os.fsencode(os.path.realpath(source)) if source is not None else None
        fd = cls._open_fd(path)
        if fd is None:
            if not create or source_id is None:
                raise StateError("it does not exist", path=path)
            _create(path, source_id)
            fd = cls._open_fd(path)
            if fd is None:
                raise StateError("it vanished as it was created", path=path)
        try:
            return cls._open_checked(path, fd, source_id, warn)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _open_fd(path: str) -> int | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StateError("it is a symbolic link; STATE is never opened through one", path=path,
                                 hint="give the real path of the STATE file") from None
            raise StateError(f"cannot open it: {e.strerror}", path=path) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StateError("it is not a regular file", path=path,
                                 hint="give the path of a STATE file, or one that does not exist yet")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateLocked("another rawsend send holds its lock", path=path) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    @classmethod
    def _open_checked(cls, path: str, fd: int, source_id: bytes, warn) -> "State":
        st = os.fstat(fd)
        head = os.pread(fd, 100, 0)
        if not head:
            raise NotAState("it is empty", path=path)
        if len(head) < 100 or not head.startswith(SQLITE_MAGIC):
            raise NotAState("it is not an SQLite database", path=path)
        app_id = int.from_bytes(head[68:72], "big")
        if app_id != APPLICATION_ID:
            raise NotAState(f"it is an SQLite database of another program (application id {app_id:#010x})",
                            path=path)
        version = int.from_bytes(head[60:64], "big")
        if version not in (1, SCHEMA_VERSION):
            raise StateVersion(f"schema version {version}, this rawsend reads version {SCHEMA_VERSION}"
                               " (and upgrades version 1)", path=path)
        if warn is not None and st.st_mode & 0o077:
            warn(f"STATE {path} can be read by other users (mode {stat.S_IMODE(st.st_mode):04o});"
                 f" run: chmod 600 {path}")
        db = _connect(path)
        try:
            now = os.stat(path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise StateError("it was replaced while it was opened", path=path, hint="try again")
            with _damage(path):
                meta = _check_db(db, path, SCHEMA_V1 if version == 1 else SCHEMA)
                if version == 1:  # under the lock: add the snapshots table, nothing else changes
                    db.execute("BEGIN IMMEDIATE")
                    db.execute(SCHEMA[3])
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    db.execute("COMMIT")
            if source_id is not None and meta["source"] != source_id:
                raise StateOtherSource(f"it records source {os.fsdecode(meta['source'])!r},"
                                       f" not {os.fsdecode(source_id)!r}", path=path)
            return cls(path, fd, db, meta["source"], meta["secret"], meta["next_file_id"], meta["next_seq"])
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        if self._db is not None:
            if self._recording is not None:
                self._recording.abort()
            self._db.close()
            self._db = None
            os.close(self._fd)

    def __enter__(self) -> "State":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- streams ------------------------------------------------------------------------

    def streams(self) -> list[StreamInfo]:
        """Committed streams, oldest first."""
        with _damage(self.path):
            rows = self._db.execute("SELECT seq, stream_id, parent_seq, started_ns, committed_ns, end_digest,"
                                    " files FROM streams ORDER BY seq").fetchall()
        out = []
        for row in rows:
            info = StreamInfo(*row)
            if (not isinstance(info.stream_id, bytes) or len(info.stream_id) != STREAM_ID_LEN
                    or not isinstance(info.end_digest, bytes) or len(info.end_digest) != END_DIGEST_LEN):
                raise StateDamaged(f"stream {info.seq} has a malformed id or END digest", path=self.path)
            out.append(info)
        return out

    def pick_parent(self, prefix: str | None = None) -> StreamInfo | None:
        """The stream to send against: the newest, or the one whose id starts with ``prefix``
        (hex); None when STATE has no stream yet and no prefix was asked for."""
        streams = self.streams()
        if prefix is None:
            return streams[-1] if streams else None
        wanted = prefix.lower()
        if not wanted or any(c not in "0123456789abcdef" for c in wanted):
            raise UnknownParent(f"{prefix!r} is not a hexadecimal stream id prefix", path=self.path)
        found = [s for s in streams if s.id_hex.startswith(wanted)]
        if len(found) != 1:
            known = ", ".join(s.id_hex for s in streams) or "none"
            what = "matches no stream" if not found else f"matches {len(found)} streams"
            raise UnknownParent(f"{prefix!r} {what}; STATE holds: {known}", path=self.path)
        return found[0]

    def manifest(self, stream: StreamInfo) -> dict[int, Entry]:
        """file id -> Entry of every inode of ``stream``, checked to form one tree."""
        with _damage(self.path):
            bad = self._db.execute(_BAD_ROW, (stream.seq,)).fetchone()
            if bad is not None:
                _decode(bad, self.path)  # raises StateDamaged naming what is wrong with it
            rows = self._db.execute(_ROWS, (stream.seq,)).fetchall()
        entries, rowids = _decode_rows(rows, self.path)
        if len(entries) != len(rows):
            fid = next(a[1] for a, b in zip(rows, rows[1:]) if a[1] == b[1])  # rows are in file id order
            raise StateDamaged(f"file id {fid} has two rows in stream {stream.id_hex}", path=self.path)
        _check_tree(entries, self.path, stream.id_hex)
        self._loaded = (stream.seq, entries, rowids)  # a send against the newest stream reads it once
        return entries

    def snapshot_stream(self, uuid: bytes, ctransid: int) -> StreamInfo | None:
        """The kept stream sent from the btrfs snapshot (uuid, ctransid), or None."""
        with _damage(self.path):
            row = self._db.execute("SELECT seq FROM snapshots WHERE uuid = ? AND ctransid = ?"
                                   " ORDER BY seq DESC LIMIT 1", (uuid, ctransid)).fetchone()
        if row is None:
            return None
        return next((s for s in self.streams() if s.seq == row[0]), None)

    def snapshots(self) -> dict[int, tuple[bytes, int]]:
        """seq -> (uuid, ctransid) of the kept streams sent from a btrfs snapshot."""
        with _damage(self.path):
            rows = self._db.execute("SELECT seq, uuid, ctransid FROM snapshots ORDER BY seq").fetchall()
        return {seq: (uuid, ctransid) for seq, uuid, ctransid in rows
                if isinstance(uuid, bytes) and len(uuid) == 16 and isinstance(ctransid, int)}

    def file_ids(self, parent: dict[int, Entry]) -> FileIds:
        """The id map for a send against ``parent`` (a manifest, {} for a full stream)."""
        return FileIds({(e[1], e[2]): e for e in parent.values()}, self.next_file_id)

    def begin(self, ids: FileIds, parent: StreamInfo | None, started_ns: int) -> "Recording":
        """Start recording a new stream's manifest; nothing is kept until Recording.commit()."""
        if self._recording is not None:
            raise StateError("a stream is already being recorded", path=self.path)
        self._recording = Recording(self, ids, parent, started_ns)
        return self._recording

    def size(self) -> int:
        return os.fstat(self._fd).st_size


class Recording:
    """The manifest of the stream being sent, in an open transaction.

    ``add()`` every entry of the new manifest (any order); ``commit()`` once the stream is
    written and flushed.  Until then STATE's readers (and a crash) see STATE as it was.
    """

    def __init__(self, state: State, ids: FileIds, parent: StreamInfo | None, started_ns: int):
        self.state, self.ids, self.parent, self.started_ns = state, ids, parent, started_ns
        self.seq = state.next_seq
        db = state._db
        with _damage(state.path):
            db.execute("BEGIN IMMEDIATE")
            # the newest manifest's open rows: an unchanged inode keeps its row, extended
            newest = db.execute("SELECT max(seq) FROM streams").fetchone()[0]
            loaded = state._loaded
            if loaded is not None and loaded[0] == newest:  # the rows open now are that manifest's (STATE is locked)
                self._open, self._rowids = loaded[1], loaded[2]
            else:
                bad = db.execute(_BAD_OPEN_ROW).fetchone()
                if bad is not None:
                    _decode(bad, state.path)  # raises StateDamaged
                self._open, self._rowids = _decode_rows(db.execute(_OPEN_ROWS).fetchall(), state.path)
        self._seen: set[int] = set()
        self.added_rows = 0
        self.snapshot: tuple[bytes, int] | None = None  # (uuid, ctransid) of the btrfs snapshot sent

    def add(self, entry: Entry) -> None:
        fid = entry[0]
        if fid in self._seen:
            raise ValueError(f"file id {fid} added twice")
        self._seen.add(fid)
        kept = self._open.get(fid)
        if kept is not None and (kept is entry or kept == entry):
            return  # the row of the newest stream stays open: no bytes for an unchanged inode
        with _damage(self.state.path):
            if kept is not None:
                self.state._db.execute("UPDATE inodes SET last_seq = ? WHERE rowid = ?",
                                       (self.seq - 1, self._rowids[fid]))
            self.state._db.execute(f"INSERT INTO inodes (first_seq, {_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                   (self.seq, *_row(entry)))
        self.added_rows += 1

    def commit(self, stream_id: bytes, end_digest: bytes, keep: int = DEFAULT_KEEP) -> StreamInfo:
        """Make the stream part of STATE, then keep only the newest ``keep`` streams.

        Call it only after the stream's last byte was written and flushed.
        """
        if len(stream_id) != STREAM_ID_LEN or len(end_digest) != END_DIGEST_LEN:
            raise ValueError("stream id must be 16 bytes and END digest 32")
        if keep < 1:
            raise StateError(f"--keep-state {keep}: STATE must keep at least the stream just sent",
                             path=self.state.path, hint="give --keep-state 1 or more")
        st, db = self.state, self.state._db
        with _damage(st.path):
            if db.execute("SELECT 1 FROM streams WHERE stream_id = ?", (stream_id,)).fetchone():
                raise StateError(f"stream {stream_id.hex()} is already recorded", path=st.path)
            seen = self._seen
            gone = [(self.seq - 1, rowid) for fid, rowid in self._rowids.items() if fid not in seen]
            db.executemany("UPDATE inodes SET last_seq = ? WHERE rowid = ?", gone)
            info = StreamInfo(self.seq, stream_id, self.parent.seq if self.parent else None, self.started_ns,
                              time.time_ns(), end_digest, len(self._seen))
            db.execute("INSERT INTO streams VALUES (?,?,?,?,?,?,?)",
                       (info.seq, info.stream_id, info.parent_seq, info.started_ns, info.committed_ns,
                        info.end_digest, info.files))
            if self.snapshot is not None:
                db.execute("INSERT INTO snapshots VALUES (?,?,?)", (info.seq, *self.snapshot))
            db.executemany("UPDATE meta SET value = ? WHERE key = ?",
                           ((max(st.next_file_id, self.ids.next_id), "next_file_id"), (self.seq + 1, "next_seq")))
            _prune(db, keep)
            db.execute("COMMIT")
        st.next_file_id = max(st.next_file_id, self.ids.next_id)
        st.next_seq = self.seq + 1
        st._recording = None
        return info

    def abort(self) -> None:
        """Forget the recording; STATE stays as it was."""
        try:
            self.state._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # nothing to roll back
        self.state._recording = None


# -- helpers --------------------------------------------------------------------------------

class _damage:
    """Turn SQLite's errors into StateDamaged naming the file."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise StateLocked(f"SQLite says: {exc}", path=self.path) from None
        if isinstance(exc, sqlite3.OperationalError):  # full disk, I/O error, read-only: not the file's fault
            raise StateError(f"cannot write it: SQLite says: {exc}", path=self.path,
                             hint="STATE is as it was before this send; free space or fix the disk, then send again"
                             ) from None
        if isinstance(exc, sqlite3.Error):
            raise StateDamaged(f"SQLite says: {exc}", path=self.path) from None
        return False


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, timeout=0)
    db.execute("PRAGMA trusted_schema = OFF")  # a crafted file's triggers or views run nothing of ours
    return db


def _expected_schema(schema=SCHEMA) -> list[tuple]:
    db = sqlite3.connect(":memory:")
    for sql in schema:
        db.execute(sql)
    rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
    db.close()
    return rows


def _check_db(db: sqlite3.Connection, path: str, schema=SCHEMA) -> dict:
    problems = db.execute("PRAGMA quick_check").fetchall()
    if problems != [("ok",)]:
        raise StateDamaged(f"SQLite integrity check: {problems[0][0]}", path=path)
    tables = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
    if tables != _expected_schema(schema):
        raise NotAState("its tables are not those of a rawsend STATE", path=path)
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if set(meta) != _META_KEYS:
        raise StateDamaged(f"meta table has keys {sorted(meta)}, expected {sorted(_META_KEYS)}", path=path)
    if not isinstance(meta["secret"], bytes) or len(meta["secret"]) != SECRET_LEN:
        raise StateDamaged("its secret is not 32 bytes", path=path)
    if not isinstance(meta["source"], bytes) or not meta["source"]:
        raise StateDamaged("its source is not a path", path=path)
    for key in ("next_file_id", "next_seq"):
        if not isinstance(meta[key], int) or meta[key] < 1:
            raise StateDamaged(f"meta {key} is not a positive integer", path=path)
    newest_seq = db.execute("SELECT max(seq) FROM streams").fetchone()[0] or 0
    newest_id = db.execute("SELECT max(file_id) FROM inodes").fetchone()[0] or 0
    if newest_seq >= meta["next_seq"] or newest_id >= meta["next_file_id"]:
        raise StateDamaged("its counters are behind its rows (ids could be handed out twice)", path=path)
    return meta


def _create(path: str, source_id: bytes) -> None:
    """Build an empty STATE beside ``path`` and link it into place, never over anything."""
    directory = os.path.dirname(path) or "."
    base = os.path.basename(path)
    try:
        for name in os.listdir(directory):  # a temporary of a create that was killed
            if name.startswith(f"{base}.tmp-") and fsutil.left_by_dead_process(name[len(base) + 5:]):
                os.unlink(os.path.join(directory, name))
    except OSError:
        pass
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StateError(f"cannot create it: {e.strerror}", path=path) from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits away, never added: make it exact
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("BEGIN")
            for sql in SCHEMA:
                db.execute(sql)
            db.executemany("INSERT INTO meta VALUES (?, ?)",
                           (("source", source_id), ("secret", new_secret()),
                            ("next_file_id", FIRST_FILE_ID), ("next_seq", 1)))
            db.execute("COMMIT")
        finally:
            db.close()
        os.fsync(fd)
        try:
            os.link(tmp, path)  # fails if another send created it meanwhile: then that one is used
        except FileExistsError:
            pass
        fsutil.fsync_dir(directory)
    except OSError as e:
        raise StateError(f"cannot create it: {e.strerror}", path=path) from None
    finally:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _decode(row: tuple, path: str) -> Entry:
    (file_id, dev, ino, mode, uid, gid, size, mtime_ns, ctime_ns, names, xattrs, extents, btime_ns) = row
    try:
        for v in (file_id, dev, ino, mode, uid, gid, size, mtime_ns, ctime_ns, btime_ns):
            if type(v) is not int:
                raise BlobError("a number column holds something else")
        if min(file_id, dev, ino, mode, uid, gid, size) < 0:
            raise BlobError("a field that cannot be negative is")
        if type(names) is not bytes or (xattrs is not None and type(xattrs) is not bytes) or (
                extents is not None and type(extents) is not bytes):
            raise BlobError("a blob column holds something else")
        return Entry(file_id, dev, ino, mode, uid, gid, size, mtime_ns, ctime_ns, unpack_names(names),
                     unpack_xattrs(xattrs), unpack_extents(extents), btime_ns)
    except BlobError as e:
        raise StateDamaged(f"row of file id {file_id}: {e}", path=path) from None


def _decode_rows(rows: list, path: str) -> tuple[dict[int, Entry], dict[int, int]]:
    """file id -> Entry and file id -> rowid of ``(rowid, *_COLUMNS)`` rows whose column types
    _BAD_ROW has checked; the blobs are checked here as they are unpacked."""
    entries: dict[int, Entry] = {}
    rowids: dict[int, int] = {}
    new, unpack_name, one_name = _new_entry, NAME_ENTRY.unpack_from, NAME_ENTRY.size
    extents_of, extent_size = EXTENT_ENTRY.iter_unpack, EXTENT_ENTRY.size
    fid = None
    try:
        for rowid, fid, dev, ino, mode, uid, gid, size, mtime, ctime, names, xattrs, extents, btime in rows:
            # most inodes have one name, no xattrs and a few extents: unpacked inline
            if len(names) > one_name and unpack_name(names)[1] == len(names) - one_name:
                names = ((unpack_name(names)[0], names[one_name:]),)
            else:
                names = unpack_names(names)
            if extents is None:
                extents = ()
            elif len(extents) % extent_size:
                extents = unpack_extents(extents)  # raises BlobError
            else:
                extents = tuple(extents_of(extents))
            entries[fid] = new(Entry, (fid, dev, ino, mode, uid, gid, size, mtime, ctime, names,
                                       () if xattrs is None else unpack_xattrs(xattrs), extents, btime))
            rowids[fid] = rowid
    except BlobError as e:
        raise StateDamaged(f"row of file id {fid}: {e}", path=path) from None
    return entries, rowids


def _check_tree(entries: dict[int, Entry], path: str, stream: str) -> None:
    """A manifest must be one tree: root first, parents that are directories, unique names."""
    root = entries.get(ROOT_ID)
    if root is None or not root.is_dir or root.names != (ROOT_NAME,):
        raise StateDamaged(f"stream {stream} has no root directory (file id {ROOT_ID})", path=path)
    dirs = {fid: e for fid, e in entries.items() if e[3] & _IFMT == stat.S_IFDIR}
    slots = [slot for e in entries.values() if e[0] != ROOT_ID for slot in e[9]]
    names = list(map(itemgetter(1), slots))
    joined = b"\0".join(names)
    # every rule at once, in C loops over all names; _tree_problem() finds the first broken one
    if not (all(len(e[9]) == 1 for e in dirs.values()) and dirs.keys() >= set(map(itemgetter(0), slots))
            and len(set(slots)) == len(slots) and b"/" not in joined and joined.count(b"\0") == max(len(names) - 1, 0)
            and min(map(len, names), default=1) > 0 and max(map(len, names), default=0) <= MAX_NAME_LEN
            and {b".", b".."}.isdisjoint(names)):
        _tree_problem(entries, path, stream)
    # every parent is a directory: the tree has no cycle when every directory reaches the root
    reaches_root = {ROOT_ID}
    for e in dirs.values():
        chain, fid = [], e[0]
        while fid not in reaches_root:
            chain.append(fid)
            if len(chain) > len(dirs):
                raise StateDamaged(f"directories of stream {stream} form a cycle at file id {e[0]}", path=path)
            fid = entries[fid][9][0][0]
        reaches_root.update(chain)


def _tree_problem(entries: dict[int, Entry], path: str, stream: str) -> None:
    """Raise StateDamaged naming the first entry that breaks a rule of _check_tree."""
    slots: set = set()
    for e in entries.values():
        names = e[9]
        if e[3] & _IFMT == stat.S_IFDIR and len(names) != 1:
            raise StateDamaged(f"directory file id {e[0]} has {len(names)} names", path=path)
        if e[0] == ROOT_ID:
            continue
        for slot in names:
            parent, name = slot
            p = entries.get(parent)
            if p is None or p[3] & _IFMT != stat.S_IFDIR:
                raise StateDamaged(f"file id {e[0]} is in {parent}, which is not a directory of stream"
                                   f" {stream}", path=path)
            if not name or len(name) > MAX_NAME_LEN or b"/" in name or b"\0" in name or name in (b".", b".."):
                raise StateDamaged(f"file id {e[0]} has an invalid name {name!r}", path=path)
            if slot in slots:
                raise StateDamaged(f"two inodes are named {name!r} in directory {parent}", path=path)
            slots.add(slot)
    raise StateDamaged(f"stream {stream} is not one tree", path=path)  # not reached: the rules are the same


def _prune(db: sqlite3.Connection, keep: int) -> None:
    """Drop all but the newest ``keep`` streams, and the rows no kept stream is made of."""
    db.execute("DELETE FROM streams WHERE seq NOT IN (SELECT seq FROM streams ORDER BY seq DESC LIMIT ?)", (keep,))
    db.execute("DELETE FROM inodes WHERE last_seq IS NOT NULL AND NOT EXISTS"
               " (SELECT 1 FROM streams WHERE seq BETWEEN inodes.first_seq AND inodes.last_seq)")
    db.execute("DELETE FROM snapshots WHERE seq NOT IN (SELECT seq FROM streams)")
