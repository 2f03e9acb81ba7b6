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
from pathlib import Path

import pytest

from rawsend.pipeline import send
from rawsend.sources.tree import DataChunk
from rawsend.store import receive_into_store
from rawsend.stream.records import Compression
from tests.conftest import run_rawsend
from tests.hostile import ROOT, listing, mkfile

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
