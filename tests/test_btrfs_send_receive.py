"""btrfs end to end: compressed extents leave one btrfs and land on another untouched.

Sources are loop-mounted btrfs images with compress=zstd, zlib and lzo; the
destination is mounted without any compress option, so a compressed extent
there can only come from a verbatim ENCODED_WRITE. Everything is compared on
disk: file bytes, holes, metadata, and the ENCODED_READ payload of every
compressed extent. `btrfs send --compressed-data | btrfs receive` of the same
read-only snapshot is the reference for what lands on disk.

Skips (shown with -rs) when root, btrfs-progs, loop devices or encoded I/O
are missing.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rawsend import btrfs
from rawsend.errors import DecodeError, DecoderMissing
from rawsend.stream.reader import StreamReader
from rawsend.stream.records import Extent, RecordType
from tests.btrfs_fixtures import btrfs_mount, require_encoded_io

KiB = 1024
MiB = 1024 * KiB
SECTOR = 4096

COMPRESSIONS = {"zstd": "compress=zstd", "zlib": "compress=zlib", "lzo": "compress=lzo"}
EXPECTED_BTRFS_COMPRESSION = {"zstd": btrfs.COMPRESSION_ZSTD, "zlib": btrfs.COMPRESSION_ZLIB,
                              "lzo": btrfs.COMPRESSION_LZO_4K}

RECEIVE_COUNTS = re.compile(r"(\d+) extents? written encoded, (\d+) decoded(?: \((.*?)\))?(?:;|$)", re.M)


# -- building trees -----------------------------------------------------------------------------

def text(n: int, seed: int = 0) -> bytes:
    line = b"rawsend btrfs line %08d: the quick brown fox jumps over the lazy dog\n"
    return b"".join(line % (seed * 1_000_000 + i) for i in range(n // 70 + 1))[:n]


def write_synced(path: Path, data: bytes, offset: int | None = None) -> None:
    # fsync is when btrfs compresses and allocates: the extents exist after it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (0 if offset is not None else os.O_TRUNC), 0o644)
    try:
        os.pwrite(fd, data, offset or 0)
        os.fsync(fd)
    finally:
        os.close(fd)


SPARSE_DATA = [(1 * MiB, 128 * KiB), (3 * MiB, 8 * KiB)]  # (offset, length) of sparse.bin's data
SPARSE_PREALLOC = (2 * MiB, 256 * KiB)


def build_tree(root: Path) -> None:
    """A small tree with every kind of extent btrfs makes, and metadata to compare."""
    rnd = random.Random(7)
    write_synced(root / "text.txt", text(600 * KiB))          # 128 KiB compressed extents, unaligned tail
    os.setxattr(root / "text.txt", "user.comment", b"compressed on disk")
    os.chmod(root / "text.txt", 0o640)
    write_synced(root / "random.bin", rnd.randbytes(200 * KiB))  # incompressible: plain extents
    write_synced(root / "small.txt", b"a small inline file\n" * 9)  # compressed inline extent
    write_synced(root / "tiny.bin", rnd.randbytes(10))            # plain inline extent
    (root / "empty").touch()

    fd = os.open(root / "sparse.bin", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 4 * MiB)
        os.pwrite(fd, text(SPARSE_DATA[0][1], seed=1), SPARSE_DATA[0][0])
        os.pwrite(fd, rnd.randbytes(SPARSE_DATA[1][1]), SPARSE_DATA[1][0])
        os.fsync(fd)
        os.posix_fallocate(fd, *SPARSE_PREALLOC)  # prealloc: reads as zeros, never sent
    finally:
        os.close(fd)

    # An extent referenced in two pieces: the second from its middle (unencoded_offset > 0).
    write_synced(root / "partial.txt", text(256 * KiB, seed=2))
    write_synced(root / "partial.txt", rnd.randbytes(4 * KiB), offset=64 * KiB)

    (root / "dir" / "sub").mkdir(parents=True)
    write_synced(root / "dir" / "sub" / "nested.txt", text(50 * KiB, seed=3))
    os.chmod(root / "dir", 0o750)
    os.symlink("text.txt", root / "link")
    os.link(root / "small.txt", root / "dir" / "hard")
    for i, p in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.utime(p, ns=(1_600_000_000_000_000_000 + i, 1_700_000_000_123_456_789 + i), follow_symlinks=False)


# -- looking at what is on disk -----------------------------------------------------------------

def data_ranges(path: Path) -> list[tuple[int, int]]:
    """[start, end) of the data regions (holes and prealloc excluded), as SEEK_DATA/SEEK_HOLE see them."""
    out, pos = [], 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


@dataclasses.dataclass(frozen=True)
class OnDisk:
    compressed: tuple   # (offset, num_bytes, unencoded_len, unencoded_offset, compression, payload)
    plain: tuple        # merged [start, end) ranges of uncompressed data

    def disk_bytes(self) -> int:
        """Bytes the file's data takes on disk, counted per reference: compressed extents
        by their payload (sector padded, or the inline bytes), plain data in sectors."""
        return (sum(len(e[5]) for e in self.compressed)
                + sum(-(-(end - start) // SECTOR) * SECTOR for start, end in self.plain))


def on_disk(path: Path) -> OnDisk:
    """Every extent of a file as ENCODED_READ returns it."""
    compressed, plain = [], []
    buf = bytearray(btrfs.MAX_ENCODED)
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, end in data_ranges(path):
            pos = start
            while pos < end:
                e = btrfs.encoded_read(fd, pos, buf)
                assert e is not None and e.num_bytes > 0
                if e.compression:
                    compressed.append((e.offset, e.num_bytes, e.unencoded_len, e.unencoded_offset,
                                       e.compression, bytes(e.data)))
                    pos = e.end
                else:
                    piece_end = min(e.end, end)
                    if plain and plain[-1][1] == pos:
                        plain[-1] = (plain[-1][0], piece_end)
                    else:
                        plain.append((pos, piece_end))
                    pos = piece_end
    finally:
        os.close(fd)
    return OnDisk(tuple(compressed), tuple(plain))


def as_sent(disk: OnDisk) -> OnDisk:
    """What a receiver should end up with: compressed extents whose payload is longer than
    the file range they cover are sent decoded (spec/btrfs.md) and land as plain data."""
    compressed = tuple(e for e in disk.compressed if len(e[5]) <= e[1])
    ranges = sorted([*disk.plain, *((e[0], e[0] + e[1]) for e in disk.compressed if len(e[5]) > e[1])])
    plain: list[tuple[int, int]] = []
    for start, end in ranges:
        if plain and plain[-1][1] == start:
            plain[-1] = (plain[-1][0], end)
        else:
            plain.append((start, end))
    return OnDisk(compressed, tuple(plain))


def fiemap_flags_at(path: Path, offset: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        [ext] = [x for x in btrfs.fiemap(fd) if x.logical <= offset < x.end]
        return ext.flags
    finally:
        os.close(fd)


def regular_files(root: Path) -> list[str]:
    """Regular files under root, one name per inode (a hard link is sent once)."""
    seen, out = set(), []
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
            seen.add(st.st_ino)
            out.append(str(p.relative_to(root)))
    return out


def describe_tree(root: Path) -> dict:
    """Everything a receive must reproduce: types, modes, owners, times, sizes, contents,
    xattrs, symlink targets, holes and which names share an inode."""
    out = {}
    inodes: dict[int, str] = {}
    for p in sorted([root, *root.rglob("*")]):
        rel = str(p.relative_to(root))
        st = os.lstat(p)
        entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime": st.st_mtime_ns,
                 "xattrs": {n: os.getxattr(p, n, follow_symlinks=False)
                            for n in sorted(os.listxattr(p, follow_symlinks=False))}}
        if stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            entry.update(size=st.st_size, data=p.read_bytes(), holes=data_ranges(p))
            if st.st_nlink > 1:
                entry["same_inode_as"] = inodes.setdefault(st.st_ino, rel)
        out[rel] = entry
    return out


# -- running rawsend and btrfs ------------------------------------------------------------------

def rawsend(*args: str, stdin=None, env=None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "rawsend", *args], input=stdin,
                          capture_output=True, timeout=120, env=env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


def send_receive(source: Path, dest: Path, send_args=(), receive_args=()) -> tuple[str, str]:
    """rawsend send SOURCE | rawsend receive DEST; returns both stderr texts."""
    sent = ok(rawsend("send", *send_args, str(source)))
    got = ok(rawsend("receive", *receive_args, str(dest), stdin=sent.stdout))
    return sent.stderr.decode(), got.stderr.decode()


def receive_counts(summary: str) -> tuple[int, int, str]:
    m = RECEIVE_COUNTS.search(summary)
    assert m, summary
    return int(m[1]), int(m[2]), m[3] or ""


def run(*argv: str, stdin=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=120)
    assert proc.returncode == 0, f"{argv}: {proc.stderr.decode(errors='replace')}"
    return proc


# -- fixtures -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Source:
    name: str
    mnt: Path
    snap: Path      # read-only snapshot of the subvolume holding the tree

    @property
    def compression(self) -> int:
        return EXPECTED_BTRFS_COMPRESSION[self.name]


@pytest.fixture(scope="module", params=sorted(COMPRESSIONS))
def source(request, tmp_path_factory):
    require_encoded_io()
    name = request.param
    with btrfs_mount(tmp_path_factory.mktemp(f"src-{name}"), options=COMPRESSIONS[name], size="256M") as mnt:
        run("btrfs", "-q", "subvolume", "create", str(mnt / "vol"))
        build_tree(mnt / "vol")
        run("btrfs", "-q", "subvolume", "snapshot", "-r", str(mnt / "vol"), str(mnt / "snap"))
        yield Source(name, mnt, mnt / "snap")


@pytest.fixture(scope="module")
def dest_fs(tmp_path_factory):
    """A btrfs mounted WITHOUT compression: compressed extents there were written verbatim."""
    require_encoded_io()
    with btrfs_mount(tmp_path_factory.mktemp("dest"), options="", size="512M") as mnt:
        yield mnt


def assert_same_tree(src: Path, dst: Path) -> None:
    want, got = describe_tree(src), describe_tree(dst)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel


def assert_verbatim(src: Path, dst: Path, compression: int) -> int:
    """Every compressed extent of src that is sent raw is on dst with the same on-disk bytes,
    every plain range is plain there too, and dst's compressed extents are
    FIEMAP_EXTENT_ENCODED. Returns the number of compressed extents compared."""
    n = 0
    for rel in regular_files(src):
        want, got = as_sent(on_disk(src / rel)), on_disk(dst / rel)
        assert got == want, rel
        for offset, _, _, _, comp, _ in got.compressed:
            assert comp == compression, rel
            assert fiemap_flags_at(dst / rel, offset) & btrfs.FIEMAP_EXTENT_ENCODED, (rel, offset)
        n += len(got.compressed)
    return n


# -- the source tree is what the tests think it is ----------------------------------------------

def test_source_tree_has_every_kind_of_extent(source):
    snap = source.snap
    text_extents = on_disk(snap / "text.txt").compressed
    assert len(text_extents) == 5 and all(e[4] == source.compression for e in text_extents)
    [inline] = on_disk(snap / "small.txt").compressed
    assert len(inline[5]) < SECTOR  # inline: the payload is not sector padded
    assert on_disk(snap / "random.bin") == OnDisk((), ((0, 200 * KiB),))
    partial = on_disk(snap / "partial.txt").compressed
    assert [e[3] for e in partial][:2] == [0, 68 * KiB]  # second piece starts inside the extent
    assert partial[0][5] == partial[1][5]                # ... and it is the same extent
    assert data_ranges(snap / "sparse.bin") == [(o, o + n) for o, n in SPARSE_DATA]
    assert fiemap_flags_at(snap / "sparse.bin", SPARSE_PREALLOC[0]) & btrfs.FIEMAP_EXTENT_UNWRITTEN


# -- btrfs to btrfs: verbatim -------------------------------------------------------------------

def test_send_receive_is_verbatim(source, dest_fs):
    dst = dest_fs / f"raw-{source.name}"
    sent, received = send_receive(source.snap, dst)
    assert_same_tree(source.snap, dst)
    n = assert_verbatim(source.snap, dst, source.compression)
    assert n >= 10
    assert receive_counts(received) == (n, 0, "")
    assert f"{n} extents as stored on btrfs" in sent


def test_same_extents_as_btrfs_send_compressed_data(source, dest_fs):
    ours = dest_fs / f"ours-{source.name}"
    send_receive(source.snap, ours)
    theirs_parent = dest_fs / f"theirs-{source.name}"
    theirs_parent.mkdir()
    stream = run("btrfs", "send", "-q", "--proto", "2", "--compressed-data", str(source.snap)).stdout
    run("btrfs", "receive", "-q", str(theirs_parent), stdin=stream)
    theirs = theirs_parent / source.snap.name
    files = regular_files(theirs)
    assert files == regular_files(ours)
    for rel in files:
        a, b = on_disk(ours / rel), on_disk(theirs / rel)
        assert a.disk_bytes() == b.disk_bytes(), rel
        assert a == b, rel


def test_encrypted_extents_are_the_disk_bytes_sealed(source, dest_fs, tmp_path):
    key = tmp_path / "k.key"
    ok(rawsend("keygen", "-o", str(key)))
    stream = ok(rawsend("send", "--encrypt", str(key), str(source.snap))).stdout

    # The stream carries each on-disk payload sealed as it is: same compression, +16 bytes of tag,
    # and none of the on-disk bytes in clear.
    disk = [e for rel in regular_files(source.snap) for e in as_sent(on_disk(source.snap / rel)).compressed]
    sealed = []
    for raw in StreamReader(io.BytesIO(stream)):
        if raw.type == RecordType.EXTENT and not raw.sealed:
            rec = Extent.unpack(raw.body)
            assert rec.encryption != 0
            sealed.append((rec.compression, len(raw.payload)))
    for _, _, _, _, comp, payload in disk:
        assert (comp, len(payload) + 16) in sealed
        if len(payload) >= 64:
            assert payload[:64] not in stream

    dst = dest_fs / f"sealed-{source.name}"
    proc = ok(rawsend("receive", "--key-file", str(key), str(dst), stdin=stream))
    assert_same_tree(source.snap, dst)
    n = assert_verbatim(source.snap, dst, source.compression)
    assert receive_counts(proc.stderr.decode()) == (n, 0, "")


def test_through_a_store_still_verbatim(source, dest_fs, tmp_path):
    store_help = rawsend("receive", "--help").stdout.decode()
    if "--store" not in store_help:
        pytest.skip("rawsend receive --store does not exist yet")
    store = tmp_path / "store"
    sent = ok(rawsend("send", str(source.snap))).stdout
    ok(rawsend("receive", "--store", str(store), stdin=sent))
    relayed = ok(rawsend("send", str(store))).stdout
    assert relayed == sent
    dst = dest_fs / f"relayed-{source.name}"
    proc = ok(rawsend("receive", str(dst), stdin=relayed))
    assert_same_tree(source.snap, dst)
    n = assert_verbatim(source.snap, dst, source.compression)
    assert receive_counts(proc.stderr.decode()) == (n, 0, "")


# -- fallbacks ----------------------------------------------------------------------------------

def needs_lzo_decoder(source: Source) -> None:
    """The receiver decodes in these tests: LZO extents need python-lzo on this side."""
    from rawsend.codecs import lzo

    if source.name == "lzo" and not lzo.AVAILABLE:
        pytest.skip("python-lzo not installed (pip install 'rawsend[lzo]', needs liblzo2-dev):"
                    " the receiver cannot decode LZO extents")


def compressed_extent_count(root: Path) -> int:
    return sum(len(on_disk(root / rel).compressed) for rel in regular_files(root))


def raw_extent_count(root: Path) -> int:
    """Compressed extents the sender sends as they are."""
    return sum(len(as_sent(on_disk(root / rel)).compressed) for rel in regular_files(root))


def test_nodatasum_destination_decodes(source, tmp_path):
    needs_lzo_decoder(source)
    with btrfs_mount(tmp_path, options="nodatasum", size="256M") as mnt:
        dst = mnt / "out"
        _, received = send_receive(source.snap, dst)
        assert_same_tree(source.snap, dst)
        assert compressed_extent_count(dst) == 0
    n = raw_extent_count(source.snap)
    assert receive_counts(received) == (0, n, f"kernel refused the encoded write (EINVAL): {n}")


def test_non_btrfs_destination_decodes(source, tmp_path):
    needs_lzo_decoder(source)
    assert not btrfs.is_btrfs(tmp_path)
    dst = tmp_path / "out"
    _, received = send_receive(source.snap, dst)
    assert_same_tree(source.snap, dst)
    n = raw_extent_count(source.snap)
    assert receive_counts(received) == (0, n, f"destination is not btrfs: {n}")


def test_receive_no_raw_decodes_on_btrfs(source, dest_fs):
    needs_lzo_decoder(source)
    dst = dest_fs / f"decoded-{source.name}"
    _, received = send_receive(source.snap, dst, receive_args=("--no-raw",))
    assert_same_tree(source.snap, dst)
    assert compressed_extent_count(dst) == 0
    n = raw_extent_count(source.snap)
    assert receive_counts(received) == (0, n, f"decoding asked for (--no-raw): {n}")


def stream_payloads(stream: bytes) -> list[bytes]:
    return [bytes(raw.payload) for raw in StreamReader(io.BytesIO(stream)) if raw.type == RecordType.EXTENT]


def padded_disk_payloads(root: Path) -> set[bytes]:
    """On-disk payloads of regular (not inline) compressed extents: sector padded, which a
    frame rawsend makes is not, so they are in a stream only when sent as they lie on disk.
    (An inline extent's bytes can equal rawsend's own frame of the same data.)"""
    out = {e[5] for rel in regular_files(root) for e in on_disk(root / rel).compressed if len(e[5]) % SECTOR == 0}
    assert len(out) >= 5
    return out


def test_sender_without_cap_sys_admin_reads_and_compresses(source, dest_fs):
    drop = ("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin")
    if subprocess.run([*drop, "true"]).returncode != 0:
        pytest.skip("setpriv cannot drop CAP_SYS_ADMIN here")
    proc = ok(rawsend("send", str(source.snap), prefix=drop))
    notes = [line for line in proc.stderr.decode().splitlines() if "CAP_SYS_ADMIN" in line]
    assert len(notes) == 1 and notes[0].startswith("rawsend: note:")
    # No payload is an on-disk extent: every one was read and compressed by rawsend.
    disk = padded_disk_payloads(source.snap)
    assert not disk & set(stream_payloads(proc.stdout))
    dst = dest_fs / f"nocap-{source.name}"
    ok(rawsend("receive", str(dst), stdin=proc.stdout))
    assert_same_tree(source.snap, dst)


def test_send_no_raw_reads_and_compresses(source, tmp_path):
    raw = ok(rawsend("send", str(source.snap))).stdout
    plain = ok(rawsend("send", "--no-raw", str(source.snap))).stdout
    disk = padded_disk_payloads(source.snap)
    sent_raw = {e[5] for rel in regular_files(source.snap) for e in as_sent(on_disk(source.snap / rel)).compressed}
    assert sent_raw and sent_raw <= set(stream_payloads(raw))
    assert not disk & set(stream_payloads(plain))
    dst = tmp_path / "out"
    ok(rawsend("receive", str(dst), stdin=plain))
    assert_same_tree(source.snap, dst)


# -- extents the sender must not send raw --------------------------------------------------------

def test_partly_referenced_extent_goes_out_decoded(dest_fs, tmp_path):
    require_encoded_io()
    from rawsend.pipeline import receive, send
    from rawsend.sinks.tree import TreeSink
    from rawsend.sources.btrfs import BtrfsSource

    rnd = random.Random(3)
    # each 4 KiB block: 2 KiB random, 2 KiB zeros, so the extent compresses to about half
    half = b"".join(rnd.randbytes(2 * KiB) + bytes(2 * KiB) for _ in range(32))
    with btrfs_mount(tmp_path, options="compress=zstd", size="256M") as mnt:
        root = mnt / "tree"
        root.mkdir()
        write_synced(root / "f", half)
        [whole] = on_disk(root / "f").compressed
        assert 32 * KiB < len(whole[5]) < 128 * KiB
        write_synced(root / "f", rnd.randbytes(120 * KiB), offset=8 * KiB)
        [left] = on_disk(root / "f").compressed   # 8 KiB still use the whole extent
        assert left[:2] == (0, 8 * KiB) and left[5] == whole[5]

        source = BtrfsSource(root)
        stream = io.BytesIO()
        send(source, stream.write)
        assert source.report.raw_extents == 0
        assert source.report.decoded_reasons == {
            "extent of N bytes on disk covers only N bytes of the file": 1}
        assert whole[5] not in stream_payloads(stream.getvalue())
        stream.seek(0)
        sink = TreeSink(dest_fs / "partly")
        receive(stream, sink)
        assert (dest_fs / "partly" / "f").read_bytes() == (root / "f").read_bytes()


# -- extents made by the sender also go in verbatim ---------------------------------------------

@pytest.mark.parametrize("codec, compression", [("zstd", btrfs.COMPRESSION_ZSTD), ("zlib", btrfs.COMPRESSION_ZLIB)])
def test_sender_compressed_extents_go_in_verbatim(codec, compression, dest_fs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(text(300 * KiB + 123, seed=5))
    (src / "b.txt").write_bytes(b"short and compressible " * 20)
    dst = dest_fs / f"from-ext4-{codec}"
    _, received = send_receive(src, dst, send_args=("--compress", codec))
    assert_same_tree(src, dst)
    extents = on_disk(dst / "a.txt").compressed + on_disk(dst / "b.txt").compressed
    assert len(extents) == 4 and {e[4] for e in extents} == {compression}
    assert receive_counts(received) == (4, 0, "")


def test_lz4_extents_are_decoded_on_btrfs(dest_fs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(text(200 * KiB, seed=6))
    dst = dest_fs / "from-ext4-lz4"
    _, received = send_receive(src, dst, send_args=("--compress", "lz4"))
    assert_same_tree(src, dst)
    assert receive_counts(received) == (0, 2, "not a btrfs compression: 2")


# -- LZO without python-lzo ---------------------------------------------------------------------

def test_lzo_decode_without_python_lzo_names_the_extra(monkeypatch, tmp_path):
    from rawsend.codecs import compress, lzo
    from rawsend.pipeline import receive, send
    from rawsend.sources.tree import EncodedChunk
    from rawsend.sinks.tree import TreeSink
    from rawsend.stream.records import ROOT_ID, Create

    monkeypatch.setattr(lzo, "_lzo", None)
    with pytest.raises(DecoderMissing) as info:
        compress.decode(b"\x08\x00\x00\x00\x00\x00\x00\x00", btrfs.COMPRESSION_LZO_4K, 4096)
    message = str(info.value)
    assert "LZO" in message and "rawsend[lzo]" in message and "--store" in message

    # A receiver on a filesystem that is not btrfs meets it at the first LZO extent,
    # says so, and leaves nothing behind.
    frame = b"\x10\x00\x00\x00" + b"\x00" * 12   # never decoded: the codec is missing
    items = [Create(RecordType.MKDIR, ROOT_ID, 0, b"", 0o40755, 0, 0, 0, 0),
             Create(RecordType.MKFILE, 2, ROOT_ID, b"f", 0o100644, 0, 0, 0, 0, size=8192),
             EncodedChunk(Extent(2, 0, 8192, 8192, 0, len(frame), btrfs.COMPRESSION_LZO_4K), frame)]
    stream = io.BytesIO()
    send(items, stream.write, threads=1)
    stream.seek(0)
    dest = tmp_path / "out"
    with pytest.raises(DecoderMissing) as info:
        receive(stream, TreeSink(dest))
    assert "rawsend[lzo]" in str(info.value) and info.value.record == 3
    assert not dest.exists() and os.listdir(tmp_path) == []


# -- the receiver's checks before ENCODED_WRITE, and the decode fallback's arithmetic -----------

def crafted_stream(size: int, extents: list[tuple[int, int, int, bytes]]) -> io.BytesIO:
    """One file of `size` bytes with zstd extents (offset, num_bytes, unencoded_offset, plain data)."""
    import zstandard

    from rawsend.pipeline import send
    from rawsend.sources.tree import EncodedChunk
    from rawsend.stream.records import ROOT_ID, Create

    items = [Create(RecordType.MKDIR, ROOT_ID, 0, b"", 0o40755, 0, 0, 0, 0),
             Create(RecordType.MKFILE, 2, ROOT_ID, b"f", 0o100644, 0, 0, 0, 0, size=size)]
    for offset, num_bytes, unencoded_offset, plain in extents:
        frame = zstandard.ZstdCompressor().compress(plain)
        items.append(EncodedChunk(Extent(2, offset, num_bytes, len(plain), unencoded_offset, len(frame),
                                         btrfs.COMPRESSION_ZSTD), frame))
    stream = io.BytesIO()
    send(items, stream.write, threads=1)
    stream.seek(0)
    return stream


def test_extents_btrfs_refuses_are_decoded_exactly(dest_fs):
    from rawsend.pipeline import receive
    from rawsend.sinks.tree import TreeSink

    a, b, c = text(8 * KiB, seed=8), text(16 * KiB, seed=9), text(4 * KiB, seed=10)
    size = 64 * KiB + 1000
    extents = [
        (0, 1000, 0, a),               # ends unaligned before the end of the file
        (8 * KiB, 4 * KiB, 100, b),    # unaligned unencoded_offset
        (16 * KiB, 8 * KiB, 4 * KiB, b),  # mid-extent piece, aligned: verbatim
        (64 * KiB, 1000, 0, c),        # unaligned end at the end of the file: verbatim
    ]
    sink = TreeSink(dest_fs / "crafted")
    receive(crafted_stream(size, extents), sink)
    assert sink.report.encoded_extents == 2
    assert sink.report.decoded_reasons == {
        "end N not sector aligned and before file size N": 1,
        "unencoded_offset N not sector aligned": 1,
    }
    want = bytearray(size)
    for offset, num_bytes, unencoded_offset, plain in extents:
        want[offset:offset + num_bytes] = plain[unencoded_offset:unencoded_offset + num_bytes]
    path = dest_fs / "crafted" / "f"
    assert path.read_bytes() == want
    assert data_ranges(path) == [(0, 4 * KiB), (8 * KiB, 12 * KiB), (16 * KiB, 24 * KiB), (64 * KiB, size)]
    got = on_disk(path).compressed
    assert [(e[0], e[1], e[2], e[3]) for e in got] == [(16 * KiB, 8 * KiB, 16 * KiB, 4 * KiB),
                                                       (64 * KiB, 1000, 4 * KiB, 0)]


def test_a_payload_that_does_not_decode_is_refused_not_written_raw(dest_fs):
    """The kernel stores encoded payloads unchecked; the receiver checks them first."""
    from rawsend.pipeline import receive
    from rawsend.sinks.tree import TreeSink

    plain = text(64 * KiB, seed=11)
    stream = crafted_stream(64 * KiB, [(0, 64 * KiB, 0, plain)])
    data = bytearray(stream.getvalue())
    frame_at = data.index(b"\x28\xb5\x2f\xfd")  # the zstd magic: corrupt the frame's blocks
    data[frame_at + 20:frame_at + 40] = bytes(20)
    from spec.vectors.generate import fix_crc, record_spans  # recompute the CRC: only the payload is bad
    start = next(s for s, e in record_spans(bytes(data)) if s < frame_at < e)
    fix_crc(data, start)
    dest = dest_fs / "corrupt"
    with pytest.raises(DecodeError):
        receive(io.BytesIO(bytes(data)), TreeSink(dest))
    assert not dest.exists()


def test_nocow_destination_is_decoded_without_trying(source, dest_fs):
    needs_lzo_decoder(source)
    parent = dest_fs / f"nocow-{source.name}"
    parent.mkdir()
    run("chattr", "+C", str(parent))   # inherited by the receive's files: no checksums, no encoded writes
    dst = parent / "out"
    _, received = send_receive(source.snap, dst)
    assert_same_tree(source.snap, dst)
    assert compressed_extent_count(dst) == 0
    n = raw_extent_count(source.snap)
    assert receive_counts(received) == (0, n, f"destination file has no data checksums (nodatasum/nocow): {n}")


def test_receiver_without_cap_sys_admin_decodes(dest_fs, tmp_path):
    drop = ("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin")
    if subprocess.run([*drop, "true"]).returncode != 0:
        pytest.skip("setpriv cannot drop CAP_SYS_ADMIN here")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(text(200 * KiB, seed=11))
    stream = ok(rawsend("send", str(src))).stdout
    dst = dest_fs / "nocap-receiver"
    proc = ok(rawsend("receive", str(dst), stdin=stream, prefix=drop))
    assert_same_tree(src, dst)
    assert compressed_extent_count(dst) == 0
    assert receive_counts(proc.stderr.decode()) == (0, 2, "no CAP_SYS_ADMIN for encoded writes (run as root): 2")
