"""Properties: any generated tree survives send -> receive identical, whatever the codec; and no change
made to an encrypted incremental stream without the key gets past a reader with the key."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from rawsend.codecs.crypto import Keyring
from rawsend.codecs.keys import load_key
from rawsend.errors import RawsendError
from rawsend.pipeline import NullSink, receive, send
from rawsend.sinks.tree import TreeSink
from rawsend.sources.tree import TreeSource
from rawsend.stream.records import Compression
from tests.conftest import VECTORS
from tests.hostile import Frame, reseal, split
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


# -- an encrypted incremental stream changed by someone without the key ----------------------------

ENCRYPTED = VECTORS / "encrypted"
SEALED_INCREMENTAL = (ENCRYPTED / "good_incremental.rs").read_bytes()
KEYRING = Keyring([load_key(ENCRYPTED / "test.key")])


@st.composite
def changed_by_an_attacker(draw) -> bytes:
    """good_incremental with records changed, dropped, repeated or moved, every CRC and END's counts and
    digest recomputed (END's MAC cannot be): what anyone without the key can make."""
    preamble, frames, rest = split(SEALED_INCREMENTAL)
    frames = list(frames)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(frames) - 1))
        f = frames[i]
        kind = draw(st.sampled_from(["body", "payload", "type", "flags", "drop", "dup", "swap", "cut"]))
        if kind == "body" and f.body:
            at = draw(st.integers(0, len(f.body) - 1))
            body = bytearray(f.body)
            body[at] ^= draw(st.integers(1, 255))
            frames[i] = Frame(f.type, f.flags, bytes(body), f.payload)
        elif kind == "payload" and f.payload:
            at = draw(st.integers(0, len(f.payload) - 1))
            payload = bytearray(f.payload)
            payload[at] ^= draw(st.integers(1, 255))
            frames[i] = Frame(f.type, f.flags, f.body, bytes(payload))
        elif kind == "type":
            frames[i] = Frame(draw(st.integers(1, 21)), f.flags, f.body, f.payload)
        elif kind == "flags":
            frames[i] = Frame(f.type, f.flags ^ 1, f.body, f.payload)  # SEALED set or cleared
        elif kind == "drop" and len(frames) > 1:
            del frames[i]
        elif kind == "dup":
            frames.insert(draw(st.integers(0, len(frames))), f)
        elif kind == "swap":
            j = draw(st.integers(0, len(frames) - 1))
            frames[i], frames[j] = frames[j], frames[i]
        elif kind == "cut":
            frames[i] = Frame(f.type, f.flags, f.body[:draw(st.integers(0, len(f.body)))], f.payload)
    return reseal(preamble, frames, rest)


def test_the_encrypted_incremental_stream_opens_with_its_key():
    stats = receive(io.BytesIO(SEALED_INCREMENTAL), NullSink(), keyring=KEYRING)
    assert stats.authenticated and stats.changes > 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=changed_by_an_attacker())
def test_no_change_to_an_encrypted_incremental_stream_passes_with_the_key(stream):
    if stream == SEALED_INCREMENTAL:  # two changes that undo each other
        return
    try:
        receive(io.BytesIO(stream), NullSink(), keyring=KEYRING)
    except RawsendError as e:
        assert e.record is not None or e.offset is not None, f"error without a place: {e}"
    else:
        raise AssertionError("a changed stream was accepted with the key")
    try:  # without the key: success (only the key tells) or a typed error, nothing else
        receive(io.BytesIO(stream), NullSink(), require_key=False)
    except RawsendError:
        pass
