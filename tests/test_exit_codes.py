"""Exit codes: one base class per code, the README's table made from them, and one case of each
code through the command (signals and a closed stdout included)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rawsend import errors
from rawsend.errors import (
    EXIT_CODES, AuthenticationFailed, ChangedWhileRead, DamagedInput, Interrupted, KeyProblem, LocalError,
    RawsendError, SendWarning, SkippedSocket, StoreDamaged, StreamError, Unreadable, Vanished, WrongKey,
    exit_code_table,
)
from rawsend.sources.tree import SourceReport, TreeSource
from tests.conftest import ROOT, VECTORS, rawsend_argv, run_rawsend

ENCRYPTED = VECTORS / "encrypted"


@pytest.fixture
def key(tmp_path) -> Path:
    """The vectors' key, as a key file should be (mode 0600: no warning about its mode)."""
    path = tmp_path / "test.key"
    path.write_bytes((ENCRYPTED / "test.key").read_bytes())
    path.chmod(0o600)
    return path


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


# -- the classes are the exit codes ---------------------------------------------------------------

def test_every_error_class_has_exactly_one_exit_code_base_and_keeps_its_code():
    bases = [c for c in EXIT_CODES if issubclass(c, RawsendError)]
    for cls in _all_subclasses(RawsendError):
        mine = [b for b in bases if issubclass(cls, b)]
        assert len(mine) == 1, f"{cls.__name__} is under {mine}"
        assert cls.exit_code == mine[0].exit_code, cls.__name__
    for cls in _all_subclasses(SendWarning):
        assert cls.exit_code == SendWarning.exit_code
    codes = [c.exit_code for c in EXIT_CODES if c is not Interrupted]
    assert len(set(codes)) == len(codes) and 0 not in codes
    assert not set(codes) & set(range(129, 129 + 31)) - {141}  # 141 is SIGPIPE's, as the README says


def test_forged_input_is_a_stream_error_and_a_damaged_store_is_not_a_local_problem():
    assert issubclass(AuthenticationFailed, StreamError) and AuthenticationFailed.exit_code == 1
    assert issubclass(StoreDamaged, DamagedInput) and not issubclass(StoreDamaged, LocalError)
    assert issubclass(WrongKey, KeyProblem) and WrongKey.exit_code == 4
    # a signal is not an error any ``except RawsendError`` may swallow
    assert not issubclass(Interrupted, Exception) and Interrupted(signal.SIGTERM).exit_code == 143


def _readme_exit_table() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    return "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))


def test_the_readme_table_is_the_one_the_classes_make():
    table = _readme_exit_table()
    assert table == exit_code_table(), "regenerate it: python -c 'from rawsend.errors import exit_code_table as" \
                                       " t; print(t())'"
    rows = dict(re.findall(r"^\| (\S+) \| (.*) \|$", table, re.M)[1:])
    assert rows["0"] == "success"
    for cls in EXIT_CODES:
        code = "128+N" if cls is Interrupted else str(cls.exit_code)
        assert rows[code] == cls.summary


# -- one case of each code through the command -----------------------------------------------------

@pytest.fixture
def tree(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"alpha\n" * 1000)
    (src / "sub" / "b").write_bytes(os.urandom(3000))
    return src


