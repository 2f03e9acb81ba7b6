"""Mutation over good streams: whatever is done to the bytes, a reader ends in success or in a typed
RawsendError, never another exception, never a hang, never a write outside the destination.

Byte-level damage (cuts, bit flips, splices) mostly meets the CRCs; structural mutations are
resealed (fresh CRCs and END) so they reach the record parsers, the order checker, the decoders
and the tree sink behind them.  The corpus is the golden vectors in spec/vectors/ plus a few
small streams made here by send().
"""

from __future__ import annotations

import io
import os
import signal
import struct
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rawsend.dump import Dumper, dump_stream
from rawsend.errors import RawsendError, TruncatedStream
from rawsend.pipeline import NullSink, receive
from rawsend.stream.checker import Limits
from rawsend.stream.records import (
    MAX_BODY_LEN,
    MAX_EXTENT_LEN,
    MAX_PAYLOAD_LEN,
    PREAMBLE,
    RECORD_HEADER,
    RecordType,
)
from tests.conftest import VECTORS
from tests.hostile import Frame, listing, receive_bytes, reseal, small_trees, split

settings.register_profile("rawsend", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture],
                          derandomize=bool(os.environ.get("CI")))  # CI runs are reproducible
settings.load_profile("rawsend")

ENCRYPTED = VECTORS / "encrypted"


# incremental streams, clear and sealed: cuts, flips and splices meet BASE and the incremental records
INCREMENTAL = ("vectors/good_incremental", "encrypted/good_incremental")


@lru_cache(maxsize=1)
def corpus() -> dict[str, bytes]:
    """Good streams: the small golden vectors when they exist, and streams made here."""
    out = {f"small_{i}": s for i, s in enumerate(small_trees())}
    # with a skipped record of a later version, so mutations meet the skipping path too
    extension = [VECTORS / "skippable_unknown_record.rs"]
    for path in sorted(VECTORS.glob("good_*.rs")) + sorted(ENCRYPTED.glob("good_*.rs")) + extension:
        data = path.read_bytes()
        if len(data) <= 20_000:  # the 170 KB plain one adds time, not coverage
            out[f"{path.parent.name}/{path.stem}"] = data
    return out


@lru_cache(maxsize=1)
def keyring():
    """The encrypted vectors' key, so sealed records are opened and their parsers reached too."""
    key = ENCRYPTED / "test.key"
    if not key.exists():
        return None
    from rawsend.codecs.crypto import Keyring
    return Keyring.from_files([key])


class Hang(Exception):
    pass


@contextmanager
def deadline(seconds: float):
    """A stream that makes the reader loop fails the test instead of stalling the suite."""
    def on_alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(data: bytes, *, with_key: bool = False, dump: bool = True) -> RawsendError | None:
    """None on success, the typed error otherwise; anything else fails the test.

    With ``dump``, every record is also shown as `rawsend dump` shows it, so dump meets the same
    inputs (the exhaustive loops leave it out: they mostly fail at a CRC, before dump has work).
    """
    dumper = Dumper()

    def show(raw, rec):
        dumper.line(raw, rec)
        dumper.json_line(raw, rec)

    with deadline(10):
        try:
            keys, limits = keyring() if with_key else None, Limits(max_files=10_000)
            if dump:
                dump_stream(io.BytesIO(data), show, keys, limits)
            else:
                receive(io.BytesIO(data), NullSink(), keyring=keys, require_key=False, limits=limits)
        except RawsendError as e:
            assert e.record is not None or e.offset is not None, f"error without a place: {e}"
            return e
    return None


# -- byte-level damage -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(corpus()))
def test_a_cut_at_every_byte_is_a_truncated_stream(name):
    data = corpus()[name]
    assert outcome(data, with_key=True) is None
    for cut in range(len(data)):
        err = outcome(data[:cut], dump=False)
        assert isinstance(err, TruncatedStream), (cut, err)


@pytest.mark.parametrize("name", [n for n, s in sorted(corpus().items()) if len(s) <= 2048])
def test_every_bit_flip_of_a_small_stream_fails(name):
    data = corpus()[name]
    for pos in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[pos] ^= 1 << bit
            assert outcome(bytes(damaged), dump=False) is not None, (pos, bit)


@given(st.data())
@settings(max_examples=400)
def test_random_byte_damage_never_passes(data):
    name = data.draw(st.sampled_from(sorted(corpus())))
    stream = bytearray(corpus()[name])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] ^= data.draw(st.integers(1, 255))
    if bytes(stream) != corpus()[name]:  # two flips at one place may cancel
        assert outcome(bytes(stream), with_key=True) is not None


@given(st.data())
@settings(max_examples=400)
def test_splicing_records_between_streams(data):
    names = sorted(corpus())
    a, b = (corpus()[data.draw(st.sampled_from(names))] for _ in range(2))
    pa, fa, _ = split(a)
    _, fb, _ = split(b)
    i = data.draw(st.integers(0, len(fa)))
    j = data.draw(st.integers(0, len(fb)))
    spliced = pa + b"".join(f.pack() for f in fa[:i] + fb[j:])
    err = outcome(spliced, with_key=True)
    if err is None:  # only a splice that rebuilt one of the two streams may pass
        assert spliced in (a, b)
    outcome(reseal(pa, fa[:i] + fb[j:]), with_key=True)  # resealed: anything, but typed


# -- structural mutation, resealed ------------------------------------------------------------------

INTERESTING = [0, 1, 2, 255, 256, 4095, 4096, 65535, 65536, 65537, MAX_EXTENT_LEN, MAX_EXTENT_LEN + 1,
               MAX_BODY_LEN, MAX_BODY_LEN + 1, MAX_PAYLOAD_LEN, 2**31 - 1, 2**32 - 1, 2**32, 2**63 - 1,
               2**63, 2**64 - 1]
