"""Stream format v1: byte layouts and the records they carry.

spec/stream-format.md is the normative text; every constant here is named
there.  All integers are little-endian.  Each layout is a module-level
``struct.Struct`` next to the record class it fills (rawsend/stream/recordclass.py).
"""

from __future__ import annotations

import enum
import functools
import stat
import struct
from rawsend.errors import LimitExceeded, MalformedRecord, UnsafePath
from rawsend.stream.recordclass import Frozen, record

# -- preamble -------------------------------------------------------------------------

MAGIC = b"rawsend\n"
VERSION = 1
PREAMBLE = struct.Struct("<8sI")  # magic, version

# -- record framing ---------------------------------------------------------------------

# type u16, flags u16, body_len u32, payload_len u32, crc32c u32
RECORD_HEADER = struct.Struct("<HHIII")
CRC_COVERED = 12  # the CRC covers the header's first 12 bytes, then body, then payload

FLAG_SEALED = 0x0001     # body is nonce || AEAD ciphertext (encrypted streams)
FLAG_SKIPPABLE = 0x0002  # a reader that does not know the type may skip the record
KNOWN_FLAGS = FLAG_SEALED | FLAG_SKIPPABLE

# Hard caps, checked before anything is allocated.
MAX_NAME_LEN = 255           # one path component (NAME_MAX)
MAX_TARGET_LEN = 4095        # symlink target (PATH_MAX - 1)
MAX_XATTR_NAME_LEN = 255     # XATTR_NAME_MAX
MAX_XATTR_VALUE_LEN = 65536  # XATTR_SIZE_MAX
MAX_EXTENT_LEN = 128 * 1024  # unencoded_len and num_bytes, as btrfs
# btrfs's own caps, which the format shares: BTRFS_MAX_UNCOMPRESSED (file bytes of one
# extent) and BTRFS_MAX_COMPRESSED (an encoded payload, before any sealing)
MAX_UNENCODED = MAX_EXTENT_LEN
MAX_ENCODED = 128 * 1024
MAX_FILE_SIZE = 2**63 - 1    # largest off_t: file sizes and extent ends
AEAD_TAG_LEN = 16
NONCE_LEN = 12
MAX_BODY_LEN = 68 * 1024     # fits the largest xattr record, sealed
MAX_PAYLOAD_LEN = MAX_EXTENT_LEN + AEAD_TAG_LEN


class RecordType(enum.IntEnum):
    HEADER = 1
    MKDIR = 2
    MKFILE = 3
    MKNOD = 4
    SYMLINK = 5
    LINK = 6
    SET_XATTR = 7
    EXTENT = 8
    END = 9
    # incremental streams (required feature `incremental`): changes to a tree the receiver holds
    RENAME = 10
    UNLINK = 11
    RMDIR = 12
    TRUNCATE = 13
    CHMOD = 14
    CHOWN = 15
    UTIMES = 16
    REMOVE_XATTR = 17
    UPDATE_FILE = 18
    BASE = 20
    PUNCH_HOLE = 21
    # notes about the stream: always SKIPPABLE (a reader may ignore them and build the same tree)
    LABEL = 48
    SNAPSHOT = 49

    @classmethod
    def may_skip(cls, rtype: int) -> bool:
        """Whether an unknown type may be skipped when its record is marked SKIPPABLE."""
        return rtype not in cls.NAMES and not any(rtype in r for r in cls.NEVER_SKIPPABLE)

    @classmethod
    def name_of(cls, rtype: int) -> str:
        """The type's name for messages: its name, or 'type N' when unknown."""
        return cls.NAMES.get(rtype, f"type {rtype}")


# Set after the class, so that they are not members.
RecordType.NAMES = {t.value: t.name.lower() for t in RecordType}
# Ranges of later versions (spec "Versioning and extension").  Records that
# change the tree or its data are never skippable: a reader that skipped
# one would build a different tree than the sender's.
RecordType.NEVER_SKIPPABLE = (range(0, 1),     # 0 is no type: zeroed or damaged bytes
                              range(10, 32))   # incremental: rename, unlink, ..., clone
# 32..47 (signature, hash of the whole stream) are always skippable
# Known types that are notes: they carry SKIPPABLE, so that older readers skip them.
RecordType.ALWAYS_SKIPPABLE = frozenset({48, 49})
RecordType.RESERVED = {19: "clone", 32: "signature", 33: "stream_hash"}
# Types a stream may carry only when it sets the required feature `incremental`.
RecordType.INCREMENTAL = frozenset(range(10, 22)) & frozenset(RecordType.NAMES)


