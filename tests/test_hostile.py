"""Hostile streams: each is refused with its own error class, naming the record and byte offset,
and nothing appears outside the destination, nor the destination itself.

Every stream here is framed honestly (right CRCs, right END digest) unless the case is about the
framing, so each test reaches the one check it aims at.  The destination lives inside a sentinel
directory that also holds an "outside" directory; the sentinel is listed before and after.
"""

from __future__ import annotations

import os
import stat
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path

import lz4.block
import pytest
import zstandard

from rawsend.errors import (
    ChecksumMismatch,
    DecodeError,
    DestinationError,
    DigestMismatch,
    LimitExceeded,
    MalformedRecord,
    RawsendError,
    RecordOrderError,
    TrailingData,
    TruncatedStream,
    UnsafePath,
)
from rawsend.sinks.tree import TreeSink
from rawsend.stream.checker import Limits
from rawsend.stream.records import (
    FLAG_SKIPPABLE,
    MAX_BODY_LEN,
    MAX_EXTENT_LEN,
    MAX_NAME_LEN,
    MAX_PAYLOAD_LEN,
    MAX_TARGET_LEN,
    MAX_XATTR_NAME_LEN,
    MAX_XATTR_VALUE_LEN,
    Compression,
    End,
    Extent,
    Header,
    Link,
    RecordType,
    SetXattr,
)
from tests.hostile import (
    ROOT,
    STREAM_ID,
    T0,
    HostileWriter,
    Written,
    listing,
    mkdir,
    mkfile,
    mknod,
    plain_extent,
    receive_bytes,
    split,
    symlink,
    tree_stream,
    verify_bytes,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, chown, capabilities)")

U32_MAX, U64_MAX = 2**32 - 1, 2**64 - 1


@dataclass
class Box:
    """A sentinel directory: the destination inside it, and an "outside" a stream must not reach."""

    root: Path
    dest: Path
    outside: Path

    def refuse(self, data: bytes, cls: type, at: Written | None, *, limits: Limits | None = None,
               also_verify: bool = True, **sink_options) -> RawsendError:
        """Receive must fail with exactly ``cls`` at ``at``, leaving the sentinel as it was."""
        before = self.snapshot()
        with pytest.raises(RawsendError) as info:
            receive_bytes(data, self.dest, limits=limits, **sink_options)
        err = info.value
        assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {err}"
        if at is not None:
            assert (err.record, err.offset) == (at.index, at.offset), str(err)
            assert f"record {at.index}" in str(err) and f"byte offset {at.offset}" in str(err), str(err)
        assert not self.dest.exists() and not self.dest.is_symlink()
        assert self.snapshot() == before  # no temporary directory left, nothing outside touched
        if also_verify:  # verify refuses the same stream the same way
            with pytest.raises(cls) as again:
                verify_bytes(data, limits=limits)
            assert (again.value.record, again.value.offset) == (err.record, err.offset)
        return err

    def snapshot(self) -> dict:
        entries = listing(self.root)
        entries["."] = entries["."][:2]  # the temporary directory came and went: mtime changed
        return entries

    def accept(self, data: bytes, **options):
        _stats, sink = receive_bytes(data, self.dest, **options)
        assert set(os.listdir(self.root)) == {"dest", "outside"}
        return sink


@pytest.fixture
def box(tmp_path: Path) -> Box:
    root = tmp_path / "sentinel"
    outside = root / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "victim").write_bytes(b"victim\n")
    return Box(root, root / "dest", outside)


def one(*records) -> tuple[bytes, Written]:
    """A stream of ROOT and ``records``; the Written of the last one."""
    data, at = tree_stream(*records)
    return data, at[-1]


# -- names ------------------------------------------------------------------------------------------

BAD_NAMES = [
    (b"..", UnsafePath), (b".", UnsafePath), (b"", UnsafePath), (b"a/b", UnsafePath),
    (b"/etc/passwd", UnsafePath), (b"../outside/victim", UnsafePath), (b"a\0b", UnsafePath),
    (b"/", UnsafePath), (b"x" * (MAX_NAME_LEN + 1), LimitExceeded),
]


def _named(kind: str, name: bytes) -> list:
    if kind == "link":
        return [mkfile(2, 1, b"f"), Link(2, 1, name)]
    return [{"mkdir": mkdir(2, 1, name), "mkfile": mkfile(2, 1, name),
             "symlink": symlink(2, 1, name, b"target"),
             "mknod": mknod(2, 1, name, stat.S_IFIFO)}[kind]]


@pytest.mark.parametrize("kind", ["mkdir", "mkfile", "symlink", "mknod", "link"])
@pytest.mark.parametrize("name,cls", BAD_NAMES, ids=[repr(n[:12]) for n, _ in BAD_NAMES])
def test_a_name_that_is_not_one_component_is_refused(box, kind, name, cls):
    data, at = one(*_named(kind, name))
    box.refuse(data, cls, at, preserve_special=True)


def test_odd_but_legal_names_land_inside_the_destination(box):
    names = [b"a\\..\\b", b"\xff\xfe", b"...", b" ", b"-rf", b"x" * MAX_NAME_LEN, b"\n"]
    data, _ = tree_stream(*[mkfile(i + 2, 1, n) for i, n in enumerate(names)])
    box.accept(data)
    assert sorted(os.listdir(os.fsencode(box.dest))) == sorted(names)


# -- symlinks -----------------------------------------------------------------------------------------

def _through(kind: str, parent: int, file_id: int) -> list:
    return {"mkfile": [mkfile(file_id, parent, b"x", 1), plain_extent(file_id, 0, b"!")],
            "mkdir": [mkdir(file_id, parent, b"x")],
            "symlink": [symlink(file_id, parent, b"x", b"y")],
            "mknod": [mknod(file_id, parent, b"x", stat.S_IFIFO)],
            "link": [mkfile(file_id, 1, b"f"), Link(file_id, parent, b"x")]}[kind]


