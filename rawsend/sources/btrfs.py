"""btrfs source: compressed extents leave the disk as they lie there.

The walk is TreeSource's; only the per-file data reader differs.  For each
regular file, FIEMAP (with FIEMAP_FLAG_SYNC, so dirty data is compressed and
placed first) says which ranges hold data, which of them are compressed
(FIEMAP_EXTENT_ENCODED) and which are prealloc (FIEMAP_EXTENT_UNWRITTEN):

- holes and prealloc are not sent (they read as zeros; the receiver's file
  stays sparse there);
- compressed extents (zstd, zlib, LZO) are read with BTRFS_IOC_ENCODED_READ
  and sent as EncodedChunk items: the on-disk bytes, sector padding
  included, with btrfs's compression number and lengths;
- everything else is read with pread and sent as DataChunks, which the
  Encoder compresses per --compress.

A compressed extent goes out as decoded bytes instead (read with pread, the
kernel decodes) when its raw form would be a poor or invalid extent record:
its on-disk bytes are larger than the file range it covers (a partly
referenced extent; the same rule as `btrfs send --compressed-data`), or a
btrfs receiver could not write it with ENCODED_WRITE (encoded_write_refusal,
e.g. an unaligned unencoded_offset).  spec/btrfs.md has the details.

Encoded reads need CAP_SYS_ADMIN.  Without it the source says so once (a
notice) and reads every file like TreeSource.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rawsend import btrfs
from rawsend.errors import ChangedWhileRead, Unreadable
from rawsend.sources.items import EncodedChunk
from rawsend.sources.tree import SourceReport, TreeSource
from rawsend.stream.records import Compression, Extent

NO_CAP_NOTICE = ("reading compressed btrfs extents as they lie on disk needs CAP_SYS_ADMIN (run as root);"
                 " reading and compressing them instead")


@dataclass
class BtrfsSourceReport(SourceReport):
    raw_extents: int = 0       # compressed extents sent as they lie on disk
    raw_bytes: int = 0         # their payload bytes
    decoded_extents: int = 0   # compressed extents sent as decoded bytes instead
    decoded_reasons: dict[btrfs.RefusalKind, int] = field(default_factory=dict)  # why, by kind

    def count_decoded(self, why: btrfs.Refusal) -> None:
        self.decoded_extents += 1
        btrfs.count_by_kind(self.decoded_reasons, why)


class BtrfsSource(TreeSource):
    """TreeSource whose files' compressed extents are sent raw when they live on btrfs.

    `raw=False` reads and compresses everything, as TreeSource does.  Files on
    another filesystem inside the tree (a mount point) are read normally.
    """

    def __init__(self, root: str | Path, report: BtrfsSourceReport | None = None, *, raw: bool = True):
        super().__init__(root, report if report is not None else BtrfsSourceReport())
        self.raw = raw
        self._buf = bytearray(btrfs.MAX_ENCODED)   # reused for every encoded read
        self._sector_size: dict[int, int | None] = {}  # st_dev -> sector size, None: not btrfs

    def __iter__(self) -> Iterator:
        if self.raw and not btrfs.has_cap_sys_admin():
            self._stop_raw(NO_CAP_NOTICE)
        return super().__iter__()

    def _stop_raw(self, notice: str) -> None:
        self.raw = False
        self.report.notices.append(notice)

    def _btrfs_sector_size(self, fd: int, dev: int) -> int | None:
        """The sector size of the btrfs this file is on, or None when it is not on btrfs."""
        if dev not in self._sector_size:
            try:
                self._sector_size[dev] = btrfs.sector_size(fd) if btrfs.is_btrfs(fd) else None
            except OSError:
                self._sector_size[dev] = None
        return self._sector_size[dev]

    # -- per-file data ----------------------------------------------------------------------

    def _data(self, fd: int, file_id: int, size: int, path: str) -> Iterator:
        sector = self._btrfs_sector_size(fd, os.fstat(fd).st_dev) if self.raw else None
        if sector is None:
            return (yield from super()._data(fd, file_id, size, path))
        try:
            extents = btrfs.fiemap(fd, 0, size, flags=btrfs.FIEMAP_FLAG_SYNC)
        except OSError:
            return (yield from super()._data(fd, file_id, size, path))
        pos = 0  # everything before pos has been sent
        for ext in extents:
            start, end = max(ext.logical, pos), min(ext.end, size)
            if start >= end or ext.flags & btrfs.FIEMAP_EXTENT_UNWRITTEN:
                continue  # already sent, past EOF, or prealloc (reads as zeros)
            if ext.flags & btrfs.FIEMAP_EXTENT_ENCODED:
                reached = yield from self._encoded_range(fd, file_id, start, end, size, sector, path)
            else:
                reached = end if (yield from self._read_range(fd, file_id, start, end, path)) else None
            if reached is None:
                return
            pos = reached

    def _encoded_range(self, fd: int, file_id: int, start: int, end: int, size: int, sector: int,
                       path: str):
        """Send the compressed extents that begin in [start, end).

        Returns the file offset sent up to (a compressed extent is sent whole,
        so this may be past `end`), or None when the file cannot be read further.
        """
        pos = start
        while pos < end:
            try:
                e = btrfs.encoded_read(fd, pos, self._buf)
            except OSError as err:
                if err.errno == errno.EPERM:
                    self._stop_raw(NO_CAP_NOTICE)
                elif err.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
                    self.report.warn(Unreadable(path, f"read at byte {pos}: {err.strerror}"))
                    return None
                # no encoded reads here after all: the plain read decides
                return end if (yield from self._read_range(fd, file_id, pos, end, path)) else None
            if e is None:
                self.report.warn(ChangedWhileRead(path, "shrank"))
                return None
            # i_size may have grown since the file's size was recorded: stop at that size
            num_bytes = min(e.num_bytes, size - pos)
            if num_bytes <= 0:
                return size
            piece_end = pos + num_bytes
            if e.compression == btrfs.COMPRESSION_NONE:
                # not (or no longer) compressed: read it like any data
                piece_end = min(piece_end, end)
                if not (yield from self._read_range(fd, file_id, pos, piece_end, path)):
                    return None
                pos = piece_end
                continue
            reason = _raw_refusal(e, num_bytes, size, sector)
            if reason is None:
                payload = bytes(e.data)  # e.data lives in the reused buffer
                extent = Extent(file_id, pos, num_bytes, e.unencoded_len, e.unencoded_offset,
                                len(payload), e.compression)
                self.report.raw_extents += 1
                self.report.raw_bytes += len(payload)
                yield EncodedChunk(extent, payload)
            else:
                self.report.count_decoded(reason)
                if not (yield from self._read_range(fd, file_id, pos, piece_end, path)):
                    return None
            pos = piece_end
        return pos


def _raw_refusal(e: btrfs.EncodedExtent, num_bytes: int, size: int, sector: int) -> btrfs.Refusal | None:
    """Why this compressed extent should go out decoded, or None to send it raw."""
    if e.compression not in Compression.NAMES:
        return btrfs.refusal(btrfs.RefusalKind.SOURCE_UNKNOWN_COMPRESSION,
                             f"compression {e.compression} unknown to the stream format")
    if len(e.data) > num_bytes:
        # A partly referenced extent: sending all of it would move (and make the
        # receiver store) more than the plain bytes.  btrfs send decides the same way.
        return btrfs.refusal(btrfs.RefusalKind.PARTLY_REFERENCED,
                             f"extent of {len(e.data)} bytes on disk covers only {num_bytes} bytes of the file")
    # What a btrfs receiver would refuse, no receiver should get: the rules are
    # the kernel's, with the source's sector size and the file's final size
    # (a receiver sets i_size before writing extents).
    return btrfs.encoded_write_refusal(
        offset=e.offset, data_len=len(e.data), num_bytes=num_bytes, unencoded_len=e.unencoded_len,
        unencoded_offset=e.unencoded_offset, compression=e.compression, sector_size=sector,
        dest_size=size, encryption=e.encryption)
