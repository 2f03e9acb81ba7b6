#!/usr/bin/env python3
"""Regenerate the golden vectors of encrypted streams in spec/vectors/encrypted/.

Layout as in spec/vectors/: NAME.rs is the stream, NAME.expect what a reader
must say, NAME.dump what `rawsend dump --key-file KEY` prints (then
`error: ...` for a stream it refuses).  NAME.expect is one `field: value`
per line:

    comment:         the scenario, in one line
    rule:            the rule of stream-format.md or encryption.md the vector breaks
    key:             the key file given to the reader (test.key or other.key)
    expect:          `success` or the error class a reader with that key raises
    record, offset:  where that error is reported
    keyless:         what a reader without any key says (`success` or an error class)
    keyless record, keyless offset

Good streams also get NAME.keyless.dump, what a host without the key sees.

The two key files are published test keys: never seal real data with them.
Salts and nonces come from a deterministic generator (SHA-256 of a label and
a counter), payloads are stored uncompressed or as a fixed zlib literal, so
every vector is reproducible byte for byte with any codec library version.

Each damaged vector models one change by an attacker without the key: every
CRC is fixed up and, unless the scenario is the END record itself, the END's
counts and digest are recomputed, so only the key can tell.

Both verdicts of every vector (with the key and without) are written here by
hand, from the record offsets of the good stream (good_aes256gcm.dump); the
reader is run only to check it agrees, and if it does not nothing is written.

    python spec/vectors/generate_encrypted.py          # rewrite the vectors
    python spec/vectors/generate_encrypted.py --check  # exit 1 if any vector differs
"""

from __future__ import annotations

import hashlib
import io
import stat
import sys
from pathlib import Path
from typing import NamedTuple


from rawsend.codecs.crypto import Keyring, Sealer
from rawsend.codecs.keys import Key, format_key
from rawsend.dump import Dumper, dump_stream
from rawsend.errors import RawsendError
from rawsend.pipeline import send
from rawsend.sources.tree import DataChunk, EncodedChunk
sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import fix_crc, frame, record_spans, record_types  # noqa: E402  (record surgery is shared)
from rawsend.stream.records import (
    END_BODY, EXTENT_BODY, HEADER_BODY, PREAMBLE, RECORD_HEADER, Base, Chmod, Chown, Cipher,
    Compression, Create, End, Extent, Feature, Link, PunchHole, RecordType, RemoveXattr, Rename, Rmdir, SetXattr,
    Truncate, Unlink, UpdateFile, Utimes,
)

HERE = Path(__file__).resolve().parent
OUT = HERE / "encrypted"
STREAM_ID = bytes.fromhex("5eedc0de5eedc0de5eedc0de5eedc0de")
OTHER_STREAM_ID = bytes.fromhex("0babe0000babe0000babe0000babe000")
INCREMENTAL_ID = bytes.fromhex("5eedf00d5eedf00d5eedf00d5eedf00d")  # changes good_aes256gcm's tree
CREATED_NS = 1_795_000_000_123_456_789
T1 = 1_700_000_000_000_000_001
T2 = 1_600_000_000_999_999_999

# Published test keys, derived from their names so anyone can recompute them.
TEST_KEY = Key(hashlib.sha256(b"rawsend test key: never use it for real data").digest())
OTHER_KEY = Key(hashlib.sha256(b"rawsend other test key: never use it for real data").digest())
KEY_FILES = {"test.key": TEST_KEY, "other.key": OTHER_KEY}

# zlib.compress(b"note: keep this between us\n" * 200, 9), fixed here so no zlib build changes it
NOTE = b"note: keep this between us\n" * 200
NOTE_ZLIB = bytes.fromhex("78daedc9c10980401004b0bf556c1d96230c28c22adc89eddb8724dff435b3d699dc35f763d496f9"
                          "265dcf585a29a594524a29a594524a29a5fe581fc5f18c72")


class DeterministicRandom:
    """SHA-256(label || u64le counter) blocks: reproducible "random" bytes, for vectors only."""

    def __init__(self, label: bytes):
        self.label = label
        self.counter = 0
        self.pool = b""

    def __call__(self, n: int) -> bytes:
        while len(self.pool) < n:
            self.pool += hashlib.sha256(self.label + self.counter.to_bytes(8, "little")).digest()
            self.counter += 1
        out, self.pool = self.pool[:n], self.pool[n:]
        return out


