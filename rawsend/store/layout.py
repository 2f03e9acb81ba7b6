"""A store's directory: marker file, stream files, index entries, temporaries, the lock.

spec/store-format.md is the normative text.  The layout:

    STORE/rawsend-store             marker: {"format": "rawsend-store", "version": 1}
    STORE/lock                      flock(2) target around every commit
    STORE/streams/<id>.rs           verbatim stream bytes
    STORE/index/<id>.json           one index entry per stream; its presence lists the stream
    STORE/tmp/<pid>-<random>.<ext>  files being written

A stream becomes part of the store in two atomic, durable steps, both under
the lock: its file is renamed into ``streams/``, then its index entry into
``index/``.  Readers list, send and verify only streams with an index entry,
so they never see one half received, and they never need the lock.

Nothing in the directory is trusted (names.py): the store's directories are
held open as descriptors, checked once to be real directories, and every
name in them is opened, renamed and removed relative to those descriptors.
The ``Path`` attributes only name things in messages.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from rawsend.errors import RawsendError, StoreDamaged, StoreError
from rawsend.fsutil import fsync_dir, left_by_dead_process, write_all
from rawsend.store.chains import Chains
from rawsend.store.index import UNRECORDED, IndexEntry, Parent
from rawsend.store.names import NOT_OURS_HINT, kind_of, lstat_at, not_ours, open_dir, open_file, read_small
from rawsend.stream.checked import CheckedReader, HeaderEvent, RecordEvent
from rawsend.stream.records import Base, Feature

MARKER_NAME = "rawsend-store"
STORE_FORMAT = "rawsend-store"
STORE_VERSION = 1
LOCK_NAME = "lock"
STREAMS_DIR = "streams"
INDEX_DIR = "index"
TMP_DIR = "tmp"
STREAM_SUFFIX = ".rs"
INDEX_SUFFIX = ".json"
LAYOUT_NAMES = frozenset({MARKER_NAME, LOCK_NAME, STREAMS_DIR, INDEX_DIR, TMP_DIR})

MARKER_CAP = 4096       # the marker rawsend writes is 45 bytes
ENTRY_CAP = 64 * 1024   # an index entry rawsend writes is under 1 KiB
READ_BUFFER = 1 << 20   # reading a stored stream

DIR_MODE = 0o700   # a store holds other hosts' data: private unless its owner widens it
FILE_MODE = 0o600


def is_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding a store's marker.

    A marker that is a symlink or a FIFO still counts, so that opening the
    store refuses it by name instead of the directory passing for a tree.
    """
    try:
        st = os.lstat(os.path.join(path, MARKER_NAME))
    except OSError:
        return False
    return not stat.S_ISDIR(st.st_mode)


