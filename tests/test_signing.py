"""Signing keys and detached signatures of stream files, through the rawsend command, and with
the real minisign where it is installed."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from rawsend.codecs import signing
from rawsend.stream.records import RecordType
from tests.conftest import run_rawsend
from tests.hostile import reseal, split

MINISIGN = shutil.which("minisign")
needs_minisign = pytest.mark.skipif(MINISIGN is None, reason="minisign is not installed (apt-get install minisign)")


def _ok(proc) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def _fails(proc, code: int, message: str) -> None:
    assert (proc.returncode, proc.stderr.decode()) == (code, f"rawsend: {message}\n")
    assert proc.stdout == b""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Two streams of different trees, two signing key pairs and an encryption key."""
    d = tmp_path_factory.mktemp("signing")
    for name, text in (("one", b"hello\n"), ("two", b"other tree\n")):
        (d / name).mkdir()
        (d / name / "small").write_bytes(text)  # too short to compress: its payload is the plain bytes
        (d / name / "big").write_bytes(b"line of text\n" * 4000)
        _ok(run_rawsend("send", "--no-progress", "-o", str(d / f"{name}.rs"), str(d / name)))
    for name in ("alice", "bob"):
        _ok(run_rawsend("keygen", "--sign", "-o", str(d / name)))
    _ok(run_rawsend("keygen", "-o", str(d / "backup.key")))
    return d


def _copy(work: Path, tmp_path: Path, name: str = "one.rs") -> Path:
    dst = tmp_path / name
    shutil.copyfile(work / name, dst)
    return dst


def _signed(work: Path, tmp_path: Path, key: str = "alice", name: str = "one.rs") -> Path:
    stream = _copy(work, tmp_path, name)
    _ok(run_rawsend("sign", str(stream), "-k", str(work / key)))
    return stream


def _stream_id(path: Path) -> str:
    _, frames, _ = split(path.read_bytes())
    return frames[0].body[:16].hex()


# -- keygen --sign ---------------------------------------------------------------------------------

def test_keygen_sign_writes_minisign_key_files_0600_and_never_overwrites(tmp_path):
    name = tmp_path / "k"
    proc = _ok(run_rawsend("keygen", "--sign", "-o", str(name)))
    secret = signing.load_secret_key(name)
    public = signing.load_public_key(f"{name}.pub")
    assert proc.stderr.decode() == (f"rawsend: signing key id {secret.key_id_hex}: secret key {name} (mode 0600,"
                                    f" not encrypted: keep it private), public key {name}.pub\n")
    assert stat.S_IMODE(name.stat().st_mode) == 0o600
    assert public.key_id == secret.key_id and public.raw() == secret.public.raw()
    comment, line = Path(f"{name}.pub").read_bytes().split(b"\n")[:2]
    assert comment == f"untrusted comment: minisign public key {secret.key_id_hex}".encode()
    raw = base64.b64decode(line)
    assert (len(raw), raw[:2], raw[2:10], raw[10:]) == (42, b"Ed", secret.key_id, public.raw())
    sk = base64.b64decode(name.read_bytes().split(b"\n")[1])
    assert (len(sk), sk[:6], sk[6:54]) == (158, b"Ed\0\0B2", bytes(48))  # unencrypted, as minisign -W

    before = (name.read_bytes(), Path(f"{name}.pub").read_bytes())
    _fails(run_rawsend("keygen", "--sign", "-o", str(name)), 3,
           f"cannot write output: the key file already exists; keygen never overwrites a key (at path"
           f" '{name}'); choose a new file name")
    assert (name.read_bytes(), Path(f"{name}.pub").read_bytes()) == before


def test_keygen_sign_never_overwrites_an_existing_pub_and_leaves_no_half_pair(tmp_path):
    Path(tmp_path / "k.pub").write_bytes(b"keep me\n")
    _fails(run_rawsend("keygen", "--sign", "-o", str(tmp_path / "k")), 3,
           f"cannot write output: the key file already exists; keygen never overwrites a key (at path"
           f" '{tmp_path / 'k.pub'}'); choose a new file name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub"]
    assert (tmp_path / "k.pub").read_bytes() == b"keep me\n"


