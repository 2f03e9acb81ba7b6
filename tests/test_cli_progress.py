"""Progress: done / total, rate and ETA in binary units; only on a terminal unless --progress."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rawsend.progress import Progress
from tests.conftest import run_rawsend


def test_the_line_shows_done_total_percent_rate_and_eta():
    bar = Progress(False, "receive", total=100 << 20)
    bar.done = 25 << 20
    bar._started = 0.0
    assert bar.line(10.0) == "receive: 25.0 MiB / 100.0 MiB (25%) 2.5 MiB/s ETA 0:00:30"
    bar.total = None
    assert bar.line(10.0) == "receive: 25.0 MiB 2.5 MiB/s"


@pytest.fixture
def stream(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(300_000))
    out = tmp_path / "s.rs"
    run_rawsend("send", "-o", str(out), str(src), check=True)
    return out


@pytest.mark.parametrize("command", ["receive", "verify"])
def test_progress_forced_reports_against_the_stream_size(tmp_path, stream, command):
    args = ["receive", "--progress", "-f", str(stream), str(tmp_path / "dst")] if command == "receive" \
        else ["verify", "--progress", str(stream)]
    proc = run_rawsend(*args)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    size = stream.stat().st_size / 1024
    assert f"\r{command}: " in err and f" / {size:.1f} KiB (" in err and "/s" in err
    assert "MB" not in err and "KB" not in err  # binary units, as the summaries


def test_no_progress_without_a_terminal_unless_asked(tmp_path, stream):
    proc = run_rawsend("receive", "-f", str(stream), str(tmp_path / "dst"))
    assert b"\r" not in proc.stderr
    proc = run_rawsend("send", "--progress", "-o", str(tmp_path / "t.rs"), str(tmp_path / "src"))
    assert proc.returncode == 0 and b"\rsend: " in proc.stderr
    proc = run_rawsend("send", "--no-progress", "-o", str(tmp_path / "u.rs"), str(tmp_path / "src"))
    assert b"\r" not in proc.stderr
