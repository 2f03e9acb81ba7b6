"""One exception tree for everything rawsend reports to a user, and the exit codes.

Each class's docstring is its message template; ``where`` (record number, byte
offset, path) and ``hint`` (what to do) are appended so every message reads
"what, where, what to do".

There is one base class per exit code and every class below it keeps that
code, so ``except KeyProblem`` catches exactly what exits 4 and a script can
tell the causes apart by the exit status alone.  cli.main maps an exception to
its exit code by class; EXIT_CODES lists the bases in the order of the README's
table, which ``exit_code_table`` writes and a test compares.
"""

from __future__ import annotations

import signal


class RawsendError(Exception):
    """{detail}"""

    exit_code = 70  # each base class below sets its own; a bare RawsendError is a bug
    summary = ""    # the meaning of exit_code, for the README's table (base classes only)
    silent = False  # True: the CLI exits with exit_code and prints nothing
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


# -- the input is damaged, malformed or forged: exit 1 ------------------------------

class DamagedInput(RawsendError):
    """{detail}"""

    exit_code = 1
    summary = ("the input is damaged, malformed or forged: a stream or a stored stream fails a check"
               " or authentication, or a store's index is damaged")


class StreamError(DamagedInput):
    """invalid stream: {detail}"""

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


class AuthenticationFailed(StreamError):
    """authentication failed: {detail}"""

    # the key's id matched, so the key is right and the stream is not what was sealed
    hint = "the stream was altered or the key is wrong; do not trust this stream"


class SignatureError(DamagedInput):
    """bad signature file: {detail}"""

    hint = "the signature file is damaged or not a minisign signature; sign the stream again"


class SignatureMismatch(DamagedInput):
    """signature does not match: {detail}"""

    # the signer's key id matched: the bytes, or the signature itself, are not what was signed
    hint = "the stream or its signature was altered (or the public key file is damaged); do not trust this stream"


class StoreDamaged(DamagedInput):
    """store is damaged: {detail}"""


# -- the command line is wrong: exit 2 -----------------------------------------------

class UsageError(RawsendError):
    """usage error: {detail}"""

    # The CLI's own argument errors are click's UsageError, which click prints with the usage
    # and exits 2 with; this class gives the code its place in the tree and the README's table.
    exit_code = 2
    summary = "usage error: an unknown option, a missing or conflicting argument, a terminal where a stream goes"
    hint = "'rawsend COMMAND --help' shows the usage"


# -- the local side: exit 3 ------------------------------------------------------------

class LocalError(RawsendError):
    """{detail}"""

    exit_code = 3
    summary = ("a local problem: a source or file that cannot be read, a destination that exists,"
               " permission denied, disk full, a store that cannot be written")


class DestinationError(LocalError):
    """cannot receive into destination: {detail}"""


class SourceError(LocalError):
    """cannot read source: {detail}"""


class OutputError(LocalError):
    """cannot write output: {detail}"""


class StoreError(LocalError):
    """store problem: {detail}"""


# -- a destination that holds an earlier tree: incremental receives (exit 3) -------------

class WrongBase(DestinationError):
    """{detail}"""

    # DEST holds another stream than the one an incremental stream changes: nothing was changed


class LocallyModified(DestinationError):
    """{detail}"""

    hint = "nothing was changed; receive with --force to apply the stream over the local changes"


class DestStateError(DestinationError):
    """{detail}"""

    # the state beside DEST (.DEST.rawsend/) cannot be read, is in use, or does not fit DEST


class DecoderMissing(LocalError):
    """cannot decode-check here: {detail}"""

    # the input may be sound: this host lacks the decoder, which is a local matter


# -- keys: exit 4 ----------------------------------------------------------------------

class KeyProblem(RawsendError):
    """key problem: {detail}"""

    exit_code = 4
    summary = "a key problem: no key given for an encrypted stream, none of the given keys is its key, a bad key file"


class KeyMissing(KeyProblem):
    """stream is encrypted and no key was given for it: {detail}"""

    hint = "pass --key-file with that key, or receive with --store to keep it encrypted"


class WrongKey(KeyProblem):
    """none of the given keys is the stream's key: {detail}"""

    hint = "pass the key of that id ('rawsend dump' shows the stream's key id)"

    @classmethod
    def for_stream(cls, needed: str, given: list[str], offset: int) -> "WrongKey":
        """The one message of every command for keys that do not fit (found in HEADER, record 0)."""
        return cls(f"it needs key id {needed} (given: {', '.join(given)})", record=0, offset=offset)


