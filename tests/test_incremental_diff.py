"""diff(): the change operations between a parent manifest and the tree now, in order.

Every scenario changes a real tree, asserts the exact operations, then applies them with
strict system calls (a rename or create onto a name still taken fails, rmdir of a non-empty
directory fails) to a copy of the parent tree and checks it became the tree now, data included.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from rawsend.incremental import diff as d
from rawsend.incremental.manifest import scan
from rawsend.incremental.state import State
from rawsend.sources.tree import CHUNK
from tests.treeutil import diff as tree_diff, snapshot

LATER = 10_000_000_000  # scans "start" 10 s after the tree was last changed: nothing is racy


def data_extents(path: Path):
    """(offset, data) of each extent as the tree source cuts them: 128 KiB pieces of data ranges."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    return
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            while start < end:
                chunk = os.pread(fd, min(CHUNK, end - start), start)
                yield start, chunk
                start += len(chunk)
            pos = end
    finally:
        os.close(fd)


class Sender:
    """What a sender does with STATE, minus the stream: scan, diff, read, record, commit."""

    def __init__(self, state_path: Path, src: Path):
        self.state_path, self.src = state_path, src

    def send(self, *, later: int = LATER, parent: str | None = None, keep: int = 10):
        with State.open(self.state_path, self.src) as st:
            info = st.pick_parent(parent)
            old = st.manifest(info) if info else {}
            ids = st.file_ids(old)
            now = scan(self.src, ids, st.digester, started_ns=time.time_ns() + later)
            plan = d.diff(old, now, parent_started_ns=info.started_ns if info else 0)
            rec = st.begin(ids, info, now.started_ns)
            self.sent = {}  # path -> [(offset, data)] of the extents the stream would carry
            self.punched = {}
            data_ops = {o.file_id: o for o in plan.ops if isinstance(o, d.DataChanged)}
            for fid in plan.entries:
                if fid in plan.reread:
                    op = data_ops[fid]
                    matcher = d.ExtentMatcher(op.parent_extents)
                    extents, sent = [], []
                    for offset, data in data_extents(self.src / os.fsdecode(now.entries[fid].path)):
                        digest = st.digester.extent(data)
                        extents.append((offset, len(data), digest))
                        if not matcher.unchanged(offset, len(data), digest):
                            sent.append((offset, data))
                    self.sent[op.path] = sent
                    self.punched[op.path] = matcher.stale(tuple(extents), op.size)
                    rec.add(plan.entry(fid, tuple(extents)))
                else:
                    rec.add(plan.entry(fid))
            rec.commit(os.urandom(16), os.urandom(32), keep=keep)
            self.plan, self.scan = plan, now
            return plan


def apply(plan: d.Plan, sender: Sender, dest: Path) -> None:
    """A strict receiver: paths as the ops give them, never replacing anything."""
    def at(path: bytes) -> Path:
        return dest / os.fsdecode(path) if path else dest

    where = {fid: set(paths) for fid, paths in sender.base_paths.items()}  # file id -> its names now
    for op in plan.ops:
        match op:
            case d.Create():
                target, e = at(op.path), op.entry
                assert not os.path.lexists(target), f"{d.describe(op)} onto a name still taken"
                if e.is_dir:
                    os.mkdir(target, 0o700)
                elif stat.S_ISREG(e.mode):
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                elif stat.S_ISLNK(e.mode):
                    os.symlink(op.target, target)
                else:
                    os.mknod(target, e.mode, e.size)
                if not stat.S_ISLNK(e.mode):
                    os.chmod(target, stat.S_IMODE(e.mode))
                os.lchown(target, e.uid, e.gid)
                where[op.file_id] = {op.path}
            case d.Link():
                assert not os.path.lexists(at(op.path)), f"{d.describe(op)} onto a name still taken"
                os.link(at(sorted(where[op.file_id])[0]), at(op.path), follow_symlinks=False)
                where[op.file_id].add(op.path)
            case d.Unlink():
                os.unlink(at(op.path))
                where[op.file_id].discard(op.path)
            case d.Rmdir():
                os.rmdir(at(op.path))  # fails unless empty
            case d.Rename():
                assert not os.path.lexists(at(op.to_path)), f"{d.describe(op)} onto a name still taken"
                os.rename(at(op.path), at(op.to_path))
                where[op.file_id].discard(op.path)
                where[op.file_id].add(op.to_path)
                if os.path.isdir(at(op.to_path)) and not os.path.islink(at(op.to_path)):
                    _moved(where, op.path, op.to_path)
            case d.Truncate():
                os.truncate(at(op.path), op.size)
            case d.DataChanged():
                fd = os.open(at(op.path), os.O_WRONLY)
                try:
                    for offset, data in sender.sent[op.path]:
                        os.pwrite(fd, data, offset)
                    for start, end in sender.punched[op.path]:
                        os.pwrite(fd, bytes(end - start), start)
                finally:
                    os.close(fd)
            case d.Chown():
                os.lchown(at(op.path), op.uid, op.gid)
            case d.Chmod():
                os.chmod(at(op.path), op.mode)
            case d.SetXattr():
                os.setxattr(at(op.path), op.name, op.value, follow_symlinks=False)
            case d.RemoveXattr():
                os.removexattr(at(op.path), op.name, follow_symlinks=False)
            case d.Utimes():
                os.utime(at(op.path), ns=(op.atime_ns, op.mtime_ns), follow_symlinks=False)