# -- the record registry ----------------------------------------------------------------
#
# Each record class declares what the registry needs: TYPES (its type numbers), its
# layout (a struct.Struct next to it), pack and unpack, PAYLOAD (whether it carries a
# payload), SEALED (whether its body is sealed in an encrypted stream) and SINK (the
# Sink method a receiver calls with it, rawsend/stream/sink.py).  Dump's fields live in
# rawsend/dump.py, one function per class.  A new record type is one class here, one
# Sink method, its spec section and its vectors.

class _Record(Frozen):
    __slots__ = ()
    TYPES: tuple[int, ...] = ()
    PAYLOAD = False
    SEALED = True
    SKIPPABLE = False  # written with the SKIPPABLE flag (notes: LABEL)
    SINK = ""

    @classmethod
    def unpacker(cls, rtype: int):
        """The function that unpacks a body of type ``rtype`` (bound once, called per record)."""
        return cls.unpack


# -- HEADER -----------------------------------------------------------------------------

# stream_id 16s, created_ns i64, required_features u64, optional_features u64,
# cipher u8, key_id 16s, salt 32s
HEADER_BODY = struct.Struct("<16sqQQB16s32s")


class Feature:
    """Required feature bits: a reader lacking one refuses the stream, naming it."""

    ENCRYPTED = 1 << 0   # extents and metadata are sealed (spec section "Encryption")
    LZ4 = 1 << 1         # some extents use compression 16 (lz4 block)
    INCREMENTAL = 1 << 2  # changes to the tree of a base stream (record 1 is BASE)

    REQUIRED_NAMES = {ENCRYPTED: "encrypted", LZ4: "lz4", INCREMENTAL: "incremental"}
    SUPPORTED_REQUIRED = ENCRYPTED | LZ4 | INCREMENTAL

    # Optional bits: a reader that does not know one ignores it.
    TRACKED = 1 << 2     # sent with --state: a receiver records what it holds, for incrementals
    OPTIONAL_NAMES: dict[int, str] = {TRACKED: "tracked"}


class Cipher(enum.IntEnum):
    NONE = 0
    AES_256_GCM = 1
    CHACHA20_POLY1305 = 2


Cipher.NAMES = {t.value: t.name.lower().replace("_", "-") for t in Cipher}  # "aes-256-gcm", ...
Cipher.BY_NAME = {v: k for k, v in Cipher.NAMES.items()}


@record
class Header(_Record):
    TYPES = (RecordType.HEADER,)
    SEALED = False
    stream_id: bytes
    created_ns: int
    required_features: int = 0
    optional_features: int = 0
    cipher: int = Cipher.NONE
    key_id: bytes = bytes(16)
    salt: bytes = bytes(32)

    def pack(self) -> bytes:
        # "16s" would silently pad or truncate a wrong-length id
        assert len(self.stream_id) == 16 and len(self.key_id) == 16 and len(self.salt) == 32
        return HEADER_BODY.pack(self.stream_id, self.created_ns, self.required_features,
                                self.optional_features, self.cipher, self.key_id, self.salt)

    @classmethod
    def unpack(cls, body: bytes) -> "Header":
        _exact(body, HEADER_BODY.size, "header")
        h = cls(*HEADER_BODY.unpack(body))
        if h.cipher not in Cipher.NAMES:
            raise MalformedRecord(f"unknown cipher {h.cipher} in header")
        if bool(h.required_features & Feature.ENCRYPTED) != (h.cipher != Cipher.NONE):
            raise MalformedRecord("header cipher and 'encrypted' feature bit disagree")
        if h.cipher == Cipher.NONE and (any(h.key_id) or any(h.salt)):
            raise MalformedRecord("unencrypted header carries a key id or salt")
        return h

    @property
    def encrypted(self) -> bool:
        return self.cipher != 0  # Cipher.NONE


# -- MKDIR / MKFILE / MKNOD / SYMLINK ---------------------------------------------------

# file_id u64, parent_id u64, mode u32, uid u32, gid u32,
# atime_sec i64, atime_nsec u32, mtime_sec i64, mtime_nsec u32,
# size_or_rdev u64, name_len u16, target_len u16; then name, then target
CREATE_BODY = struct.Struct("<QQIIIqIqIQHH")

_MKDIR, _SYMLINK = RecordType.MKDIR, RecordType.SYMLINK  # as globals: cheaper per record than the class's
_CREATE_KIND = {
    RecordType.MKDIR: (stat.S_IFDIR,),
    RecordType.MKFILE: (stat.S_IFREG,),
    RecordType.SYMLINK: (stat.S_IFLNK,),
    RecordType.MKNOD: (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK),
}
ROOT_ID = 1
MAX_FILE_ID = 2**63 - 1  # ids of a chain of incremental streams keep counting up from the base's


