"""Property: any generated tree survives send -> receive identical, whatever the codec."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from rawsend.pipeline import receive, send
from rawsend.sinks.tree import TreeSink
from rawsend.sources.tree import TreeSource
from rawsend.stream.records import Compression
from tests.treeutil import diff, snapshot

names = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=20).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)
content = st.one_of(st.binary(max_size=3000),
                    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=16), st.integers(1, 30000)))
file_spec = st.tuples(st.just("file"), content, st.sampled_from([0o644, 0o600, 0o755, 0o444]),
                      st.integers(0, 3), st.integers(0, 2**40))
link_spec = st.tuples(st.just("symlink"), st.text(min_size=1, max_size=40).filter(lambda t: "\0" not in t))
tree = st.recursive(
    st.dictionaries(names, st.one_of(file_spec, link_spec), max_size=5),
    lambda children: st.dictionaries(names, st.one_of(file_spec, link_spec, children), max_size=4),
    max_leaves=12)


def build(root: Path, spec: dict) -> None:
    root.mkdir()
    for name, entry in spec.items():
        path = root / name
        if isinstance(entry, dict):
            build(path, entry)
        elif entry[0] == "symlink":
            os.symlink(entry[1], path)
        else:
            _, data, mode, holes, mtime = entry
            with open(path, "wb") as f:
                for _ in range(holes):  # leading holes of 64 KiB each
                    f.seek(64 * 1024, os.SEEK_CUR)
                f.write(data)
            os.chmod(path, mode)
            os.utime(path, ns=(mtime, mtime))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=tree, codec=st.sampled_from([Compression.ZSTD, Compression.LZ4, Compression.ZLIB,
                                          Compression.NONE]), threads=st.sampled_from([1, 3]))
def test_generated_trees_round_trip(spec, codec, threads):
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        build(src, spec)
        buf = bytearray()
        send(TreeSource(src), buf.extend, compression=codec, threads=threads)
        receive(io.BytesIO(bytes(buf)), TreeSink(dst, sync=False))
        assert diff(snapshot(src), snapshot(dst)) == []
        shutil.rmtree(dst)
