"""send | receive of a varied tree gives an identical tree, with every compression choice."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.conftest import pipeline, run_rawsend
from tests.treeutil import diff, snapshot

NS_TIME = 1_234_567_890_123_456_789


def make_varied_tree(root: Path) -> Path:
    rng = random.Random(7)
    root.mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "small.txt").write_text("hello\n")
    (root / "ünïcödé ✓ name.txt").write_text("unicode\n")
    (root / "odd name\twith tab\nand newline").write_text("odd\n")
    (root / b"latin1-\xe9\xff".decode("utf-8", "surrogateescape")).write_text("not utf-8\n")
    (root / "-starts-with-dash").write_text("dash\n")
    text = "".join(f"{i:08d} some compressible log line with words and numbers {i * 7 % 1000}\n"
                   for i in range(60000))
    (root / "large.log").write_text(text)  # several extents
    (root / "random.bin").write_bytes(rng.randbytes(300_000 + 123))  # incompressible, odd size
    with open(root / "sparse.img", "wb") as f:  # data, hole, data, trailing hole
        f.write(b"start" * 1000)
        f.seek(3 << 20)
        f.write(rng.randbytes(70_000))
        f.truncate(8 << 20)
    with open(root / "all-hole.img", "wb") as f:
        f.truncate(5 << 20)
    sub = root / "dir" / "nested" / "deeper"
    sub.mkdir(parents=True)
    (sub / "leaf.txt").write_text("leaf\n")
    os.link(root / "small.txt", root / "dir" / "hardlink-to-small")
    os.link(root / "small.txt", sub / "second-hardlink")
    os.symlink("../small.txt", root / "dir" / "relative-link")
    os.symlink("/etc/passwd", root / "absolute-link")
    os.symlink("does/not/exist", root / "dangling-link")
    os.symlink("nested", root / "dir" / "dir-link")
    os.setxattr(root / "small.txt", "user.comment", b"a comment")
    os.setxattr(root / "dir", "user.dir", b"\x00binary\xffvalue")
    os.chmod(root / "random.bin", 0o600)
    os.chmod(root / "small.txt", 0o640)
    ro = root / "read-only-dir"
    ro.mkdir()
    (ro / "inside.txt").write_text("inside a read-only dir\n")
    os.chmod(ro / "inside.txt", 0o444)
    os.utime(root / "large.log", ns=(NS_TIME, NS_TIME + 1))
    os.utime(root / "dangling-link", ns=(NS_TIME, NS_TIME + 2), follow_symlinks=False)
    os.utime(sub, ns=(NS_TIME, NS_TIME + 3))
    os.chmod(ro, 0o555)
    return root


@pytest.mark.parametrize("codec", ["zstd", "lz4", "zlib", "none"])
def test_round_trip_is_identical(tmp_path, codec):
    src = make_varied_tree(tmp_path / "src")
    before = snapshot(src)
    sent, received = pipeline([str(src), "--compress", codec, "--no-progress"],
                              [str(tmp_path / "dst"), "--no-progress"])
    assert sent.returncode == 0, sent.stderr.decode()
    assert received.returncode == 0, received.stderr.decode()
    after = snapshot(tmp_path / "dst")
    assert diff(before, after) == []
    # the sparse files kept their holes: allocated blocks are compared in the snapshot, and
    # a fully allocated 8 MiB file would use 16384 blocks
    assert after["sparse.img"]["blocks"] < 1024
    assert after["all-hole.img"]["blocks"] == 0
    assert b"received" in received.stderr


def test_stream_to_file_then_receive_from_file(tmp_path):
    src = make_varied_tree(tmp_path / "src")
    stream = tmp_path / "s.rs"
    run_rawsend("send", "-o", str(stream), str(src), check=True)
    assert run_rawsend("verify", str(stream), check=True).stdout.startswith(b"OK: ")
    run_rawsend("receive", "-f", str(stream), str(tmp_path / "dst"), check=True)
    assert diff(snapshot(src), snapshot(tmp_path / "dst")) == []


def test_receive_into_existing_empty_dir(tmp_path):
    src = make_varied_tree(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    stream = run_rawsend("send", str(src), check=True).stdout
    run_rawsend("receive", str(tmp_path / "dst"), input=stream, check=True)
    assert diff(snapshot(src), snapshot(tmp_path / "dst")) == []


def test_receive_refuses_a_non_empty_destination(tmp_path):
    src = make_varied_tree(tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "precious").write_text("keep me")
    stream = run_rawsend("send", str(src), check=True).stdout
    proc = run_rawsend("receive", str(dst), input=stream)
    assert proc.returncode == 3
    assert b"exists and is not an empty directory" in proc.stderr
    assert sorted(os.listdir(dst)) == ["precious"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no temp left behind


def test_send_refuses_to_write_binary_to_a_terminal(tmp_path):
    import pty
    import subprocess
    import sys

    (tmp_path / "src").mkdir()
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "rawsend", "send", str(tmp_path / "src")],
                              stdout=slave, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 2
    assert b"refusing to write a binary stream to a terminal" in proc.stderr


def test_receive_refuses_to_read_a_stream_from_a_terminal(tmp_path):
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "rawsend", "receive", str(tmp_path / "dst")],
                              stdin=slave, capture_output=True, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 2
    assert b"refusing to read a binary stream from a terminal" in proc.stderr
    assert not (tmp_path / "dst").exists()


def test_owner_is_kept_when_root(tmp_path, is_root):
    if not is_root:
        pytest.skip("ownership can only be restored by root")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.chown(src / "f", 1234, 5678)
    os.symlink("f", src / "l")
    os.chown(src / "l", 4321, 8765, follow_symlinks=False)
    stream = run_rawsend("send", str(src), check=True).stdout
    run_rawsend("receive", str(tmp_path / "dst"), input=stream, check=True)
    assert (os.stat(tmp_path / "dst" / "f").st_uid, os.stat(tmp_path / "dst" / "f").st_gid) == (1234, 5678)
    st = os.lstat(tmp_path / "dst" / "l")
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    run_rawsend("receive", "--no-preserve-owner", str(tmp_path / "dst2"), input=stream, check=True)
    assert os.stat(tmp_path / "dst2" / "f").st_uid == os.geteuid()


def test_a_socket_is_noted_not_sent_and_send_still_succeeds(tmp_path):
    import socket

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "s.sock"))
        proc = run_rawsend("send", str(src))
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr
    assert b"note: " in proc.stderr and b"s.sock: socket ignored" in proc.stderr
    run_rawsend("receive", str(tmp_path / "dst"), input=proc.stdout, check=True)
    assert sorted(os.listdir(tmp_path / "dst")) == ["f"]