@record
class Create(_Record):
    TYPES = (RecordType.MKDIR, RecordType.MKFILE, RecordType.MKNOD, RecordType.SYMLINK)
    SINK = "create"

    type: int
    file_id: int
    parent_id: int
    name: bytes
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    size: int = 0      # MKFILE: file size; MKNOD: rdev; others 0
    target: bytes = b""  # SYMLINK only

    def pack(self) -> bytes:
        a_sec, a_nsec = divmod(self.atime_ns, 1_000_000_000)
        m_sec, m_nsec = divmod(self.mtime_ns, 1_000_000_000)
        return CREATE_BODY.pack(self.file_id, self.parent_id, self.mode, self.uid, self.gid,
                                a_sec, a_nsec, m_sec, m_nsec, self.size,
                                len(self.name), len(self.target)) + self.name + self.target

    @classmethod
    def unpacker(cls, rtype: int):
        return functools.partial(cls.unpack, rtype)  # one class for four types

    @classmethod
    def unpack(cls, rtype: int, body: bytes) -> "Create":
        fixed = CREATE_BODY.size
        if len(body) < fixed:
            _at_least(body, fixed, RecordType.NAMES[rtype])
        (file_id, parent_id, mode, uid, gid, a_sec, a_nsec, m_sec, m_nsec, size,
         name_len, target_len) = CREATE_BODY.unpack_from(body)
        if len(body) != fixed + name_len + target_len:
            _exact(body, fixed + name_len + target_len, RecordType.NAMES[rtype])
        if a_nsec >= 1_000_000_000 or m_nsec >= 1_000_000_000:
            raise MalformedRecord("nanoseconds field is 1e9 or more")
        if stat.S_IFMT(mode) not in _CREATE_KIND[rtype]:
            raise MalformedRecord(f"mode {mode:o} does not match a {RecordType.NAMES[rtype]} record")
        if rtype == _SYMLINK:
            if not 0 < target_len <= MAX_TARGET_LEN:
                raise LimitExceeded(f"symlink target length {target_len} not in 1..{MAX_TARGET_LEN}")
        elif target_len:
            raise MalformedRecord("target given on a record that is not a symlink")
        if size and (rtype == _MKDIR or rtype == _SYMLINK):
            raise MalformedRecord(f"{RecordType.NAMES[rtype]} with a nonzero size_or_rdev field ({size})")
        if size > MAX_FILE_SIZE:  # off_t and dev_t are signed 64-bit to the kernel's callers
            raise LimitExceeded(f"size or device number {size} over {MAX_FILE_SIZE}")
        name = bytes(body[fixed:fixed + name_len])
        target = bytes(body[fixed + name_len:]) if target_len else b""
        if b"\0" in target:
            raise UnsafePath("symlink target contains NUL")
        if file_id == ROOT_ID:
            if rtype != _MKDIR or parent_id != 0 or name:
                raise MalformedRecord("file id 1 must be the root: mkdir, parent 0, empty name")
        else:
            check_name(name)
        return cls(rtype, file_id, parent_id, name, mode, uid, gid,
                   a_sec * 1_000_000_000 + a_nsec, m_sec * 1_000_000_000 + m_nsec, size, target)


# -- LINK ---------------------------------------------------------------------------------

LINK_BODY = struct.Struct("<QQH")  # file_id u64, parent_id u64, name_len u16; then name


@record
class Link(_Record):
    TYPES = (RecordType.LINK,)
    SINK = "link"

    file_id: int
    parent_id: int
    name: bytes

    type = RecordType.LINK

    def pack(self) -> bytes:
        return LINK_BODY.pack(self.file_id, self.parent_id, len(self.name)) + self.name

    @classmethod
    def unpack(cls, body: bytes) -> "Link":
        _at_least(body, LINK_BODY.size, "link")
        file_id, parent_id, name_len = LINK_BODY.unpack_from(body)
        _exact(body, LINK_BODY.size + name_len, "link")
        name = bytes(body[LINK_BODY.size:])
        check_name(name)
        return cls(file_id, parent_id, name)


# -- SET_XATTR ----------------------------------------------------------------------------

XATTR_BODY = struct.Struct("<QHI")  # file_id u64, name_len u16, value_len u32; name, value


