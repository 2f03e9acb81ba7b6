"""A strict reader of btrfs send streams (protocol versions 1, 2 and 3).

    reader = SendStreamReader(fileobj)
    reader.version                    # 1, 2 or 3, read from the stream header
    for cmd in reader:                # SendCommand, END included, then it stops
        cmd.name, cmd.attrs, cmd.path

Layout (kernel fs/btrfs/send.h, btrfs-progs kernel-shared/send.h): a 17-byte stream
header (magic b"btrfs-stream\\0", __le32 version), then commands, each a 10-byte
header (__le32 len, __le16 cmd, __le32 crc) and `len` bytes of TLV attributes
(__le16 type, __le16 len, value).  From version 2 on, DATA has no length field and
runs to the end of its command.

The reader trusts nothing: a command's declared length is checked against the
kernel's own send buffer size before anything is allocated (btrfs-progs grows its
buffer to whatever a command declares), every CRC is checked, every attribute must
lie inside its command, have its type's size and be known to the stream's version,
every command must carry the attributes its consumer needs, and END must be the last
bytes.  A second stream header where a command should start is refused by name:
BTRFS_IOC_SEND restarts its stream from the beginning when the sending process is
stopped and continued, and still reports success.

Every error is a StreamError (exit 1) naming the command (record 0 is the stream
header, commands count from 1) and the byte offset where that command starts.
"""

from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from rawsend.crc import crc32c

from rawsend.errors import (
    BadMagic,
    ChecksumMismatch,
    LimitExceeded,
    MalformedRecord,
    StreamError,
    TrailingData,
    TruncatedStream,
    UnsupportedVersion,
)

# --------------------------------------------------------------------------
# Errors: the rawsend classes, with btrfs wording and hints.
# --------------------------------------------------------------------------

_RESEND = "the btrfs send stream is damaged; run btrfs send again and do not stop the sender"


class BtrfsStreamError(StreamError):
    """invalid btrfs send stream: {detail}"""

    hint = _RESEND


class BtrfsBadMagic(BtrfsStreamError, BadMagic):
    """not a btrfs send stream: {detail}"""

    hint = "give the output of 'btrfs send'"


class BtrfsUnsupportedVersion(BtrfsStreamError, UnsupportedVersion):
    """unsupported btrfs send stream version: {detail}"""

    hint = "send it again with 'btrfs send --proto 2' (or 1)"


class BtrfsTruncatedStream(BtrfsStreamError, TruncatedStream):
    """btrfs send stream ends early: {detail}"""

    hint = "the stream was cut off (broken pipe, full disk or killed sender); run btrfs send again"


class BtrfsChecksumMismatch(BtrfsStreamError, ChecksumMismatch):
    """btrfs send stream checksum mismatch: {detail}"""


class BtrfsCommandTooLarge(BtrfsStreamError, LimitExceeded):
    """btrfs send command too large: {detail}"""


class BtrfsMalformedCommand(BtrfsStreamError, MalformedRecord):
    """malformed btrfs send command: {detail}"""


class BtrfsStreamRestarted(BtrfsStreamError):
    """btrfs send stream starts over: {detail}"""

    hint = ("BTRFS_IOC_SEND restarts its stream when the sender is stopped and continued"
            " (SIGSTOP/SIGCONT) or signalled; run btrfs send again without stopping it")


class BtrfsTrailingData(BtrfsStreamError, TrailingData):
    """trailing data after the btrfs send END command: {detail}"""


# --------------------------------------------------------------------------
# Stream header and command header.
# --------------------------------------------------------------------------

MAGIC = b"btrfs-stream\0"
STREAM_HEADER = struct.Struct("<13sI")      # magic, version
CMD_HEADER = struct.Struct("<IHI")          # len (of the attributes), cmd, crc
CRC_OFFSET = 6                               # where crc lies inside CMD_HEADER
TLV_HEADER = struct.Struct("<HH")           # type, len
TLV_TYPE = struct.Struct("<H")              # v2+ DATA: a type and no length

SUPPORTED_VERSIONS = (1, 2, 3)

