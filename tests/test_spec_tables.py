"""The byte tables of spec/stream-format.md read the golden vectors.

A reader written from the spec alone must read real streams: here the markdown tables themselves
are parsed (offset, size, field, and the type that starts each meaning), every record of every
good vector is cut up with them, and what comes out must be what rawsend's own parser finds.
The tables must also tile their structures with no gap and no overlap, and each section's
body_len rule must give the body's length.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from crc32c import crc32c

from rawsend.stream.reader import RawRecord
from rawsend.stream.records import (
    FLAG_SEALED, Compression, Create, Feature, Header, RecordType, unpack_body,
)
from tests.conftest import ROOT, VECTORS

SPEC = ROOT / "spec" / "stream-format.md"
INTS = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q", "i64": "<q"}


@dataclass
class Row:
    offset: str
    size: str
    field: str
    kind: str  # u8, u16, u32, u64, i64 or bytes


def _sections(text: str) -> dict[str, list[list[list[str]]]]:
    """heading -> its tables, each a list of rows of cells (the separator row dropped)."""
    out: dict[str, list] = {}
    heading, table = "", None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if table is None:
                table = []
                out.setdefault(heading, []).append(table)
            if not all(set(c) <= set("-: ") for c in cells):
                table.append(cells)
        else:
            table = None
    return out


SECTIONS = _sections(SPEC.read_text())


def _section(prefix: str) -> str:
    (name,) = [h for h in SECTIONS if h.startswith(prefix)]
    return name


def layout(prefix: str) -> list[Row]:
    """The first table of the section whose header row starts with `offset`."""
    for table in SECTIONS[_section(prefix)]:
        if table[0][:3] == ["offset", "size", "field"]:
            rows = []
            for offset, size, name, meaning in (r[:4] for r in table[1:]):
                kind = re.match(r"(u8|u16|u32|u64|i64|bytes)\b", meaning)
                assert kind, f"{prefix}: the meaning of {name} does not start with its type: {meaning!r}"
                rows.append(Row(offset.strip("`"), size.strip("`"), name, kind.group(1)))
            return rows
    raise AssertionError(f"no layout table under {prefix}")


def body_len_rule(prefix: str) -> str | None:
    """The expression of the section's `body_len MUST ...` sentence."""
    text = SPEC.read_text()
    start = text.index("\n## " + _section(prefix))
    end = text.find("\n## ", start + 1)
    m = re.search(r"body_len MUST (?:equal|be exactly|be) `?([\w +]+?)`?[.;]", text[start:end])
    return m.group(1) if m else None


def _value(expr: str, fields: dict) -> int:
    return sum(int(t) if t.strip().isdigit() else fields[t.strip()] for t in expr.split("+"))


def cut(rows: list[Row], data: bytes) -> dict:
    """Fields of ``data`` by the spec's table; asserts the rows tile it exactly."""
    fields: dict = {}
    at = 0
    for row in rows:
        offset, size = _value(row.offset, fields), _value(row.size, fields)
        assert offset == at, f"{row.field} at {offset}, but the field before it ends at {at}"
        raw = data[offset:offset + size]
        assert len(raw) == size, f"{row.field} runs past the end"
        if row.kind == "bytes":
            fields[row.field] = bytes(raw)
        else:
            assert struct.calcsize(INTS[row.kind]) == size, f"{row.field}: {row.kind} is not {size} bytes"
            fields[row.field] = struct.unpack(INTS[row.kind], raw)[0]
        at = offset + size
    assert at == len(data), f"the table covers {at} bytes of {len(data)}"
    return fields


# -- the record types table ------------------------------------------------------------------------

def record_types() -> dict[int, tuple[str, str, str]]:
    """type -> (name, body kind, body cell)."""
    (table,) = [t for t in SECTIONS["Record types"] if t[0][0] == "type"]
    return {int(r[0]): (r[1], r[2].split()[0], r[2]) for r in table[1:]}


BODY_SECTION = {"header": "HEADER", "create": "Create records", "link": "LINK", "xattr": "SET_XATTR",
                "extent": "EXTENT", "end": "END", "base": "BASE", "rename": "RENAME", "unlink": "UNLINK and RMDIR",
                "truncate": "TRUNCATE", "chmod": "CHMOD", "chown": "CHOWN", "utimes": "UTIMES",
                "remove_xattr": "REMOVE_XATTR", "update_file": "UPDATE_FILE", "punch_hole": "PUNCH_HOLE",
                "label": "LABEL", "snapshot": "SNAPSHOT"}


def test_the_record_types_table_is_the_codes():
    types = record_types()
    assert {t: name.lower() for t, (name, _, _) in types.items()} == RecordType.NAMES
    assert {body for _, body, _ in types.values()} == set(BODY_SECTION)