class KeyFileError(KeyProblem):
    """bad key file: {detail}"""


class UnknownSigner(KeyProblem):
    """signed by none of the given signers: {detail}"""

    hint = "pass the public key of that key id with --signer, or do not trust this stream"


# -- standard output closed by its reader: exit 141 ------------------------------------

class OutputClosed(RawsendError):
    """the reading side of the output closed (broken pipe){detail}"""

    # what a shell reports for a process killed by SIGPIPE (| head): the reader chose to stop,
    # or failed and said why itself, so there is nothing to add
    exit_code = 128 + signal.SIGPIPE
    summary = ("the reader of standard output (or of -o FIFO) closed it early (`head` does):"
               " no message, the status of a process killed by SIGPIPE")
    silent = True


# -- a bug: exit 70 ----------------------------------------------------------------------

class InternalError(RawsendError):
    """internal error: {detail}"""

    exit_code = 70  # EX_SOFTWARE
    summary = "an internal error: a bug in rawsend (`RAWSEND_DEBUG=1` shows the traceback)"
    hint = "this is a bug in rawsend, please report it (RAWSEND_DEBUG=1 shows the traceback)"


# -- signals: exit 128+N -------------------------------------------------------------------

class Interrupted(KeyboardInterrupt):
    """interrupted by {name}"""

    # A BaseException, as KeyboardInterrupt: no ``except RawsendError`` (a store verify collecting
    # verdicts, say) may swallow it, and every cleanup that runs for Ctrl-C runs for it.
    summary = ("stopped by signal N (SIGHUP 129, SIGINT 130, SIGTERM 143): what was unfinished is removed"
               " (a receive leaves DEST and the store as they were), and it says so")
    silent = False

    def __init__(self, signum: int, note: str = ""):
        self.signum = signum
        self.note = note  # what the command undid, said after the signal's name
        super().__init__(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        text = f"interrupted by {signal.Signals(self.signum).name}"
        return f"{text}; {self.note}" if self.note else text

    def __str__(self) -> str:
        return self.message()


# -- send finished, with warnings: exit 5 ----------------------------------------------------

class SourceRemark:
    """{detail}"""

    # What send says about one path of its tree.  Not an exception: send goes on and the stream
    # stays valid.  The docstring is the template, as for errors; the CLI prints str() of each.
    def __init__(self, path: str, detail: str = ""):
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.path}: " + (self.__doc__ or "{detail}").strip().format(detail=self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {self.detail!r})"


class SendWarning(SourceRemark):
    """{detail}"""

    # the stream lacks or mixes part of the tree: send finishes, then exits with this code
    exit_code = 5
    summary = ("`send` finished with warnings: the stream is valid, but some of the tree vanished, changed"
               " while it was read or could not be read (each one is named on stderr)")


class Vanished(SendWarning):
    """file removed before we read it; it is not in the stream"""


class ChangedWhileRead(SendWarning):
    """file {detail} while we read it; the stream holds the bytes as they were read"""


class Replaced(ChangedWhileRead):
    """replaced by another kind of file while we read the tree; it is not in the stream"""


class Unreadable(SendWarning):
    """cannot {detail}; it is not in the stream, or only in part"""


class SendNotice(SourceRemark):
    """{detail}"""

    exit_code = 0  # worth saying, not a failure (as tar says of a socket)


class SkippedSocket(SendNotice):
    """socket ignored (a socket cannot be sent)"""


class SkippedOutput(SendNotice):
    """file is the stream being written; not sent"""


class OtherFilesystem(SendNotice):
    """directory is on another filesystem; sent empty (--one-file-system)"""


# The exit codes, in the order of the README's table (0 is success).
EXIT_CODES = (DamagedInput, UsageError, LocalError, KeyProblem, SendWarning, InternalError, Interrupted,
              OutputClosed)


def exit_code_table() -> str:
    """The README's "Exit codes" table, made from the classes."""
    rows = ["| code | meaning |", "|-----:|---------|", "| 0 | success |"]
    for cls in EXIT_CODES:
        code = "128+N" if cls is Interrupted else str(cls.exit_code)
        rows.append(f"| {code} | {cls.summary} |")
    return "\n".join(rows) + "\n"
