"""Names, link targets and xattr names are stream bytes: every output shows them escaped.

Each test reads crafted streams through the CLI under three locales and checks what reaches
stdout and stderr: valid UTF-8, nothing unprintable but the line ends, one line per record,
and the exact bytes recoverable from the text (by unescaping) and from the JSON.
"""

from __future__ import annotations

import json
import os
import re
import socket

import pytest
from hypothesis import given, strategies as st

from rawsend import text
from rawsend.stream.records import SetXattr
from tests.conftest import run_rawsend
from tests.hostile import Link, mkdir, mkfile, plain_extent, symlink, tree_stream

ENVS = {
    "C.UTF-8": {"LC_ALL": "C.UTF-8"},
    "PYTHONIOENCODING=utf-8": {"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
    "C": {"LC_ALL": "C"},
}

FORGED_LINE = b'     9        999 mkfile     "evil"                   id=9 mode=4755 uid=0 gid=0'
DIR = b"d\xff\x9b\x1b[2J"                    # not UTF-8, a raw CSI byte, an ANSI clear-screen
FILE = "\u202egnp.exe \u009b\u2028".encode()  # bidi override, C1 CSI and a line separator in UTF-8
QUOTED = b'q" id=7 mode=4755 \t\r\x7f\\'       # a quote ending the field, tab, CR, DEL, backslash
LITERAL = b"back\\x1bslash"                    # the text \x1b, which must not read as ESC
TARGET = b"x\n" + FORGED_LINE
XATTR = b"user.\x1b]0;pwned\x07\xc3"

#  record: (type, path, {field: bytes}) of every record of the hostile stream
EXPECTED = {
    1: ("mkdir", b".", {}),
    2: ("mkdir", DIR, {}),
    3: ("mkfile", DIR + b"/" + FILE, {}),
    4: ("extent", DIR + b"/" + FILE, {}),
    5: ("set_xattr", DIR + b"/" + FILE, {"name": XATTR}),
    6: ("mkfile", QUOTED, {}),
    7: ("symlink", LITERAL, {"target": TARGET}),
    8: ("link", DIR + b"/" + b"\n" + FORGED_LINE, {"dest": DIR + b"/" + FILE}),
}


def _hostile_stream() -> bytes:
    data, _ = tree_stream(mkdir(2, 1, DIR), mkfile(3, 2, FILE, 5), plain_extent(3, 0, b"hello"),
                          SetXattr(3, XATTR, b"v"), mkfile(4, 1, QUOTED), symlink(5, 1, LITERAL, TARGET),
                          Link(3, 2, b"\n" + FORGED_LINE))
    return data


def _env(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "LC_ALL", "LC_CTYPE", "PYTHONIOENCODING",
                                                              "PYTHONUTF8")}
    return env | ENVS[name]


def _printable_lines(out: bytes) -> list[str]:
    """The lines of an output that must be valid UTF-8 with nothing unprintable but line ends."""
    shown = out.decode("utf-8")  # strict: raises on any byte that is not UTF-8
    assert shown.endswith("\n")
    lines = shown[:-1].split("\n")
    for line in lines:
        assert line.isprintable(), f"unprintable character in {line!r}"
    return lines


_ESCAPE = re.compile(r'\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[nrt"\\])')


def _unescape(shown: str) -> bytes:
    """The exact bytes behind a quoted field of a dump line (the inverse of rawsend.text.quote)."""
    assert shown.startswith('"') and shown.endswith('"')
    out, pos = bytearray(), 1
    for m in _ESCAPE.finditer(shown, 1, len(shown) - 1):
        out += shown[pos:m.start()].encode()
        esc = m.group(1)
        if esc[0] == "x":
            out.append(int(esc[1:], 16))
        elif esc[0] in "uU":
            out += chr(int(esc[1:], 16)).encode()
        else:
            out += {"n": b"\n", "r": b"\r", "t": b"\t"}.get(esc, esc.encode())
        pos = m.end()
    rest = shown[pos:-1]
    assert "\\" not in rest and '"' not in rest, f"stray escape in {shown!r}"
    return bytes(out + rest.encode())


_QUOTED = r'"(?:[^"\\]|\\.)*"'
_LINE = re.compile(rf"\s*(\d+)\s+(\d+) (\w+)\s+({_QUOTED}|\?)?(.*)")
_FIELD = re.compile(rf" (\w+)=({_QUOTED}|\S+)")


@pytest.mark.parametrize("env", ENVS)
def test_text_dump_escapes_every_stream_byte_one_line_per_record(env):
    proc = run_rawsend("dump", "-", input=_hostile_stream(), env=_env(env))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    lines = _printable_lines(proc.stdout)
    assert len(lines) == len(EXPECTED) + 2  # and the header and END
    for index, line in enumerate(lines):
        number, _, rtype, path, rest = _LINE.fullmatch(line).groups()
        assert int(number) == index
        rest = " " + rest.lstrip(" ")
        pairs = _FIELD.findall(rest)
        assert "".join(f" {k}={v}" for k, v in pairs) == rest  # nothing but fields
        fields = dict(pairs)
        if index in EXPECTED:
            want_type, want_path, want_fields = EXPECTED[index]
            assert (rtype, _unescape(path)) == (want_type, want_path)
            assert {k: _unescape(fields[k]) for k in want_fields} == want_fields


