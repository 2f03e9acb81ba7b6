"""What a command imports: reading an unencrypted stream loads no cipher library, and nothing
loads a progress-bar library or crc32c's package __init__ (importlib.metadata) without need.

Checked with ``python -X importtime``, which names every module a process imported (on stderr,
as ``import time: self | cumulative | name``).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import VECTORS

ENCRYPTED = VECTORS / "encrypted"


def imported_by(*args: str, stdin=subprocess.DEVNULL) -> set[str]:
    """The top-level and dotted names of every module ``rawsend ARGS`` imported; it must exit 0."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "rawsend", *args], stdin=stdin,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", proc.stderr, re.M))
    assert "rawsend.cli" in names  # the output is what we think it is
    return names


def _packages(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("vector", ["good_plain.rs", "good_zstd.rs", "good_incremental.rs"])
def test_verify_of_an_unencrypted_stream_imports_no_cipher_library(vector):
    names = imported_by("verify", str(VECTORS / vector))  # stdout and stderr are pipes, not a terminal
    assert "cryptography" not in _packages(names)
    assert "rawsend.codecs.crypto" not in names
    assert "tqdm" not in _packages(names)
    assert "importlib.metadata" not in names  # crc32c's __init__ and click's version lookup stay out
    assert "concurrent.futures" not in names  # no thread pool to read a stream


def test_receive_of_an_unencrypted_stream_imports_no_cipher_library(tmp_path):
    with open(VECTORS / "good_zstd.rs", "rb") as stream:
        names = imported_by("receive", str(tmp_path / "out"), stdin=stream)
    assert (tmp_path / "out").is_dir()
    assert "cryptography" not in _packages(names)
    assert "tqdm" not in _packages(names)


def test_verify_with_the_key_of_an_encrypted_stream_does_import_it(tmp_path):
    """The check above can fail: the same reading with a key loads the cipher library."""
    key = tmp_path / "test.key"
    key.write_bytes((ENCRYPTED / "test.key").read_bytes())
    key.chmod(0o600)
    names = imported_by("verify", "--key-file", str(key), str(ENCRYPTED / "good_aes256gcm.rs"))
    assert "cryptography" in _packages(names)
