"""Encrypted streams end to end through the rawsend command: keygen, send --encrypt, receive,
verify, dump and rekey."""

from __future__ import annotations

import importlib.util
import io
import os
import stat
from pathlib import Path

import pytest

from rawsend.codecs.keys import load_key, parse_key
from rawsend.stream.reader import StreamReader
from rawsend.stream.records import Extent, RecordType
from tests.conftest import VECTORS, pipeline, run_rawsend
from tests.test_roundtrip import make_varied_tree
from tests.treeutil import diff, snapshot

ENCRYPTED = VECTORS / "encrypted"
_spec = importlib.util.spec_from_file_location("encrypted_vector_generator", VECTORS / "generate_encrypted.py")
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)

# Strings that must never appear in an encrypted stream: names, a link target, an xattr, contents.
SECRETS = [b"classified-dir", b"top-secret-name.txt", b"hidden-link-target", b"user.secret-xattr",
           b"xattr-value-secret", b"PLAINTEXT-MARKER-7f3a"]


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    for name in ("a.key", "b.key"):
        _ok(run_rawsend("keygen", "-o", str(d / name)))
    return d / "a.key", d / "b.key"


@pytest.fixture(scope="module")
def secret_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("secret") / "src"
    (root / "classified-dir").mkdir(parents=True)
    (root / "classified-dir" / "top-secret-name.txt").write_bytes(b"PLAINTEXT-MARKER-7f3a\n" * 5000)
    os.symlink("hidden-link-target", root / "classified-dir" / "link")
    os.setxattr(root / "classified-dir", "user.secret-xattr", b"xattr-value-secret")
    return root


@pytest.fixture(scope="module")
def stream_a(tmp_path_factory, keys, secret_tree) -> Path:
    path = tmp_path_factory.mktemp("streams") / "a.rs"
    _ok(run_rawsend("send", "--no-progress", "--encrypt", str(keys[0]), "-o", str(path), str(secret_tree)))
    return path


def _records(data: bytes) -> tuple[object, list]:
    reader = StreamReader(io.BytesIO(data))
    out = []
    for raw in reader:
        extent = Extent.unpack(raw.body) if raw.type == RecordType.EXTENT else None
        out.append((raw.type, raw.flags, len(raw.body), len(raw.payload), extent,
                    raw.body[:12] if raw.sealed else None))
    return reader.header, out


# -- keygen -----------------------------------------------------------------------------------------

def test_keygen_writes_a_0600_key_file_prints_its_id_and_never_overwrites(tmp_path):
    path = tmp_path / "k.key"
    proc = run_rawsend("keygen", "-o", str(path))
    _ok(proc)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(path)
    assert proc.stderr.decode() == f"rawsend: key id {key.key_id.hex()} written to {path}\n"
    assert proc.stdout == b""
    before = path.read_bytes()
    again = run_rawsend("keygen", "-o", str(path))
    assert again.returncode == 3 and b"already exists" in again.stderr
    assert path.read_bytes() == before


def test_keygen_without_output_writes_the_key_to_stdout():
    one, two = run_rawsend("keygen"), run_rawsend("keygen")
    _ok(one)
    key = parse_key(one.stdout)
    assert one.stderr.decode() == f"rawsend: key id {key.key_id.hex()}\n"
    assert parse_key(two.stdout).secret != key.secret


# -- send and receive -------------------------------------------------------------------------------

@pytest.mark.parametrize("cipher", ["aes-256-gcm", "chacha20-poly1305"])
def test_encrypted_round_trip_gives_an_identical_tree(tmp_path, keys, cipher):
    src = make_varied_tree(tmp_path / "src")
    before = snapshot(src)
    sent, received = pipeline([str(src), "--encrypt", str(keys[0]), "--cipher", cipher, "--no-progress"],
                              [str(tmp_path / "dst"), "--key-file", str(keys[1]), "--key-file", str(keys[0]),
                               "--no-progress"])
    _ok(sent)
    _ok(received)
    assert diff(before, snapshot(tmp_path / "dst")) == []


def test_the_stream_carries_no_name_and_no_content_in_the_clear(tmp_path, keys, secret_tree):
    plain, sealed = tmp_path / "plain.rs", tmp_path / "sealed.rs"
    _ok(run_rawsend("send", "--no-progress", "--compress", "none", "-o", str(plain), str(secret_tree)))
    _ok(run_rawsend("send", "--no-progress", "--compress", "none", "--encrypt", str(keys[0]), "-o", str(sealed),
                    str(secret_tree)))
    plain_bytes, sealed_bytes = plain.read_bytes(), sealed.read_bytes()
    for secret in SECRETS:
        assert secret in plain_bytes  # so the search below can find what is there
        assert secret not in sealed_bytes, secret
    assert load_key(keys[0]).secret not in sealed_bytes
    assert load_key(keys[0]).secret.hex().encode() not in sealed_bytes


