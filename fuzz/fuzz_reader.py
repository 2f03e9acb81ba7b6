#!/usr/bin/env python3
"""libFuzzer (atheris) harness for everything a receiver runs on untrusted bytes.

    make fuzz                                         # 60 s (FUZZ_SECONDS=600 make fuzz for longer)
    python fuzz/fuzz_reader.py -max_total_time=60 fuzz/corpus

The first input byte picks how the rest is used, so the fuzzer can learn both:
  0  raw stream bytes, read and checked with a NullSink (framing, CRCs, END);
  1  the same bytes resealed (fresh CRCs and END digest, tests/hostile.py), so mutations reach
     the record parsers, the order checker and the decoders behind the checksums;
  2  resealed, then received into a real tree in a temporary directory;
  3  resealed, read with the key of spec/vectors/encrypted, so sealed records are opened too.
Anything but success or a RawsendError is a crash: libFuzzer saves the input under fuzz/crashes/.
Copy it to tests/crashers/NAME.rs with a NAME.txt saying what crashed; the test suite then runs
every crasher through the reader and a receive for ever after.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from rawsend.errors import RawsendError
    from rawsend.fsutil import left_by_dead_process
    from rawsend.pipeline import NullSink, receive
    from rawsend.sinks.tree import TreeSink
    from rawsend.stream.checker import Limits
    from tests.hostile import reseal, split

KEY = ROOT / "spec" / "vectors" / "encrypted" / "test.key"
LIMITS = Limits(max_files=10_000)  # keeps a fuzzed tree small; the cap itself is tested elsewhere
# mode 2 receives here; libFuzzer exits without cleaning up, so the next run of this pid reuses it
SCRATCH = HERE / "scratch" / str(os.getpid())


def _keyring():
    if not KEY.exists():
        return None
    from rawsend.codecs.crypto import Keyring
    return Keyring.from_files([KEY])


KEYRING = _keyring()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, stream = data[0] % 4, data[1:]
    if mode:
        stream = reseal(*split(stream))
    try:
        if mode == 2:
            dest = SCRATCH / "dest"
            try:
                receive(io.BytesIO(stream), TreeSink(dest, sync=False), limits=LIMITS)
            finally:
                if dest.exists():
                    shutil.rmtree(dest)
            leftovers = os.listdir(SCRATCH)
            if leftovers:
                raise AssertionError(f"a receive left {leftovers} behind")
        else:
            receive(io.BytesIO(stream), NullSink(), keyring=KEYRING if mode == 3 else None,
                    require_key=False, limits=LIMITS)
    except RawsendError:
        pass


def seed(corpus: Path) -> None:
    """An empty corpus starts from the small golden vectors and the crashers, in every mode."""
    if corpus.exists() and any(corpus.iterdir()):
        return
    corpus.mkdir(parents=True, exist_ok=True)
    sources = [p for p in (ROOT / "spec" / "vectors").rglob("*.rs") if p.stat().st_size <= 20_000]
    sources += sorted((ROOT / "tests" / "crashers").glob("*.rs"))
    for path in sources:
        for mode in range(4):
            (corpus / f"{path.stem}.{mode}").write_bytes(bytes([mode]) + path.read_bytes())


def main() -> None:
    dirs = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        seed(dirs[0])
    (HERE / "crashes").mkdir(exist_ok=True)
    args = sys.argv
    if not any(a.startswith("-artifact_prefix=") for a in args):
        args = args + [f"-artifact_prefix={HERE / 'crashes'}/"]
    for old in SCRATCH.parent.glob("*"):  # those of earlier runs, whose process is gone
        if left_by_dead_process(old.name):
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
