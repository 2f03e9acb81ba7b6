"""send --state through the command line: a full tracked stream, then incremental streams.

Each stream is read back with `rawsend dump --json` and checked record by record, and STATE's
manifest is checked against the tree and the ids the stream carried.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from rawsend.incremental.manifest import walk_paths
from rawsend.incremental.state import State
from tests.conftest import run_rawsend

KiB = 1024
EXTENT = 128 * KiB


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def send(src: Path, state: Path, out: Path, *args: str, code: int = 0) -> str:
    proc = run_rawsend("send", "--state", str(state), "-o", str(out), *args, str(src))
    assert proc.returncode == code, proc.stderr.decode()
    return proc.stderr.decode()


def dump(stream: Path, *keys: str) -> list[dict]:
    args = [a for k in keys for a in ("--key-file", k)]
    proc = run_rawsend("dump", "--json", *args, str(stream))
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


def of_type(recs: list[dict], *types: str) -> list[dict]:
    return [r for r in recs if r["type"] in types]


def manifest(state: Path, src: Path) -> tuple[dict, dict]:
    """The newest stream's manifest: path -> Entry (every name of a file), and the stream info."""
    with State.open(state, src, create=False) as st:
        info = st.streams()[-1]
        entries = st.manifest(info)
    paths = {}
    for fid, e in entries.items():
        for parent, name in e.names:
            up = walk_paths(entries)[parent] if parent else None
            paths[b"" if up is None else (up + b"/" + name if up else name)] = e
    return paths, info


def check_manifest(state: Path, src: Path) -> dict:
    """STATE's newest manifest describes the tree now, name by name; returns path -> Entry."""
    paths, _ = manifest(state, src)
    found = {b""}
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            found.add(os.fsencode(os.path.relpath(os.path.join(dirpath, name), src)))
    assert set(paths) == found
    for path, e in paths.items():
        st = os.lstat(os.path.join(os.fsencode(src), path) if path else src)
        assert (e.dev, e.ino, e.mode, e.uid, e.gid, e.mtime_ns) == (st.st_dev, st.st_ino, st.st_mode, st.st_uid,
                                                                    st.st_gid, st.st_mtime_ns), path
        if stat.S_ISREG(st.st_mode):
            assert e.size == st.st_size
            assert sum(n for _, n, _ in e.extents) == st.st_blocks * 512 or e.extents, path
            assert all(o + n <= st.st_size for o, n, _ in e.extents)
        xattrs = sorted(os.fsencode(x) for x in os.listxattr(os.path.join(src, os.fsdecode(path)),
                                                             follow_symlinks=False)) \
            if not stat.S_ISFIFO(st.st_mode) else []
        assert [n for n, _ in e.xattrs] == xattrs, path
    return paths


def check_ids(recs: list[dict], first_id: int) -> None:
    """Create records carry first_id, first_id + 1, ... in stream order."""
    ids = [r["id"] for r in of_type(recs, "mkdir", "mkfile", "mknod", "symlink")]
    assert ids == list(range(first_id, first_id + len(ids)))


def ids_by_path(state: Path, src: Path) -> dict[bytes, int]:
    return {p: e.file_id for p, e in manifest(state, src)[0].items()}


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    write(src / "big", os.urandom(2 * 1024 * KiB))                 # 16 extents
    write(src / "log", os.urandom(300_000))                        # not a multiple of the extent size
    for i in range(300):
        write(src / "many" / f"f{i:03}", b"file %d\n" % i)
    for i in range(20):
        write(src / "doomed" / f"d{i}", b"doomed %d" % i)
    write(src / "a", b"I am a")
    write(src / "b", b"I am b")
    write(src / "lonely", b"gets a second name")
    write(src / "linked", b"two names")
    os.link(src / "linked", src / "linked2")
    write(src / "becomes_dir", b"a file for now")
    write(src / "attrs", b"attributes change")
    os.setxattr(src / "attrs", "user.gone", b"soon")
    os.setxattr(src / "attrs", "user.kept", b"old")
    write(src / "sparse", b"")
    fd = os.open(src / "sparse", os.O_WRONLY)
    os.pwrite(fd, b"x" * EXTENT, 0)
    os.pwrite(fd, b"y" * EXTENT, EXTENT)
    os.pwrite(fd, b"z" * EXTENT, 2 * EXTENT)
    os.close(fd)
    (src / "sym").symlink_to("a")
    os.mkfifo(src / "fifo")
    return src


