"""TeeReader: a stream whose every byte read is also handed to a copy, as it is read.

A store keeps a stream byte for byte: copying what the checked reader consumed, while
it consumes it, keeps exactly the bytes that were checked, without framing any record
again (the shape of dulwich's PackStreamCopier).
"""

from __future__ import annotations

from typing import BinaryIO, Callable


class TeeReader:
    def __init__(self, stream: BinaryIO, copy: Callable[[object], None]):
        self._stream = stream
        self._copy = copy

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        if data:
            self._copy(data)
        return data

    def readinto(self, buf) -> int:
        n = self._stream.readinto(buf)
        if n:
            self._copy(memoryview(buf)[:n])  # the copy must not keep the view: buf is reused
        return n