@pytest.mark.parametrize("kind", ["mkfile", "mkdir", "symlink", "mknod", "link"])
@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_a_symlink_is_never_a_parent(box, kind, target):
    link_target = os.fsencode(box.outside) if target == "absolute" else b"../outside"
    records = [symlink(2, 1, b"l", link_target)] + _through(kind, 2, 3)
    data, at = tree_stream(*records)
    box.refuse(data, RecordOrderError, at[3] if kind == "link" else at[2], preserve_special=True)


def test_write_through_a_symlink_chain_is_refused(box):
    chain = [symlink(2, 1, b"l1", os.fsencode(box.outside)), symlink(3, 1, b"l2", b"l1"),
             symlink(4, 1, b"l3", b"l2/dir")]
    data, at = tree_stream(*chain, mkfile(5, 4, b"planted", 1), plain_extent(5, 0, b"!"))
    err = box.refuse(data, RecordOrderError, at[4])
    assert "parent id 4 is not a directory" in str(err)


def test_extent_for_a_symlink_is_refused(box):
    data, at = one(symlink(2, 1, b"l", os.fsencode(box.outside / "victim")), plain_extent(2, 0, b"owned"))
    box.refuse(data, RecordOrderError, at)


def test_symlink_chains_and_loops_are_kept_verbatim_and_never_followed(box):
    targets = [os.fsencode(box.outside), b"l0", b"l1/dir", b"l3", b"../../../../../../etc/passwd"]
    deep = [symlink(7 + i, 1, b"c%d" % i, b"c%d" % (i + 1)) for i in range(60)]  # longer than any lookup
    data, _ = tree_stream(*[symlink(2 + i, 1, b"l%d" % i, t) for i, t in enumerate(targets)], *deep)
    box.accept(data)
    for i, t in enumerate(targets):
        assert os.readlink(os.fsencode(box.dest / f"l{i}")) == t
    assert os.readlink(box.dest / "c59") == "c60"
    assert (box.outside / "victim").read_bytes() == b"victim\n"
    assert sorted(os.listdir(box.outside)) == ["dir", "victim"]


def test_xattr_on_a_symlink_stays_on_the_link(box):
    victim = box.outside / "victim"
    names = [b"user.evil"] + ([b"trusted.evil"] if os.geteuid() == 0 else [])
    data, _ = tree_stream(symlink(2, 1, b"l", os.fsencode(victim)),
                          *[SetXattr(2, n, b"1") for n in names])
    box.accept(data)
    assert os.listxattr(victim) == []


def test_the_sink_alone_refuses_a_symlink_parent(box):
    """Defense in depth: even without the checker, the sink opens parents with O_NOFOLLOW."""
    sink = TreeSink(box.dest, sync=False)
    sink.begin(Header(STREAM_ID, T0))
    sink.create(ROOT)
    sink.create(symlink(2, 1, b"l", os.fsencode(box.outside / "dir")))
    with pytest.raises(DestinationError):
        sink.create(mkfile(3, 2, b"planted"))
    sink.abort()
    assert os.listdir(box.outside / "dir") == []
    assert set(os.listdir(box.root)) == {"outside"}


def test_a_destination_that_is_a_symlink_is_refused(box):
    box.dest.symlink_to(box.outside / "dir")
    data, _ = tree_stream(mkfile(2, 1, b"planted"))
    with pytest.raises(DestinationError):
        receive_bytes(data, box.dest)
    assert os.listdir(box.outside / "dir") == [] and box.dest.is_symlink()


def test_a_destination_with_contents_is_refused_and_an_empty_one_is_filled(box):
    box.dest.mkdir()
    (box.dest / "keep").write_bytes(b"mine")
    data, _ = tree_stream(mkfile(2, 1, b"keep", 5), plain_extent(2, 0, b"yours"))
    with pytest.raises(DestinationError):
        receive_bytes(data, box.dest)
    assert (box.dest / "keep").read_bytes() == b"mine"
    (box.dest / "keep").unlink()
    box.accept(data)
    assert (box.dest / "keep").read_bytes() == b"yours"


# -- hard links ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["id 0", "not yet created", "the root", "a directory", "a symlink",
                                  "a special file", "parent is a file", "parent not created"])
def test_a_hard_link_to_anything_but_an_earlier_file_is_refused(box, case):
    records = [mkdir(2, 1, b"d"), symlink(3, 1, b"s", os.fsencode(box.outside / "victim")),
               mknod(4, 1, b"p", stat.S_IFIFO), mkfile(5, 1, b"f")]
    file_id, parent = {"id 0": (0, 1), "not yet created": (6, 1), "the root": (1, 2),
                       "a directory": (2, 1), "a symlink": (3, 1), "a special file": (4, 1),
                       "parent is a file": (5, 5), "parent not created": (5, 9)}[case]
    data, at = one(*records, Link(file_id, parent, b"x"))
    box.refuse(data, RecordOrderError, at)


def test_a_hard_link_over_an_existing_name_is_refused(box):
    data, at = one(mkfile(2, 1, b"a"), mkfile(3, 1, b"b"), Link(2, 1, b"b"))
    err = box.refuse(data, MalformedRecord, at, also_verify=False)  # only a receiver sees the clash
    assert "same name twice" in str(err)


def test_the_same_name_twice_is_refused(box):
    data, at = one(mkdir(2, 1, b"a"), mkfile(3, 1, b"a"))
    box.refuse(data, MalformedRecord, at, also_verify=False)


# -- special files, setuid, capabilities ------------------------------------------------------------