@record
class SetXattr(_Record):
    TYPES = (RecordType.SET_XATTR,)
    SINK = "xattr"

    file_id: int
    name: bytes
    value: bytes

    type = RecordType.SET_XATTR

    def pack(self) -> bytes:
        return XATTR_BODY.pack(self.file_id, len(self.name), len(self.value)) + self.name + self.value

    @classmethod
    def unpack(cls, body: bytes) -> "SetXattr":
        _at_least(body, XATTR_BODY.size, "set_xattr")
        file_id, name_len, value_len = XATTR_BODY.unpack_from(body)
        if not 0 < name_len <= MAX_XATTR_NAME_LEN:
            raise LimitExceeded(f"xattr name length {name_len} not in 1..{MAX_XATTR_NAME_LEN}")
        if value_len > MAX_XATTR_VALUE_LEN:
            raise LimitExceeded(f"xattr value length {value_len} over {MAX_XATTR_VALUE_LEN}")
        _exact(body, XATTR_BODY.size + name_len + value_len, "set_xattr")
        name = bytes(body[XATTR_BODY.size:XATTR_BODY.size + name_len])
        if b"\0" in name:
            raise MalformedRecord("xattr name contains NUL")
        return cls(file_id, name, bytes(body[XATTR_BODY.size + name_len:]))


# -- EXTENT -------------------------------------------------------------------------------

class Compression(enum.IntEnum):
    """btrfs numbering for 0..7 (BTRFS_ENCODED_IO_COMPRESSION_*); rawsend's own codecs from 16 up."""

    NONE = 0
    ZLIB = 1
    ZSTD = 2
    LZO_4K = 3  # LZO is framed per sector: one value per sector size, as btrfs
    LZO_8K = 4
    LZO_16K = 5
    LZO_32K = 6
    LZO_64K = 7
    LZ4 = 16    # lz4 block format, no size prefix


# The one spelling of each name: the store index, dump and the CLI use these.
Compression.NAMES = {t.value: t.name.lower().replace("_", "") for t in Compression}  # "lzo4k", ...
Compression.BY_NAME = {v: k for k, v in Compression.NAMES.items()}


# file_id u64, offset u64, num_bytes u64, unencoded_len u64, unencoded_offset u64,
# disk_num_bytes u64, compression u8, encryption u8, reserved u16, key_id 16s, nonce 12s
EXTENT_BODY = struct.Struct("<QQQQQQBBH16s12s")
EXTENT_AAD_LEN = EXTENT_BODY.size - NONCE_LEN  # every field but the nonce is bound
# as globals: cheaper per extent than the enums' class attributes (0 is NONE in both)
_COMPRESSION_NAMES, _CIPHER_NAMES = Compression.NAMES, Cipher.NAMES
_NO_KEY_ID, _NO_NONCE = bytes(16), bytes(NONCE_LEN)


@record
class Extent(_Record):
    TYPES = (RecordType.EXTENT,)
    PAYLOAD = True
    SEALED = False  # the body stays clear; the payload is sealed (spec "Which records are sealed")
    SINK = "extent"

    file_id: int
    offset: int
    num_bytes: int        # logical bytes this extent fills in the file
    unencoded_len: int    # length of the decoded payload
    unencoded_offset: int  # where the file's bytes start inside the decoded payload
    disk_num_bytes: int   # payload length on the wire (ciphertext + tag when sealed)
    compression: int = Compression.NONE
    encryption: int = Cipher.NONE
    key_id: bytes = bytes(16)
    nonce: bytes = bytes(12)

    type = RecordType.EXTENT

    def pack(self) -> bytes:
        return EXTENT_BODY.pack(self.file_id, self.offset, self.num_bytes, self.unencoded_len,
                                self.unencoded_offset, self.disk_num_bytes, self.compression,
                                self.encryption, 0, self.key_id, self.nonce)

    @classmethod
    def unpack(cls, body: bytes) -> "Extent":
        if len(body) != EXTENT_BODY.size:
            _exact(body, EXTENT_BODY.size, "extent")
        (file_id, offset, num_bytes, unencoded_len, unencoded_offset, disk_num_bytes,
         compression, encryption, reserved, key_id, nonce) = EXTENT_BODY.unpack(body)
        if reserved:
            raise MalformedRecord("extent reserved field is not zero")
        if compression not in _COMPRESSION_NAMES:
            raise MalformedRecord(f"unknown compression {compression}")
        if encryption not in _CIPHER_NAMES:
            raise MalformedRecord(f"unknown encryption {encryption}")
        if not encryption and (key_id != _NO_KEY_ID or nonce != _NO_NONCE):
            raise MalformedRecord("unencrypted extent carries a key id or nonce")
        if not 0 < unencoded_len <= MAX_EXTENT_LEN:
            raise LimitExceeded(f"unencoded_len {unencoded_len} not in 1..{MAX_EXTENT_LEN}")
        if unencoded_offset >= unencoded_len:
            raise MalformedRecord(f"unencoded_offset {unencoded_offset} not below unencoded_len {unencoded_len}")
        if not 0 < num_bytes <= unencoded_len - unencoded_offset:
            raise MalformedRecord(f"num_bytes {num_bytes} does not fit unencoded_len {unencoded_len}"
                                  f" at unencoded_offset {unencoded_offset}")
        if not 0 < disk_num_bytes <= MAX_PAYLOAD_LEN:
            raise LimitExceeded(f"disk_num_bytes {disk_num_bytes} not in 1..{MAX_PAYLOAD_LEN}")
        if not compression and disk_num_bytes - (AEAD_TAG_LEN if encryption else 0) != unencoded_len:
            raise MalformedRecord("uncompressed extent whose payload length is not unencoded_len")
        if offset + num_bytes > MAX_FILE_SIZE:
            raise LimitExceeded("extent ends beyond 2^63-1")
        return cls(file_id, offset, num_bytes, unencoded_len, unencoded_offset, disk_num_bytes,
                   compression, encryption, key_id, nonce)