class RepeatingNonces(DeterministicRandom):
    """A broken random source: a fresh salt, then the same 12 bytes for every nonce."""

    def __call__(self, n: int) -> bytes:
        return super().__call__(n) if n != 12 else bytes(range(12))


def items() -> list:
    """Every metadata record type, extents split, sparse and pre-encoded, xattrs and a hard link."""
    text = b"".join(b"plan %04d: meet at the old mill at dawn\n" % i for i in range(100))
    pattern = bytes(range(256)) * 4
    d, f, ln = stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK
    return [
        Create(RecordType.MKDIR, 1, 0, b"", d | 0o755, 1000, 1000, T1, T1),
        Create(RecordType.MKDIR, 2, 1, b"secret-dir", d | 0o750, 1000, 100, T1, T2),
        SetXattr(2, b"user.label", b"confidential"),
        Create(RecordType.MKFILE, 3, 2, b"plans.txt", f | 0o640, 1000, 100, T2, T1, len(text)),
        DataChunk(3, 0, text[:3000]),
        DataChunk(3, 3000, text[3000:]),
        SetXattr(3, b"user.a", b"1"),
        SetXattr(3, b"user.b", b"22"),
        Create(RecordType.MKFILE, 4, 1, b"note.txt", f | 0o600, 0, 0, T1, T1, len(NOTE)),
        EncodedChunk(Extent(4, 0, len(NOTE), len(NOTE), 0, len(NOTE_ZLIB), Compression.ZLIB), NOTE_ZLIB),
        Create(RecordType.MKFILE, 5, 1, b"sparse.img", f | 0o644, 0, 0, T1, T2, 1 << 20),
        DataChunk(5, 512 * 1024, pattern),
        Link(3, 1, b"plans-link.txt"),
        Create(RecordType.SYMLINK, 6, 1, b"to-plans", ln | 0o777, 0, 0, T1, T1, 0, b"secret-dir/plans.txt"),
        Create(RecordType.MKNOD, 7, 1, b"fifo", stat.S_IFIFO | 0o644, 0, 0, T1, T1),
    ]


def build(key: Key = TEST_KEY, cipher: int = Cipher.AES_256_GCM, stream_id: bytes = STREAM_ID,
          random=None, tree: list | None = None, required: int = 0) -> bytes:
    out = bytearray()
    random = random or DeterministicRandom(b"rawsend vector " + stream_id + bytes([cipher]) + key.key_id)
    send(tree or items(), out.extend, compression=Compression.NONE, threads=1, stream_id=stream_id,
         created_ns=CREATED_NS, sealer=Sealer(key, cipher, random=random), required=required)
    return bytes(out)


def incremental_items(base_digest: bytes, base: type = Base) -> list:
    """Changes to good_aes256gcm's tree (ids 1..7, next id 8): one record of each incremental type,
    in the writer's order.  ``base``: the class of the BASE record (a vector seals it)."""
    d, f = stat.S_IFDIR, stat.S_IFREG
    return [
        base(STREAM_ID, base_digest, 8),
        Unlink(7, 1, b"fifo"),
        Unlink(3, 1, b"plans-link.txt"),                   # one name of the hard-linked plans.txt goes
        Rename(3, 2, b"plans.txt", 1, b"plans.txt"),       # and its other name moves out of secret-dir
        Create(RecordType.MKDIR, 8, 1, b"new-plans", d | 0o700, 1000, 100, T1, T1),
        Create(RecordType.MKFILE, 9, 8, b"route.txt", f | 0o600, 1000, 100, T1, T1, 11),
        DataChunk(9, 0, b"north gate\n"),
        Link(4, 8, b"note-too.txt"),
        Rmdir(2, 1, b"secret-dir"),                        # empty now
        Truncate(5, 2 << 20),                              # sparse.img grows to 2 MiB
        UpdateFile(5, 2 << 20),
        PunchHole(5, 512 * 1024, 4096),                    # its data block becomes a hole
        DataChunk(5, 1 << 20, b"tail"),                    # and it gets data further on
        Chown(4, 1000, 1000),
        Chmod(4, 0o640),
        RemoveXattr(3, b"user.b"),
        SetXattr(3, b"user.a", b"changed"),
        Utimes(1, T2, T2),
    ]


