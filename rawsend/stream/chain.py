"""The chain container (spec/chain-format.md): a full stream and the incremental streams after
it, each framed by its length, so one pipe restores a tree kept as a chain.

A member is read as a stream of exactly its length (MemberInput), so the stream reader's own
rules, trailing data included, hold inside it; errors found there are moved to the chain's
offsets and name the member.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from rawsend.errors import BadMagic, MalformedRecord, RawsendError, TrailingData, TruncatedStream, UnsupportedVersion
from rawsend.stream.records import PREAMBLE

CHAIN_MAGIC = b"rawchain"
CHAIN_VERSION = 1
CHAIN_PREAMBLE = struct.Struct("<8sII")  # magic, version, count
MEMBER_HEADER = struct.Struct("<Q")      # length of the stream that follows
MAX_MEMBERS = 65536


def chain_preamble(count: int) -> bytes:
    return CHAIN_PREAMBLE.pack(CHAIN_MAGIC, CHAIN_VERSION, count)


def member_header(length: int) -> bytes:
    return MEMBER_HEADER.pack(length)


def starts_chain(stream: BinaryIO) -> tuple[bool, BinaryIO]:
    """Whether ``stream`` holds a chain rather than a stream, read without consuming it where the
    stream can peek (a buffered file or pipe); else its first bytes go back in front of it."""
    peek = getattr(stream, "peek", None)
    head = peek(len(CHAIN_MAGIC))[:len(CHAIN_MAGIC)] if peek is not None else b""
    if len(head) == len(CHAIN_MAGIC) or (head and not CHAIN_MAGIC.startswith(head)):
        return head == CHAIN_MAGIC, stream
    head = _read_exactly(stream, len(CHAIN_MAGIC))  # a slow writer, or no peek: rare
    return head == CHAIN_MAGIC, _Prefixed(head, stream)


@dataclass
class Member:
    """One member of a chain being read: its number (from 1), where it starts, its input."""

    number: int
    count: int
    start: int          # offset of its stream's first byte in the chain
    input: MemberInput

    def blame(self, e: RawsendError) -> None:
        """Name this member in an error found in its stream; move its offset to the chain's."""
        e.detail = f"chain member {self.number} of {self.count}: {e.detail}"
        if e.offset is not None:
            e.offset += self.start


class ChainReader:
    """Iterate over the members of a chain read from ``stream``; each must be read to its end
    (the stream reader does so, checking that nothing follows END) before the next."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.offset = 0
        self.count = 0

    def _read(self, n: int, what: str) -> bytes:
        data = _read_exactly(self._stream, n)
        if len(data) < n:
            raise TruncatedStream(f"the chain ends inside {what}", offset=self.offset + len(data))
        self.offset += n
        return data

    def __iter__(self) -> Iterator[Member]:
        magic, version, count = CHAIN_PREAMBLE.unpack(self._read(CHAIN_PREAMBLE.size, "its preamble"))
        if magic != CHAIN_MAGIC:
            raise BadMagic(f"the first 8 bytes are {magic!r}, not {CHAIN_MAGIC!r}", offset=0)
        if version != CHAIN_VERSION:
            raise UnsupportedVersion(f"chain version {version} (this rawsend reads version {CHAIN_VERSION})",
                                     offset=8)
        if not 1 <= count <= MAX_MEMBERS:
            raise MalformedRecord(f"the chain preamble gives {count} members (1..{MAX_MEMBERS} allowed)", offset=12)
        self.count = count
        for number in range(1, count + 1):
            at = self.offset
            (length,) = MEMBER_HEADER.unpack(self._read(MEMBER_HEADER.size, f"the header of member {number}"))
            if length < PREAMBLE.size:
                raise MalformedRecord(f"chain member {number} of {count} is {length} bytes long, shorter than a"
                                      " stream's preamble", offset=at)
            member = MemberInput(self._stream, length)
            yield Member(number, count, self.offset, member)
            if member.left:  # the stream reader stopped early: only an error does that
                raise TruncatedStream(f"chain member {number} of {count} was not read to its end",
                                      offset=self.offset + length - member.left)
            self.offset += length
        if self._stream.read(1):
            raise TrailingData(f"bytes follow the last of the chain's {count} members", offset=self.offset)


class MemberInput:
    """The bytes of one member: a stream of exactly ``length`` bytes, then end of input."""

    def __init__(self, stream: BinaryIO, length: int):
        self._stream = stream
        self.left = length

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        data = self._stream.read(n) if n else b""
        self.left -= len(data)
        return data

    def readinto(self, buf) -> int:
        view = memoryview(buf)
        if len(view) > self.left:
            view = view[:self.left]
        got = self._stream.readinto(view) if len(view) else 0
        self.left -= got
        return got


class _Prefixed:
    """``head`` then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head = head
        self._stream = stream

    def fileno(self) -> int:
        return self._stream.fileno()

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(n)
        if n < 0:
            data, self._head = self._head + self._stream.read(), b""
            return data
        data, self._head = self._head[:n], self._head[n:]
        if len(data) < n:  # a read asks for n bytes and gets them unless the input ends
            data += self._stream.read(n - len(data))
        return data

    def readinto(self, buf) -> int:
        if not self._head:
            return self._stream.readinto(buf)
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data
