"""Faults around the real command: a killed receive, a full disk, a source that changes under
send, and a pipe that breaks on either side.  Each ends with a clear message, a non-zero exit,
and no partial tree at the destination.

Timing comes from the pipes, not from sleeps: the test feeds a receive exactly the bytes it
wants it to have seen, and waits until the process is blocked reading for more, or stops reading
a sender's output so that the sender blocks in the middle of a file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from rawsend.stream.records import END_BODY, RECORD_HEADER
from tests.conftest import rawsend_argv, run_rawsend
from tests.hostile import split
from tests.treeutil import diff, snapshot

BIG = 16 << 20  # larger than every buffer between send and the pipe, so send blocks inside it
TEMP_GLOB = ".dest.rawsend-*"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def wait_until(what: str, condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds twice in a row, 20 ms apart."""
    end = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < end:
        streak = streak + 1 if condition() else 0
        if streak >= 2:
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


def blocked(proc: subprocess.Popen) -> bool:
    """The process sleeps in a system call (here: reading or writing a pipe)."""
    return proc.poll() is None and _state(proc.pid) == "S"


def _pipe_fill(fd: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("faults") / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a_big").write_bytes(os.urandom(BIG))
    (src / "b_small").write_bytes(b"small file\n" * 100)
    (src / "sub" / "c").write_bytes(os.urandom(50_000))
    os.symlink("a_big", src / "link")
    return src


@pytest.fixture(scope="module")
def stream(source, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("stream") / "s.rs"
    run_rawsend("send", "--compress", "none", "-o", str(out), str(source), check=True)
    return out.read_bytes()


def _stale(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.glob(TEMP_GLOB))


# -- SIGKILL of a receive ------------------------------------------------------------------------------

def _cut_points(stream: bytes) -> dict[str, int]:
    preamble, frames, _ = split(stream)
    header_end = len(preamble) + len(frames[0].pack())
    end_start = len(stream) - RECORD_HEADER.size - END_BODY.size
    return {"after the header": header_end, "inside a file": len(stream) // 2, "before END": end_start}


@pytest.mark.parametrize("point", ["after the header", "inside a file", "before END"])
def test_sigkill_of_receive_leaves_no_destination_and_the_next_receive_succeeds(tmp_path, source, stream, point):
    dest = tmp_path / "dest"
    cut = _cut_points(stream)[point]
    proc = subprocess.Popen(rawsend_argv("receive", "--no-sync", str(dest)), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(stream[:cut])
        proc.stdin.flush()
        wait_until("receive has read what it was given", lambda: blocked(proc) and _stale(tmp_path))
        if point == "inside a file":
            temp = next(tmp_path.glob(TEMP_GLOB))
            assert os.stat(temp / "a_big").st_blocks > 0  # really in the middle of writing it
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.stdin.close()
        proc.stderr.close()
    assert not dest.exists()
    assert len(_stale(tmp_path)) == 1  # only the temporary directory, which is removable
    again = run_rawsend("receive", "--no-sync", str(dest), input=stream)
    assert again.returncode == 0, again.stderr.decode()
    assert _stale(tmp_path) == []  # the next receive cleaned it up
    assert diff(snapshot(source, owners=False, blocks=False), snapshot(dest, owners=False, blocks=False)) == []


def test_sigkill_as_the_stream_ends_leaves_nothing_or_everything(tmp_path, source, stream):
    dest = tmp_path / "dest"
    proc = subprocess.Popen(rawsend_argv("receive", "--no-sync", str(dest)), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.stdin.write(stream)
    proc.stdin.close()  # END is in: the commit races the kill
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if dest.exists():
        assert diff(snapshot(source, owners=False, blocks=False), snapshot(dest, owners=False, blocks=False)) == []
    else:
        shutil.rmtree(dest, ignore_errors=True)
        assert run_rawsend("receive", "--no-sync", str(dest), input=stream).returncode == 0
    assert _stale(tmp_path) == []


# -- a full disk -------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs mount, which needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True,
                          check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(small_disk, stream, tmp_path):
    path = tmp_path / "s.rs"
    path.write_bytes(stream)
    dest = small_disk / "dest"
    proc = run_rawsend("receive", "-f", str(path), str(dest))
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "no space left on the destination" in err and "a_big" in err and "record " in err, err
    assert "Traceback" not in err
    assert os.listdir(small_disk) == []  # neither the destination nor its temporary directory
    assert shutil.disk_usage(small_disk).used < 1 << 20


# -- a source that changes during send -----------------------------------------------------------------

@pytest.fixture
def live_source(tmp_path, source) -> Path:
    src = tmp_path / "live"
    shutil.copytree(source, src, symlinks=True)
    return src


CHANGES = {
    "grows": lambda src: (src / "a_big").open("ab").write(b"appended while send read it"),
    "shrinks": lambda src: os.truncate(src / "a_big", 1 << 20),
    "is replaced": lambda src: (src / "a_big").rename(src / "sub" / "moved"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_source_that_changes_during_send_is_reported_and_the_stream_stays_valid(tmp_path, live_source, change):
    out = tmp_path / "s.rs"
    proc = subprocess.Popen(rawsend_argv("send", "--compress", "none", "--threads", "1", str(live_source)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        fd = proc.stdout.fileno()
        wait_until("send blocks on a full pipe inside a_big", lambda: blocked(proc) and _pipe_fill(fd) > 0)
        CHANGES[change](live_source)
        (live_source / "b_small").unlink()  # not read yet: it comes after a_big
        with open(out, "wb") as f:
            shutil.copyfileobj(proc.stdout, f)
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 5, err  # done, with warnings
    finally:
        proc.stdout.close()
        proc.stderr.close()
    expected = {"grows": "a_big: file changed while we read it", "shrinks": "a_big: file shrank while we read it",
                "is replaced": "a_big: file changed while we read it"}[change]
    assert expected in err, err
    assert "b_small: file removed before we read it" in err, err
    assert "Traceback" not in err
    verify = run_rawsend("verify", str(out))
    assert verify.returncode == 0 and verify.stdout.startswith(b"OK"), verify.stderr.decode()
    dest = tmp_path / "dest"
    assert run_rawsend("receive", "--no-sync", "-f", str(out), str(dest)).returncode == 0
    assert not (dest / "b_small").exists()
    assert os.path.getsize(dest / "a_big") == BIG  # the size send saw when it started the file


# -- broken pipes ----------------------------------------------------------------------------------------

def test_a_receive_that_stops_reading_ends_send_with_a_broken_pipe(tmp_path, source):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "occupied").touch()  # receive refuses at once and closes its end of the pipe
    sender = subprocess.Popen(rawsend_argv("send", "--compress", "none", str(source)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    receiver = subprocess.Popen(rawsend_argv("receive", str(dest)), stdin=sender.stdout,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sender.stdout.close()
    r_err = receiver.communicate(timeout=60)[1].decode()
    s_err = sender.communicate(timeout=60)[1].decode()
    assert receiver.returncode == 3 and "exists and is not an empty directory" in r_err, r_err
    assert sender.returncode == 141 and s_err == "", s_err  # closed stdout: silent, as if killed by SIGPIPE
    assert os.listdir(dest) == ["occupied"]


def test_a_sender_that_dies_mid_stream_ends_receive_with_a_truncated_stream(tmp_path, source):
    dest = tmp_path / "dest"
    sender = subprocess.Popen(rawsend_argv("send", "--compress", "none", str(source)),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    receiver = subprocess.Popen(rawsend_argv("receive", str(dest)), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # relay the first 2 MiB, then the sender dies and its end of the pipe closes
        receiver.stdin.write(sender.stdout.read(2 << 20))
        sender.send_signal(signal.SIGKILL)
        sender.wait(timeout=30)
        r_err = receiver.communicate(timeout=60)[1].decode()  # closes the relay's end: EOF
    finally:
        sender.stdout.close()
    assert receiver.returncode == 1, r_err
    assert "stream ends early" in r_err and "byte offset" in r_err and "Traceback" not in r_err, r_err
    assert not dest.exists() and _stale(tmp_path) == []


@pytest.mark.parametrize("damage", ["cut", "crc"])
def test_a_failed_receive_of_a_tracked_stream_leaves_no_state_beside_dest(tmp_path, source, damage):
    """The state directory a tracked stream's receive makes goes again when the receive fails."""
    stream = tmp_path / "s.rs"
    run_rawsend("send", "--compress", "none", "--state", str(tmp_path / "STATE"), "-o", str(stream), str(source),
                check=True)
    data = bytearray(stream.read_bytes())
    if damage == "cut":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    into = tmp_path / "into"
    into.mkdir()
    proc = run_rawsend("receive", "--no-sync", str(into / "dest"), input=bytes(data))
    assert proc.returncode == 1, proc.stderr
    assert os.listdir(into) == []


def test_a_killed_receive_ends_send_with_a_broken_pipe(tmp_path, source):
    dest = tmp_path / "dest"
    sender = subprocess.Popen(rawsend_argv("send", "--compress", "none", str(source)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    receiver = subprocess.Popen(rawsend_argv("receive", "--no-sync", str(dest)), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        receiver.stdin.write(sender.stdout.read(1 << 20))
        receiver.stdin.flush()
        wait_until("receive waits for more", lambda: blocked(receiver))
        receiver.send_signal(signal.SIGKILL)
        receiver.wait(timeout=30)
        with pytest.raises(BrokenPipeError):
            receiver.stdin.write(sender.stdout.read(1 << 20))
            receiver.stdin.flush()
        sender.stdout.close()  # the relay is gone too: the sender's next write fails
        s_err = sender.communicate(timeout=60)[1].decode()
    finally:
        if not sender.stdout.closed:
            sender.stdout.close()
    assert sender.returncode == 141 and s_err == "", s_err
    assert not dest.exists()
    assert len(_stale(tmp_path)) == 1  # what SIGKILL leaves: the next receive removes it
