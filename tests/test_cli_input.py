"""One input convention on every command that reads a stream: STREAM or -f FILE, - is stdin."""

from __future__ import annotations

import os
import pty

import pytest

from tests.conftest import VECTORS, run_rawsend

GOOD = VECTORS / "good_plain.rs"


@pytest.mark.parametrize("command, how", [("verify", "STREAM or -f FILE"), ("dump", "STREAM or -f FILE"),
                                          ("receive", "-f FILE")])
def test_a_terminal_on_stdin_is_refused_naming_options_the_command_has(tmp_path, command, how):
    args = [command] + ([str(tmp_path / "dst")] if command == "receive" else [])
    main, tty = pty.openpty()
    try:
        proc = run_rawsend(*args, stdin=tty, timeout=60)
    finally:
        os.close(main)
        os.close(tty)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "refusing to read a binary stream from a terminal" in err, err
    assert f"or give {how}" in err
    if how.startswith("-f"):
        assert "STREAM" not in err.split("Error:")[-1]


@pytest.mark.parametrize("command", ["verify", "dump"])
@pytest.mark.parametrize("spelling", ["positional", "-f", "--file", "stdin-dash", "stdin"])
def test_verify_and_dump_read_a_stream_every_way(command, spelling):
    args = {"positional": [str(GOOD)], "-f": ["-f", str(GOOD)], "--file": ["--file", str(GOOD)],
            "stdin-dash": ["-"], "stdin": []}[spelling]
    data = GOOD.read_bytes() if spelling.startswith("stdin") else None
    proc = run_rawsend(command, *args, input=data)
    assert proc.returncode == 0, proc.stderr
    expected = run_rawsend(command, str(GOOD)).stdout
    assert proc.stdout == expected and proc.stdout


def test_the_stream_given_twice_is_a_usage_error():
    proc = run_rawsend("verify", str(GOOD), "-f", str(GOOD))
    assert proc.returncode == 2 and b"give the stream once: as STREAM or as -f FILE" in proc.stderr


def test_receive_reads_dash_f_dash_as_stdin(tmp_path):
    proc = run_rawsend("receive", "-f", "-", str(tmp_path / "dst"), input=GOOD.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert any((tmp_path / "dst").iterdir())


@pytest.mark.parametrize("args, line", [
    (["verify", "--zzz"], "rawsend: usage error: No such option '--zzz'; 'rawsend verify --help' shows the usage"),
    (["receive"], "rawsend: usage error: Missing argument 'DEST'; 'rawsend receive --help' shows the usage"),
    (["bogus"], "rawsend: usage error: No such command 'bogus'; 'rawsend --help' lists the commands"),
])
def test_a_usage_error_is_one_line_with_a_hint(args, line):
    proc = run_rawsend(*args)
    assert proc.returncode == 2
    assert proc.stderr.decode() == line + "\n"
