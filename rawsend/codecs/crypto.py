"""Sealing and opening the records of an encrypted stream.

spec/encryption.md is the normative text.  In short, for one stream:

    enc_key || mac_key = HKDF-SHA256(ikm=key, salt=header.salt,
                                     info="rawsend v1 stream keys" || stream_id, L=64)
    prefix   = stream_id || u64le record index || u16le record type
    metadata body  = nonce || AEAD(enc_key, nonce, clear body, aad=prefix)
    extent payload = AEAD(enc_key, nonce, encoded payload,
                          aad=prefix || extent body without its nonce)
    END mac  = HMAC-SHA256(mac_key, header body || u64le records || u64le bytes || digest)

Nonces are 12 random bytes per sealed record; the per-stream subkey (random
salt) keeps the number of nonces drawn under one AEAD key to one stream's
records.  The AAD binds every record to its stream, position and type, and
every extent to its file, offset and encoding, so a record moved, swapped,
dropped or copied from another stream fails to open, and the END mac
authenticates the record count, byte count and the digest of every record
header.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import struct
import threading
from typing import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rawsend.codecs.keys import Key, load_key
from rawsend.codecs.sealing import _where, check_sealing  # noqa: F401  (check_sealing: importable here too)
from rawsend.errors import AuthenticationFailed, KeyProblem, MalformedRecord
from rawsend.stream.records import (
    AEAD_TAG_LEN, CLEAR_TYPES, EXTENT_AAD_LEN, FLAG_SEALED, MAX_BODY_LEN, MAX_EXTENT_LEN, NONCE_LEN, Cipher, End,
    Extent, Header, RecordType,
)

SALT_LEN = 32
SUBKEY_INFO = b"rawsend v1 stream keys"
AAD_PREFIX = struct.Struct("<16sQH")  # stream_id, record index (HEADER is 0), record type
MAC_COUNTS = struct.Struct("<QQ")     # record_count, byte_count
SEALED_MIN = NONCE_LEN + AEAD_TAG_LEN  # a sealed body of an empty clear body

# Random 96-bit nonces under one key: after n seals the chance that two
# collide is below n^2 / 2^97.  NIST SP 800-38D caps random-nonce GCM at 2^32
# invocations per key (collision odds under 2^-33); each stream has its own
# key, so this is a cap per stream, about 512 TiB of 128 KiB extents.
MAX_SEALS_PER_STREAM = 1 << 32

_AEADS = {Cipher.AES_256_GCM: AESGCM, Cipher.CHACHA20_POLY1305: ChaCha20Poly1305}

# records whose body is sealed in an encrypted stream: all but those the registry marks clear
_CLEAR_TYPES = CLEAR_TYPES
_EXTENT = RecordType.EXTENT  # as a global: cheaper per record than the enum's attribute


def derive_stream_keys(secret: bytes, salt: bytes, stream_id: bytes) -> tuple[bytes, bytes]:
    """(enc_key, mac_key) of one stream."""
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt,
               info=SUBKEY_INFO + stream_id).derive(secret)
    return okm[:32], okm[32:]


def aad_prefix(stream_id: bytes, index: int, rtype: int) -> bytes:
    return AAD_PREFIX.pack(stream_id, index, rtype)


def extent_aad(stream_id: bytes, index: int, extent: Extent) -> bytes:
    """prefix || every extent body field except the nonce (the extent as sealed)."""
    return aad_prefix(stream_id, index, RecordType.EXTENT) + extent.pack()[:EXTENT_AAD_LEN]


def end_mac(mac_key: bytes, header_body: bytes, record_count: int, byte_count: int, digest: bytes) -> bytes:
    msg = header_body + MAC_COUNTS.pack(record_count, byte_count) + digest
    return hmac.new(mac_key, msg, hashlib.sha256).digest()


def _key_of(key) -> Key:
    return key if isinstance(key, Key) else Key(key)


class Sealer:
    """Seals one stream's records under ``key`` (a Key or 32 bytes).

    ``random(n)`` supplies salt and nonces: os.urandom, or a deterministic
    source for reproducible test vectors.  seal_extent runs on the encoder's
    worker threads: the AEAD objects are thread-safe and ``random`` is called
    under a lock.
    """

    def __init__(self, key, cipher: int, *, salt: bytes | None = None,
                 random: Callable[[int], bytes] = os.urandom):
        if cipher not in _AEADS:
            raise KeyProblem(f"cipher {cipher} cannot seal a stream")
        self.key = _key_of(key)
        self.cipher = cipher
        self._random = random
        self._lock = threading.Lock()
        self._seals = 0
        self.salt = salt if salt is not None else self._draw(SALT_LEN)
        assert len(self.salt) == SALT_LEN
        self._aead = None
        self._mac_key = b""
        self._stream_id = b""

    def _draw(self, n: int) -> bytes:
        with self._lock:
            out = self._random(n)
        assert len(out) == n
        return out

    def _nonce(self) -> bytes:
        with self._lock:
            self._seals += 1
            if self._seals > MAX_SEALS_PER_STREAM:
                raise KeyProblem(f"more than {MAX_SEALS_PER_STREAM} sealed records in one stream",
                                 hint="split the tree into several streams")
            nonce = self._random(NONCE_LEN)
        assert len(nonce) == NONCE_LEN
        return nonce

    def header_fields(self) -> dict:
        return dict(cipher=self.cipher, key_id=self.key.key_id, salt=self.salt)

    def start(self, header: Header) -> None:
        """Derive the stream's subkeys; ``header`` must carry header_fields()."""
        assert header.cipher == self.cipher and header.key_id == self.key.key_id and header.salt == self.salt
        enc_key, self._mac_key = derive_stream_keys(self.key.secret, self.salt, header.stream_id)
        self._aead = _AEADS[self.cipher](enc_key)
        self._stream_id = header.stream_id

    def seal_metadata(self, index: int, rtype: int, body: bytes) -> bytes:
        nonce = self._nonce()
        sealed = nonce + self._aead.encrypt(nonce, body, aad_prefix(self._stream_id, index, rtype))
        assert len(sealed) <= MAX_BODY_LEN
        return sealed

    def seal_extent(self, index: int, extent: Extent, payload) -> tuple[Extent, bytes]:
        """Seal an encoded payload; the extent comes back with encryption, key id, nonce set."""
        assert extent.encryption == Cipher.NONE and extent.disk_num_bytes == len(payload) <= MAX_EXTENT_LEN
        nonce = self._nonce()
        sealed = dataclasses.replace(extent, disk_num_bytes=len(payload) + AEAD_TAG_LEN, encryption=self.cipher,
                                     key_id=self.key.key_id, nonce=nonce)
        return sealed, self._aead.encrypt(nonce, payload, extent_aad(self._stream_id, index, sealed))

    def end_mac(self, header_body: bytes, record_count: int, byte_count: int, digest: bytes) -> bytes:
        return end_mac(self._mac_key, header_body, record_count, byte_count, digest)


