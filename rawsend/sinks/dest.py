"""The sink of `rawsend receive DEST`: a full stream builds a new tree (tree.TreeSink), an
incremental one changes the tree DEST holds (apply.ChangeApplier), or, with ``subvolume`` where
DEST is new and its parent on btrfs, builds DEST as a changed snapshot of its base subvolume
(snapshot.SnapshotApplier).  Which one is known only from the stream's header, so the choice is
made in begin() and every later call goes to it."""

from __future__ import annotations

import os

from rawsend.btrfs import subvol
from rawsend.errors import DestinationError
from rawsend.sinks.tree import TreeSink
from rawsend.stream.records import Feature


class DestSink:
    def __init__(self, dest, *, force: bool = False, subvolume: bool = False, **options):
        self.tree = TreeSink(dest, subvolume=subvolume, **options)
        self.force = force
        self.subvolume = subvolume
        self.target = self.tree

    @property
    def report(self):
        return self.tree.report

    def begin(self, header) -> None:
        if header.required_features & Feature.INCREMENTAL:
            from rawsend.sinks.apply import ChangeApplier  # here: a full receive needs none of it
            t = self.tree
            options = dict(sync=t.sync, force=self.force, encoded_writes=t.encoded_writes)
            from rawsend.sinks.snapshot import SnapshotApplier, wants_snapshot  # it imports chain, which imports us
            if self.subvolume and wants_snapshot(t.dest):
                self.target = SnapshotApplier(t.dest, t.policy, t.report, **options)
            elif subvol.is_subvolume(t.dest) and _readonly(t.dest):
                raise DestinationError("DEST is a read-only subvolume: an incremental stream is received as a new"
                                       " subvolume, a snapshot of the one it changes", path=str(t.dest),
                                       hint="nothing was changed; give a new DEST beside it")
            else:
                self.target = ChangeApplier(t.dest, t.policy, t.report, **options)
        self.target.begin(header)

    def __getattr__(self, name):
        # the record methods (create, rename, extent, commit, abort, ...) of the sink picked in begin()
        return getattr(self.target, name)


def _readonly(path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return subvol.info(fd).readonly
    finally:
        os.close(fd)
