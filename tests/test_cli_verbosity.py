"""-v names each file (tar -v), -vv each record too, -q leaves only errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_rawsend


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f\x1b").write_bytes(b"x" * 10)
    return src


def test_send_and_receive_v_name_each_path_escaped(tmp_path, tree):
    out = tmp_path / "s.rs"
    sent = run_rawsend("send", "-v", "-o", str(out), str(tree))
    assert sent.returncode == 0
    assert sent.stderr.decode().splitlines()[:3] == ["./", "d/", "d/f\\x1b"]
    got = run_rawsend("receive", "-v", "-f", str(out), str(tmp_path / "dst"))
    assert got.returncode == 0 and got.stdout.decode().splitlines() == ["./", "d/", "d/f\\x1b"]
    assert got.stderr.decode().startswith("rawsend: received 1 file, 2 dirs")


def test_vv_adds_record_detail(tmp_path, tree):
    out = tmp_path / "s.rs"
    sent = run_rawsend("send", "-vv", "-o", str(out), str(tree))
    assert "  extent at byte 0, 10 bytes" in sent.stderr.decode().splitlines()
    got = run_rawsend("verify", "-vv", str(out))
    assert got.returncode == 0 and any(" extent " in line and "num_bytes=10" in line
                                       for line in got.stdout.decode().splitlines())


@pytest.mark.parametrize("command", ["send", "receive", "verify", "keygen"])
def test_q_prints_nothing_on_success(tmp_path, tree, command):
    out = tmp_path / "s.rs"
    run_rawsend("send", "-o", str(out), str(tree), check=True)
    args = {"send": ["send", "-q", "-o", str(tmp_path / "t.rs"), str(tree)],
            "receive": ["receive", "-q", "-f", str(out), str(tmp_path / "dst")],
            "verify": ["verify", "-q", str(out)],
            "keygen": ["keygen", "-q", "-o", str(tmp_path / "k")]}[command]
    proc = run_rawsend(*args)
    assert proc.returncode == 0 and proc.stderr == b"" and proc.stdout == b""


def test_q_still_prints_errors(tmp_path):
    bad = tmp_path / "bad.rs"
    bad.write_bytes(b"not a stream at all")
    proc = run_rawsend("verify", "-q", str(bad))
    assert proc.returncode == 1 and proc.stderr.startswith(b"rawsend: not a rawsend stream")


@pytest.mark.parametrize("command", ["send", "receive", "verify", "dump", "list", "ls", "keygen", "rekey"])
def test_every_command_has_v_and_q(command):
    help_text = run_rawsend(command, "--help", check=True).stdout.decode()
    assert "-v, --verbose" in help_text and "-q, --quiet" in help_text
