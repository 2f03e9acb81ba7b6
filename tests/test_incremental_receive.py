"""receive DEST of tracked and incremental streams, through the command line.

A chain full -> incremental -> incremental -> incremental is sent with `send --state` and
received into one DEST, which must equal the source after every step; refusals leave DEST as
it was; a receive killed in its apply, or out of space, leaves DEST at the base or the new tree.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.conftest import run_rawsend
from tests.treeutil import diff, snapshot

KiB = 1024


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def send(src: Path, state: Path, out: Path, *args: str) -> None:
    proc = run_rawsend("send", "--state", str(state), "-o", str(out), *args, str(src))
    assert proc.returncode == 0, proc.stderr.decode()


def receive(stream: Path, dest: Path, *args: str, code: int = 0, env=None) -> str:
    proc = run_rawsend("receive", "-f", str(stream), *args, str(dest), env=env)
    assert proc.returncode == code, proc.stderr.decode()
    return proc.stderr.decode()


def header_and_end(stream: Path, *args: str) -> tuple[dict, dict]:
    proc = run_rawsend("dump", "--json", *args, str(stream))
    assert proc.returncode == 0, proc.stderr.decode()
    recs = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    return recs[0], recs[-1]


def state_db(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.rawsend" / "state.db"


def same(a: Path, b: Path) -> None:
    assert diff(snapshot(a), snapshot(b)) == []


@pytest.fixture
def src(tmp_path):
    src = tmp_path / "src"
    write(src / "big", os.urandom(600 * KiB))
    write(src / "log", b"line\n" * 1000)
    for i in range(30):
        write(src / "many" / f"f{i:02}", b"file %d\n" % i)
    write(src / "a", b"I am a")
    write(src / "b", b"I am b")
    write(src / "linked", b"two names")
    (src / "dir").mkdir()
    os.link(src / "linked", src / "dir" / "linked2")
    os.setxattr(src / "a", "user.note", b"kept")
    fd = os.open(src / "sparse", os.O_WRONLY | os.O_CREAT, 0o640)
    os.pwrite(fd, b"x" * 4096, 256 * KiB)
    os.ftruncate(fd, 1024 * KiB)
    os.close(fd)
    (src / "sym").symlink_to("a")
    return src


# -- step 1: a full tracked receive records what DEST holds ---------------------------------

def test_full_tracked_receive_records_the_stream_and_every_file(tmp_path, src):
    state, dest = tmp_path / "STATE", tmp_path / "dest"
    send(src, state, tmp_path / "full.rs")
    receive(tmp_path / "full.rs", dest)
    same(src, dest)
    header, end = header_and_end(tmp_path / "full.rs")
    db = sqlite3.connect(state_db(dest))
    (stream_id, digest, next_id), = db.execute("SELECT stream_id, digest, next_id FROM chain")
    assert (stream_id.hex(), digest.hex()) == (header["stream_id"], end["digest"])
    files = {i: (t, ino, size, mtime) for i, t, ino, size, mtime in db.execute("SELECT * FROM files")}
    names = {(p, bytes(n)): i for p, n, i in db.execute("SELECT * FROM names")}
    assert next_id == len(files) + 1

    def path_of(fid):  # the manifest's names, walked up to the root
        for (parent, name), i in names.items():
            if i == fid:
                return path_of(parent) / os.fsdecode(name)
        return dest
    seen = set()
    for fid, (kind, ino, size, mtime) in files.items():
        for (parent, name), i in names.items():
            if i == fid:
                st = os.lstat(path_of(parent) / os.fsdecode(name))
                seen.add(os.path.relpath(path_of(parent) / os.fsdecode(name), dest))
                assert (stat.S_IFMT(st.st_mode), st.st_ino, st.st_mtime_ns) == (kind, ino, mtime)
                if stat.S_ISREG(st.st_mode):
                    assert size == st.st_size
    walked = {os.path.relpath(os.path.join(d, n), dest) for d, ds, fs in os.walk(dest) for n in ds + fs}
    assert seen == walked
    assert os.listxattr(dest) == []  # nothing on DEST itself that a tree comparison would see


def test_untracked_full_receive_records_nothing(tmp_path, src):
    proc = run_rawsend("send", "-o", str(tmp_path / "plain.rs"), str(src))
    assert proc.returncode == 0
    receive(tmp_path / "plain.rs", tmp_path / "dest")
    assert not (tmp_path / ".dest.rawsend").exists()


# -- step 2: a chain through send --state | receive DEST --------------------------------------

def change_1(src: Path) -> None:
    """Overwrites inside a file, an append, a renamed directory, deletes, links, attributes, a swap."""
    with open(src / "log", "ab") as f:
        f.write(b"appended\n" * 100)
    fd = os.open(src / "big", os.O_WRONLY)
    os.pwrite(fd, os.urandom(4 * KiB), 300 * KiB)
    os.close(fd)
    os.rename(src / "many", src / "moved")
    for i in range(0, 30, 3):
        os.unlink(src / "moved" / f"f{i:02}")
    os.link(src / "b", src / "b_link")
    os.unlink(src / "dir" / "linked2")
    os.chmod(src / "a", 0o600)
    os.chown(src / "b", 1234, 5678)
    os.setxattr(src / "a", "user.note", b"changed")
    os.setxattr(src / "dir", "user.on_dir", b"d")
    os.rename(src / "a", src / "t")
    os.rename(src / "b", src / "a")
    os.rename(src / "t", src / "b")


def change_2(src: Path) -> None:
    """A shrink, a hole punched, a directory removed, a rewritten hard-linked file, a new tree."""
    os.truncate(src / "log", 1000)
    fd = os.open(src / "sparse", os.O_WRONLY)
    os.pwrite(fd, b"y" * 8192, 0)
    os.close(fd)
    for name in os.listdir(src / "moved"):
        os.unlink(src / "moved" / name)
    os.rmdir(src / "moved")
    with open(src / "a", "ab") as f:                                # "a" has two names: a and b_link
        f.write(b" and more")
    write(src / "new" / "deep" / "file", os.urandom(200 * KiB))
    os.link(src / "new" / "deep" / "file", src / "new" / "file_link")
    (src / "new" / "sym").symlink_to("deep/file")
    os.removexattr(src / "b", "user.note")


def change_3(src: Path) -> None:
    """Type changes, a directory moved below another, a symlink retargeted, a read-only directory."""
    os.unlink(src / "log")
    write(src / "log" / "now_a_dir", b"x")
    os.rename(src / "new", src / "dir" / "new")
    os.unlink(src / "sym")
    (src / "sym").symlink_to("somewhere/else")
    os.utime(src / "sym", ns=(1_000_000_000, 2_000_000_000), follow_symlinks=False)
    os.chmod(src / "dir", 0o555)
    write(src / "big", os.urandom(10 * KiB))


CHANGES = [change_1, change_2, change_3]


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "key"
    assert run_rawsend("keygen", "-o", str(path)).returncode == 0
    return path


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_chain_of_incrementals_leaves_dest_equal_to_the_source_at_every_step(tmp_path, src, key, encrypted):
    state, dest = tmp_path / "STATE", tmp_path / "dest"
    send_args = ("--encrypt", str(key)) if encrypted else ()
    recv_args = ("--key-file", str(key)) if encrypted else ()
    send(src, state, tmp_path / "s0.rs", *send_args)
    receive(tmp_path / "s0.rs", dest, *recv_args)
    same(src, dest)
    for n, change in enumerate(CHANGES, 1):
        change(src)
        send(src, state, tmp_path / f"s{n}.rs", *send_args)
        err = receive(tmp_path / f"s{n}.rs", dest, *recv_args)
        assert "applied" in err
        same(src, dest)
        info = json.loads(run_rawsend("status", "--json", str(dest), check=True).stdout)
        header, end = header_and_end(tmp_path / f"s{n}.rs", *(a for a in recv_args))
        assert (info["stream_id"], info["digest"], info["chain_length"], info["pending"]) == (
            header["stream_id"], end["digest"], n + 1, False)
        assert info["encrypted"] is encrypted
    assert not [p for p in os.listdir(tmp_path / ".dest.rawsend") if p not in ("state.db", "lock")]


# -- refusals: DEST unchanged -------------------------------------------------------------------

@pytest.fixture
def chain(tmp_path, src):
    """DEST holding s0; streams s1 (against s0) and s2 (against s1) sent from src."""
    state, dest = tmp_path / "STATE", tmp_path / "dest"
    send(src, state, tmp_path / "s0.rs")
    receive(tmp_path / "s0.rs", dest)
    for n, change in enumerate(CHANGES[:2], 1):
        change(src)
        send(src, state, tmp_path / f"s{n}.rs")
    ids = [header_and_end(tmp_path / f"s{n}.rs")[0]["stream_id"] for n in range(3)]
    return dest, ids


def unchanged(dest: Path, before: dict) -> None:
    assert diff(before, snapshot(dest)) == []
    assert sorted(os.listdir(dest.parent / f".{dest.name}.rawsend")) == ["lock", "state.db"]


def test_a_stream_against_another_base_is_refused_naming_both_and_the_resend(tmp_path, chain):
    dest, (s0, s1, s2) = chain
    before = snapshot(dest)
    err = receive(tmp_path / "s2.rs", dest, code=3)
    assert f"DEST holds stream {s0}, and this stream changes stream {s1}" in err
    assert f"rawsend send --state STATE --parent {s0} SRC" in err
    unchanged(dest, before)


def test_a_stream_applied_twice_and_an_older_after_a_newer_are_refused(tmp_path, chain):
    dest, (s0, s1, s2) = chain
    receive(tmp_path / "s1.rs", dest)
    receive(tmp_path / "s2.rs", dest)
    before = snapshot(dest)
    err = receive(tmp_path / "s2.rs", dest, code=3)
    assert f"DEST holds this stream already (stream {s2})" in err
    unchanged(dest, before)
    err = receive(tmp_path / "s1.rs", dest, code=3)
    assert f"DEST holds stream {s2}, and this stream ({s1}) was applied before it: it is older" in err
    unchanged(dest, before)
    assert json.loads(run_rawsend("status", "--json", str(dest), check=True).stdout)["chain"] == [s0, s1, s2]


def test_an_incremental_into_a_dest_without_state_is_refused(tmp_path, chain):
    dest, (s0, s1, s2) = chain
    other = tmp_path / "other"
    proc = run_rawsend("send", "-o", str(tmp_path / "plain.rs"), str(dest))
    assert proc.returncode == 0
    receive(tmp_path / "plain.rs", other)
    before = snapshot(other)
    err = receive(tmp_path / "s1.rs", other, code=3)
    assert "the stream is incremental, and DEST holds no tree received from a tracked stream" in err
    assert diff(before, snapshot(other)) == []
    receive(tmp_path / "s1.rs", tmp_path / "absent", code=3)
    assert not (tmp_path / "absent").exists()


def test_a_locally_modified_file_is_refused_by_name_unless_force(tmp_path, chain, src):
    dest, _ = chain
    receive(tmp_path / "s1.rs", dest)
    # s2 appends to "a" (and b_link): a local change there is refused; one elsewhere is not looked at
    os.utime(dest / "sym", ns=(5, 5), follow_symlinks=False)
    with open(dest / "a", "ab") as f:
        f.write(b"local")
    before = snapshot(dest)
    err = receive(tmp_path / "s2.rs", dest, code=3)
    assert "a file the stream changes was modified since DEST received it (size, mtime differ)" in err
    assert f"path '{dest / 'a'}'" in err
    assert "--force" in err
    unchanged(dest, before)
    receive(tmp_path / "s2.rs", dest, "--force")
    expect = snapshot(src)
    expect["sym"]["mtime_ns"] = 5  # the local change s2 does not touch stays
    assert diff(expect, snapshot(dest)) == []


def test_a_directory_changed_locally_is_refused_even_with_force(tmp_path, chain):
    dest, _ = chain
    receive(tmp_path / "s1.rs", dest)
    write(dest / "moved" / "local", b"mine")                       # s2 removes moved/
    before = snapshot(dest)
    for args in ((), ("--force",)):
        err = receive(tmp_path / "s2.rs", dest, *args, code=3)
        assert f"a directory the stream changes was changed since DEST received it" in err
        assert f"path '{dest / 'moved'}'" in err
        unchanged(dest, before)


def test_an_incremental_sealed_with_another_key_than_given_is_refused(tmp_path, src, key):
    other = tmp_path / "other_key"
    assert run_rawsend("keygen", "-o", str(other)).returncode == 0
    state, dest = tmp_path / "STATE", tmp_path / "dest"
    send(src, state, tmp_path / "s0.rs", "--encrypt", str(key))
    receive(tmp_path / "s0.rs", dest, "--key-file", str(key))
    change_1(src)
    send(src, state, tmp_path / "s1.rs", "--encrypt", str(other))
    before = snapshot(dest)
    err = receive(tmp_path / "s1.rs", dest, "--key-file", str(key), code=4)
    assert "key" in err
    unchanged(dest, before)
    receive(tmp_path / "s1.rs", dest, "--key-file", str(other))   # its own key: a chain need not use one key
    same(src, dest)
