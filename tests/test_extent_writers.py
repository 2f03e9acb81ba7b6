"""The tree sink's extent writers on an ordinary file: PwriteWriter's bytes and holes, and
EncodedWriter's fallback to it, counted by the reason's kind (here not btrfs: /tmp)."""

from __future__ import annotations

import os

import pytest

from rawsend import btrfs
from rawsend.codecs.compress import compress
from rawsend.sinks.extents import EncodedWriter, PwriteWriter
from rawsend.sinks.tree import TreeReport
from rawsend.stream.records import Compression, Extent

K = btrfs.RefusalKind
SECTOR = 4096


def _extent(offset: int, data: bytes, compression: int = Compression.ZSTD, *,
            unencoded_offset: int = 0, num_bytes: int | None = None) -> tuple[Extent, bytes]:
    got, payload = compress(data, compression, 3)
    assert got == compression
    n = len(data) - unencoded_offset if num_bytes is None else num_bytes
    return Extent(file_id=2, offset=offset, num_bytes=n, unencoded_len=len(data),
                  unencoded_offset=unencoded_offset, disk_num_bytes=len(payload),
                  compression=compression), payload


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    yield path, fd
    os.close(fd)


def _data_ranges(path) -> list[tuple[int, int]]:
    """(start, end) of each data range, by SEEK_DATA / SEEK_HOLE."""
    ranges, pos = [], 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while pos < size:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            ranges.append((start, pos))
    return ranges


def test_pwrite_writer_writes_ranges_and_keeps_holes(target):
    path, fd = target
    report = TreeReport()
    w = PwriteWriter(report, btrfs.NOT_BTRFS)
    size = 64 * SECTOR
    w.start_file(fd, size)
    first = os.urandom(SECTOR)
    w.write(0, first)
    rec, payload = _extent(16 * SECTOR, b"z" * (8 * SECTOR))
    assert w.write_encoded(rec, payload) == btrfs.NOT_BTRFS
    w.finish_file()  # the end is a hole: the size comes from ftruncate
    got = path.read_bytes()
    assert got == first + bytes(15 * SECTOR) + b"z" * (8 * SECTOR) + bytes(40 * SECTOR)
    assert _data_ranges(path) == [(0, SECTOR), (16 * SECTOR, 24 * SECTOR)]
    assert report.decoded_extents == 1 and report.decoded_reasons == {K.NOT_BTRFS: 1}
    assert report.encoded_extents == 0


def test_pwrite_writer_writes_only_the_referenced_part(target):
    path, fd = target
    w = PwriteWriter(TreeReport(), btrfs.NO_RAW)
    data = bytes(range(256)) * 64  # 16 KiB
    rec, payload = _extent(0, data, unencoded_offset=SECTOR, num_bytes=2 * SECTOR)
    w.start_file(fd, 2 * SECTOR)
    w.write_encoded(rec, payload)
    w.finish_file()
    assert path.read_bytes() == data[SECTOR:3 * SECTOR]


def test_encoded_writer_off_btrfs_falls_back_and_stops_trying(target):
    path, fd = target
    if btrfs.is_btrfs(fd):
        pytest.skip("the temporary directory is on btrfs")
    report = TreeReport()
    w = EncodedWriter(report, SECTOR)
    size = 8 * SECTOR
    w.start_file(fd, size)
    assert os.fstat(fd).st_size == size  # set first: encoded writes check it
    a, b = b"a" * (4 * SECTOR), b"b" * (4 * SECTOR)
    rec_a, pay_a = _extent(0, a)
    rec_b, pay_b = _extent(4 * SECTOR, b)
    why = w.write_encoded(rec_a, pay_a)
    # the rules allow it; the ioctl is not btrfs's here, and the writer stops trying
    assert why is not None and why.kind == K.KERNEL_ENOTTY
    assert w.stopped == why
    assert w.write_encoded(rec_b, pay_b) == why
    w.finish_file()
    assert path.read_bytes() == a + b
    assert report.encoded_extents == 0
    assert report.decoded_extents == 2 and report.decoded_reasons == {K.KERNEL_ENOTTY: 2}


@pytest.mark.parametrize("kind, make", [
    (K.OFFSET_UNALIGNED, lambda: _extent(100, b"x" * (4 * SECTOR))),
    (K.NOT_BTRFS_COMPRESSION, lambda: _extent(0, b"y" * (4 * SECTOR), Compression.LZ4)),
])
def test_encoded_writer_counts_a_rule_refusal_without_trying(target, kind, make):
    path, fd = target
    report = TreeReport()
    w = EncodedWriter(report, SECTOR)
    rec, payload = make()
    size = rec.offset + rec.num_bytes
    w.start_file(fd, size)
    why = w.write_encoded(rec, payload)
    assert why is not None and why.kind == kind
    assert w.stopped is None  # a rule of this extent's, not of the kernel's: keep trying
    w.finish_file()
    data = path.read_bytes()
    assert len(data) == size and data[rec.offset:] == (b"x" if kind == K.OFFSET_UNALIGNED else b"y") * rec.num_bytes
    assert report.decoded_reasons == {kind: 1}
