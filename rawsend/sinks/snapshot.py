"""An incremental stream received as a new subvolume: a snapshot of its base, changed.

`rawsend receive DEST` of an incremental stream, where DEST is absent (or an empty directory)
and its parent directory is on btrfs: the base is the subvolume beside DEST whose
received_uuid is the one the stream's BASE names (received.base_identity), with the state a
tracked receive left beside it.  The base is snapshotted (writable) under a private name
beside DEST, ``.DEST.rawsend-PID-TAG`` as a full receive's tree, and its state copied beside
the snapshot (``..DEST.rawsend-PID-TAG.rawsend/``); the stream is applied to the snapshot as to
any DEST (apply.ChangeApplier, staging in the snapshot's top directory, as renames cannot cross
into a subvolume); then the snapshot is marked received, made read-only and renamed to DEST
(in the same directory: a read-only subvolume cannot move to another), and its state moved to
``.DEST.rawsend/``.  The base is only read.  Killed or failed at any point before the rename,
DEST is absent (or the empty directory it was); the snapshot and its state are removed on
failure, or by the next receive into DEST when the process was killed.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path

from rawsend.btrfs import subvol
from rawsend.errors import DestinationError, DestStateError, WrongBase
from rawsend.fsutil import syncfs
from rawsend.sinks.apply import ChangeApplier
from rawsend.fsutil import left_by_dead_process
from rawsend.sinks.chain import move_into_place
from rawsend.sinks.journal import test_hook
from rawsend.sinks.deststate import (
    STATE_SUFFIX, DestState, Lock, make_state_dir, remove_unused_state_dir, root_identity, row_of, state_dir,
)
from rawsend.sinks.namespace import TEMP_MARK, check_dest, check_parent, clean_stale_temps, remove_tree
from rawsend.sinks.received import base_identity, received_identity
from rawsend.stream.records import ROOT_ID
from rawsend.text import escape


def wants_snapshot(dest) -> bool:
    """An incremental stream into ``dest`` is received as a snapshot: DEST is absent or an empty
    directory, and its parent can hold subvolumes."""
    dest = Path(os.path.abspath(dest))
    try:
        if os.path.lexists(dest) and (subvol.is_subvolume(dest) or os.listdir(dest)):
            return False
        fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return subvol.can_create(fd)
    finally:
        os.close(fd)


def find_base(parent: Path, uuid: bytes) -> list[Path]:
    """The subvolumes in ``parent`` whose received_uuid is ``uuid``, by name."""
    found = []
    for entry in sorted(os.listdir(parent)):
        path = parent / entry
        if not subvol.is_subvolume(path):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if subvol.info(fd).received_uuid == uuid:
                found.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return found


def clean_stale(dest: Path) -> None:
    """Remove what incremental receives into ``dest`` that were killed left: their snapshots
    (with every temporary tree of a dead process, clean_stale_temps) and the states beside them."""
    clean_stale_temps(dest)
    prefix = f"..{dest.name}{TEMP_MARK}"
    for name in os.listdir(dest.parent):
        if name.startswith(prefix) and name.endswith(STATE_SUFFIX) \
                and left_by_dead_process(name[len(prefix):-len(STATE_SUFFIX)]):
            remove_tree(dest.parent / name)


class SnapshotApplier:
    """A ChangeSink: the incremental stream builds DEST as a changed snapshot of its base."""

    def __init__(self, dest, policy, report, *, sync: bool = True, force: bool = False,
                 encoded_writes: bool = True):
        self.dest = Path(os.path.abspath(dest))
        self.policy, self.report, self.sync, self.force = policy, report, sync, force
        self.encoded_writes = encoded_writes
        self.header = None
        self.lock: Lock | None = None
        self.made_dir = False  # the state directory beside DEST is this receive's
        self.tree: Path | None = None  # the snapshot, under its private name
        self.made = False
        self.inner: ChangeApplier | None = None
        self.base_times: tuple[int, int] | None = None

    def begin(self, header) -> None:
        self.header = header
        check_parent(self.dest.parent)
        check_dest(self.dest)
        sdir = state_dir(self.dest)
        self.made_dir = make_state_dir(sdir)
        self.lock = Lock(sdir).__enter__()
        clean_stale(self.dest)

    def base(self, rec) -> None:
        uuid = base_identity(rec)
        found = find_base(self.dest.parent, uuid)
        if not found:
            raise WrongBase(f"no subvolume in {escape(os.fsencode(self.dest.parent))} has received UUID"
                            f" {uuid.hex()}, the stream this incremental stream changes", path=str(self.dest),
                            hint="nothing was changed; receive its base into a subvolume in the same directory"
                                 " first, or give --no-subvolume and the DEST that holds the base")
        self.tree = self.dest.parent / f".{self.dest.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        self._snapshot(found[0])
        self.inner = ChangeApplier(self.tree, self.policy, self.report, sync=self.sync, force=self.force,
                                   encoded_writes=self.encoded_writes, stage_in_dest=True)
        self.inner.begin(self.header)
        self.inner.base(rec)

    def _snapshot(self, base: Path) -> None:
        """``tree``: a writable snapshot of ``base``, with a copy of its state that names it."""
        state = DestState.open(base)
        if state is None:
            raise WrongBase("the base subvolume holds no tree received from a tracked stream (no rawsend"
                            " state beside it)", path=str(base),
                            hint="nothing was changed; an incremental stream applies to a tree rawsend received")
        try:
            base_fd = state.dest_fd
            parent_fd = os.open(self.dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                subvol.snapshot(base_fd, parent_fd, self.tree.name)
                self.made = True
            except OSError as e:
                raise DestinationError(f"cannot snapshot the base subvolume: {e.strerror}", path=str(base)) from None
            finally:
                os.close(parent_fd)
            st = os.fstat(base_fd)
            self.base_times = (st.st_atime_ns, st.st_mtime_ns)
            tree_sdir = state_dir(self.tree)
            os.mkdir(tree_sdir, 0o700)
            copy = sqlite3.connect(tree_sdir / "state.db", isolation_level=None)
            os.chmod(tree_sdir / "state.db", 0o600)
            try:
                state.db.backup(copy)
                # the snapshot keeps every inode number; it is a subvolume of its own
                tree_fd = os.open(self.tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    identity = root_identity(tree_fd)
                finally:
                    os.close(tree_fd)
                copy.execute("DELETE FROM meta WHERE key IN ('root_dev', 'root_uuid', 'root_ino')")
                copy.executemany("INSERT INTO meta VALUES (?, ?)", list(identity.items()))
            finally:
                copy.close()
        except sqlite3.Error as e:
            raise DestStateError(f"cannot copy the state of the base: {e}", path=str(state.dir)) from None
        finally:
            state.close()

    def __getattr__(self, name):
        # the record methods go to the applier of the snapshot
        return getattr(self.inner, name)

    def end(self, end) -> None:
        self.inner.end(end)

    def commit(self) -> None:
        inner = self.inner
        attrs = inner.nodes[ROOT_ID].attrs if ROOT_ID in inner.nodes else []
        inner.commit()
        fd = os.open(self.tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            # the staging directory came and went in the top directory: its times as the stream
            # set them, else the base's
            times = [args for kind, args in attrs if kind == "utimes"]
            os.utime(fd, ns=tuple(times[-1]) if times else self.base_times)
            self._record_root(fd)
            if self.sync:
                syncfs(fd)
            uuid, stransid = received_identity(self.header)
            subvol.set_received(fd, uuid, stransid, self.header.created_ns)
            subvol.set_readonly(fd)
            test_hook("subvolume")
        except OSError as e:
            raise DestinationError(f"cannot finish the received subvolume: {e.strerror}", path=str(self.tree)) from None
        finally:
            os.close(fd)
        move_into_place(self.tree, self.dest, state_dir(self.dest))
        self.made = False
        self._close()

    def _record_root(self, fd: int) -> None:
        row = row_of(os.fstat(fd))
        db = sqlite3.connect(state_dir(self.tree) / "state.db", isolation_level=None)
        try:
            db.execute("PRAGMA synchronous = FULL")
            db.execute("UPDATE files SET mtime_ns = ? WHERE id = ?", (row.mtime_ns, ROOT_ID))
        finally:
            db.close()

    def abort(self) -> None:
        if self.inner is not None:
            self.inner.abort()
        if self.lock is not None and self.made_dir:
            remove_unused_state_dir(state_dir(self.dest))
        self._close()

    def _close(self) -> None:
        if self.tree is not None:
            if self.made:
                remove_tree(self.tree)  # a snapshot, deleted whole
            remove_tree(state_dir(self.tree))
            self.tree = None
        if self.lock is not None:
            self.lock.__exit__()
            self.lock = None
