"""On a compressible corpus, the default stream is no larger than 1.1 x `tar | zstd -3` of it."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import zstandard

from rawsend.pipeline import send
from rawsend.sources.tree import TreeSource

WORDS = ("the quick brown fox jumps over lazy dog error warning info request response user admin "
         "server client data value").split()


def make_corpus(root: Path) -> None:
    """Logs and many small source-like files, seeded: both kinds people back up."""
    rng = random.Random(1)
    (root / "logs").mkdir(parents=True)
    for n in range(3):
        lines = [f"2026-11-{n + 1:02d}T{i % 24:02d}:{i % 60:02d}:{i * 7 % 60:02d} host{rng.randint(1, 9)} "
                 f"app[{rng.randint(100, 999)}]: {' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))}"
                 f" id={rng.randint(0, 10**6)}\n" for i in range(40000)]
        (root / "logs" / f"app{n}.log").write_text("".join(lines))
    (root / "src").mkdir()
    for n in range(300):
        body = "".join(f"def {rng.choice(WORDS)}_{i}(x):\n    return x * {rng.randint(1, 100)} + "
                       f"{rng.choice(WORDS)!r}\n\n" for i in range(rng.randint(5, 150)))
        (root / "src" / f"mod{n}.py").write_text(body)


def tar_zstd_size(root: Path, level: int) -> int:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname=".")
    return len(zstandard.ZstdCompressor(level=level).compress(buf.getvalue()))


def test_default_stream_is_within_ten_percent_of_tar_zstd_3(tmp_path):
    make_corpus(tmp_path / "corpus")
    stream = bytearray()
    stats = send(TreeSource(tmp_path / "corpus"), stream.extend)
    reference = tar_zstd_size(tmp_path / "corpus", 3)
    assert stats.logical_bytes > 3 * len(stream)  # it is compressible, and was compressed
    assert len(stream) <= 1.1 * reference, (len(stream), reference)