class SealedBase(Base):
    """A BASE that a writer seals like every other record: what the spec forbids."""

    SEALED = True


def build_incremental(base_digest: bytes, tree: list | None = None) -> bytes:
    return build(stream_id=INCREMENTAL_ID, tree=tree or incremental_items(base_digest),
                 required=Feature.INCREMENTAL)


# -- record surgery -------------------------------------------------------------------------------

def refinish(stream: bytes) -> bytes:
    """Recompute the last record (END)'s counts and digest and keep its MAC: what anyone can forge."""
    spans = record_spans(stream)
    end_start = spans[-1][0]
    digest = hashlib.sha256(stream[:PREAMBLE.size])
    for start, _ in spans[:-1]:
        digest.update(stream[start:start + RECORD_HEADER.size])
    old = End.unpack(stream[end_start + RECORD_HEADER.size:])
    end = End(len(spans) - 1, end_start, digest.digest(), old.mac)
    return stream[:end_start] + frame(RecordType.END, 0, end.pack())


class Declared(NamedTuple):
    """The verdicts of one vector, by hand: (error class, record, offset) or ("success",)."""

    rule: str
    keyed: tuple
    keyless: tuple = ("success",)


OK = ("success",)
AUTH = "encryption.md: a sealed record or END opens only where it was sealed"
# Record offsets of good_aes256gcm (see its .dump): what the declared verdicts point at.
EXT_1, XATTR_A, XATTR_B, END_AT = 540, 4764, 4829, 6765  # records 5, 7, 8, 16


