"""How the tree sink puts a file's data on disk: one ExtentWriter per receive, picked in begin().

PwriteWriter decodes every compressed extent and writes it with pwrite, holes left as holes.
EncodedWriter writes a compressed extent verbatim with BTRFS_IOC_ENCODED_WRITE where the
kernel's rules (rawsend/btrfs/rules.py) allow it, and otherwise falls back to PwriteWriter,
counting why by kind. Writers raise OSError as it comes; the sink says which file it was.
"""

from __future__ import annotations

import errno
import os
from typing import Protocol

from rawsend import btrfs
from rawsend.codecs import lzo
from rawsend.codecs.compress import decode, decode_short
from rawsend.stream.records import Compression, Extent

# compressions btrfs stores as they are (zlib, zstd, LZO for each sector size)
BTRFS_COMPRESSIONS = range(Compression.ZLIB, Compression.LZO_4K + 5)


class ExtentCounts(Protocol):
    """What the writers count (TreeReport has these)."""

    encoded_extents: int
    unchecked_extents: int

    def count_decoded(self, why: btrfs.Refusal) -> None: ...


class ExtentWriter(Protocol):
    def start_file(self, fd: int, size: int) -> None:
        """A new regular file of `size` bytes, open for writing on `fd`."""

    def write(self, offset: int, data) -> None:
        """Write a plain (decoded) range at `offset`."""

    def write_encoded(self, rec: Extent, payload) -> btrfs.Refusal | None:
        """Write one compressed extent: None when it went verbatim, else why it was decoded."""

    def finish_file(self) -> None:
        """The current file's data is all written: give it its size."""


class PwriteWriter:
    """Decode and pwrite; `why` is what every compressed extent is counted as."""

    def __init__(self, counts: ExtentCounts, why: btrfs.Refusal):
        self.counts = counts
        self.why = why
        self._fd = -1
        self._size = 0
        self._end = 0  # where the data written so far ends

    def start_file(self, fd: int, size: int) -> None:
        self._fd, self._size, self._end = fd, size, 0

    def write(self, offset: int, data) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n
        if offset > self._end:
            self._end = offset

    def write_encoded(self, rec: Extent, payload) -> btrfs.Refusal:
        self.write_decoded(rec, payload, self.why)
        return self.why

    def write_decoded(self, rec: Extent, payload, why: btrfs.Refusal, decoded: bytes | None = None) -> None:
        """Count `why`, decode (unless `decoded` holds it already) and write the extent's range."""
        self.counts.count_decoded(why)
        if decoded is None:
            data = decode(payload, rec.compression, rec.unencoded_len)
        else:  # already decoded by a check: zero-extend it as decode() does
            data = decoded + bytes(rec.unencoded_len - len(decoded))
        self.write(rec.offset, memoryview(data)[rec.unencoded_offset:rec.unencoded_offset + rec.num_bytes])

    def finish_file(self) -> None:
        # only when the data did not set the size: one syscall less per file
        if self._size > self._end:
            os.ftruncate(self._fd, self._size)  # a hole at the end, or a file of holes
        self._fd = -1


