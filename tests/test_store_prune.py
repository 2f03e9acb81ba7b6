"""Chains in a store through the command line: ls shows them, verify reports broken ones, rm and
prune never take a base a kept stream needs.

Chains are made by `send --state` (a full stream, then incrementals) and received with
`receive --store`, without the key when encrypted.  Outcomes are read back from the store's
directory: which stream files and index entries are there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rawsend.cli import main
from rawsend.progress import human
from rawsend.store import Store
from rawsend.store.chains import Chains
from tests.conftest import lock_held_by_another_process, run_rawsend


def cli(*args: str, code: int = 0):
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    return r


class Maker:
    """Sends streams of one source (chained through STATE, or full) and receives them into stores."""

    def __init__(self, tmp: Path, encrypted: bool):
        self.tmp, self.src, self.state, self.n = tmp, tmp / "src", tmp / "STATE", 0
        self.src.mkdir()
        self.extra = []
        if encrypted:
            cli("keygen", "-o", str(tmp / "key"))
            self.extra = ["--encrypt", str(tmp / "key")]

    def send(self, chained: bool = True) -> Path:
        self.n += 1
        (self.src / f"f{self.n}").write_bytes(os.urandom(500 + self.n))
        out = self.tmp / f"s{self.n}.rs"
        cli("send", "-q", *(["--state", str(self.state)] if chained else []), "-o", str(out), *self.extra,
            str(self.src))
        return out

    def receive(self, store: Path, stream: Path) -> str:
        before = listed(store)
        cli("receive", "-q", "--store", str(store), "-f", str(stream))
        (sid,) = set(listed(store)) - set(before)
        return sid


def listed(store: Path) -> list[str]:
    """Stream ids with an index entry."""
    return sorted(p.stem for p in (store / "index").iterdir()) if store.exists() else []


def files(store: Path) -> list[str]:
    """Stream ids with a stream file."""
    return sorted(p.stem for p in (store / "streams").iterdir())


def snapshot(store: Path) -> dict[str, bytes]:
    return {f"{d}/{p.name}": p.read_bytes() for d in ("streams", "index", "tmp") for p in (store / d).iterdir()}


def size(store: Path, sid: str) -> str:
    return human((store / "streams" / f"{sid}.rs").stat().st_size)


def edit_entry(store: Path, sid: str, **fields) -> None:
    path = store / "index" / f"{sid}.json"
    obj = json.loads(path.read_bytes())
    obj.update(fields)
    path.write_text(json.dumps(obj))


def entry(store: Path, sid: str) -> dict:
    return json.loads((store / "index" / f"{sid}.json").read_bytes())


@pytest.fixture(params=["plain", "encrypted"])
def maker(request, tmp_path) -> Maker:
    return Maker(tmp_path, request.param == "encrypted")


@pytest.fixture
def chain3(maker, tmp_path):
    """A store holding a full stream a0 and its incrementals a1 and a2."""
    store = tmp_path / "store"
    ids = [maker.receive(store, maker.send()) for _ in range(3)]
    return store, ids


# -- the walk itself -----------------------------------------------------------------------------

def test_needed_by_kept_follows_the_chain_transitively(chain3):
    store, (a0, a1, a2) = chain3
    with Store.open(store) as st:
        entries = st.entries()
        by_id = {e.stream_id: e for e in entries}
        assert st.needed_by_kept(a0, [by_id[a1], by_id[a2]]) == [a1, a2]
        assert st.needed_by_kept(a1, [by_id[a0], by_id[a2]]) == [a2]
        assert st.needed_by_kept(a2, [by_id[a0], by_id[a1]]) == []
        assert st.needed_by_kept(a0, [by_id[a2]]) == [a2]  # through a1, which goes too


def test_a_loop_of_parent_links_ends_the_walk(chain3):
    store, (a0, a1, a2) = chain3
    edit_entry(store, a0, parent={"stream_id": a2, "end_digest": entry(store, a2)["end_digest"]})
    with Store.open(store) as st:
        chains = Chains(st.entries())
        for sid in (a0, a1, a2):
            chain = chains.of(sid)
            assert chain.length is None and chain.broken.kind == "loop" and chain.reach == 3
        assert chains.through(a0, [a1, a2]) == [a1, a2]
        assert chains.needed_by([a2]) == {a1: a2, a0: a2}


# -- rm ------------------------------------------------------------------------------------------

def test_rm_refuses_a_base_a_kept_stream_needs_and_names_both(chain3):
    store, (a0, a1, a2) = chain3
    before = snapshot(store)
    r = cli("rm", str(store), a0[:10], code=3)
    assert r.stderr == (f"rawsend: store problem: stream {a0} is a base of kept streams {a1}, {a2}: they cannot be"
                        f" restored without it (at path '{store}'); remove them together ('rawsend rm STORE {a0}"
                        f" {a1} {a2}'), or keep {a0}; nothing was removed\n")
    assert r.stdout == ""
    r = cli("rm", "--dry-run", str(store), a1, code=3)
    assert r.stderr == (f"rawsend: store problem: stream {a1} is a base of kept stream {a2}: it cannot be restored"
                        f" without it (at path '{store}'); remove them together ('rawsend rm STORE {a1} {a2}'), or"
                        f" keep {a1}; nothing was removed\n")
    assert snapshot(store) == before


def test_rm_of_a_whole_chain_goes_newest_first(chain3):
    store, (a0, a1, a2) = chain3
    sizes = {sid: size(store, sid) for sid in (a0, a1, a2)}
    r = cli("rm", str(store), a0, a2, a1)
    assert r.stdout.splitlines() == [f"removed {sid}  {sizes[sid]} stored" for sid in (a2, a1, a0)]
    assert listed(store) == files(store) == []
    assert list((store / "tmp").iterdir()) == []


def test_rm_of_the_newest_incremental_is_allowed(chain3):
    store, (a0, a1, a2) = chain3
    cli("rm", "-q", str(store), a2)
    assert listed(store) == files(store) == sorted([a0, a1])
    cli("verify", "-q", str(store))


# -- ls ------------------------------------------------------------------------------------------

def test_ls_shows_parent_and_chain_length(chain3, maker):
    store, (a0, a1, a2) = chain3
    f = maker.receive(store, maker.send(chained=False))
    lines = {line.split()[0]: line for line in cli("ls", str(store)).stdout.splitlines()}
    assert "  parent -  chain 1  " in lines[a0] and "  parent -  chain 1  " in lines[f]
    assert f"  parent {a0}  chain 2  " in lines[a1]
    assert f"  parent {a1}  chain 3  " in lines[a2]
    js = {e["stream_id"]: e for e in map(json.loads, cli("ls", "--json", str(store)).stdout.splitlines())}
    assert {sid: (e["parent_id"], e["chain_length"]) for sid, e in js.items()} == {
        a0: (None, 1), a1: (a0, 2), a2: (a1, 3), f: (None, 1)}


def test_ls_shows_a_chain_without_its_base_as_broken(maker, tmp_path):
    s0, s1, s2 = maker.send(), maker.send(), maker.send()
    store = tmp_path / "store"
    a1, a2 = maker.receive(store, s1), maker.receive(store, s2)
    a0 = json.loads(cli("dump", "--json", str(s0)).stdout.splitlines()[0])["stream_id"]
    r = cli("ls", str(store))  # a base may arrive later: no damage
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert f"  parent {a0}  chain broken  " in lines[a1] and f"  parent {a1}  chain broken  " in lines[a2]
    assert r.stderr == ""
    js = {e["stream_id"]: e for e in map(json.loads, cli("ls", "--json", str(store)).stdout.splitlines())}
    assert (js[a1]["parent_id"], js[a1]["chain_length"]) == (a0, None)
    assert (js[a2]["parent_id"], js[a2]["chain_length"]) == (a1, None)
    maker.receive(store, s0)
    js = {e["stream_id"]: e for e in map(json.loads, cli("ls", "--json", str(store)).stdout.splitlines())}
    assert [js[sid]["chain_length"] for sid in (a0, a1, a2)] == [1, 2, 3]


def test_ls_and_verify_report_a_loop_as_damage_and_end(chain3):
    store, (a0, a1, a2) = chain3
    edit_entry(store, a0, parent={"stream_id": a2, "end_digest": entry(store, a2)["end_digest"]})
    loop_hint = ("rawsend never writes a loop: something else changed these index entries; remove the streams of"
                 " the loop, and those that rest on them, with 'rawsend rm', and receive them again")
    proc = run_rawsend("ls", str(store), timeout=60)  # a subprocess: a walk that did not end fails here
    assert proc.returncode == 1
    assert [line.split("  ")[-2] for line in proc.stdout.decode().splitlines()] == ["chain broken"] * 3
    # ls walks a0 first (received first): a0 -> a2 -> a1, whose link back to a0 closes the loop
    assert proc.stderr.decode().splitlines() == [
        f"rawsend: store is damaged: stream {a0}: the parent links of its chain form a loop"
        f" (stream {a1} names base {a0}, which is already in the chain); {loop_hint}"]
    proc = run_rawsend("verify", str(store), timeout=60)
    assert proc.returncode == 1
    err = proc.stderr.decode().splitlines()
    assert len(err) == 4 and err[-1] == "rawsend: 3 of 3 stored streams failed verification"
    assert all("the parent links of its chain form a loop" in line for line in err[:3])


# -- verify STORE --------------------------------------------------------------------------------

def test_verify_reports_each_stream_whose_base_is_missing(maker, tmp_path):
    s0, s1, s2 = maker.send(), maker.send(), maker.send()
    full = maker.send(chained=False)
    store = tmp_path / "store"
    a1, a2, f = maker.receive(store, s1), maker.receive(store, s2), maker.receive(store, full)
    a0 = json.loads(cli("dump", "--json", str(s0)).stdout.splitlines()[0])["stream_id"]
    r = cli("verify", str(store), code=1)
    hint = ("receive that base into the store, or send a full stream (send without --state, or with a new STATE)"
            " and receive it")
    assert r.stderr.splitlines() == [
        f"rawsend: store is damaged: stream {a1} cannot be restored from this store: its chain needs base {a0},"
        f" which is not in the store; {hint}",
        f"rawsend: store is damaged: stream {a2} cannot be restored from this store: its chain needs base {a0}"
        f" (the base of stream {a1}, which it rests on), which is not in the store; {hint}",
        "rawsend: 2 of 3 stored streams failed verification"]
    (ok,) = r.stdout.splitlines()  # the other stream still verifies
    assert ok.startswith(f"{f}: ")
    assert "OK" in ok or "intact" in ok
    r = cli("verify", str(store), "--stream", a2[:8], code=1)
    assert r.stderr.splitlines()[0].startswith(f"rawsend: store is damaged: stream {a2} cannot be restored")
    maker.receive(store, s0)
    r = cli("verify", str(store))
    assert len(r.stdout.splitlines()) == 4 and r.stderr == ""


def test_verify_reports_a_base_with_another_end_digest(chain3):
    store, (a0, a1, a2) = chain3
    want = "ab" * 32
    edit_entry(store, a1, parent={"stream_id": a0, "end_digest": want})
    found = entry(store, a0)["end_digest"]
    r = cli("verify", str(store), code=1)
    assert r.stderr.splitlines()[:2] == [
        f"rawsend: store is damaged: stream {a1} cannot be restored from this store: its chain needs base {a0} with"
        f" END digest {want[:16]}..., and the store's stream {a0} has END digest {found[:16]}...: it is another"
        " stream; receive that base into the store, or send a full stream (send without --state, or with a new"
        " STATE) and receive it",
        f"rawsend: store is damaged: stream {a2} cannot be restored from this store: its chain needs base {a0}"
        f" (the base of stream {a1}, which it rests on) with END digest {want[:16]}..., and the store's stream"
        f" {a0} has END digest {found[:16]}...: it is another stream; receive that base into the store, or send"
        " a full stream (send without --state, or with a new STATE) and receive it"]
    assert r.stdout.splitlines()[0].startswith(f"{a0}: ")


# -- prune ---------------------------------------------------------------------------------------

@pytest.fixture
def mixed(maker, tmp_path):
    """Received in this order: a0 (full), a1 (on a0), f (full, another chain), a2 (on a1), g (full)."""
    store = tmp_path / "store"
    a0 = maker.receive(store, maker.send())
    a1 = maker.receive(store, maker.send())
    f = maker.receive(store, maker.send(chained=False))
    a2 = maker.receive(store, maker.send())
    g = maker.receive(store, maker.send(chained=False))
    return store, {"a0": a0, "a1": a1, "f": f, "a2": a2, "g": g}


def test_prune_keeps_the_newest_and_the_bases_they_need(mixed):
    store, s = mixed
    freed = size(store, s["f"])
    r = cli("prune", str(store), "--keep-last", "2")
    assert r.stdout.splitlines() == [f"kept {s['a0']}  base of kept stream {s['a2']}",
                                     f"kept {s['a1']}  base of kept stream {s['a2']}",
                                     f"removed {s['f']}  {freed} stored"]
    assert r.stderr == f"rawsend: kept 2 newest streams and 2 bases they need; removed 1 stream ({freed} stored)\n"
    assert listed(store) == files(store) == sorted([s["a0"], s["a1"], s["a2"], s["g"]])
    assert list((store / "tmp").iterdir()) == []
    cli("verify", "-q", str(store))


def test_prune_removes_a_chain_newest_first(mixed):
    store, s = mixed
    sizes = {k: size(store, v) for k, v in s.items()}
    r = cli("prune", str(store), "--keep-last", "1")
    assert r.stdout.splitlines() == [f"removed {s[k]}  {sizes[k]} stored" for k in ("a2", "a1", "a0", "f")]
    assert listed(store) == files(store) == [s["g"]]
    r = cli("prune", str(store), "--keep-last", "1")
    assert r.stdout == "" and r.stderr == "rawsend: kept 1 newest stream; removed 0 streams (0 B stored)\n"


def test_prune_dry_run_changes_nothing(mixed):
    store, s = mixed
    before = snapshot(store)
    r = cli("prune", "-n", str(store), "--keep-last", "2")
    assert r.stdout.splitlines() == [f"kept {s['a0']}  base of kept stream {s['a2']}",
                                     f"kept {s['a1']}  base of kept stream {s['a2']}",
                                     f"would remove {s['f']}  {size(store, s['f'])} stored"]
    assert r.stderr.startswith("rawsend: would keep 2 newest streams and 2 bases they need; would remove 1 stream")
    assert snapshot(store) == before


def test_prune_keep_last_larger_than_the_store_removes_nothing(mixed):
    store, s = mixed
    before = snapshot(store)
    r = cli("prune", str(store), "--keep-last", "9")
    assert r.stdout == "" and r.stderr == "rawsend: kept 5 newest streams; removed 0 streams (0 B stored)\n"
    assert snapshot(store) == before


def test_prune_keeps_what_is_left_of_a_broken_chain(maker, tmp_path):
    s0, s1, s2 = maker.send(), maker.send(), maker.send()
    store = tmp_path / "store"
    a1, a2 = maker.receive(store, s1), maker.receive(store, s2)
    f = maker.receive(store, maker.send(chained=False))
    r = cli("prune", str(store), "--keep-last", "2")
    assert r.stdout.splitlines() == [f"kept {a1}  base of kept stream {a2}"]
    assert listed(store) == files(store) == sorted([a1, a2, f])
    cli("prune", "-q", str(store), "--keep-last", "1")
    assert listed(store) == files(store) == [f]


def test_prune_with_a_loop_keeps_the_loop_and_ends(chain3, maker):
    store, (a0, a1, a2) = chain3
    f = maker.receive(store, maker.send(chained=False))
    edit_entry(store, a0, parent={"stream_id": a2, "end_digest": entry(store, a2)["end_digest"]})
    proc = run_rawsend("prune", str(store), "--keep-last", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert listed(store) == files(store) == sorted([a0, a1, a2, f])
    assert {line.split()[1] for line in proc.stdout.decode().splitlines()} == {a0, a1}


def test_prune_refused_while_the_lock_is_held(mixed):
    store, s = mixed
    before = snapshot(store)
    with lock_held_by_another_process(store / "lock"):
        r = cli("prune", str(store), "--keep-last", "1", code=3)
    assert r.stderr == (f"rawsend: store problem: the store is busy: another process holds its lock (at path"
                        f" '{store}'); wait until that receive ended and run the command again; nothing was removed\n")
    assert snapshot(store) == before


def test_prune_refused_while_another_process_receives(mixed):
    store, s = mixed
    receiver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (store / "tmp" / f"{receiver.pid}-0123456789abcdef.rs").write_bytes(b"partial")
        before = snapshot(store)
        r = cli("prune", str(store), "--keep-last", "1", code=3)
        assert f"the store is busy: process {receiver.pid} is receiving into it" in r.stderr
        assert snapshot(store) == before
    finally:
        receiver.kill()
        receiver.wait()


def test_prune_refuses_a_store_with_a_damaged_entry(mixed):
    store, s = mixed
    (store / "index" / f"{s['a0']}.json").write_text("{")
    before = snapshot(store)
    r = cli("prune", str(store), "--keep-last", "1", code=1)
    assert r.stderr.startswith("rawsend: store is damaged: index entry is damaged: not valid JSON")
    assert snapshot(store) == before


@pytest.mark.parametrize("args", [[], ["--keep-last", "0"], ["--keep-last", "x"]])
def test_prune_needs_a_positive_keep_last(mixed, args):
    store, _ = mixed
    before = snapshot(store)
    cli("prune", str(store), *args, code=2)
    assert snapshot(store) == before