def damaged(good: bytes) -> dict[str, tuple[bytes, str, str]]:
    """name -> (stream, key file, comment); the verdicts are in DECLARED."""
    spans, types = record_spans(good), record_types(good)
    extents = [i for i, t in enumerate(types) if t == RecordType.EXTENT]
    xattrs = [i for i, t in enumerate(types) if t == RecordType.SET_XATTR]
    mkfile = types.index(RecordType.MKFILE)
    end_start = spans[-1][0]

    def body_at(i: int) -> int:
        return spans[i][0] + RECORD_HEADER.size

    def record(i: int) -> bytes:
        return good[spans[i][0]:spans[i][1]]

    out: dict[str, tuple[bytes, str, str]] = {}

    s = bytearray(good)
    s[spans[extents[0]][1] - 20] ^= 0x01  # a ciphertext byte, not the tag
    fix_crc(s, spans[extents[0]][0])
    out["payload_bitflip"] = (refinish(bytes(s)), "test.key",
                              "one bit of the first extent's sealed payload flipped")

    s = bytearray(good)
    s[body_at(mkfile) + 20] ^= 0x01  # inside the ciphertext, after the nonce
    fix_crc(s, spans[mkfile][0])
    out["sealed_metadata_bitflip"] = (refinish(bytes(s)), "test.key",
                                      "one bit of a sealed mkfile body flipped")

    sparse = extents[-1]  # the extent at 512 KiB of the 1 MiB sparse file
    s = bytearray(good)
    fields = list(EXTENT_BODY.unpack_from(s, body_at(sparse)))
    fields[1] -= 256 * 1024
    EXTENT_BODY.pack_into(s, body_at(sparse), *fields)
    fix_crc(s, spans[sparse][0])
    out["extent_moved"] = (refinish(bytes(s)), "test.key",
                           "an extent's clear file offset changed from 512 KiB to 256 KiB (still inside the file)")

    a, b = xattrs[1], xattrs[2]  # the two sealed xattrs of plans.txt
    out["swapped_records"] = (refinish(good[:spans[a][0]] + record(b) + record(a) + good[spans[b][1]:]),
                              "test.key", "two sealed set_xattr records swapped")
    out["dropped_record"] = (refinish(good[:spans[a][0]] + good[spans[a][1]:]), "test.key",
                             "a sealed set_xattr record dropped")
    out["duplicated_record"] = (refinish(good[:spans[b][1]] + record(b) + good[spans[b][1]:]), "test.key",
                                "a sealed set_xattr record repeated right after itself")
    out["truncated"] = (good[:end_start], "test.key", "the stream cut off right before END")
    out["truncated_forged_end"] = (refinish(good[:spans[-4][0]] + good[end_start:]), "test.key",
                                   "the last three records before END dropped, END's counts and digest recomputed")

    other = build(stream_id=OTHER_STREAM_ID)  # the same tree under the same key, another stream
    first = extents[0]
    ospans = record_spans(other)
    out["extent_from_other_stream"] = (
        refinish(good[:spans[first][0]] + other[ospans[first][0]:ospans[first][1]] + good[spans[first][1]:]),
        "test.key", "an extent record replaced by the same extent of another stream sealed with the same key")

    s = bytearray(good)
    s[end_start + RECORD_HEADER.size + END_BODY.size - 32] ^= 0x01  # first byte of the mac
    fix_crc(s, end_start)
    out["end_mac_wrong"] = (bytes(s), "test.key", "one bit of the END record's MAC flipped")

    plan = SetXattr(3, b"user.a", b"1").pack()
    out["unsealed_metadata"] = (
        refinish(good[:spans[a][0]] + frame(RecordType.SET_XATTR, 0, plan) + good[spans[a][1]:]), "test.key",
        "a sealed set_xattr record replaced by the same record in the clear")

    ext = Extent.unpack(good[body_at(first):body_at(first) + EXTENT_BODY.size])
    clear = Extent(ext.file_id, ext.offset, ext.num_bytes, ext.unencoded_len, 0, ext.unencoded_len)
    out["plaintext_extent_injected"] = (
        refinish(good[:spans[first][0]] + frame(RecordType.EXTENT, 0, clear.pack(), b"X" * ext.unencoded_len)
                 + good[spans[first][1]:]), "test.key",
        "a sealed extent replaced by an unencrypted extent of the same place and length")

    out["wrong_key"] = (build(key=OTHER_KEY), "test.key",
                        "a good stream sealed with other.key, read with test.key")

    s = bytearray(build(key=OTHER_KEY))
    ospans, otypes = record_spans(bytes(s)), record_types(bytes(s))
    h = list(HEADER_BODY.unpack_from(s, ospans[0][0] + RECORD_HEADER.size))
    h[5] = TEST_KEY.key_id
    HEADER_BODY.pack_into(s, ospans[0][0] + RECORD_HEADER.size, *h)
    fix_crc(s, ospans[0][0])
    for i, t in enumerate(otypes):
        if t == RecordType.EXTENT:
            e = list(EXTENT_BODY.unpack_from(s, ospans[i][0] + RECORD_HEADER.size))
            e[9] = TEST_KEY.key_id
            EXTENT_BODY.pack_into(s, ospans[i][0] + RECORD_HEADER.size, *e)
            fix_crc(s, ospans[i][0])
    out["forged_key_id"] = (refinish(bytes(s)), "test.key",
                            "a stream sealed with other.key whose header and extents name test.key's id")

    out["nonce_reused"] = (build(random=RepeatingNonces(b"broken")), "test.key",
                           "sealed with test.key by a sender whose random source repeats one nonce")

    twice = Create(RecordType.MKFILE, 8, 1, b"fifo", stat.S_IFREG | 0o600, 0, 0, T1, T1)
    out["name_twice"] = (build(tree=items() + [twice]), "test.key",
                         "a file named like the fifo before it in the same directory, sealed like every name")
    return out


# Record offsets of good_incremental (see its .dump): HEADER at 12, BASE (clear, 16 + 56 bytes) at 117,
# then each sealed record is 16 + 12 + its clear body + 16 bytes, each extent 16 + 80 + payload + 16.
INC_BASE, INC_UNLINK, INC_RENAME, INC_LINK = 117, 189, 331, 778      # records 1, 2, 4, 8
INC_RMDIR, INC_TAIL, INC_END = 852, 1112, 1551                       # records 9, 13, 19


