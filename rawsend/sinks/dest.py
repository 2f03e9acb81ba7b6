"""The sink of `rawsend receive DEST`: a full stream builds a new tree (tree.TreeSink), an
incremental one changes the tree DEST holds (apply.ChangeApplier).  Which one is known only
from the stream's header, so the choice is made in begin() and every later call goes to it."""

from __future__ import annotations

from rawsend.sinks.tree import TreeSink
from rawsend.stream.records import Feature


class DestSink:
    def __init__(self, dest, *, force: bool = False, **options):
        self.tree = TreeSink(dest, **options)
        self.force = force
        self.target = self.tree

    @property
    def report(self):
        return self.tree.report

    def begin(self, header) -> None:
        if header.required_features & Feature.INCREMENTAL:
            from rawsend.sinks.apply import ChangeApplier  # here: a full receive needs none of it
            t = self.tree
            self.target = ChangeApplier(t.dest, t.policy, t.report, sync=t.sync, force=self.force,
                                        encoded_writes=t.encoded_writes)
        self.target.begin(header)

    def __getattr__(self, name):
        # the record methods (create, rename, extent, commit, abort, ...) of the sink picked in begin()
        return getattr(self.target, name)