def test_compression_and_feature_tables_are_the_codes():
    (comp,) = [t for t in SECTIONS["EXTENT"] if t[0][0] == "value"]
    listed = {}
    for value, name, _ in comp[1:]:
        lo, _, hi = value.partition("..")
        for v in range(int(lo), int(hi or lo) + 1):
            listed[v] = name
    assert sorted(listed) == sorted(Compression.NAMES)
    assert all(Compression.NAMES[v].startswith(n) for v, n in listed.items())
    required, optional = [t for t in SECTIONS["HEADER (record 0)"] if t[0][0] == "bit"]
    assert {1 << int(b): name for b, name, _ in required[1:]} == Feature.REQUIRED_NAMES
    assert {1 << int(b): name for b, name, _ in optional[1:]} == Feature.OPTIONAL_NAMES


def test_every_body_len_rule_starts_where_the_fixed_fields_end():
    for kind, section in BODY_SECTION.items():
        rule = body_len_rule(section)
        assert rule, f"{section} says nothing of body_len"
        fixed = [r for r in layout(section) if r.offset.isdigit() and r.size.isdigit()]
        assert int(rule.split("+")[0]) == int(fixed[-1].offset) + int(fixed[-1].size), section
    for name, kind, cell in record_types().values():  # "extent body (80 bytes)"
        size = re.search(r"\((\d+) bytes\)", cell)
        if size:
            assert _value(body_len_rule(BODY_SECTION[kind]), {}) == int(size.group(1)), name


# -- the good vectors, cut up with the tables ----------------------------------------------------------

def _good_streams() -> list[Path]:
    paths = sorted(VECTORS.glob("good_*.rs")) + sorted((VECTORS / "encrypted").glob("good_*.rs"))
    paths += [VECTORS / f"{n}.rs" for n in ("skippable_unknown_record", "unknown_optional_feature")]
    return paths


def _opener(path: Path, header: Header):
    if not header.encrypted:
        return None
    from rawsend.codecs.crypto import Keyring
    return Keyring.from_files([VECTORS / "encrypted" / "test.key"]).opener(header)


def _same_as_the_code(section: str, rtype: int, fields: dict, body: bytes) -> None:
    """What the spec's table read equals what rawsend's parser reads, field by field."""
    rec = unpack_body(rtype, body)
    derived = {"size_or_rdev": "size", "reserved": None, "name_len": "name", "target_len": "target",
               "value_len": "value", "to_name_len": "to_name", "label_len": "label", "host_len": "host",
               "source_len": "source", "version_len": "version"}
    for name, value in fields.items():
        if name in ("atime_sec", "atime_nsec", "mtime_sec", "mtime_nsec"):
            which = name[:5]
            assert getattr(rec, f"{which}_ns") == fields[f"{which}_sec"] * 10**9 + fields[f"{which}_nsec"]
        elif name in ("required_features", "optional_features", "stream_id", "created_ns", "cipher",
                      "key_id", "salt", "digest", "mac", "record_count", "byte_count", "nonce", "offset",
                      "num_bytes", "unencoded_len", "unencoded_offset", "disk_num_bytes", "compression",
                      "encryption", "file_id", "parent_id", "mode", "uid", "gid", "name", "target", "value",
                      "first_id", "to_parent_id", "to_name", "size", "length", "label", "host", "source",
                      "version", "uuid", "ctransid", "parent_uuid", "parent_ctransid"):
            assert getattr(rec, name) == value, (section, name)
        elif derived.get(name):
            if name.endswith("_len"):
                assert len(getattr(rec, derived[name])) == value, (section, name)
            else:
                assert getattr(rec, derived[name]) == value, (section, name)
        else:
            assert name == "reserved" and value == 0, (section, name)
    if isinstance(rec, Create):
        assert rec.type == rtype


@pytest.mark.parametrize("path", _good_streams(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_spec_tables_read_every_good_vector(path):
    data = path.read_bytes()
    pre = cut(layout("Preamble"), data[:12])
    assert pre["magic"] == bytes.fromhex("72 61 77 73 65 6e 64 0a".replace(" ", "")) and pre["version"] == 1
    framing, types = layout("Record header"), record_types()
    at, index, seen, opener = 12, 0, set(), None
    while at < len(data):
        index += 1
        rh = cut(framing, data[at:at + 16])
        body = data[at + 16:at + 16 + rh["body_len"]]
        payload = data[at + 16 + rh["body_len"]:at + 16 + rh["body_len"] + rh["payload_len"]]
        assert rh["crc"] == crc32c(payload, crc32c(body, crc32c(data[at:at + 12])))
        if rh["type"] not in types:  # a skippable record of a later version
            assert rh["flags"] & 0x0002 and not payload
            at += 16 + len(body)
            continue
        name, kind, _ = types[rh["type"]]
        if rh["flags"] & FLAG_SEALED:
            raw = RawRecord(index - 1, at, rh["type"], rh["flags"], data[at:at + 16], body, memoryview(payload))
            body = opener.open_metadata(raw)
        section = BODY_SECTION[kind]
        fields = cut(layout(section), body)
        assert _value(body_len_rule(section), fields) == len(body), section
        _same_as_the_code(section, rh["type"], fields, body)
        if name == "HEADER":
            opener = _opener(path, Header.unpack(body))
        if name == "EXTENT":
            assert len(payload) == fields["disk_num_bytes"]
        seen.add(name)
        at += 16 + rh["body_len"] + rh["payload_len"]
    assert {"HEADER", "MKDIR", "EXTENT", "END"} <= seen