class EncodedWriter:
    """ENCODED_WRITE where the rules allow it, else PwriteWriter; on btrfs with CAP_SYS_ADMIN."""

    def __init__(self, counts: ExtentCounts, sector_size: int):
        self.counts = counts
        self.sector_size = sector_size
        self.plain = PwriteWriter(counts, btrfs.NO_RAW)  # its `why` is never used here
        # why the kernel will refuse every extent from now on (None: keep trying)
        self.stopped: btrfs.Refusal | None = None
        self._fd = -1
        self._size = 0
        self._nodatasum: bool | None = None  # known once the file gets a compressed extent

    def start_file(self, fd: int, size: int) -> None:
        self._fd, self._size, self._nodatasum = fd, size, None
        # Encoded writes check the file's size, so it is set first.
        if size and self.stopped is None:
            os.ftruncate(fd, size)
        self.plain.start_file(fd, size)

    def write(self, offset: int, data) -> None:
        self.plain.write(offset, data)

    def write_encoded(self, rec: Extent, payload) -> btrfs.Refusal | None:
        reason = self._encoded_refusal(rec, payload)
        decoded = None
        if reason is None:
            decoded = self._check_payload(rec, payload)
            reason = self._readback_refusal(rec, payload, decoded)
        if reason is None:
            try:
                btrfs.encoded_write(self._fd, rec.offset, payload, rec.num_bytes, rec.unencoded_len,
                                    rec.unencoded_offset, rec.compression)
                self.counts.encoded_extents += 1
                return None
            except OSError as e:
                # btrfs receive falls back on exactly EINVAL, ENOSPC and ENOTTY.  Nothing was
                # written when the kernel refuses: its checks come before any allocation.
                if e.errno not in btrfs.KERNEL_REFUSALS:
                    raise
                reason = btrfs.KERNEL_REFUSALS[e.errno]
                if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EPERM):
                    self.stopped = reason  # it will refuse every other one as well
        self.plain.write_decoded(rec, payload, reason, decoded)
        return reason

    def finish_file(self) -> None:
        # The size was set at the start, unless the kernel has stopped taking encoded
        # writes since (then it may not have been, and is set as PwriteWriter sets it).
        if self.stopped is not None:
            self.plain.finish_file()
        self._fd = -1

    def _check_payload(self, rec: Extent, payload) -> bytes | None:
        """Decode into a bounded buffer before a verbatim write; the bytes it decodes to.

        The kernel stores encoded payloads unchecked: a frame that does not decode
        would be accepted and only fail (EIO) when the file is read.  A receive must
        not leave such a file behind looking complete, so a payload that does not
        decode ends the receive with DecodeError, as it does off btrfs.  None: an LZO
        payload and no decoder here.
        """
        if not lzo.AVAILABLE and Compression.LZO_4K <= rec.compression <= Compression.LZO_4K + 4:
            self.counts.unchecked_extents += 1  # no decoder here: the summary says so
            return None
        return decode_short(payload, rec.compression, rec.unencoded_len)

    def _readback_refusal(self, rec: Extent, payload, decoded: bytes | None) -> btrfs.Refusal | None:
        """Why btrfs would not read this extent back as the stream's bytes (a short
        payload where the kernel may store it inline), or None to write it verbatim."""
        inline = btrfs.may_be_inline(
            offset=rec.offset, num_bytes=rec.num_bytes, unencoded_len=rec.unencoded_len,
            unencoded_offset=rec.unencoded_offset, sector_size=self.sector_size, dest_size=self._size)
        return btrfs.readback_refusal(
            payload=payload, decoded_len=None if decoded is None else len(decoded),
            compression=rec.compression, unencoded_len=rec.unencoded_len, inline=inline)

    def _encoded_refusal(self, rec: Extent, payload) -> btrfs.Refusal | None:
        """Why this extent cannot go in with ENCODED_WRITE, or None to try it."""
        if self.stopped is not None:
            return self.stopped
        if rec.compression not in BTRFS_COMPRESSIONS:
            return btrfs.refusal(btrfs.RefusalKind.NOT_BTRFS_COMPRESSION,
                                 f"{Compression.NAMES.get(rec.compression, rec.compression)} is not a btrfs compression")
        if self._nodatasum is None:
            try:
                self._nodatasum = btrfs.is_nodatasum(self._fd)
            except OSError:
                self._nodatasum = False  # the kernel's answer to the write decides
        # The file's size was set when it was started (ftruncate to its size), so
        # an unaligned end is allowed exactly when the extent ends the file.
        return btrfs.encoded_write_refusal(
            offset=rec.offset, data_len=len(payload), num_bytes=rec.num_bytes,
            unencoded_len=rec.unencoded_len, unencoded_offset=rec.unencoded_offset,
            compression=rec.compression, sector_size=self.sector_size, dest_size=self._size,
            nodatasum=self._nodatasum)


def pick_writer(fd: int, counts: ExtentCounts, encoded_writes: bool) -> ExtentWriter:
    """Encoded writes where they can be tried on ``fd``'s filesystem, else pwrite and the reason
    they cannot (the tree sink and the incremental applier pick alike)."""
    if not encoded_writes:
        return PwriteWriter(counts, btrfs.NO_RAW)
    if not btrfs.is_btrfs(fd):
        return PwriteWriter(counts, btrfs.NOT_BTRFS)
    if not btrfs.has_cap_sys_admin():
        return PwriteWriter(counts, btrfs.NO_CAP)
    return EncodedWriter(counts, btrfs.sector_size(fd))