NONCE_WINDOW = 1 << 16  # sealed records whose nonces a reader remembers (about 6.5 MB)


class Opener:
    """Opens and authenticates one stream's records with the stream's key."""

    def __init__(self, key: Key, header: Header):
        assert header.encrypted and key.key_id == header.key_id
        self.header = header
        enc_key, self._mac_key = derive_stream_keys(key.secret, header.salt, header.stream_id)
        self._aead = _AEADS[header.cipher](enc_key)
        # The nonces of the last NONCE_WINDOW sealed records, to refuse a repeat.  A window,
        # not every nonce: memory must not grow with the stream (about 100 bytes a nonce),
        # and a broken random source repeats soon, not once in millions of records.
        self._nonces: dict[bytes, int] = {}  # insertion order is the eviction order

    def _seen(self, nonce: bytes, index: int, offset: int | None) -> None:
        first = self._nonces.setdefault(nonce, index)
        if first == index and len(self._nonces) > NONCE_WINDOW:
            del self._nonces[next(iter(self._nonces))]
        if first != index:
            raise AuthenticationFailed(f"nonce {nonce.hex()} was already used by record {first}",
                                       record=index, offset=offset,
                                       hint="the sender's random source is broken or the stream was forged;"
                                            " do not trust it, and stop using this key for new streams")

    def open_metadata(self, raw) -> bytes:
        """Clear body of a sealed record (a RawRecord)."""
        body = raw.body
        if len(body) < SEALED_MIN:
            raise MalformedRecord(f"sealed body of {len(body)} bytes, shorter than nonce and tag"
                                  f" ({SEALED_MIN})", record=raw.index, offset=raw.offset)
        nonce = bytes(body[:NONCE_LEN])
        try:
            clear = self._aead.decrypt(nonce, body[NONCE_LEN:], aad_prefix(self.header.stream_id, raw.index,
                                                                           raw.type))
        except InvalidTag:
            raise AuthenticationFailed(f"the sealed {RecordType.name_of(raw.type)} record does not open with this key",
                                       record=raw.index, offset=raw.offset) from None
        self._seen(nonce, raw.index, raw.offset)
        return clear

    def open_extent(self, index: int, extent: Extent, payload, offset: int | None = None) -> bytes:
        """Encoded payload (still compressed) of a sealed extent."""
        if extent.encryption != self.header.cipher or extent.key_id != self.header.key_id:
            raise MalformedRecord("extent encryption or key id differs from the stream header's",
                                  record=index, offset=offset)
        if len(payload) != extent.disk_num_bytes or len(payload) < AEAD_TAG_LEN:
            raise MalformedRecord(f"payload is {len(payload)} bytes, disk_num_bytes says {extent.disk_num_bytes}",
                                  record=index, offset=offset)
        try:
            clear = self._aead.decrypt(extent.nonce, payload, extent_aad(self.header.stream_id, index, extent))
        except InvalidTag:
            raise AuthenticationFailed(f"the payload of the extent of file id {extent.file_id} at file offset"
                                       f" {extent.offset} does not open with this key",
                                       record=index, offset=offset) from None
        self._seen(extent.nonce, index, offset)
        return clear

    def check_end(self, header_body: bytes, end: End, index: int, offset: int | None = None) -> None:
        want = end_mac(self._mac_key, header_body, end.record_count, end.byte_count, end.digest)
        if not hmac.compare_digest(want, end.mac):
            raise AuthenticationFailed("the END record's MAC does not match: records were dropped, added,"
                                       " reordered or changed", record=index, offset=offset)


class Keyring:
    """The keys a reader was given, by key id; the stream's key id picks one."""

    def __init__(self, keys: Iterable[Key] = ()):
        self.keys: dict[bytes, Key] = {}
        for key in keys:
            self.keys.setdefault(key.key_id, key)

    @classmethod
    def from_files(cls, paths: Iterable, warn: Callable[[str], None] | None = None) -> "Keyring":
        return cls(load_key(p, warn) for p in paths)

    @property
    def key_ids(self) -> list[str]:
        return [k.hex() for k in self.keys]

    def opener(self, header: Header) -> Opener | None:
        """An Opener for this stream, or None when no key here has its key id."""
        key = self.keys.get(header.key_id)
        return Opener(key, header) if key is not None else None
