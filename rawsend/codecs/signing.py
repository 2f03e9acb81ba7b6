"""Signing keys and detached signatures of stream files, in minisign's formats.

spec/signatures.md is the normative text.  In short:

    NAME.pub     untrusted comment: ...\\n  base64("Ed" || key_id[8] || public_key[32])\\n
    NAME         untrusted comment: ...\\n  base64(SECRET_KEY), unencrypted (kdf "\\0\\0")\\n
    FILE.minisig untrusted comment: ...\\n  base64("ED" || key_id || Ed25519(BLAKE2b-512(FILE)))\\n
                 trusted comment: TEXT\\n   base64(Ed25519(signature || TEXT))\\n

A signature covers every byte of the file ("ED", minisign's prehashed mode): the stream's own
END digest covers only record headers, whose CRC-32C anyone can recompute.  The secret key file
is protected by its mode (0600), as ``minisign -G -W`` writes it, never by a passphrase, so
stock minisign signs with it too.  No secret byte ever goes into a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import struct
import time
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rawsend.errors import (
    KeyFileError, LocalError, OutputError, SignatureError, SignatureMismatch, UnknownSigner,
)
from rawsend.fsutil import fsync_dir, read_capped, write_all

COMMENT_PREFIX = b"untrusted comment: "
TRUSTED_PREFIX = b"trusted comment: "
SIG_ALG = b"Ed"          # keys; and a legacy signature over the raw file (refused here)
SIG_ALG_HASHED = b"ED"   # a signature over BLAKE2b-512 of the file
KDF_NONE = b"\0\0"       # secret key stored in the clear (minisign -W)
KDF_SCRYPT = b"Sc"       # secret key encrypted under a passphrase (refused here)
CHK_ALG = b"B2"          # BLAKE2b-256 checksum of the secret key
ENCRYPTION_KEY_PREFIX = b"RAWSEND-KEY-1 "

KEY_ID_LEN = 8
# sig_alg "Ed", key id, Ed25519 public key
PUBLIC_KEY = struct.Struct("<2s8s32s")
# sig_alg, kdf_alg, chk_alg, kdf salt, kdf opslimit, kdf memlimit, key id,
# Ed25519 secret key (seed || public key), BLAKE2b-256(sig_alg || key id || secret key)
SECRET_KEY = struct.Struct("<2s2s2s32sQQ8s64s32s")
# sig_alg "ED", key id, Ed25519 signature of BLAKE2b-512(file)
SIGNATURE = struct.Struct("<2s8s64s")
GLOBAL_SIG_LEN = 64  # Ed25519 over signature || trusted comment

# minisign's line buffers: COMMENTMAXBYTES and TRUSTEDCOMMENTMAXBYTES, prefix and newline included
MAX_COMMENT_LINE = 1024
MAX_TRUSTED_LINE = 8192
MAX_KEY_FILE = MAX_COMMENT_LINE + 4 * (SECRET_KEY.size + 2) // 3 + 2
MAX_SIGNATURE_FILE = MAX_COMMENT_LINE + MAX_TRUSTED_LINE + 4 * (SIGNATURE.size + GLOBAL_SIG_LEN + 4) // 3 + 4
HASH_CHUNK = 1 << 20


def key_id_text(key_id: bytes) -> str:
    """A key id as minisign prints it: the little-endian 64-bit number in 16 uppercase hex digits."""
    return f"{int.from_bytes(key_id, 'little'):016X}"


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes
    key: Ed25519PublicKey
    path: str | None = None

    @property
    def key_id_hex(self) -> str:
        return key_id_text(self.key_id)

    def raw(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SecretKey:
    __slots__ = ("key_id", "_key", "public", "path")

    def __init__(self, key_id: bytes, key: Ed25519PrivateKey, path: str | None = None):
        self.key_id = key_id
        self._key = key
        self.public = PublicKey(key_id, key.public_key(), path)
        self.path = path

    @property
    def key_id_hex(self) -> str:
        return key_id_text(self.key_id)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def packed(self) -> bytes:
        """SECRET_KEY as minisign -W writes it, with the checksum filled in (minisign leaves zeros)."""
        seed = self._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                       serialization.NoEncryption())
        sk = seed + self.public.raw()
        return SECRET_KEY.pack(SIG_ALG, KDF_NONE, CHK_ALG, bytes(32), 0, 0, self.key_id, sk,
                               _checksum(self.key_id, sk))

    def __repr__(self) -> str:  # never the secret
        return f"SecretKey(id={self.key_id_hex}{', path=' + repr(self.path) if self.path else ''})"


def _checksum(key_id: bytes, sk: bytes) -> bytes:
    return hashlib.blake2b(SIG_ALG + key_id + sk, digest_size=32).digest()


def new_secret_key() -> SecretKey:
    return SecretKey(os.urandom(KEY_ID_LEN), Ed25519PrivateKey.generate())


# -- reading files ------------------------------------------------------------------------------

def _read_small(path: str, cap: int, error, what: str) -> tuple[bytes, os.stat_result]:
    """At most cap + 1 bytes of a regular file or pipe; ``error`` names what cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"cannot open the {what}: {e.strerror}", path=path) from None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            raise error(f"the {what} is not a regular file or a pipe", path=path)
        data = read_capped(fd, cap)
    except OSError as e:
        raise error(f"cannot read the {what}: {e.strerror}", path=path) from None
    finally:
        os.close(fd)
    return data, st


