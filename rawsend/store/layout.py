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
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rawsend.errors import StoreDamaged, StoreError
from rawsend.fsutil import fsync_dir, left_by_dead_process, write_all
from rawsend.store.index import IndexEntry

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

DIR_MODE = 0o700   # a store holds other hosts' data: private unless its owner widens it
FILE_MODE = 0o600


def is_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding a store's marker file."""
    return os.path.isfile(os.path.join(path, MARKER_NAME))


def os_error(e: OSError, what: str, path) -> StoreError:
    """A StoreError for a failed write, with what to do about the common causes."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"{what}: no space left on the store's filesystem", path=str(path),
                          hint="free space there and receive again; the store is unchanged")
    return StoreError(f"{what}: {e.strerror}", path=str(path))


class Store:
    """An opened store.  ``Store.open`` reads one; ``Store.create`` makes one if needed."""

    def __init__(self, root: Path):
        self.root = root
        self.streams = root / STREAMS_DIR
        self.index = root / INDEX_DIR
        self.tmp = root / TMP_DIR

    # -- opening and creating -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> Store:
        root = Path(os.path.abspath(path))
        marker = root / MARKER_NAME
        try:
            data = marker.read_bytes()
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
        if version != STORE_VERSION:
            raise StoreError(f"store format version {version}, this rawsend reads {STORE_VERSION}",
                             path=str(marker), hint="use the rawsend that wrote this store, or a newer one")
        return cls(root)

    @classmethod
    def create(cls, path: str | os.PathLike) -> Store:
        """Open the store at ``path``, creating it (and the directory) when missing.

        Safe to run concurrently and after a crash half-way: every step is
        idempotent and the marker file, written last, is what makes the
        directory a store.
        """
        root = Path(os.path.abspath(path))
        if is_store(root):
            return cls.open(root)
        if not root.parent.is_dir():
            raise StoreError("its parent directory does not exist", path=str(root))
        made = False
        try:
            os.mkdir(root, DIR_MODE)
            made = True
        except FileExistsError:
            if not root.is_dir() or root.is_symlink():
                raise StoreError("it exists and is not a directory", path=str(root)) from None
            foreign = sorted(set(os.listdir(root)) - LAYOUT_NAMES)
            if foreign:
                raise StoreError(f"it exists, is not a rawsend store and is not empty (holds {foreign[0]!r})",
                                 path=str(root), hint="choose a new or empty directory for the store")
        except OSError as e:
            raise os_error(e, "cannot create the store", root) from None
        store = cls(root)
        try:
            for d in (store.streams, store.index, store.tmp):
                os.makedirs(d, DIR_MODE, exist_ok=True)
            os.close(os.open(root / LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
            marker = json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION}).encode() + b"\n"
            store.write_atomic(root / MARKER_NAME, marker)
            if made:
                fsync_dir(root.parent)
        except OSError as e:
            raise os_error(e, "cannot create the store", root) from None
        return store

    # -- paths and entries ----------------------------------------------------------------

    def stream_path(self, stream_id: str) -> Path:
        return self.streams / (stream_id + STREAM_SUFFIX)

    def entry_path(self, stream_id: str) -> Path:
        return self.index / (stream_id + INDEX_SUFFIX)

    def read_entry(self, stream_id: str) -> IndexEntry | None:
        path = self.entry_path(stream_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read an index entry: {e.strerror}", path=str(path)) from None
        entry = IndexEntry.from_json(data, str(path))
        if entry.stream_id != stream_id:
            raise StoreDamaged(f"index entry names stream {entry.stream_id}", path=str(path),
                             hint="the entry was renamed or damaged; delete it and receive the stream again")
        return entry

    def entries(self, damaged: list[StoreError] | None = None) -> list[IndexEntry]:
        """Every stream of the store, oldest received first.

        A damaged index entry raises, or, when a ``damaged`` list is given, is
        appended to it and left out, so the other streams can still be listed.
        """
        try:
            names = os.listdir(self.index)
        except OSError as e:
            raise StoreError(f"cannot list the index: {e.strerror}", path=str(self.index)) from None
        found = []
        for name in names:
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

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive flock on STORE/lock: commits and clean-ups of concurrent receives take turns."""
        path = self.root / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as e:
            raise os_error(e, "cannot open the lock file", path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def new_temp(self, suffix: str) -> tuple[Path, int]:
        """A new file in tmp/ named with this process's id, open for writing."""
        path = self.tmp / f"{os.getpid()}-{secrets.token_hex(8)}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as e:
            raise os_error(e, "cannot create a temporary file", path) from None
        return path, fd

    def write_atomic(self, final: Path, data: bytes) -> None:
        """Write a small file durably: temp in tmp/, fsync, rename over ``final``, fsync its directory."""
        temp, fd = self.new_temp(".part")
        try:
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, final)
        except BaseException:
            _unlink(temp)
            raise
        fsync_dir(final.parent)

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
                    _unlink(temp)
                    return False
                raise StoreError(f"stream {entry.stream_id} is already in the store with different bytes"
                                 f" (stored SHA-256 {existing.sha256[:16]}..., received {entry.sha256[:16]}...)",
                                 path=str(self.entry_path(entry.stream_id)),
                                 hint="the store keeps the first copy; nothing was changed")
            final = self.stream_path(entry.stream_id)
            try:
                os.rename(temp, final)
                fsync_dir(self.streams)
            except OSError as e:
                raise os_error(e, "cannot move the stream into place", final) from None
            try:
                self.write_atomic(self.entry_path(entry.stream_id), entry.to_json())
            except BaseException as e:
                _unlink(final)
                fsync_dir(self.streams)
                if isinstance(e, OSError):
                    raise os_error(e, "cannot write the index entry", self.entry_path(entry.stream_id)) from None
                raise
        return True

    def clean_stale_temps(self) -> list[Path]:
        """Remove temporaries whose writing process is gone (a receive killed or cut off)."""
        removed = []
        with self.locked():  # no index temp is half-written while the lock is held
            try:
                for name in os.listdir(self.tmp):
                    if left_by_dead_process(name):
                        _unlink(self.tmp / name)
                        removed.append(self.tmp / name)
            except OSError as e:
                raise os_error(e, "cannot clean up temporary files", self.tmp) from None
        return removed

    def remove_orphans(self) -> list[Path]:
        """Stream files without an index entry: left by a receive that died between its two renames.

        Call with the lock held: only then is no live receive between those renames.
        """
        removed = []
        for name in os.listdir(self.streams):
            stem = name[:-len(STREAM_SUFFIX)]
            if name.endswith(STREAM_SUFFIX) and _is_stream_id(stem) and not self.entry_path(stem).exists():
                _unlink(self.streams / name)
                removed.append(self.streams / name)
        if removed:
            fsync_dir(self.streams)
        return removed


def _is_stream_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
