"""A store whose directory someone else can write: every entry that is not what rawsend made is
refused by name, nothing outside the store is touched, and nothing hangs or runs out of memory.

Every case runs the real CLI with a timeout (a hang fails the test) next to an "outside"
directory whose listing must not change.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import lz4.block
import pytest
import zstandard

from rawsend.codecs import lzo
from rawsend.codecs.crypto import Sealer
from rawsend.codecs.keys import new_key
from rawsend.errors import DecodeError
from rawsend.pipeline import send
from rawsend.sources.tree import DataChunk, EncodedChunk
from rawsend.store import payloads, receive_into_store
from rawsend.stream.records import MAX_EXTENT_LEN, MAX_PAYLOAD_LEN, Cipher, Compression, Extent, RecordType
from tests.conftest import run_rawsend
from tests.hostile import ROOT, HostileWriter, listing, mkfile, tree_stream, verify_bytes

TIMEOUT = 60  # seconds; a receive, ls, verify or send that blocks fails instead of hanging the suite


def rawsend(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return run_rawsend(*args, input=input, timeout=TIMEOUT)


def small_stream(seed: int) -> bytes:
    text = b"line %d of a small stream\n" % seed * 400
    out = bytearray()
    send([ROOT, mkfile(2, 1, b"f.txt", len(text)), DataChunk(2, 0, text)], out.extend,
         compression=Compression.ZSTD, threads=1, stream_id=bytes([seed]) * 16)
    return bytes(out)


def sid(seed: int) -> str:
    return (bytes([seed]) * 16).hex()


def _reaped_pid() -> int:
    """The pid of a process that has exited (and, for the few seconds a test runs, not been reused)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def box(tmp_path: Path):
    """A store holding stream 1, and an outside directory with a victim file in it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"victim\n")
    store = tmp_path / "store"
    receive_into_store(io.BytesIO(small_stream(1)), store)
    return store, outside


def refused(proc: subprocess.CompletedProcess, *words: str, code: int = 1) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "internal error" not in err, err
    for w in words:
        assert w in err, err
    return err


# -- the layout's own names ------------------------------------------------------------------

def test_tmp_symlinked_elsewhere_is_refused_and_nothing_there_is_deleted_or_written(box):
    store, outside = box
    (outside / f"{_reaped_pid()}-0123456789abcdef.rs").write_bytes(b"looks like a dead receive's temp")
    before = listing(outside)
    os.rename(store / "tmp", store / "tmp.moved")
    (store / "tmp").symlink_to(outside)
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    refused(proc, "store is damaged: the store's tmp/ is a symbolic link, not what rawsend makes there",
            f"path '{store / 'tmp'}'", "move the entry out of the store")
    assert listing(outside) == before
    assert sorted(os.listdir(store / "index")) == [f"{sid(1)}.json"]
    for command in ("ls", "verify"):  # readers refuse it too: the store is not as rawsend made it
        refused(rawsend(command, str(store)), "the store's tmp/ is a symbolic link")


def test_streams_symlinked_elsewhere_is_refused_and_an_orphan_there_is_kept(box):
    store, outside = box
    (outside / f"{sid(7)}.rs").write_bytes(b"an orphan-looking stream file that is not the store's")
    for name in os.listdir(store / "streams"):
        os.rename(store / "streams" / name, outside / name)
    before = listing(outside)
    os.rmdir(store / "streams")
    (store / "streams").symlink_to(outside)
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    refused(proc, "the store's streams/ is a symbolic link", f"path '{store / 'streams'}'")
    assert listing(outside) == before
    assert os.listdir(store / "tmp") == []
    refused(rawsend("send", str(store)), "the store's streams/ is a symbolic link")


def test_index_symlinked_elsewhere_is_refused_and_no_entry_is_written_there(box):
    store, outside = box
    before = listing(outside)
    os.rename(store / "index", store / "index.moved")
    (store / "index").symlink_to(outside)
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    refused(proc, "the store's index/ is a symbolic link")
    assert listing(outside) == before
    assert os.listdir(store / "tmp") == []


def test_a_dangling_lock_symlink_is_refused_and_its_target_not_created(box, tmp_path):
    store, outside = box
    target = outside / "created-through-the-lock"
    os.unlink(store / "lock")
    (store / "lock").symlink_to(target)
    before = listing(outside)
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    refused(proc, "the lock file is a symbolic link", f"path '{store / 'lock'}'")
    assert not target.exists() and listing(outside) == before
    assert sorted(os.listdir(store / "index")) == [f"{sid(1)}.json"]
    assert os.listdir(store / "tmp") == []


def test_a_new_store_with_a_dangling_lock_symlink_is_refused(tmp_path):
    store, target = tmp_path / "store", tmp_path / "made-by-the-lock"
    store.mkdir()
    (store / "lock").symlink_to(target)
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    refused(proc, "the lock file is a symbolic link")
    assert not target.exists()
    assert not (store / "rawsend-store").exists()


def test_a_marker_that_is_a_symlink_or_a_fifo_is_refused(box, tmp_path):
    store, outside = box
    (outside / "marker").write_bytes((store / "rawsend-store").read_bytes())
    os.unlink(store / "rawsend-store")
    (store / "rawsend-store").symlink_to(outside / "marker")
    for command in ("ls", "verify", "send"):
        refused(rawsend(command, str(store)), "the marker file is a symbolic link")
    os.unlink(store / "rawsend-store")
    os.mkfifo(store / "rawsend-store")
    refused(rawsend("ls", str(store)), "the marker file is a FIFO")
    refused(rawsend("receive", "--store", str(store), input=small_stream(2)), "the marker file is a FIFO")


# -- index entries ----------------------------------------------------------------------------

def test_an_index_entry_that_is_a_fifo_blocks_nothing(box):
    store, _ = box
    receive_into_store(io.BytesIO(small_stream(3)), store)
    fifo = store / "index" / f"{sid(2)}.json"
    os.mkfifo(fifo)
    # the receive of that very stream reads its entry under the lock: it must not block there
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    refused(proc, "store is damaged: the index entry is a FIFO, not what rawsend makes there", f"path '{fifo}'")
    assert os.listdir(store / "tmp") == []
    # readers report it and go on with the other streams
    proc = rawsend("ls", str(store))
    refused(proc, "the index entry is a FIFO")
    assert sid(1) in proc.stdout.decode() and sid(3) in proc.stdout.decode()
    proc = rawsend("verify", str(store))
    refused(proc, "the index entry is a FIFO", "1 of 3 stored streams failed verification")
    assert f"{sid(1)}: OK" in proc.stdout.decode()
    refused(rawsend("send", str(store)), "the index entry is a FIFO")
    # and a receive of another stream is not disturbed by it
    assert rawsend("receive", "--store", str(store), input=small_stream(4)).returncode == 0


def test_an_index_entry_linked_to_dev_zero_is_refused_without_reading_it(box):
    store, _ = box
    entry = store / "index" / f"{sid(2)}.json"
    entry.symlink_to("/dev/zero")
    for command in ("ls", "verify", "send"):
        refused(rawsend(command, str(store)), "the index entry is a symbolic link", f"path '{entry}'")
    refused(rawsend("receive", "--store", str(store), input=small_stream(2)), "the index entry is a symbolic link")


def test_a_huge_index_entry_is_refused_before_it_is_read(box):
    store, _ = box
    entry = store / "index" / f"{sid(2)}.json"
    with open(entry, "wb") as f:
        f.truncate(4 << 30)  # sparse: 4 GiB that would all be read into memory
    proc = rawsend("ls", str(store))
    refused(proc, f"the index entry is {4 << 30} bytes, more than the 65536 rawsend writes")
    assert sid(1) in proc.stdout.decode()


def _edit_entry(store: Path, stream_id: str, **fields) -> Path:
    path = store / "index" / f"{stream_id}.json"
    obj = json.loads(path.read_bytes())
    obj.update(fields)
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("fields,words", [
    ({"logical_bytes": 10**400}, "logical_bytes is not an integer in 0..9223372036854775807"),
    ({"received_ns": 10**30}, "received_ns is not an integer in 0..9223372036854775807"),
    ({"created_ns": -(2**63) - 1}, "created_ns is not an integer in -9223372036854775808..9223372036854775807"),
    ({"stored_bytes": 2**63}, "stored_bytes is not an integer in 0..9223372036854775807"),
    ({"records": 1.5}, "records is not an integer"),
    ({"files": 10**20}, "files is neither a count"),
    ({"compression": {"zstd": 10**19}}, "compression is not a map of compression names"),
    ({"compression": {"\x1b[2J": 1}}, "compression is not a map of compression names"),
    ({"cipher": ["none"]}, "cipher is not one of"),
    ({"cipher": "rot13"}, "cipher is not one of"),
    ({"encrypted": 1}, "encrypted does not agree with cipher"),
    ({"encrypted": True, "cipher": "aes-256-gcm", "files": "unknown"}, "key_id of an encrypted stream"),
    ({"files": "unknown"}, "files of a stream that is not encrypted is not a count"),
    ({"key_id": "0" * 32}, "key_id of a stream that is not encrypted is not null"),
], ids=["logical-10^400", "received-10^30", "created-below-i64", "stored-2^63", "records-float",
        "files-10^20", "compression-count", "compression-escape", "cipher-list", "cipher-unknown",
        "encrypted-int", "encrypted-no-key-id", "files-unknown-plain", "key-id-plain"])
def test_an_index_entry_out_of_range_is_damaged_and_the_others_are_listed(box, fields, words):
    store, _ = box
    receive_into_store(io.BytesIO(small_stream(2)), store)
    path = _edit_entry(store, sid(2), **fields)
    proc = rawsend("ls", str(store))
    refused(proc, f"store is damaged: index entry is damaged: {words}", f"path '{path}'")
    assert sid(1) in proc.stdout.decode() and sid(2) not in proc.stdout.decode()
    refused(rawsend("verify", str(store)), words)


# -- stream files and temporaries ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_stream_file_that_is_not_a_regular_file_is_refused(box, tmp_path, kind):
    store, outside = box
    path = store / "streams" / f"{sid(1)}.rs"
    os.rename(path, outside / "stream.rs")
    if kind == "symlink":
        path.symlink_to(outside / "stream.rs")  # the very bytes indexed, but not inside the store
        words = "the stored stream file is a symbolic link"
    else:
        os.mkfifo(path)
        words = "the stored stream file is a FIFO"
    proc = rawsend("verify", str(store))
    refused(proc, words, f"path '{path}'")
    proc = rawsend("send", str(store))
    refused(proc, words)
    assert proc.stdout == b""


def test_a_directory_in_tmp_named_like_a_dead_receive_is_refused_and_kept(box):
    store, _ = box
    planted = store / "tmp" / f"{_reaped_pid()}-0123456789abcdef.rs"
    (planted / "inside").mkdir(parents=True)
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    refused(proc, "a temporary entry is a directory, not what rawsend makes there", f"path '{planted}'")
    assert (planted / "inside").is_dir()


def test_a_symlink_in_tmp_named_like_a_dead_receive_is_removed_not_followed(box):
    store, outside = box
    before = listing(outside)
    planted = store / "tmp" / f"{_reaped_pid()}-0123456789abcdef.rs"
    planted.symlink_to(outside / "victim")
    assert rawsend("receive", "--store", str(store), input=small_stream(2)).returncode == 0
    assert not planted.is_symlink() and listing(outside) == before


def test_a_temp_name_with_an_impossible_pid_is_left_alone(box):
    store, _ = box
    planted = store / "tmp" / f"{'9' * 30}-0123456789abcdef.rs"
    planted.write_bytes(b"not a pid any process has")
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    assert proc.returncode == 0, proc.stderr
    assert planted.exists()


def test_a_directory_in_streams_named_like_an_orphan_is_refused_and_kept(box):
    store, _ = box
    planted = store / "streams" / f"{sid(9)}.rs"
    (planted / "inside").mkdir(parents=True)
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    refused(proc, "a stream file is a directory, not what rawsend makes there", f"path '{planted}'")
    assert (planted / "inside").is_dir()
    assert os.listdir(store / "tmp") == []


def test_a_layout_directory_moved_aside_is_made_again_by_the_next_receive(box):
    store, _ = box
    os.rename(store / "tmp", store / "tmp.moved")
    os.unlink(store / "lock")
    proc = rawsend("receive", "--store", str(store), input=small_stream(2))
    assert proc.returncode == 0, proc.stderr
    assert (store / "tmp").is_dir() and (store / "lock").is_file()
    assert rawsend("verify", str(store)).returncode == 0


# -- payloads are decode-checked on the way in ----------------------------------------------------

BOMB = 64 << 20  # what a bomb inflates to


def _zstd(raw: bytes) -> bytes:
    """A frame as btrfs decodes them (128 KiB window), without its content size: only decoding finds it."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=17, write_content_size=False)
    return zstandard.ZstdCompressor(compression_params=params).compress(raw)


