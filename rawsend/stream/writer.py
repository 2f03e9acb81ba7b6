"""StreamWriter: frames records, checksums them, keeps the running digest, writes END."""

from __future__ import annotations

import hashlib
from typing import Callable

from rawsend.crc import crc32c

from rawsend.errors import OutputClosed, OutputError
from rawsend.fsutil import write_all
from rawsend.stream.records import (
    CRC_COVERED, MAGIC, MAX_BODY_LEN, MAX_PAYLOAD_LEN, PREAMBLE, RECORD_HEADER, VERSION,
    End, Header, RecordType,
)

FLUSH_AT = 1 << 20  # bytes buffered before one write to the output


def fd_writer(fd: int) -> Callable[[bytes], None]:
    """A write callable for a file descriptor that loops on short writes."""

    def write(data) -> None:
        try:
            write_all(fd, data)
        except BrokenPipeError:
            raise OutputClosed(hint="check the receiving command's error") from None
        except OSError as e:
            raise OutputError(f"writing the stream failed: {e.strerror}") from None

    return write


class StreamWriter:
    """Writes one stream: preamble, HEADER, the caller's records, END.

    Records are buffered and written in batches of about FLUSH_AT bytes.
    """

    def __init__(self, write: Callable[[bytes], None], header: Header):
        self._write = write
        self._buf = bytearray()
        self.header = header
        self.header_body = header.pack()
        self._digest = hashlib.sha256()
        self.record_count = 0
        self.byte_count = 0
        preamble = PREAMBLE.pack(MAGIC, VERSION)
        self._digest.update(preamble)
        self._emit(preamble)
        self.write_record(RecordType.HEADER, self.header_body)

    @property
    def next_index(self) -> int:
        """Index the next record will get (HEADER is record 0)."""
        return self.record_count

    def write_record(self, rtype: int, body: bytes, payload=b"", flags: int = 0) -> int:
        assert len(body) <= MAX_BODY_LEN and len(payload) <= MAX_PAYLOAD_LEN
        header = bytearray(RECORD_HEADER.pack(rtype, flags, len(body), len(payload), 0))
        crc = crc32c(body, crc32c(memoryview(header)[:CRC_COVERED]))
        if payload:
            crc = crc32c(payload, crc)
        RECORD_HEADER.pack_into(header, 0, rtype, flags, len(body), len(payload), crc)
        self._digest.update(header)
        self._emit(header)
        self._emit(body)
        if payload:
            self._emit(payload)
        index = self.record_count
        self.record_count += 1
        return index

    def finish(self, mac: Callable[[bytes, int, int, bytes], bytes] | None = None) -> End:
        """Write END; ``mac(header_body, record_count, byte_count, digest)`` when encrypted."""
        digest = self._digest.digest()
        end = End(self.record_count, self.byte_count, digest,
                  mac(self.header_body, self.record_count, self.byte_count, digest) if mac else bytes(32))
        self.write_record(RecordType.END, end.pack())
        self.flush()
        return end

    def _emit(self, data) -> None:
        self.byte_count += len(data)
        self._buf += data
        if len(self._buf) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._write(self._buf)
            self._buf = bytearray()