def test_first_send_is_a_full_tracked_stream_with_states_ids(tree, tmp_path):
    state, out = tmp_path / "STATE", tmp_path / "s1"
    err = send(tree, state, out)
    assert "full stream" in err and "recorded in STATE" in err
    recs = dump(out)
    header = recs[0]
    assert header["optional"] == "tracked" and header["required"] == "-"
    assert recs[1]["type"] == "mkdir" and recs[1]["id"] == 1
    check_ids(recs, 1)
    assert oct(stat.S_IMODE(os.stat(state).st_mode)) == "0o600"
    paths = check_manifest(state, tree)
    stream_ids = {os.fsencode(r["path"]) if r["path"] != "." else b"": r["id"]
                  for r in of_type(recs, "mkdir", "mkfile", "mknod", "symlink")}
    stream_ids.update({os.fsencode(r["path"]): r["id"] for r in of_type(recs, "link")})
    assert stream_ids == {p: e.file_id for p, e in paths.items()}
    # every extent STATE records is the one the stream carried
    sent = {(r["id"], r["file_offset"], r["num_bytes"]) for r in of_type(recs, "extent")}
    recorded = {(e.file_id, o, n) for e in paths.values() if stat.S_ISREG(e.mode) for o, n, _ in e.extents}
    assert sent == recorded
    _, info = manifest(state, tree)
    assert info.stream_id.hex() == header["stream_id"] and info.end_digest.hex() == recs[-1]["digest"]
    verify = run_rawsend("verify", str(out))
    assert verify.returncode == 0, verify.stderr