def _zstd_bomb() -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=17, write_content_size=False)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return b"".join(cobj.compress(bytes(1 << 20)) for _ in range(BOMB >> 20)) + cobj.flush()


def _zlib_bomb() -> bytes:
    cobj = zlib.compressobj(9)
    return b"".join(cobj.compress(bytes(1 << 20)) for _ in range(BOMB >> 20)) + cobj.flush()


def _zstd_frame(window_log: int | None = None, content_size: int | None = None, body: bytes = b"x" * 100) -> bytes:
    """A hand-made zstd frame holding one raw block; its header may claim anything."""
    if content_size is not None:  # single segment: the window is the content size
        header = bytes([0xE0]) + content_size.to_bytes(8, "little")
    else:
        header = bytes([0x00, (window_log - 10) << 3])
    return b"\x28\xb5\x2f\xfd" + header + ((len(body) << 3) | 1).to_bytes(3, "little") + body


def _reserved_zstd_block(frame: bytes) -> bytes:
    """The first block's type set to 3, which RFC 8878 reserves: a frame no decoder can take."""
    out = bytearray(frame)
    out[zstandard.frame_header_size(frame)] |= 0b110
    return bytes(out)


def _reserved_deflate_block(stream: bytes) -> bytes:
    """The first deflate block's BTYPE set to 3, which RFC 1951 reserves."""
    out = bytearray(stream)
    out[2] |= 0b110
    return bytes(out)


