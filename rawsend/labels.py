"""Stream labels (spec "LABEL"): made by `send --label`, read back by `ls STORE`.

A label is record 2 of a stream, so reading it takes the first three records only.  In an
encrypted stream it is sealed like every metadata record: shown with the stream's key, else
said to be sealed.  Every field is stream bytes, shown only through rawsend.text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from rawsend import __version__, text
from rawsend.errors import RawsendError, UsageError
from rawsend.stream.reader import StreamReader
from rawsend.stream.records import MAX_HOST_LEN, MAX_LABEL_LEN, MAX_SOURCE_LEN, Label, RecordType

LABEL_INDEX = 2  # after the root (or BASE)


def make_label(label: str, source: str) -> Label:
    """The LABEL of a stream sent from ``source`` on this host; UsageProblem if it cannot be one."""
    try:
        data = label.encode("utf-8")
    except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
        raise UsageError("--label is not valid UTF-8", hint="give the label as UTF-8 text") from None
    if len(data) > MAX_LABEL_LEN:
        raise UsageError(f"--label is {len(data)} bytes long, over {MAX_LABEL_LEN}",
                           hint=f"give a label of at most {MAX_LABEL_LEN} bytes (UTF-8)")
    host = os.uname().nodename.encode("utf-8", "replace")[:MAX_HOST_LEN]  # gethostname(), without socket
    path = os.fsencode(os.path.abspath(source))
    if len(path) > MAX_SOURCE_LEN:  # the record keeps the start of the path: a note, not a name
        path = path[:MAX_SOURCE_LEN]
    return Label(data, host, path, __version__.encode())


@dataclass(frozen=True)
class Found:
    """What a stream says of its label: ``label`` None with ``sealed`` when no key given opened it."""

    label: Label | None = None
    sealed: bool = False
    unreadable: bool = False  # the stream's first records did not read (the caller says why)


def read_label(stream: BinaryIO, keyring=None) -> Found:
    """The LABEL of a stream, read from its first records only; StreamError if they do not read."""
    reader = StreamReader(stream)
    for raw in reader:
        if raw.index < LABEL_INDEX:
            continue
        if raw.type != RecordType.LABEL:
            return Found()
        try:
            body = raw.body
            if raw.sealed:
                opener = keyring.opener(reader.header) if keyring is not None else None
                if opener is None:
                    return Found(sealed=True)
                body = opener.open_metadata(raw)
            return Found(Label.unpack(body))
        except RawsendError as e:
            e.locate(raw.index, raw.offset)
            raise
    return Found()


def shown(found: Found) -> str:
    """One field for a listing: label, host, source and version, escaped; or why not."""
    if found.sealed:
        return "label sealed (give --key-file to show it)"
    if found.unreadable:
        return "label unreadable"
    rec = found.label
    if rec is None:
        return "no label"
    return (f"label {text.quote(rec.label)} from {text.quote(rec.host)}:{text.quote(rec.source)}"
            f" rawsend {text.escape(rec.version)}")


def json_fields(found: Found) -> dict:
    """The label's fields for JSON (the exact bytes as hex too where not UTF-8), or label_sealed."""
    if found.sealed or found.unreadable:
        return {"label_sealed": True} if found.sealed else {"label_unreadable": True}
    if found.label is None:
        return {}
    out: dict = {}
    rec = found.label
    for key, value in (("label", rec.label), ("label_host", rec.host), ("label_source", rec.source),
                       ("label_version", rec.version)):
        out[key], exact = text.json_bytes(value)
        if exact is not None:
            out[f"{key}_hex"] = exact
    return out