def test_keygen_sign_needs_a_name():
    proc = run_rawsend("keygen", "--sign")
    assert proc.returncode == 2
    assert "keygen --sign needs -o NAME" in proc.stderr.decode()


# -- sign and verify --signer -------------------------------------------------------------------------

def test_sign_then_verify_names_the_signer_and_every_byte(work, tmp_path):
    stream = _copy(work, tmp_path)
    proc = _ok(run_rawsend("sign", str(stream), "-k", str(work / "alice")))
    alice = signing.load_public_key(work / "alice.pub")
    size = stream.stat().st_size
    sid = _stream_id(stream)
    assert proc.stderr.decode() == (f"rawsend: signed {stream} (stream {sid}, {size} bytes) with key id"
                                    f" {alice.key_id_hex}: {stream}.minisig\n")
    sig = signing.load_signature(f"{stream}.minisig")
    fields = sig.fields()
    assert (fields["file"], fields["stream"], fields["bytes"], sig.algorithm) == ("one.rs", sid, str(size), b"ED")
    assert len(fields["end"]) == 64 and "hashed" in sig.trusted_comment.decode().split("\t")

    proc = _ok(run_rawsend("verify", "--signer", str(work / "bob.pub"), "--signer", str(work / "alice.pub"),
                           str(stream)))
    first, second = proc.stdout.decode().splitlines()
    assert first.startswith(f"signed by key id {alice.key_id_hex} ({work / 'alice.pub'}): every byte is as"
                            f" signed ({size} bytes, BLAKE2b-512); trusted comment: \"timestamp:")
    assert second.startswith("OK: 7 records, 2 files, 1 dirs")


def test_an_encrypted_stream_is_signed_and_checked_without_its_key(work, tmp_path):
    key = tmp_path / "backup.key"
    shutil.copyfile(work / "backup.key", key)
    key.chmod(0o600)
    stream = tmp_path / "enc.rs"
    _ok(run_rawsend("send", "--no-progress", "--encrypt", str(key), "-o", str(stream), str(work / "one")))
    _ok(run_rawsend("sign", str(stream), "-k", str(work / "alice")))
    keyless = _ok(run_rawsend("verify", "--signer", str(work / "alice.pub"), str(stream))).stdout.decode()
    assert keyless.splitlines()[0].startswith("signed by key id ")
    assert keyless.splitlines()[1].startswith("intact, NOT authenticated (encrypted; no key given;")
    keyed = _ok(run_rawsend("verify", "--signer", str(work / "alice.pub"), "--key-file", str(key), str(stream)))
    assert keyed.stdout.decode().splitlines()[1].startswith("OK, authenticated: ")


def test_sign_refuses_a_damaged_stream_and_writes_no_signature(work, tmp_path):
    stream = _copy(work, tmp_path)
    data = bytearray(stream.read_bytes())
    data[-40] ^= 1  # inside END's digest: its CRC no longer matches
    stream.write_bytes(bytes(data))
    proc = run_rawsend("sign", str(stream), "-k", str(work / "alice"))
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("rawsend: checksum mismatch: record CRC-32C is ")
    assert "(at record 6, byte offset " in proc.stderr.decode()
    assert not Path(f"{stream}.minisig").exists()


def test_unkeyed_forgery_passes_verify_but_not_the_signature(work, tmp_path):
    """One payload byte changed, every CRC and the END digest recomputed: only the signature sees it."""
    stream = _signed(work, tmp_path)
    preamble, frames, rest = split(stream.read_bytes())
    extent = next(f for f in frames if f.type == RecordType.EXTENT and f.payload == b"hello\n")
    extent.payload = b"jello\n"
    stream.write_bytes(reseal(preamble, frames, rest))
    _ok(run_rawsend("verify", str(stream)))  # the stream alone cannot tell
    _fails(run_rawsend("verify", "--signer", str(work / "alice.pub"), str(stream)), 1,
           f"signature does not match: the file's BLAKE2b-512 is not what key id"
           f" {signing.load_public_key(work / 'alice.pub').key_id_hex} signed: its bytes were changed after"
           f" signing (at path '{stream}'); the stream or its signature was altered (or the public key file is"
           f" damaged); do not trust this stream")


