"""The golden vectors in spec/vectors pin the format: the reader says what each .expect says,
dump prints each .dump, and the writer reproduces every good stream byte for byte.

Each .expect is the verdict written by hand in the generator (never the reader's output), so a
reader that changes its mind fails here, and the generator refuses to write over the vectors.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
from pathlib import Path

import pytest

from rawsend import errors
from rawsend.errors import RawsendError
from rawsend.pipeline import NullSink, receive
from rawsend.stream.records import HEADER_BODY, RECORD_HEADER, Feature
from tests.conftest import VECTORS, run_rawsend

spec = importlib.util.spec_from_file_location("vector_generator", VECTORS / "generate.py")
generator = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = generator  # dataclasses look their module up there
spec.loader.exec_module(generator)

NAMES = sorted(p.stem for p in VECTORS.glob("*.rs"))


def _expect(name: str) -> dict[str, str]:
    lines = (VECTORS / f"{name}.expect").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def _skip_without(expect: dict[str, str]) -> None:
    """A vector whose reason needs an optional module: without it the message differs."""
    if expect.get("needs"):
        pytest.importorskip(expect["needs"], reason=f"the vector's reason needs {expect['needs']}")


def _verdict(expect: dict[str, str]) -> tuple[str, int]:
    """The error class and exit code a reader here gives: without the optional decoder a vector
    names ("needs: lzo"), its payload cannot be judged, and the same record is refused as a local
    matter (DecoderMissing, exit 3) instead."""
    needs = expect.get("needs")
    if needs and importlib.util.find_spec(needs) is None:
        return "DecoderMissing", errors.DecoderMissing.exit_code
    return expect["expect"], 1


def _missing_decoders() -> list[str]:
    return sorted({e["needs"] for e in map(_expect, NAMES) if e.get("needs")
                   and importlib.util.find_spec(e["needs"]) is None})


def _message_start(cls_name: str) -> str:
    """What the CLI prints first for an error class: its message template up to the detail."""
    return "rawsend: " + getattr(errors, cls_name).__doc__.strip().split("{detail}")[0]


def test_there_are_good_and_damaged_vectors():
    kinds = {_expect(n)["expect"] for n in NAMES}
    assert "success" in kinds
    assert {"TruncatedStream", "ChecksumMismatch", "DigestMismatch", "TrailingData", "BadMagic",
            "UnsupportedVersion", "UnsupportedFeature", "DecodeError"} <= kinds


@pytest.mark.parametrize("name", NAMES)
def test_reader_gives_the_expected_outcome(name):
    expect = _expect(name)
    data = (VECTORS / f"{name}.rs").read_bytes()
    if expect["expect"] == "success":
        stats = receive(io.BytesIO(data), NullSink())
        assert stats.stream_bytes == len(data)
        return
    with pytest.raises(RawsendError) as info:
        receive(io.BytesIO(data), NullSink())
    assert type(info.value).__name__ == _verdict(expect)[0]
    assert str(info.value.record) == expect["record"]
    assert str(info.value.offset) == expect["offset"]
    if expect.get("reason"):
        _skip_without(expect)
        assert expect["reason"] in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_dump_prints_the_expected_lines(name):
    _skip_without(_expect(name))
    proc = run_rawsend("dump", str(VECTORS / f"{name}.rs"))
    expected = (VECTORS / f"{name}.dump").read_text()
    shown = proc.stdout.decode()
    if _expect(name)["expect"] == "success":
        assert proc.returncode == 0
        assert shown == expected
    else:
        *lines, error = expected.rstrip("\n").split("\n")
        assert proc.returncode != 0
        assert shown == "".join(line + "\n" for line in lines)
        assert proc.stderr.decode().strip() == "rawsend: " + error.removeprefix("error: ")


@pytest.mark.parametrize("name", NAMES)
def test_verify_exit_code_matches(name):
    proc = run_rawsend("verify", str(VECTORS / f"{name}.rs"))
    if _expect(name)["expect"] == "success":
        assert proc.returncode == 0 and proc.stdout.startswith(b"OK: ")
    else:
        cls_name, code = _verdict(_expect(name))
        assert proc.returncode == code
        assert proc.stderr.decode().startswith(_message_start(cls_name)), proc.stderr
        assert f"record {_expect(name)['record']}".encode() in proc.stderr or _expect(name)["record"] == "None"
        assert f"byte offset {_expect(name)['offset']}".encode() in proc.stderr


def test_writer_reproduces_the_uncompressed_vector():
    assert generator.build(0) == (VECTORS / "good_plain.rs").read_bytes()


def _codec_versions() -> dict[str, str]:
    return dict(line.split(" ", 1) for line in generator.codec_versions().splitlines())


def _recorded_versions() -> dict[str, str]:
    return dict(line.split(" ", 1) for line in (VECTORS / "CODEC_VERSIONS").read_text().splitlines())


@pytest.mark.parametrize("name,codec,lib", [("good_zstd", 2, "zstd"), ("good_zlib", 1, "zlib"),
                                            ("good_lz4", 16, "lz4")])
def test_writer_reproduces_the_compressed_vectors(name, codec, lib):
    # codec output is byte-stable only for one codec library version
    recorded, here = _recorded_versions()[lib], _codec_versions()[lib]
    if recorded != here:
        pytest.skip(f"vectors made with {lib} {recorded}, this is {lib} {here}")
    assert generator.build(codec) == (VECTORS / f"{name}.rs").read_bytes()


def test_generator_check_mode_agrees():
    if _recorded_versions() != _codec_versions():
        pytest.skip(f"codec versions differ: {_recorded_versions()} vs {_codec_versions()}")
    if _missing_decoders():  # the generator refuses to agree with a reader that cannot decode
        pytest.skip(f"the vectors' verdicts need {', '.join(_missing_decoders())} (pip install 'rawsend[lzo]')")
    assert generator.main(["--check"]) == 0


# -- the verdicts are the generator's, written by hand ---------------------------------------------

def test_every_vector_file_is_one_the_generator_declares():
    declared = generator.vectors()
    assert sorted(declared) == NAMES
    for name, (data, verdict) in declared.items():
        assert (VECTORS / f"{name}.expect").read_text() == verdict.text(), name
        if not name.startswith("good_") or name == "good_plain":  # compressed ones: codec versions
            assert (VECTORS / f"{name}.rs").read_bytes() == data, name


def test_every_damaged_vector_names_its_rule_and_place():
    for name in NAMES:
        expect = _expect(name)
        assert expect["rule"], name
        if expect["expect"] != "success":
            assert hasattr(errors, expect["expect"]) and "record" in expect and "offset" in expect, name


def test_the_generator_writes_nothing_when_the_reader_disagrees(tmp_path, monkeypatch):
    # a reader that accepts everything: regenerating must not turn that into the new truth
    monkeypatch.setattr(generator, "describe", lambda data: (None, "accepted\n"))
    assert generator.main(["--out", str(tmp_path)]) == 1
    assert os.listdir(tmp_path) == []


def test_the_generator_names_a_reader_that_fails_elsewhere(monkeypatch):
    err = errors.MalformedRecord("elsewhere", record=2, offset=197)
    verdict = generator.Verdict("x", "MalformedRecord", 3, 278)
    assert "declared MalformedRecord at record 3, offset 278" in generator.disagreement(verdict, err)
    assert generator.disagreement(generator.Verdict("x", "MalformedRecord", 2, 197), err) is None
    assert "declared reason" in generator.disagreement(
        generator.Verdict("x", "MalformedRecord", 2, 197, reason="not there"), err)


class _Recorder(NullSink):
    def __init__(self):
        self.records, self.data = [], {}

    def create(self, rec):
        self.records.append(rec)

    def link(self, rec):
        self.records.append(rec)

    def xattr(self, rec):
        self.records.append(rec)

    def extent(self, rec, data):
        self.data[(rec.file_id, rec.offset)] = bytes(data)


@pytest.mark.parametrize("name", ["good_plain", "good_zstd", "good_lz4", "good_zlib"])
def test_good_vectors_read_back_as_the_items_they_were_made_from(name):
    from rawsend.sources.tree import DataChunk
    sink = _Recorder()
    receive(io.BytesIO((VECTORS / f"{name}.rs").read_bytes()), sink)
    items = generator.items()
    assert sink.records == [i for i in items if not isinstance(i, DataChunk)]
    assert sink.data == {(i.file_id, i.offset): i.data for i in items if isinstance(i, DataChunk)}


# -- every vector through the CLI: receive into a tree and into a store ---------------------------

def _incremental(path: str) -> bool:
    data = Path(path).read_bytes()
    if len(data) < 12 + RECORD_HEADER.size + HEADER_BODY.size or data[:8] != b"rawsend\n":
        return False
    required = HEADER_BODY.unpack_from(data, 12 + RECORD_HEADER.size)[2]
    return bool(required & Feature.INCREMENTAL)


@pytest.mark.parametrize("name", NAMES)
def test_receive_and_store_give_the_verdict_through_the_cli(name, tmp_path):
    expect = _expect(name)
    path = str(VECTORS / f"{name}.rs")
    tree = run_rawsend("receive", "--no-sync", "-f", path, str(tmp_path / "dest"))
    store = run_rawsend("receive", "--store", "-f", path, str(tmp_path / "store"))
    checked = (tree, store)
    if _incremental(path):  # a new DEST holds no base: refused at the header, before any record
        assert tree.returncode == 3 and b"the stream is incremental" in tree.stderr, tree.stderr
        checked = (store,)
    if expect["expect"] == "success":
        for proc in checked:
            assert proc.returncode == 0, proc.stderr
        return
    # a store keeps payloads as they came, undecoded: a decode fault is for the tree receive
    cls_name, code = _verdict(expect)
    for proc in checked if expect["expect"] != "DecodeError" else (tree,):
        stderr = proc.stderr.decode()
        assert proc.returncode == code, stderr
        assert stderr.startswith(_message_start(cls_name)), stderr
        where = f"record {expect['record']}, " if expect["record"] != "None" else ""
        assert f"(at {where}byte offset {expect['offset']})" in stderr, stderr
    assert not (tmp_path / "dest").exists()


# -- encrypted incremental streams: with the key and without it, through the CLI ---------------------

ENCRYPTED = VECTORS / "encrypted"
ENCRYPTED_INCREMENTAL = sorted(p.stem for p in ENCRYPTED.glob("*.rs")
                               if p.stem == "good_incremental" or p.stem.startswith("incremental_"))


def _encrypted_expect(name: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in (ENCRYPTED / f"{name}.expect").read_text().splitlines())


def _key_file(tmp_path: Path, name: str) -> str:
    """The vector's key, with the mode a key file should have (git keeps the published ones 0644)."""
    key = tmp_path / name
    key.write_bytes((ENCRYPTED / name).read_bytes())
    key.chmod(0o600)
    return str(key)