@pytest.mark.parametrize("env", ENVS)
def test_json_dump_is_valid_utf8_json_and_gives_the_exact_bytes(env):
    proc = run_rawsend("dump", "--json", "-", input=_hostile_stream(), env=_env(env))
    assert proc.returncode == 0, proc.stderr
    lines = _printable_lines(proc.stdout)
    records = [json.loads(line) for line in lines]
    assert [r["record"] for r in records] == list(range(len(EXPECTED) + 2))

    def exact(r: dict, key: str) -> bytes:
        return bytes.fromhex(r[f"{key}_hex"]) if f"{key}_hex" in r else r[key].encode("utf-8")

    for index, (rtype, path, fields) in EXPECTED.items():
        r = records[index]
        assert (r["type"], exact(r, "path")) == (rtype, path)
        assert {k: exact(r, k) for k in fields} == fields
    # a name that is UTF-8 is its own exact string; one that is not is shown escaped beside its hex
    assert records[6]["path"] == QUOTED.decode() and "path_hex" not in records[6]
    assert records[2]["path"] == "d\\xff\\x9b\\x1b[2J" and records[2]["path_hex"] == DIR.hex()


@pytest.mark.parametrize("env", ENVS)
def test_receive_warnings_show_names_escaped(env, tmp_path):
    name = b"f\xff\x1b[2J\n"
    data, _ = tree_stream(mkfile(2, 1, name), SetXattr(2, b"security.\x1b]0;pwned\x07\nrawsend: forged", b"v"))
    dest = tmp_path / "dest"
    proc = run_rawsend("receive", "--no-preserve-owner", "--no-sync", "-f", "-", str(dest), input=data,
                       env=_env(env))
    assert proc.returncode == 0, proc.stderr
    warning, summary = _printable_lines(proc.stderr)
    assert warning == ("rawsend: warning: f\\xff\\x1b[2J\\n: xattr security.\\x1b]0;pwned\\x07\\nrawsend: forged"
                       " not set: security.* and trusted.* need --preserve-owner")
    assert summary.startswith("rawsend: received 1 file,") and summary.endswith("; 1 xattr not set")
    assert os.listdir(dest) == [os.fsdecode(name)]


@pytest.mark.parametrize("env", ENVS)
def test_send_notes_show_local_names_escaped(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    name = b"s\xff\x1b]0;pwned\x07\nrawsend: forged"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.path.join(os.fsencode(src), name))
        proc = run_rawsend("send", "-o", str(tmp_path / "out.rs"), str(src), env=_env(env))
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr
    note, summary = _printable_lines(proc.stderr)
    assert note.startswith("rawsend: note: ")
    assert note.endswith("/s\\xff\\x1b]0;pwned\\x07\\nrawsend: forged: socket ignored (a socket cannot be sent)")
    assert summary.startswith("rawsend: sent 0 files")


@pytest.mark.parametrize("env", ENVS)
def test_an_error_naming_a_stream_path_is_one_escaped_line(env, tmp_path):
    name = b"\x1b]0;pwned\x07\n\xff\xe2\x80\xae"
    data, _ = tree_stream(mkfile(2, 1, name), mkfile(3, 1, name))
    proc = run_rawsend("receive", "--no-sync", "-f", "-", str(tmp_path / "dest"), input=data, env=_env(env))
    assert proc.returncode == 1
    (line,) = _printable_lines(proc.stderr)
    assert line.startswith("rawsend: malformed record: the same name twice in one directory: ")
    assert "\\x1b]0;pwned\\x07\\n\\xff\\xe2\\x80\\xae'" in line
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("env", ENVS)
def test_ls_refuses_a_hostile_index_entry_in_one_escaped_line(env, tmp_path):
    store = tmp_path / "store"
    data, _ = tree_stream(mkfile(2, 1, b"f"))
    run_rawsend("receive", "--store", "-f", "-", str(store), input=data, check=True)
    (entry_path,) = (store / "index").iterdir()
    entry = json.loads(entry_path.read_bytes())
    hostile = "aes\x1b]0;pwned\x07\u009b2J\u202e\x7f\n"
    entry.update(encrypted=True, cipher=hostile, key_id="ab" * 16, compression={hostile: 1})
    entry_path.write_text(json.dumps(entry))

    for args in (("ls",), ("ls", "--json")):
        listed = run_rawsend(*args, str(store), env=_env(env))
        assert listed.returncode == 1
        assert listed.stdout == b""
        (line,) = _printable_lines(listed.stderr)
        assert line.startswith("rawsend: store is damaged: index entry is damaged: ")
        assert entry_path.name in line


# -- the escaping functions themselves -----------------------------------------------------------

@given(st.binary(max_size=64) | st.text(max_size=32).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_quote_is_printable_and_lossless(data):
    shown = text.quote(data)
    assert shown.isprintable()
    assert _unescape(shown) == data
    assert text.escape(data).isprintable() and '"' not in shown[1:-1].replace('\\"', "")


@given(st.text(max_size=32))
def test_json_line_is_printable_and_parses_back(value):
    line = text.json_line({"v": value, value: [value]})
    assert line.isprintable()
    assert json.loads(line) == {"v": value, value: [value]}


def test_clean_escapes_only_what_is_unprintable():
    assert text.clean("path 'a\\x1b' \u00e9\x1b\n\udcff\u202e") == "path 'a\\x1b' \u00e9\\x1b\\n\\xff\\u202e"
    assert text.clean("\U000e0001") == "\\U000e0001"