def _moved(where: dict, old: bytes, new: bytes) -> None:
    """A directory moved: the names under it moved with it."""
    for names in where.values():
        for p in list(names):
            if p.startswith(old + b"/"):
                names.discard(p)
                names.add(new + p[len(old):])


@pytest.fixture
def tree(tmp_path):
    """A source tree, a STATE for it, and `change(fn)`: send, copy, change, send again, check."""
    src = tmp_path / "src"
    src.mkdir()
    sender = Sender(tmp_path / "state.db", src)

    class Tree:
        root = src

        def first(self):
            sender.send()
            self.base = tmp_path / "base"
            if self.base.exists():
                subprocess.run(["rm", "-rf", str(self.base)], check=True)
            subprocess.run(["cp", "-a", str(src), str(self.base)], check=True)  # keeps hard links
            sender.base_paths = {fid: s.paths for fid, s in sender.scan.entries.items()}
            return sender.plan

        def second(self):
            plan = sender.send()
            apply(plan, sender, self.base)
            assert tree_diff(snapshot(self.base, blocks=False), snapshot(src, blocks=False)) == []
            return plan

        sent = property(lambda self: sender.sent)
        punched = property(lambda self: sender.punched)

    return Tree()


def lines(plan):
    return plan.lines()


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_full_stream_creates_everything_parents_first(tree):
    write(tree.root / "d/f", b"x" * 10)
    (tree.root / "d/l").symlink_to("f")
    os.link(tree.root / "d/f", tree.root / "g")
    plan = tree.first()
    assert lines(plan) == ["mkdir .", "mkdir d", "mkfile g", "link d/f #3", "symlink d/l",
                           "data g (new)", "utimes .", "utimes d", "utimes g", "utimes d/l"]


def test_nothing_changed_gives_no_operations(tree):
    write(tree.root / "a/b", b"data")
    tree.first()
    assert lines(tree.second()) == []


def test_append_sends_only_the_tail(tree):
    body = os.urandom(3 * CHUNK)
    write(tree.root / "f", body)
    tree.first()
    with open(tree.root / "f", "ab") as f:
        f.write(b"tail")
    plan = tree.second()
    assert lines(plan) == ["truncate f 393220", "data f (size)", "utimes f"]
    assert tree.sent[b"f"] == [(3 * CHUNK, b"tail")]


def test_4k_overwrite_in_a_large_file_sends_one_extent(tree):
    size = 16 * 1024 * 1024
    with open(tree.root / "big", "wb") as f:
        f.write(os.urandom(size))
    tree.first()
    with open(tree.root / "big", "r+b") as f:
        f.seek(5 * 1024 * 1024 + 4096)
        f.write(b"\xff" * 4096)
    plan = tree.second()
    assert lines(plan) == ["data big (mtime)", "utimes big"]
    assert [(o, len(b)) for o, b in tree.sent[b"big"]] == [(5 * 1024 * 1024, CHUNK)]