def test_receive_without_the_key_fails_naming_the_key_id_and_leaves_nothing(tmp_path, keys, stream_a):
    key_id = load_key(keys[0]).key_id.hex()
    for extra in ([], ["--key-file", str(keys[1])]):
        dest = tmp_path / "dst"
        proc = run_rawsend("receive", "--no-progress", "-f", str(stream_a), *extra, str(dest))
        assert proc.returncode == 4
        message = proc.stderr.decode()
        assert key_id in message and "record 0" in message
        assert ("--store" in message) if not extra else ("none of the given keys is the stream's key" in message)
        assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_key_file_others_can_read_works_with_a_warning(tmp_path, keys, secret_tree):
    loose = tmp_path / "loose.key"
    loose.write_bytes(keys[0].read_bytes())
    loose.chmod(0o644)
    proc = run_rawsend("send", "--no-progress", "--encrypt", str(loose), "-o", str(tmp_path / "s.rs"),
                       str(secret_tree))
    _ok(proc)
    assert b"warning: key file" in proc.stderr and b"chmod 600" in proc.stderr
    assert load_key(loose).secret.hex().encode() not in proc.stderr


# -- verify -----------------------------------------------------------------------------------------

def test_verify_without_a_key_says_intact_but_not_authenticated(keys, stream_a):
    keyless = run_rawsend("verify", str(stream_a))
    _ok(keyless)
    assert keyless.stdout.startswith(b"intact, NOT authenticated")
    keyed = run_rawsend("verify", "--key-file", str(keys[0]), str(stream_a))
    _ok(keyed)
    assert keyed.stdout.startswith(b"OK, authenticated")
    wrong = run_rawsend("verify", "--key-file", str(keys[1]), str(stream_a))
    assert wrong.returncode == 4
    assert load_key(keys[0]).key_id.hex().encode() in wrong.stderr


DAMAGED = sorted(p.name[:-7] for p in ENCRYPTED.glob("*.expect") if not p.name.startswith("good_"))


def _expect(name: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in (ENCRYPTED / f"{name}.expect").read_text().splitlines())


@pytest.mark.parametrize("name", DAMAGED)
def test_verify_with_the_key_refuses_every_tampered_vector_naming_the_record(name):
    expect = _expect(name)
    assert expect["expect"] != "success"
    proc = run_rawsend("verify", "--key-file", str(ENCRYPTED / expect["key"]), str(ENCRYPTED / f"{name}.rs"))
    assert proc.returncode == (4 if expect["expect"] == "WrongKey" else 1), proc.stderr.decode()
    assert proc.stdout == b""
    message = proc.stderr.decode().splitlines()[-1]  # after the warning that git's 0644 test keys earn
    assert f"at record {expect['record']}, byte offset {expect['offset']}" in message
    assert message == (ENCRYPTED / f"{name}.dump").read_text().splitlines()[-1].replace("error: ", "rawsend: ", 1)


def test_verify_with_the_key_finds_a_flipped_payload_bit_the_keyless_check_cannot(tmp_path, keys, stream_a):
    data = bytearray(stream_a.read_bytes())
    spans, types = generator.record_spans(bytes(data)), generator.record_types(bytes(data))
    index = types.index(RecordType.EXTENT)
    data[spans[index][1] - 30] ^= 0x04
    generator.fix_crc(data, spans[index][0])
    forged = tmp_path / "forged.rs"
    forged.write_bytes(generator.refinish(bytes(data)))
    keyless = run_rawsend("verify", str(forged))
    _ok(keyless)
    assert keyless.stdout.startswith(b"intact, NOT authenticated")
    keyed = run_rawsend("verify", "--key-file", str(keys[0]), str(forged))
    assert keyed.returncode == 1
    assert b"authentication failed: the payload of the extent" in keyed.stderr
    assert f"at record {index}, byte offset {spans[index][0]}".encode() in keyed.stderr


