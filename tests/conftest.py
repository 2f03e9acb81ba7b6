from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "spec" / "vectors"


@contextmanager
def lock_held_by_another_process(path: Path):
    """An flock on ``path`` held by another process for the length of the block."""
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.flock(f,fcntl.LOCK_EX);"
                               " print('ok',flush=True); time.sleep(60)", str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        yield
    finally:
        holder.kill()
        holder.wait()


def rawsend_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "rawsend", *args]


def run_rawsend(*args: str, input: bytes | None = None, check: bool = False, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(rawsend_argv(*args), input=input, capture_output=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"rawsend {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc


def pipeline(send_args: list[str], receive_args: list[str]) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """`rawsend send ... | rawsend receive ...` through a real pipe."""
    sender = subprocess.Popen(rawsend_argv("send", *send_args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    receiver = subprocess.Popen(rawsend_argv("receive", *receive_args), stdin=sender.stdout,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sender.stdout.close()
    r_out, r_err = receiver.communicate(timeout=300)
    s_err = sender.stderr.read()
    sender.wait(timeout=60)
    return (subprocess.CompletedProcess(sender.args, sender.returncode, b"", s_err),
            subprocess.CompletedProcess(receiver.args, receiver.returncode, r_out, r_err))


@pytest.fixture
def is_root() -> bool:
    return os.geteuid() == 0