SPECIALS = [(b"null", stat.S_IFCHR, os.makedev(1, 3)), (b"loop", stat.S_IFBLK, os.makedev(7, 0)),
            (b"fifo", stat.S_IFIFO, 0), (b"sock", stat.S_IFSOCK, 0)]


def _specials_stream() -> bytes:
    data, _ = tree_stream(*[mknod(2 + i, 1, n, k, rdev, 0o6666) for i, (n, k, rdev) in enumerate(SPECIALS)])
    return data


def test_device_nodes_and_fifos_are_skipped_by_default(box):
    sink = box.accept(_specials_stream())
    assert sink.report.skipped_special == len(SPECIALS)
    assert os.listdir(box.dest) == []


@needs_root
def test_preserve_special_as_root_creates_them_without_setuid(box):
    box.accept(_specials_stream(), preserve_special=True, preserve_devices=True, preserve_owner=False)
    for name, kind, rdev in SPECIALS:
        st = os.lstat(box.dest / name.decode())
        assert stat.S_IFMT(st.st_mode) == kind and stat.S_IMODE(st.st_mode) & 0o7000 == 0
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            assert st.st_rdev == rdev


def test_setuid_setgid_and_sticky_bits_are_dropped_unless_owners_are_kept(box):
    data, _ = tree_stream(mkfile(2, 1, b"suid", 0, 0o6755, uid=4321, gid=4321),
                          mkfile(3, 1, b"sticky", 0, 0o1644), mkdir(4, 1, b"shared", 0o3775))
    sink = box.accept(data, preserve_owner=False)
    assert stat.S_IMODE(os.stat(box.dest / "suid").st_mode) == 0o755
    assert os.stat(box.dest / "suid").st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(box.dest / "sticky").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(box.dest / "shared").st_mode) == 0o3775  # setgid dirs are harmless
    assert sink.report.stripped_modes == 2


@needs_root
def test_setuid_is_kept_with_its_owner_when_owners_are_preserved(box):
    data, _ = tree_stream(mkfile(2, 1, b"suid", 0, 0o6755, uid=4321, gid=4321))
    box.accept(data, preserve_owner=True)
    st = os.stat(box.dest / "suid")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o6755, 4321, 4321)


CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # vfs caps v2, cap_net_raw+ep


@needs_root
@pytest.mark.parametrize("preserve_owner", [False, True])
def test_privileged_xattrs_follow_the_owner_rule(box, preserve_owner):
    data, _ = tree_stream(mkfile(2, 1, b"ping", 4), plain_extent(2, 0, b"\x7fELF"),
                          SetXattr(2, b"security.capability", CAP_NET_RAW),
                          SetXattr(2, b"trusted.overlay.opaque", b"y"), SetXattr(2, b"user.plain", b"kept"))
    sink = box.accept(data, preserve_owner=preserve_owner)
    got = {n: os.getxattr(box.dest / "ping", n) for n in os.listxattr(box.dest / "ping")}
    if preserve_owner:  # chown comes before the xattrs, so the kernel does not clear the capability
        assert got == {"security.capability": CAP_NET_RAW, "trusted.overlay.opaque": b"y", "user.plain": b"kept"}
    else:
        assert got == {"user.plain": b"kept"}
        assert sink.report.skipped_xattrs == 2
        assert any("need --preserve-owner" in w for w in sink.report.warnings)


# -- decompression bombs ------------------------------------------------------------------------------

BOMB = 64 << 20  # what the payload inflates to


def _zstd_bomb() -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=17, write_content_size=False)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    chunk = bytes(1 << 20)
    return b"".join(cobj.compress(chunk) for _ in range(BOMB >> 20)) + cobj.flush()


def _zlib_bomb() -> bytes:
    cobj = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    return b"".join(cobj.compress(chunk) for _ in range(BOMB >> 20)) + cobj.flush()


def _lz4_bomb() -> bytes:
    return lz4.block.compress(bytes(16 << 20), store_size=False)  # 16 MiB: the payload cap allows no more


def _zstd_frame(window_log: int | None = None, content_size: int | None = None, body: bytes = b"x" * 100) -> bytes:
    """A hand-made zstd frame holding one raw block; its header may claim anything."""
    if content_size is not None:  # single segment: the window is the content size
        header = bytes([0xE0]) + content_size.to_bytes(8, "little")
    else:
        header = bytes([0x00, (window_log - 10) << 3])
    return b"\x28\xb5\x2f\xfd" + header + ((len(body) << 3) | 1).to_bytes(3, "little") + body


def _measure(data: bytes) -> tuple[RawsendError, int]:
    tracemalloc.start()
    try:
        with pytest.raises(RawsendError) as info:
            verify_bytes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return info.value, peak


@pytest.mark.parametrize("codec,bomb", [(Compression.ZSTD, _zstd_bomb), (Compression.ZLIB, _zlib_bomb),
                                        (Compression.LZ4, _lz4_bomb)], ids=["zstd", "zlib", "lz4"])
def test_a_compression_bomb_fails_with_bounded_memory(box, codec, bomb):
    payload = bomb()
    assert len(payload) <= MAX_PAYLOAD_LEN
    data, at = one(mkfile(2, 1, b"bomb", 4096), (Extent(2, 0, 4096, 4096, 0, len(payload), codec), payload))
    err, peak = _measure(data)
    assert type(err) is DecodeError and (err.record, err.offset) == (at.index, at.offset), err
    assert peak < 1 << 20, f"peak {peak} bytes while refusing a {BOMB}-byte bomb"
    box.refuse(data, DecodeError, at)


