"""Key files, key ids, subkeys, sealing and opening, and the encrypted golden vectors (in-process)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib.util
import io
import os
import stat
import threading

import pytest

from rawsend.codecs.crypto import (
    AAD_PREFIX, Keyring, Opener, Sealer, derive_stream_keys, extent_aad,
)
from rawsend.codecs.keys import Key, KeyFileError, format_key, load_key, parse_key, write_key_file
from rawsend.errors import AuthenticationFailed, KeyMissing, MalformedRecord, OutputError, WrongKey
from rawsend.pipeline import NullSink, receive, send
from rawsend.sources.tree import DataChunk
from rawsend.stream.reader import RawRecord, StreamReader
from rawsend.stream.records import (
    EXTENT_AAD_LEN, FLAG_SEALED, Cipher, Compression, Create, Extent, Header, RecordType, SetXattr,
)
from tests.conftest import VECTORS

ENCRYPTED = VECTORS / "encrypted"
_spec = importlib.util.spec_from_file_location("encrypted_vector_generator", VECTORS / "generate_encrypted.py")
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)

SECRET = bytes(range(32))
KEY = Key(SECRET)
STREAM_ID = bytes.fromhex("00" * 15 + "01")
CIPHERS = [Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305]


def _header(sealer: Sealer, stream_id: bytes = STREAM_ID) -> Header:
    from rawsend.stream.records import Feature
    return Header(stream_id, 0, Feature.ENCRYPTED, 0, **sealer.header_fields())


def _started(cipher=Cipher.AES_256_GCM, key=KEY, stream_id=STREAM_ID) -> tuple[Sealer, Header]:
    sealer = Sealer(key, cipher)
    header = _header(sealer, stream_id)
    sealer.start(header)
    return sealer, header


def _raw(index: int, rtype: int, body: bytes) -> RawRecord:
    return RawRecord(index, 1000 + index, rtype, FLAG_SEALED, b"", body, memoryview(b""))


# -- key files --------------------------------------------------------------------------------------

def test_key_file_is_one_exact_line_and_parses_back():
    data = format_key(SECRET)
    assert data == b"RAWSEND-KEY-1 " + SECRET.hex().encode() + b"\n"
    assert parse_key(data).secret == SECRET


BAD_KEY_FILES = [
    (b"RAWSEND-KEY-2 " + b"ab" * 32 + b"\n", "does not start with"),
    (b"rawsend-key-1 " + b"ab" * 32 + b"\n", "does not start with"),
    (b"RAWSEND-KEY-1  " + b"ab" * 32 + b"\n", "has 65 characters"),
    (b"RAWSEND-KEY-1  " + b"ab" * 31 + b"a\n", "character 1 "),
    (b"RAWSEND-KEY-1 " + b"AB" * 32 + b"\n", "not a lowercase hex digit"),
    (b"RAWSEND-KEY-1 " + b"ab" * 31 + b"a\n", "has 63 characters"),
    (b"RAWSEND-KEY-1 " + b"ab" * 33 + b"\n", "has 66 characters"),
    (b"RAWSEND-KEY-1 " + b"ab" * 32, "does not end with a newline"),
    (b"RAWSEND-KEY-1 " + b"ab" * 32 + b"\r\n", "more than one line"),
    (b"RAWSEND-KEY-1 " + b"ab" * 32 + b"\n\n", "more than one line"),
    (b"RAWSEND-KEY-1 " + b"ab" * 31 + b"zz\n", "character 63 "),
]


@pytest.mark.parametrize("data,what", BAD_KEY_FILES)
def test_bad_key_text_is_refused_saying_what_is_wrong_but_never_the_key(data, what):
    with pytest.raises(KeyFileError) as info:
        parse_key(data)
    assert what in str(info.value)
    assert "ab" * 4 not in str(info.value) and "AB" * 4 not in str(info.value)
    assert info.value.exit_code == 4


@pytest.mark.parametrize("data,what", BAD_KEY_FILES)
def test_bad_key_files_are_refused_naming_the_path(tmp_path, data, what):
    path = tmp_path / "k.key"
    path.write_bytes(data)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    message = str(info.value)
    assert str(path) in message
    assert what in message or (len(data) > 79 and "longer than 79 bytes" in message)
    assert "ab" * 4 not in message and "AB" * 4 not in message


def test_missing_key_file_and_directory_are_key_file_errors(tmp_path):
    with pytest.raises(KeyFileError, match="cannot open it"):
        load_key(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(tmp_path)


def test_oversized_key_file_is_not_read_whole(tmp_path):
    path = tmp_path / "big.key"
    path.write_bytes(format_key(SECRET) + b"x" * 10_000_000)
    with pytest.raises(KeyFileError, match="longer than 79 bytes"):
        load_key(path)


def test_key_file_readable_by_others_is_loaded_with_a_warning(tmp_path):
    path = tmp_path / "k.key"
    path.write_bytes(format_key(SECRET))
    warnings: list[str] = []
    path.chmod(0o600)
    assert load_key(path, warnings.append).secret == SECRET
    assert warnings == []
    path.chmod(0o640)
    assert load_key(path, warnings.append).secret == SECRET
    assert len(warnings) == 1 and "0640" in warnings[0] and "chmod 600" in warnings[0]
    assert SECRET.hex() not in warnings[0]


def test_key_file_can_come_from_a_pipe(tmp_path):
    r, w = os.pipe()
    os.write(w, format_key(SECRET))
    os.close(w)
    try:
        assert load_key(f"/proc/self/fd/{r}").secret == SECRET
    finally:
        os.close(r)


def test_write_key_file_is_0600_and_never_overwrites(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "new.key"
        write_key_file(path, KEY)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).secret == SECRET
    with pytest.raises(OutputError, match="already exists"):
        write_key_file(path, Key(bytes(32)))
    assert load_key(path).secret == SECRET
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(OutputError):
        write_key_file(link, KEY)
    assert not (tmp_path / "elsewhere.key").exists()


def test_key_repr_never_shows_the_secret():
    assert SECRET.hex() not in repr(KEY) and KEY.key_id.hex() in repr(KEY)


# -- key id and subkeys --------------------------------------------------------------------------

def test_key_id_is_hmac_of_a_fixed_label():
    assert KEY.key_id == hmac.new(SECRET, b"rawsend key id v1", hashlib.sha256).digest()[:16]
    assert len(KEY.key_id) == 16 and Key(bytes(32)).key_id != KEY.key_id


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out, to check the library call against."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def test_stream_subkeys_are_hkdf_of_key_salt_and_stream_id():
    salt = bytes(range(100, 132))
    enc, mac = derive_stream_keys(SECRET, salt, STREAM_ID)
    okm = _hkdf_sha256(SECRET, salt, b"rawsend v1 stream keys" + STREAM_ID, 64)
    assert (enc, mac) == (okm[:32], okm[32:])
    assert derive_stream_keys(SECRET, bytes(32), STREAM_ID)[0] != enc
    assert derive_stream_keys(SECRET, salt, bytes(16))[0] != enc


def test_end_mac_is_hmac_over_header_counts_and_digest():
    sealer, header = _started()
    _, mac_key = derive_stream_keys(SECRET, sealer.salt, STREAM_ID)
    body, digest = header.pack(), bytes(range(32))
    want = hmac.new(mac_key, body + (7).to_bytes(8, "little") + (900).to_bytes(8, "little") + digest,
                    hashlib.sha256).digest()
    assert sealer.end_mac(body, 7, 900, digest) == want


# -- seal and open -------------------------------------------------------------------------------

@pytest.mark.parametrize("cipher", CIPHERS)
def test_metadata_round_trips_and_is_bound_to_stream_index_and_type(cipher):
    sealer, header = _started(cipher)
    clear = SetXattr(3, b"user.secret-name", b"value").pack()
    sealed = sealer.seal_metadata(5, RecordType.SET_XATTR, clear)
    assert len(sealed) == len(clear) + 28 and b"secret-name" not in sealed
    assert Opener(KEY, header).open_metadata(_raw(5, RecordType.SET_XATTR, sealed)) == clear
    for index, rtype in ((6, RecordType.SET_XATTR), (5, RecordType.MKFILE)):
        with pytest.raises(AuthenticationFailed) as info:
            Opener(KEY, header).open_metadata(_raw(index, rtype, sealed))
        assert info.value.record == index and info.value.offset == 1000 + index
    other = dataclasses.replace(header, stream_id=bytes(16))
    with pytest.raises(AuthenticationFailed):
        Opener(KEY, other).open_metadata(_raw(5, RecordType.SET_XATTR, sealed))


def test_the_aad_prefix_layout():
    assert AAD_PREFIX.size == 26
    assert AAD_PREFIX.pack(STREAM_ID, 1, 8) == STREAM_ID + b"\x01" + bytes(7) + b"\x08\x00"


@pytest.mark.parametrize("cipher", CIPHERS)
def test_extent_round_trips_and_every_clear_field_is_bound(cipher):
    sealer, header = _started(cipher)
    payload = b"compressed bytes, never touched" * 10
    extent = Extent(3, 4096, 8192, 8192, 0, len(payload), Compression.ZSTD)
    sealed, ct = sealer.seal_extent(9, extent, payload)
    assert sealed.encryption == cipher and sealed.key_id == KEY.key_id and len(sealed.nonce) == 12
    assert sealed.disk_num_bytes == len(ct) == len(payload) + 16
    assert Opener(KEY, header).open_extent(9, sealed, ct) == payload
    assert extent_aad(STREAM_ID, 9, sealed) == AAD_PREFIX.pack(STREAM_ID, 9, 8) + sealed.pack()[:EXTENT_AAD_LEN]
    changes = [dict(file_id=4), dict(offset=0), dict(num_bytes=4096), dict(unencoded_len=16384),
               dict(unencoded_offset=1), dict(compression=Compression.ZLIB)]
    for change in changes:
        with pytest.raises(AuthenticationFailed) as info:
            Opener(KEY, header).open_extent(9, dataclasses.replace(sealed, **change), ct)
        assert info.value.record == 9
    with pytest.raises(AuthenticationFailed):
        Opener(KEY, header).open_extent(10, sealed, ct)  # another position in the stream
    with pytest.raises(AuthenticationFailed):
        Opener(KEY, header).open_extent(9, dataclasses.replace(sealed, nonce=bytes(12)), ct)
    flipped = bytearray(ct)
    flipped[0] ^= 1
    with pytest.raises(AuthenticationFailed):
        Opener(KEY, header).open_extent(9, sealed, bytes(flipped))


def test_opener_refuses_a_repeated_nonce_and_mismatched_extent_fields():
    fixed = iter([bytes(32)] + [bytes(12)] * 10)
    sealer = Sealer(KEY, Cipher.AES_256_GCM, random=lambda n: next(fixed))
    header = _header(sealer)
    sealer.start(header)
    opener = Opener(KEY, header)
    opener.open_metadata(_raw(1, RecordType.MKDIR, sealer.seal_metadata(1, RecordType.MKDIR, b"a")))
    with pytest.raises(AuthenticationFailed, match="already used by record 1"):
        opener.open_metadata(_raw(2, RecordType.MKDIR, sealer.seal_metadata(2, RecordType.MKDIR, b"b")))
    sealed, ct = sealer.seal_extent(3, Extent(2, 0, 10, 10, 0, 10), bytes(10))
    with pytest.raises(MalformedRecord, match="key id"):
        opener.open_extent(3, dataclasses.replace(sealed, key_id=bytes(16)), ct)
    with pytest.raises(MalformedRecord, match="encryption"):
        opener.open_extent(3, dataclasses.replace(sealed, encryption=Cipher.CHACHA20_POLY1305), ct)


def test_the_nonce_table_is_a_bounded_window():
    from rawsend.codecs import crypto

    counter = iter(range(1, 10**9))  # distinct nonces; the salt comes first

    def random(n: int) -> bytes:
        return next(counter).to_bytes(n, "little")

    sealer = Sealer(KEY, Cipher.AES_256_GCM, random=random)
    header = _header(sealer)
    sealer.start(header)
    opener = Opener(KEY, header)
    window = 64
    crypto.NONCE_WINDOW, saved = window, crypto.NONCE_WINDOW
    try:
        for i in range(1, 3 * window):
            opener.open_metadata(_raw(i, RecordType.MKDIR, sealer.seal_metadata(i, RecordType.MKDIR, b"x")))
        assert len(opener._nonces) == window  # memory stays put however long the stream
        recent = next(iter(reversed(opener._nonces)))
        repeat = iter([recent])
        sealer._random = lambda n: next(repeat)
        i = 3 * window
        with pytest.raises(AuthenticationFailed, match=f"already used by record {i - 1}"):
            opener.open_metadata(_raw(i, RecordType.MKDIR, sealer.seal_metadata(i, RecordType.MKDIR, b"y")))
    finally:
        crypto.NONCE_WINDOW = saved


def test_sealed_body_shorter_than_nonce_and_tag_is_malformed():
    _, header = _started()
    with pytest.raises(MalformedRecord, match="shorter than nonce and tag"):
        Opener(KEY, header).open_metadata(_raw(1, RecordType.MKDIR, bytes(27)))


def test_seal_extent_is_safe_from_many_threads():
    sealer, header = _started()
    results: list = []

    def work(start: int) -> None:
        for i in range(start, start + 200):
            results.append((i, *sealer.seal_extent(i, Extent(1, 0, 16, 16, 0, 16), i.to_bytes(16, "little"))))

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    opener = Opener(KEY, header)
    for i, extent, ct in results:
        assert opener.open_extent(i, extent, ct) == i.to_bytes(16, "little")
    assert len({e.nonce for _, e, _ in results}) == 800


def test_keyring_picks_the_key_by_the_streams_key_id():
    other = Key(bytes(32))
    _, header = _started()
    ring = Keyring([other, KEY])
    assert ring.opener(header) is not None
    assert Keyring([other]).opener(header) is None
    assert ring.key_ids == [other.key_id.hex(), KEY.key_id.hex()]


# -- whole streams -------------------------------------------------------------------------------

def _tree_items() -> list:
    text = b"the same tree, sent twice\n" * 20000
    d, f = stat.S_IFDIR, stat.S_IFREG
    return [Create(RecordType.MKDIR, 1, 0, b"", d | 0o755, 0, 0, 0, 0),
            Create(RecordType.MKFILE, 2, 1, b"file", f | 0o644, 0, 0, 0, 0, len(text)),
            *[DataChunk(2, off, text[off:off + 131072]) for off in range(0, len(text), 131072)]]


def _send(sealer, threads=1, items=None) -> bytes:
    out = bytearray()
    send(items or _tree_items(), out.extend, compression=Compression.ZSTD, threads=threads, sealer=sealer,
         stream_id=STREAM_ID, created_ns=0)
    return bytes(out)


def _nonces_and_salt(stream: bytes) -> tuple[list[bytes], bytes]:
    reader = StreamReader(io.BytesIO(stream))
    nonces = []
    for raw in reader:
        if raw.type == RecordType.EXTENT:
            nonces.append(Extent.unpack(raw.body).nonce)
        elif raw.sealed:
            nonces.append(raw.body[:12])
    return nonces, reader.header.salt


def test_two_sends_of_one_tree_under_one_key_share_no_nonce_and_no_salt():
    a = _send(Sealer(KEY, Cipher.AES_256_GCM), threads=4)
    b = _send(Sealer(KEY, Cipher.AES_256_GCM), threads=4)
    nonces_a, salt_a = _nonces_and_salt(a)
    nonces_b, salt_b = _nonces_and_salt(b)
    assert len(nonces_a) == len(nonces_b) > 4
    assert len(set(nonces_a) | set(nonces_b)) == len(nonces_a) + len(nonces_b)
    assert salt_a != salt_b
    assert a != b and len(a) == len(b)
    for stream in (a, b):
        stats = receive(io.BytesIO(stream), NullSink(), keyring=Keyring([KEY]))
        assert stats.authenticated and stats.logical_bytes == len(b"the same tree, sent twice\n" * 20000)


def test_receive_of_an_encrypted_stream_needs_the_key_before_the_sink_begins():
    stream = _send(Sealer(KEY, Cipher.AES_256_GCM))

    begun: list = []

    class Recording(NullSink):
        def begin(self, header):
            begun.append(header)

    for keyring, error in ((None, KeyMissing), (Keyring([Key(bytes(32))]), WrongKey)):
        with pytest.raises(error) as info:
            receive(io.BytesIO(stream), Recording(), keyring=keyring)
        assert KEY.key_id.hex() in str(info.value) and info.value.exit_code == 4
    assert begun == []
    with pytest.raises(WrongKey) as info:
        receive(io.BytesIO(stream), NullSink(), keyring=Keyring([Key(bytes(32))]), require_key=False)
    assert info.value.exit_code == 4 and KEY.key_id.hex() in str(info.value)
    keyless = receive(io.BytesIO(stream), NullSink(), require_key=False)
    assert keyless.encrypted and not keyless.authenticated
    assert keyless.extents == 4 and keyless.sealed_skipped == 2  # 520000 bytes in 128 KiB extents; 2 creates


def test_a_sealed_record_in_an_unencrypted_stream_is_refused():
    sealer, _ = _started()
    plain = bytearray(_send(None))
    spans = generator.record_spans(bytes(plain))
    start, end = spans[1]
    body = plain[start + 16:end]
    forged = generator.frame(RecordType.MKDIR, FLAG_SEALED, sealer.seal_metadata(1, RecordType.MKDIR, bytes(body)))
    stream = generator.refinish(bytes(plain[:start]) + forged + bytes(plain[end:]))
    with pytest.raises(MalformedRecord, match="sealed record in a stream that is not encrypted") as info:
        receive(io.BytesIO(stream), NullSink(), require_key=False)
    assert info.value.record == 1


# -- golden vectors ------------------------------------------------------------------------------

VECTOR_NAMES = sorted(p.name[:-3] for p in ENCRYPTED.glob("*.rs"))


def _expect(name: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in (ENCRYPTED / f"{name}.expect").read_text().splitlines())


def test_vectors_cover_every_scenario():
    assert {"good_aes256gcm", "good_chacha20poly1305", "payload_bitflip", "sealed_metadata_bitflip",
            "extent_moved", "swapped_records", "dropped_record", "duplicated_record", "truncated",
            "truncated_forged_end", "extent_from_other_stream", "wrong_key"} <= set(VECTOR_NAMES)


def test_generator_reproduces_every_encrypted_vector_byte_for_byte():
    assert generator.main(["--check"]) == 0


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_reader_with_and_without_the_key_says_what_the_vector_expects(name):
    expect = _expect(name)
    data = (ENCRYPTED / f"{name}.rs").read_bytes()
    keyring = Keyring([load_key(ENCRYPTED / expect["key"])])
    for ring, prefix, label in ((keyring, "", "expect"), (None, "keyless ", "keyless")):
        if expect[label] == "success":
            stats = receive(io.BytesIO(data), NullSink(), keyring=ring, require_key=False)
            assert stats.authenticated == (ring is not None)
            continue
        with pytest.raises(Exception) as info:
            receive(io.BytesIO(data), NullSink(), keyring=ring, require_key=False)
        assert type(info.value).__name__ == expect[label]
        assert str(info.value.record) == expect[f"{prefix}record"]
        assert str(info.value.offset) == expect[f"{prefix}offset"]