def os_error(e: OSError, what: str, path) -> StoreError:
    """A StoreError for a failed write, with what to do about the common causes."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"{what}: no space left on the store's filesystem", path=str(path),
                          hint="free space there and receive again; the store is unchanged")
    return StoreError(f"{what}: {e.strerror}", path=str(path))


class Store:
    """An opened store.  ``Store.open`` reads one; ``Store.create`` makes one if needed.

    It holds descriptors of the store's directories: use it in a ``with`` block
    (or call ``close``).
    """

    def __init__(self, root: Path, root_fd: int):
        self.root = root
        self.streams = root / STREAMS_DIR
        self.index = root / INDEX_DIR
        self.tmp = root / TMP_DIR
        self.root_fd = root_fd
        self.streams_fd = self.index_fd = self.tmp_fd = -1
        # what Store.create made (the directory; the store in it): a failed first receive takes it away
        self.made_root = self.made_store = False
        try:
            if (st := lstat_at(root_fd, LOCK_NAME)) is not None and not stat.S_ISREG(st.st_mode):
                raise not_ours(root / LOCK_NAME, "the lock file", kind_of(st.st_mode))
            self.streams_fd = self._open_layout_dir(STREAMS_DIR)
            self.index_fd = self._open_layout_dir(INDEX_DIR)
            self.tmp_fd = self._open_layout_dir(TMP_DIR, missing_ok=True)  # readers never need it
        except BaseException:
            self.close()
            raise

    def _open_layout_dir(self, name: str, missing_ok: bool = False) -> int:
        path = self.root / name
        try:
            return open_dir(self.root_fd, name, path, f"the store's {name}/")
        except FileNotFoundError:
            if missing_ok:
                return -1
            raise StoreDamaged(f"the store has no {name}/ directory", path=str(path), hint=NOT_OURS_HINT) from None
        except OSError as e:
            raise StoreError(f"cannot open the store's {name}/: {e.strerror}", path=str(path)) from None

    def close(self) -> None:
        for name in ("tmp_fd", "index_fd", "streams_fd", "root_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()  # a Store dropped without close still gives its descriptors back

    # -- opening and creating -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> Store:
        root = Path(os.path.abspath(path))
        root_fd = _open_root(root)
        try:
            _check_marker(root_fd, root)
        except BaseException:
            os.close(root_fd)
            raise
        return cls(root, root_fd)

    @classmethod
    def create(cls, path: str | os.PathLike) -> Store:
        """Open the store at ``path``, creating it (and the directory) when missing.

        Safe to run concurrently and after a crash half-way: every step is
        idempotent and the marker file, written last, is what makes the
        directory a store.  A layout directory or the lock that went missing
        is made again.
        """
        root = Path(os.path.abspath(path))
        if not root.parent.is_dir():
            raise StoreError("its parent directory does not exist", path=str(root))
        made = False
        try:
            os.mkdir(root, DIR_MODE)
            made = True
        except FileExistsError:
            if not is_store(root) and (root.is_symlink() or not root.is_dir()):
                raise StoreError("it exists and is not a directory", path=str(root)) from None
        except OSError as e:
            raise os_error(e, "cannot create the store", root) from None
        root_fd = _open_root(root)
        try:
            has_marker = lstat_at(root_fd, MARKER_NAME) is not None
            if has_marker:
                _check_marker(root_fd, root)
            else:
                foreign = sorted(set(os.listdir(root_fd)) - LAYOUT_NAMES)
                if foreign:
                    raise StoreError(f"it exists, is not a rawsend store and is not empty (holds {foreign[0]!r})",
                                     path=str(root), hint="choose a new or empty directory for the store")
            _make_layout(root_fd, root)
        except BaseException:
            os.close(root_fd)
            raise
        store = cls(root, root_fd)  # closes root_fd itself if the layout is not what it made
        store.made_root, store.made_store = made, not has_marker
        try:
            if not has_marker:
                marker = json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION}).encode() + b"\n"
                store._write_atomic(root_fd, MARKER_NAME, marker)
            if made:
                fsync_dir(root.parent)
        except BaseException as e:
            store.close()
            if isinstance(e, OSError):
                raise os_error(e, "cannot create the store", root) from None
            raise
        return store

    # -- paths and entries ----------------------------------------------------------------

    def stream_path(self, stream_id: str) -> Path:
        return self.streams / (stream_id + STREAM_SUFFIX)

    def entry_path(self, stream_id: str) -> Path:
        return self.index / (stream_id + INDEX_SUFFIX)

    def open_stream(self, stream_id: str) -> BinaryIO:
        """The stored stream file, for reading; it must be a regular file (not a symlink, not a FIFO)."""
        path = self.stream_path(stream_id)
        try:
            fd, _ = open_file(self.streams_fd, stream_id + STREAM_SUFFIX, path, "the stored stream file")
        except OSError as e:
            raise StoreError(f"stored stream {stream_id}: cannot open its file: {e.strerror}", path=str(path),
                             hint=damaged_hint(stream_id)) from None
        return os.fdopen(fd, "rb", buffering=READ_BUFFER)

    def read_entry(self, stream_id: str) -> IndexEntry | None:
        path = self.entry_path(stream_id)
        try:
            data = read_small(self.index_fd, stream_id + INDEX_SUFFIX, path, "the index entry", ENTRY_CAP)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read an index entry: {e.strerror}", path=str(path)) from None
        entry = IndexEntry.from_json(data, str(path))
        if entry.stream_id != stream_id:
            raise StoreDamaged(f"index entry names stream {entry.stream_id}", path=str(path),
                             hint="the entry was renamed or damaged; delete it and receive the stream again")
        if entry.parent == UNRECORDED:
            entry = dataclasses.replace(entry, parent=self._parent_in_file(stream_id))
        return entry

    def _parent_in_file(self, stream_id: str) -> Parent | None:
        """The base a stream names in its file, for an index entry written before entries recorded it:
        the header and, in an incremental stream, record 1 (BASE, clear even when sealed)."""
        with self.open_stream(stream_id) as f:
            try:
                for event in CheckedReader(f, require_key=False):
                    if isinstance(event, RecordEvent) and isinstance(event.record, Base):
                        return Parent(event.record.stream_id.hex(), event.record.digest.hex())
                    if not isinstance(event, HeaderEvent) or not event.header.required_features & Feature.INCREMENTAL:
                        return None
            except RawsendError as e:
                raise StoreDamaged(f"stored stream {stream_id}: its index entry does not say whether it has a base,"
                                   f" and its file does not either: {e}", path=str(self.stream_path(stream_id)),
                                   hint=damaged_hint(stream_id)) from None
        return None

    def entries(self, damaged: list[StoreError] | None = None) -> list[IndexEntry]:
        """Every stream of the store, oldest received first.

        A damaged index entry raises, or, when a ``damaged`` list is given, is
        appended to it and left out, so the other streams can still be listed.
        """
        try:
            names = os.listdir(self.index_fd)
        except OSError as e:
            raise StoreError(f"cannot list the index: {e.strerror}", path=str(self.index)) from None
        found = []
        for name in sorted(names):
            if name.endswith(INDEX_SUFFIX) and _is_stream_id(name[:-len(INDEX_SUFFIX)]):
                try:
                    entry = self.read_entry(name[:-len(INDEX_SUFFIX)])
                except (StoreError, StoreDamaged) as e:
                    if damaged is None:
                        raise
                    damaged.append(e)
                    continue
                if entry is not None:
                    found.append(entry)
        return sorted(found, key=lambda e: (e.received_ns, e.stream_id))

    def find(self, prefix: str | None) -> IndexEntry:
        """The stream whose id starts with ``prefix``, or the newest received when None."""
        entries = self.entries()
        if not entries:
            raise StoreError("the store holds no stream", path=str(self.root))
        if prefix is None:
            return entries[-1]
        want = prefix.lower()
        matches = [e for e in entries if e.stream_id.startswith(want)]
        if not matches:
            raise StoreError(f"no stream id starts with {prefix!r}", path=str(self.root),
                             hint="'rawsend ls STORE' lists the stream ids")
        if len(matches) > 1:
            raise StoreError(f"{len(matches)} stream ids start with {prefix!r}", path=str(self.root),
                             hint="give more digits of the id")
        return matches[0]

    # -- writing ---------------------------------------------------------------------------

    def _open_lock(self) -> int:
        path = self.root / LOCK_NAME
        try:
            fd, _ = open_file(self.root_fd, LOCK_NAME, path, "the lock file", os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as e:
            raise os_error(e, "cannot open the lock file", path) from None
        return fd

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive flock on STORE/lock: commits and clean-ups of concurrent receives take turns."""
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # O_NONBLOCK does not apply to flock: this waits
            yield
        finally:
            os.close(fd)  # releases the lock

    def new_temp(self, suffix: str) -> tuple[Path, int]:
        """A new file in tmp/ named with this process's id, open for writing."""
        name = f"{os.getpid()}-{secrets.token_hex(8)}{suffix}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                         dir_fd=self.tmp_fd)
        except OSError as e:
            raise os_error(e, "cannot create a temporary file", self.tmp / name) from None
        return self.tmp / name, fd

    def remove_temp(self, temp: Path) -> None:
        _unlink(self.tmp_fd, temp.name)

    def _write_atomic(self, dir_fd: int, name: str, data: bytes) -> None:
        """Write a small file durably: temp in tmp/, fsync, rename to ``name`` in ``dir_fd``, fsync that."""
        temp, fd = self.new_temp(".part")
        try:
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp.name, name, src_dir_fd=self.tmp_fd, dst_dir_fd=dir_fd)
        except BaseException:
            self.remove_temp(temp)
            raise
        os.fsync(dir_fd)

    def commit(self, temp: Path, entry: IndexEntry) -> bool:
        """Make a received, fsynced stream file part of the store; False when it was already there.

        Under the lock: the stream file is renamed into streams/ and that
        directory fsynced, then the index entry is written the same way.  If
        the entry cannot be written the stream file is taken out again.
        """
        with self.locked():
            self.remove_orphans()
            existing = self.read_entry(entry.stream_id)
            if existing is not None:
                if existing.sha256 == entry.sha256 and existing.stored_bytes == entry.stored_bytes:
                    self.remove_temp(temp)
                    return False
                raise StoreError(f"stream {entry.stream_id} is already in the store with different bytes"
                                 f" (stored SHA-256 {existing.sha256[:16]}..., received {entry.sha256[:16]}...)",
                                 path=str(self.entry_path(entry.stream_id)),
                                 hint="the store keeps the first copy; nothing was changed")
            name = entry.stream_id + STREAM_SUFFIX
            try:
                os.rename(temp.name, name, src_dir_fd=self.tmp_fd, dst_dir_fd=self.streams_fd)
                os.fsync(self.streams_fd)
            except OSError as e:
                raise os_error(e, "cannot move the stream into place", self.stream_path(entry.stream_id)) from None
            try:
                self._write_atomic(self.index_fd, entry.stream_id + INDEX_SUFFIX, entry.to_json())
            except BaseException as e:
                _unlink(self.streams_fd, name)
                os.fsync(self.streams_fd)
                if isinstance(e, OSError):
                    raise os_error(e, "cannot write the index entry", self.entry_path(entry.stream_id)) from None
                raise
        return True

    def needed_by_kept(self, stream_id: str, kept: list[IndexEntry]) -> list[str]:
        """Ids of the ``kept`` streams whose chain (their parent links, followed through the
        store's streams) passes through ``stream_id``: they cannot be restored without it."""
        return Chains(self.entries()).through(stream_id, [e.stream_id for e in kept])

    def receiving_pids(self) -> list[int]:
        """Live processes other than this one with a temporary file in tmp/: receives under way."""
        pids = set()
        for name in os.listdir(self.tmp_fd):
            pid = name.split("-", 1)[0]
            if pid.isascii() and pid.isdigit() and int(pid) != os.getpid() and not left_by_dead_process(name):
                pids.add(int(pid))
        return sorted(pids)

    @contextmanager
    def locked_unless_busy(self) -> Iterator[None]:
        """The lock, refused (not waited for) while another process commits or receives."""
        fd = self._open_lock()
        try:
            busy = ""
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = "another process holds its lock"
            if not busy and (pids := self.receiving_pids()):
                busy = f"process {pids[0]} is receiving into it"
            if busy:
                raise StoreError(f"the store is busy: {busy}", path=str(self.root),
                                 hint="wait until that receive ended and run the command again; nothing was removed")
            yield
        finally:
            os.close(fd)

    def remove(self, stream_id: str) -> None:
        """Take one stream out of the store; call holding ``locked_unless_busy``.

        The index entry is renamed into tmp/ first, which delists the stream in one step;
        then the stream file and that temporary go.  Cut off between the steps, what is
        left is an unlisted stream file and a dead process's temporary, both removed by
        the next writer.
        """
        entry_name = stream_id + INDEX_SUFFIX
        aside = f"{os.getpid()}-{secrets.token_hex(8)}.removed"
        try:
            os.rename(entry_name, aside, src_dir_fd=self.index_fd, dst_dir_fd=self.tmp_fd)
            os.fsync(self.index_fd)
            _unlink(self.streams_fd, stream_id + STREAM_SUFFIX)
            os.fsync(self.streams_fd)
            _unlink(self.tmp_fd, aside)
        except OSError as e:
            raise os_error(e, f"cannot remove stream {stream_id}", self.entry_path(stream_id)) from None

    def remove_if_unused(self) -> bool:
        """Take away the store this process just made, when nothing is in it (a first receive
        that failed): no stream, no index entry, no temporary of another receive.  Whatever
        is in it stays, and so does the store.  A directory that was there before (empty) stays,
        empty again.  True when the store is gone."""
        if not self.made_store:
            return False
        with self.locked():
            if os.listdir(self.streams_fd) or os.listdir(self.index_fd) or os.listdir(self.tmp_fd):
                return False
            for name in (MARKER_NAME, LOCK_NAME):
                _unlink(self.root_fd, name)
            for name in (TMP_DIR, INDEX_DIR, STREAMS_DIR):
                os.rmdir(name, dir_fd=self.root_fd)
        self.close()
        if self.made_root:
            try:
                os.rmdir(self.root)  # fails, and the directory stays, if anything else appeared in it
            except OSError:
                pass
        return True

    def clean_stale_temps(self) -> list[Path]:
        """Remove temporaries whose writing process is gone (a receive killed or cut off)."""
        removed = []
        with self.locked():  # no index temp is half-written while the lock is held
            try:
                for name in os.listdir(self.tmp_fd):
                    if left_by_dead_process(name):
                        st = lstat_at(self.tmp_fd, name)
                        if st is not None and stat.S_ISDIR(st.st_mode):  # rawsend writes only files there
                            raise not_ours(self.tmp / name, "a temporary entry", "a directory")
                        _unlink(self.tmp_fd, name)  # a symlink is removed, never followed
                        removed.append(self.tmp / name)
            except OSError as e:
                raise os_error(e, "cannot clean up temporary files", self.tmp) from None
        return removed

    def remove_orphans(self) -> list[Path]:
        """Stream files without an index entry: left by a receive that died between its two renames.

        Call with the lock held: only then is no live receive between those renames.
        """
        removed = []
        for name in os.listdir(self.streams_fd):
            stem = name[:-len(STREAM_SUFFIX)]
            if not (name.endswith(STREAM_SUFFIX) and _is_stream_id(stem)):
                continue
            if lstat_at(self.index_fd, stem + INDEX_SUFFIX) is not None:
                continue  # listed, or an entry that is damaged: not an orphan
            st = lstat_at(self.streams_fd, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise not_ours(self.streams / name, "a stream file", "a directory")
            _unlink(self.streams_fd, name)
            removed.append(self.streams / name)
        if removed:
            os.fsync(self.streams_fd)
        return removed


def _open_root(root: Path) -> int:
    """The store's own directory; a symlink in the path the user gave is the user's choice."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StoreError("not a rawsend store: it does not exist", path=str(root)) from None
    except NotADirectoryError:
        raise StoreError("not a rawsend store: it is not a directory", path=str(root)) from None
    except OSError as e:
        raise StoreError(f"cannot open the store: {e.strerror}", path=str(root)) from None


def _check_marker(root_fd: int, root: Path) -> None:
    marker = root / MARKER_NAME
    try:
        data = read_small(root_fd, MARKER_NAME, marker, "the marker file", MARKER_CAP)
    except FileNotFoundError:
        raise StoreError("not a rawsend store (it has no marker file "
                         f"{MARKER_NAME!r})", path=str(root),
                         hint="give the directory that 'receive --store' created") from None
    except OSError as e:
        raise StoreError(f"cannot read the marker file: {e.strerror}", path=str(marker)) from None
    try:
        obj = json.loads(data)
        fmt, version = obj["format"], obj["version"]
    except (ValueError, UnicodeDecodeError, TypeError, KeyError):
        raise StoreDamaged("the marker file is damaged", path=str(marker),
                         hint=f'it must hold {{"format": "{STORE_FORMAT}", "version": {STORE_VERSION}}}') from None
    if fmt != STORE_FORMAT:
        raise StoreError(f"the marker file names format {fmt!r}, not {STORE_FORMAT!r}", path=str(marker))
    if type(version) is not int or version != STORE_VERSION:  # true and 1.0 equal 1 in Python
        raise StoreError(f"store format version {version!r}, this rawsend reads {STORE_VERSION}",
                         path=str(marker), hint="use the rawsend that wrote this store, or a newer one")


def _make_layout(root_fd: int, root: Path) -> None:
    """The directories and the lock file, where missing; what is there is checked when opened."""
    try:
        for name in (STREAMS_DIR, INDEX_DIR, TMP_DIR):
            try:
                os.mkdir(name, DIR_MODE, dir_fd=root_fd)
            except FileExistsError:
                pass
        fd, _ = open_file(root_fd, LOCK_NAME, root / LOCK_NAME, "the lock file", os.O_WRONLY | os.O_CREAT,
                          FILE_MODE)
        os.close(fd)
    except OSError as e:
        raise os_error(e, "cannot create the store", root) from None


def damaged_hint(stream_id: str) -> str:
    return (f"the stored copy is damaged; delete index/{stream_id}.json, then streams/{stream_id}.rs,"
            " and receive the stream again from its source")


def _is_stream_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
