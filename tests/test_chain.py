"""Chains (spec/chain-format.md): restore STORE DEST, send STORE --chain | receive, through the CLI.

A chain full -> incremental x3 is sent with `send --state` into a keyless store; at every step
the tree restored from the store (by `restore`, and by `send STORE --chain | receive`) must equal
the source as it was then. Damaged and hostile chains are refused with DEST left absent.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import pytest

from rawsend.pipeline import NullSink, receive
from rawsend.stream.chain import (
    CHAIN_PREAMBLE, MEMBER_HEADER, ChainReader, chain_preamble, member_header, starts_chain,
)
from tests.conftest import pipeline, run_rawsend
from tests.test_incremental_receive import CHANGES, header_and_end, send, src  # noqa: F401 - src: a fixture
from tests.treeutil import diff, snapshot


def rawsend(*args: str, code: int = 0, **kw) -> str:
    proc = run_rawsend(*args, **kw)
    assert proc.returncode == code, (proc.returncode, proc.stderr.decode())
    return proc.stderr.decode()


def stream_id(stream: Path, *key_args: str) -> str:
    return header_and_end(stream, *key_args)[0]["stream_id"]


def leftovers(dest: Path) -> list[str]:
    """What a chain receive left beside DEST besides DEST's state (lock, state.db)."""
    beside = [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")
              and p.name != f".{dest.name}.rawsend"]
    sdir = dest.parent / f".{dest.name}.rawsend"
    inside = [p.name for p in sdir.iterdir() if p.name not in ("lock", "state.db")] if sdir.exists() else []
    return beside + inside


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "key"
    rawsend("keygen", "-o", str(path))
    return path


@pytest.fixture(params=["plain", "encrypted"])
def stored(request, tmp_path, src, key):  # noqa: F811 - src is the fixture imported above
    """A keyless store holding s0 (full) .. s3; the source's snapshot at each step; the key args."""
    state, store = tmp_path / "STATE", tmp_path / "store"
    send_args = ("--encrypt", str(key)) if request.param == "encrypted" else ()
    key_args = ("--key-file", str(key)) if request.param == "encrypted" else ()
    steps = []
    for n in range(len(CHANGES) + 1):
        if n:
            CHANGES[n - 1](src)
        out = tmp_path / f"s{n}.rs"
        send(src, state, out, *send_args)
        rawsend("receive", "--store", str(store), "-f", str(out))
        steps.append((stream_id(out), snapshot(src)))
    return store, steps, key_args


def test_restore_gives_the_source_as_it_was_at_every_stream_of_the_chain(tmp_path, stored):
    store, steps, key_args = stored
    for n, (sid, tree) in enumerate(steps):
        dest = tmp_path / f"restored{n}"
        err = rawsend("restore", "--stream", sid[:12], *key_args, str(store), str(dest))
        assert f"restored a chain of {n + 1} stream" in err
        assert diff(tree, snapshot(dest)) == []
        info = json.loads(run_rawsend("status", "--json", str(dest), check=True).stdout)
        assert (info["stream_id"], info["chain_length"], info["pending"]) == (sid, n + 1, False)
        assert leftovers(dest) == []


def test_send_store_chain_piped_into_receive_gives_the_same_tree(tmp_path, stored):
    store, steps, key_args = stored
    for n in (0, len(steps) - 1):
        dest = tmp_path / f"piped{n}"
        sender, receiver = pipeline([str(store), "--stream", steps[n][0], "--chain"], [*key_args, str(dest)])
        assert (sender.returncode, receiver.returncode) == (0, 0), receiver.stderr.decode()
        assert f"relayed the chain of {n + 1} stream" in sender.stderr.decode()
        assert diff(steps[n][1], snapshot(dest)) == []


def test_a_restored_tree_takes_the_next_incremental_stream(tmp_path, stored):
    store, steps, key_args = stored
    dest = tmp_path / "dest"
    rawsend("restore", "--stream", steps[2][0], *key_args, str(store), str(dest))
    rawsend("receive", *key_args, "-f", str(tmp_path / "s3.rs"), str(dest))
    assert diff(steps[3][1], snapshot(dest)) == []