def test_chain_of_incremental_streams_sends_only_the_changes(tree, tmp_path):
    state = tmp_path / "STATE"
    send(tree, state, tmp_path / "s1")
    s1 = dump(tmp_path / "s1")
    before = ids_by_path(state, tree)
    first_id = max(before.values()) + 1

    # -- step 2: many kinds of change at once
    with open(tree / "log", "ab") as f:
        f.write(b"appended line\n" * 100)                           # 1400 bytes
    fd = os.open(tree / "big", os.O_WRONLY)
    os.pwrite(fd, os.urandom(4 * KiB), 5 * EXTENT + 1000)          # inside the sixth extent
    os.close(fd)
    os.rename(tree / "many", tree / "moved")
    for i in range(0, 20, 2):
        os.unlink(tree / "doomed" / f"d{i}")
    os.link(tree / "lonely", tree / "a_link")
    os.unlink(tree / "linked2")
    os.unlink(tree / "becomes_dir")
    write(tree / "becomes_dir" / "inside", b"now a directory")
    os.chmod(tree / "attrs", 0o600)
    os.chown(tree / "b", 1234, 5678)
    os.removexattr(tree / "attrs", "user.gone")
    os.setxattr(tree / "attrs", "user.kept", b"new value")
    os.setxattr(tree / "attrs", "user.added", b"added")
    os.utime(tree / "sym", ns=(1_000_000_000, 2_000_000_000), follow_symlinks=False)
    os.rename(tree / "a", tree / "t")                              # swap a and b
    os.rename(tree / "b", tree / "a")
    os.rename(tree / "t", tree / "b")

    err = send(tree, state, tmp_path / "s2", "-v")
    recs = dump(tmp_path / "s2")
    assert f"incremental stream against {s1[0]['stream_id']}" in err
    assert "rename many -> moved" in err                           # -v lists the changes
    assert recs[0]["required"] == "incremental" and recs[0]["optional"] == "tracked"
    base = recs[1]
    assert base["type"] == "base" and base["base"] == s1[0]["stream_id"] and base["base_digest"] == s1[-1]["digest"]
    assert base["first_id"] == first_id
    check_ids(recs, first_id)
    after = check_manifest(state, tree)
    ids = {p: e.file_id for p, e in after.items()}

    def by_id(path: bytes, *types: str) -> list[dict]:
        return [r for r in of_type(recs, *types) if r.get("id") == before[path]]

    # the renamed directory: one rename, nothing for its 300 files
    assert [r["dest"] for r in by_id(b"many", "rename")] == ["moved"]
    moved_ids = {before[b"many/f%03d" % i] for i in range(300)}
    assert not [r for r in recs if r.get("id") in moved_ids]
    assert all(ids[b"moved/f%03d" % i] == before[b"many/f%03d" % i] for i in range(300))
    # the 4 KiB overwrite: one extent, the one it fell in
    big = by_id(b"big", "extent", "update_file", "truncate", "punch_hole")
    assert [(r["type"], r.get("file_offset")) for r in big] == [("update_file", None), ("extent", 5 * EXTENT)]
    assert big[1]["num_bytes"] == EXTENT and big[0]["size"] == 2 * 1024 * KiB
    # the append: a truncate to the new size, then the tail only
    log = by_id(b"log", "extent", "update_file", "truncate")
    assert [(r["type"], r.get("size"), r.get("file_offset"), r.get("num_bytes")) for r in log] == [
        ("truncate", 301_400, None, None), ("update_file", 301_400, None, None), ("extent", None, 300_000, 1400)]
    # deletes, hard links added and removed
    unlinked = {r["id"] for r in of_type(recs, "unlink")}
    assert {before[b"doomed/d%d" % i] for i in range(0, 20, 2)} <= unlinked
    assert before[b"linked"] in unlinked and before[b"becomes_dir"] in unlinked
    assert [(r["id"], r["path"]) for r in of_type(recs, "link")] == [(before[b"lonely"], "a_link")]
    # a file that became a directory: its name unlinked, then a new directory of a new id there
    mkdir = [r for r in of_type(recs, "mkdir") if r["path"] == "becomes_dir"]
    assert len(mkdir) == 1 and mkdir[0]["id"] >= first_id and ids[b"becomes_dir"] == mkdir[0]["id"]
    assert [r["path"] for r in of_type(recs, "mkfile")] == ["becomes_dir/inside"]
    # attribute changes, by id
    assert [r["mode"] for r in by_id(b"attrs", "chmod")] == ["600"]
    assert [(r["uid"], r["gid"]) for r in by_id(b"b", "chown")] == [(1234, 5678)]
    assert [r["name"] for r in by_id(b"attrs", "remove_xattr")] == ["user.gone"]
    assert sorted(r["name"] for r in by_id(b"attrs", "set_xattr")) == ["user.added", "user.kept"]
    assert [r["mtime"] for r in by_id(b"sym", "utimes")] == ["1970-01-01T00:00:02.000000000Z"]
    # the swap: a through a free temporary name, no data; the root, which held it, gets its times back
    assert [r["id"] for r in of_type(recs, "utimes")].count(1) == 1
    swap = [(r["id"], r["path"], r["dest"]) for r in of_type(recs, "rename") if r["id"] in (before[b"a"], before[b"b"])]
    assert len(swap) == 3 and swap[0][2].startswith(".rawsend-tmp-") and swap[2][1] == swap[0][2]
    assert ids[b"a"] == before[b"b"] and ids[b"b"] == before[b"a"]
    assert not by_id(b"a", "extent") and not by_id(b"b", "extent")
    # nothing else carried data
    assert {r["id"] for r in of_type(recs, "extent")} == {before[b"big"], before[b"log"], ids[b"becomes_dir/inside"]}
    assert run_rawsend("verify", str(tmp_path / "s2")).returncode == 0

    # -- step 3: shrink, a hole punched, a directory removed, the last hard link gone, a file changed
    # back and forth by size; a second incremental against the first
    os.truncate(tree / "log", 1000)
    fd = os.open(tree / "sparse", os.O_WRONLY | os.O_TRUNC)
    os.pwrite(fd, b"x" * EXTENT, 0)
    os.pwrite(fd, b"z" * EXTENT, 2 * EXTENT)                        # the middle extent is a hole now
    os.close(fd)
    for name in os.listdir(tree / "doomed"):
        os.unlink(tree / "doomed" / name)
    os.rmdir(tree / "doomed")
    os.unlink(tree / "a_link")
    write(tree / "moved" / "new_in_moved", b"new")
    before3, first3 = ids, manifest(state, tree)[1]
    err = send(tree, state, tmp_path / "s3")
    recs = dump(tmp_path / "s3")
    assert recs[1]["base"] == dump(tmp_path / "s2")[0]["stream_id"]
    assert recs[1]["first_id"] > max(before3.values())
    check_ids(recs, recs[1]["first_id"])
    check_manifest(state, tree)
    log = [r for r in recs if r.get("id") == before3[b"log"] and r["type"] in ("truncate", "extent", "update_file")]
    # a shrink: the truncate, and the extent it cut (its digest covered the whole 128 KiB, so the
    # bytes kept cannot be told unchanged)
    assert [(r["type"], r.get("size"), r.get("num_bytes")) for r in log] == [
        ("truncate", 1000, None), ("update_file", 1000, None), ("extent", None, 1000)]
    sparse = [(r["type"], r.get("file_offset"), r.get("len")) for r in recs if r.get("id") == before3[b"sparse"]
              and r["type"] in ("update_file", "extent", "punch_hole")]
    assert sparse == [("update_file", None, None), ("punch_hole", EXTENT, EXTENT)]
    rmdir = of_type(recs, "rmdir")
    assert [r["id"] for r in rmdir] == [before3[b"doomed"]]
    assert [r["id"] for r in of_type(recs, "unlink") if r["path"] == "a_link"] == [before3[b"lonely"]]
    assert first3.stream_id.hex() == recs[1]["base"]


