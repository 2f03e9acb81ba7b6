"""The record registry: each record class declares its types, payload, sealing and sink method,
and every table a consumer dispatches by is derived from it."""

from __future__ import annotations

import ast
import inspect
import io
from pathlib import Path

import pytest

import rawsend
from rawsend import btrfs
from rawsend.errors import MalformedRecord
from rawsend.sinks.tree import TreeSink
from rawsend.stream.records import (
    CLEAR_TYPES, PAYLOAD_TYPES, RECORDS, Cipher, Compression, Create, Extent, RecordType, unpack_body,
)
from rawsend.stream.sink import ChangeSink, NullSink, Sink
from tests.conftest import VECTORS

PACKAGE = Path(rawsend.__file__).parent


def test_every_record_type_has_one_class_and_one_name():
    assert set(RECORDS) == set(RecordType)
    assert RecordType.NAMES == {1: "header", 2: "mkdir", 3: "mkfile", 4: "mknod", 5: "symlink", 6: "link",
                                7: "set_xattr", 8: "extent", 9: "end", 10: "rename", 11: "unlink", 12: "rmdir",
                                13: "truncate", 14: "chmod", 15: "chown", 16: "utimes", 17: "remove_xattr",
                                18: "update_file", 20: "base", 21: "punch_hole", 48: "label",
                                49: "snapshot"}
    assert RecordType.INCREMENTAL == set(range(10, 22)) - {19}
    assert {RECORDS[t] for t in (RecordType.MKDIR, RecordType.MKFILE, RecordType.MKNOD, RecordType.SYMLINK)} == {Create}


def test_what_the_registry_says_is_what_the_spec_says():
    # stream-format.md: only extents carry a payload; HEADER, BASE, EXTENT and END bodies stay clear
    assert PAYLOAD_TYPES == {RecordType.EXTENT}
    assert CLEAR_TYPES == {RecordType.HEADER, RecordType.BASE, RecordType.EXTENT, RecordType.END}


def test_an_unknown_type_is_refused_by_name():
    with pytest.raises(MalformedRecord, match="unknown record type 40"):
        unpack_body(40, b"")
    assert RecordType.name_of(40) == "type 40" and RecordType.name_of(6) == "link"


def test_every_sink_has_the_method_each_record_class_names():
    methods = {name for name, _ in inspect.getmembers(Sink, inspect.isfunction)}
    changes = {name for name, _ in inspect.getmembers(ChangeSink, inspect.isfunction)}
    for cls in set(RECORDS.values()):
        if cls.SINK:
            assert cls.SINK in (changes if set(cls.TYPES) <= RecordType.INCREMENTAL else methods), cls
    assert methods < changes
    assert methods <= set(dir(TreeSink))
    assert changes <= set(dir(NullSink))


def test_one_spelling_of_each_compression_and_cipher_name():
    assert Compression.NAMES[Compression.LZO_4K] == "lzo4k"
    assert btrfs.COMPRESSION_NAMES == {c: Compression.NAMES[c] for c in range(8)}
    assert Compression.BY_NAME["lz4"] == Compression.LZ4 and Cipher.BY_NAME["aes-256-gcm"] == Cipher.AES_256_GCM
    assert btrfs.MAX_ENCODED == rawsend.codecs.lzo.MAX_ENCODED


def test_a_decoded_record_knows_its_sink_method():
    data = (VECTORS / "good_plain.rs").read_bytes()
    from rawsend.stream.checked import CheckedReader, RecordEvent
    kinds = {type(e.record).__name__: e.record.SINK for e in CheckedReader(io.BytesIO(data))
             if isinstance(e, RecordEvent)}
    assert kinds == {"Create": "create", "Extent": "extent", "SetXattr": "xattr", "Link": "link"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_sources_and_the_pipeline_do_not_import_each_other():
    for source in (PACKAGE / "sources").glob("*.py"):
        assert "rawsend.pipeline" not in _imports(source), source
    assert not {m for m in _imports(PACKAGE / "pipeline.py") if m.startswith("rawsend.sources.")} - {
        "rawsend.sources.items"}
