"""Chains in a store: parent links in the index, through the command line.

Chains are made by `send --state` (full, then incrementals), with and without --encrypt; the
store never has the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from rawsend.cli import main


def cli(*args: str, code: int = 0):
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == code, (r.exit_code, r.output, r.exception)
    return r


def ids(stream: Path) -> tuple[str, str]:
    """The stream id and END digest, as dump shows them (no key needed)."""
    lines = cli("dump", "--json", str(stream)).stdout.splitlines()
    return json.loads(lines[0])["stream_id"], json.loads(lines[-1])["digest"]


def index(store: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_bytes()) for p in sorted((store / "index").iterdir())}


@pytest.fixture(params=["plain", "encrypted"])
def chain(request, tmp_path) -> list[Path]:
    """Three streams of one source, full then two incrementals, each written to a file."""
    src, state = tmp_path / "src", tmp_path / "STATE"
    src.mkdir()
    extra = []
    if request.param == "encrypted":
        key = tmp_path / "key"
        cli("keygen", "-o", str(key))
        extra = ["--encrypt", str(key)]
    streams = []
    for n in range(3):
        (src / f"f{n}").write_bytes(os.urandom(1000 + n))
        out = tmp_path / f"s{n}.rs"
        cli("send", "-q", "--state", str(state), "-o", str(out), *extra, str(src))
        streams.append(out)
    return streams


def test_index_records_each_streams_parent(chain, tmp_path):
    store = tmp_path / "store"
    (i0, d0), (i1, d1), (i2, _) = (ids(s) for s in chain)
    for s in chain:
        r = cli("receive", "--store", str(store), "-f", str(s))
        assert "warning" not in r.stderr
    entries = index(store)
    assert entries[i0]["parent"] is None
    assert entries[i1]["parent"] == {"stream_id": i0, "end_digest": d0}
    assert entries[i2]["parent"] == {"stream_id": i1, "end_digest": d1}
    listed = [json.loads(line) for line in cli("ls", "--json", str(store)).stdout.splitlines()]
    assert {e["stream_id"]: e["parent"] for e in listed} == {k: v["parent"] for k, v in entries.items()}


def test_incremental_without_its_base_is_stored_with_a_warning(chain, tmp_path):
    store = tmp_path / "store"
    i0, d0 = ids(chain[0])
    i1, _ = ids(chain[1])
    r = cli("receive", "--store", str(store), "-f", str(chain[1]))
    assert r.stderr.splitlines()[-1] == (f"rawsend: warning: stream {i1} is incremental and its base {i0} is not in"
                                         " the store: it cannot be restored from this store until its base is"
                                         " received into it")
    assert index(store)[i1]["parent"] == {"stream_id": i0, "end_digest": d0}
    r = cli("receive", "--store", str(store), "-f", str(chain[0]))
    assert "warning" not in r.stderr


def test_entry_written_without_parent_reads_it_from_the_stream_file(chain, tmp_path):
    """Stores written before entries recorded parents stay readable, with the right links."""
    store = tmp_path / "store"
    for s in chain:
        cli("receive", "-q", "--store", str(store), "-f", str(s))
    want = index(store)
    for path in (store / "index").iterdir():
        obj = json.loads(path.read_bytes())
        del obj["parent"]
        path.write_text(json.dumps(obj))
    listed = [json.loads(line) for line in cli("ls", "--json", str(store)).stdout.splitlines()]
    assert {e["stream_id"]: e["parent"] for e in listed} == {k: v["parent"] for k, v in want.items()}
    cli("verify", "-q", str(store))


def test_damaged_parent_field_is_a_damaged_entry(chain, tmp_path):
    store = tmp_path / "store"
    cli("receive", "-q", "--store", str(store), "-f", str(chain[1]))
    (path,) = (store / "index").iterdir()
    obj = json.loads(path.read_bytes())
    obj["parent"] = {"stream_id": "nothex"}
    path.write_text(json.dumps(obj))
    r = cli("ls", str(store), code=1)
    assert r.stderr == (f"rawsend: store is damaged: index entry is damaged: parent is neither null nor an object with"
                        f" stream_id (32 lowercase hex digits) and end_digest (64) (at path '{path}'); delete this"
                        " entry and its stream file, then receive the stream again\n")
