"""send --label: the LABEL record through the real commands (send, dump, ls STORE, receive)."""

from __future__ import annotations

import json
import socket

from tests.conftest import run_rawsend


def _src(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data\n")
    return src


def test_label_is_recorded_dumped_listed_and_escaped(tmp_path):
    src = _src(tmp_path)
    stream = run_rawsend("send", "--label", "nightly \x1b[31m\n2026", str(src), check=True).stdout
    dump = run_rawsend("dump", "-", input=stream, check=True).stdout.decode()
    line = [ln for ln in dump.splitlines() if " label " in ln][0]
    assert line.split()[0] == "2"  # record 2, after the root
    assert 'label="nightly \\x1b[31m\\n2026"' in line and f'host="{socket.gethostname()}"' in line
    assert f'source="{src}"' in line
    run_rawsend("receive", "--store", str(tmp_path / "st"), input=stream, check=True)
    out = run_rawsend("ls", str(tmp_path / "st"), check=True).stdout.decode()
    assert '\x1b' not in out and 'label "nightly \\x1b[31m\\n2026"' in out and out.count("\n") == 1
    entry = json.loads(run_rawsend("ls", "--json", str(tmp_path / "st"), check=True).stdout)
    assert entry["label"] == "nightly \x1b[31m\n2026" and entry["label_source"] == str(src)
    run_rawsend("receive", str(tmp_path / "out"), input=stream, check=True)
    assert (tmp_path / "out" / "f").read_bytes() == b"data\n"


def test_an_encrypted_label_is_sealed_without_the_key(tmp_path):
    src, key = _src(tmp_path), tmp_path / "k.key"
    run_rawsend("keygen", "-o", str(key), check=True)
    stream = run_rawsend("send", "--encrypt", str(key), "--label", "secret label", str(src), check=True).stdout
    assert b"secret label" not in stream
    run_rawsend("receive", "--store", str(tmp_path / "st"), input=stream, check=True)
    out = run_rawsend("ls", str(tmp_path / "st"), check=True).stdout.decode()
    assert "label sealed (give --key-file to show it)" in out and "secret" not in out
    out = run_rawsend("ls", "--key-file", str(key), str(tmp_path / "st"), check=True).stdout.decode()
    assert 'label "secret label"' in out
    dump = run_rawsend("dump", "--key-file", str(key), "-", input=stream, check=True).stdout.decode()
    assert 'label="secret label"' in dump


def test_a_label_over_the_cap_is_a_usage_error(tmp_path):
    proc = run_rawsend("send", "--label", "x" * 1025, str(_src(tmp_path)))
    assert proc.returncode == 2 and b"--label is 1025 bytes long, over 1024" in proc.stderr
    assert not proc.stdout
