"""One exception tree for everything rawsend reports to a user.

Each class's docstring is its message template; ``where`` (record number, byte
offset, path) and ``hint`` (what to do) are appended so every message reads
"what, where, what to do".  ``exit_code`` is the process exit status the CLI
maps it to, in one place (cli.main).
"""

from __future__ import annotations


class RawsendError(Exception):
    """{detail}"""

    exit_code = 1
    hint = ""

    def __init__(self, detail: str = "", *, record: int | None = None,
                 offset: int | None = None, path: str | None = None,
                 hint: str | None = None):
        self.detail = detail
        self.record = record
        self.offset = offset
        self.path = path
        if hint is not None:
            self.hint = hint
        super().__init__(detail)

    def __str__(self) -> str:
        return self.message()

    def locate(self, record: int, offset: int) -> None:
        """Name the record the error was found in, unless the raiser already named one."""
        if self.record is None:
            self.record = record
        if self.record == record and self.offset is None:
            self.offset = offset

    def where(self) -> str:
        parts = []
        if self.record is not None:
            parts.append(f"record {self.record}")
        if self.offset is not None:
            parts.append(f"byte offset {self.offset}")
        if self.path is not None:
            parts.append(f"path {self.path!r}")
        return ", ".join(parts)

    def message(self) -> str:
        text = (self.__doc__ or "{detail}").strip().format(detail=self.detail)
        where = self.where()
        if where:
            text += f" (at {where})"
        if self.hint:
            text += f"; {self.hint}"
        return text


# -- the stream itself is bad: exit 1 -------------------------------------------------

class StreamError(RawsendError):
    """invalid stream: {detail}"""

    exit_code = 1
    hint = "the stream is damaged or not a rawsend stream; send it again from the source"


class BadMagic(StreamError):
    """not a rawsend stream: {detail}"""


class UnsupportedVersion(StreamError):
    """unsupported stream version: {detail}"""

    hint = "upgrade rawsend on this host"


class UnsupportedFeature(StreamError):
    """stream needs a feature this rawsend lacks: {detail}"""

    hint = "upgrade rawsend on this host"


class TruncatedStream(StreamError):
    """stream ends early: {detail}"""

    hint = "the stream was cut off (broken pipe, full disk or killed sender); send it again"


class ChecksumMismatch(StreamError):
    """checksum mismatch: {detail}"""


class DigestMismatch(StreamError):
    """END record does not match the stream: {detail}"""

    hint = "records were dropped, duplicated or reordered; send the stream again"


class TrailingData(StreamError):
    """trailing data after END record: {detail}"""


class MalformedRecord(StreamError):
    """malformed record: {detail}"""


class LimitExceeded(StreamError):
    """limit exceeded: {detail}"""


class RecordOrderError(StreamError):
    """record out of order: {detail}"""


class UnsafePath(StreamError):
    """unsafe name refused: {detail}"""

    hint = "the stream tries to write outside the destination; nothing was written there"


class DecodeError(StreamError):
    """cannot decode extent payload: {detail}"""


# -- keys and authentication: exit 4 ---------------------------------------------------

class KeyProblem(RawsendError):
    """key problem: {detail}"""

    exit_code = 4


class KeyMissing(KeyProblem):
    """stream is encrypted and no key was given for it: {detail}"""

    hint = "pass --key-file with that key, or receive with --store to keep it encrypted"


class KeyFileError(KeyProblem):
    """bad key file: {detail}"""


class WrongKey(KeyProblem):
    """none of the given keys is the stream's key: {detail}"""

    exit_code = 1
    hint = "pass --key-file with the key of that id ('rawsend dump' shows the stream's key id)"


class AuthenticationFailed(KeyProblem):
    """authentication failed: {detail}"""

    exit_code = 1
    hint = "the stream was altered or the key is wrong; do not trust this stream"


# -- the local side: exit 3 ------------------------------------------------------------

class LocalError(RawsendError):
    """{detail}"""

    exit_code = 3


class DestinationError(LocalError):
    """cannot receive into destination: {detail}"""


class SourceError(LocalError):
    """cannot read source: {detail}"""


class OutputError(LocalError):
    """cannot write output: {detail}"""


class StoreError(LocalError):
    """store problem: {detail}"""


class StoreDamaged(StoreError):
    """store is damaged: {detail}"""

    exit_code = 1  # like a damaged stream: what is stored cannot be trusted