def _gives(proc, verdict: tuple, ok_stdout: bytes | None = None) -> None:
    """``proc`` ended as ``verdict``: ("success",) or (error class, record, offset)."""
    stderr = proc.stderr.decode()
    if verdict == ("success",):
        assert proc.returncode == 0, stderr
        if ok_stdout is not None:
            assert proc.stdout.startswith(ok_stdout), proc.stdout
        return
    cls, record, offset = verdict
    assert proc.returncode == 1, stderr
    assert stderr.startswith(_message_start(cls)), stderr
    assert f"(at record {record}, byte offset {offset})" in stderr, stderr


def _declared_verdicts(expect: dict[str, str]) -> tuple[tuple, tuple]:
    keyed = ("success",) if expect["expect"] == "success" else (expect["expect"], expect["record"], expect["offset"])
    keyless = ("success",) if expect["keyless"] == "success" else (
        expect["keyless"], expect["keyless record"], expect["keyless offset"])
    return keyed, keyless


def test_there_are_good_and_damaged_encrypted_incremental_vectors():
    assert "good_incremental" in ENCRYPTED_INCREMENTAL
    verdicts = {_declared_verdicts(_encrypted_expect(n))[0][0] for n in ENCRYPTED_INCREMENTAL}
    assert {"success", "AuthenticationFailed", "MalformedRecord", "RecordOrderError"} <= verdicts
    # some are refused only with the key, some without it too
    keyless = {_declared_verdicts(_encrypted_expect(n))[1][0] for n in ENCRYPTED_INCREMENTAL}
    assert {"success", "MalformedRecord", "RecordOrderError"} <= keyless


