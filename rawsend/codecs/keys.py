"""Key files: one 256-bit key per file, as one line of text.

    RAWSEND-KEY-1 <64 lowercase hex digits>\\n

Keys never travel in a stream; a stream names its key by the key id
(spec/encryption.md, "Key files" and "Key id").  Nothing here ever puts key
bytes into an error message or a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from typing import Callable

from rawsend.errors import KeyFileError, OutputError
from rawsend.fsutil import read_capped, write_all

KEY_PREFIX = b"RAWSEND-KEY-1 "
KEY_LEN = 32
KEY_FILE_LEN = len(KEY_PREFIX) + 2 * KEY_LEN + 1  # prefix, hex, newline
KEY_ID_LEN = 16
KEY_ID_INFO = b"rawsend key id v1"
_HEX = frozenset(b"0123456789abcdef")


def key_id_of(secret: bytes) -> bytes:
    """HMAC-SHA256(key, "rawsend key id v1")[:16]: names the key, reveals nothing of it."""
    return hmac.new(secret, KEY_ID_INFO, hashlib.sha256).digest()[:KEY_ID_LEN]


class Key:
    """A 32-byte secret and the id streams name it by."""

    __slots__ = ("secret", "key_id", "path")

    def __init__(self, secret: bytes, path: str | None = None):
        if len(secret) != KEY_LEN:
            raise KeyFileError(f"a key is {KEY_LEN} bytes, got {len(secret)}", path=path)
        self.secret = bytes(secret)
        self.key_id = key_id_of(self.secret)
        self.path = path

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    def __repr__(self) -> str:  # never the secret
        return f"Key(id={self.key_id_hex}{', path=' + repr(self.path) if self.path else ''})"


def format_key(secret: bytes) -> bytes:
    """The exact bytes of a key file holding ``secret``."""
    assert len(secret) == KEY_LEN
    return KEY_PREFIX + secret.hex().encode() + b"\n"


def new_key() -> Key:
    return Key(os.urandom(KEY_LEN))


def parse_key(data: bytes, path: str | None = None) -> Key:
    """Strictly parse a key file's bytes: exact prefix, 64 lowercase hex digits, one newline."""
    where = dict(path=path)
    if data.startswith(b"untrusted comment: "):  # minisign's first line: NAME or NAME.pub of keygen --sign
        raise KeyFileError("it is a signing key (minisign format), not an encryption key", **where,
                           hint="give a key file written by 'rawsend keygen' without --sign; signing keys"
                                " are for 'rawsend sign -k' and 'rawsend verify --signer'")
    if not data.startswith(KEY_PREFIX):
        raise KeyFileError("it does not start with 'RAWSEND-KEY-1 '", **where,
                           hint="give a file written by 'rawsend keygen'")
    digits = data[len(KEY_PREFIX):]
    if not digits.endswith(b"\n"):
        raise KeyFileError("it does not end with a newline", **where)
    digits = digits[:-1]
    if b"\n" in digits or b"\r" in digits:
        raise KeyFileError("it has more than one line", **where)
    if len(digits) != 2 * KEY_LEN:
        raise KeyFileError(f"the key has {len(digits)} characters, expected {2 * KEY_LEN} hex digits", **where)
    if not _HEX.issuperset(digits):
        # say which position is wrong, never what is there
        bad = next(i for i, c in enumerate(digits) if c not in _HEX)
        raise KeyFileError(f"character {bad + 1} of the key is not a lowercase hex digit", **where)
    return Key(bytes.fromhex(digits.decode("ascii")), path)


def load_key(path: str | os.PathLike, warn: Callable[[str], None] | None = None) -> Key:
    """Read and parse a key file; ``warn`` hears about files that others can read."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KeyFileError(f"cannot open it: {e.strerror}", path=path) from None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):  # a pipe: --key-file <(...)
            raise KeyFileError("it is not a regular file or a pipe", path=path)
        data = read_capped(fd, KEY_FILE_LEN)  # never more than one byte past a key file's size
    except OSError as e:
        raise KeyFileError(f"cannot read it: {e.strerror}", path=path) from None
    finally:
        os.close(fd)
    if len(data) > KEY_FILE_LEN and data.startswith(KEY_PREFIX):
        raise KeyFileError(f"it is longer than {KEY_FILE_LEN} bytes, the size of a key file", path=path,
                           hint="a key file holds exactly one line")
    key = parse_key(data, path)
    if warn is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        warn(f"key file {path} can be read by other users (mode {stat.S_IMODE(st.st_mode):04o});"
             f" run: chmod 600 {path}")
    return key


def write_key_file(path: str | os.PathLike, key: Key) -> None:
    """Create ``path`` with mode 0600; refuse to overwrite anything."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise OutputError("the key file already exists; keygen never overwrites a key", path=path,
                           hint="choose a new file name") from None
    except OSError as e:
        raise OutputError(f"cannot create the key file: {e.strerror}", path=path) from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits away, never added: make it exact
        write_all(fd, format_key(key.secret))
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise OutputError(f"cannot write the key file: {e.strerror}", path=path) from None
    os.close(fd)