@pytest.mark.parametrize("frame,words", [
    (_zstd_frame(content_size=1 << 62), "declares"),
    (_zstd_frame(content_size=MAX_EXTENT_LEN + 1), "declares"),
    (_zstd_frame(window_log=27), "memory"),
    (_zstd_frame(window_log=31), ""),
    (_zstd_frame(window_log=17, body=b"y" * 4097), "more than unencoded_len"),
], ids=["declares-2^62", "declares-cap+1", "window-2^27", "window-2^31", "long-by-one"])
def test_zstd_frames_that_want_too_much_are_refused_before_decoding(box, frame, words):
    data, at = one(mkfile(2, 1, b"f", 4096), (Extent(2, 0, 4096, 4096, 0, len(frame), Compression.ZSTD), frame))
    err, peak = _measure(data)
    assert type(err) is DecodeError and words in str(err) and peak < 1 << 20, err
    box.refuse(data, DecodeError, at)


@pytest.mark.parametrize("codec", [Compression.ZSTD, Compression.ZLIB, Compression.LZ4])
def test_output_long_by_one_is_refused_and_short_by_one_is_zero_filled(box, codec):
    def pack(raw: bytes) -> bytes:
        if codec == Compression.ZSTD:
            return zstandard.ZstdCompressor(write_content_size=False).compress(raw)
        if codec == Compression.ZLIB:
            return zlib.compress(raw)
        return lz4.block.compress(raw, store_size=False)

    long_payload = pack(b"a" * 4097)
    data, at = one(mkfile(2, 1, b"f", 4096), (Extent(2, 0, 4096, 4096, 0, len(long_payload), codec), long_payload))
    box.refuse(data, DecodeError, at)
    short = pack(b"a" * 4095)
    data, _ = one(mkfile(2, 1, b"f", 4096), (Extent(2, 0, 4096, 4096, 0, len(short), codec), short))
    box.accept(data)
    assert (box.dest / "f").read_bytes() == b"a" * 4095 + b"\0"


def test_garbage_in_a_btrfs_lzo_extent_is_a_decode_error(box):
    payload = b"\xff" * 64
    data, at = one(mkfile(2, 1, b"f", 4096), (Extent(2, 0, 4096, 4096, 0, 64, Compression.LZO_4K), payload))
    box.refuse(data, DecodeError, at)


# -- every length field -------------------------------------------------------------------------------

def _frame_case(body_len=None, payload_len=None, body=b"", payload=b"", rtype=RecordType.MKFILE):
    w = HostileWriter()
    w.record(ROOT)
    at = w.raw(rtype, body, payload, body_len=body_len, payload_len=payload_len)
    return w.stream(), at


def _create_case(name_len: int, *, rtype=RecordType.MKFILE, target_len: int = 0):
    rec = {RecordType.MKFILE: mkfile(2, 1, b"n" * name_len),
           RecordType.SYMLINK: symlink(2, 1, b"n" * max(name_len, 1), b"t" * target_len)}[rtype]
    return one(rec)


def _size_case(size: int):
    return one(mkfile(2, 1, b"f", size))


def _link_case(name_len: int):
    return one(mkfile(2, 1, b"f"), Link(2, 1, b"n" * name_len))


def _xattr_case(name_len: int = 6, value_len: int = 1, lie_value_len: int | None = None):
    name = (b"user." + b"n" * name_len)[:name_len]
    value = b"v" * value_len
    if lie_value_len is None:
        return one(mkfile(2, 1, b"f"), SetXattr(2, name, value))
    w = HostileWriter()
    w.record(ROOT)
    w.record(mkfile(2, 1, b"f"))
    body = SetXattr(2, name, value).pack()
    body = body[:10] + lie_value_len.to_bytes(4, "little") + body[14:]
    at = w.raw(RecordType.SET_XATTR, body)
    return w.stream(), at


def _extent_case(**fields):
    n = fields.pop("payload", 16)
    ext = {"file_id": 2, "offset": 0, "num_bytes": n, "unencoded_len": n, "unencoded_offset": 0,
           "disk_num_bytes": n}
    ext.update(fields)
    return one(mkfile(2, 1, b"f", 2 * MAX_EXTENT_LEN), (Extent(**ext), b"p" * n))


def _end_case(record_count=None, byte_count=None):
    w = HostileWriter()
    w.record(ROOT)
    at = Written(w.record_count, w.byte_count)
    end = End(w.record_count if record_count is None else record_count,
              w.byte_count if byte_count is None else byte_count, w._digest.digest())
    w.raw(RecordType.END, end.pack())
    return w.stream(end=False), at


