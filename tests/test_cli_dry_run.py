"""send -n: what would be sent and about how big the stream would be; nothing written."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import run_rawsend


def _mib(text: str, what: str) -> float:
    number, unit = re.search(rf"([\d.]+) (B|KiB|MiB) {what}", text).groups()
    return float(number) * {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1}[unit]


@pytest.mark.parametrize("compress", ["zstd", "zlib", "none"])
def test_dry_run_estimates_the_stream_and_writes_nothing(tmp_path, compress):
    src = tmp_path / "src"
    src.mkdir()
    (src / "random").write_bytes(os.urandom(2 << 20))
    (src / "text").write_bytes(b"".join(b"line %d of a text file\n" % i for i in range(200_000)))
    out = tmp_path / "s.rs"
    dry = run_rawsend("send", "-n", "--compress", compress, "-o", str(out), str(src))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == b"" and not out.exists()
    said = dry.stderr.decode()
    assert said.startswith("rawsend: would send 2 files, 1 dir, 0 symlinks, 0 hard links: ")
    assert "nothing written" in said
    real = run_rawsend("send", "--compress", compress, "-o", str(out), str(src), check=True).stderr.decode()
    estimated, actual = _mib(said, "of stream"), _mib(real, "of stream")
    assert abs(estimated - actual) <= 0.1 * actual, (said, real)
    assert _mib(said, "of data as") == _mib(real, "of data as")


def test_dry_run_v_lists_the_paths_on_stdout(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    dry = run_rawsend("send", "-n", "-v", "--exclude", "g", str(src))
    assert dry.returncode == 0 and dry.stdout.decode().splitlines() == ["./", "d/", "d/f"]
