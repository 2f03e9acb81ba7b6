"""Every consumer reads through one CheckedReader, so every consumer refuses each damaged vector
with the same error class, record and byte offset: receive into a tree and into a store, verify,
dump, rekey, verify STORE, and a relay of a stored file that was replaced by the damaged bytes.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from rawsend.codecs.crypto import Keyring
from rawsend.codecs.keys import Key, load_key
from rawsend.dump import Dumper, dump_stream
from rawsend.errors import RawsendError, TrailingData
from rawsend.pipeline import NullSink, receive
from rawsend.rekey import rekey
from rawsend.sinks.tree import TreeSink
from rawsend.store import Store, receive_into_store, send_from_store, verify_store
from rawsend.stream.checked import CheckedReader, EndEvent, HeaderEvent, RecordEvent, SealedEvent
from rawsend.stream.records import HEADER_BODY, RECORD_HEADER, Feature
from tests.conftest import VECTORS

ENCRYPTED = VECTORS / "encrypted"
PLAIN_NAMES = sorted(p.stem for p in VECTORS.glob("*.rs"))
ENCRYPTED_NAMES = sorted(p.stem for p in ENCRYPTED.glob("*.rs"))


def _expect(path: Path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in path.read_text().splitlines())


def _verdict(error: RawsendError | None) -> tuple:
    if error is None:
        return ("success",)
    return type(error).__name__, str(error.record), str(error.offset)


def _outcome(run) -> tuple:
    try:
        run()
    except RawsendError as e:
        return _verdict(e)
    return _verdict(None)


def _declared(expect: dict[str, str], prefix: str = "") -> tuple:
    label = "expect" if not prefix else "keyless"
    if expect[label] == "success":
        return ("success",)
    return expect[label], expect[f"{prefix}record"], expect[f"{prefix}offset"]


def _skip_without(expect: dict[str, str]) -> None:
    if expect.get("needs"):
        pytest.importorskip(expect["needs"], reason=f"the vector's reason needs {expect['needs']}")


def _store_holding(tmp: Path, good: bytes, data: bytes) -> Path:
    """A store whose one entry was received from ``good`` and whose file now holds ``data``."""
    tmp.mkdir(parents=True, exist_ok=True)
    store = tmp / "store"
    receipt = receive_into_store(io.BytesIO(good), store)
    path = store / "streams" / f"{receipt.entry.stream_id}.rs"
    os.chmod(path, 0o644)
    path.write_bytes(data)
    return store


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _store_verify(store: Path, keyring) -> None:
    (verdict,) = verify_store(store, keyring=keyring)
    if verdict.error is not None:
        raise verdict.error


def _relay(store: Path) -> bytes:
    out = bytearray()
    send_from_store(store, None, out.extend)
    return bytes(out)


def _from_store(runs: dict, tmp: Path, data: bytes, good: bytes, keyring) -> None:
    """verify STORE and a relay of a stored file replaced by ``data``."""
    runs["verify STORE"] = lambda: _store_verify(_store_holding(tmp / "v", good, data), keyring)
    if keyring is None:
        runs["relay"] = lambda: _relay(_store_holding(tmp / "r", good, data))


def _consumers(tmp: Path, data: bytes, good: bytes, keyring, *, keyed: bool) -> dict[str, object]:
    """Each consumer as a thunk reading ``data``; keyed: with ``keyring``, otherwise without a key."""
    ring = keyring if keyed else None
    shown: list[str] = []
    dumper = Dumper()
    runs = {
        "receive": lambda: receive(io.BytesIO(data), TreeSink(_mkdir(tmp) / "dest", sync=False), keyring=ring,
                                   require_key=keyed),
        "verify": lambda: receive(io.BytesIO(data), NullSink(), keyring=ring, require_key=False),
        "dump": lambda: dump_stream(io.BytesIO(data), lambda raw, rec: shown.append(dumper.line(raw, rec)), ring),
    }
    if keyed and keyring is not None:
        runs["rekey"] = lambda: rekey(io.BytesIO(data), lambda b: None, keyring, Key(bytes(range(32))))
    if not keyed:
        runs["receive --store"] = lambda: receive_into_store(io.BytesIO(data), _mkdir(tmp) / "s")
    return runs


def _is_incremental(data: bytes) -> bool:
    """The header sets the required feature incremental (read from the framing alone)."""
    at = 12 + RECORD_HEADER.size
    if len(data) < at + HEADER_BODY.size or data[:8] != b"rawsend\n":
        return False
    return bool(HEADER_BODY.unpack_from(data, at)[2] & Feature.INCREMENTAL)


def _store_applies(name: str, declared: tuple) -> bool:
    """verify STORE and a relay of a replaced file also compare it with the index entry: its own verdict differs
    for bytes that pass every stream check, so only damaged vectors (and the stored one) apply."""
    return declared != ("success",) or name.startswith(("good_plain", "good_aes", "good_incremental"))


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_every_consumer_gives_the_plain_vectors_verdict(name, tmp_path):
    expect = _expect(VECTORS / f"{name}.expect")
    _skip_without(expect)
    data = (VECTORS / f"{name}.rs").read_bytes()
    declared = _declared(expect)
    incremental = _is_incremental(data)
    inc_good = (VECTORS / "good_incremental.rs").read_bytes()
    made_from_it = data[12 + RECORD_HEADER.size:][:16] == inc_good[12 + RECORD_HEADER.size:][:16]  # its stream id
    good = data if declared == ("success",) else inc_good if made_from_it else (VECTORS / "good_plain.rs").read_bytes()
    runs = _consumers(tmp_path, data, good, None, keyed=False)
    if incremental:  # a tree receive refuses it at the header: its DEST holds no base (test_vectors)
        del runs["receive"]
    if _store_applies(name, declared):
        _from_store(runs, tmp_path / "s", data, good, None)
    got = {what: _outcome(run) for what, run in runs.items()}
    assert got == {what: declared for what in runs}


@pytest.mark.parametrize("name", ENCRYPTED_NAMES)
def test_every_consumer_gives_the_encrypted_vectors_verdicts(name, tmp_path):
    expect = _expect(ENCRYPTED / f"{name}.expect")
    data = (ENCRYPTED / f"{name}.rs").read_bytes()
    keyring = Keyring([load_key(ENCRYPTED / expect["key"])])
    keyless = _declared(expect, "keyless ")
    inc_good = (ENCRYPTED / "good_incremental.rs").read_bytes()
    made_from_it = data[12 + RECORD_HEADER.size:][:16] == inc_good[12 + RECORD_HEADER.size:][:16]  # its stream id
    good = data if name.startswith("good_") else inc_good if made_from_it else \
        (ENCRYPTED / "good_aes256gcm.rs").read_bytes()
    keyed_runs = _consumers(tmp_path / "k", data, good, keyring, keyed=True)
    if _is_incremental(data):  # a tree receive refuses it at the header: its DEST holds no base (test_vectors)
        del keyed_runs["receive"]
    if _store_applies(name, _declared(expect)):
        _from_store(keyed_runs, tmp_path / "ks", data, good, keyring)
    got = {what: _outcome(run) for what, run in keyed_runs.items()}
    assert got == {what: _declared(expect) for what in keyed_runs}
    keyless_runs = _consumers(tmp_path / "n", data, good, keyring, keyed=False)
    if _is_incremental(data):
        del keyless_runs["receive"]
    if _store_applies(name, keyless):
        _from_store(keyless_runs, tmp_path / "ns", data, good, None)
    got = {what: _outcome(run) for what, run in keyless_runs.items()}
    assert got == {what: keyless for what in keyless_runs}


def test_a_relay_sends_the_stored_bytes_unchanged(tmp_path):
    data = (VECTORS / "good_zstd.rs").read_bytes()
    receive_into_store(io.BytesIO(data), tmp_path / "store")
    assert _relay(tmp_path / "store") == data


def test_a_relay_refuses_a_stored_payload_that_does_not_decode_and_never_sends_end(tmp_path):
    corrupt = (VECTORS / "zstd_payload_corrupt.rs").read_bytes()
    expect = _expect(VECTORS / "zstd_payload_corrupt.expect")
    store = _store_holding(tmp_path, (VECTORS / "good_plain.rs").read_bytes(), corrupt)
    out = bytearray()
    with pytest.raises(RawsendError) as info:
        send_from_store(store, None, out.extend)
    assert _verdict(info.value) == (expect["expect"], expect["record"], expect["offset"])
    assert len(out) < len(corrupt) - 96  # END, the last 96 bytes, was held back
    assert bytes(out) == corrupt[:len(out)]


def test_store_keeps_the_bytes_the_reader_consumed(tmp_path):
    data = (ENCRYPTED / "good_chacha20poly1305.rs").read_bytes()
    receipt = receive_into_store(io.BytesIO(data), tmp_path / "store")
    with Store.open(tmp_path / "store") as store:
        assert store.stream_path(receipt.entry.stream_id).read_bytes() == data


def test_the_mac_is_checked_before_what_follows_end(tmp_path):
    """The spec's order at END: counts, digest, MAC, then that the stream ends there."""
    data = (ENCRYPTED / "end_mac_wrong.rs").read_bytes() + b"\0"
    keyring = Keyring([load_key(ENCRYPTED / "test.key")])
    expect = _expect(ENCRYPTED / "end_mac_wrong.expect")
    assert _outcome(lambda: receive(io.BytesIO(data), NullSink(), keyring=keyring)) == _declared(expect)
    with pytest.raises(TrailingData):
        receive(io.BytesIO(data), NullSink(), require_key=False)