def test_shrink_sends_a_truncate_and_no_data(tree):
    write(tree.root / "f", os.urandom(2 * CHUNK + 100))
    tree.first()
    os.truncate(tree.root / "f", CHUNK)
    plan = tree.second()
    assert lines(plan) == ["truncate f 131072", "data f (size)", "utimes f"]
    assert tree.sent[b"f"] == []


def test_hole_punched_where_data_was(tree):
    write(tree.root / "f", os.urandom(4 * CHUNK))
    tree.first()
    fd = os.open(tree.root / "f", os.O_RDWR)
    os.truncate(fd, CHUNK)   # drop the rest, then extend: the tail is a hole now
    os.truncate(fd, 4 * CHUNK)
    os.close(fd)
    tree.second()
    assert tree.sent[b"f"] == []
    assert tree.punched[b"f"] == [(CHUNK, 4 * CHUNK)]


def test_rename_and_move_send_renames_and_no_data(tree):
    write(tree.root / "a/file", os.urandom(1000))
    write(tree.root / "a/sub/inner", b"inner")
    write(tree.root / "b/keep", b"k")
    tree.first()
    os.rename(tree.root / "a/file", tree.root / "b/moved")
    os.rename(tree.root / "a/sub", tree.root / "b/sub2")
    plan = tree.second()
    renames = [line for line in lines(plan) if line.startswith("rename")]
    assert renames == ["rename a/file -> b/moved", "rename a/sub -> b/sub2"]
    assert not any(line.startswith(("mk", "unlink", "rmdir")) for line in lines(plan))
    assert all(sent == [] for sent in tree.sent.values())  # re-read (new ctime), nothing sent


def test_swapped_names_go_through_a_temporary_name(tree):
    write(tree.root / "a", b"AAAA")
    write(tree.root / "b", b"BBBB")
    tree.first()
    os.rename(tree.root / "a", tree.root / "t")
    os.rename(tree.root / "b", tree.root / "a")
    os.rename(tree.root / "t", tree.root / "b")
    plan = tree.second()
    assert [line for line in lines(plan) if line.startswith("rename")] == [
        "rename a -> .rawsend-tmp-2", "rename b -> a", "rename .rawsend-tmp-2 -> b"]
    assert all(sent == [] for sent in tree.sent.values())


def test_swapped_directories_and_inverted_nesting(tree):
    write(tree.root / "x/y/f", b"f")
    write(tree.root / "p/q", b"q")
    write(tree.root / "r/s", b"s")
    tree.first()
    os.rename(tree.root / "x/y", tree.root / "y")   # x/y -> y/x: y moves out, then x in
    os.rename(tree.root / "x", tree.root / "y/x")
    os.rename(tree.root / "p", tree.root / "t")     # p <-> r
    os.rename(tree.root / "r", tree.root / "p")
    os.rename(tree.root / "t", tree.root / "r")
    plan = tree.second()
    assert [line for line in lines(plan) if line.startswith("rename")] == [
        "rename x/y -> y", "rename x -> y/x",
        "rename p -> .rawsend-tmp-2", "rename r -> p", "rename .rawsend-tmp-2 -> r"]


def test_hard_links_added_and_removed(tree):
    write(tree.root / "f", b"linked")
    write(tree.root / "g", b"two names")
    os.link(tree.root / "g", tree.root / "g2")
    tree.first()
    os.link(tree.root / "f", tree.root / "f2")
    os.unlink(tree.root / "g2")
    plan = tree.second()
    ns = [line for line in lines(plan) if line.split()[0] in ("link", "unlink")]
    assert ns == ["unlink g2", "link f2 #2"]


def test_file_that_became_a_directory(tree):
    write(tree.root / "n", b"file")
    write(tree.root / "m/inside", b"in")
    tree.first()
    os.unlink(tree.root / "n")
    write(tree.root / "n/child", b"c")
    subprocess.run(["rm", "-r", str(tree.root / "m")], check=True)
    write(tree.root / "m", b"now a file")
    plan = tree.second()
    ns = [line for line in lines(plan) if line.split()[0] in ("mkdir", "mkfile", "unlink", "rmdir")]
    assert ns == ["unlink m/inside", "unlink n", "mkfile m", "mkdir n", "mkfile n/child", "rmdir m"] or \
        ns == ["unlink m/inside", "unlink n", "mkdir n", "mkfile n/child", "rmdir m", "mkfile m"]