def _raw_deflate(raw: bytes) -> bytes:
    cobj = zlib.compressobj(6, zlib.DEFLATED, -15)  # deflate without the zlib header and checksum
    return cobj.compress(raw) + cobj.flush()


TEXT = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(4000))

# (codec, payload for an extent of n bytes, words of the DecodeError)
BAD_PAYLOADS = {
    "zstd-bomb": (Compression.ZSTD, lambda n: _zstd_bomb(), "payload decodes to more than unencoded_len"),
    "zlib-bomb": (Compression.ZLIB, lambda n: _zlib_bomb(), "payload decodes to more than unencoded_len"),
    "lz4-bomb": (Compression.LZ4, lambda n: lz4.block.compress(bytes(16 << 20), store_size=False), "lz4"),
    "zstd-declares-2^62": (Compression.ZSTD, lambda n: _zstd_frame(content_size=1 << 62), "zstd frame declares"),
    "zstd-declares-n+1": (Compression.ZSTD, lambda n: _zstd_frame(content_size=n + 1), "zstd frame declares"),
    "zstd-window-2^27": (Compression.ZSTD, lambda n: _zstd_frame(window_log=27), "zstd"),
    "zstd-window-2^31": (Compression.ZSTD, lambda n: _zstd_frame(window_log=31), "zstd"),
    "zstd-long-by-one": (Compression.ZSTD, lambda n: _zstd(TEXT[:n + 1]), "payload decodes to more than"),
    "zlib-long-by-one": (Compression.ZLIB, lambda n: zlib.compress(TEXT[:n + 1]), "payload decodes to more than"),
    "lz4-long-by-one": (Compression.LZ4, lambda n: lz4.block.compress(TEXT[:n + 1], store_size=False), "lz4"),
    "zstd-corrupt": (Compression.ZSTD, lambda n: _reserved_zstd_block(_zstd(TEXT[:n])), "zstd"),
    "zstd-cut-short": (Compression.ZSTD, lambda n: _zstd(TEXT[:n])[:-9], "zstd frame is cut short"),
    "zstd-data-after": (Compression.ZSTD, lambda n: _zstd(TEXT[:n // 2]) + b"\x01", "data after the end of the zstd"),
    "zlib-corrupt": (Compression.ZLIB, lambda n: _reserved_deflate_block(zlib.compress(TEXT[:n])),
                     "zlib: Error -3 while decompressing data: invalid block type"),
    "zlib-bad-header": (Compression.ZLIB, lambda n: b"\x78\x00" + zlib.compress(TEXT[:n])[2:],
                        "incorrect header check"),
    "zlib-bad-checksum": (Compression.ZLIB, lambda n: zlib.compress(TEXT[:n])[:-4] + b"\xde\xad\xbe\xef",
                          "incorrect data check"),
    "zlib-cut-short": (Compression.ZLIB, lambda n: zlib.compress(TEXT[:n])[:-9], "zlib stream is incomplete"),
    "raw-deflate": (Compression.ZLIB, lambda n: _raw_deflate(TEXT[:n]), "zlib"),
    "lz4-corrupt": (Compression.LZ4, lambda n: b"\xf0" + lz4.block.compress(TEXT[:n], store_size=False)[1:], "lz4"),
}


def payload_stream(codec: int, payload: bytes, n: int):
    """ROOT, a file of n bytes and one extent with ``payload``; the Written of that extent."""
    return tree_stream(mkfile(2, 1, b"f", n), (Extent(2, 0, n, n, 0, len(payload), codec), payload))


def store_state(store: Path) -> dict:
    """Every name in the store with the bytes of every file (directories' times left out)."""
    out = {}
    for p in sorted(store.rglob("*")):
        out[str(p.relative_to(store))] = p.read_bytes() if p.is_file() else None
    return out


@pytest.mark.parametrize("n", [4096, MAX_EXTENT_LEN], ids=["4KiB", "128KiB"])
@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_a_payload_that_does_not_decode_is_not_stored(box, case, n):
    store, _ = box
    codec, make, words = BAD_PAYLOADS[case]
    payload = make(n)
    assert 0 < len(payload) <= MAX_PAYLOAD_LEN
    data, at = payload_stream(codec, payload, n)
    with pytest.raises(DecodeError) as expected:  # what verify says of this stream
        verify_bytes(data)
    assert words in str(expected.value) and (expected.value.record, expected.value.offset) == (at[-1].index, at[-1].offset)
    before = store_state(store)
    proc = rawsend("receive", "--store", str(store), input=data)
    refused(proc, str(expected.value))  # the same error, naming the same record and byte offset
    assert store_state(store) == before  # no entry, no stream file, no temporary left


@pytest.mark.parametrize("codec", [Compression.ZSTD, Compression.ZLIB, Compression.LZ4])
def test_a_payload_short_by_one_is_stored_as_verify_accepts_it(box, codec):
    store, _ = box
    n = MAX_EXTENT_LEN
    raw = TEXT[:n - 1]
    payload = {Compression.ZSTD: _zstd(raw), Compression.ZLIB: zlib.compress(raw),
               Compression.LZ4: lz4.block.compress(raw, store_size=False)}[codec]
    data, _ = payload_stream(codec, payload, n)
    verify_bytes(data)  # btrfs zero-fills a short extent: every receiver accepts it
    proc = rawsend("receive", "--store", str(store), input=data)
    assert proc.returncode == 0, proc.stderr
    assert rawsend("verify", str(store)).returncode == 0


def test_the_first_bad_payload_is_reported_even_when_a_later_record_fails_first(box):
    store, _ = box
    w = HostileWriter()
    w.record(ROOT)
    w.record(mkfile(2, 1, b"f", 2 * MAX_EXTENT_LEN))
    good = _zstd(TEXT[:MAX_EXTENT_LEN])
    w.extent(Extent(2, 0, MAX_EXTENT_LEN, MAX_EXTENT_LEN, 0, len(good), Compression.ZSTD), good)
    bad = _reserved_zstd_block(good)
    at = w.extent(Extent(2, MAX_EXTENT_LEN, MAX_EXTENT_LEN, MAX_EXTENT_LEN, 0, len(bad), Compression.ZSTD), bad)
    w.raw(RecordType.MKFILE, mkfile(3, 1, b"g").pack(), crc=0)  # the next record's CRC is wrong
    data = w.stream()
    with pytest.raises(DecodeError) as expected:
        verify_bytes(data)
    assert (expected.value.record, expected.value.offset) == (at.index, at.offset)
    proc = rawsend("receive", "--store", str(store), input=data)
    refused(proc, str(expected.value))


def test_a_bomb_is_refused_with_bounded_memory(tmp_path):
    payload = _zstd_bomb()
    data, at = payload_stream(Compression.ZSTD, payload, MAX_EXTENT_LEN)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError) as info:
            receive_into_store(io.BytesIO(data), tmp_path / "store")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (info.value.record, info.value.offset) == (at[-1].index, at[-1].offset)
    assert peak < 4 << 20, f"peak {peak} bytes while refusing a {BOMB}-byte bomb"
    assert not (tmp_path / "store").exists()  # a new store that got nothing is taken away again


def test_encrypted_payloads_are_stored_without_a_decode_check(tmp_path):
    # the sealed bytes of a corrupt zstd frame: only the key holder can find the fault
    bad = _reserved_zstd_block(_zstd(TEXT[:MAX_EXTENT_LEN]))
    extent = Extent(2, 0, MAX_EXTENT_LEN, MAX_EXTENT_LEN, 0, len(bad), Compression.ZSTD)
    out = bytearray()
    send([ROOT, mkfile(2, 1, b"f", MAX_EXTENT_LEN), EncodedChunk(extent, bad)], out.extend,
         threads=1, sealer=Sealer(new_key(), Cipher.AES_256_GCM))
    data = bytes(out)
    store = tmp_path / "store"
    proc = rawsend("receive", "--store", str(store), input=data)
    assert proc.returncode == 0, proc.stderr
    assert rawsend("verify", str(store)).returncode == 0  # intact: nothing more is known without the key


def _lzo_stream(payload: bytes):
    return tree_stream(mkfile(2, 1, b"f", 4096), (Extent(2, 0, 4096, 4096, 0, len(payload), Compression.LZO_4K),
                                                  payload))


@pytest.mark.skipif(not lzo.AVAILABLE, reason="needs the optional python-lzo (rawsend[lzo])")
def test_a_btrfs_lzo_payload_that_does_not_decode_is_not_stored(box):
    store, _ = box
    data, at = _lzo_stream(b"\xff" * 64)
    with pytest.raises(DecodeError) as expected:
        verify_bytes(data)
    assert (expected.value.record, expected.value.offset) == (at[-1].index, at[-1].offset)
    before = store_state(store)
    refused(rawsend("receive", "--store", str(store), input=data), str(expected.value))
    assert store_state(store) == before


def test_without_an_lzo_decoder_lzo_payloads_are_stored_and_counted_unchecked(tmp_path, monkeypatch):
    monkeypatch.setattr(lzo, "AVAILABLE", False)
    data, _ = _lzo_stream(b"\xff" * 64)  # a store on a host without python-lzo cannot tell
    receipt = receive_into_store(io.BytesIO(data), tmp_path / "store")
    assert receipt.stored and receipt.unchecked_extents == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_each_bad_payload_among_good_ones_is_found_with_or_without_threads(tmp_path, monkeypatch, threads):
    monkeypatch.setattr(payloads, "THREADS", threads)
    good = _zstd(TEXT[:MAX_EXTENT_LEN])
    bad = _reserved_zstd_block(good)
    count = 40  # more than a batch: some are decoded on threads while the rest is read
    for bad_at in (0, count // 2, count - 1):
        w = HostileWriter()
        w.record(ROOT)
        w.record(mkfile(2, 1, b"f", count * MAX_EXTENT_LEN))
        at = []
        for i in range(count):
            payload = bad if i == bad_at else good
            extent = Extent(2, i * MAX_EXTENT_LEN, MAX_EXTENT_LEN, MAX_EXTENT_LEN, 0, len(payload), Compression.ZSTD)
            at.append(w.extent(extent, payload))
        store = tmp_path / f"store-{bad_at}"
        with pytest.raises(DecodeError) as info:
            receive_into_store(io.BytesIO(w.stream()), store)
        assert (info.value.record, info.value.offset) == (at[bad_at].index, at[bad_at].offset)
        assert not store.exists()  # a new store that got nothing is taken away again