def incremental_vectors(good_base: bytes) -> dict[str, tuple[bytes, str, str]]:
    """good_incremental (against good_aes256gcm) and the damaged incremental vectors."""
    digest = End.unpack(good_base[-END_BODY.size:]).digest
    good = build_incremental(digest)
    spans, types = record_spans(good), record_types(good)
    assert [s for s, _ in spans][1:] == [
        INC_BASE, INC_UNLINK, 255, INC_RENAME, 421, 538, 655, INC_LINK, INC_RMDIR, 924, 984, 1044, 1112,
        1228, 1288, 1344, 1404, 1475, INC_END] and spans[-1][1] == INC_END + 96
    out = {"good_incremental": (good, "test.key", "an incremental stream against good_aes256gcm, AES-256-GCM:"
                                                  " one record of each incremental type")}

    def body_at(i: int) -> int:
        return spans[i][0] + RECORD_HEADER.size

    out["incremental_base_sealed"] = (
        build_incremental(digest, incremental_items(digest, SealedBase)), "test.key",
        "BASE sealed by the writer like every other record (an honest AEAD under test.key)")

    s = bytearray(good)
    s[body_at(1) + 16] ^= 0x01  # the first byte of the base's END digest
    fix_crc(s, spans[1][0])
    out["incremental_base_digest_wrong"] = (
        refinish(bytes(s)), "test.key",
        "one bit of the clear BASE's digest flipped: it names a base that is not good_aes256gcm")

    s = bytearray(good)
    assert types[2] == RecordType.UNLINK
    struct_type = RECORD_HEADER.unpack_from(s, spans[2][0])
    RECORD_HEADER.pack_into(s, spans[2][0], RecordType.RMDIR, *struct_type[1:])
    fix_crc(s, spans[2][0])
    out["incremental_type_relabelled"] = (
        refinish(bytes(s)), "test.key",
        "the clear record type of a sealed unlink changed to rmdir (the same body layout)")

    s = bytearray(good)
    assert types[4] == RecordType.RENAME
    s[spans[4][1] - 1] ^= 0x80  # the last byte of the AEAD tag
    fix_crc(s, spans[4][0])
    out["incremental_record_tag_wrong"] = (refinish(bytes(s)), "test.key",
                                           "one bit of a sealed rename's AEAD tag flipped")

    s = bytearray(good)
    assert types[13] == RecordType.EXTENT
    fields = list(EXTENT_BODY.unpack_from(s, body_at(13)))
    fields[1] += 512 * 1024  # 1 MiB -> 1.5 MiB, still inside the 2 MiB the update_file declares
    EXTENT_BODY.pack_into(s, body_at(13), *fields)
    fix_crc(s, spans[13][0])
    out["incremental_extent_moved"] = (
        refinish(bytes(s)), "test.key",
        "the clear file offset of an extent after update_file changed from 1 MiB to 1.5 MiB")

    clear = Rename(3, 2, b"plans.txt", 1, b"plans.txt").pack()
    out["incremental_record_in_the_clear"] = (
        refinish(good[:spans[4][0]] + frame(RecordType.RENAME, 0, clear) + good[spans[4][1]:]), "test.key",
        "a sealed rename replaced by the same record in the clear")

    s = bytearray(good)
    h = list(HEADER_BODY.unpack_from(s, body_at(0)))
    h[2] &= ~Feature.INCREMENTAL
    HEADER_BODY.pack_into(s, body_at(0), *h)
    fix_crc(s, spans[0][0])
    out["incremental_without_feature"] = (
        refinish(bytes(s)), "test.key", "the header's required feature incremental cleared, encrypted kept")

    out["incremental_without_base"] = (refinish(good[:spans[1][0]] + good[spans[1][1]:]), "test.key",
                                       "the clear BASE record dropped")

    twice = incremental_items(digest)
    twice.insert(twice.index(Link(4, 8, b"note-too.txt")) + 1, Link(4, 8, b"route.txt"))
    out["incremental_name_twice"] = (
        build_incremental(digest, twice), "test.key",
        "a sealed link adds a name this stream already created in new-plans")
    return out


