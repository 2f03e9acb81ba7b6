"""Keyed digests that STATE keeps instead of contents.

BLAKE2b keyed with the per-STATE secret and truncated to 128 bits.  Keyed, so a digest
means nothing outside its STATE: it cannot be looked up in a table of known files' hashes
or compared with another STATE's.  128 bits, because a digest is only ever compared with
the digest of the same extent of the same file in the parent stream: a change goes unseen
with probability 2**-128 per compared extent, and nobody without the secret can aim for a
match.  The person string separates the three uses.
"""

from __future__ import annotations

import hashlib
import os

SECRET_LEN = 32
DIGEST_LEN = 16

_EXTENT = b"rawsend-extent"
_XATTR = b"rawsend-xattr"
_TARGET = b"rawsend-symlink"


def new_secret() -> bytes:
    return os.urandom(SECRET_LEN)


class Digester:
    """Digests under one STATE's secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes):
        if len(secret) != SECRET_LEN:
            raise ValueError(f"secret must be {SECRET_LEN} bytes")
        self._secret = secret

    def __repr__(self) -> str:  # never the secret
        return "Digester(<secret>)"

    def _digest(self, person: bytes, data) -> bytes:
        return hashlib.blake2b(data, digest_size=DIGEST_LEN, key=self._secret, person=person).digest()

    def extent(self, data) -> bytes:
        """Digest of one extent's unencoded bytes, as the sender reads them."""
        return self._digest(_EXTENT, data)

    def xattr_value(self, value: bytes) -> bytes:
        return self._digest(_XATTR, value)

    def symlink_target(self, target: bytes) -> bytes:
        return self._digest(_TARGET, target)