def test_events_keyed_and_keyless():
    data = (ENCRYPTED / "good_aes256gcm.rs").read_bytes()
    keyring = Keyring([load_key(ENCRYPTED / "test.key")])
    keyed = list(CheckedReader(io.BytesIO(data), keyring))
    keyless = list(CheckedReader(io.BytesIO(data), require_key=False))
    assert isinstance(keyed[0], HeaderEvent) and isinstance(keyless[0], HeaderEvent)
    assert keyed[-1].authenticated and not keyless[-1].authenticated
    assert all(isinstance(e, EndEvent) for e in (keyed[-1], keyless[-1]))
    assert all(isinstance(e, RecordEvent) for e in keyed[1:-1])
    assert {type(e) for e in keyless[1:-1]} == {RecordEvent, SealedEvent}
    opened = [e for e in keyed if isinstance(e, RecordEvent) and e.payload is not None
              and hasattr(e.record, "disk_num_bytes")]
    assert opened and all(len(e.payload) == e.record.disk_num_bytes - 16 for e in opened)
    sealed = [e for e in keyless if isinstance(e, RecordEvent) and hasattr(e.record, "disk_num_bytes")]
    assert sealed and all(e.payload is None for e in sealed)


@pytest.fixture(autouse=True)
def _tidy(tmp_path):
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