WIDTHS = {2: "<H", 4: "<I", 8: "<Q"}


def _put_int(body: bytes, at: int, width: int, value: int) -> bytes:
    at = min(at, max(0, len(body) - width))
    if len(body) < width:
        return body
    return body[:at] + struct.pack(WIDTHS[width], value % (1 << (8 * width))) + body[at + width:]


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(corpus())))
    preamble, frames, rest = split(corpus()[name])
    frames = list(frames)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(frames) - 1))
        f = frames[i]
        kind = draw(st.sampled_from(["int", "byte", "cut", "grow", "type", "flags", "drop", "dup", "swap",
                                     "payload", "move"]))
        if kind == "int":
            width = draw(st.sampled_from([2, 4, 8]))
            at = draw(st.integers(0, max(0, len(f.body) - 1)))
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**64 - 1))
            frames[i] = Frame(f.type, f.flags, _put_int(f.body, at, width, value), f.payload)
        elif kind == "byte" and f.body:
            at = draw(st.integers(0, len(f.body) - 1))
            body = bytearray(f.body)
            body[at] = draw(st.integers(0, 255))
            frames[i] = Frame(f.type, f.flags, bytes(body), f.payload)
        elif kind == "cut":
            frames[i] = Frame(f.type, f.flags, f.body[:draw(st.integers(0, len(f.body)))], f.payload)
        elif kind == "grow":
            frames[i] = Frame(f.type, f.flags, f.body + draw(st.binary(min_size=1, max_size=64)), f.payload)
        elif kind == "type":
            frames[i] = Frame(draw(st.integers(0, 20)), f.flags, f.body, f.payload)
        elif kind == "flags":
            frames[i] = Frame(f.type, draw(st.sampled_from([0, 1, 2, 3, 4, 0x8000])), f.body, f.payload)
        elif kind == "payload" and f.payload:
            at = draw(st.integers(0, len(f.payload) - 1))
            payload = bytearray(f.payload)
            payload[at] ^= draw(st.integers(1, 255))
            cut = draw(st.integers(at, len(payload)))
            frames[i] = Frame(f.type, f.flags, f.body, bytes(payload[:cut]))
        elif kind == "drop" and len(frames) > 1:
            del frames[i]
        elif kind == "dup":
            frames.insert(draw(st.integers(0, len(frames))), f)
        elif kind == "swap":
            j = draw(st.integers(0, len(frames) - 1))
            frames[i], frames[j] = frames[j], frames[i]
        elif kind == "move":
            frames.insert(draw(st.integers(0, len(frames))), frames.pop(i))
    return name, reseal(preamble, frames, rest)


@given(mutated())
@settings(max_examples=1500)
def test_resealed_mutations_end_in_success_or_a_typed_error(case):
    name, data = case
    outcome(data, with_key=name.startswith("encrypted/"))


@given(mutated())
@settings(max_examples=120)
def test_resealed_mutations_received_into_a_tree_stay_inside(tmp_path_factory, case):
    name, data = case
    root = tmp_path_factory.mktemp("sentinel")
    (root / "outside").mkdir()
    (root / "outside" / "victim").write_bytes(b"victim\n")
    before = listing(root / "outside")
    dest = root / "dest"
    with deadline(10):
        try:
            sink = None
            if name.startswith("encrypted/"):
                from rawsend.sinks.tree import TreeSink
                sink = TreeSink(dest, sync=False)
                receive(io.BytesIO(data), sink, keyring=keyring(), limits=Limits(max_files=10_000))
            else:
                receive_bytes(data, dest, limits=Limits(max_files=10_000))
        except RawsendError:
            assert not dest.exists()
            made = ["outside"]
        else:
            assert dest.is_dir()
            made = ["dest", "outside"]
    assert listing(root / "outside") == before
    left = sorted(os.listdir(root))
    # a tracked stream (a mutation can set the bit) records what it built beside DEST; a failed one nothing
    assert left == made or (made == ["dest", "outside"] and left == [".dest.rawsend", "dest", "outside"])


# -- the crash corpus ----------------------------------------------------------------------------------

CRASHERS = Path(__file__).resolve().parent / "crashers"


@pytest.mark.parametrize("path", sorted(CRASHERS.glob("*.rs")), ids=lambda p: p.stem)
def test_every_input_that_ever_crashed_now_fails_cleanly(path, tmp_path):
    data = path.read_bytes()
    assert outcome(data, with_key=True) is not None
    with pytest.raises(RawsendError):
        receive_bytes(data, tmp_path / "dest")
    assert os.listdir(tmp_path) == []


def test_the_crash_corpus_documents_each_input():
    for path in CRASHERS.glob("*.rs"):
        note = path.with_suffix(".txt")
        assert note.exists(), f"{path.name} has no {note.name}"
        assert "crashed:" in note.read_text(), note


def test_the_corpus_holds_the_incremental_streams_whole():
    """Each is small enough for every bit flip, and a good stream as it stands (with the key)."""
    for name in INCREMENTAL:
        data = corpus()[name]
        assert len(data) <= 2048, name
        assert outcome(data, with_key=True) is None, name


def test_the_framing_of_the_corpus_is_what_split_reads():
    """reseal(split(x)) is x for every good stream: the mutations start from the real bytes."""
    for data in corpus().values():
        assert reseal(*split(data)) == data
        assert len(split(data)[0]) == PREAMBLE.size and RECORD_HEADER.size == 16
        assert split(data)[1][-1].type == RecordType.END
