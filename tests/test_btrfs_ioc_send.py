"""rawsend.btrfs.send: BTRFS_IOC_SEND driven from Python, compared byte for byte with
`btrfs send` of the same snapshot; a restarted or interrupted attempt retried once;
a sender stopped and continued mid-send gives the right stream or a clear error.
Needs root and btrfs-progs (else skipped, see -rs)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rawsend.btrfs import send as send_mod
from rawsend.btrfs.send import SendFailed, root_id, send, send_to_file
from rawsend.btrfs.sendstream import SendStreamReader
from tests.btrfs_fixtures import btrfs_mount, require_btrfs

REPO = Path(__file__).resolve().parent.parent


def _btrfs(*argv) -> bytes:
    return subprocess.run(["btrfs", *map(str, argv)], check=True, capture_output=True,
                          timeout=300).stdout


@pytest.fixture(scope="module")
def snaps(tmp_path_factory):
    """(mount, s1, s2, writable subvolume) on a zstd btrfs."""
    require_btrfs()
    with btrfs_mount(tmp_path_factory.mktemp("ioc-send"), options="compress=zstd", size="1G") as mnt:
        sv = mnt / "sv"
        _btrfs("subvolume", "create", sv)
        os.mkdir(sv / "d")
        for i in range(50):
            (sv / "d" / f"f{i}").write_bytes(b"file %d\n" % i * (i * 50 + 1))
        (sv / "log").write_bytes(b"".join(b"log line %08d\n" % i for i in range(300_000)))
        (sv / "rand").write_bytes(os.urandom(1 << 20))
        _btrfs("subvolume", "snapshot", "-r", sv, mnt / "s1")
        os.rename(sv / "d", sv / "e")
        (sv / "e" / "new").write_bytes(b"new\n")
        with open(sv / "log", "r+b") as f:
            f.seek(1 << 20)
            f.write(b"X" * 100_000)
        _btrfs("subvolume", "snapshot", "-r", sv, mnt / "s2")
        yield mnt, mnt / "s1", mnt / "s2", sv


def test_root_id_is_the_subvolume_id(snaps):
    mnt, s1, s2, sv = snaps
    for path in (s1, s2, sv):
        assert root_id(path) == int(_btrfs("inspect-internal", "rootid", path))
    assert len({root_id(s1), root_id(s2), root_id(sv), root_id(mnt)}) == 4
    assert root_id(mnt) == 5   # the top-level subvolume


@pytest.mark.parametrize("options, argv", [
    (dict(version=1), ["--proto", "1"]),
    (dict(version=2, compressed=True), ["--proto", "2", "--compressed-data"]),
    (dict(version=2, no_file_data=True), ["--proto", "2", "--no-data"]),
])
@pytest.mark.parametrize("incremental", [False, True])
def test_stream_equals_btrfs_send(snaps, tmp_path, options, argv, incremental):
    _, s1, s2, _ = snaps
    if incremental:
        ref = _btrfs("send", "-q", *argv, "-p", s1, s2)
        options = dict(options, parent=s1)
    else:
        ref = _btrfs("send", "-q", *argv, s1)
    with open(tmp_path / "out", "w+b") as out:
        result = send_to_file(s2 if incremental else s1, out, **options)
    got = (tmp_path / "out").read_bytes()
    assert got == ref
    assert (result.bytes, result.attempts, result.version) == (len(ref), 1, options["version"])
    assert result.commands == len(list(SendStreamReader(io.BytesIO(ref))))


def test_send_yields_the_parsed_commands(snaps):
    _, s1, s2, _ = snaps
    cmds = list(send(s2, parent=s1, no_file_data=True, version=1))
    ref = list(SendStreamReader(io.BytesIO(_btrfs("send", "-q", "--no-data", "-p", s1, s2))))
    assert [(c.cmd, c.attrs) for c in cmds] == [(c.cmd, c.attrs) for c in ref]
    assert "update_extent" in {c.name for c in cmds}


def test_clone_source_by_root_id(snaps, tmp_path):
    _, s1, s2, _ = snaps
    ref = _btrfs("send", "-q", "-c", s1, s2)
    out = io.BytesIO()
    send_to_file(s2, out, clone_sources=[root_id(s1)], parent=root_id(s1), version=1)
    # btrfs send -c finds s1 as the parent (parent_uuid), so the streams are the same
    assert out.getvalue() == ref


def test_writable_subvolume_refused(snaps):
    _, _, _, sv = snaps
    with pytest.raises(SendFailed) as e:
        send_to_file(sv, io.BytesIO())
    assert str(e.value) == (
        "btrfs send failed: BTRFS_IOC_SEND: Operation not permitted (the subvolume must be read-only"
        f" and the caller root (CAP_SYS_ADMIN)) (at path {str(sv)!r}); check the subvolume and the"
        " send options")
    assert e.value.exit_code == 3


def test_not_a_directory_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(SendFailed, match=r"cannot open the subvolume: Not a directory"):
        send_to_file(tmp_path / "f", io.BytesIO())


def test_compressed_needs_version_2(snaps):
    _, s1, _, _ = snaps
    with pytest.raises(SendFailed, match="compressed data needs stream version 2 or later"):
        send_to_file(s1, io.BytesIO(), version=1, compressed=True)


# -- failed attempts, made deterministic by replacing the first ioctl ------------------------

def _fake_first_attempts(monkeypatch, fakes):
    """The first len(fakes) attempts run fake(attempt, wfd) instead of the ioctl."""
    real = send_mod._Attempt._ioctl
    calls = []

    def ioctl(self, wfd):
        calls.append(1)
        if len(calls) <= len(fakes):
            try:
                fakes[len(calls) - 1](self, wfd)
            finally:
                os.close(wfd)
        else:
            real(self, wfd)

    monkeypatch.setattr(send_mod._Attempt, "_ioctl", ioctl)
    return calls


def _restarted(ref: bytes):
    """Write a stream that starts over after 3 commands, as the kernel does on SIGSTOP."""
    cut = list(SendStreamReader(io.BytesIO(ref)))[3].offset

    def fake(self, wfd):
        os.write(wfd, ref[:cut])
        with open(wfd, "wb", closefd=False) as f:
            f.write(ref)
    return fake


def _interrupted(self, wfd):
    os.write(wfd, b"btrfs-stream\0\1\0\0\0")
    self.errno = errno.EINTR


@pytest.mark.parametrize("first", ["restarted", "interrupted"])
def test_one_failed_attempt_is_retried(snaps, monkeypatch, first):
    _, s1, _, _ = snaps
    ref = _btrfs("send", "-q", "--proto", "1", "--no-data", s1)
    fake = _restarted(ref) if first == "restarted" else _interrupted
    calls = _fake_first_attempts(monkeypatch, [fake])
    out = io.BytesIO(b"old content that must go")
    result = send_to_file(s1, out, version=1, no_file_data=True)
    assert out.getvalue() == ref
    assert result.attempts == 2 and len(calls) == 2


def test_two_failed_attempts_fail_clearly(snaps, monkeypatch):
    _, s1, _, _ = snaps
    ref = _btrfs("send", "-q", "--proto", "1", "--no-data", s1)
    _fake_first_attempts(monkeypatch, [_interrupted, _restarted(ref)])
    out = io.BytesIO()
    with pytest.raises(SendFailed) as e:
        send_to_file(s1, out, version=1, no_file_data=True)
    assert str(e.value).startswith(
        "btrfs send failed: 2 attempts gave no whole stream; last: btrfs send stream starts over:"
        " a second stream header where command 4 should start (at record 4, byte offset ")
    assert str(e.value).endswith("; run it again and do not stop or signal the sending process while it runs")
    assert e.value.exit_code == 3
    assert out.getvalue() == b""        # never a partial or wrong stream left behind


def test_other_ioctl_errors_are_not_retried(snaps, monkeypatch):
    _, s1, _, _ = snaps

    def eperm(self, wfd):
        self.errno = errno.EPERM
    calls = _fake_first_attempts(monkeypatch, [eperm, eperm])
    with pytest.raises(SendFailed, match="Operation not permitted"):
        send_to_file(s1, io.BytesIO())
    assert len(calls) == 1


# -- the real hazard: the sending process stopped and continued ------------------------------

_CHILD = textwrap.dedent("""
    import sys
    from rawsend.btrfs.send import send_to_file
    from rawsend.errors import RawsendError
    try:
        with open(sys.argv[2], "w+b") as out:
            print("started", flush=True)
            r = send_to_file(sys.argv[1], out, version=1)
        print("attempts", r.attempts, flush=True)
    except RawsendError as e:
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
""")


@pytest.fixture(scope="module")
def large_snap(tmp_path_factory):
    """A snapshot whose full v1 send streams about 150 MB: long enough to be stopped."""
    require_btrfs()
    with btrfs_mount(tmp_path_factory.mktemp("ioc-send-large"), options="compress=zstd", size="1G") as mnt:
        sv = mnt / "sv"
        _btrfs("subvolume", "create", sv)
        block = b"".join(b"%08d some compressible text of a log\n" % i for i in range(28_000))
        for n in range(4):
            with open(sv / f"big{n}", "wb") as f:
                for _ in range(36):
                    f.write(block)
        _btrfs("subvolume", "snapshot", "-r", sv, mnt / "snap")
        yield mnt / "snap"


def _sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("pauses", [1, 6])
def test_sigstop_sigcont_gives_the_right_stream_or_a_clear_error(large_snap, tmp_path, pauses):
    ref = tmp_path / "ref"
    with open(ref, "wb") as f:
        subprocess.run(["btrfs", "send", "-q", str(large_snap)], stdout=f, check=True, timeout=300)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(large_snap), str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "started\n"
        for _ in range(pauses):
            time.sleep(0.05)
            if child.poll() is not None:
                break
            child.send_signal(signal.SIGSTOP)
            time.sleep(0.05)
            child.send_signal(signal.SIGCONT)
        stdout, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode == 0:
        assert stdout.startswith("attempts ")
        assert _sha(out) == _sha(ref)          # exactly btrfs send's stream, never another
    else:
        assert child.returncode == 3, stderr
        assert stderr.startswith("btrfs send failed: 2 attempts gave no whole stream; last: "), stderr
        assert out.stat().st_size == 0
