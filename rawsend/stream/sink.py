"""The Sink protocol: what a receiver does with each kind of checked record.

One method per record kind, as btrfs-progs' btrfs_send_ops has one callback per
command for receive and dump alike; pipeline.deliver calls them by each record
class's SINK name.  TreeSink (a directory tree) and NullSink (verify, dump) are
the two sinks; ChangeSink adds the methods of incremental streams' records.
"""

from __future__ import annotations

from typing import Protocol

from rawsend.stream.records import (
    Base, Chmod, Chown, Create, End, Extent, Header, Link, PunchHole, RemoveXattr, Rename, Rmdir, SetXattr, Truncate,
    Unlink, UpdateFile, Utimes,
)


class Sink(Protocol):
    def begin(self, header: Header) -> None:
        """The stream's checked header, before any other record."""

    def create(self, rec: Create) -> None: ...

    def link(self, rec: Link) -> None: ...

    def xattr(self, rec: SetXattr) -> None: ...

    def wants_encoded(self, rec: Extent) -> bool:
        """True: take the payload as it is encoded (extent_encoded); False: decoded (extent)."""

    def extent(self, rec: Extent, data) -> None:
        """The extent's file bytes, decoded: num_bytes of them."""

    def extent_encoded(self, rec: Extent, payload) -> None:
        """The extent's payload as it was encoded (opened, when it was sealed)."""

    def end(self, end: End) -> None:
        """The checked END record, right before commit (its digest names the stream's tree)."""

    def commit(self) -> None:
        """END checked: make the result permanent."""

    def abort(self) -> None:
        """Any error: leave nothing behind."""


class ChangeSink(Sink, Protocol):
    """A sink that also applies incremental streams (spec "Incremental streams"): changes to the
    base tree it holds.  A Sink that is not one refuses an incremental stream in ``begin``."""

    def base(self, rec: Base) -> None:
        """Record 1 of an incremental stream: the stream whose tree this one changes."""

    def rename(self, rec: Rename) -> None: ...

    def unlink(self, rec: Unlink) -> None: ...

    def rmdir(self, rec: Rmdir) -> None: ...

    def truncate(self, rec: Truncate) -> None: ...

    def chmod(self, rec: Chmod) -> None: ...

    def chown(self, rec: Chown) -> None: ...

    def utimes(self, rec: Utimes) -> None: ...

    def remove_xattr(self, rec: RemoveXattr) -> None: ...

    def update_file(self, rec: UpdateFile) -> None:
        """Make an existing regular file current: the extents and holes after it change it."""

    def punch_hole(self, rec: PunchHole) -> None: ...


class NullSink:
    """A sink that keeps nothing: verify and dump decode every payload and drop it."""

    def begin(self, header): pass
    def create(self, rec): pass
    def link(self, rec): pass
    def xattr(self, rec): pass
    def wants_encoded(self, rec): return False
    def extent(self, rec, data): pass
    def extent_encoded(self, rec, payload): pass
    def base(self, rec): pass
    def rename(self, rec): pass
    def unlink(self, rec): pass
    def rmdir(self, rec): pass
    def truncate(self, rec): pass
    def chmod(self, rec): pass
    def chown(self, rec): pass
    def utimes(self, rec): pass
    def remove_xattr(self, rec): pass
    def update_file(self, rec): pass
    def punch_hole(self, rec): pass
    def end(self, end): pass
    def commit(self): pass
    def abort(self): pass