OK = None
CAP_BYTES = Limits().max_bytes
LENGTH_CASES = {
    # record framing: body_len and payload_len (u32)
    "body_len 0": (lambda: _frame_case(), MalformedRecord),
    "body_len 1": (lambda: _frame_case(body=b"\0"), MalformedRecord),
    "body_len cap": (lambda: _frame_case(body=bytes(MAX_BODY_LEN)), MalformedRecord),
    "body_len cap+1": (lambda: _frame_case(body_len=MAX_BODY_LEN + 1), LimitExceeded),
    "body_len 2^32-1": (lambda: _frame_case(body_len=U32_MAX), LimitExceeded),
    "payload_len 0 (extent says 16)": (lambda: _extent_case_payload(0), MalformedRecord),
    "payload_len 1 (extent says 16)": (lambda: _extent_case_payload(1), MalformedRecord),
    "payload_len cap": (lambda: _extent_case_payload(MAX_PAYLOAD_LEN), MalformedRecord),
    "payload_len cap+1": (lambda: _extent_case_payload(MAX_PAYLOAD_LEN + 1, lie=True), LimitExceeded),
    "payload_len 2^32-1": (lambda: _extent_case_payload(U32_MAX, lie=True), LimitExceeded),
    "payload on a mkdir": (lambda: _frame_case(body=mkdir(2, 1, b"d").pack(), payload=b"x",
                                               rtype=RecordType.MKDIR), MalformedRecord),
    # create records: name_len, target_len (u16), size (u64)
    "name_len 0": (lambda: _create_case(0), UnsafePath),
    "name_len 1": (lambda: _create_case(1), OK),
    "name_len cap": (lambda: _create_case(MAX_NAME_LEN), OK),
    "name_len cap+1": (lambda: _create_case(MAX_NAME_LEN + 1), LimitExceeded),
    "name_len 2^16-1": (lambda: _create_case(0xFFFF), LimitExceeded),
    "name_len lies": (lambda: _lying_name_len(), MalformedRecord),
    "target_len 0": (lambda: _create_case(1, rtype=RecordType.SYMLINK, target_len=0), LimitExceeded),
    "target_len 1": (lambda: _create_case(1, rtype=RecordType.SYMLINK, target_len=1), OK),
    "target_len cap": (lambda: _create_case(1, rtype=RecordType.SYMLINK, target_len=MAX_TARGET_LEN), OK),
    "target_len cap+1": (lambda: _create_case(1, rtype=RecordType.SYMLINK, target_len=MAX_TARGET_LEN + 1),
                         LimitExceeded),
    "target_len 2^16-1": (lambda: _create_case(1, rtype=RecordType.SYMLINK, target_len=0xFFFF), LimitExceeded),
    "size 0": (lambda: _size_case(0), OK),
    "size 1": (lambda: _size_case(1), OK),
    "size cap": (lambda: _size_case(CAP_BYTES), OK),
    "size cap+1": (lambda: _size_case(CAP_BYTES + 1), LimitExceeded),
    "size 2^63": (lambda: _size_case(2**63), LimitExceeded),
    "size 2^64-1": (lambda: _size_case(U64_MAX), LimitExceeded),
    "rdev 2^64-1": (lambda: one(mknod(2, 1, b"c", stat.S_IFCHR, U64_MAX)), LimitExceeded),
    # link: name_len (u16)
    "link name_len 0": (lambda: _link_case(0), UnsafePath),
    "link name_len 1": (lambda: _link_case(1), OK),
    "link name_len cap": (lambda: _link_case(MAX_NAME_LEN), OK),
    "link name_len cap+1": (lambda: _link_case(MAX_NAME_LEN + 1), LimitExceeded),
    "link name_len 2^16-1": (lambda: _link_case(0xFFFF), LimitExceeded),
    # set_xattr: name_len (u16), value_len (u32)
    "xattr name_len 0": (lambda: _xattr_case(name_len=0), LimitExceeded),
    "xattr name_len 1": (lambda: _xattr_case(name_len=1), OK),
    "xattr name_len cap": (lambda: _xattr_case(name_len=MAX_XATTR_NAME_LEN), OK),
    "xattr name_len cap+1": (lambda: _xattr_case(name_len=MAX_XATTR_NAME_LEN + 1), LimitExceeded),
    "xattr name_len 2^16-1": (lambda: _xattr_case(name_len=0xFFFF), LimitExceeded),
    "xattr value_len 0": (lambda: _xattr_case(value_len=0), OK),
    "xattr value_len 1": (lambda: _xattr_case(value_len=1), OK),
    "xattr value_len cap": (lambda: _xattr_case(value_len=MAX_XATTR_VALUE_LEN), OK),
    "xattr value_len cap+1": (lambda: _xattr_case(value_len=MAX_XATTR_VALUE_LEN + 1), LimitExceeded),
    "xattr value_len 2^32-1": (lambda: _xattr_case(lie_value_len=U32_MAX), LimitExceeded),
    # extent: every u64 length
    "unencoded_len 0": (lambda: _extent_case(unencoded_len=0), LimitExceeded),
    "unencoded_len 1": (lambda: _extent_case(payload=1), OK),
    "unencoded_len cap": (lambda: _extent_case(payload=MAX_EXTENT_LEN), OK),
    "unencoded_len cap+1": (lambda: _extent_case(unencoded_len=MAX_EXTENT_LEN + 1), LimitExceeded),
    "unencoded_len 2^32-1": (lambda: _extent_case(unencoded_len=U32_MAX), LimitExceeded),
    "unencoded_len 2^64-1": (lambda: _extent_case(unencoded_len=U64_MAX), LimitExceeded),
    "num_bytes 0": (lambda: _extent_case(num_bytes=0), MalformedRecord),
    "num_bytes 1": (lambda: _extent_case(num_bytes=1), OK),
    "num_bytes cap+1": (lambda: _extent_case(num_bytes=MAX_EXTENT_LEN + 1), MalformedRecord),
    "num_bytes 2^64-1": (lambda: _extent_case(num_bytes=U64_MAX), MalformedRecord),
    "unencoded_offset 1": (lambda: _extent_case(unencoded_offset=1, num_bytes=15), OK),
    "unencoded_offset = unencoded_len": (lambda: _extent_case(unencoded_offset=16), MalformedRecord),
    "unencoded_offset 2^64-1": (lambda: _extent_case(unencoded_offset=U64_MAX), MalformedRecord),
    "disk_num_bytes 0": (lambda: _extent_case(disk_num_bytes=0), LimitExceeded),
    "disk_num_bytes cap+1": (lambda: _extent_case(disk_num_bytes=MAX_PAYLOAD_LEN + 1), LimitExceeded),
    "disk_num_bytes 2^32-1": (lambda: _extent_case(disk_num_bytes=U32_MAX), LimitExceeded),
    "disk_num_bytes 2^64-1": (lambda: _extent_case(disk_num_bytes=U64_MAX), LimitExceeded),
    "offset 2^63-1": (lambda: _extent_case(offset=2**63 - 1), LimitExceeded),
    "offset 2^64-1": (lambda: _extent_case(offset=U64_MAX), LimitExceeded),
    # end: record_count and byte_count (u64)
    "end record_count 0": (lambda: _end_case(record_count=0), DigestMismatch),
    "end record_count 2^64-1": (lambda: _end_case(record_count=U64_MAX), DigestMismatch),
    "end byte_count 0": (lambda: _end_case(byte_count=0), DigestMismatch),
    "end byte_count 2^64-1": (lambda: _end_case(byte_count=U64_MAX), DigestMismatch),
}


