"""Rules of stream-format.md that every consumer checks, through the CLI: verify, dump, receive,
receive --store and rekey refuse the same streams, and a consumer without the key of an
encrypted stream says which rules it could not check.
"""

from __future__ import annotations

import importlib.util
import io
import stat
import sys
import tracemalloc

import pytest

from rawsend.errors import MalformedRecord
from rawsend.pipeline import NullSink, receive
from rawsend.stream.checker import StreamChecker
from rawsend.stream.records import Create, RecordType
from tests.conftest import VECTORS, run_rawsend
from tests.hostile import ROOT, T0, mkfile, tree_stream

ENCRYPTED = VECTORS / "encrypted"
TWICE = str(ENCRYPTED / "name_twice.rs")
KEY, OTHER = str(ENCRYPTED / "test.key"), str(ENCRYPTED / "other.key")
NOT_CHECKED = b"names, links and the tree rules are sealed and were not checked"
ERROR = ("rawsend: malformed record: the same name twice in one directory: b'fifo' again in directory id 1"
         " (at record 16, byte offset 6765)")


def _last_line(proc) -> str:
    return proc.stderr.decode().splitlines()[-1]  # after the warning the 0644 test keys earn


def test_a_name_twice_in_an_encrypted_stream_is_refused_by_every_consumer_with_the_key(tmp_path):
    for args in (["verify", "--key-file", KEY, TWICE], ["dump", "--key-file", KEY, TWICE],
                 ["receive", "--no-sync", "--key-file", KEY, "-f", TWICE, str(tmp_path / "dest")],
                 ["rekey", "--from", KEY, "--to", OTHER, "-i", TWICE, "-o", str(tmp_path / "new.rs")]):
        proc = run_rawsend(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert _last_line(proc).startswith(ERROR), (args, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no tree, no rekeyed stream


def test_without_the_key_verify_and_store_say_the_tree_rules_were_not_checked(tmp_path):
    verify = run_rawsend("verify", TWICE)
    assert verify.returncode == 0 and verify.stdout.startswith(b"intact, NOT authenticated")
    assert NOT_CHECKED in verify.stdout
    store = run_rawsend("receive", "--store", "-f", TWICE, str(tmp_path / "store"))
    assert store.returncode == 0 and NOT_CHECKED in store.stderr
    again = run_rawsend("verify", "--key-file", KEY, str(tmp_path / "store"))
    assert again.returncode == 1 and "b'fifo' again in directory id 1" in again.stderr.decode()
    plain = run_rawsend("verify", str(VECTORS / "good_plain.rs"))
    assert plain.returncode == 0 and NOT_CHECKED not in plain.stdout  # nothing sealed: all checked


def test_the_encrypted_generator_writes_nothing_when_the_reader_disagrees(monkeypatch):
    spec = importlib.util.spec_from_file_location("encrypted_generator_check", VECTORS / "generate_encrypted.py")
    gen = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = gen
    spec.loader.exec_module(gen)
    written = []
    monkeypatch.setattr(gen, "outcome", lambda stream, keyring: (None, ["accepted"]))
    monkeypatch.setattr(gen.Path, "write_bytes", lambda self, data: written.append(self))
    assert gen.main([]) == 1
    assert written == []


def test_a_name_skipped_by_the_receiver_still_counts(tmp_path):
    # a FIFO is skipped without --preserve-special; its name is taken all the same
    fifo = Create(RecordType.MKNOD, 2, 1, b"x", stat.S_IFIFO | 0o644, 0, 0, T0, T0)
    data, _ = tree_stream(fifo, mkfile(3, 1, b"x"))
    path = tmp_path / "s.rs"
    path.write_bytes(data)
    proc = run_rawsend("receive", "--no-sync", "-f", str(path), str(tmp_path / "dest"))
    assert proc.returncode == 1
    assert "malformed record: the same name twice in one directory: b'x' again in directory id 1 (at record 3," in proc.stderr.decode()
    assert not (tmp_path / "dest").exists()
    with pytest.raises(MalformedRecord):
        receive(io.BytesIO(data), NullSink())


def test_the_same_name_in_two_directories_is_fine():
    checker = StreamChecker()
    checker.check(ROOT, 1)
    checker.check(Create(RecordType.MKDIR, 2, 1, b"a", stat.S_IFDIR | 0o755, 0, 0, T0, T0), 2)
    checker.check(mkfile(3, 2, b"a"), 3)
    checker.check(mkfile(4, 1, b"b"), 4)
    with pytest.raises(MalformedRecord, match="again in directory id 2"):
        checker.check(mkfile(5, 2, b"a"), 5)


def test_rule_5_costs_the_same_memory_per_name_whatever_its_length():
    def per_name(length: int, n: int = 20_000) -> float:
        records = [mkfile(2 + i, 1, b"%0*d" % (length, i)) for i in range(n)]
        checker = StreamChecker()
        checker.check(ROOT, 1)
        tracemalloc.start()
        for i, rec in enumerate(records):
            checker._new_name(rec.parent_id, rec.name, i)
        used = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return used / n

    short, long = per_name(8), per_name(255)
    # about 154 bytes: a 16-byte digest as a bytes object and its set slot, never the name
    assert long < 200 and abs(long - short) < 8, (short, long)
