"""The Sink protocol: what a receiver does with each kind of checked record.

One method per record kind, as btrfs-progs' btrfs_send_ops has one callback per
command for receive and dump alike; pipeline.deliver calls them by each record
class's SINK name.  TreeSink (a directory tree) and NullSink (verify, dump) are
the two sinks.
"""

from __future__ import annotations

from typing import Protocol

from rawsend.stream.records import Create, Extent, Header, Link, SetXattr


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

    def commit(self) -> None:
        """END checked: make the result permanent."""

    def abort(self) -> None:
        """Any error: leave nothing behind."""


class NullSink:
    """A sink that keeps nothing: verify and dump decode every payload and drop it."""

    def begin(self, header): pass
    def create(self, rec): pass
    def link(self, rec): pass
    def xattr(self, rec): pass
    def wants_encoded(self, rec): return False
    def extent(self, rec, data): pass
    def extent_encoded(self, rec, payload): pass
    def commit(self): pass
    def abort(self): pass