def _extent_case_payload(payload_len: int, lie: bool = False):
    w = HostileWriter()
    w.record(ROOT)
    w.record(mkfile(2, 1, b"f", 64))
    ext = Extent(2, 0, 16, 16, 0, 16).pack()
    if lie:
        at = w.raw(RecordType.EXTENT, ext, b"p" * 16, payload_len=payload_len)
    else:
        at = w.raw(RecordType.EXTENT, ext, b"p" * payload_len)
    return w.stream(), at


def _lying_name_len():
    body = bytearray(mkfile(2, 1, b"abc").pack())
    body[76:78] = (0xFFFF).to_bytes(2, "little")  # name_len, with 3 name bytes behind it
    w = HostileWriter()
    w.record(ROOT)
    at = w.raw(RecordType.MKFILE, bytes(body))
    return w.stream(), at


@pytest.mark.parametrize("case", list(LENGTH_CASES))
def test_every_length_field_is_checked_before_anything_is_sized_by_it(case):
    make, expected = LENGTH_CASES[case]
    data, at = make()
    tracemalloc.start()
    try:
        if expected is OK:
            verify_bytes(data)
        else:
            with pytest.raises(RawsendError) as info:
                verify_bytes(data)
            err = info.value
            assert type(err) is expected, f"{type(err).__name__}: {err}"
            assert (err.record, err.offset) == (at.index, at.offset), err
            assert f"record {at.index}" in str(err) and f"byte offset {at.offset}" in str(err)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated"


@pytest.mark.parametrize("case", [c for c, (_, e) in LENGTH_CASES.items() if e is not OK and "size cap" not in c])
def test_length_field_refusals_leave_nothing_behind(box, case):
    make, expected = LENGTH_CASES[case]
    data, at = make()
    box.refuse(data, expected, at)


# -- order and structure --------------------------------------------------------------------------------

def _w(*records) -> HostileWriter:
    w = HostileWriter()
    for r in records:
        w.extent(*r) if isinstance(r, tuple) else w.record(r)
    return w


ORDER_CASES = {
    "xattr before the root": lambda: _last(_w(), SetXattr(1, b"user.x", b"1")),
    "create before the root": lambda: _last(_w(), mkdir(2, 1, b"d")),
    "a second root": lambda: _last(_w(ROOT), mkdir(2, 0, b"r")),
    "file id skips one": lambda: _last(_w(ROOT), mkfile(3, 1, b"f")),
    "file id repeats": lambda: _last(_w(ROOT, mkfile(2, 1, b"a")), mkfile(2, 1, b"b")),
    "file id goes back": lambda: _last(_w(ROOT, mkfile(2, 1, b"a"), mkfile(3, 1, b"b")), mkfile(2, 1, b"c")),
    "extent before its file": lambda: _last(_w(ROOT), plain_extent(2, 0, b"x")),
    "extent for an earlier file": lambda: _last(_w(ROOT, mkfile(2, 1, b"a", 1), mkfile(3, 1, b"b", 1)),
                                                plain_extent(2, 0, b"x")),
    "extent after a link": lambda: _last(_w(ROOT, mkfile(2, 1, b"a", 1), Link(2, 1, b"b")),
                                         plain_extent(2, 0, b"x")),
    "extent for a directory": lambda: _last(_w(ROOT, mkdir(2, 1, b"d")), plain_extent(2, 0, b"x")),
    "overlapping extents": lambda: _last(_w(ROOT, mkfile(2, 1, b"a", 8), plain_extent(2, 0, b"abcd")),
                                         plain_extent(2, 3, b"defg")),
    "extents out of order": lambda: _last(_w(ROOT, mkfile(2, 1, b"a", 8), plain_extent(2, 4, b"efgh")),
                                          plain_extent(2, 0, b"abcd")),
    "the same extent twice": lambda: _last(_w(ROOT, mkfile(2, 1, b"a", 8), plain_extent(2, 0, b"abcd")),
                                           plain_extent(2, 0, b"abcd")),
    "extent beyond the declared size": lambda: _last(_w(ROOT, mkfile(2, 1, b"a", 8)), plain_extent(2, 5, b"abcd")),
    "extent into an empty file": lambda: _last(_w(ROOT, mkfile(2, 1, b"a", 0)), plain_extent(2, 0, b"a")),
    "xattr for another file": lambda: _last(_w(ROOT, mkfile(2, 1, b"a"), mkfile(3, 1, b"b")),
                                            SetXattr(2, b"user.x", b"1")),
    "xattr after a link": lambda: _last(_w(ROOT, mkfile(2, 1, b"a"), Link(2, 1, b"b")),
                                        SetXattr(0, b"user.x", b"1")),
    "a second header": lambda: _last_raw(_w(ROOT), RecordType.HEADER, Header(STREAM_ID, T0).pack()),
}


def _last(w: HostileWriter, rec) -> tuple[bytes, Written]:
    at = w.extent(*rec) if isinstance(rec, tuple) else w.record(rec)
    return w.stream(), at