# -- incremental records ---------------------------------------------------------------------
#
# Only in streams with the required feature `incremental` (spec "Incremental streams").  They
# address files by file id: ids persist across the streams of a chain, so the receiver needs
# no replay of renames to know which file a record means.  Every one is sealed in an
# encrypted stream but BASE, which a keyless store reads to link a stream to its base.

# base_stream_id 16s, base_digest 32s (the base's END digest), first_id u64
BASE_BODY = struct.Struct("<16s32sQ")


@record
class Base(_Record):
    """Record 1 of an incremental stream: the stream whose tree it changes."""
    TYPES = (RecordType.BASE,)
    SEALED = False
    SINK = "base"

    stream_id: bytes
    digest: bytes
    first_id: int      # the file id this stream's first create record carries

    type = RecordType.BASE

    def pack(self) -> bytes:
        assert len(self.stream_id) == 16 and len(self.digest) == 32
        return BASE_BODY.pack(self.stream_id, self.digest, self.first_id)

    @classmethod
    def unpack(cls, body: bytes) -> "Base":
        _exact(body, BASE_BODY.size, "base")
        base = cls(*BASE_BODY.unpack(body))
        if not ROOT_ID < base.first_id <= MAX_FILE_ID:
            raise MalformedRecord(f"base first_id {base.first_id} not in 2..{MAX_FILE_ID}")
        return base


# file_id u64, parent_id u64, to_parent_id u64, name_len u16, to_name_len u16; name, to_name
RENAME_BODY = struct.Struct("<QQQHH")


@record
class Rename(_Record):
    """Move the entry ``name`` in ``parent_id`` (a name of ``file_id``) to a free name."""
    TYPES = (RecordType.RENAME,)
    SINK = "rename"

    file_id: int
    parent_id: int
    name: bytes
    to_parent_id: int
    to_name: bytes

    type = RecordType.RENAME

    def pack(self) -> bytes:
        return (RENAME_BODY.pack(self.file_id, self.parent_id, self.to_parent_id, len(self.name),
                                 len(self.to_name)) + self.name + self.to_name)

    @classmethod
    def unpack(cls, body: bytes) -> "Rename":
        _at_least(body, RENAME_BODY.size, "rename")
        file_id, parent_id, to_parent_id, name_len, to_name_len = RENAME_BODY.unpack_from(body)
        _exact(body, RENAME_BODY.size + name_len + to_name_len, "rename")
        name = bytes(body[RENAME_BODY.size:RENAME_BODY.size + name_len])
        to_name = bytes(body[RENAME_BODY.size + name_len:])
        check_name(name)
        check_name(to_name)
        _not_root(file_id, "rename")
        return cls(file_id, parent_id, name, to_parent_id, to_name)


# file_id u64, parent_id u64, name_len u16; then name (the layout of LINK)
UNLINK_BODY = LINK_BODY


@record
class Unlink(_Record):
    """Remove the entry ``name`` in ``parent_id``, a name of the non-directory ``file_id``."""
    TYPES = (RecordType.UNLINK,)
    SINK = "unlink"

    file_id: int
    parent_id: int
    name: bytes

    type = RecordType.UNLINK

    def pack(self) -> bytes:
        return UNLINK_BODY.pack(self.file_id, self.parent_id, len(self.name)) + self.name

    @classmethod
    def unpack(cls, body: bytes):
        what = RecordType.NAMES[cls.type]
        _at_least(body, UNLINK_BODY.size, what)
        file_id, parent_id, name_len = UNLINK_BODY.unpack_from(body)
        _exact(body, UNLINK_BODY.size + name_len, what)
        name = bytes(body[UNLINK_BODY.size:])
        check_name(name)
        _not_root(file_id, what)
        return cls(file_id, parent_id, name)


