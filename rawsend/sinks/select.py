"""receive --include: a sink wrapper that passes on only the matching paths and what they need.

A path is kept when it matches a pattern (rawsend.patterns) or lies under a kept directory.
Its parent directories are kept too: a directory is held back (with its xattrs) until something
under it is kept, then created, so unmatched branches leave nothing behind.  A hard link is
kept when its name matches, and needs its first name kept: the stream carries a file's data
once, under its first name, so a link whose first name was passed over is reported instead.
"""

from __future__ import annotations

import os

from rawsend.listing import Paths
from rawsend.patterns import matches
from rawsend.stream.records import ROOT_ID, Create, Extent, Link, RecordType, SetXattr


class SelectSink:
    def __init__(self, inner, patterns):
        self.inner = inner
        self.patterns = tuple(patterns)
        self.paths = Paths()
        self.kept = 0        # names passed on (the root not counted)
        self.passed_over = 0
        self.missing_links: list[str] = []  # links whose first name was passed over
        self._created: set[int] = {ROOT_ID}  # ids the inner sink has
        self._whole: set[int] = set()        # kept directories: all beneath them is kept
        self._held: dict[int, tuple[Create, list[SetXattr]]] = {}  # directories not created yet

    @property
    def skipped(self) -> int:
        """Names not restored: passed over, and held directories nothing was kept under."""
        return self.passed_over + len(self._held)

    @property
    def report(self):
        return self.inner.report

    def begin(self, header) -> None:
        self.inner.begin(header)

    def _need(self, dir_id: int) -> None:
        """Create the held directory dir_id and its held parents, outermost first."""
        if dir_id in self._created:
            return
        rec, xattrs = self._held.pop(dir_id)
        self._need(rec.parent_id)
        self.inner.create(rec)
        self._created.add(dir_id)
        for x in xattrs:
            self.inner.xattr(x)

    def create(self, rec: Create) -> None:
        path = self.paths.of(rec)
        if rec.file_id == ROOT_ID:
            self.inner.create(rec)
            return
        wanted = rec.parent_id in self._whole or matches(self.patterns, os.fsdecode(path))
        if rec.type == RecordType.MKDIR and not wanted:
            self._held[rec.file_id] = (rec, [])
            return
        if not wanted:
            self.passed_over += 1
            return
        self._need(rec.parent_id)
        self.inner.create(rec)
        self._created.add(rec.file_id)
        self.kept += 1
        if rec.type == RecordType.MKDIR:
            self._whole.add(rec.file_id)

    def link(self, rec: Link) -> None:
        path = self.paths.of(rec)
        if not (rec.parent_id in self._whole or matches(self.patterns, os.fsdecode(path))):
            self.passed_over += 1
            return
        if rec.file_id not in self._created:
            first = self.paths.file(rec.file_id)
            self.missing_links.append(f"{os.fsdecode(path)} (its data is under {os.fsdecode(first or b'?')})")
            return
        self._need(rec.parent_id)
        self.inner.link(rec)
        self.kept += 1

    def xattr(self, rec: SetXattr) -> None:
        if rec.file_id in self._held:
            self._held[rec.file_id][1].append(rec)
        elif rec.file_id in self._created:
            self.inner.xattr(rec)

    def wants_encoded(self, rec: Extent) -> bool:
        # a passed-over file's extents are taken as they are and dropped: nothing to decode
        return self.inner.wants_encoded(rec) if rec.file_id in self._created else True

    def extent(self, rec: Extent, data) -> None:
        if rec.file_id in self._created:
            self.inner.extent(rec, data)

    def extent_encoded(self, rec: Extent, payload) -> None:
        if rec.file_id in self._created:
            self.inner.extent_encoded(rec, payload)

    def end(self, end) -> None:
        self.inner.end(end)

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self.inner.abort()