INC = "stream-format.md Incremental streams: "
DECLARED_INCREMENTAL = {
    "good_incremental": Declared("an incremental stream: every rule kept", OK),
    "incremental_base_sealed": Declared(INC + "BASE stays clear (flags 0, never sealed)",
                                        ("MalformedRecord", 1, INC_BASE), ("MalformedRecord", 1, INC_BASE)),
    # BASE is clear, so only END's MAC (whose digest covers BASE's CRC) authenticates it; a store
    # that holds good_aes256gcm sees that the digest is not its END digest (tests/test_vectors.py)
    "incremental_base_digest_wrong": Declared("encryption.md: END's MAC authenticates the clear BASE",
                                              ("AuthenticationFailed", 19, INC_END)),
    "incremental_type_relabelled": Declared(AUTH + " (its type)", ("AuthenticationFailed", 2, INC_UNLINK)),
    "incremental_record_tag_wrong": Declared(AUTH, ("AuthenticationFailed", 4, INC_RENAME)),
    "incremental_extent_moved": Declared(AUTH + " (the associated data binds the file offset)",
                                         ("AuthenticationFailed", 13, INC_TAIL)),
    "incremental_record_in_the_clear": Declared(INC + "every incremental record but BASE is sealed",
                                                ("MalformedRecord", 4, INC_RENAME),
                                                ("MalformedRecord", 4, INC_RENAME)),
    "incremental_without_feature": Declared(INC + "an incremental record needs the feature (its type is clear)",
                                            ("MalformedRecord", 1, INC_BASE), ("MalformedRecord", 1, INC_BASE)),
    "incremental_without_base": Declared(INC + "record 1 is BASE (its type is clear)",
                                         ("RecordOrderError", 1, INC_BASE), ("RecordOrderError", 1, INC_BASE)),
    # names are sealed: without the key rule 7 cannot be checked
    "incremental_name_twice": Declared(INC + "rule 7, a name twice in a directory the stream made",
                                       ("MalformedRecord", 9, INC_RMDIR)),
}


DECLARED = {
    "good_aes256gcm": Declared("a good stream: every rule kept", OK),
    "good_chacha20poly1305": Declared("a good stream: every rule kept", OK),
    "payload_bitflip": Declared(AUTH, ("AuthenticationFailed", 5, EXT_1)),
    "sealed_metadata_bitflip": Declared(AUTH, ("AuthenticationFailed", 4, 423)),
    "extent_moved": Declared(AUTH + " (the associated data binds the file offset)",
                             ("AuthenticationFailed", 12, 5305)),
    # the record in position 7 was sealed for position 8 (swapped, dropped) or 8 for 9 (duplicated)
    "swapped_records": Declared(AUTH + " (its position)", ("AuthenticationFailed", 7, XATTR_A)),
    "dropped_record": Declared(AUTH + " (its position)", ("AuthenticationFailed", 7, XATTR_A)),
    "duplicated_record": Declared(AUTH + " (its position)", ("AuthenticationFailed", 9, XATTR_B + 66)),
    "truncated": Declared("Layout: a stream ends only after END", ("TruncatedStream", 16, END_AT),
                          ("TruncatedStream", 16, END_AT)),
    # END moves up by the three records dropped: link (76 bytes), symlink (136), mknod (112)
    "truncated_forged_end": Declared("encryption.md: END's MAC covers the counts",
                                     ("AuthenticationFailed", 13, END_AT - 324)),
    "extent_from_other_stream": Declared(AUTH + " (its stream)", ("AuthenticationFailed", 5, EXT_1)),
    "end_mac_wrong": Declared("encryption.md: END's MAC", ("AuthenticationFailed", 16, END_AT)),
    "unsealed_metadata": Declared("encryption.md: every metadata record of an encrypted stream is sealed",
                                  ("MalformedRecord", 7, XATTR_A), ("MalformedRecord", 7, XATTR_A)),
    "plaintext_extent_injected": Declared("encryption.md: every extent of an encrypted stream is encrypted",
                                          ("MalformedRecord", 5, EXT_1), ("MalformedRecord", 5, EXT_1)),
    "wrong_key": Declared("encryption.md: a stream opens only with its key", ("WrongKey", 0, 12)),
    "forged_key_id": Declared(AUTH + " (under the key it names)", ("AuthenticationFailed", 1, 117)),
    "nonce_reused": Declared("encryption.md: a nonce is never used twice in a stream",
                             ("AuthenticationFailed", 2, 225)),
    # without the key the names are sealed: rule 5 cannot be checked, and verify says so
    "name_twice": Declared("stream-format.md Record order, rule 5: a name once per directory",
                           ("MalformedRecord", 16, END_AT)),
    **DECLARED_INCREMENTAL,
}