@record
class Rmdir(Unlink):
    """Remove the empty directory ``file_id``, entry ``name`` in ``parent_id``."""
    TYPES = (RecordType.RMDIR,)
    SINK = "rmdir"

    type = RecordType.RMDIR


# file_id u64, size u64
TRUNCATE_BODY = struct.Struct("<QQ")


@record
class Truncate(_Record):
    """Set the size of the regular file ``file_id`` (cut or extend with a hole)."""
    TYPES = (RecordType.TRUNCATE,)
    SINK = "truncate"

    file_id: int
    size: int

    type = RecordType.TRUNCATE

    def pack(self) -> bytes:
        return TRUNCATE_BODY.pack(self.file_id, self.size)

    @classmethod
    def unpack(cls, body: bytes) -> "Truncate":
        _exact(body, TRUNCATE_BODY.size, "truncate")
        rec = cls(*TRUNCATE_BODY.unpack(body))
        _size(rec.size, "truncate")
        _not_root(rec.file_id, "truncate")
        return rec


# file_id u64, mode u32 (permission bits only)
CHMOD_BODY = struct.Struct("<QI")


@record
class Chmod(_Record):
    TYPES = (RecordType.CHMOD,)
    SINK = "chmod"

    file_id: int
    mode: int

    type = RecordType.CHMOD

    def pack(self) -> bytes:
        return CHMOD_BODY.pack(self.file_id, self.mode)

    @classmethod
    def unpack(cls, body: bytes) -> "Chmod":
        _exact(body, CHMOD_BODY.size, "chmod")
        rec = cls(*CHMOD_BODY.unpack(body))
        if rec.mode & ~0o7777:
            raise MalformedRecord(f"chmod mode {rec.mode:o} has bits beyond the permission bits 7777")
        return rec


# file_id u64, uid u32, gid u32
CHOWN_BODY = struct.Struct("<QII")


@record
class Chown(_Record):
    TYPES = (RecordType.CHOWN,)
    SINK = "chown"

    file_id: int
    uid: int
    gid: int

    type = RecordType.CHOWN

    def pack(self) -> bytes:
        return CHOWN_BODY.pack(self.file_id, self.uid, self.gid)

    @classmethod
    def unpack(cls, body: bytes) -> "Chown":
        _exact(body, CHOWN_BODY.size, "chown")
        return cls(*CHOWN_BODY.unpack(body))


# file_id u64, atime_sec i64, atime_nsec u32, mtime_sec i64, mtime_nsec u32
UTIMES_BODY = struct.Struct("<QqIqI")


@record
class Utimes(_Record):
    TYPES = (RecordType.UTIMES,)
    SINK = "utimes"

    file_id: int
    atime_ns: int
    mtime_ns: int

    type = RecordType.UTIMES

    def pack(self) -> bytes:
        a_sec, a_nsec = divmod(self.atime_ns, 1_000_000_000)
        m_sec, m_nsec = divmod(self.mtime_ns, 1_000_000_000)
        return UTIMES_BODY.pack(self.file_id, a_sec, a_nsec, m_sec, m_nsec)

    @classmethod
    def unpack(cls, body: bytes) -> "Utimes":
        _exact(body, UTIMES_BODY.size, "utimes")
        file_id, a_sec, a_nsec, m_sec, m_nsec = UTIMES_BODY.unpack(body)
        if a_nsec >= 1_000_000_000 or m_nsec >= 1_000_000_000:
            raise MalformedRecord("nanoseconds field is 1e9 or more")
        return cls(file_id, a_sec * 1_000_000_000 + a_nsec, m_sec * 1_000_000_000 + m_nsec)


# file_id u64, name_len u16; then name
REMOVE_XATTR_BODY = struct.Struct("<QH")


@record
class RemoveXattr(_Record):
    TYPES = (RecordType.REMOVE_XATTR,)
    SINK = "remove_xattr"

    file_id: int
    name: bytes

    type = RecordType.REMOVE_XATTR

    def pack(self) -> bytes:
        return REMOVE_XATTR_BODY.pack(self.file_id, len(self.name)) + self.name

    @classmethod
    def unpack(cls, body: bytes) -> "RemoveXattr":
        _at_least(body, REMOVE_XATTR_BODY.size, "remove_xattr")
        file_id, name_len = REMOVE_XATTR_BODY.unpack_from(body)
        if not 0 < name_len <= MAX_XATTR_NAME_LEN:
            raise LimitExceeded(f"xattr name length {name_len} not in 1..{MAX_XATTR_NAME_LEN}")
        _exact(body, REMOVE_XATTR_BODY.size + name_len, "remove_xattr")
        name = bytes(body[REMOVE_XATTR_BODY.size:])
        if b"\0" in name:
            raise MalformedRecord("xattr name contains NUL")
        return cls(file_id, name)