def test_unchanged_tree_sends_an_empty_incremental(tree, tmp_path):
    state = tmp_path / "STATE"
    send(tree, state, tmp_path / "s1")
    err = send(tree, state, tmp_path / "s2")
    recs = dump(tmp_path / "s2")
    assert [r["type"] for r in recs if r["type"] not in ("utimes",)] == ["header", "base", "end"]
    assert not of_type(recs, "extent")
    with State.open(state, tree, create=False) as st:
        assert len(st.streams()) == 2


def test_parent_and_keep_state(tree, tmp_path):
    state = tmp_path / "STATE"
    send(tree, state, tmp_path / "s1")
    s1 = dump(tmp_path / "s1")[0]["stream_id"]
    write(tree / "n1", b"one")
    send(tree, state, tmp_path / "s2")
    s2 = dump(tmp_path / "s2")
    write(tree / "n2", b"two")
    # against the first stream again (as after a receive of s2 that failed): n1 and n2 are both new,
    # and their ids are above every id STATE handed out, s2's included
    send(tree, state, tmp_path / "s3", "--parent", s1[:6], "--keep-state", "2")
    s3 = dump(tmp_path / "s3")
    assert s3[1]["base"] == s1
    assert s3[1]["first_id"] > s2[1]["first_id"]
    assert sorted(r["path"] for r in of_type(s3, "mkfile")) == ["n1", "n2"]
    check_ids(s3, s3[1]["first_id"])
    check_manifest(state, tree)
    with State.open(state, tree, create=False) as st:
        assert [s.id_hex for s in st.streams()] == [s2[0]["stream_id"], s3[0]["stream_id"]]
    proc = run_rawsend("send", "--state", str(state), "--parent", s1[:8], "-o", str(tmp_path / "s4"), str(tree))
    assert proc.returncode == 2 and b"no such parent stream in STATE" in proc.stderr and b"matches no stream" in proc.stderr
    assert not (tmp_path / "s4").exists()


def test_encrypted_incremental_keeps_base_clear(tree, tmp_path):
    key = tmp_path / "key"
    assert run_rawsend("keygen", "-o", str(key)).returncode == 0
    state = tmp_path / "STATE"
    send(tree, state, tmp_path / "s1", "--encrypt", str(key))
    write(tree / "new", b"secret new file")
    with open(tree / "log", "ab") as f:
        f.write(b"more")
    send(tree, state, tmp_path / "s2", "--encrypt", str(key))
    keyless = dump(tmp_path / "s2")
    assert keyless[0]["required"] == "encrypted,incremental"
    assert keyless[1]["type"] == "base" and "first_id" in keyless[1]
    assert all(r.get("sealed") or r["type"] in ("extent", "end") for r in keyless[2:])
    opened = dump(tmp_path / "s2", str(key))
    assert [r["path"] for r in of_type(opened, "mkfile")] == ["new"]
    assert sorted((r["file_offset"], r["num_bytes"]) for r in of_type(opened, "extent")) == [(0, 15), (300_000, 4)]
    verify = run_rawsend("verify", "--key-file", str(key), str(tmp_path / "s2"))
    assert verify.returncode == 0, verify.stderr