@pytest.mark.parametrize("name", ENCRYPTED_INCREMENTAL)
def test_encrypted_incremental_vectors_give_their_verdicts_with_and_without_the_key(name, tmp_path):
    expect = _encrypted_expect(name)
    keyed, keyless = _declared_verdicts(expect)
    path, key = str(ENCRYPTED / f"{name}.rs"), _key_file(tmp_path, expect["key"])
    _gives(run_rawsend("verify", "--key-file", key, path), keyed, b"OK, authenticated")
    _gives(run_rawsend("verify", path), keyless, b"intact, NOT authenticated")
    _gives(run_rawsend("receive", "--store", "-f", path, str(tmp_path / "store")), keyless)
    dump = run_rawsend("dump", "--key-file", key, path)
    expected = (ENCRYPTED / f"{name}.dump").read_text()
    if keyed == ("success",):
        assert dump.returncode == 0 and dump.stdout.decode() == expected
    else:
        *lines, error = expected.rstrip("\n").split("\n")
        assert dump.stdout.decode() == "".join(line + "\n" for line in lines)
        assert dump.stderr.decode().strip() == "rawsend: " + error.removeprefix("error: ")
    tree = run_rawsend("receive", "--no-sync", "--key-file", key, "-f", path, str(tmp_path / "dest"))
    if _incremental(path):  # a new DEST holds no base: refused at the header, before any record
        assert tree.returncode == 3 and b"the stream is incremental" in tree.stderr, tree.stderr
    else:  # its header lost the feature bit: refused at the first incremental record
        _gives(tree, keyed)
    assert not (tmp_path / "dest").exists()