def test_removed_tree_goes_children_first(tree):
    write(tree.root / "gone/a/b/f", b"f")
    write(tree.root / "gone/g", b"g")
    write(tree.root / "stay", b"s")
    tree.first()
    subprocess.run(["rm", "-r", str(tree.root / "gone")], check=True)
    plan = tree.second()
    assert lines(plan) == ["unlink gone/a/b/f", "unlink gone/g", "rmdir gone/a/b", "rmdir gone/a", "rmdir gone",
                           "utimes ."]


def test_attributes_xattrs_and_times(tree, is_root):
    write(tree.root / "f", b"attrs")
    os.setxattr(tree.root / "f", b"user.old", b"1")
    os.setxattr(tree.root / "f", b"user.same", b"s")
    tree.first()
    os.chmod(tree.root / "f", 0o640)
    os.removexattr(tree.root / "f", b"user.old")
    os.setxattr(tree.root / "f", b"user.new", b"2")
    os.utime(tree.root / "f", ns=(1_000_000_000, 2_000_000_000))
    if is_root:
        os.chown(tree.root / "f", 1234, 5678)
    plan = tree.second()
    expected = ["data f (mtime)"] + (["chown f 1234:5678"] if is_root else []) + [
        "chmod f 640", "removexattr f user.old", "setxattr f user.new", "utimes f"]
    assert lines(plan) == expected
    assert tree.sent[b"f"] == []


def test_symlink_retargeted_is_a_new_inode(tree):
    (tree.root / "l").symlink_to("one")
    tree.first()
    os.unlink(tree.root / "l")
    (tree.root / "l").symlink_to("two")
    plan = tree.second()
    assert [line for line in lines(plan) if not line.startswith("utimes")] == ["unlink l", "symlink l"]


def test_race_guard_rereads_a_file_changed_near_the_parent_scan(tree, tmp_path):
    write(tree.root / "f", b"same size")
    sender = Sender(tmp_path / "race.db", tree.root)
    sender.send(later=0)       # the scan starts as the file is written: within the granularity
    plan = sender.send()       # nothing changed on disk, yet the file is read again
    assert lines(plan) == ["data f (racy)", "utimes f"]
    assert sender.sent[b"f"] == []
    assert lines(sender.send()) == []  # read once after the guard: trusted again


def test_extent_matcher_stale_ranges():
    m = d.ExtentMatcher(((0, 100, b"a"), (100, 100, b"b"), (300, 50, b"c")))
    assert m.unchanged(0, 100, b"a") and not m.unchanged(0, 100, b"x") and not m.unchanged(0, 99, b"a")
    assert m.stale(((50, 100, b"n"),), 1000) == [(0, 50), (150, 200), (300, 350)]
    assert m.stale((), 320) == [(0, 200), (300, 320)]


def test_rotation_of_many_names(tree):
    for i in range(6):
        write(tree.root / f"log.{i}", b"log %d" % i)
    tree.first()
    os.rename(tree.root / "log.5", tree.root / "spare")
    for i in range(4, -1, -1):  # log.i -> log.(i+1), and the oldest comes round to log.0
        os.rename(tree.root / f"log.{i}", tree.root / f"log.{i + 1}")
    os.rename(tree.root / "spare", tree.root / "log.0")
    plan = tree.second()
    assert sum(line.startswith("rename") for line in lines(plan)) == 7  # six moves, one through a temporary


def test_incremental_against_an_older_parent(tree, tmp_path):
    write(tree.root / "a", b"a")
    tree.first()
    base_id = None
    with State.open(tmp_path / "state.db", tree.root) as st:
        base_id = st.pick_parent().id_hex
    write(tree.root / "b", b"b")
    tree.second()                      # newest stream: has b; the copy now has b too
    subprocess.run(["rm", "-rf", str(tree.base)], check=True)
    os.unlink(tree.root / "a")
    write(tree.root / "c", b"c")
    sender = Sender(tmp_path / "state.db", tree.root)
    plan = sender.send(parent=base_id)  # against the first stream, which never had b
    assert [line for line in lines(plan) if not line.startswith("utimes")] == [
        "unlink a", "mkfile b", "mkfile c", "data b (new)", "data c (new)"]


