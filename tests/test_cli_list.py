"""rawsend list: the paths of a stream, as tar -t; -l, --json, a store's stream, a sealed one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_rawsend


@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a").write_bytes(b"abc")
    os.link(src / "sub" / "a", src / "b")
    os.symlink("sub/a", src / "c")
    (src / "n\nl").write_bytes(b"")
    os.utime(src / "sub" / "a", ns=(0, 1_700_000_000 * 10**9))
    return src


@pytest.fixture
def stream(tmp_path, tree) -> Path:
    out = tmp_path / "s.rs"
    run_rawsend("send", "-o", str(out), str(tree), check=True)
    return out


def test_list_prints_one_escaped_path_per_line_as_tar_t(stream):
    proc = run_rawsend("list", str(stream))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ["./", "b", "c", "n\\nl", "sub/", "sub/a link to b"]
    assert proc.stderr == b""


def test_list_long_shows_mode_owner_size_mtime_and_targets(stream):
    lines = run_rawsend("list", "-l", "-f", str(stream), check=True).stdout.decode().splitlines()
    b = next(line for line in lines if line.endswith("  b"))
    assert b.startswith("-rw-") and f"{os.getuid()}/{os.getgid()}" in b and " 3 2023-11-14 22:13  b" in b
    assert any(line.startswith("lrwxrwxrwx") and line.endswith("  c -> sub/a") for line in lines)
    assert lines[-1].endswith("sub/a link to b")


def test_list_json_is_one_object_per_path(stream):
    proc = run_rawsend("list", "--json", "-", input=stream.read_bytes(), check=True)
    entries = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [e["path"] for e in entries] == [".", "b", "c", "n\nl", "sub", "sub/a"]
    assert entries[1] == {"path": "b", "type": "file", "mode": entries[1]["mode"], "uid": os.getuid(),
                          "gid": os.getgid(), "mtime_ns": 1_700_000_000 * 10**9, "size": 3}
    assert entries[2]["target"] == "sub/a" and entries[5] == {"path": "sub/a", "type": "hardlink", "link_to": "b"}


def test_list_of_a_store_stream(tmp_path, stream):
    store = tmp_path / "store"
    run_rawsend("receive", "--store", "-f", str(stream), str(store), check=True)
    proc = run_rawsend("list", str(store))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == run_rawsend("list", str(stream)).stdout


def test_list_of_an_encrypted_stream_needs_its_key(tmp_path, tree):
    key = tmp_path / "k"
    run_rawsend("keygen", "-o", str(key), check=True)
    sealed = tmp_path / "e.rs"
    run_rawsend("send", "--encrypt", str(key), "-o", str(sealed), str(tree), check=True)
    proc = run_rawsend("list", str(sealed))
    assert proc.returncode == 4 and proc.stdout == b""
    assert b"its names are sealed; it needs key id" in proc.stderr and b"pass --key-file" in proc.stderr
    opened = run_rawsend("list", "--key-file", str(key), str(sealed))
    assert opened.returncode == 0 and opened.stdout.decode().splitlines()[-1] == "sub/a link to b"


def test_list_of_a_damaged_stream_fails_with_the_damage(tmp_path, stream):
    data = bytearray(stream.read_bytes())
    data[-40] ^= 1
    bad = tmp_path / "bad.rs"
    bad.write_bytes(bytes(data))
    proc = run_rawsend("list", str(bad))
    assert proc.returncode == 1, proc.stderr