def _last_raw(w: HostileWriter, rtype: int, body: bytes, **kw) -> tuple[bytes, Written]:
    at = w.raw(rtype, body, **kw)
    return w.stream(), at


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_records_out_of_order_are_refused(box, case):
    data, at = ORDER_CASES[case]()
    box.refuse(data, RecordOrderError, at)


def test_a_stream_without_a_root_is_refused_at_its_end(box):
    w = HostileWriter()
    at = Written(w.record_count, w.byte_count)
    box.refuse(w.stream(), RecordOrderError, at)


FRAMING_CASES = {
    "unknown type": (lambda: _last_raw(_w(ROOT), 42, b"future"), MalformedRecord),
    "unknown flag": (lambda: _last_raw(_w(ROOT), RecordType.MKDIR, mkdir(2, 1, b"d").pack(), flags=0x0100),
                     MalformedRecord),
    "wrong crc": (lambda: _last_raw(_w(ROOT), RecordType.MKDIR, mkdir(2, 1, b"d").pack(), crc=0xDEADBEEF),
                  ChecksumMismatch),
    "flags on end": (lambda: _end_with(flags=FLAG_SKIPPABLE), MalformedRecord),
    "payload on end": (lambda: _end_with(payload=b"x"), MalformedRecord),
}


def _end_with(**kw) -> tuple[bytes, Written]:
    w = _w(ROOT)
    at = w.raw(RecordType.END, End(w.record_count, w.byte_count, w._digest.digest()).pack(), **kw)
    return w.stream(end=False), at


@pytest.mark.parametrize("case", list(FRAMING_CASES))
def test_framing_faults_are_refused(box, case):
    make, cls = FRAMING_CASES[case]
    data, at = make()
    box.refuse(data, cls, at)


def test_an_unknown_skippable_record_is_skipped(box):
    w = _w(ROOT)
    w.raw(42, b"future", flags=FLAG_SKIPPABLE)  # a later version's record
    box.accept(w.stream())
    assert os.listdir(box.dest) == []


def test_records_after_end_and_trailing_garbage_are_refused(box):
    w = _w(ROOT, mkfile(2, 1, b"a"))
    w.finish()
    after = Written(w.record_count, w.byte_count)
    record = split(tree_stream()[0])[1][1].pack()  # one framed record: a root mkdir
    box.refuse(w.stream(end=False, trailing=record), TrailingData, after)
    box.refuse(w.stream(end=False, trailing=b"\0"), TrailingData, after)
    box.refuse(w.stream(end=False, trailing=w.stream(end=False)), TrailingData, after)


def test_a_stream_without_end_is_truncated(box):
    w = _w(ROOT, mkfile(2, 1, b"a", 3), plain_extent(2, 0, b"abc"))
    at = Written(w.record_count, w.byte_count)
    err = box.refuse(w.stream(end=False), TruncatedStream, at)
    assert "no END record" in str(err)


# -- receiver limits, one test per cap -------------------------------------------------------------------

def _chain(depth: int) -> list:
    return [mkdir(2 + i, 1 + i, b"d") for i in range(depth)]


def test_depth_cap(box):
    depth = Limits().max_depth
    # a file at the deepest level allowed, after evicting its parents' fds from the sink's cache
    wide = [mkdir(depth + 1 + i, 1, b"w%d" % i) for i in range(80)]
    data, _ = tree_stream(*_chain(depth - 1), *wide, mkfile(depth + 81, depth, b"leaf", 2),
                          plain_extent(depth + 81, 0, b"ok"))
    box.accept(data)
    assert (box.dest / "/".join(["d"] * (depth - 1)) / "leaf").read_bytes() == b"ok"
    data, at = tree_stream(*_chain(depth + 1))
    box.dest.rename(box.root / "first")
    err = _refuse_in_fresh_box(box, data, LimitExceeded, at[-1])
    assert "--max-depth" in str(err)
    data, at = tree_stream(*_chain(5))
    _refuse_in_fresh_box(box, data, LimitExceeded, at[-1], limits=Limits(max_depth=4))


def _refuse_in_fresh_box(box: Box, data: bytes, cls, at, **kw):
    fresh = Box(box.root, box.root / "dest2", box.outside)
    return fresh.refuse(data, cls, at, **kw)


def test_file_count_cap_counts_every_name(box):
    limits = Limits(max_files=4)
    data, _ = tree_stream(mkfile(2, 1, b"a"), mkfile(3, 1, b"b"), Link(3, 1, b"c"))
    box.accept(data, limits=limits)
    data, at = tree_stream(mkfile(2, 1, b"a"), mkfile(3, 1, b"b"), Link(3, 1, b"c"), Link(3, 1, b"d"))
    err = _refuse_in_fresh_box(box, data, LimitExceeded, at[-1], limits=limits)
    assert "--max-files" in str(err)


def test_xattr_count_cap(box):
    cap = Limits().max_xattrs_per_file
    xattrs = [SetXattr(2, b"user.%d" % i, b"") for i in range(cap)]
    verify_bytes(tree_stream(mkfile(2, 1, b"f"), *xattrs)[0])
    data, at = tree_stream(mkfile(2, 1, b"f"), *xattrs, SetXattr(2, b"user.more", b""))
    box.refuse(data, LimitExceeded, at[-1])