def test_signature_copied_from_another_stream(work, tmp_path):
    one = _signed(work, tmp_path)
    two = _copy(work, tmp_path, "two.rs")
    shutil.copyfile(f"{one}.minisig", f"{two}.minisig")
    _fails(run_rawsend("verify", "--signer", str(work / "alice.pub"), str(two)), 1,
           f"signature does not match: it is for stream {_stream_id(one)} (file one.rs), this file is stream"
           f" {_stream_id(two)}: the signature belongs to another stream (at path '{two}'); the stream or its"
           f" signature was altered (or the public key file is damaged); do not trust this stream")


def test_signature_by_another_key(work, tmp_path):
    stream = _signed(work, tmp_path, key="bob")
    bob = signing.load_public_key(work / "bob.pub").key_id_hex
    alice = signing.load_public_key(work / "alice.pub").key_id_hex
    _fails(run_rawsend("verify", "--signer", str(work / "alice.pub"), str(stream)), 4,
           f"signed by none of the given signers: the signature is by key id {bob} (given: {alice}) (at path"
           f" '{stream}.minisig'); pass the public key of that key id with --signer, or do not trust this stream")


def test_truncated_stream_with_its_signature(work, tmp_path):
    stream = _signed(work, tmp_path)
    size = stream.stat().st_size
    stream.write_bytes(stream.read_bytes()[:size - 100])
    _fails(run_rawsend("verify", "--signer", str(work / "alice.pub"), str(stream)), 1,
           f"signature does not match: it is for {size} bytes, the file has {size - 100}: the stream was cut off"
           f" or extended after signing (at path '{stream}'); the stream or its signature was altered (or the"
           f" public key file is damaged); do not trust this stream")


def test_trusted_comment_altered(work, tmp_path):
    stream = _signed(work, tmp_path)
    sig = Path(f"{stream}.minisig")
    sig.write_bytes(sig.read_bytes().replace(b"file:one.rs", b"file:two.rs"))
    alice = signing.load_public_key(work / "alice.pub").key_id_hex
    _fails(run_rawsend("verify", "--signer", str(work / "alice.pub"), str(stream)), 1,
           f"signature does not match: the trusted comment or the signature was altered (key id {alice}) (at path"
           f" '{sig}'); the stream or its signature was altered (or the public key file is damaged); do not"
           f" trust this stream")


def test_damaged_and_missing_signature_files(work, tmp_path):
    stream = _signed(work, tmp_path)
    sig = Path(f"{stream}.minisig")
    lines = sig.read_bytes().split(b"\n")
    pub = str(work / "alice.pub")
    sig.write_bytes(b"\n".join([lines[0], lines[1][:-8]] + lines[2:]))
    _fails(run_rawsend("verify", "--signer", pub, str(stream)), 1,
           f"bad signature file: the signature (line 2) decodes to 69 bytes, expected 74 (at path '{sig}');"
           f" the signature file is damaged or not a minisign signature; sign the stream again")
    legacy = base64.b64encode(b"Ed" + base64.b64decode(lines[1])[2:])
    sig.write_bytes(b"\n".join([lines[0], legacy] + lines[2:]))
    _fails(run_rawsend("verify", "--signer", pub, str(stream)), 1,
           f"bad signature file: it is a legacy signature (algorithm 'Ed') of the raw file; rawsend checks only"
           f" prehashed ones ('ED', BLAKE2b-512 of the file) (at path '{sig}'); sign again with 'rawsend sign'"
           f" or 'minisign -S' without -l")
    sig.write_bytes(b"\n".join(lines[:2] + [lines[2] + b"\x1b[2J"] + lines[3:]))
    _fails(run_rawsend("verify", "--signer", pub, str(stream)), 1,
           f"bad signature file: the trusted comment holds a control character (at path '{sig}'); the signature"
           f" file is damaged or not a minisign signature; sign the stream again")
    sig.write_bytes(b"\n".join(lines[:3]) + b"\n")
    _fails(run_rawsend("verify", "--signer", pub, str(stream)), 1,
           f"bad signature file: the signature file has 3 lines, expected 4 (at path '{sig}'); the signature"
           f" file is damaged or not a minisign signature; sign the stream again")
    sig.unlink()
    _fails(run_rawsend("verify", "--signer", pub, str(stream)), 3,
           f"cannot open the signature file: No such file or directory (at path '{sig}')")