def vectors() -> dict[str, tuple[bytes, str, str]]:
    out = {
        "good_aes256gcm": (build(), "test.key", "a good stream, AES-256-GCM"),
        "good_chacha20poly1305": (build(cipher=Cipher.CHACHA20_POLY1305), "test.key",
                                  "a good stream, ChaCha20-Poly1305"),
    }
    out.update(damaged(out["good_aes256gcm"][0]))
    out.update(incremental_vectors(out["good_aes256gcm"][0]))
    return out


# -- expectations ---------------------------------------------------------------------------------

def outcome(stream: bytes, keyring: Keyring | None) -> tuple[RawsendError | None, list[str]]:
    """(error or None, dump lines) of a stream read with ``keyring``."""
    dumper = Dumper()
    lines: list[str] = []
    try:
        dump_stream(io.BytesIO(stream), lambda raw, rec: lines.append(dumper.line(raw, rec)), keyring)
    except RawsendError as e:
        lines.append(f"error: {e}")
        return e, lines
    return None, lines


def _said(err: RawsendError | None) -> tuple:
    return OK if err is None else (type(err).__name__, err.record, err.offset)


def describe(stream: bytes, key_file: str, comment: str, declared: Declared,
             wrong: list[str] | None = None) -> dict[str, bytes]:
    """The .expect and .dump files (and .keyless.dump for a good stream) of one vector; where the
    reader disagrees with the declared verdicts, a line is added to ``wrong``."""
    keyed, lines = outcome(stream, Keyring([KEY_FILES[key_file]]))
    keyless, keyless_lines = outcome(stream, None)
    expect = [f"comment: {comment}", f"rule: {declared.rule}", f"key: {key_file}"]
    for prefix, err, verdict in (("", keyed, declared.keyed), ("keyless ", keyless, declared.keyless)):
        label = "expect" if not prefix else "keyless"
        if _said(err) != tuple(verdict) and wrong is not None:
            wrong.append(f"{label}: declared {verdict}, the reader says {_said(err)}" + (f": {err}" if err else ""))
        if verdict == OK:
            expect.append(f"{label}: success")
        else:
            expect += [f"{label}: {verdict[0]}", f"{prefix}record: {verdict[1]}", f"{prefix}offset: {verdict[2]}"]
    files = {".expect": "\n".join(expect) + "\n", ".dump": "\n".join(lines) + "\n"}
    if declared.keyed == OK:
        files[".keyless.dump"] = "\n".join(keyless_lines) + "\n"
    return {suffix: text.encode() for suffix, text in files.items()}


def all_files(wrong: list[str] | None = None) -> dict[str, bytes]:
    files = {name: format_key(key.secret) for name, key in KEY_FILES.items()}
    made = vectors()
    assert sorted(made) == sorted(DECLARED), "every vector has its declared verdicts"
    for name, (data, key_file, comment) in sorted(made.items()):
        files[f"{name}.rs"] = data
        found: list[str] = []
        for suffix, content in describe(data, key_file, comment, DECLARED[name], found).items():
            files[name + suffix] = content
        if wrong is not None:
            wrong += [f"{name}: {line}" for line in found]
    return files


def main(argv: list[str]) -> int:
    check = "--check" in argv
    wrong: list[str] = []
    files = all_files(wrong)
    if wrong:  # a reader that changed its mind is a regression until a verdict is changed by hand
        print("the reader disagrees with the declared verdicts; nothing written:", *wrong, sep="\n  ")
        return 1
    bad = 0
    OUT.mkdir(exist_ok=True)
    for fname, content in files.items():
        path = OUT / fname
        if check:
            if not path.exists() or path.read_bytes() != content:
                print(f"differs: encrypted/{fname}")
                bad += 1
        else:
            path.write_bytes(content)
    if check:
        stale = sorted(p.name for p in OUT.iterdir() if p.name not in files)
        for name in stale:
            print(f"not made by this generator: encrypted/{name}")
        bad += len(stale)
    else:
        print(f"wrote {len(files)} files to {OUT}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