def test_a_chain_received_into_a_store_stores_every_member_unchanged(tmp_path, stored):
    store, steps, _ = stored
    copy = tmp_path / "copy"
    sender, receiver = pipeline([str(store), "--chain"], ["--store", str(copy)])
    assert (sender.returncode, receiver.returncode) == (0, 0), receiver.stderr.decode()
    for sid, _tree in steps:
        assert (copy / "streams" / f"{sid}.rs").read_bytes() == (store / "streams" / f"{sid}.rs").read_bytes()
        ours, theirs = (json.loads((s / "index" / f"{sid}.json").read_bytes()) for s in (copy, store))
        assert {k: v for k, v in ours.items() if k != "received_ns"} == \
               {k: v for k, v in theirs.items() if k != "received_ns"}


# -- damaged and hostile chains: refused, DEST absent ------------------------------------------

@pytest.fixture
def chain_bytes(tmp_path, src):  # noqa: F811
    """The members s0..s2 of a plain chain, as the bytes of their stream files."""
    state = tmp_path / "STATE"
    members = []
    for n in range(3):
        if n:
            CHANGES[n - 1](src)
        out = tmp_path / f"m{n}.rs"
        send(src, state, out)
        members.append(out.read_bytes())
    return members


def framed(members: list[bytes], count: int | None = None) -> bytes:
    return chain_preamble(len(members) if count is None else count) + b"".join(
        member_header(len(m)) + m for m in members)


def refused(tmp_path, data: bytes, code: int, *messages: str) -> None:
    dest = tmp_path / "dest"
    err = rawsend("receive", str(dest), code=code, input=data)
    for m in messages:
        assert m in err, err
    assert "Traceback" not in err
    assert not dest.exists()
    assert leftovers(dest) == []


def test_member_two_cut_short_is_a_truncated_stream_naming_the_member(tmp_path, chain_bytes):
    data = framed(chain_bytes)
    cut = CHAIN_PREAMBLE.size + MEMBER_HEADER.size + len(chain_bytes[0]) + MEMBER_HEADER.size + 40
    refused(tmp_path, data[:cut], 1, "stream ends early", "chain member 2 of 3")


def test_a_chain_cut_before_its_last_member_is_truncated(tmp_path, chain_bytes):
    refused(tmp_path, framed(chain_bytes[:2], count=3), 1, "stream ends early", "the header of member 3",
            f"byte offset {len(framed(chain_bytes[:2]))}")


def test_a_byte_after_the_last_member_is_trailing_data(tmp_path, chain_bytes):
    data = framed(chain_bytes)
    refused(tmp_path, data + b"\0", 1, "trailing data after END record", "last of the chain's 3 members",
            f"byte offset {len(data)}")


def test_a_member_length_past_its_stream_is_trailing_data_inside_the_member(tmp_path, chain_bytes):
    m0 = chain_bytes[0]
    data = chain_preamble(1) + member_header(len(m0) + 1) + m0 + b"x"
    refused(tmp_path, data, 1, "trailing data after END record", "chain member 1 of 1",
            f"byte offset {CHAIN_PREAMBLE.size + MEMBER_HEADER.size + len(m0)}")


def test_members_out_of_order_are_refused_at_the_base_record(tmp_path, chain_bytes):
    m0, m1, m2 = chain_bytes
    refused(tmp_path, framed([m0, m2, m1]), 1, "chain member 2 of 3", "its base is stream", "not member 1")


def test_an_incremental_first_member_is_refused(tmp_path, chain_bytes):
    refused(tmp_path, framed(chain_bytes[1:]), 1, "the first member of a chain must be a full stream",
            "chain member 1 of 2", f"byte offset {CHAIN_PREAMBLE.size + MEMBER_HEADER.size + 12}")


def test_a_full_stream_after_the_first_member_is_refused(tmp_path, chain_bytes):
    refused(tmp_path, framed([chain_bytes[0], chain_bytes[0]]), 1,
            "every member of a chain after the first must be an incremental stream", "chain member 2 of 2")


@pytest.mark.parametrize("version, count, message", [(2, 1, "unsupported stream version: chain version 2"),
                                                     (1, 0, "gives 0 members"),
                                                     (1, 70000, "gives 70000 members")])