# -- dump -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["good_aes256gcm", "good_chacha20poly1305"])
def test_dump_shows_key_ids_and_algorithms_but_never_a_secret(name):
    key = load_key(ENCRYPTED / "test.key")
    stream = str(ENCRYPTED / f"{name}.rs")
    keyed = run_rawsend("dump", "--key-file", str(ENCRYPTED / "test.key"), stream)
    keyless = run_rawsend("dump", stream)
    _ok(keyed)
    _ok(keyless)
    assert keyed.stdout.decode() == (ENCRYPTED / f"{name}.dump").read_text()
    assert keyless.stdout.decode() == (ENCRYPTED / f"{name}.keyless.dump").read_text()
    cipher = "aes-256-gcm" if "aes" in name else "chacha20-poly1305"
    extents = [line for line in keyless.stdout.decode().splitlines() if " extent " in line]
    assert extents and all(f"encryption={cipher} key_id={key.key_id.hex()}" in line for line in extents)
    assert b"secret-dir" in keyed.stdout and b"secret-dir" not in keyless.stdout
    for out in (keyed.stdout, keyless.stdout):
        assert key.secret.hex().encode() not in out


# -- rekey ------------------------------------------------------------------------------------------

def test_rekey_output_opens_with_the_new_key_only_and_keeps_every_payload(tmp_path, keys, stream_a, secret_tree):
    old, new = keys
    out = tmp_path / "rekeyed.rs"
    proc = run_rawsend("rekey", "--from", str(old), "--to", str(new), "-i", str(stream_a), "-o", str(out))
    _ok(proc)
    assert load_key(new).key_id.hex().encode() in proc.stderr
    assert run_rawsend("verify", "--key-file", str(new), str(out)).stdout.startswith(b"OK, authenticated")
    assert run_rawsend("verify", "--key-file", str(old), str(out)).returncode == 4

    header_a, records_a = _records(stream_a.read_bytes())
    header_b, records_b = _records(out.read_bytes())
    assert (header_b.stream_id, header_b.created_ns, header_b.cipher) == \
        (header_a.stream_id, header_a.created_ns, header_a.cipher)
    assert header_b.key_id == load_key(new).key_id != header_a.key_id
    assert header_b.salt != header_a.salt
    assert len(records_a) == len(records_b)
    extents = 0
    for (ta, fa, ba, pa, ea, na), (tb, fb, bb, pb, eb, nb) in zip(records_a, records_b, strict=True):
        assert (ta, fa, ba, pa) == (tb, fb, bb, pb)  # type, flags, body and payload lengths
        if ea is not None:
            extents += 1
            same = ("file_id", "offset", "num_bytes", "unencoded_len", "unencoded_offset", "disk_num_bytes",
                    "compression", "encryption")
            assert all(getattr(ea, f) == getattr(eb, f) for f in same)
            assert eb.key_id == header_b.key_id and eb.nonce != ea.nonce
        if na is not None:
            assert nb != na  # a fresh nonce for every sealed record
    assert extents >= 1

    received = run_rawsend("receive", "--no-progress", "--key-file", str(new), "-f", str(out),
                           str(tmp_path / "dst"))
    _ok(received)
    assert diff(snapshot(secret_tree), snapshot(tmp_path / "dst")) == []


def test_rekey_through_a_pipe(keys, stream_a):
    proc = run_rawsend("rekey", "--from", str(keys[0]), "--to", str(keys[1]), input=stream_a.read_bytes())
    _ok(proc)
    verify = run_rawsend("verify", "--key-file", str(keys[1]), "-", input=proc.stdout)
    _ok(verify)
    assert verify.stdout.startswith(b"OK, authenticated")


def test_rekey_refuses_a_tampered_stream_or_the_wrong_key_and_leaves_no_output(tmp_path, keys, stream_a):
    out = tmp_path / "out.rs"
    tampered = run_rawsend("rekey", "--from", str(ENCRYPTED / "test.key"), "--to", str(keys[1]),
                           "-i", str(ENCRYPTED / "truncated_forged_end.rs"), "-o", str(out))
    assert tampered.returncode == 1 and b"END record's MAC does not match" in tampered.stderr
    wrong = run_rawsend("rekey", "--from", str(keys[1]), "--to", str(keys[0]), "-i", str(stream_a), "-o", str(out))
    assert wrong.returncode == 4 and load_key(keys[0]).key_id.hex().encode() in wrong.stderr
    plain = run_rawsend("rekey", "--from", str(keys[0]), "--to", str(keys[1]),
                        "-i", str(VECTORS / "good_plain.rs"), "-o", str(out))
    assert plain.returncode == 4 and b"not encrypted" in plain.stderr
    assert list(tmp_path.iterdir()) == []


def test_rekey_to_a_pipe_of_a_tampered_stream_gives_no_end(keys):
    proc = run_rawsend("rekey", "--from", str(ENCRYPTED / "test.key"), "--to", str(keys[1]),
                       input=(ENCRYPTED / "truncated_forged_end.rs").read_bytes())
    assert proc.returncode == 1
    verify = run_rawsend("verify", "--key-file", str(keys[1]), "-", input=proc.stdout)
    assert verify.returncode == 1 and b"stream ends early" in verify.stderr
