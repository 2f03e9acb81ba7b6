"""STATE: creation, refusals of hostile or damaged files, commit, crash, prune, ids, size."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest

from rawsend.incremental import errors as E
from rawsend.incremental.manifest import pack_names
from rawsend.incremental.state import State
from tests.test_incremental_diff import Sender, write


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    write(root / "a/f", b"file")
    write(root / "g", b"g")
    return root


def refused(path, src, kind):
    with pytest.raises(kind) as info:
        State.open(path, src)
    return str(info.value)


def test_new_state_is_0600_and_empty(tmp_path, src):
    with State.open(tmp_path / "s.db", src) as st:
        assert st.streams() == [] and st.pick_parent() is None
    assert stat.S_IMODE(os.stat(tmp_path / "s.db").st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["s.db", "src"]  # no temporary left


def test_not_a_state(tmp_path, src):
    p = tmp_path / "junk"
    p.write_bytes(b"hello, this is not a database" * 10)
    assert refused(p, src, E.NotAState) == (
        f"not a rawsend STATE file: it is not an SQLite database (at path {str(p)!r}); give the path of a STATE"
        " written by 'rawsend send --state', or a path that does not exist yet")
    assert p.read_bytes() == b"hello, this is not a database" * 10  # untouched
    p.write_bytes(b"")
    assert "it is empty" in refused(p, src, E.NotAState)


def test_another_programs_database(tmp_path, src):
    p = tmp_path / "other.db"
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    assert "application id 0x00000000" in refused(p, src, E.NotAState)


def test_state_with_extra_tables_is_refused(tmp_path, src):
    p = tmp_path / "s.db"
    State.open(p, src).close()
    db = sqlite3.connect(p)
    db.execute("CREATE TRIGGER evil AFTER INSERT ON streams BEGIN DELETE FROM inodes; END")
    db.commit()
    db.close()
    assert "its tables are not those of a rawsend STATE" in refused(p, src, E.NotAState)


def test_other_schema_version(tmp_path, src):
    p = tmp_path / "s.db"
    State.open(p, src).close()
    db = sqlite3.connect(p)
    db.execute("PRAGMA user_version = 7")
    db.close()
    msg = refused(p, src, E.StateVersion)
    assert msg.startswith("STATE has an unsupported schema version: schema version 7, this rawsend reads version 2 (and upgrades version 1)")


def _as_version_1(p) -> None:
    db = sqlite3.connect(p)
    db.execute("DROP TABLE snapshots")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def test_version_1_is_upgraded_in_place(tmp_path, src):
    p = tmp_path / "s.db"
    State.open(p, src).close()
    _as_version_1(p)
    with State.open(p, src) as st:
        assert st.snapshots() == {}
    db = sqlite3.connect(p)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert db.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 0
    db.close()


def test_version_1_with_a_foreign_table_is_not_upgraded(tmp_path, src):
    p = tmp_path / "s.db"
    State.open(p, src).close()
    _as_version_1(p)
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE snapshots (x)")  # version 1 never had it
    db.commit()
    db.close()
    assert "its tables are not those of a rawsend STATE" in refused(p, src, E.NotAState)
    db = sqlite3.connect(p)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()


def test_other_source(tmp_path, src):
    p = tmp_path / "s.db"
    State.open(p, src).close()
    other = tmp_path / "other"
    other.mkdir()
    msg = refused(p, other, E.StateOtherSource)
    assert msg == (f"STATE belongs to another source: it records source {str(src)!r}, not {str(other)!r}"
                   f" (at path {str(p)!r}); use one STATE per source directory")
    assert E.StateOtherSource.exit_code == 3


def test_symlink_is_not_followed(tmp_path, src):
    real = tmp_path / "s.db"
    State.open(real, src).close()
    (tmp_path / "link.db").symlink_to(real)
    assert refused(tmp_path / "link.db", src, E.StateError) == (
        f"cannot use STATE: it is a symbolic link; STATE is never opened through one (at path"
        f" {str(tmp_path / 'link.db')!r}); give the real path of the STATE file")


def test_locked_by_another_send(tmp_path, src):
    p = tmp_path / "s.db"
    with State.open(p, src):
        msg = refused(p, src, E.StateLocked)
    assert msg == (f"STATE is in use: another rawsend send holds its lock (at path {str(p)!r}); wait for the"
                   " other send to finish; a send that was killed leaves no lock behind")
    State.open(p, src).close()  # free again once closed


def test_corrupt_pages_are_refused(tmp_path, src):
    p = tmp_path / "s.db"
    Sender(p, src).send()
    data = bytearray(p.read_bytes())
    page = 4096
    for i in range(page + 8, len(data)):  # every page after the first: garbage
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))
    assert refused(p, src, E.StateDamaged).startswith("STATE is damaged: ")


def test_damaged_rows_and_meta(tmp_path, src):
    p = tmp_path / "s.db"
    Sender(p, src).send()
    db = sqlite3.connect(p)
    db.execute("UPDATE inodes SET names = x'0100' WHERE file_id = 2")
    db.commit()
    with State.open(p, src) as st:
        with pytest.raises(E.StateDamaged) as info:
            st.manifest(st.pick_parent())
    assert "row of file id 2: names cut short at byte 0" in str(info.value)
    db.execute("UPDATE meta SET value = x'00' WHERE key = 'secret'")
    db.commit()
    db.close()
    assert "its secret is not 32 bytes" in refused(p, src, E.StateDamaged)


def test_parent_by_prefix(tmp_path, src):
    p = tmp_path / "s.db"
    s = Sender(p, src)
    s.send()
    s.send()
    with State.open(p, src) as st:
        a, b = st.streams()
        assert b.parent_seq == a.seq and a.parent_seq is None
        assert st.pick_parent() == b and st.pick_parent(a.id_hex[:8].upper()) == a
        with pytest.raises(E.UnknownParent) as info:
            st.pick_parent("zz")
        assert info.value.exit_code == 2
        with pytest.raises(E.UnknownParent) as info:
            st.pick_parent("")
        missing = "0" * 32 if not (a.id_hex.startswith("0" * 32) or b.id_hex.startswith("0" * 32)) else "f" * 32
        with pytest.raises(E.UnknownParent) as info:
            st.pick_parent(missing)
        assert f"matches no stream; STATE holds: {a.id_hex}, {b.id_hex}" in str(info.value)


def test_prune_keeps_the_newest_and_their_rows(tmp_path, src):
    p = tmp_path / "s.db"
    s = Sender(p, src)
    for i in range(5):
        write(src / f"new{i}", b"x" * i)
        s.send(keep=3)
    with State.open(p, src) as st:
        kept = st.streams()
        assert [k.seq for k in kept] == [3, 4, 5]
        oldest = st.manifest(kept[0])
        assert sorted(e.names[0][1] for e in oldest.values() if e.names[0][1].startswith(b"new")) == \
            [b"new0", b"new1", b"new2"]
    db = sqlite3.connect(p)
    assert db.execute("SELECT count(*) FROM inodes WHERE last_seq < 3").fetchone() == (0,)
    db.close()


def test_file_ids_persist_and_are_never_reused(tmp_path, src):
    p = tmp_path / "s.db"
    s = Sender(p, src)
    s.send()
    ids = {e.path: fid for fid, e in s.scan.entries.items()}
    os.rename(src / "g", src / "a/g2")
    os.unlink(src / "a/f")
    write(src / "h", b"new")
    s.send()
    now = {e.path: fid for fid, e in s.scan.entries.items()}
    assert now[b"a/g2"] == ids[b"g"] and now[b"a"] == ids[b"a"]
    assert now[b"h"] > max(ids.values())  # a new inode: a new id, even if it reused f's inode number


def test_keyed_digests_differ_between_states(tmp_path, src):
    with State.open(tmp_path / "one.db", src) as a, State.open(tmp_path / "two.db", src) as b:
        data = b"guess me" * 100
        assert a.digester.extent(data) != b.digester.extent(data)
        assert a.digester.extent(data) not in (hashlib.blake2b(data, digest_size=16).digest(),
                                               hashlib.sha256(data).digest()[:16])
        assert repr(a.digester) == "Digester(<secret>)"


CRASHER = textwrap.dedent("""
    import os, sys, time
    from rawsend.incremental.state import State
    from rawsend.incremental.manifest import scan
    from rawsend.incremental import diff as d
    st = State.open(sys.argv[1], sys.argv[2])
    parent = st.pick_parent()
    old = st.manifest(parent)
    ids = st.file_ids(old)
    now = scan(sys.argv[2], ids, st.digester)
    plan = d.diff(old, now, parent_started_ns=parent.started_ns)
    rec = st.begin(ids, parent, now.started_ns)
    for fid in plan.entries:
        rec.add(plan.entry(fid, ((0, 1, bytes(16)),) if fid in plan.reread else None))
    print("ready", flush=True)
    time.sleep(60)