# file_id u64, size u64
UPDATE_FILE_BODY = struct.Struct("<QQ")


@record
class UpdateFile(_Record):
    """Make the regular file ``file_id`` current: the EXTENT and PUNCH_HOLE records after it
    change its data.  ``size`` is its size at this point of the stream."""
    TYPES = (RecordType.UPDATE_FILE,)
    SINK = "update_file"

    file_id: int
    size: int

    type = RecordType.UPDATE_FILE

    def pack(self) -> bytes:
        return UPDATE_FILE_BODY.pack(self.file_id, self.size)

    @classmethod
    def unpack(cls, body: bytes) -> "UpdateFile":
        _exact(body, UPDATE_FILE_BODY.size, "update_file")
        rec = cls(*UPDATE_FILE_BODY.unpack(body))
        _size(rec.size, "update_file")
        _not_root(rec.file_id, "update_file")
        return rec


# file_id u64, offset u64, length u64
PUNCH_HOLE_BODY = struct.Struct("<QQQ")


@record
class PunchHole(_Record):
    """Deallocate ``length`` bytes of the current file at ``offset``: they read as zeros."""
    TYPES = (RecordType.PUNCH_HOLE,)
    SINK = "punch_hole"

    file_id: int
    offset: int
    length: int

    type = RecordType.PUNCH_HOLE

    def pack(self) -> bytes:
        return PUNCH_HOLE_BODY.pack(self.file_id, self.offset, self.length)

    @classmethod
    def unpack(cls, body: bytes) -> "PunchHole":
        _exact(body, PUNCH_HOLE_BODY.size, "punch_hole")
        rec = cls(*PUNCH_HOLE_BODY.unpack(body))
        if rec.length == 0:
            raise MalformedRecord("punch_hole of length 0")
        if rec.offset + rec.length > MAX_FILE_SIZE:
            raise LimitExceeded("punch_hole ends beyond 2^63-1")
        return rec


# -- LABEL ----------------------------------------------------------------------------------
#
# A note on where a stream comes from (spec "LABEL"): the sender's --label, its host name, the
# source path and the writer's version.  Record 2 when present, SKIPPABLE, sealed when encrypted.

# label_len u16, host_len u16, source_len u16, version_len u16; then label, host, source, version
LABEL_BODY = struct.Struct("<HHHH")
MAX_LABEL_LEN = 1024    # bytes of UTF-8
MAX_HOST_LEN = 255      # a fully qualified host name
MAX_SOURCE_LEN = 4095   # PATH_MAX - 1
MAX_VERSION_LEN = 64


@record
class Label(_Record):
    TYPES = (RecordType.LABEL,)
    SKIPPABLE = True
    SINK = ""  # a note: nothing to apply to a tree

    label: bytes    # UTF-8
    host: bytes     # UTF-8
    source: bytes   # a path: raw bytes, as names are
    version: bytes  # UTF-8

    type = RecordType.LABEL

    def pack(self) -> bytes:
        return (LABEL_BODY.pack(len(self.label), len(self.host), len(self.source), len(self.version))
                + self.label + self.host + self.source + self.version)

    @classmethod
    def unpack(cls, body: bytes) -> "Label":
        _at_least(body, LABEL_BODY.size, "label")
        lens = LABEL_BODY.unpack_from(body)
        caps = (MAX_LABEL_LEN, MAX_HOST_LEN, MAX_SOURCE_LEN, MAX_VERSION_LEN)
        for what, n, cap in zip(("label", "host name", "source path", "version"), lens, caps):
            if n > cap:
                raise LimitExceeded(f"label record: {what} of {n} bytes, over {cap}")
        _exact(body, LABEL_BODY.size + sum(lens), "label")
        fields, pos = [], LABEL_BODY.size
        for n in lens:
            fields.append(bytes(body[pos:pos + n]))
            pos += n
        for what, value in (("label", fields[0]), ("host name", fields[1]), ("version", fields[3])):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MalformedRecord(f"label record: {what} is not valid UTF-8 (byte {e.start})") from None
        if b"\0" in fields[2]:
            raise MalformedRecord("label record: source path contains NUL")
        return cls(*fields)


