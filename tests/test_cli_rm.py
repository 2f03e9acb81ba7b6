"""rawsend rm STORE ID...: through the command line, with bytes on disk checked."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from rawsend.cli import main
from tests.conftest import lock_held_by_another_process


def _store_with_two(tmp_path: Path) -> tuple[Path, list[str]]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"hello\n")
    store = tmp_path / "store"
    runner = CliRunner()
    for n in range(2):
        (src / "b").write_bytes(b"x" * (n + 1))
        out = tmp_path / f"s{n}.rs"
        assert runner.invoke(main, ["send", "-q", "-o", str(out), str(src)]).exit_code == 0
        r = runner.invoke(main, ["receive", "-q", "--store", str(store), "-f", str(out)])
        assert r.exit_code == 0, r.output
    ids = sorted(p.stem for p in (store / "index").iterdir())
    assert len(ids) == 2
    return store, ids


def _listed(store: Path) -> list[str]:
    return sorted(p.stem for p in (store / "index").iterdir())


def test_rm_by_prefix_removes_entry_and_file(tmp_path):
    store, ids = _store_with_two(tmp_path)
    r = CliRunner().invoke(main, ["rm", str(store), ids[0][:8]])
    assert r.exit_code == 0, r.output
    assert f"removed {ids[0]}" in r.output
    assert _listed(store) == [ids[1]]
    assert sorted(p.name for p in (store / "streams").iterdir()) == [ids[1] + ".rs"]
    assert list((store / "tmp").iterdir()) == []
    r = CliRunner().invoke(main, ["verify", str(store)])
    assert r.exit_code == 0, r.output


def test_rm_dry_run_removes_nothing(tmp_path):
    store, ids = _store_with_two(tmp_path)
    before = {p.name: p.read_bytes() for d in ("streams", "index") for p in (store / d).iterdir()}
    r = CliRunner().invoke(main, ["rm", "--dry-run", str(store), *ids])
    assert r.exit_code == 0, r.output
    assert r.output.count("would remove") == 2
    after = {p.name: p.read_bytes() for d in ("streams", "index") for p in (store / d).iterdir()}
    assert after == before


def test_rm_unknown_id_is_refused_and_nothing_goes(tmp_path):
    store, ids = _store_with_two(tmp_path)
    r = CliRunner().invoke(main, ["rm", str(store), ids[0], "ffffffffffff"])
    assert r.exit_code == 3
    assert "no stream id starts with 'ffffffffffff'" in r.output
    assert _listed(store) == ids


def test_rm_ambiguous_prefix_is_refused(tmp_path):
    store, ids = _store_with_two(tmp_path)
    r = CliRunner().invoke(main, ["rm", str(store), ""])
    assert r.exit_code == 3
    assert "2 stream ids start with" in r.output
    assert _listed(store) == ids


def test_rm_refused_while_the_lock_is_held(tmp_path):
    store, ids = _store_with_two(tmp_path)
    with lock_held_by_another_process(store / "lock"):
        r = CliRunner().invoke(main, ["rm", str(store), ids[0]])
    assert r.exit_code == 3
    assert "the store is busy: another process holds its lock" in r.output
    assert _listed(store) == ids


def test_rm_refused_while_another_process_receives(tmp_path):
    store, ids = _store_with_two(tmp_path)
    receiver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (store / "tmp" / f"{receiver.pid}-0123456789abcdef.rs").write_bytes(b"partial")
        r = CliRunner().invoke(main, ["rm", str(store), ids[0]])
    finally:
        receiver.kill()
        receiver.wait()
    assert r.exit_code == 3
    assert f"process {receiver.pid} is receiving into it" in r.output
    assert _listed(store) == ids


def test_rm_cut_off_after_delisting_is_finished_by_the_next_writer(tmp_path):
    """The state a removal killed after its first rename leaves: an unlisted stream file and a
    dead process's temporary.  Listing shows the stream gone; the next receive removes both."""
    store, ids = _store_with_two(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.rename(store / "index" / (ids[0] + ".json"), store / "tmp" / f"{dead.pid}-00.removed")
    r = CliRunner().invoke(main, ["ls", str(store)])
    assert r.exit_code == 0 and ids[0] not in r.output and ids[1] in r.output
    again = tmp_path / "again.rs"
    assert CliRunner().invoke(main, ["send", "-q", "-o", str(again), str(store), "--stream", ids[1]]).exit_code == 0
    r = CliRunner().invoke(main, ["receive", "-q", "--store", str(store), "-f", str(again)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (store / "streams").iterdir()) == [ids[1] + ".rs"]
    assert list((store / "tmp").iterdir()) == []
