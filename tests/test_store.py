"""The store: receive --store, ls, verify STORE, send STORE; atomicity under kills, full disks, concurrency."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import random
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from rawsend.pipeline import send as send_items
from rawsend.sources.tree import TreeSource
from rawsend.store import Store, receive_into_store
from rawsend.store.layout import MARKER_NAME
from rawsend.stream.reader import StreamReader
from rawsend.stream.records import Compression
from tests.conftest import pipeline, rawsend_argv, run_rawsend
from tests.treeutil import diff, snapshot

from rawsend.codecs.crypto import Sealer
from rawsend.codecs.keys import load_key


# -- helpers ----------------------------------------------------------------------------------

def make_tree(root: Path, seed: int, random_bytes: int = 200_000) -> Path:
    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True)
    (root / "random.bin").write_bytes(rng.randbytes(random_bytes))
    (root / "sub" / "text.txt").write_bytes(b"".join(b"line %d of tree %d\n" % (i, seed) for i in range(20_000)))
    (root / "sub" / "empty").write_bytes(b"")
    (root / "link").symlink_to("random.bin")
    return root


def make_stream(src: Path, *, sealer=None, stream_id: bytes | None = None) -> bytes:
    out = bytearray()
    send_items(TreeSource(src), out.extend, compression=Compression.ZSTD, threads=1, sealer=sealer,
               stream_id=stream_id)
    return bytes(out)


def records_of(data: bytes) -> list[tuple[int, int, int]]:
    """(index, offset, size) of every record of a good stream."""
    return [(r.index, r.offset, r.size) for r in StreamReader(io.BytesIO(data))]


def stream_id_of(data: bytes) -> str:
    reader = StreamReader(io.BytesIO(data))
    next(iter(reader))
    return reader.header.stream_id.hex()


def ls_json(store: Path) -> list[dict]:
    proc = run_rawsend("ls", "--json", str(store), check=True)
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def listed_ids(store: Path) -> list[str]:
    return sorted(e.stream_id for e in Store.open(store).entries())


def receive_store(store: Path, data: bytes, *extra: str) -> subprocess.CompletedProcess:
    return run_rawsend("receive", "--store", *extra, str(store), input=data)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def pipe_pending(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def wait_for(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def src_a(tmp_path) -> Path:
    return make_tree(tmp_path / "a", seed=1)


@pytest.fixture
def stream_a(src_a) -> bytes:
    return make_stream(src_a)


# -- receive, ls, verify, send ----------------------------------------------------------------

def test_receive_store_then_ls_verify_send(tmp_path, src_a, stream_a):
    store = tmp_path / "store"
    sid = stream_id_of(stream_a)
    proc = receive_store(store, stream_a)
    assert proc.returncode == 0, proc.stderr
    assert f"stored stream {sid}" in proc.stderr.decode()
    assert (store / MARKER_NAME).is_file()
    assert (store / "streams" / f"{sid}.rs").read_bytes() == stream_a  # verbatim
    assert os.listdir(store / "tmp") == []

    (entry,) = ls_json(store)
    assert entry["stream_id"] == sid
    assert entry["stored_bytes"] == len(stream_a)
    assert entry["sha256"] == hashlib.sha256(stream_a).hexdigest()
    assert entry["records"] == len(records_of(stream_a))
    assert entry["logical_bytes"] == sum(p.stat().st_size for p in src_a.rglob("*") if p.is_file() and not p.is_symlink())
    assert entry["files"] == 3
    assert entry["encrypted"] is False and entry["key_id"] is None and entry["cipher"] == "none"
    assert set(entry["compression"]) <= {"zstd", "none"} and sum(entry["compression"].values()) >= 3

    line = run_rawsend("ls", str(store), check=True).stdout.decode().strip()
    assert line.startswith(sid) and "3 files" in line and "not-encrypted" in line

    proc = run_rawsend("verify", str(store))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith(f"{sid}: OK")

    proc = run_rawsend("send", str(store))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == stream_a


def test_send_store_into_receive_restores_the_tree(tmp_path, src_a, stream_a):
    store = tmp_path / "store"
    receive_into_store(io.BytesIO(stream_a), store)
    sender, receiver = pipeline([str(store)], [str(tmp_path / "restored")])
    assert sender.returncode == 0, sender.stderr
    assert receiver.returncode == 0, receiver.stderr
    assert diff(snapshot(src_a, blocks=False), snapshot(tmp_path / "restored", blocks=False)) == []


def test_send_picks_newest_or_a_unique_prefix(tmp_path, stream_a):
    stream_b = make_stream(make_tree(tmp_path / "b", seed=2))
    store = tmp_path / "store"
    receive_into_store(io.BytesIO(stream_a), store)
    receive_into_store(io.BytesIO(stream_b), store)
    assert run_rawsend("send", str(store), check=True).stdout == stream_b
    sid_a = stream_id_of(stream_a)
    prefix = next(sid_a[:n] for n in range(1, 33) if not stream_id_of(stream_b).startswith(sid_a[:n]))
    assert run_rawsend("send", str(store), "--stream", prefix.upper(), check=True).stdout == stream_a
    proc = run_rawsend("send", str(store), "--stream", "zz")
    assert proc.returncode == 3 and "no stream id starts with 'zz'" in proc.stderr.decode()
    proc = run_rawsend("send", str(store), "--encrypt", str(store / MARKER_NAME))
    assert proc.returncode == 2 and "relayed as stored" in proc.stderr.decode()


def test_same_stream_twice_is_stored_once_and_a_different_one_with_its_id_is_refused(tmp_path, src_a, stream_a):
    store = tmp_path / "store"
    sid = stream_id_of(stream_a)
    assert receive_store(store, stream_a).returncode == 0
    proc = receive_store(store, stream_a)
    assert proc.returncode == 0, proc.stderr
    assert "already in store" in proc.stderr.decode() and "identical bytes" in proc.stderr.decode()
    assert os.listdir(store / "streams") == [f"{sid}.rs"]

    (src_a / "random.bin").write_bytes(b"changed")
    impostor = make_stream(src_a, stream_id=bytes.fromhex(sid))
    before = (store / "index" / f"{sid}.json").read_bytes()
    proc = receive_store(store, impostor)
    assert proc.returncode == 3
    assert f"stream {sid} is already in the store with different bytes" in proc.stderr.decode()
    assert (store / "streams" / f"{sid}.rs").read_bytes() == stream_a
    assert (store / "index" / f"{sid}.json").read_bytes() == before
    assert os.listdir(store / "tmp") == []


# -- damage -------------------------------------------------------------------------------------

def test_bit_flip_in_store_fails_verify_and_send_naming_stream_and_record(tmp_path, stream_a):
    stream_b = make_stream(make_tree(tmp_path / "b", seed=2))
    store = tmp_path / "store"
    receive_into_store(io.BytesIO(stream_a), store)
    receive_into_store(io.BytesIO(stream_b), store)
    sid = stream_id_of(stream_a)
    index, offset, size = records_of(stream_a)[4]  # a record well inside the stream
    flip(store / "streams" / f"{sid}.rs", offset + size - 1)

    proc = run_rawsend("verify", str(store))
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert f"checksum mismatch: stored stream {sid}" in err
    assert f"record {index}, byte offset {offset}" in err
    assert "1 of 2 stored streams failed verification" in err
    assert f"{stream_id_of(stream_b)}: OK" in proc.stdout.decode()

    # the relay stops before END: what went out is a strict prefix, which a receiver refuses
    proc = run_rawsend("send", str(store), "--stream", sid)
    assert proc.returncode == 1 and f"stored stream {sid}" in proc.stderr.decode()
    assert len(proc.stdout) < len(stream_a) and stream_a.startswith(proc.stdout)
    got = run_rawsend("receive", str(tmp_path / "out"), input=proc.stdout)
    assert got.returncode == 1 and not (tmp_path / "out").exists()


def test_swapped_stream_file_fails_verify(tmp_path, stream_a):
    stream_b = make_stream(make_tree(tmp_path / "b", seed=2))
    store = tmp_path / "store"
    receive_into_store(io.BytesIO(stream_a), store)
    receive_into_store(io.BytesIO(stream_b), store)
    sid_a, sid_b = stream_id_of(stream_a), stream_id_of(stream_b)
    (store / "streams" / f"{sid_a}.rs").write_bytes(stream_b)  # intact, but not the indexed stream
    proc = run_rawsend("verify", str(store), "--stream", sid_a)
    assert proc.returncode == 1
    assert f"stored stream {sid_a}: the file holds stream {sid_b}" in proc.stderr.decode()
    assert "record 0" in proc.stderr.decode()


def test_damaged_index_entry_is_reported_and_the_others_still_listed(tmp_path, stream_a):
    stream_b = make_stream(make_tree(tmp_path / "b", seed=2))
    store = tmp_path / "store"
    receive_into_store(io.BytesIO(stream_a), store)
    receive_into_store(io.BytesIO(stream_b), store)
    sid_a, sid_b = stream_id_of(stream_a), stream_id_of(stream_b)
    entry = store / "index" / f"{sid_a}.json"
    entry.write_bytes(entry.read_bytes().replace(b'"records"', b'"recorda"'))
    for command in ("ls", "verify"):
        proc = run_rawsend(command, str(store))
        assert proc.returncode == 1  # damaged, like a damaged stream
        assert f"index entry is damaged: missing fields records (at path '{entry}')" in proc.stderr.decode()
        assert sid_b in proc.stdout.decode() and sid_a not in proc.stdout.decode()


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_damaged_stream_is_rejected_and_not_listed(tmp_path, stream_a, damage):
    stream_b = make_stream(make_tree(tmp_path / "b", seed=2))
    store = tmp_path / "store"
    receive_into_store(io.BytesIO(stream_a), store)
    if damage == "bitflip":
        bad = bytearray(stream_b)
        bad[len(bad) // 2] ^= 1
        bad = bytes(bad)
    else:
        bad = stream_b[:len(stream_b) - 7]
    proc = receive_store(store, bad)
    assert proc.returncode == 1
    assert ("checksum mismatch" if damage == "bitflip" else "stream ends early") in proc.stderr.decode()
    assert listed_ids(store) == [stream_id_of(stream_a)]
    assert os.listdir(store / "streams") == [f"{stream_id_of(stream_a)}.rs"]
    assert os.listdir(store / "tmp") == []


def test_not_a_store(tmp_path, stream_a):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    proc = receive_store(other, stream_a)
    assert proc.returncode == 3 and "is not a rawsend store and is not empty" in proc.stderr.decode()
    assert os.listdir(other) == ["keep.txt"]
    proc = run_rawsend("ls", str(other))
    assert proc.returncode == 3 and "not a rawsend store" in proc.stderr.decode()


# -- atomicity ----------------------------------------------------------------------------------

def test_receive_killed_at_any_point_leaves_the_store_as_it_was(tmp_path, stream_a):
    store = tmp_path / "store"
    receive_into_store(io.BytesIO(stream_a), store)
    stream_b = make_stream(make_tree(tmp_path / "b", seed=2, random_bytes=1_500_000))
    stream_c = make_stream(make_tree(tmp_path / "c", seed=3))
    before = listed_ids(store)
    # 0: nothing sent (the receiver waits for the first bytes, which say stream or chain, before it
    # makes anything); 30: inside the header; then inside a payload, before END, and everything
    # sent but the pipe still open (the receiver has checked END and waits for EOF)
    points = [0, 30, len(stream_b) // 2, len(stream_b) - 10, len(stream_b)]
    for n in points:
        proc = subprocess.Popen(rawsend_argv("receive", "--store", str(store)), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid, pipe_fd = proc.pid, proc.stdin.fileno()
        mine = lambda pid=pid: [name for name in os.listdir(store / "tmp") if name.startswith(f"{pid}-")]
        proc.stdin.write(stream_b[:n])
        proc.stdin.flush()
        if n:
            wait_for(mine, "the receiver's temp")
        wait_for(lambda fd=pipe_fd: pipe_pending(fd) == 0, "the receiver to read what was sent")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        assert proc.returncode == -signal.SIGKILL
        assert listed_ids(store) == before, f"killed after {n} bytes"
        assert sorted(os.listdir(store / "streams")) == [f"{sid}.rs" for sid in before]
        # only this receive's temp is left (the one before it was removed when this one started)
        assert os.listdir(store / "tmp") == mine()

    # a receive that died between its two renames leaves an unlisted stream file
    orphan = store / "streams" / f"{stream_id_of(stream_c)}.rs"
    orphan.write_bytes(stream_c)
    assert listed_ids(store) == before

    proc = receive_store(store, stream_b)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(store / "tmp") == []
    assert not orphan.exists()
    assert listed_ids(store) == sorted(before + [stream_id_of(stream_b)])
    assert run_rawsend("send", str(store), check=True).stdout == stream_b


def test_full_disk_gives_a_clear_error_and_an_unchanged_store(tmp_path, stream_a):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        store = mnt / "store"
        receive_into_store(io.BytesIO(stream_a), store)
        big = make_stream(make_tree(tmp_path / "big", seed=4, random_bytes=3 << 20))
        before = listed_ids(store)
        proc = receive_store(store, big)
        assert proc.returncode == 3
        assert "no space left on the store's filesystem" in proc.stderr.decode()
        assert "the store is unchanged" in proc.stderr.decode()
        assert listed_ids(store) == before
        assert os.listdir(store / "tmp") == []
        assert sorted(os.listdir(store / "streams")) == [f"{sid}.rs" for sid in before]
        assert run_rawsend("verify", str(store)).returncode == 0
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_concurrent_receives_into_a_new_store_both_land(tmp_path, stream_a):
    stream_b = make_stream(make_tree(tmp_path / "b", seed=2))
    store = tmp_path / "store"
    procs = [subprocess.Popen(rawsend_argv("receive", "--store", str(store)), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(3)]
    outs = [p.communicate(data, timeout=120) for p, data in zip(procs, [stream_a, stream_b, stream_a])]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert listed_ids(store) == sorted([stream_id_of(stream_a), stream_id_of(stream_b)])
    assert sum(b"identical bytes" in err for _, err in outs) == 1  # the second copy of stream a
    assert os.listdir(store / "tmp") == []
    for data in (stream_a, stream_b):
        sent = run_rawsend("send", str(store), "--stream", stream_id_of(data), check=True).stdout
        assert sent == data


# -- encrypted streams --------------------------------------------------------------------------

def test_encrypted_stream_stored_without_key(tmp_path, src_a):
    key_file = tmp_path / "k.key"
    run_rawsend("keygen", "-o", str(key_file), check=True)
    key = load_key(key_file)
    from rawsend.stream.records import Cipher
    data = make_stream(src_a, sealer=Sealer(key, Cipher.AES_256_GCM))
    sid = stream_id_of(data)
    store = tmp_path / "store"

    proc = receive_store(store, data, "--key-file", str(key_file))
    assert proc.returncode == 2 and "cannot apply with --store" in proc.stderr.decode()
    proc = receive_store(store, data)
    assert proc.returncode == 0, proc.stderr
    (entry,) = ls_json(store)
    assert entry["encrypted"] is True and entry["key_id"] == key.key_id_hex
    assert entry["cipher"] == "aes-256-gcm" and entry["files"] == "unknown"
    assert entry["logical_bytes"] == sum(p.stat().st_size for p in src_a.rglob("*") if p.is_file() and not p.is_symlink())
    line = run_rawsend("ls", str(store), check=True).stdout.decode()
    assert f"encrypted aes-256-gcm key {key.key_id_hex}" in line

    proc = run_rawsend("verify", str(store))
    assert proc.returncode == 0, proc.stderr
    assert f"{sid}: intact, NOT authenticated" in proc.stdout.decode()
    proc = run_rawsend("verify", str(store), "--key-file", str(key_file))
    assert proc.returncode == 0, proc.stderr
    assert f"{sid}: OK, authenticated" in proc.stdout.decode()

    assert run_rawsend("send", str(store), check=True).stdout == data
    sender, receiver = pipeline([str(store)], ["--key-file", str(key_file), str(tmp_path / "restored")])
    assert sender.returncode == 0 and receiver.returncode == 0, receiver.stderr
    assert diff(snapshot(src_a, blocks=False), snapshot(tmp_path / "restored", blocks=False)) == []
