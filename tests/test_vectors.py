"""The golden vectors in spec/vectors pin the format: the reader says what each .expect says,
dump prints each .dump, and the writer reproduces every good stream byte for byte."""

from __future__ import annotations

import importlib.util
import io

import pytest

from rawsend.errors import RawsendError
from rawsend.pipeline import NullSink, receive
from tests.conftest import VECTORS, run_rawsend

spec = importlib.util.spec_from_file_location("vector_generator", VECTORS / "generate.py")
generator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generator)

NAMES = sorted(p.stem for p in VECTORS.glob("*.rs"))


def _expect(name: str) -> dict[str, str]:
    lines = (VECTORS / f"{name}.expect").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


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
    assert type(info.value).__name__ == expect["expect"]
    assert str(info.value.record) == expect["record"]
    assert str(info.value.offset) == expect["offset"]


@pytest.mark.parametrize("name", NAMES)
def test_dump_prints_the_expected_lines(name):
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
        assert proc.returncode == 1
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
    assert generator.main(["--check"]) == 0
