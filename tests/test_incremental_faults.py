"""receive DEST of incremental streams under faults and bad input, through the command line.

A receive SIGKILLed at each point of its apply, then the next rawsend command on DEST (also
with the progress hint lost, and with the roll-forward killed too); a full disk during the
apply; hostile incremental streams against a held base; a stream applied twice, an older one
after a newer, a base held under another key.  After each, DEST is exactly the base tree or
exactly the new tree (contents, modes, times, xattrs, hard links), never a mix.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from rawsend.cli import main
from rawsend.stream.records import (
    Base, Feature, Header, Rename, Rmdir, Truncate, Unlink, UpdateFile,
)
from tests.conftest import run_rawsend
from tests.hostile import T0, HostileWriter, mkfile
from tests.treeutil import diff, snapshot

KiB, MiB = 1024, 1024 * 1024
KILL_HOOK = "RAWSEND_TEST_KILL_AT"


# -- helpers ------------------------------------------------------------------------------------

def cli(*args, code: int = 0) -> str:
    """rawsend ARGS in this process; its stdout and stderr together.  A traceback is a failure
    whatever the exit code (an uncaught exception also exits 1, like a damaged stream)."""
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert r.exit_code == code, r.output
    return r.output


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def state_dir(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.rawsend"


def status(dest: Path) -> dict:
    return json.loads(cli("status", "--json", dest))


def clean_state(dest: Path) -> None:
    """Nothing of an apply left beside DEST: no staging directory, no journal."""
    assert sorted(os.listdir(state_dir(dest))) == ["lock", "state.db"]


def stream_id(stream: Path, *args) -> str:
    out = cli("dump", "--json", *args, stream)
    return json.loads(out.splitlines()[0])["stream_id"]


def same(expected: dict, dest: Path) -> None:
    assert diff(expected, snapshot(dest)) == []


# -- SIGKILL at every point of the apply -------------------------------------------------------

def base_tree(src: Path) -> None:
    write(src / "big", os.urandom(256 * KiB))
    write(src / "log", b"line\n" * 1000)
    for i in range(10):
        write(src / "many" / f"f{i:02}", b"file %d\n" % i)
    write(src / "a", b"I am a")
    write(src / "b", b"I am b")
    write(src / "linked", b"two names")
    (src / "dir").mkdir()
    os.link(src / "linked", src / "dir" / "linked2")
    write(src / "gone" / "x", b"goes with its directory")
    os.setxattr(src / "a", "user.note", b"kept")
    (src / "sym").symlink_to("a")


def change_1(src: Path) -> None:
    """Every kind of commit operation: renames (a cycle, a directory), unlinks, an rmdir, new
    files placed, rewritten files swapped (one with two names), links, attributes."""
    fd = os.open(src / "big", os.O_WRONLY)
    os.pwrite(fd, os.urandom(4 * KiB), 128 * KiB)
    os.close(fd)
    os.truncate(src / "log", 1000)
    os.rename(src / "many", src / "moved")
    os.unlink(src / "moved" / "f00")
    os.unlink(src / "moved" / "f03")
    os.unlink(src / "gone" / "x")
    os.rmdir(src / "gone")
    with open(src / "linked", "ab") as f:
        f.write(b" and more")
    os.link(src / "b", src / "b_link")
    os.rename(src / "a", src / "t")
    os.rename(src / "b", src / "a")
    os.rename(src / "t", src / "b")
    write(src / "new" / "deep" / "file", os.urandom(64 * KiB))
    os.link(src / "new" / "deep" / "file", src / "new" / "file_link")
    os.chmod(src / "b", 0o600)
    os.setxattr(src / "dir", "user.on_dir", b"d")
    os.utime(src / "sym", ns=(1_000_000_000, 2_000_000_000), follow_symlinks=False)


def change_2(src: Path) -> None:
    """Touches what change_1 rewrote or made, so it applies only over a manifest recorded right."""
    with open(src / "dir" / "linked2", "ab") as f:
        f.write(b" again")
    os.rename(src / "moved" / "f01", src / "moved" / "f01r")
    fd = os.open(src / "new" / "deep" / "file", os.O_WRONLY)
    os.pwrite(fd, b"z" * 100, 10)
    os.close(fd)
    os.unlink(src / "b_link")
    os.chmod(src / "new", 0o700)


@dataclass
class Chain:
    root: Path
    src: Path
    streams: list[Path]   # s0 (full), s1, s2
    snaps: list[dict]     # the source's tree at each
    ids: list[str]
    ops: list[str]        # the kind of each operation of s1's journal, in order


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    root = tmp_path_factory.mktemp("chain")
    src, state = root / "src", root / "STATE"
    base_tree(src)
    streams, snaps = [], []
    for n, change in enumerate((None, change_1, change_2)):
        if change is not None:
            change(src)
        streams.append(root / f"s{n}.rs")
        cli("send", "-q", "--state", state, "-o", streams[-1], src)
        snaps.append(snapshot(src))
    ids = [stream_id(s) for s in streams]
    # the journal s1 writes: which operation comes where
    probe = root / "probe"
    cli("receive", "-q", "--no-sync", "-f", streams[0], probe)
    proc = run_rawsend("receive", "-f", str(streams[1]), str(probe), env={**os.environ, KILL_HOOK: "journal"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    ops = [op[0] for op in json.loads((state_dir(probe) / "journal").read_bytes())["ops"]]
    return Chain(root, src, streams, snaps, ids, ops)


def hook(chain: Chain, point: str) -> str:
    """The hook for a point: 'op:first-KIND' is after the first operation of that kind."""
    if point == "op:last":
        return f"op:{len(chain.ops)}"
    if point.startswith("op:first-"):
        kind = point.removeprefix("op:first-")
        assert kind in chain.ops, f"s1's journal has no {kind} operation: {chain.ops}"
        return f"op:{chain.ops.index(kind) + 1}"
    return point


POINTS = ["stage", "journal", "op:first-rename", "op:first-unlink", "op:first-rmdir", "op:first-place",
          "op:first-link", "op:first-swap", "op:first-attr", "op:last", "ops", "db"]


@pytest.mark.parametrize("then", ["status", "receive"])
@pytest.mark.parametrize("point", POINTS)
def test_a_receive_killed_in_its_apply_leaves_the_base_or_the_new_tree(tmp_path, chain, point, then):
    (s0, s1, s2), (base, new, newer), ids = chain.streams, chain.snaps, chain.ids
    dest = tmp_path / "dest"
    cli("receive", "-q", "--no-sync", "-f", s0, dest)
    same(base, dest)
    killed(chain, dest, point)
    committed = point != "stage"  # the journal is written: the commit phase has begun
    assert (state_dir(dest) / "journal").exists() is committed
    if point in ("stage", "journal"):  # before the first operation DEST is untouched
        same(base, dest)
    if then == "status":
        out = cli("status", dest)
        if committed:
            assert f"holds stream {ids[1]}" in out
            assert f"an interrupted apply was pending: completed now, DEST holds stream {ids[1]}" in out
        else:
            assert f"holds stream {ids[0]}" in out
            assert "no interrupted apply pending" in out
        same(new if committed else base, dest)
        clean_state(dest)
        info = status(dest)
        assert (info["stream_id"], info["chain"], info["pending"], info["rolled_forward"]) == (
            ids[int(committed)], ids[:1 + committed], False, None)
        cli("receive", "-q", "-f", s1, dest, code=3 if committed else 0)
    else:
        out = cli("receive", "-f", s1, dest, code=3 if committed else 0)
        if committed:  # rolled forward on open, and then s1 is what DEST holds
            assert f"DEST holds this stream already (stream {ids[1]}): it was applied before" in out
        else:
            assert "applied" in out
    same(new, dest)
    clean_state(dest)
    info = status(dest)
    assert (info["stream_id"], info["chain"], info["pending"]) == (ids[1], ids[:2], False)
    # s2 changes files s1 rewrote and made: it applies only if the rolled-forward manifest is right
    cli("receive", "-q", "-f", s2, dest)
    same(newer, dest)
    clean_state(dest)


def test_rewritten_files_leave_the_times_of_directories_whose_entries_stay(tmp_path):
    """A rewritten file's copy takes its names with a rename: in the root and in a directory
    the stream does not otherwise change, whose times it therefore does not send."""
    src, state, dest = tmp_path / "src", tmp_path / "STATE", tmp_path / "dest"
    write(src / "top", b"top")
    write(src / "d" / "f", b"two names")
    os.link(src / "d" / "f", src / "f_too")
    write(src / "e" / "g", b"g")
    cli("send", "-q", "--state", state, "-o", tmp_path / "s0.rs", src)
    cli("receive", "-q", "--no-sync", "-f", tmp_path / "s0.rs", dest)
    for name in ("top", "d/f", "e/g"):
        with open(src / name, "ab") as f:
            f.write(b" more")
    cli("send", "-q", "--state", state, "-o", tmp_path / "s1.rs", src)
    cli("receive", "-q", "-f", tmp_path / "s1.rs", dest)
    same(snapshot(src), dest)
    clean_state(dest)


def killed(chain: Chain, dest: Path, point: str, *args: str) -> None:
    """rawsend ARGS (a receive of s1 into DEST by default), SIGKILLed at ``point``."""
    args = args or ("receive", "-f", str(chain.streams[1]), str(dest))
    proc = run_rawsend(*args, env={**os.environ, KILL_HOOK: hook(chain, point)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def rolled_forward_to_s1(chain: Chain, dest: Path) -> None:
    out = cli("status", dest)
    assert f"an interrupted apply was pending: completed now, DEST holds stream {chain.ids[1]}" in out
    same(chain.snaps[1], dest)
    clean_state(dest)
    cli("receive", "-q", "-f", chain.streams[2], dest)
    same(chain.snaps[2], dest)


@pytest.mark.parametrize("point", ["op:first-rename", "op:first-place", "op:first-swap", "op:last", "ops"])
def test_a_roll_forward_whose_progress_was_lost_runs_the_journal_again_from_the_start(tmp_path, chain, point):
    """The progress file is a hint, not synced: after a crash of the machine it may be empty
    while operations it did not count are on disk, some of which moved or removed the very
    directories the earlier operations name."""
    dest = tmp_path / "dest"
    cli("receive", "-q", "--no-sync", "-f", chain.streams[0], dest)
    killed(chain, dest, point)
    progress = state_dir(dest) / "journal.progress"
    assert progress.stat().st_size == 8
    progress.write_bytes(b"")
    rolled_forward_to_s1(chain, dest)


def test_a_roll_forward_killed_itself_is_completed_by_the_next_command(tmp_path, chain):
    dest = tmp_path / "dest"
    cli("receive", "-q", "--no-sync", "-f", chain.streams[0], dest)
    killed(chain, dest, "op:first-rename")
    killed(chain, dest, "op:last", "status", str(dest))
    assert (state_dir(dest) / "journal").exists()
    rolled_forward_to_s1(chain, dest)


# -- ENOSPC during the apply ---------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """An 8 MiB tmpfs; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def new_file_too_big(src: Path) -> None:
    write(src / "more" / "huge", os.urandom(6 * MiB))