def _lines(data: bytes, count: int, error, path: str, what: str) -> list[bytes]:
    """Exactly ``count`` lines, each ending in a newline (CR LF accepted, as minisign does)."""
    if not data.endswith(b"\n"):
        raise error(f"the {what} does not end with a newline", path=path)
    lines = [line[:-1] if line.endswith(b"\r") else line for line in data[:-1].split(b"\n")]
    if len(lines) != count:
        raise error(f"the {what} has {len(lines)} lines, expected {count}", path=path)
    for n, line in enumerate(lines, 1):
        if b"\r" in line or b"\0" in line:
            raise error(f"line {n} of the {what} holds a carriage return or NUL", path=path)
    return lines


def _decode(line: bytes, size: int, error, path: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except binascii.Error:
        raise error(f"the {what} is not valid base64", path=path) from None
    if len(raw) != size:
        raise error(f"the {what} decodes to {len(raw)} bytes, expected {size}", path=path)
    return raw


def _kind_hint(raw_len: int) -> str:
    return {PUBLIC_KEY.size: "public", SECRET_KEY.size: "secret"}.get(raw_len, "")


def _key_lines(path: str, warn: Callable[[str], None] | None, wanted: str) -> bytes:
    """The decoded key of a minisign key file, refusing a rawsend encryption key by name."""
    data, st = _read_small(path, MAX_KEY_FILE, KeyFileError, "key file")
    if data.startswith(ENCRYPTION_KEY_PREFIX):
        raise KeyFileError(f"it is an encryption key (written by 'rawsend keygen'), not a {wanted} signing key",
                           path=path, hint="make a signing key with 'rawsend keygen --sign -o NAME': "
                                           "'sign -k NAME' takes NAME, 'verify --signer' takes NAME.pub")
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"it is longer than {MAX_KEY_FILE} bytes, larger than any minisign key file", path=path)
    comment, encoded = _lines(data, 2, KeyFileError, path, "key file")
    if not comment.startswith(COMMENT_PREFIX):
        raise KeyFileError("its first line does not start with 'untrusted comment: '", path=path,
                           hint="give a key file written by 'rawsend keygen --sign' or 'minisign -G'")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise KeyFileError("its key line is not valid base64", path=path) from None
    kind = _kind_hint(len(raw))
    if kind == "secret" and wanted == "public":
        raise KeyFileError("it is a secret signing key; verifying needs the public key", path=path,
                           hint="give NAME.pub, and keep the secret key NAME on the signing host only")
    if kind == "public" and wanted == "secret":
        raise KeyFileError("it is a public key; signing needs the secret key", path=path,
                           hint="give the secret key file (NAME, beside NAME.pub)")
    size = PUBLIC_KEY.size if wanted == "public" else SECRET_KEY.size
    if len(raw) != size:
        raise KeyFileError(f"its key decodes to {len(raw)} bytes, a minisign {wanted} key is {size}", path=path)
    if raw[:2] != SIG_ALG:
        raise KeyFileError(f"its signature algorithm is {raw[:2]!r}, expected 'Ed' (Ed25519)", path=path)
    if wanted == "secret" and warn is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        warn(f"secret key file {path} can be read by other users (mode {stat.S_IMODE(st.st_mode):04o});"
             f" run: chmod 600 {path}")
    return raw


def load_public_key(path: str | os.PathLike) -> PublicKey:
    path = os.fspath(path)
    _, key_id, pk = PUBLIC_KEY.unpack(_key_lines(path, None, "public"))
    try:
        key = Ed25519PublicKey.from_public_bytes(pk)
    except ValueError:
        raise KeyFileError("its public key is not a valid Ed25519 key", path=path) from None
    return PublicKey(key_id, key, path)