def test_a_bad_chain_preamble_is_refused(tmp_path, chain_bytes, version, count, message):
    data = CHAIN_PREAMBLE.pack(b"rawchain", version, count) + member_header(len(chain_bytes[0])) + chain_bytes[0]
    refused(tmp_path, data, 1, message)


def test_a_chain_killed_in_its_last_apply_leaves_no_dest_and_is_cleaned_up_next_time(tmp_path, chain_bytes):
    dest, data = tmp_path / "dest", framed(chain_bytes)
    proc = run_rawsend("receive", str(dest), input=data, env={**os.environ, "RAWSEND_TEST_KILL_AT": "ops"})
    assert proc.returncode == -9
    assert not dest.exists()
    assert leftovers(dest)  # the dead process's private directory
    rawsend("receive", str(dest), input=data)
    assert leftovers(dest) == []
    info = json.loads(run_rawsend("status", "--json", str(dest), check=True).stdout)
    assert info["chain_length"] == 3


def test_a_chain_into_a_dest_that_is_not_empty_is_refused_before_reading(tmp_path, chain_bytes):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_bytes(b"mine")
    err = rawsend("receive", str(dest), code=3, input=framed(chain_bytes))
    assert "it exists and is not an empty directory" in err
    assert [p.name for p in dest.iterdir()] == ["keep"]


def test_include_and_force_do_not_apply_to_a_chain(tmp_path, chain_bytes):
    err = rawsend("receive", "--include", "a", str(tmp_path / "dest"), code=2, input=framed(chain_bytes))
    assert "--include cannot apply to a chain" in err


# -- restore refusals ---------------------------------------------------------------------------

def test_restore_without_a_base_in_the_store_names_it_and_makes_no_dest(tmp_path, stored):
    store, steps, key_args = stored
    for p in ("index", "streams"):  # the base of s2 goes
        (store / p / f"{steps[1][0]}.{'json' if p == 'index' else 'rs'}").unlink()
    dest = tmp_path / "dest"
    err = rawsend("restore", "--stream", steps[2][0], *key_args, str(store), str(dest), code=1)
    assert f"stream {steps[2][0]} cannot be restored from this store: its chain needs base {steps[1][0]}," \
           " which is not in the store" in err
    assert not dest.exists() and leftovers(dest) == []
    err = run_rawsend("send", str(store), "--stream", steps[2][0], "--chain")
    assert err.returncode == 1 and err.stdout == b""


def test_restore_of_a_damaged_stored_member_names_the_stored_stream(tmp_path, stored):
    store, steps, key_args = stored
    path = store / "streams" / f"{steps[1][0]}.rs"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    err = rawsend("restore", *key_args, str(store), str(dest), code=1)
    assert f"stored stream {steps[1][0]}" in err
    assert not dest.exists() and leftovers(dest) == []


def test_restore_of_an_encrypted_chain_without_its_key_is_a_key_problem(tmp_path, stored):
    store, steps, key_args = stored
    if not key_args:
        pytest.skip("the plain chain needs no key")
    dest = tmp_path / "dest"
    err = rawsend("restore", str(store), str(dest), code=4)
    assert "stream is encrypted and no key was given" in err and "chain member 1 of 4" in err
    assert not dest.exists() and leftovers(dest) == []


def test_member_framing_constants_are_the_spec_layout():
    assert CHAIN_PREAMBLE.size == 16 and MEMBER_HEADER.size == 8
    assert chain_preamble(3) == b"rawchain" + struct.pack("<II", 1, 3)


def test_input_that_cannot_peek_is_read_whole_as_a_stream_or_a_chain(chain_bytes):
    """Without peek (BytesIO has none) the first 8 bytes are read, then put back in front."""
    is_chain, stream = starts_chain(io.BytesIO(chain_bytes[0]))
    assert not is_chain
    assert receive(stream, NullSink()).stream_bytes == len(chain_bytes[0])
    is_chain, stream = starts_chain(io.BytesIO(framed(chain_bytes)))
    assert is_chain
    members = [receive(m.input, NullSink()).stream_bytes for m in ChainReader(stream)]
    assert members == [len(m) for m in chain_bytes]