def test_the_encrypted_incremental_stream_keeps_its_names_and_contents_sealed():
    data = (ENCRYPTED / "good_incremental.rs").read_bytes()
    for secret in (b"plans", b"fifo", b"secret-dir", b"new-plans", b"route.txt", b"note-too", b"user.",
                   b"changed", b"north gate", b"tail"):
        assert secret not in data, secret
    # what stays clear is what a keyless reader needs: the base link, and the extents' clear fields
    base = (ENCRYPTED / "good_aes256gcm.rs").read_bytes()
    assert data[117 + RECORD_HEADER.size:][:16] == base[12 + RECORD_HEADER.size:][:16]  # BASE names its stream
    assert data[117 + RECORD_HEADER.size + 16:][:32] == base[-64:-32]                   # and its END digest


def test_a_store_holding_the_base_links_the_encrypted_incremental_stream_to_it(tmp_path):
    """BASE is clear so that a store without the key links a stream to its base; it tells a BASE whose
    digest is not the END digest of the stream it names (a keyless check of the stream cannot)."""
    store = str(tmp_path / "store")
    run_rawsend("receive", "--store", "-f", str(ENCRYPTED / "good_aes256gcm.rs"), store, check=True)
    good = run_rawsend("receive", "--store", "-f", str(ENCRYPTED / "good_incremental.rs"), store, check=True)
    assert b"is incremental and" not in good.stderr, good.stderr
    other = str(tmp_path / "other")
    run_rawsend("receive", "--store", "-f", str(ENCRYPTED / "good_aes256gcm.rs"), other, check=True)
    forged = run_rawsend("receive", "--store", "-f", str(ENCRYPTED / "incremental_base_digest_wrong.rs"), other,
                         check=True)
    assert ("the store's stream 5eedc0de5eedc0de5eedc0de5eedc0de is not its base: its END digest is"
            " ffe33b19afbd9ee4..., the base record names fee33b19afbd9ee4...") in forged.stderr.decode(), forged.stderr


def test_rekey_keeps_the_base_record_of_an_encrypted_incremental_stream_clear(tmp_path):
    path = ENCRYPTED / "good_incremental.rs"
    old, new, out = _key_file(tmp_path, "test.key"), _key_file(tmp_path, "other.key"), tmp_path / "rekeyed.rs"
    run_rawsend("rekey", "--from", old, "--to", new, "-i", str(path), "-o", str(out), check=True)
    data, rekeyed = path.read_bytes(), out.read_bytes()
    assert len(rekeyed) == len(data)
    assert rekeyed[117:189] == data[117:189]  # BASE, byte for byte: a store without the key still reads it
    verified = run_rawsend("verify", "--key-file", new, str(out))
    assert verified.returncode == 0 and verified.stdout.startswith(b"OK, authenticated"), verified.stderr
    keyless = run_rawsend("dump", str(out), check=True).stdout.decode().splitlines()
    assert keyless[1] == (ENCRYPTED / "good_incremental.keyless.dump").read_text().splitlines()[1]