def load_secret_key(path: str | os.PathLike, warn: Callable[[str], None] | None = None) -> SecretKey:
    path = os.fspath(path)
    _, kdf, chk_alg, _, _, _, key_id, sk, chk = SECRET_KEY.unpack(_key_lines(path, warn, "secret"))
    if kdf == KDF_SCRYPT:
        raise KeyFileError("the secret key is encrypted with a passphrase; rawsend reads only unencrypted"
                           " secret keys, protected by their file mode", path=path,
                           hint=f"remove the passphrase with 'minisign -C -W -s {path}' and keep the file mode 0600")
    if kdf != KDF_NONE:
        raise KeyFileError(f"unknown key derivation {kdf!r}, expected none (minisign -W)", path=path)
    if chk_alg != CHK_ALG:
        raise KeyFileError(f"unknown checksum algorithm {chk_alg!r}, expected 'B2'", path=path)
    # minisign -G -W leaves the checksum zero; a key written by rawsend has it
    if chk != bytes(32) and chk != _checksum(key_id, sk):
        raise KeyFileError("its checksum does not match the key: the file is damaged", path=path)
    key = Ed25519PrivateKey.from_private_bytes(sk[:32])
    secret = SecretKey(key_id, key, path)
    if secret.public.raw() != sk[32:]:
        raise KeyFileError("its public half does not belong to its secret half: the file is damaged", path=path)
    return secret


def _create_excl(path: str, mode: int) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise OutputError("the key file already exists; keygen never overwrites a key", path=path,
                          hint="choose a new file name") from None
    except OSError as e:
        raise OutputError(f"cannot create the key file: {e.strerror}", path=path) from None
    os.fchmod(fd, mode)  # the umask may have taken bits away: make the mode exact
    return fd


def write_key_pair(name: str | os.PathLike, secret: SecretKey) -> tuple[str, str]:
    """Create NAME (secret, mode 0600) and NAME.pub; never overwrite either, leave neither half-made."""
    sk_path = os.fspath(name)
    pk_path = sk_path + ".pub"
    sk_text = (COMMENT_PREFIX + f"rawsend signing secret key {secret.key_id_hex}, not encrypted:"
               f" protected by its file mode".encode() + b"\n" + base64.b64encode(secret.packed()) + b"\n")
    pk_text = (COMMENT_PREFIX + f"minisign public key {secret.key_id_hex}".encode() + b"\n"
               + base64.b64encode(PUBLIC_KEY.pack(SIG_ALG, secret.key_id, secret.public.raw())) + b"\n")
    made = []
    try:
        for path, mode, text in ((sk_path, 0o600, sk_text), (pk_path, 0o644, pk_text)):
            fd = _create_excl(path, mode)
            made.append(path)
            try:
                write_all(fd, text)
                os.fsync(fd)
            except OSError as e:
                raise OutputError(f"cannot write the key file: {e.strerror}", path=path) from None
            finally:
                os.close(fd)
    except BaseException:
        for path in made:
            os.unlink(path)
        raise
    return sk_path, pk_path


# -- hashing the signed file ----------------------------------------------------------------------

class HashingReader:
    """A binary file whose every byte read goes into BLAKE2b-512, so the bytes checked are the bytes hashed."""

    def __init__(self, f):
        self._f = f
        self._hash = hashlib.blake2b()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buf) -> int:
        k = self._f.readinto(buf)
        if k:
            view = memoryview(buf)[:k]
            self._hash.update(view)
            self.size += k
        return k

    def drain(self) -> None:
        """Hash whatever the reader did not read: a signature covers the whole file."""
        while self.read(HASH_CHUNK):
            pass

    def digest(self) -> bytes:
        return self._hash.digest()


# -- signatures -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Signature:
    algorithm: bytes
    key_id: bytes
    signature: bytes
    trusted_comment: bytes
    global_signature: bytes
    path: str

    @property
    def key_id_hex(self) -> str:
        return key_id_text(self.key_id)

    def fields(self) -> dict[str, str]:
        """The trusted comment's tab-separated key:value fields (minisign's convention)."""
        out = {}
        for part in self.trusted_comment.decode("utf-8", "replace").split("\t"):
            key, sep, value = part.partition(":")
            if sep:
                out.setdefault(key, value)
        return out


def trusted_comment(file_name: str, stream_id: bytes, end_digest: bytes, size: int,
                    now: float | None = None) -> bytes:
    """minisign's default fields, then what names the stream: its id, END digest and size."""
    from rawsend.text import escape
    name = escape(os.fsencode(file_name))  # printable, no tab: minisign refuses unprintable comments
    ts = int(time.time() if now is None else now)
    return (f"timestamp:{ts}\tfile:{name}\thashed\tstream:{stream_id.hex()}\tend:{end_digest.hex()}"
            f"\tbytes:{size}").encode()


def signature_file(secret: SecretKey, file_hash: bytes, comment: bytes) -> bytes:
    """The four lines of a .minisig for a file whose BLAKE2b-512 is ``file_hash``."""
    assert len(file_hash) == 64 and b"\n" not in comment and b"\r" not in comment
    if len(TRUSTED_PREFIX) + len(comment) + 1 >= MAX_TRUSTED_LINE:
        raise SignatureError(f"the trusted comment is {len(comment)} bytes, too long for minisign")
    sig = secret.sign(file_hash)
    return (COMMENT_PREFIX + f"signature from rawsend secret key {secret.key_id_hex}".encode() + b"\n"
            + base64.b64encode(SIGNATURE.pack(SIG_ALG_HASHED, secret.key_id, sig)) + b"\n"
            + TRUSTED_PREFIX + comment + b"\n"
            + base64.b64encode(secret.sign(sig + comment)) + b"\n")


