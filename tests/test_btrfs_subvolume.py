"""Receiving into btrfs as read-only received subvolumes, on real loop-mounted btrfs images.

A full stream makes DEST a new subvolume, an incremental one a snapshot of its base found by
received UUID; both end read-only with received_uuid set (read back with `btrfs subvolume
show`), contents identical and compressed extents verbatim.  A receive that fails, is cut off
or is SIGKILLed leaves no subvolume, under DEST or a private name.  `--no-subvolume` and a
parent off btrfs give plain directories.  And which directions interoperate with `btrfs send
-p` / `btrfs receive`.

Skips (shown with -rs) when root, btrfs-progs, loop devices or encoded I/O are missing.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rawsend import btrfs
from rawsend.btrfs import subvol
from rawsend.sinks.journal import KILL_HOOK
from rawsend.stream.reader import StreamReader
from tests.btrfs_fixtures import btrfs_mount, require_encoded_io
from tests.test_btrfs_send_receive import (
    as_sent, assert_same_tree, build_tree, ok, on_disk, rawsend, regular_files, run, text, write_synced,
)

UUID_LINE = re.compile(r"^\s*(UUID|Parent UUID|Received UUID|Flags):\s*(\S+)\s*$", re.M)


def show(path: Path) -> dict[str, str]:
    """`btrfs subvolume show`: UUID, Parent UUID, Received UUID, Flags."""
    out = run("btrfs", "subvolume", "show", str(path)).stdout.decode()
    return dict(UUID_LINE.findall(out))


def as_uuid(stream_id: bytes) -> str:
    h = stream_id.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def subvolumes(mnt: Path) -> list[str]:
    """Paths of every subvolume of the filesystem, deleted ones still being cleaned included."""
    out = run("btrfs", "subvolume", "list", "-a", str(mnt)).stdout.decode()
    return sorted(line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line)


def stream_id_of(stream: Path) -> bytes:
    with open(stream, "rb") as f:
        reader = StreamReader(f)
        next(iter(reader))
        return reader.header.stream_id


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """The source btrfs, compress=zstd."""
    require_encoded_io()
    with btrfs_mount(tmp_path_factory.mktemp("subvol-src"), options="compress=zstd", size="256M") as mnt:
        yield mnt


@pytest.fixture(scope="module")
def fs(src, tmp_path_factory):
    """The destinations' btrfs, mounted WITHOUT compression: a compressed extent there was written
    verbatim."""
    with btrfs_mount(tmp_path_factory.mktemp("subvol-dst"), options="", size="512M") as mnt:
        yield mnt


@pytest.fixture(scope="module")
def chain(src, fs, tmp_path_factory):
    """A source subvolume with read-only snapshots s0 and s1, and the rawsend streams of both
    (s1 incremental against s0, sent with --state)."""
    work = tmp_path_factory.mktemp("streams")
    vol = src / "vol"
    run("btrfs", "-q", "subvolume", "create", str(vol))
    build_tree(vol)
    state = work / "state"
    streams = []

    def snapshot_and_send(name: str) -> None:
        # STATE belongs to one source path: each snapshot is sent as "snap", then renamed
        run("btrfs", "-q", "subvolume", "snapshot", "-r", str(vol), str(src / "snap"))
        out = work / f"{name}.rs"
        ok(rawsend("send", "--state", str(state), "-o", str(out), str(src / "snap")))
        os.rename(src / "snap", src / name)
        streams.append(out)

    snapshot_and_send("s0")
    write_synced(vol / "text.txt", text(300 * 1024, seed=9), offset=128 * 1024)
    os.rename(vol / "dir", vol / "moved")
    write_synced(vol / "new.txt", text(200 * 1024, seed=5))
    os.unlink(vol / "tiny.bin")
    snapshot_and_send("s1")
    return streams


def verbatim(snap: Path, dest: Path, skip=("partial.txt",)) -> int:
    """Compressed extents of ``snap`` on ``dest`` as they are on disk (ENCODED_READ), file by file;
    the number compared.  Files with partly referenced extents are left out (``skip``): `send
    --state` sends such a range decoded, and it lands compressed anew (a sender matter)."""
    n = 0
    for rel in regular_files(snap):
        if rel not in skip:
            want, got = as_sent(on_disk(snap / rel)), on_disk(dest / rel)
            assert got == want, rel
            n += len(got.compressed)
    return n


def receive(stream: Path, dest: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return rawsend("receive", *args, "-f", str(stream), str(dest), env=env)


def test_full_and_incremental_are_read_only_received_subvolumes(src, fs, chain, tmp_path):
    d = fs / "dst1"
    d.mkdir()
    ok(receive(chain[0], d / "r0"))
    ok(receive(chain[1], d / "r1"))
    r0, r1 = show(d / "r0"), show(d / "r1")
    assert r0["Received UUID"] == as_uuid(stream_id_of(chain[0]))
    assert r1["Received UUID"] == as_uuid(stream_id_of(chain[1]))
    assert r0["Flags"] == r1["Flags"] == "readonly"
    assert r0["Parent UUID"] == "-"
    assert r1["Parent UUID"] == r0["UUID"]  # a snapshot of its base
    assert_same_tree(src / "s0", d / "r0")
    assert_same_tree(src / "s1", d / "r1")
    assert verbatim(src / "s0", d / "r0") > 0
    # text.txt was partly overwritten: the rest of its overwritten extent is partly referenced
    assert verbatim(src / "s1", d / "r1", skip=("partial.txt", "text.txt")) > 0
    assert on_disk(d / "r1" / "new.txt").compressed  # written by the incremental, verbatim
    # the base is untouched, and nothing but the two subvolumes and their states is left
    assert_same_tree(src / "s0", d / "r0")
    assert sorted(os.listdir(d)) == [".r0.rawsend", ".r1.rawsend", "r0", "r1"]
    assert sorted(os.listdir(d / ".r1.rawsend")) == ["lock", "state.db"]
    status = ok(rawsend("status", str(d / "r1"))).stdout.decode()
    assert f"holds stream {stream_id_of(chain[1]).hex()}" in status
    # a read-only subvolume cannot be written: it is what the stream made
    with pytest.raises(OSError):
        (d / "r1" / "new.txt").write_bytes(b"x")


def test_incremental_needs_its_base_beside_dest(fs, chain):
    d = fs / "dst2"
    d.mkdir()
    proc = receive(chain[1], d / "r1")
    assert proc.returncode == 3, proc.stderr.decode()
    err = proc.stderr.decode()
    assert f"has received UUID {stream_id_of(chain[0]).hex()}" in err
    assert os.listdir(d) == []  # no subvolume, no private name, no state directory


def test_incremental_onto_a_read_only_subvolume_dest_is_refused(src, fs, chain):
    d = fs / "dst3"
    d.mkdir()
    ok(receive(chain[0], d / "r0"))
    proc = receive(chain[1], d / "r0")
    assert proc.returncode == 3, proc.stderr.decode()
    assert "DEST is a read-only subvolume" in proc.stderr.decode()
    assert_same_tree(src / "s0", d / "r0")


def test_no_subvolume_keeps_plain_directories_and_in_place_incrementals(src, fs, chain):
    d = fs / "dst4"
    d.mkdir()
    ok(receive(chain[0], d / "r", "--no-subvolume"))
    assert not subvol.is_subvolume(d / "r")
    ok(receive(chain[1], d / "r", "--no-subvolume"))
    assert not subvol.is_subvolume(d / "r")
    assert_same_tree(src / "s1", d / "r")


def test_parent_off_btrfs_gives_a_directory(src, fs, chain, tmp_path):
    if btrfs.is_btrfs(tmp_path):
        pytest.skip(f"{tmp_path} is on btrfs: no other filesystem to receive into")
    ok(receive(chain[0], tmp_path / "r0"))
    assert (tmp_path / "r0").is_dir() and not subvol.is_subvolume(tmp_path / "r0")
    assert_same_tree(src / "s0", tmp_path / "r0")


def test_without_cap_sys_admin_a_directory(src, fs, chain):
    drop = ("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin")
    if subprocess.run([*drop, "true"]).returncode != 0:
        pytest.skip("setpriv cannot drop CAP_SYS_ADMIN here")
    d = fs / "dst14"
    d.mkdir()
    ok(rawsend("receive", "-f", str(chain[0]), str(d / "r0"), prefix=drop))
    assert (d / "r0").is_dir() and not subvol.is_subvolume(d / "r0")
    assert_same_tree(src / "s0", d / "r0")


def test_cut_stream_leaves_no_subvolume(fs, chain, tmp_path):
    d = fs / "dst5"
    d.mkdir()
    before = subvolumes(fs)
    cut = tmp_path / "cut.rs"
    cut.write_bytes(chain[0].read_bytes()[: chain[0].stat().st_size // 2])
    proc = receive(cut, d / "r0")
    assert proc.returncode == 1, proc.stderr.decode()
    assert os.listdir(d) == []
    run("btrfs", "subvolume", "sync", str(fs))
    assert subvolumes(fs) == before


def _killed_mid_stream(stream: Path, dest: Path) -> None:
    """rawsend receive DEST, SIGKILLed while it waits for the rest of the stream."""
    data = stream.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "rawsend", "receive", str(dest)], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    # wait until its private subvolume exists: the receive is under way
    for _ in range(500):
        if any(n.startswith(f".{dest.name}.rawsend-") for n in os.listdir(dest.parent)):
            break
        subprocess.run(["sleep", "0.02"])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdin.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_stream_leaves_only_a_private_subvolume_the_next_receive_removes(src, fs, chain):
    d = fs / "dst6"
    d.mkdir()
    _killed_mid_stream(chain[0], d / "r0")
    left = [n for n in os.listdir(d) if n.startswith(".r0.rawsend-")]
    assert len(left) == 1 and subvol.is_subvolume(d / left[0])
    assert not (d / "r0").exists()
    ok(receive(chain[0], d / "r0"))
    assert sorted(os.listdir(d)) == [".r0.rawsend", "r0"]
    assert_same_tree(src / "s0", d / "r0")


@pytest.mark.parametrize("point", ["subvolume"])
def test_full_killed_after_read_only_before_rename(fs, chain, point):
    d = fs / f"dst7-{point}"
    d.mkdir()
    proc = receive(chain[0], d / "r0", env={**os.environ, KILL_HOOK: point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    [left] = [n for n in os.listdir(d) if n.startswith(".r0.rawsend-")]
    assert show(d / left)["Flags"] == "readonly"  # read-only, so only a subvolume delete removes it
    assert not (d / "r0").exists()
    ok(receive(chain[0], d / "r0"))
    assert sorted(os.listdir(d)) == [".r0.rawsend", "r0"]


@pytest.mark.parametrize("point", ["stage", "journal", "op:1", "ops", "db", "subvolume"])
def test_incremental_killed_leaves_base_untouched_and_no_new_subvolume(src, fs, chain, point):
    d = fs / f"dst8-{point.replace(':', '')}"
    d.mkdir()
    ok(receive(chain[0], d / "r0"))
    proc = receive(chain[1], d / "r1", env={**os.environ, KILL_HOOK: point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not (d / "r1").exists()
    assert_same_tree(src / "s0", d / "r0")
    status = ok(rawsend("status", str(d / "r0"))).stdout.decode()
    assert f"holds stream {stream_id_of(chain[0]).hex()}" in status
    # the next receive into r1 removes the snapshot and its state, then succeeds
    ok(receive(chain[1], d / "r1"))
    assert sorted(os.listdir(d)) == [".r0.rawsend", ".r1.rawsend", "r0", "r1"]
    assert_same_tree(src / "s1", d / "r1")
    assert show(d / "r1")["Flags"] == "readonly"


def test_failed_incremental_removes_its_snapshot(fs, chain, tmp_path):
    d = fs / "dst9"
    d.mkdir()
    ok(receive(chain[0], d / "r0"))
    before = subvolumes(fs)
    cut = tmp_path / "cut1.rs"
    cut.write_bytes(chain[1].read_bytes()[:-10])
    proc = receive(cut, d / "r1")
    assert proc.returncode == 1, proc.stderr.decode()
    assert sorted(os.listdir(d)) == [".r0.rawsend", "r0"]  # nothing of r1: no subvolume, no state directory
    run("btrfs", "subvolume", "sync", str(fs))
    assert subvolumes(fs) == before


# -- btrfs send -p and btrfs receive with received subvolumes ---------------------------------

def test_btrfs_send_p_relays_rawsend_received_subvolumes(src, fs, chain):
    """rawsend-received r0, r1 are parent and child for btrfs send -p: a btrfs receive that got
    r0 from btrfs send finds it by the received UUID r0 passes on."""
    d, relay = fs / "dst10", fs / "relay10"
    d.mkdir()
    relay.mkdir()
    ok(receive(chain[0], d / "r0"))
    ok(receive(chain[1], d / "r1"))
    full = run("btrfs", "send", "-q", str(d / "r0")).stdout
    run("btrfs", "receive", "-q", str(relay), stdin=full)
    inc = run("btrfs", "send", "-q", "-p", str(d / "r0"), str(d / "r1")).stdout
    run("btrfs", "receive", "-q", str(relay), stdin=inc)
    assert_same_tree(src / "s1", relay / "r1")
    assert show(relay / "r1")["Received UUID"] == as_uuid(stream_id_of(chain[1]))


def test_btrfs_incremental_of_the_source_does_not_find_a_rawsend_received_parent(src, fs, chain):
    """btrfs send -p s0 s1 names its parent by s0's own UUID, which a subvolume received from
    rawsend's stream of s0 does not carry (its received UUID is the stream id): btrfs receive
    refuses, and nothing is made."""
    d = fs / "dst11"
    d.mkdir()
    ok(receive(chain[0], d / "r0"))
    inc = run("btrfs", "send", "-q", "-p", str(src / "s0"), str(src / "s1")).stdout
    proc = subprocess.run(["btrfs", "receive", str(d)], input=inc, capture_output=True, timeout=120)
    assert proc.returncode != 0
    assert "cannot find parent subvolume" in proc.stderr.decode()
    assert not (d / "s1").exists()


def test_rawsend_incremental_onto_a_btrfs_received_base_is_refused(fs, chain):
    """A subvolume btrfs receive made has no rawsend state: a rawsend incremental is refused."""
    d = fs / "dst12"
    d.mkdir()
    ok(receive(chain[0], d / "r0"))
    full = run("btrfs", "send", "-q", str(d / "r0")).stdout
    theirs = fs / "theirs12"
    theirs.mkdir()
    run("btrfs", "receive", "-q", str(theirs), stdin=full)  # received UUID: the rawsend stream id
    proc = receive(chain[1], theirs / "r1")
    assert proc.returncode == 3, proc.stderr.decode()
    assert "no rawsend state beside it" in proc.stderr.decode()
    assert sorted(os.listdir(theirs)) == ["r0"]


# -- encrypted, through a keyless store, and across a remount ------------------------------------

def test_encrypted_chain_through_a_keyless_store(src, fs, chain, tmp_path):
    """send --state --encrypt of s0 then s1, kept by a store without the key, relayed out of it
    and received with the key: read-only received subvolumes, the second a snapshot of the first."""
    key = tmp_path / "k.key"
    ok(rawsend("keygen", "-o", str(key)))
    state, store = tmp_path / "state", tmp_path / "store"
    ids = []
    for name in ("s0", "s1"):
        os.rename(src / name, src / "snap")  # STATE belongs to one source path
        try:
            out = tmp_path / f"{name}.rs"
            ok(rawsend("send", "--state", str(state), "--encrypt", str(key), "-o", str(out), str(src / "snap")))
        finally:
            os.rename(src / "snap", src / name)
        ok(rawsend("receive", "--store", str(store), "-f", str(out)))
        ids.append(stream_id_of(out))
    d = fs / "dst13"
    d.mkdir()
    for i, name in enumerate(("r0", "r1")):
        relayed = ok(rawsend("send", "--stream", ids[i].hex(), str(store))).stdout
        ok(rawsend("receive", "--key-file", str(key), str(d / name), stdin=relayed))
    r0, r1 = show(d / "r0"), show(d / "r1")
    assert (r0["Received UUID"], r1["Received UUID"]) == (as_uuid(ids[0]), as_uuid(ids[1]))
    assert r0["Flags"] == r1["Flags"] == "readonly" and r1["Parent UUID"] == r0["UUID"]
    assert_same_tree(src / "s0", d / "r0")
    assert_same_tree(src / "s1", d / "r1")
    assert verbatim(src / "s0", d / "r0") > 0


def test_base_is_found_after_a_remount(src, chain, tmp_path):
    """A subvolume's device number is handed out anew at each mount: the state beside the base
    names it by its subvolume UUID, so an incremental still finds it after a remount."""
    with btrfs_mount(tmp_path, options="", size="256M") as mnt:
        ok(receive(chain[0], mnt / "other"))
        ok(receive(chain[0], mnt / "r0"))
        img = mnt.with_suffix(".img")
        run("umount", str(mnt))
        run("mount", "-o", "loop", str(img), str(mnt))
        os.stat(mnt / "other")  # first: it may take the device number r0 had (not every time)
        db = sqlite3.connect(mnt / ".r0.rawsend" / "state.db")
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
        finally:
            db.close()
        fd = os.open(mnt / "r0", os.O_RDONLY)
        try:
            assert meta == {"root_uuid": subvol.info(fd).uuid, "root_ino": 256}  # no device number
        finally:
            os.close(fd)
        assert f"holds stream {stream_id_of(chain[0]).hex()}" in ok(rawsend("status", str(mnt / "r0"))).stdout.decode()
        ok(receive(chain[1], mnt / "r1"))
        assert_same_tree(src / "s1", mnt / "r1")
