"""Extent codecs: payloads made the way btrfs stores them, decoded within their declared size."""

from __future__ import annotations

import random
import zlib

import pytest
import zstandard

from rawsend.codecs.compress import compress, decode
from rawsend.errors import DecodeError
from rawsend.stream.records import Compression

TEXT = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(2700))[:131072]


@pytest.mark.parametrize("level", [1, 3, 9, 19])
def test_zstd_frames_fit_the_btrfs_window_and_state_their_size(level):
    cid, frame = compress(TEXT, Compression.ZSTD, level)
    params = zstandard.get_frame_parameters(frame)
    assert cid == Compression.ZSTD
    assert params.window_size <= 1 << 17  # btrfs decodes zstd with a 128 KiB window at most
    assert params.content_size == len(TEXT)
    assert decode(frame, cid, len(TEXT)) == TEXT


def test_zlib_payload_is_one_zlib_stream():
    cid, payload = compress(TEXT, Compression.ZLIB, 3)
    assert cid == Compression.ZLIB and zlib.decompress(payload) == TEXT
    assert decode(payload + bytes(100), cid, len(TEXT)) == TEXT  # btrfs sector padding is allowed


@pytest.mark.parametrize("codec", [Compression.ZSTD, Compression.ZLIB, Compression.LZ4])
def test_data_that_does_not_shrink_is_sent_plain(codec):
    data = random.Random(3).randbytes(65536)
    assert compress(data, codec, 3) == (Compression.NONE, data)


def test_short_output_is_zero_extended_as_btrfs_does():
    cid, frame = compress(b"a" * 5000, Compression.ZSTD, 3)
    assert decode(frame, cid, 8192) == b"a" * 5000 + bytes(3192)


@pytest.mark.parametrize("codec", [Compression.ZSTD, Compression.ZLIB, Compression.LZ4])
def test_output_longer_than_declared_is_refused(codec):
    cid, payload = compress(TEXT, codec, 3)
    with pytest.raises(DecodeError):
        decode(payload, cid, len(TEXT) - 1)