def small_change_to_a_big_file(src: Path) -> None:  # its copy in staging does not fit
    fd = os.open(src / "big", os.O_WRONLY)
    os.pwrite(fd, b"x" * 4096, 2 * MiB)
    os.close(fd)


@pytest.mark.parametrize("change", [new_file_too_big, small_change_to_a_big_file])
def test_a_full_disk_during_the_apply_leaves_dest_at_the_base_and_no_staged_files(tmp_path, small_fs, change):
    src, state = tmp_path / "src", tmp_path / "STATE"
    write(src / "big", os.urandom(5 * MiB))
    write(src / "small", b"small")
    (src / "sub").mkdir()
    cli("send", "-q", "--state", state, "-o", tmp_path / "s0.rs", src)
    change(src)
    os.rename(src / "small", src / "sub" / "small")  # a namespace change too
    cli("send", "-q", "--state", state, "-o", tmp_path / "s1.rs", src)
    dest = small_fs / "dest"
    cli("receive", "-q", "-f", tmp_path / "s0.rs", dest)
    before, free = snapshot(dest), os.statvfs(small_fs).f_bfree
    proc = run_rawsend("receive", "-f", str(tmp_path / "s1.rs"), str(dest))
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "cannot receive into destination: no space left on the destination's filesystem to stage the" \
           f" changes (at record " in err
    assert f"path '{dest}'); free space and receive again; DEST was not changed" in err
    assert "Traceback" not in err
    same(before, dest)
    assert sorted(os.listdir(small_fs)) == [".dest.rawsend", "dest"]
    clean_state(dest)
    assert os.statvfs(small_fs).f_bfree == free  # the staged bytes are gone, not only their names
    assert status(dest)["stream_id"] == stream_id(tmp_path / "s0.rs")
    # with room, the same stream applies: nothing the failed one left stands in its way
    subprocess.run(["mount", "-o", "remount,size=32m", str(small_fs)], check=True)
    cli("receive", "-q", "-f", tmp_path / "s1.rs", dest)
    assert diff(snapshot(src, blocks=False), snapshot(dest, blocks=False)) == []
    clean_state(dest)


