"""`rawsend dump` prints one line per record; --json gives one JSON object per line."""

from __future__ import annotations

import json

from rawsend.stream.records import PREAMBLE
from tests.conftest import VECTORS, run_rawsend


def test_json_lines_describe_every_record():
    proc = run_rawsend("dump", "--json", str(VECTORS / "good_zstd.rs"), check=True)
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["record"] for r in records] == list(range(len(records)))
    assert records[0]["type"] == "header" and records[0]["stream_id"] == "00112233445566778899aabbccddeeff"
    assert records[-1]["type"] == "end" and records[-1]["records"] == len(records) - 1
    extents = [r for r in records if r["type"] == "extent"]
    assert {e["compression"] for e in extents} == {"zstd", "none"}
    fox = [e for e in extents if e["path"] == "docs/fox.txt"]
    assert [e["file_offset"] for e in fox] == [0, 131072]
    assert sum(e["num_bytes"] for e in fox) == 168000
    link = next(r for r in records if r["type"] == "link")
    assert link["path"] == "fox-link.txt" and link["dest"] == "docs/fox.txt"


def test_header_line_shows_the_stream_format_version():
    data = (VECTORS / "good_plain.rs").read_bytes()
    _, version = PREAMBLE.unpack_from(data)
    text = run_rawsend("dump", "-", input=data, check=True).stdout.decode().splitlines()[0]
    assert text.split()[2:4] == ["header", f"version={version}"]
    first = json.loads(run_rawsend("dump", "--json", "-", input=data, check=True).stdout.splitlines()[0])
    assert first["version"] == version == 1


def test_a_path_a_keyless_reader_cannot_know_is_null_not_a_name():
    stream = str(VECTORS / "encrypted" / "good_aes256gcm.rs")
    records = [json.loads(line) for line in run_rawsend("dump", "--json", stream, check=True).stdout.splitlines()]
    extents = [r for r in records if r["type"] == "extent"]
    assert extents and all(r["path"] is None for r in extents)
    lines = run_rawsend("dump", stream, check=True).stdout.decode().splitlines()
    assert all(line.split()[3] == "?" for line in lines if line.split()[2] == "extent")


def test_dump_reads_stdin_and_stops_quietly_when_its_reader_does(tmp_path):
    data = (VECTORS / "good_plain.rs").read_bytes()
    proc = run_rawsend("dump", "-", input=data, check=True)
    assert proc.stdout.decode().splitlines()[1].split()[2] == "mkdir"
    import subprocess
    import sys
    out = subprocess.run(f"{sys.executable} -m rawsend dump {VECTORS / 'good_plain.rs'} | head -n 2",
                         shell=True, capture_output=True)
    assert len(out.stdout.splitlines()) == 2
    assert out.stderr == b""


def test_dump_of_garbage_fails_fast_with_a_clear_error():
    for data in (b"", b"1", b"12345678901234567", b"rawsend\n\0\0\0\0"):
        proc = run_rawsend("dump", "-", input=data, timeout=30)
        assert proc.returncode == 1
        assert proc.stderr.startswith(b"rawsend: ") and b"Traceback" not in proc.stderr


def test_missing_stream_file_and_closed_stdin_are_one_line_errors():
    import subprocess
    import sys

    proc = run_rawsend("verify", "/no/such/stream.rs")
    assert proc.returncode == 3
    assert proc.stderr.decode().strip() == ("rawsend: cannot open the stream file: No such file or directory"
                                            " (at path '/no/such/stream.rs')")
    closed = subprocess.run(f"{sys.executable} -m rawsend verify 0<&-", shell=True, capture_output=True)
    assert closed.returncode == 2
    assert b"there is no standard input" in closed.stderr and b"Traceback" not in closed.stderr
