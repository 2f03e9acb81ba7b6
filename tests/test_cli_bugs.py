"""Command-line behaviours, each through the real command: exit code, message, bytes on disk."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from rawsend.stream.records import Compression, Extent
from tests.conftest import run_rawsend
from tests.hostile import mkfile, tree_stream

# -- LZO without python-lzo -------------------------------------------------------------------------

_BLOCK_LZO = """\
import sys
class _NoLzo:
    def find_spec(self, name, path=None, target=None):
        if name == "lzo":
            raise ImportError("python-lzo hidden for this test")
sys.meta_path.insert(0, _NoLzo())
"""


def _lzo_stream(data: bytes) -> bytes:
    """One file whose only extent is a btrfs LZO frame: one segment of LZO1X literals."""
    assert len(data) <= 238
    segment = bytes([17 + len(data)]) + data + b"\x11\x00\x00"  # literal run, then the end marker
    frame = struct.pack("<II", 8 + len(segment), len(segment)) + segment
    stream, _ = tree_stream(mkfile(2, 1, b"f", len(data)),
                            (Extent(2, 0, len(data), len(data), 0, len(frame), Compression.LZO_4K), frame))
    return stream


@pytest.fixture
def no_lzo_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK_LZO)
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_verify_of_an_lzo_stream_without_python_lzo_is_a_local_problem_not_damage(tmp_path, no_lzo_env):
    path = tmp_path / "l.rs"
    path.write_bytes(_lzo_stream(b"hello lzo " * 10))
    proc = run_rawsend("verify", str(path), env=no_lzo_env)
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "cannot decode-check here" in err and "not known to be damaged" in err
    assert "pip install 'rawsend[lzo]'" in err and "liblzo2-dev" in err
    assert "invalid stream" not in err and "damaged or not a rawsend stream" not in err


def test_the_crafted_lzo_stream_verifies_where_python_lzo_is_installed(tmp_path):
    pytest.importorskip("lzo")
    path = tmp_path / "l.rs"
    path.write_bytes(_lzo_stream(b"hello lzo " * 10))
    proc = run_rawsend("verify", str(path))
    assert proc.returncode == 0 and proc.stdout.startswith(b"OK: "), proc.stderr


def test_damaged_lzo_framing_is_still_damage_without_python_lzo(tmp_path, no_lzo_env):
    payload = b"\xff" * 64  # total length past the payload: the framing alone shows it
    stream, _ = tree_stream(mkfile(2, 1, b"f", 4096), (Extent(2, 0, 4096, 4096, 0, 64, Compression.LZO_4K), payload))
    path = tmp_path / "bad.rs"
    path.write_bytes(stream)
    proc = run_rawsend("verify", str(path), env=no_lzo_env)
    assert proc.returncode == 1 and b"cannot decode extent payload: lzo: total length" in proc.stderr, proc.stderr
