"""Names, link targets and xattr names are stream bytes: every output shows them escaped.

Each test reads crafted streams through the CLI under three locales and checks what reaches
stdout and stderr: valid UTF-8, nothing unprintable but the line ends, one line per record,
and the exact bytes recoverable from the text (by unescaping) and from the JSON.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from hypothesis import given, strategies as st

from rawsend import text
from rawsend.stream.records import SetXattr
from tests.conftest import run_rawsend
from tests.hostile import mkfile, tree_stream

ENVS = {
    "C.UTF-8": {"LC_ALL": "C.UTF-8"},
    "PYTHONIOENCODING=utf-8": {"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"},
    "C": {"LC_ALL": "C"},
}

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
    assert summary.startswith("rawsend: received 1 files") and summary.endswith("; 1 xattrs not set")
    assert os.listdir(dest) == [os.fsdecode(name)]


@pytest.mark.parametrize("env", ENVS)
def test_an_error_naming_a_stream_path_is_one_escaped_line(env, tmp_path):
    name = b"\x1b]0;pwned\x07\n\xff\xe2\x80\xae"
    data, _ = tree_stream(mkfile(2, 1, name), mkfile(3, 1, name))
    proc = run_rawsend("receive", "--no-sync", "-f", "-", str(tmp_path / "dest"), input=data, env=_env(env))
    assert proc.returncode == 1
    (line,) = _printable_lines(proc.stderr)
    assert line.startswith("rawsend: malformed record: the stream creates the same name twice")
    assert "\\x1b]0;pwned\\x07\\n\\udcff\\u202e'" in line
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("env", ENVS)
def test_ls_escapes_what_a_damaged_index_holds(env, tmp_path):
    store = tmp_path / "store"
    data, _ = tree_stream(mkfile(2, 1, b"f"))
    run_rawsend("receive", "--store", "-f", "-", str(store), input=data, check=True)
    (entry_path,) = (store / "index").iterdir()
    entry = json.loads(entry_path.read_bytes())
    hostile = "aes\x1b]0;pwned\x07\u009b2J\u202e\x7f\n"
    entry.update(encrypted=True, cipher=hostile, key_id="ab" * 16, compression={hostile: 1})
    entry_path.write_text(json.dumps(entry))

    listed = run_rawsend("ls", str(store), env=_env(env))
    assert listed.returncode == 0, listed.stderr
    (line,) = _printable_lines(listed.stdout)
    assert "encrypted aes\\x1b]0;pwned\\x07\\u009b2J\\u202e\\x7f\\n key abab" in line
    as_json = run_rawsend("ls", "--json", str(store), env=_env(env))
    (line,) = _printable_lines(as_json.stdout)
    assert json.loads(line)["cipher"] == hostile and json.loads(line)["compression"] == {hostile: 1}


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