# -- SNAPSHOT ---------------------------------------------------------------------------------
#
# A note naming the read-only btrfs snapshot the stream was sent from, and for an incremental
# stream the snapshot its base was sent from, as btrfs send names them (received_uuid when set,
# else uuid; ctransid): a receiver into a btrfs subvolume sets received_uuid from it, as btrfs
# receive does.  Record 2 (or 3, after LABEL), SKIPPABLE, sealed when encrypted.

# uuid 16s, ctransid u64, parent_uuid 16s, parent_ctransid u64
SNAPSHOT_BODY = struct.Struct("<16sQ16sQ")


@record
class SnapshotNote(_Record):
    TYPES = (RecordType.SNAPSHOT,)
    SKIPPABLE = True
    SINK = ""  # a note: the tree is the same without it

    uuid: bytes             # the snapshot sent
    ctransid: int
    parent_uuid: bytes      # the base's snapshot; zero in a full stream
    parent_ctransid: int    # zero in a full stream

    type = RecordType.SNAPSHOT

    def pack(self) -> bytes:
        return SNAPSHOT_BODY.pack(self.uuid, self.ctransid, self.parent_uuid, self.parent_ctransid)

    @classmethod
    def unpack(cls, body: bytes) -> "SnapshotNote":
        _exact(body, SNAPSHOT_BODY.size, "snapshot")
        uuid, ctransid, parent_uuid, parent_ctransid = SNAPSHOT_BODY.unpack(body)
        if uuid == bytes(16):
            raise MalformedRecord("snapshot record: the snapshot's uuid is zero")
        if (parent_uuid == bytes(16)) != (parent_ctransid == 0):
            raise MalformedRecord("snapshot record: a parent ctransid without a parent uuid, or a uuid without one")
        return cls(uuid, ctransid, parent_uuid, parent_ctransid)


# -- END ------------------------------------------------------------------------------------

# record_count u64, byte_count u64, digest 32s (SHA-256), mac 32s (zero unless encrypted)
END_BODY = struct.Struct("<QQ32s32s")


@record
class End(_Record):
    TYPES = (RecordType.END,)
    SEALED = False

    record_count: int
    byte_count: int
    digest: bytes
    mac: bytes = bytes(32)

    type = RecordType.END

    def pack(self) -> bytes:
        return END_BODY.pack(self.record_count, self.byte_count, self.digest, self.mac)

    @classmethod
    def unpack(cls, body: bytes) -> "End":
        _exact(body, END_BODY.size, "end")
        return cls(*END_BODY.unpack(body))


# -- helpers --------------------------------------------------------------------------------

def check_name(name: bytes) -> None:
    """Refuse any name that is not exactly one path component."""
    if not name:
        raise UnsafePath("empty name")
    if len(name) > MAX_NAME_LEN:
        raise LimitExceeded(f"name of {len(name)} bytes, over {MAX_NAME_LEN}")
    if name in (b".", b".."):
        raise UnsafePath(f"name {name!r}")
    if b"/" in name or b"\0" in name:
        raise UnsafePath(f"name {name!r} contains '/' or NUL")


def _not_root(file_id: int, what: str) -> None:
    if file_id == ROOT_ID:
        raise MalformedRecord(f"{what} of file id 1, the root")


def _size(size: int, what: str) -> None:
    if size > MAX_FILE_SIZE:
        raise LimitExceeded(f"{what} size {size} over {MAX_FILE_SIZE}")


def _exact(body, size: int, what: str) -> None:
    if len(body) != size:
        raise MalformedRecord(f"{what} body is {len(body)} bytes, expected {size}")


def _at_least(body, size: int, what: str) -> None:
    if len(body) < size:
        raise MalformedRecord(f"{what} body is {len(body)} bytes, expected at least {size}")


RECORDS: dict[int, type] = {t: cls for cls in (Header, Create, Link, SetXattr, Extent, End, Base, Rename, Unlink,
                                                Rmdir, Truncate, Chmod, Chown, Utimes, RemoveXattr, UpdateFile,
                                                PunchHole, Label, SnapshotNote)
                            for t in cls.TYPES}
PAYLOAD_TYPES = frozenset(t for t, cls in RECORDS.items() if cls.PAYLOAD)
CLEAR_TYPES = frozenset(t for t, cls in RECORDS.items() if not cls.SEALED)  # clear in an encrypted stream


_UNPACKERS = {t: cls.unpacker(t) for t, cls in RECORDS.items()}


def unpack_body(rtype: int, body: bytes):
    """Typed record from a clear (unsealed) body."""
    unpack = _UNPACKERS.get(rtype)
    if unpack is None:
        raise MalformedRecord(f"unknown record type {rtype}")
    return unpack(body)