# The kernel's send buffer, header included (fs/btrfs/send.c): BTRFS_SEND_BUF_SIZE_V1 =
# SZ_64K; from v2 on ALIGN(SZ_16K + BTRFS_MAX_COMPRESSED, PAGE_SIZE) = 144 KiB on 4 KiB pages.
MAX_COMMAND_V1 = 64 * 1024
MAX_COMMAND_V2 = 144 * 1024


def max_command_size(version: int) -> int:
    """The largest command (10-byte header included) the kernel can emit in `version`."""
    return MAX_COMMAND_V1 if version == 1 else MAX_COMMAND_V2


def btrfs_crc32c(data, crc: int = 0) -> int:
    """btrfs' send CRC: CRC-32C with seed 0 and no final inversion (kernel btrfs_crc32c(0, ...)).

    The crc32c library inverts on entry and exit, so seed ~crc and invert its result; `crc`
    chains one call onto the previous one's result.
    """
    return crc32c(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


# --------------------------------------------------------------------------
# Commands (BTRFS_SEND_C_*) and attributes (BTRFS_SEND_A_*), from send.h.
# --------------------------------------------------------------------------

SUBVOL, SNAPSHOT, MKFILE, MKDIR, MKNOD, MKFIFO, MKSOCK, SYMLINK = range(1, 9)
RENAME, LINK, UNLINK, RMDIR, SET_XATTR, REMOVE_XATTR, WRITE, CLONE = range(9, 17)
TRUNCATE, CHMOD, CHOWN, UTIMES, END, UPDATE_EXTENT = range(17, 23)
FALLOCATE, FILEATTR, ENCODED_WRITE = range(23, 26)
ENABLE_VERITY = 26

COMMAND_NAMES = {
    SUBVOL: "subvol", SNAPSHOT: "snapshot", MKFILE: "mkfile", MKDIR: "mkdir", MKNOD: "mknod",
    MKFIFO: "mkfifo", MKSOCK: "mksock", SYMLINK: "symlink", RENAME: "rename", LINK: "link",
    UNLINK: "unlink", RMDIR: "rmdir", SET_XATTR: "set_xattr", REMOVE_XATTR: "remove_xattr",
    WRITE: "write", CLONE: "clone", TRUNCATE: "truncate", CHMOD: "chmod", CHOWN: "chown",
    UTIMES: "utimes", END: "end", UPDATE_EXTENT: "update_extent", FALLOCATE: "fallocate",
    FILEATTR: "fileattr", ENCODED_WRITE: "encoded_write", ENABLE_VERITY: "enable_verity",
}

# The highest command number and attribute number of each version (__BTRFS_SEND_C_MAX_Vn).
MAX_COMMAND = {1: UPDATE_EXTENT, 2: ENCODED_WRITE, 3: ENABLE_VERITY}

A_UUID, A_CTRANSID, A_INO, A_SIZE, A_MODE, A_UID, A_GID, A_RDEV = range(1, 9)
A_CTIME, A_MTIME, A_ATIME, A_OTIME, A_XATTR_NAME, A_XATTR_DATA = range(9, 15)
A_PATH, A_PATH_TO, A_PATH_LINK, A_FILE_OFFSET, A_DATA = range(15, 20)
A_CLONE_UUID, A_CLONE_CTRANSID, A_CLONE_PATH, A_CLONE_OFFSET, A_CLONE_LEN = range(20, 25)
A_FALLOCATE_MODE, A_FILEATTR, A_UNENCODED_FILE_LEN, A_UNENCODED_LEN = range(25, 29)
A_UNENCODED_OFFSET, A_COMPRESSION, A_ENCRYPTION = range(29, 32)
A_VERITY_ALGORITHM, A_VERITY_BLOCK_SIZE, A_VERITY_SALT_DATA, A_VERITY_SIG_DATA = range(32, 36)

MAX_ATTR = {1: A_CLONE_LEN, 2: A_ENCRYPTION, 3: A_VERITY_SIG_DATA}

# Value kinds: how an attribute's bytes become a Python value.
U8, U32, U64, UUID, TIMESPEC, STRING, DATA = "u8", "u32", "u64", "uuid", "timespec", "string", "data"

ATTRIBUTES = {  # number: (name, kind)
    A_UUID: ("uuid", UUID), A_CTRANSID: ("ctransid", U64), A_INO: ("ino", U64),
    A_SIZE: ("size", U64), A_MODE: ("mode", U64), A_UID: ("uid", U64), A_GID: ("gid", U64),
    A_RDEV: ("rdev", U64), A_CTIME: ("ctime", TIMESPEC), A_MTIME: ("mtime", TIMESPEC),
    A_ATIME: ("atime", TIMESPEC), A_OTIME: ("otime", TIMESPEC),
    A_XATTR_NAME: ("xattr_name", STRING), A_XATTR_DATA: ("xattr_data", DATA),
    A_PATH: ("path", STRING), A_PATH_TO: ("path_to", STRING), A_PATH_LINK: ("path_link", STRING),
    A_FILE_OFFSET: ("file_offset", U64), A_DATA: ("data", DATA),
    A_CLONE_UUID: ("clone_uuid", UUID), A_CLONE_CTRANSID: ("clone_ctransid", U64),
    A_CLONE_PATH: ("clone_path", STRING), A_CLONE_OFFSET: ("clone_offset", U64),
    A_CLONE_LEN: ("clone_len", U64), A_FALLOCATE_MODE: ("fallocate_mode", U32),
    A_FILEATTR: ("fileattr", U64), A_UNENCODED_FILE_LEN: ("unencoded_file_len", U64),
    A_UNENCODED_LEN: ("unencoded_len", U64), A_UNENCODED_OFFSET: ("unencoded_offset", U64),
    A_COMPRESSION: ("compression", U32), A_ENCRYPTION: ("encryption", U32),
    A_VERITY_ALGORITHM: ("verity_algorithm", U8), A_VERITY_BLOCK_SIZE: ("verity_block_size", U32),
    A_VERITY_SALT_DATA: ("verity_salt_data", DATA), A_VERITY_SIG_DATA: ("verity_sig_data", DATA),
}

_FIXED = {U8: struct.Struct("<B"), U32: struct.Struct("<I"), U64: struct.Struct("<Q")}
_TIMESPEC = struct.Struct("<QI")            # sec, nsec

# What each command must carry: the attributes btrfs-progs' receive reads for it, and INO
# for the creating commands (the kernel always sends it; the inode replay keys on it).
_CREATE = ("path", "ino")
REQUIRED = {
    SUBVOL: ("path", "uuid", "ctransid"),
    SNAPSHOT: ("path", "uuid", "ctransid", "clone_uuid", "clone_ctransid"),
    MKFILE: _CREATE, MKDIR: _CREATE,
    MKNOD: _CREATE + ("mode", "rdev"), MKFIFO: _CREATE, MKSOCK: _CREATE,
    SYMLINK: _CREATE + ("path_link",),
    RENAME: ("path", "path_to"), LINK: ("path", "path_link"),
    UNLINK: ("path",), RMDIR: ("path",),
    SET_XATTR: ("path", "xattr_name", "xattr_data"), REMOVE_XATTR: ("path", "xattr_name"),
    WRITE: ("path", "file_offset", "data"),
    CLONE: ("path", "file_offset", "clone_len", "clone_uuid", "clone_ctransid", "clone_path",
            "clone_offset"),
    TRUNCATE: ("path", "size"), CHMOD: ("path", "mode"), CHOWN: ("path", "uid", "gid"),
    UTIMES: ("path", "atime", "mtime", "ctime"),
    END: (),
    UPDATE_EXTENT: ("path", "file_offset", "size"),
    FALLOCATE: ("path", "fallocate_mode", "file_offset", "size"),
    FILEATTR: ("path", "fileattr"),
    ENCODED_WRITE: ("path", "file_offset", "unencoded_file_len", "unencoded_len",
                    "unencoded_offset", "data"),
    ENABLE_VERITY: ("path", "verity_algorithm", "verity_block_size"),
}

# Optional attributes with the value a receiver must assume when they are absent.
DEFAULTS = {
    ENCODED_WRITE: {"compression": 0, "encryption": 0},
    ENABLE_VERITY: {"verity_salt_data": memoryview(b""), "verity_sig_data": memoryview(b"")},
}


@dataclass(frozen=True)
class Timespec:
    sec: int
    nsec: int


@dataclass
class SendCommand:
    """One command: its number, where it starts, and its attributes by name.

    Values: paths and names are bytes (not NUL-terminated; the subvolume root is b""),
    integers int, UUIDs uuid.UUID, times Timespec, DATA / XATTR_DATA / verity data a
    memoryview into this command's buffer (copy it to keep it past the next command).
    """

    index: int                  # 1 for the first command after the stream header
    offset: int                 # byte offset of its 10-byte header in the stream
    cmd: int
    attrs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return COMMAND_NAMES[self.cmd]

    @property
    def path(self) -> bytes | None:
        return self.attrs.get("path")

    def __getitem__(self, name: str):
        return self.attrs[name]

    def get(self, name: str, default=None):
        return self.attrs.get(name, default)

    def describe(self) -> str:
        """A one-line summary, data attributes shown by length."""
        parts = []
        for key, value in self.attrs.items():
            if isinstance(value, memoryview):
                value = f"<{len(value)} bytes>"
            parts.append(f"{key}={value!r}")
        return f"{self.name} " + " ".join(parts)


def _decode(kind: str, raw: memoryview):
    """An attribute's value, or None when its size is wrong for its kind."""
    if kind in _FIXED:
        layout = _FIXED[kind]
        return layout.unpack(raw)[0] if len(raw) == layout.size else None
    if kind == UUID:
        return uuidlib.UUID(bytes=bytes(raw)) if len(raw) == 16 else None
    if kind == TIMESPEC:
        return Timespec(*_TIMESPEC.unpack(raw)) if len(raw) == _TIMESPEC.size else None
    if kind == STRING:
        return bytes(raw)
    return raw


class SendStreamReader:
    """Iterate over the commands of one btrfs send stream read from `fileobj`.

    The stream header is read by the constructor (so `version` is known at once);
    iteration yields each SendCommand and stops after END, once it has made sure no
    byte follows.  `offset` is the number of bytes consumed so far.  Any damage
    raises a BtrfsStreamError (exit 1) naming the command and its byte offset.
    """

    def __init__(self, fileobj: BinaryIO):
        self._f = fileobj
        self.offset = 0
        self.index = 0
        self.ended = False
        head = self._read(STREAM_HEADER.size)
        if len(head) < STREAM_HEADER.size and (MAGIC.startswith(head) or head.startswith(MAGIC)):
            raise BtrfsTruncatedStream(f"{len(head)} bytes, shorter than the 17-byte stream header",
                                       record=0, offset=0)
        if not head.startswith(MAGIC):
            raise BtrfsBadMagic(f"first bytes are {bytes(head[:13])!r}, not {MAGIC!r}",
                                record=0, offset=0)
        _, self.version = STREAM_HEADER.unpack(head)
        if self.version not in SUPPORTED_VERSIONS:
            raise BtrfsUnsupportedVersion(f"version {self.version}, this reader knows 1, 2 and 3",
                                          record=0, offset=13)
        self.offset = STREAM_HEADER.size
        self.max_command = max_command_size(self.version)

    def _read(self, n: int) -> bytes:
        """Read exactly n bytes, fewer only at end of file."""
        chunks = []
        while n:
            chunk = self._f.read(n)
            if not chunk:
                break
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def __iter__(self) -> Iterator[SendCommand]:
        while not self.ended:
            yield self.read_command()

    def read_command(self) -> SendCommand:
        """The next command; after END, checks that the stream ends there."""
        if self.ended:
            raise ValueError("the stream ended with END; there is no next command")
        index, start = self.index + 1, self.offset
        head = self._read(CMD_HEADER.size)
        if not head:
            raise BtrfsTruncatedStream(f"no END command after command {index - 1}",
                                       record=index, offset=start)
        if head == MAGIC[:CMD_HEADER.size]:
            if self._read(len(MAGIC) - CMD_HEADER.size) == MAGIC[CMD_HEADER.size:]:
                raise BtrfsStreamRestarted(f"a second stream header where command {index} should start",
                                           record=index, offset=start)
            # not a whole header: its length field ("btrf") is far above the cap, refused below
        if len(head) < CMD_HEADER.size:
            raise BtrfsTruncatedStream(f"command header cut off after {len(head)} of 10 bytes",
                                       record=index, offset=start)
        length, cmd, crc = CMD_HEADER.unpack(head)
        total = CMD_HEADER.size + length
        if total > self.max_command:
            raise BtrfsCommandTooLarge(
                f"command {cmd} declares {total} bytes, the kernel sends at most {self.max_command}"
                f" in version {self.version}", record=index, offset=start)
        body = self._read(length)
        if len(body) < length:
            raise BtrfsTruncatedStream(f"command {COMMAND_NAMES.get(cmd, cmd)} cut off after"
                                       f" {len(body)} of {length} bytes", record=index, offset=start)
        got = btrfs_crc32c(body, btrfs_crc32c(head[:CRC_OFFSET] + b"\0\0\0\0"))
        if got != crc:
            raise BtrfsChecksumMismatch(f"command {COMMAND_NAMES.get(cmd, cmd)} has crc {crc:#010x},"
                                        f" its bytes give {got:#010x}", record=index, offset=start)
        if not 1 <= cmd <= MAX_COMMAND[self.version]:
            raise BtrfsMalformedCommand(f"unknown command {cmd} in a version {self.version} stream",
                                        record=index, offset=start)
        command = SendCommand(index, start, cmd, self._attributes(cmd, memoryview(body), index, start))
        self.index, self.offset = index, start + total
        if cmd == END:
            self.ended = True
            extra = self._read(1)
            if extra:
                raise BtrfsTrailingData(f"bytes follow the END command (first byte {extra[0]:#04x})",
                                        record=index + 1, offset=self.offset)
        return command

    def _attributes(self, cmd: int, body: memoryview, index: int, start: int) -> dict:
        name = COMMAND_NAMES[cmd]
        attrs = {}
        pos = 0
        while pos < len(body):
            where = start + CMD_HEADER.size + pos
            if len(body) - pos < TLV_TYPE.size:
                raise BtrfsMalformedCommand(f"{name}: attribute header overruns the command",
                                            record=index, offset=where)
            (atype,) = TLV_TYPE.unpack_from(body, pos)
            if not 1 <= atype <= MAX_ATTR[self.version]:
                raise BtrfsMalformedCommand(f"{name}: unknown attribute {atype} in a version"
                                            f" {self.version} stream", record=index, offset=where)
            aname, kind = ATTRIBUTES[atype]
            if atype == A_DATA and self.version >= 2:
                # v2+: DATA has no length, it is the rest of the command
                value_start, value_end = pos + TLV_TYPE.size, len(body)
            else:
                if len(body) - pos < TLV_HEADER.size:
                    raise BtrfsMalformedCommand(f"{name}: attribute header overruns the command",
                                                record=index, offset=where)
                _, alen = TLV_HEADER.unpack_from(body, pos)
                value_start = pos + TLV_HEADER.size
                value_end = value_start + alen
                if value_end > len(body):
                    raise BtrfsMalformedCommand(
                        f"{name}: attribute {aname} of {alen} bytes overruns the command by"
                        f" {value_end - len(body)} bytes", record=index, offset=where)
            if aname in attrs:
                raise BtrfsMalformedCommand(f"{name}: attribute {aname} given twice",
                                            record=index, offset=where)
            value = _decode(kind, body[value_start:value_end])
            if value is None:
                raise BtrfsMalformedCommand(f"{name}: attribute {aname} ({kind}) has"
                                            f" {value_end - value_start} bytes", record=index, offset=where)
            attrs[aname] = value
            pos = value_end
        for required in REQUIRED[cmd]:
            if required not in attrs:
                raise BtrfsMalformedCommand(f"{name}: required attribute {required} missing",
                                            record=index, offset=start)
        for key, value in DEFAULTS.get(cmd, {}).items():
            attrs.setdefault(key, value)
        return attrs


def read_stream(fileobj: BinaryIO) -> Iterator[SendCommand]:
    """Every command of one btrfs send stream, END last; see SendStreamReader."""
    return iter(SendStreamReader(fileobj))