def test_state_of_another_source_locked_or_damaged(tree, tmp_path):
    state = tmp_path / "STATE"
    send(tree, state, tmp_path / "s1")
    other = tmp_path / "other"
    other.mkdir()
    proc = run_rawsend("send", "--state", str(state), "-o", str(tmp_path / "x"), str(other))
    assert proc.returncode == 3 and b"STATE belongs to another source" in proc.stderr
    assert not (tmp_path / "x").exists()

    fd = os.open(state, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = run_rawsend("send", "--state", str(state), "-o", str(tmp_path / "x"), str(tree))
    finally:
        os.close(fd)
    assert proc.returncode == 3 and b"STATE is in use" in proc.stderr
    assert not (tmp_path / "x").exists()

    db = sqlite3.connect(state)
    db.execute("UPDATE meta SET value = x'00' WHERE key = 'secret'")
    db.commit()
    db.close()
    proc = run_rawsend("send", "--state", str(state), "-o", str(tmp_path / "x"), str(tree))
    assert proc.returncode == 3 and b"STATE is damaged: its secret is not 32 bytes" in proc.stderr
    assert b"Traceback" not in proc.stderr

    write(tmp_path / "notstate", b"just some text, not a database at all" * 4)
    proc = run_rawsend("send", "--state", str(tmp_path / "notstate"), "-o", str(tmp_path / "x"), str(tree))
    assert proc.returncode == 3 and b"not a rawsend STATE file" in proc.stderr


def test_failed_output_records_nothing(tree, tmp_path):
    state = tmp_path / "STATE"
    send(tree, state, tmp_path / "s1")
    write(tree / "new", os.urandom(8 * 1024 * KiB))  # more than a pipe holds
    proc = run_rawsend("send", "--state", str(state), "-o", str(tmp_path / "no" / "such" / "dir"), str(tree))
    assert proc.returncode == 3
    # a reader that goes away after the first bytes: the stream is cut short, STATE unchanged
    import subprocess
    from tests.conftest import rawsend_argv
    sender = subprocess.Popen(rawsend_argv("send", "--state", str(state), str(tree)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    sender.stdout.read(10)
    sender.stdout.close()
    sender.wait(timeout=60)
    assert sender.returncode != 0
    with State.open(state, tree, create=False) as st:
        assert len(st.streams()) == 1
    send(tree, state, tmp_path / "s2")
    recs = dump(tmp_path / "s2")
    assert recs[1]["base"] == dump(tmp_path / "s1")[0]["stream_id"]
    assert [r["path"] for r in of_type(recs, "mkfile")] == ["new"]


def test_usage_errors(tree, tmp_path):
    proc = run_rawsend("send", "--parent", "abcd", "-o", str(tmp_path / "x"), str(tree))
    assert proc.returncode == 2 and b"--parent applies only with --state" in proc.stderr
    proc = run_rawsend("send", "--state", str(tmp_path / "S"), "--keep-state", "0", "-o", str(tmp_path / "x"),
                       str(tree))
    assert proc.returncode == 2


def test_exclude_and_stream_inside_the_tree(tree, tmp_path):
    state = tmp_path / "STATE"
    err = send(tree, state, tree / "stream.rs", "--exclude", "many")
    recs = dump(tree / "stream.rs")
    paths = {r["path"] for r in of_type(recs, "mkfile", "mkdir")}
    assert not any(p.startswith("many") for p in paths) and "stream.rs" not in paths
    assert "1 path excluded" in err
    send(tree, state, tree / "stream.rs", "--exclude", "many")
    recs = dump(tree / "stream.rs")
    assert not of_type(recs, "mkfile", "unlink", "extent")


def test_dry_run_writes_and_records_nothing(tree, tmp_path):
    state = tmp_path / "STATE"
    proc = run_rawsend("send", "--state", str(state), "-n", str(tree))
    assert proc.returncode == 0 and b"would send full stream" in proc.stderr, proc.stderr
    assert not state.exists()
    send(tree, state, tmp_path / "s1")
    write(tree / "new", b"x")
    proc = run_rawsend("send", "--state", str(state), "-n", "-v", str(tree))
    assert proc.returncode == 0, proc.stderr
    assert b"mkfile new" in proc.stdout and b"would send incremental stream" in proc.stderr
    with State.open(state, tree, create=False) as st:
        assert len(st.streams()) == 1


def test_unchanged_inodes_keep_xattrs_and_changed_ones_are_read(tmp_path):
    """Outside the race guard an inode whose ctime is the parent's keeps the parent's xattr digests
    unread; any xattr change sets ctime, so it is still seen."""
    import time
    src, state = tmp_path / "src", tmp_path / "STATE"
    for name in ("kept", "changed", "removed"):
        write(src / "d" / name, name.encode())
        os.setxattr(src / "d" / name, "user.v", b"one")
    os.setxattr(src / "d", "user.dir", b"dir")
    time.sleep(2.1)  # older than the race guard of the next send
    send(src, state, tmp_path / "s1")
    send(src, state, tmp_path / "s2")
    assert not [r for r in dump(tmp_path / "s2") if r["type"] not in ("header", "base", "end")]
    os.setxattr(src / "d" / "changed", "user.v", b"two")
    os.removexattr(src / "d" / "removed", "user.v")
    send(src, state, tmp_path / "s3")
    recs = dump(tmp_path / "s3")
    ids = ids_by_path(state, src)
    assert [(r["id"], r["name"]) for r in of_type(recs, "set_xattr")] == [(ids[b"d/changed"], "user.v")]
    assert [(r["id"], r["name"]) for r in of_type(recs, "remove_xattr")] == [(ids[b"d/removed"], "user.v")]
    paths = check_manifest(state, src)
    assert [n for n, _ in paths[b"d/kept"].xattrs] == [b"user.v"] and [n for n, _ in paths[b"d"].xattrs] == [b"user.dir"]
    assert paths[b"d/changed"].xattrs != manifest_of_first(state, src)[b"d/changed"].xattrs


def manifest_of_first(state: Path, src: Path) -> dict:
    with State.open(state, src, create=False) as st:
        entries = st.manifest(st.streams()[0])
    paths = walk_paths(entries)
    return {paths[fid]: e for fid, e in entries.items()}


def test_swap_in_a_subdirectory_resets_the_roots_times(tmp_path):
    """Breaking the cycle parks a name in the root, which the receiver then changed: the stream
    restores the root's times even though they did not change here."""
    src, state = tmp_path / "src", tmp_path / "STATE"
    write(src / "x" / "a", b"a")
    write(src / "x" / "b", b"b")
    send(src, state, tmp_path / "s1")
    root_mtime = os.stat(src).st_mtime_ns
    os.rename(src / "x" / "a", src / "x" / "t")
    os.rename(src / "x" / "b", src / "x" / "a")
    os.rename(src / "x" / "t", src / "x" / "b")
    assert os.stat(src).st_mtime_ns == root_mtime
    send(src, state, tmp_path / "s2")
    recs = dump(tmp_path / "s2")
    renames = [(r["path"], r["dest"]) for r in of_type(recs, "rename")]
    assert len(renames) == 3 and renames[0][1].startswith(".rawsend-tmp-")
    root_times = [r for r in of_type(recs, "utimes") if r["id"] == 1]
    assert len(root_times) == 1 and recs.index(root_times[0]) > recs.index(of_type(recs, "rename")[-1])


def test_hard_linked_symlinks_are_separate_entries(tmp_path):
    src, state = tmp_path / "src", tmp_path / "STATE"
    src.mkdir()
    (src / "l").symlink_to("target")
    os.link(src / "l", src / "l2", follow_symlinks=False)
    send(src, state, tmp_path / "s1")
    recs = dump(tmp_path / "s1")
    assert sorted(r["path"] for r in of_type(recs, "symlink")) == ["l", "l2"] and not of_type(recs, "link")
    check_ids(recs, 1)
    send(src, state, tmp_path / "s2")
    recs = dump(tmp_path / "s2")
    check_ids(recs, recs[1]["first_id"])
    assert run_rawsend("verify", str(tmp_path / "s2")).returncode == 0
    paths = check_manifest(state, src)
    assert paths[b"l"].file_id != paths[b"l2"].file_id