def _without_dac_override() -> None:
    """For a child run as root: drop the capabilities that let root read any file."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if os.geteuid() == 0 and libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_unprivileged(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(rawsend_argv(*args), capture_output=True, preexec_fn=_without_dac_override, timeout=120)


def test_exit_0_success(tree, tmp_path):
    sent = run_rawsend("send", "-o", str(tmp_path / "s.rs"), str(tree))
    assert sent.returncode == 0, sent.stderr
    got = run_rawsend("receive", "--no-sync", "-f", str(tmp_path / "s.rs"), str(tmp_path / "dst"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "dst" / "sub" / "b").read_bytes() == (tree / "sub" / "b").read_bytes()


def test_exit_1_damaged_and_forged_input(key):
    damaged = run_rawsend("verify", str(VECTORS / "bitflip_payload.rs"))
    assert damaged.returncode == 1 and b"checksum mismatch" in damaged.stderr, damaged.stderr
    forged = run_rawsend("verify", "--key-file", str(key), str(ENCRYPTED / "truncated_forged_end.rs"))
    assert forged.returncode == 1 and b"authentication failed" in forged.stderr, forged.stderr


def test_exit_2_usage_error(tree):
    proc = run_rawsend("send", "--no-such-option", str(tree))
    assert proc.returncode == 2 and b"No such option" in proc.stderr


def test_exit_3_local_problems(tree, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").touch()
    proc = run_rawsend("receive", "-f", str(VECTORS / "good_plain.rs"), str(tmp_path / "full"))
    assert proc.returncode == 3 and b"exists and is not an empty directory" in proc.stderr


@pytest.mark.parametrize("case", ["missing", "a file", "no permission"])
def test_an_unreadable_source_is_a_local_problem_and_creates_no_output(tree, tmp_path, case):
    source = {"missing": tmp_path / "missing", "a file": tree / "a", "no permission": tree / "sub"}[case]
    if case == "no permission":
        os.chmod(source, 0)
    out = tmp_path / "out.rs"
    proc = _run_unprivileged("send", "-o", str(out), str(source))
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert err.startswith(f"rawsend: cannot read source: ") and repr(str(source)) in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_keygen_onto_an_existing_file_is_a_local_problem(tmp_path):
    key = tmp_path / "k"
    key.write_bytes(b"something else\n")
    proc = run_rawsend("keygen", "-o", str(key))
    assert proc.returncode == 3 and b"already exists; keygen never overwrites a key" in proc.stderr
    assert key.read_bytes() == b"something else\n"


@pytest.mark.parametrize("argv", [
    ["receive", "--key-file", "{missing}", "-f", "{stream}", "{dest}"],
    ["verify", "--key-file", "{missing}", "{stream}"],
    ["dump", "--key-file", "{missing}", "{stream}"],
    ["rekey", "--from", "{missing}", "--to", "{key}", "-i", "{stream}", "-o", "{dest}"],
    ["rekey", "--from", "{key}", "--to", "{missing}", "-i", "{stream}", "-o", "{dest}"],
    ["send", "--encrypt", "{missing}", "-o", "{dest}", "{tree}"],
])
def test_exit_4_a_missing_key_file(tmp_path, tree, key, argv):
    names = dict(missing=str(tmp_path / "no.key"), stream=str(ENCRYPTED / "good_aes256gcm.rs"),
                 dest=str(tmp_path / "d"), key=str(key), tree=str(tree))
    proc = run_rawsend(*(a.format(**names) for a in argv))
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.decode() == (f"rawsend: bad key file: cannot open it: No such file or directory"
                                    f" (at path {names['missing']!r})\n")
    assert not (tmp_path / "d").exists()


def test_exit_4_the_wrong_key_one_message_for_every_command(tmp_path):
    other = tmp_path / "other.key"
    assert run_rawsend("keygen", "-o", str(other)).returncode == 0
    stream = str(ENCRYPTED / "good_aes256gcm.rs")
    runs = [run_rawsend("receive", "--key-file", str(other), "-f", stream, str(tmp_path / "d")),
            run_rawsend("verify", "--key-file", str(other), stream),
            run_rawsend("dump", "--key-file", str(other), stream),
            run_rawsend("rekey", "--from", str(other), "--to", str(other), "-i", stream, "-o", str(tmp_path / "d"))]
    messages = {proc.stderr.decode() for proc in runs}
    assert [proc.returncode for proc in runs] == [4, 4, 4, 4], messages
    assert len(messages) == 1, messages
    message = messages.pop()
    assert message.startswith("rawsend: none of the given keys is the stream's key: it needs key id ")
    assert "no key was given" not in message and "(at record 0, byte offset 12)" in message
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == [other]


def test_exit_4_no_key_given(tmp_path):
    proc = run_rawsend("receive", "-f", str(ENCRYPTED / "good_aes256gcm.rs"), str(tmp_path / "d"))
    assert proc.returncode == 4 and b"no key was given" in proc.stderr and b"given key" not in proc.stderr


def test_exit_5_send_finished_with_warnings(tree, tmp_path):
    os.chmod(tree / "sub" / "b", 0)
    out = tmp_path / "s.rs"
    proc = _run_unprivileged("send", "-o", str(out), str(tree))
    err = proc.stderr.decode()
    assert proc.returncode == 5, err
    assert f"rawsend: warning: {tree}/sub/b: cannot open it: Permission denied" in err
    assert run_rawsend("verify", str(out)).returncode == 0  # the stream itself is good
    got = run_rawsend("receive", "--no-sync", "-f", str(out), str(tmp_path / "dst"))
    assert got.returncode == 0 and (tmp_path / "dst" / "a").exists() and not (tmp_path / "dst" / "sub" / "b").exists()


def test_exit_70_a_bug(tmp_path):
    code = ("import sys, rawsend.pipeline as p\n"
            "def bug(*a, **k): raise ZeroDivisionError('a planted bug')\n"
            "p.receive = bug\n"
            "from rawsend.cli import main\n"
            f"main(['verify', {str(VECTORS / 'good_plain.rs')!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "RAWSEND_DEBUG"})
    assert proc.returncode == 70
    assert proc.stderr.decode() == ("rawsend: internal error: ZeroDivisionError: a planted bug; this is a bug in"
                                    " rawsend, please report it (RAWSEND_DEBUG=1 shows the traceback)\n")


# -- 141: standard output closed by its reader, silently, for every command that prints ------------

def _closed_stdout_run(*args: str) -> subprocess.CompletedProcess:
    """Run with a stdout pipe whose reading end is already closed: every write fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(rawsend_argv(*args), stdout=w, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "store"
    proc = run_rawsend("receive", "--store", "-f", str(VECTORS / "good_plain.rs"), str(path))
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.mark.parametrize("argv", [["ls", "{store}"], ["ls", "--json", "{store}"], ["dump", "{stream}"],
                                  ["dump", "--json", "{stream}"], ["verify", "{stream}"], ["verify", "{store}"],
                                  ["send", "{tree}"], ["send", "{store}"], ["keygen"],
                                  ["rekey", "--from", "{key}", "--to", "{key}", "-i", "{encrypted}"]])
def test_a_closed_stdout_is_silent_and_exits_141(store, tree, key, argv):
    names = dict(store=str(store), stream=str(VECTORS / "good_plain.rs"), tree=str(tree), key=str(key),
                 encrypted=str(ENCRYPTED / "good_aes256gcm.rs"))
    proc = _closed_stdout_run(*(a.format(**names) for a in argv))
    err = proc.stderr.decode()
    assert proc.returncode == 128 + signal.SIGPIPE, err
    # only what a command says on stderr when it succeeds may remain (keygen's key id); no error
    assert "broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert not any(line.startswith("rawsend: ") and "key id" not in line for line in err.splitlines()), err


def test_a_closed_stdout_in_a_shell_pipeline(store):
    proc = subprocess.run(f"{' '.join(rawsend_argv('ls', str(store)))} | head -0; echo $((PIPESTATUS[0]))",
                          shell=True, executable="/bin/bash", capture_output=True, timeout=60)
    assert proc.stderr == b""
    assert proc.stdout.strip() in (b"0", b"141")  # 0 when ls wrote before head exited: the pipe held it


# -- 128+N: a signal stops a receive, which cleans up and says so -----------------------------------

def _poll(what: str, condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def _sleeping(proc: subprocess.Popen) -> bool:
    with open(f"/proc/{proc.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


@pytest.fixture(scope="module")
def big_stream(tmp_path_factory) -> bytes:
    src = tmp_path_factory.mktemp("signals") / "src"
    src.mkdir()
    (src / "first").write_bytes(b"first file\n")
    (src / "big").write_bytes(os.urandom(4 << 20))
    out = src.parent / "s.rs"
    run_rawsend("send", "--compress", "none", "-o", str(out), str(src), check=True)
    return out.read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
@pytest.mark.parametrize("into", ["tree", "store"])
def test_a_signal_during_receive_cleans_up_says_so_and_exits_128_plus_the_signal(tmp_path, big_stream, sig, into):
    dest = tmp_path / "dest"
    argv = ["receive", "--no-sync", str(dest)] if into == "tree" else ["receive", "--store", str(dest)]
    if into == "store":  # a store that already holds a stream must stay as it was
        assert run_rawsend("receive", "--store", "-f", str(VECTORS / "good_plain.rs"), str(dest)).returncode == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    # a shell's background job starts with SIGINT ignored, which rawsend rightly keeps: undo that here
    proc = subprocess.Popen(rawsend_argv(*argv), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    try:
        proc.stdin.write(big_stream[:len(big_stream) // 2])  # then the pipe stalls, mid-file
        proc.stdin.flush()
        if into == "tree":
            temp = lambda: list(tmp_path.glob(".dest.rawsend-*/big"))  # noqa: E731
        else:
            temp = lambda: list((dest / "tmp").glob("*.rs"))  # noqa: E731
        _poll("receive has written part of the stream and waits for more",
              lambda: temp() and temp()[0].stat().st_size > 0 and _sleeping(proc))
        proc.send_signal(sig)
        returncode = proc.wait(timeout=60)  # before reading stderr, which would wait for ever if it did not exit
        err = proc.stderr.read().decode()
        assert returncode == 128 + sig, err
    finally:
        proc.stdin.close()
        proc.stderr.close()
        if proc.poll() is None:
            proc.kill()
    what = f"nothing was kept: {dest} is as it was" if into == "tree" else f"nothing was stored: {dest} is as it was"
    assert err == f"rawsend: interrupted by {signal.Signals(sig).name}; {what}\n"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no temporary left


def test_a_signal_ignored_by_the_caller_stays_ignored(tmp_path, big_stream):
    """nohup: SIGHUP is ignored when rawsend starts, so a hangup does not stop the receive."""
    dest = tmp_path / "dest"
    proc = subprocess.Popen(rawsend_argv("receive", "--no-sync", str(dest)), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        proc.stdin.write(big_stream[:len(big_stream) // 2])
        proc.stdin.flush()
        _poll("receive waits for more", lambda: list(tmp_path.glob(".dest.rawsend-*/big")) and _sleeping(proc))
        proc.send_signal(signal.SIGHUP)
        proc.stdin.write(big_stream[len(big_stream) // 2:])
    finally:
        proc.stdin.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err
    assert (dest / "big").stat().st_size == 4 << 20 and (dest / "first").read_bytes() == b"first file\n"


# -- warnings are typed ------------------------------------------------------------------------------

def test_the_source_reports_typed_warnings(tmp_path):
    import socket

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "f").write_bytes(b"data")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "s"))
    try:
        report = SourceReport()
        items = iter(TreeSource(src, report))
        while getattr(next(items), "name", None) != b"a":  # the root's names are listed by now
            pass
        (src / "f").unlink()  # listed, but gone before it is read
        list(items)
    finally:
        sock.close()
    assert [type(w) for w in report.warnings] == [Vanished]
    assert str(report.warnings[0]) == f"{src}/f: file removed before we read it; it is not in the stream"
    assert [type(n) for n in report.notices] == [SkippedSocket] and report.notices[0].path == f"{src}/s"
    assert all(isinstance(w, SendWarning) for w in report.warnings)
    assert ChangedWhileRead.exit_code == Unreadable.exit_code == errors.SendWarning.exit_code == 5
    assert SkippedSocket.exit_code == 0  # a notice: send still succeeds