# -- hostile incremental streams against a held base --------------------------------------------

@dataclass
class Held:
    stream: Path
    stream_id: bytes
    digest: bytes


@pytest.fixture(scope="module")
def held(tmp_path_factory) -> Held:
    """A tracked full stream of a small tree with directories, symlinks to a directory and a file."""
    root = tmp_path_factory.mktemp("held")
    src = root / "src"
    write(src / "top", b"top data")
    write(src / "d" / "f", b"in d")
    write(src / "d" / "sub" / "deep", b"deep")
    write(src / "e" / "g", b"in e")
    (src / "sl").symlink_to("d")
    (src / "slf").symlink_to("top")
    cli("send", "-q", "--state", root / "STATE", "-o", root / "s0.rs", src)
    probe = root / "probe"
    cli("receive", "-q", "--no-sync", "-f", root / "s0.rs", probe)
    info = status(probe)
    return Held(root / "s0.rs", bytes.fromhex(info["stream_id"]), bytes.fromhex(info["digest"]))


def manifest(dest: Path) -> tuple[dict[str, int], int]:
    """Path -> file id of everything DEST holds, from its state; and the next free file id."""
    db = sqlite3.connect(f"file:{state_dir(dest) / 'state.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT parent, name, id FROM names").fetchall()
        next_id, = db.execute("SELECT next_id FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        db.close()
    name_of = {i: (p, os.fsdecode(n)) for p, n, i in rows}

    def path(i: int) -> str:
        parent, name = name_of[i]
        return name if parent == 1 else f"{path(parent)}/{name}"
    return {path(i): i for i in name_of}, next_id


# Each case: records after BASE (given the base's ids and next id), which of them is refused,
# and what the message says.  They break rules only a receiver holding the base can check, or
# rules every reader checks, aimed at DEST's own tree.
HOSTILE = {
    "unlink of ..": (lambda i, n: [Unlink(i["top"], 1, b"..")], 0, "unsafe name refused: name b'..'"),
    "rename of ..": (lambda i, n: [Rename(i["d"], 1, b"..", 1, b"x")], 0, "unsafe name refused: name b'..'"),
    "rename to ..": (lambda i, n: [Rename(i["top"], 1, b"top", i["d"], b"..")], 0,
                     "unsafe name refused: name b'..'"),
    "rmdir of ..": (lambda i, n: [Rmdir(i["d/sub"], i["d"], b"..")], 0, "unsafe name refused: name b'..'"),
    "rename of DEST by its empty name": (lambda i, n: [Rename(1, 0, b"", 1, b"x")], 0,
                                         "unsafe name refused: empty name"),
    "rename of DEST as .": (lambda i, n: [Rename(1, 1, b".", 1, b"x")], 0, "unsafe name refused: name b'.'"),
    "rmdir of DEST": (lambda i, n: [Rmdir(1, 1, b"d")], 0, "malformed record: rmdir of file id 1, the root"),
    "unlink of DEST": (lambda i, n: [Unlink(1, 1, b"top")], 0, "malformed record: unlink of file id 1, the root"),
    "rename out of DEST": (lambda i, n: [Rename(i["top"], 1, b"top", 0, b"top")], 0,
                           "parent id 0 is not a directory created earlier"),
    "create beside DEST": (lambda i, n: [mkfile(n, 0, b"beside")], 0, "parent id 0 is not a directory created earlier"),
    "unlink through a symlink": (lambda i, n: [Unlink(i["d/f"], i["sl"], b"f")], 0,
                                 "file id {sl} is not a directory in DEST"),
    "rename through a symlink": (lambda i, n: [Rename(i["d/f"], i["sl"], b"f", 1, b"f2")], 0,
                                 "file id {sl} is not a directory in DEST"),
    "rename into a symlink": (lambda i, n: [Rename(i["top"], 1, b"top", i["sl"], b"top")], 0,
                              "file id {sl} is not a directory in DEST"),
    "create through a symlink": (lambda i, n: [mkfile(n, i["sl"], b"new")], 0,
                                 "file id {sl} is not a directory in DEST"),
    "rename into its own child": (lambda i, n: [Rename(i["d"], 1, b"d", i["d/sub"], b"d")], 0,
                                  "a directory cannot move into itself or below itself"),
    "rename cycle over three records": (lambda i, n: [Rename(i["d/sub"], i["d"], b"sub", 1, b"sub"),
                                                      Rename(i["d"], 1, b"d", i["d/sub"], b"d"),
                                                      Rename(i["d/sub"], 1, b"sub", i["d"], b"sub")], 2,
                                        "a directory cannot move into itself or below itself"),
    "rename into a removed directory": (lambda i, n: [Unlink(i["e/g"], i["e"], b"g"), Rmdir(i["e"], 1, b"e"),
                                                      Rename(i["top"], 1, b"top", i["e"], b"top")], 2,
                                        "names file id {e}, which has no name left in DEST"),
    "rmdir of a directory renamed into": (lambda i, n: [Rename(i["top"], 1, b"top", i["e"], b"top"),
                                                        Unlink(i["e/g"], i["e"], b"g"), Rmdir(i["e"], 1, b"e")], 2,
                                          "the directory is not empty at this point of the stream"),
    "update of a symlink": (lambda i, n: [UpdateFile(i["slf"], 3)], 0,
                            "file id {slf} is not a regular file in DEST"),
    "update of a directory": (lambda i, n: [UpdateFile(i["d"], 0)], 0, "file id {d} is not a regular file in DEST"),
    "truncate of a symlink": (lambda i, n: [Truncate(i["slf"], 0)], 0, "file id {slf} is not a regular file in DEST"),
    "truncate beyond the format's cap": (lambda i, n: [Truncate(i["top"], 1 << 63)], 0,
                                         "limit exceeded: truncate size 9223372036854775808 over"),
    "unlink of a name the base never had": (lambda i, n: [Unlink(i["top"], 1, b"nothere")], 0,
                                            "unlink of nothere: nothere in {dest} is not file id {top}"),
    "unlink of a file id the base never had": (lambda i, n: [Unlink(i["never"], 1, b"top")], 0,
                                               "names file id {never}, which the tree DEST holds does not have"),
    "unlink of a file id no stream made": (lambda i, n: [Unlink(n + 3, 1, b"top")], 0,
                                           "which neither the base nor this stream created before"),
    "rmdir of a directory the base never had": (lambda i, n: [Rmdir(i["d"], 1, b"zz")], 0,
                                                "rmdir of zz: zz in {dest} is not file id {d}"),
}


def hostile_stream(held: Held, records, first_id: int) -> tuple[bytes, list]:
    w = HostileWriter(Header(os.urandom(16), T0, required_features=Feature.INCREMENTAL,
                             optional_features=Feature.TRACKED))
    w.record(Base(held.stream_id, held.digest, first_id))
    at = [w.record(rec) for rec in records]
    return w.stream(), at


def refused_unchanged(tmp_path: Path, held: Held, make, args=()) -> tuple[str, list, dict]:
    """Receive the stream ``make(ids, first_id)`` builds into a DEST holding the base; its output."""
    dest = tmp_path / "dest"
    cli("receive", "-q", "--no-sync", "-f", held.stream, dest)
    ids, next_id = manifest(dest)
    ids["never"] = next_id + 1
    first_id = next_id + 5  # a first id above the next one is allowed: ids between were never used
    data, at = hostile_stream(held, make(ids, first_id), first_id)
    (tmp_path / "bad.rs").write_bytes(data)
    before = snapshot(dest)
    out = cli("receive", *args, "-f", tmp_path / "bad.rs", dest, code=1)
    same(before, dest)
    clean_state(dest)
    info = status(dest)
    assert (info["stream_id"], info["chain_length"], info["pending"]) == (held.stream_id.hex(), 1, False)
    return out, at, {**{k.replace("/", "_"): v for k, v in ids.items()}, "dest": str(dest)}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_incremental_stream_is_refused_by_record_and_offset_and_dest_is_unchanged(tmp_path, held, case):
    make, bad, message = HOSTILE[case]
    out, at, ids = refused_unchanged(tmp_path, held, make)
    assert message.format(**ids) in out
    assert f"(at record {at[bad].index}, byte offset {at[bad].offset}" in out
    assert "Traceback" not in out


# receiver-guarantees.md "Receiver limits": bytes declared by all files, checked when the record
# that would pass the cap arrives.  A TRUNCATE declares a size as MKFILE does: without that, a
# stream could grow a file of the base to any size below 2^63.
@pytest.mark.parametrize("args, cap", [(("--max-bytes", "1048576"), 1 << 20), ((), 1 << 50)],
                         ids=["max-bytes", "default"])
def test_a_truncate_beyond_the_bytes_cap_is_refused(tmp_path, held, args, cap):
    out, at, _ = refused_unchanged(tmp_path, held, lambda i, n: [Truncate(i["top"], cap + 1)], args)
    assert f"limit exceeded: files declare more than {cap} bytes (at record {at[0].index}," \
           f" byte offset {at[0].offset})" in out


# -- a stream applied twice, an older one, a base held under another key ------------------------

def test_a_stream_applied_twice_is_refused_naming_what_dest_holds(tmp_path, chain):
    (s0, s1, _), ids = chain.streams, chain.ids
    dest = tmp_path / "dest"
    cli("receive", "-q", "--no-sync", "-f", s0, dest)
    cli("receive", "-q", "--no-sync", "-f", s1, dest)
    before = snapshot(dest)
    out = cli("receive", "-f", s1, dest, code=3)
    assert (f"rawsend: DEST holds this stream already (stream {ids[1]}): it was applied before (at record 1,"
            f" byte offset ") in out
    assert "nothing to do; nothing was changed" in out
    same(before, dest)
    clean_state(dest)
    assert status(dest)["chain"] == ids[:2]


def test_an_older_stream_after_a_newer_is_refused_naming_both(tmp_path, chain):
    (s0, s1, s2), ids = chain.streams, chain.ids
    dest = tmp_path / "dest"
    for s in (s0, s1, s2):
        cli("receive", "-q", "--no-sync", "-f", s, dest)
    before = snapshot(dest)
    out = cli("receive", "-f", s1, dest, code=3)
    assert (f"DEST holds stream {ids[2]}, and this stream ({ids[1]}) was applied before it: it is older than"
            f" what DEST holds") in out
    assert f"nothing was changed; send a stream against what DEST holds: rawsend send --state STATE" \
           f" --parent {ids[2]} SRC" in out
    same(before, dest)
    clean_state(dest)
    assert status(dest)["chain"] == ids


def test_a_stream_against_an_older_base_than_dest_holds_is_refused_naming_both(tmp_path, chain):
    (s0, s1, s2), ids = chain.streams, chain.ids
    state = chain.root / "STATE"
    s1b = tmp_path / "s1b.rs"  # never applied: made after s2, against s0
    cli("send", "-q", "--state", state, "--parent", ids[0], "-o", s1b, chain.src)
    dest = tmp_path / "dest"
    for s in (s0, s1):
        cli("receive", "-q", "--no-sync", "-f", s, dest)
    before = snapshot(dest)
    out = cli("receive", "-f", s1b, dest, code=3)
    assert (f"DEST holds stream {ids[1]}, newer than stream {ids[0]} that this stream changes: it is older than"
            f" what DEST holds") in out
    assert f"--parent {ids[1]} SRC" in out
    same(before, dest)
    clean_state(dest)
    assert status(dest)["chain"] == ids[:2]


@pytest.fixture
def keyed(tmp_path):
    """s0 sealed with key A and the same s0 rekeyed to key B; s1 (against s0) sealed with key A."""
    src, state = tmp_path / "src", tmp_path / "STATE"
    write(src / "f", b"data")
    write(src / "d" / "g", b"more")
    keys = {}
    for name in ("A", "B"):
        keys[name] = tmp_path / f"key{name}"
        cli("keygen", "-q", "-o", keys[name])
    cli("send", "-q", "--state", state, "--encrypt", keys["A"], "-o", tmp_path / "s0.rs", src)
    cli("rekey", "-q", "--from", keys["A"], "--to", keys["B"], "-o", tmp_path / "s0B.rs", "-f", tmp_path / "s0.rs")
    write(src / "d" / "new", b"new")
    os.rename(src / "f", src / "d" / "f")
    cli("send", "-q", "--state", state, "--encrypt", keys["A"], "-o", tmp_path / "s1.rs", src)
    return src, keys


def test_an_incremental_against_its_base_held_under_another_key_is_refused(tmp_path, keyed):
    src, keys = keyed
    dest = tmp_path / "dest"
    cli("receive", "-q", "--no-sync", "--key-file", keys["B"], "-f", tmp_path / "s0B.rs", dest)
    held = status(dest)
    s0 = stream_id(tmp_path / "s0.rs", "--key-file", keys["A"])
    assert held["stream_id"] == s0  # rekeyed: the same stream id, another END digest and key
    before = snapshot(dest)
    out = cli("receive", "--key-file", keys["A"], "-f", tmp_path / "s1.rs", dest, code=3)
    original = json.loads(cli("dump", "--json", "--key-file", keys["A"], tmp_path / "s0.rs").splitlines()[-1])
    assert (f"DEST holds stream {s0} with END digest {held['digest']} (sealed with key id {held['key_id']}), but"
            f" this stream's base is that stream with END digest {original['digest']}") in out
    assert "receive the copy of stream" in out and "--parent" not in out
    same(before, dest)
    clean_state(dest)
    assert status(dest) == held


def test_an_incremental_sealed_with_a_key_not_given_is_refused_before_anything(tmp_path, keyed):
    src, keys = keyed
    dest = tmp_path / "dest"
    cli("receive", "-q", "--no-sync", "--key-file", keys["A"], "-f", tmp_path / "s0.rs", dest)
    held = status(dest)
    before = snapshot(dest)
    needed = json.loads(cli("dump", "--json", "--key-file", keys["A"], tmp_path / "s1.rs").splitlines()[0])["key_id"]
    given = json.loads(cli("dump", "--json", "--key-file", keys["B"], tmp_path / "s0B.rs").splitlines()[0])["key_id"]
    assert needed == held["key_id"] != given  # the stream and DEST's base are sealed with A; B is given
    out = cli("receive", "--key-file", keys["B"], "-f", tmp_path / "s1.rs", dest, code=4)
    assert f"none of the given keys is the stream's key: it needs key id {needed} (given: {given})" in out
    same(before, dest)
    clean_state(dest)
    assert status(dest) == held