@pytest.mark.parametrize("seed", range(6))
def test_random_changes_apply_cleanly(tree, seed):
    """Random renames, swaps, moves across directories, links, removals and type changes."""
    import random
    rnd = random.Random(seed)
    for i in range(40):
        depth = rnd.randrange(3)
        parts = [f"d{rnd.randrange(4)}" for _ in range(depth)] + [f"f{i}"]
        write(tree.root.joinpath(*parts), os.urandom(rnd.randrange(1, 300000)))
    tree.first()
    for _ in range(30):
        everything = sorted(p for p in tree.root.rglob("*"))
        if not everything:
            break
        p = rnd.choice(everything)
        dirs = [tree.root] + [q for q in everything if q.is_dir() and not q.is_symlink()]
        action = rnd.randrange(7)
        if action == 0:  # move anywhere not under itself, under a new or taken-then-freed name
            target = rnd.choice([q for q in dirs if q != p and p not in q.parents])
            dest = target / f"m{rnd.randrange(1000)}"
            if not dest.exists():
                os.rename(p, dest)
        elif action == 1 and len(everything) > 1:  # swap two entries, neither inside the other
            q = rnd.choice(everything)
            if q != p and p not in q.parents and q not in p.parents:
                t = tree.root / "swap.tmp"
                os.rename(p, t)
                os.rename(q, p)
                os.rename(t, q)
        elif action == 2 and p.is_file():
            link = rnd.choice(dirs) / f"l{rnd.randrange(1000)}"
            if not link.exists():
                os.link(p, link)
        elif action == 3:
            subprocess.run(["rm", "-rf", str(p)], check=True)
        elif action == 4 and p.is_file():  # a file becomes a directory
            os.unlink(p)
            write(p / "inner", b"now a dir")
        elif action == 5 and p.is_file():
            with open(p, "r+b") as f:
                f.seek(rnd.randrange(max(1, p.stat().st_size)))
                f.write(os.urandom(rnd.randrange(1, 5000)))
        elif action == 6 and p.is_dir():  # a directory becomes a file
            subprocess.run(["rm", "-rf", str(p)], check=True)
            write(p, b"now a file")
    tree.second()  # asserts the applied copy equals the tree now


def test_scan_groups_file_links_skips_sockets_and_keeps_fifos(tmp_path):
    import socket
    from rawsend.incremental.digest import Digester, new_secret
    from rawsend.incremental.manifest import FileIds
    src = tmp_path / "src"
    write(src / "f", b"x")
    os.link(src / "f", src / "f2")
    (src / "l").symlink_to("nowhere")
    os.link(src / "l", src / "l2", follow_symlinks=False)
    os.mkfifo(src / "p")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(src / "sock"))
    try:
        now = scan(src, FileIds({}, 2), Digester(new_secret()))
    finally:
        s.close()
    paths = sorted(tuple(e.paths) for e in now.entries.values())
    # a hard-linked symlink is one entry per name, as a full stream sends it (LINK: regular files only)
    assert paths == [(b"",), (b"f", b"f2"), (b"l",), (b"l2",), (b"p",)]
    assert len({e.entry.file_id for e in now.entries.values()}) == 5
    assert now.report.notices == [f"{src}/sock: socket ignored"]


def test_scan_stays_on_one_filesystem(tmp_path, is_root):
    if not is_root:
        pytest.skip("mounting a tmpfs needs root")
    from rawsend.incremental.digest import Digester, new_secret
    from rawsend.incremental.manifest import FileIds
    src = tmp_path / "src"
    write(src / "f", b"x")
    (src / "mnt").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(src / "mnt")], check=True)
    try:
        write(src / "mnt/inside", b"other filesystem")
        digester = Digester(new_secret())
        one = scan(src, FileIds({}, 2), digester)
        every = scan(src, FileIds({}, 2), digester, one_file_system=False)
    finally:
        subprocess.run(["umount", str(src / "mnt")], check=True)
    assert sorted(e.path for e in one.entries.values()) == [b"", b"f"]
    assert one.report.notices == [f"{src}/mnt: on another filesystem; left out"]
    assert sorted(e.path for e in every.entries.values()) == [b"", b"f", b"mnt", b"mnt/inside"]