def test_signer_needs_a_stream_file(work):
    proc = run_rawsend("verify", "--signer", str(work / "alice.pub"), "-", input=b"")
    assert proc.returncode == 2
    assert "--signer needs a stream file" in proc.stderr.decode()


# -- key files: damaged, or of the wrong kind ----------------------------------------------------------

def test_damaged_public_key(work, tmp_path):
    stream = _signed(work, tmp_path)
    comment, line, _ = (work / "alice.pub").read_bytes().split(b"\n")
    pub = tmp_path / "damaged.pub"
    pub.write_bytes(comment + b"\n" + line[:-4] + b"\n")
    _fails(run_rawsend("verify", "--signer", str(pub), str(stream)), 4,
           f"bad key file: its key decodes to 39 bytes, a minisign public key is 42 (at path '{pub}')")
    pub.write_bytes(comment + b"\n" + line[:10] + b"*" + line[11:] + b"\n")
    _fails(run_rawsend("verify", "--signer", str(pub), str(stream)), 4,
           f"bad key file: its key line is not valid base64 (at path '{pub}')")
    pub.write_bytes(line + b"\n")
    _fails(run_rawsend("verify", "--signer", str(pub), str(stream)), 4,
           f"bad key file: the key file has 1 lines, expected 2 (at path '{pub}')")


def test_damaged_secret_key(work, tmp_path):
    stream = _copy(work, tmp_path)
    comment, line, _ = (work / "alice").read_bytes().split(b"\n")
    raw = bytearray(base64.b64decode(line))
    raw[70] ^= 0x01  # a byte of the Ed25519 seed
    key = tmp_path / "damaged"
    key.write_bytes(comment + b"\n" + base64.b64encode(bytes(raw)) + b"\n")
    key.chmod(0o600)
    _fails(run_rawsend("sign", str(stream), "-k", str(key)), 4,
           f"bad key file: its checksum does not match the key: the file is damaged (at path '{key}')")
    raw[126:] = bytes(32)  # as minisign -W leaves the checksum: the public half still gives it away
    key.write_bytes(comment + b"\n" + base64.b64encode(bytes(raw)) + b"\n")
    _fails(run_rawsend("sign", str(stream), "-k", str(key)), 4,
           f"bad key file: its public half does not belong to its secret half: the file is damaged"
           f" (at path '{key}')")
    assert not Path(f"{stream}.minisig").exists()


def test_passphrase_encrypted_secret_key_is_refused_by_name(work, tmp_path):
    comment, line, _ = (work / "alice").read_bytes().split(b"\n")
    raw = bytearray(base64.b64decode(line))
    raw[2:4] = b"Sc"
    key = tmp_path / "encrypted"
    key.write_bytes(comment + b"\n" + base64.b64encode(bytes(raw)) + b"\n")
    key.chmod(0o600)
    _fails(run_rawsend("sign", str(_copy(work, tmp_path)), "-k", str(key)), 4,
           f"bad key file: the secret key is encrypted with a passphrase; rawsend reads only"
           f" unencrypted secret keys, protected by their file mode (at path '{key}'); remove the passphrase with"
           f" 'minisign -C -W -s {key}' and keep the file mode 0600")


def test_signing_key_where_an_encryption_key_is_expected(work, tmp_path):
    message = ("bad key file: it is a signing key (minisign format), not an encryption key (at path"
               " '{}'); give a key file written by 'rawsend keygen' without --sign; signing keys are for 'rawsend"
               " sign -k' and 'rawsend verify --signer'")
    _fails(run_rawsend("send", "--no-progress", "--encrypt", str(work / "alice"), "-o", str(tmp_path / "x.rs"),
                       str(work / "one")), 4, message.format(work / "alice"))
    assert not (tmp_path / "x.rs").exists()
    _fails(run_rawsend("verify", "--key-file", str(work / "alice.pub"), str(work / "one.rs")), 4,
           message.format(work / "alice.pub"))