def write_signature(path: str, text: bytes) -> None:
    """Replace ``path`` atomically: a reader sees the old signature or the new one, never half."""
    directory, base = os.path.split(os.path.abspath(path))
    temp = os.path.join(directory, f".{base}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise OutputError(f"cannot create the signature file: {e.strerror}", path=path) from None
    try:
        try:
            write_all(fd, text)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except OSError as e:
        os.unlink(temp)
        raise OutputError(f"cannot write the signature file: {e.strerror}", path=path) from None
    except BaseException:
        os.unlink(temp)
        raise
    fsync_dir(directory)


def load_signature(path: str) -> Signature:
    data, _ = _read_small(path, MAX_SIGNATURE_FILE, LocalError, "signature file")
    if len(data) > MAX_SIGNATURE_FILE:
        raise SignatureError(f"it is longer than {MAX_SIGNATURE_FILE} bytes, larger than any minisign signature",
                             path=path)
    untrusted, encoded, trusted, encoded_global = _lines(data, 4, SignatureError, path, "signature file")
    if not untrusted.startswith(COMMENT_PREFIX):
        raise SignatureError("line 1 does not start with 'untrusted comment: '", path=path)
    if not trusted.startswith(TRUSTED_PREFIX):
        raise SignatureError("line 3 does not start with 'trusted comment: '", path=path)
    comment = trusted[len(TRUSTED_PREFIX):]
    if len(untrusted) + 1 >= MAX_COMMENT_LINE:
        raise SignatureError(f"the untrusted comment is {len(untrusted)} bytes, over minisign's limit", path=path)
    if len(trusted) + 1 >= MAX_TRUSTED_LINE:
        raise SignatureError(f"the trusted comment is {len(comment)} bytes, over minisign's limit", path=path)
    if any(c < 0x20 and c != 0x09 or c == 0x7F for c in comment):  # as minisign's is_printable
        raise SignatureError("the trusted comment holds a control character", path=path)
    alg, key_id, sig = SIGNATURE.unpack(_decode(encoded, SIGNATURE.size, SignatureError, path, "signature (line 2)"))
    global_sig = _decode(encoded_global, GLOBAL_SIG_LEN, SignatureError, path, "comment signature (line 4)")
    if alg == SIG_ALG:
        raise SignatureError("it is a legacy signature (algorithm 'Ed') of the raw file; rawsend checks only"
                             " prehashed ones ('ED', BLAKE2b-512 of the file)", path=path,
                             hint="sign again with 'rawsend sign' or 'minisign -S' without -l")
    if alg != SIG_ALG_HASHED:
        raise SignatureError(f"unknown signature algorithm {alg!r}, expected 'ED'", path=path)
    return Signature(alg, key_id, sig, comment, global_sig, path)


def signer_of(sig: Signature, signers: list[PublicKey]) -> PublicKey:
    """The given public key that made ``sig``, its trusted comment checked; the file is checked later."""
    signer = next((k for k in signers if k.key_id == sig.key_id), None)
    if signer is None:
        given = ", ".join(k.key_id_hex for k in signers)
        raise UnknownSigner(f"the signature is by key id {sig.key_id_hex} (given: {given})", path=sig.path)
    if not signer.verifies(sig.global_signature, sig.signature + sig.trusted_comment):
        raise SignatureMismatch(f"the trusted comment or the signature was altered (key id {sig.key_id_hex})",
                                path=sig.path)
    return signer


def check_file(sig: Signature, signer: PublicKey, file_hash: bytes, size: int, path: str,
               stream_id: bytes | None) -> None:
    """Every byte of the file is as signed, or say how it differs from what the signer signed."""
    if signer.verifies(sig.signature, file_hash):
        return
    fields = sig.fields()  # authentic: signer_of checked the comment signature
    if stream_id is not None and "stream" in fields and fields["stream"] != stream_id.hex():
        detail = (f"it is for stream {fields['stream']} (file {fields.get('file', '?')}), this file is stream"
                  f" {stream_id.hex()}: the signature belongs to another stream")
    elif fields.get("bytes", str(size)) != str(size):
        detail = (f"it is for {fields['bytes']} bytes, the file has {size}: the stream was cut off or extended"
                  " after signing")
    else:
        detail = (f"the file's BLAKE2b-512 is not what key id {sig.key_id_hex} signed: its bytes were changed"
                  " after signing")
    raise SignatureMismatch(detail, path=path)
