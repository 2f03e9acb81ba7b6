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


# -- -o FILE is atomic; -o - is stdout ------------------------------------------------------------

def _tree(root: Path, size: int = 0) -> Path:
    root.mkdir()
    (root / "small").write_bytes(b"small file\n")
    if size:
        (root / "big").write_bytes(os.urandom(size))
    return root


def _limit_file_size(limit: int):
    def apply():
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_send_that_fails_midway_leaves_the_existing_stream_as_it_was(tmp_path):
    out = tmp_path / "out" / "s.rs"
    out.parent.mkdir()
    run_rawsend("send", "-o", str(out), str(_tree(tmp_path / "a")), check=True)
    good = out.read_bytes()
    proc = run_rawsend("send", "--compress", "none", "-o", str(out), str(_tree(tmp_path / "b", 1 << 20)),
                       preexec_fn=_limit_file_size(256 << 10))
    assert proc.returncode == 3 and b"cannot write output" in proc.stderr, proc.stderr
    assert out.read_bytes() == good
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.rs"]  # no temporary file left either
    assert run_rawsend("verify", str(out)).returncode == 0


def test_a_failed_send_creates_no_file_under_the_final_name(tmp_path):
    out = tmp_path / "s.rs"
    proc = run_rawsend("send", "--compress", "none", "-o", str(out), str(_tree(tmp_path / "b", 1 << 20)),
                       preexec_fn=_limit_file_size(256 << 10))
    assert proc.returncode == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_send_dash_o_dash_writes_the_stream_to_stdout(tmp_path):
    src = _tree(tmp_path / "src")
    proc = run_rawsend("send", "-o", "-", str(src), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "-").exists()
    back = run_rawsend("receive", str(tmp_path / "dst"), input=proc.stdout)
    assert back.returncode == 0 and (tmp_path / "dst" / "small").read_bytes() == b"small file\n"


def test_rekey_dash_o_dash_writes_the_stream_to_stdout(tmp_path):
    k1, k2 = tmp_path / "k1", tmp_path / "k2"
    run_rawsend("keygen", "-o", str(k1), check=True)
    run_rawsend("keygen", "-o", str(k2), check=True)
    sealed = run_rawsend("send", "--encrypt", str(k1), str(_tree(tmp_path / "src")), check=True).stdout
    proc = run_rawsend("rekey", "--from", str(k1), "--to", str(k2), "-o", "-", input=sealed, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "-").exists()
    back = run_rawsend("receive", "--key-file", str(k2), str(tmp_path / "dst"), input=proc.stdout)
    assert back.returncode == 0 and (tmp_path / "dst" / "small").read_bytes() == b"small file\n"


# -- send does not put its own output into the stream -----------------------------------------------

def test_send_into_its_own_source_skips_the_stream_file_with_a_note(tmp_path):
    src = _tree(tmp_path / "src")
    out = src / "x.rs"
    for _ in range(2):  # the second time a previous x.rs exists and is replaced
        proc = run_rawsend("send", "-o", str(out), str(src))
        assert proc.returncode == 0, proc.stderr
        assert f"note: {out}: file is the stream being written; not sent".encode() in proc.stderr
        back = run_rawsend("receive", "-f", str(out), str(tmp_path / "dst"))
        assert back.returncode == 0, back.stderr
        assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["small"]
        import shutil
        shutil.rmtree(tmp_path / "dst")


# -- --level is checked against the codec ----------------------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["--level", "99"], "99 is not a zstd level: give 1-19"),
    (["--level", "-5"], "-5 is not a zstd level: give 1-19"),
    (["--compress", "zlib", "--level", "10"], "10 is not a zlib level: give 1-9"),
    (["--compress", "lz4", "--level", "3"], "--compress lz4 has no levels (levels: zstd 1-19, zlib 1-9)"),
    (["--compress", "none", "--level", "1"], "--compress none has no levels"),
])
def test_a_level_outside_the_codec_range_is_a_usage_error_saying_what_is_valid(tmp_path, args, says):
    src = _tree(tmp_path / "src")
    proc = run_rawsend("send", *args, "-o", str(tmp_path / "s.rs"), str(src))
    assert proc.returncode == 2 and says.encode() in proc.stderr, proc.stderr
    assert not (tmp_path / "s.rs").exists()


@pytest.mark.parametrize("args", [["--level", "1"], ["--level", "19"], ["--compress", "zlib", "--level", "9"]])
def test_levels_at_the_ends_of_the_range_are_taken(tmp_path, args):
    proc = run_rawsend("send", *args, "-o", str(tmp_path / "s.rs"), str(_tree(tmp_path / "src")))
    assert proc.returncode == 0, proc.stderr


# -- counts: singular for one -----------------------------------------------------------------------

def test_summaries_say_one_file_not_one_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"data")
    os.link(src / "a", src / "b")
    os.symlink("a", src / "c")
    out = tmp_path / "s.rs"
    sent = run_rawsend("send", "-o", str(out), str(src))
    assert sent.returncode == 0, sent.stderr
    assert b"sent 1 file, 1 dir, 1 symlink, 1 hard link: 4 B of data" in sent.stderr
    assert b"(1 extent: none 1)" in sent.stderr
    got = run_rawsend("receive", "-f", str(out), str(tmp_path / "dst"))
    assert b"received 1 file, 1 dir, 1 symlink, 1 hard link, 4 B of data (1 extent, " in got.stderr, got.stderr
    verified = run_rawsend("verify", str(out))
    assert b", 1 file, 1 dir, " in verified.stdout and b" 1 files" not in verified.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run_rawsend("send", "-o", str(tmp_path / "e.rs"), str(empty))
    assert b"sent 0 files, 1 dir, 0 symlinks, 0 hard links" in none.stderr


# -- a failed first receive --store leaves no store behind ------------------------------------------

def test_receive_store_of_a_non_stream_into_a_new_directory_leaves_nothing(tmp_path):
    store = tmp_path / "new-store"
    proc = run_rawsend("receive", "--store", str(store), input=b"not a rawsend stream at all\n")
    assert proc.returncode == 1, proc.stderr
    assert b"expected b'rawsend\\n'" in proc.stderr
    assert not store.exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_receive_store_of_a_truncated_stream_into_an_empty_directory_leaves_it_empty(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 5000)
    stream = run_rawsend("send", str(src), check=True).stdout
    store = tmp_path / "empty"
    store.mkdir()
    proc = run_rawsend("receive", "--store", str(store), input=stream[:-10])
    assert proc.returncode == 1, proc.stderr
    assert store.is_dir() and os.listdir(store) == []


def test_a_failed_receive_into_a_store_that_holds_streams_keeps_it_whole(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"y" * 5000)
    stream = run_rawsend("send", str(src), check=True).stdout
    store = tmp_path / "store"
    run_rawsend("receive", "--store", str(store), input=stream, check=True)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    proc = run_rawsend("receive", "--store", str(store), input=b"garbage")
    assert proc.returncode == 1
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert run_rawsend("verify", str(store)).returncode == 0