def test_wrong_kind_of_key_for_sign_and_verify(work, tmp_path):
    stream = _signed(work, tmp_path)
    hint = ("make a signing key with 'rawsend keygen --sign -o NAME': 'sign -k NAME' takes NAME, 'verify --signer'"
            " takes NAME.pub")
    backup = work / "backup.key"
    _fails(run_rawsend("sign", str(stream), "-k", str(backup)), 4,
           f"bad key file: it is an encryption key (written by 'rawsend keygen'), not a secret signing"
           f" key (at path '{backup}'); {hint}")
    _fails(run_rawsend("verify", "--signer", str(backup), str(stream)), 4,
           f"bad key file: it is an encryption key (written by 'rawsend keygen'), not a public signing"
           f" key (at path '{backup}'); {hint}")
    _fails(run_rawsend("sign", str(stream), "-k", str(work / "alice.pub")), 4,
           f"bad key file: it is a public key; signing needs the secret key (at path"
           f" '{work / 'alice.pub'}'); give the secret key file (NAME, beside NAME.pub)")
    _fails(run_rawsend("verify", "--signer", str(work / "alice"), str(stream)), 4,
           f"bad key file: it is a secret signing key; verifying needs the public key (at path"
           f" '{work / 'alice'}'); give NAME.pub, and keep the secret key NAME on the signing host only")


# -- interoperability with minisign ----------------------------------------------------------------------

@needs_minisign
def test_minisign_verifies_a_rawsend_signature(work, tmp_path):
    stream = _signed(work, tmp_path)
    proc = subprocess.run([MINISIGN, "-Vm", str(stream), "-p", str(work / "alice.pub")], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("Signature and comment signature verified\nTrusted comment: timestamp:")
    data = bytearray(stream.read_bytes())
    data[100] ^= 1
    stream.write_bytes(bytes(data))
    proc = subprocess.run([MINISIGN, "-Vm", str(stream), "-p", str(work / "alice.pub")], capture_output=True)
    assert (proc.returncode, proc.stderr) == (1, b"Signature verification failed\n")


@needs_minisign
def test_rawsend_verifies_and_signs_with_a_minisign_key(work, tmp_path):
    pub, key = tmp_path / "m.pub", tmp_path / "m.key"
    subprocess.run([MINISIGN, "-G", "-W", "-p", str(pub), "-s", str(key)], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    stream = _copy(work, tmp_path)
    subprocess.run([MINISIGN, "-S", "-s", str(key), "-m", str(stream)], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    key_id = signing.load_public_key(pub).key_id_hex
    proc = _ok(run_rawsend("verify", "--signer", str(pub), str(stream)))
    assert proc.stdout.decode().startswith(f"signed by key id {key_id} ({pub}): every byte is as signed")
    assert "file:one.rs" in proc.stdout.decode()
    # a minisign signature names no stream id or size: a change is reported as changed bytes
    data = bytearray(stream.read_bytes())
    data[-1] ^= 1
    stream.write_bytes(bytes(data))
    proc = run_rawsend("verify", "--signer", str(pub), str(stream))
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("rawsend: signature does not match: the file's BLAKE2b-512 is not what")

    other = _copy(work, tmp_path, "two.rs")
    _ok(run_rawsend("sign", str(other), "-k", str(key)))
    proc = subprocess.run([MINISIGN, "-Vm", str(other), "-p", str(pub)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    _ok(run_rawsend("verify", "--signer", str(pub), str(other)))


# -- unit -------------------------------------------------------------------------------------------

def test_key_id_is_printed_as_minisign_prints_it():
    assert signing.key_id_text(bytes.fromhex("381671d806764cb7")) == "B74C7606D8711638"


def test_hashing_reader_hashes_exactly_what_is_read_and_the_rest(tmp_path):
    import hashlib
    import io
    data = bytes(range(256)) * 10_000
    r = signing.HashingReader(io.BytesIO(data))
    buf = bytearray(1000)
    assert r.readinto(buf) == 1000 and r.read(5) == data[1000:1005]
    r.drain()
    assert (r.size, r.digest()) == (len(data), hashlib.blake2b(data).digest())
