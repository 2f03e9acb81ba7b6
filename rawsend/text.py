"""Stream-supplied text made safe to print: valid UTF-8, one line, no control characters.

Names, symlink targets and xattr names in a stream are arbitrary bytes: not
necessarily UTF-8, and possibly holding newlines (a forged output line), ESC
or OSC sequences (terminal control), or bidi overrides (text shown in another
order than it is).  Every output of rawsend passes through this module:

- ``escape(data)`` shows bytes losslessly: printable UTF-8 as it is, ``\\``
  as ``\\\\``, ``\\n \\t \\r``, other ASCII controls and each byte that is not
  part of valid UTF-8 as ``\\xNN``, any other unprintable character as
  ``\\uNNNN`` or ``\\UNNNNNNNN``.  ``quote`` does the same inside ``"..."``.
- ``clean(text)`` applies the same escapes to a finished message, so no byte
  of a name reaches a terminal raw whatever built the message; backslashes
  are left alone there, as a message may hold repr() text.
- ``json_line(obj)`` is JSON that is valid UTF-8 with every unprintable
  character as a ``\\u`` escape; ``json_bytes`` gives a JSON field for bytes.
- ``echo(text)`` writes one line as UTF-8 whatever the locale says.
"""

from __future__ import annotations

import click

_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_char(ch: str) -> str:
    c = ord(ch)
    if 0xDC80 <= c <= 0xDCFF:  # a byte that is not UTF-8, as surrogateescape and os.fsdecode keep it
        return f"\\x{c - 0xDC00:02x}"
    if ch in _SHORT:
        return _SHORT[ch]
    if c < 0x80:
        return f"\\x{c:02x}"
    if c <= 0xFFFF:
        return f"\\u{c:04x}"
    return f"\\U{c:08x}"


def _escape(text: str, special: str) -> str:
    # Fast path: most names are printable and need nothing.
    if text.isprintable() and not any(ch in text for ch in special):
        return text
    return "".join(ch if ch.isprintable() and ch not in special else
                   ("\\" + ch if ch in special else _escape_char(ch)) for ch in text)


def escape(data: bytes) -> str:
    """Bytes shown losslessly as printable text (see the module docstring)."""
    return _escape(data.decode("utf-8", "surrogateescape"), "\\")


def quote(data: bytes) -> str:
    """``escape`` inside double quotes, with ``"`` escaped too: one field whatever it holds."""
    return '"' + _escape(data.decode("utf-8", "surrogateescape"), '\\"') + '"'


def clean(text: str) -> str:
    """A message with every unprintable character escaped; printable text is left as it is."""
    return _escape(text, "")


def json_bytes(data: bytes) -> tuple[str, str | None]:
    """(text, hex) for bytes in JSON: the exact string when the bytes are UTF-8 (hex None),
    else their ``escape`` form and the exact bytes as hex."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return escape(data), data.hex()


def _json_escape(ch: str) -> str:
    c = ord(ch)
    if c <= 0xFFFF:
        return f"\\u{c:04x}"
    c -= 0x10000  # JSON spells characters beyond the BMP as a surrogate pair
    return f"\\u{0xD800 + (c >> 10):04x}\\u{0xDC00 + (c & 0x3FF):04x}"


def json_line(obj, sort_keys: bool = False) -> str:
    """One line of JSON; characters that are not printable (controls, DEL, C1, bidi
    overrides, separators, lone surrogates) only ever appear as ``\\u`` escapes."""
    import json  # here: most commands print no JSON
    text = json.dumps(obj, ensure_ascii=False, sort_keys=sort_keys)
    if text.isprintable():
        return text
    # json.dumps leaves only DEL, C1 and other non-ASCII characters raw, and only inside strings
    return "".join(ch if ch.isprintable() else _json_escape(ch) for ch in text)


def echo(text: str, err: bool = False) -> None:
    """Print one line as UTF-8 whatever the locale, every unprintable character escaped."""
    click.echo(clean(text).encode("utf-8"), err=err)