""")


def test_crash_between_begin_and_commit_leaves_state_as_it_was(tmp_path, src):
    p = tmp_path / "s.db"
    Sender(p, src).send()
    write(src / "added", b"new file")
    os.unlink(src / "g")
    before = p.read_bytes()
    with State.open(p, src) as st:
        streams_before, manifest_before, next_id = st.streams(), st.manifest(st.pick_parent()), st.next_file_id
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(p), str(src)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    assert os.path.exists(f"{p}-journal")  # the new rows are written, uncommitted
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with State.open(p, src) as st:
        assert st.streams() == streams_before
        assert st.manifest(st.pick_parent()) == manifest_before
        assert st.next_file_id == next_id
    assert p.read_bytes() == before


def test_state_growth_per_file_per_stream(tmp_path, capsys):
    src = tmp_path / "src"
    n = 2000
    for i in range(n):
        write(src / f"d{i % 20:02d}" / f"file-{i:05d}.txt", b"%d" % i)
    p = tmp_path / "s.db"
    s = Sender(p, src)
    s.send()
    first = os.path.getsize(p)
    for i in range(5):  # 1% of the files change per stream
        for j in range(i, n, 100):
            write(src / f"d{j % 20:02d}" / f"file-{j:05d}.txt", b"changed %d %d" % (i, j))
        s.send()
    few = (os.path.getsize(p) - first) / 5 / n
    before_all = os.path.getsize(p)
    for i in range(3):  # every file changes in every stream: the worst case
        for j in range(n):
            os.utime(src / f"d{j % 20:02d}" / f"file-{j:05d}.txt", ns=(j, 10**18 + i * 10**9 + j))
        s.send()
    every = (os.path.getsize(p) - before_all) / 3 / n
    with capsys.disabled():
        print(f"\nSTATE: {first / n:.0f} bytes per file for the first stream; growth per file per kept stream:"
              f" {few:.1f} bytes with 1% of files changed, {every:.0f} bytes with every file changed")
    assert few <= 20 and every <= 200


def test_state_readable_by_others_is_named(tmp_path, src):
    p = tmp_path / "s.db"
    State.open(p, src).close()
    os.chmod(p, 0o644)
    said = []
    State.open(p, src, warn=said.append).close()
    assert said == [f"STATE {p} can be read by other users (mode 0644); run: chmod 600 {p}"]


def test_state_that_is_a_directory(tmp_path, src):
    (tmp_path / "dir.db").mkdir()
    assert "cannot open it: Is a directory" in refused(tmp_path / "dir.db", src, E.StateError)


def test_counters_behind_rows_are_refused(tmp_path, src):
    p = tmp_path / "s.db"
    Sender(p, src).send()
    db = sqlite3.connect(p)
    db.execute("UPDATE meta SET value = 2 WHERE key = 'next_file_id'")
    db.commit()
    db.close()
    assert "its counters are behind its rows" in refused(p, src, E.StateDamaged)


def test_manifest_that_is_not_a_tree_is_refused(tmp_path, src):
    p = tmp_path / "s.db"
    Sender(p, src).send()
    db = sqlite3.connect(p)
    # directory a (file id 2) made a child of its own file: names = (parent 3, "a")
    db.execute("UPDATE inodes SET names = ? WHERE file_id = 2", (pack_names(((3, b"a"),)),))
    db.commit()
    db.close()
    with State.open(p, src) as st:
        with pytest.raises(E.StateDamaged) as info:
            st.manifest(st.pick_parent())
    assert "file id 2 is in 3, which is not a directory" in str(info.value)


def test_full_disk_while_recording_leaves_state_as_it_was(tmp_path, is_root):
    if not is_root:
        pytest.skip("mounting a small tmpfs needs root")
    src = tmp_path / "src"
    write(src / "f", b"f")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        p = small / "s.db"
        s = Sender(p, src)
        s.send()
        for i in range(3000):
            write(src / f"d{i % 30}" / f"a-rather-long-file-name-{i:05d}", b"x")
        with pytest.raises(E.StateError) as info:
            s.send()
        assert type(info.value) is E.StateError and info.value.exit_code == 3
        assert str(info.value).startswith("cannot use STATE: cannot write it: SQLite says: database or disk is full")
        with State.open(p, src) as st:
            assert len(st.streams()) == 1 and len(st.manifest(st.pick_parent())) == 2
    finally:
        subprocess.run(["umount", str(small)], check=True)