def test_xattr_bytes_cap(box):
    cap = Limits().max_xattr_bytes_per_file
    big = [SetXattr(2, b"user.%02d" % i, bytes(MAX_XATTR_VALUE_LEN)) for i in range(cap // MAX_XATTR_VALUE_LEN)]
    verify_bytes(tree_stream(mkfile(2, 1, b"f"), *big[:-1])[0])
    data, at = tree_stream(mkfile(2, 1, b"f"), *big)
    box.refuse(data, LimitExceeded, at[-1])


def test_total_bytes_cap(box):
    limits = Limits(max_bytes=1000)
    data, _ = tree_stream(mkfile(2, 1, b"a", 600), mkfile(3, 1, b"b", 400))
    box.accept(data, limits=limits)
    data, at = tree_stream(mkfile(2, 1, b"a", 600), mkfile(3, 1, b"b", 400), mkfile(4, 1, b"c", 1))
    err = _refuse_in_fresh_box(box, data, LimitExceeded, at[-1], limits=limits)
    assert "--max-bytes" in str(err)


def test_default_limits_never_bother_a_normal_tree(box):
    """Boundaries a real tree may reach: all at once, in one stream, with the default limits."""
    long_name = b"n" * MAX_NAME_LEN
    records = [*_chain(64), mkfile(66, 65, long_name, 2 * MAX_EXTENT_LEN),
               plain_extent(66, 0, b"a" * MAX_EXTENT_LEN), plain_extent(66, MAX_EXTENT_LEN, b"b" * MAX_EXTENT_LEN),
               SetXattr(66, b"user.big", b"v" * 4000), symlink(67, 1, b"s", b"t" * MAX_TARGET_LEN),
               *[mkfile(68 + i, 1, b"f%04d" % i) for i in range(2000)]]
    data, _ = tree_stream(*records)
    box.accept(data)
    assert len(os.listdir(box.dest)) == 2002


def test_the_largest_depth_the_flag_allows_receives_and_cleans_up(box):
    limits = Limits(max_depth=800)
    wide = [mkdir(801 + i, 1, b"w%d" % i) for i in range(80)]
    data, _ = tree_stream(*_chain(799), *wide, mkfile(881, 800, b"leaf", 2), plain_extent(881, 0, b"ok"))
    box.accept(data, limits=limits)
    data, at = tree_stream(*_chain(700), plain_extent(2, 0, b"x"))  # fails deep: the cleanup is deep too
    _refuse_in_fresh_box(box, data, RecordOrderError, at[-1], limits=limits)


@pytest.mark.parametrize("flag,value,records", [
    ("--max-files", "3", [mkfile(2, 1, b"a"), mkfile(3, 1, b"b"), Link(3, 1, b"c")]),
    ("--max-depth", "2", _chain(3)),
    ("--max-bytes", "10", [mkfile(2, 1, b"a", 6), mkfile(3, 1, b"b", 6)]),
])
def test_cli_limit_flags(box, flag, value, records):
    from tests.conftest import run_rawsend
    data, at = tree_stream(*records)
    proc = run_rawsend("receive", "--no-sync", flag, value, str(box.dest), input=data)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "limit exceeded" in err and flag in err, err
    assert f"record {at[-1].index}, byte offset {at[-1].offset}" in err
    assert not box.dest.exists() and set(os.listdir(box.root)) == {"outside"}
    proc = run_rawsend("receive", "--no-sync", flag, str(int(value) * 2), str(box.dest), input=data)
    assert proc.returncode == 0, proc.stderr.decode()


def test_an_encrypted_stream_without_its_key_creates_nothing(box):
    from rawsend.errors import KeyMissing
    from tests.conftest import VECTORS
    vector = VECTORS / "encrypted" / "good_aes256gcm.rs"
    if not vector.exists():
        pytest.skip("no encrypted vector")
    err = box.refuse(vector.read_bytes(), KeyMissing, Written(0, 12), also_verify=False)
    assert err.exit_code == 4


@pytest.mark.parametrize("data,words", [
    (b"", "stream ends early"), (b"r", "stream ends early"), (b"junk" * 100, "not a rawsend stream"),
    (b"rawsend\n", "stream ends early"), (b"rawsend\n\0\0\0\0", "unsupported stream version"),
    (b"rawsend\n\x01\0\0\0", "no END record"),
], ids=["empty", "one byte", "junk", "magic only", "version 0", "preamble only"])
def test_cli_receive_of_garbage_fails_fast_and_clearly(box, data, words):
    from tests.conftest import run_rawsend
    proc = run_rawsend("receive", str(box.dest), input=data, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and words in err and "byte offset" in err and "Traceback" not in err, err
    assert set(os.listdir(box.root)) == {"outside"}


def _dead_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1  # no process can have it


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_something_planted_under_a_temporary_name_is_left_alone(box, planted):
    """Stale temporary directories are removed; anything else under that name is not touched."""
    stale = box.root / f".dest.rawsend-{_dead_pid()}-00000000"
    if planted == "symlink":
        stale.symlink_to(box.outside)
    else:
        stale.write_bytes(b"not ours")
    mode = stat.S_IMODE(os.stat(box.root).st_mode)
    before = listing(box.outside)
    data, _ = tree_stream(mkfile(2, 1, b"a"))
    receive_bytes(data, box.dest)
    assert listing(box.outside) == before
    assert stat.S_IMODE(os.stat(box.root).st_mode) == mode
    assert stale.is_symlink() if planted == "symlink" else stale.read_bytes() == b"not ours"


def test_a_stale_temporary_directory_is_removed_by_the_next_receive(box):
    stale = box.root / f".dest.rawsend-{_dead_pid()}-00000000"
    (stale / "deep" / "er").mkdir(parents=True)
    (stale / "deep" / "er" / "f").write_bytes(b"left by a killed receive")
    os.symlink(box.outside, stale / "deep" / "link")
    os.chmod(stale / "deep", 0o500)
    data, _ = tree_stream(mkfile(2, 1, b"a"))
    receive_bytes(data, box.dest)
    assert not stale.exists() and sorted(os.listdir(box.root)) == ["dest", "outside"]
    assert (box.outside / "victim").read_bytes() == b"victim\n"
