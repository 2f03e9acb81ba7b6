"""What receive says is wrong with DEST and its parent: one line, exit 3, nothing created or followed."""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import rawsend_argv

# -- what is wrong with DEST, through the CLI: one line, exit 3, nothing created -----------------

GOOD = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "good_plain.rs"
PREFIX = "rawsend: cannot receive into destination: "
NEW = "choose a new directory; receive never overwrites"
NO_FOLLOW = "receive never follows a symlink at DEST"


def _without_dac_override() -> None:
    """For a child run as root: drop the capabilities that let root write any directory."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if os.geteuid() == 0 and libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _dest_case(case: str, box: Path) -> tuple[Path, str]:
    """Set up ``case`` in ``box``; DEST and the message (after the prefix) receive must print."""
    (box / "file").write_bytes(b"mine\n")
    (box / "empty").mkdir()
    if case == "parent missing":
        return box / "missing" / "dest", (f"its parent directory does not exist (at path '{box}/missing'); "
                                          "create it first; receive makes DEST only")
    if case == "parent is a file":
        return box / "file" / "dest", (f"its parent is a regular file, not a directory (at path '{box}/file'); "
                                       "give a DEST whose parent is a directory")
    if case == "an ancestor is a file":
        return box / "file" / "sub" / "dest", (f"its parent path goes through a regular file, not a directory "
                                               f"(at path '{box}/file'); give a DEST whose parent is a directory")
    if case == "parent not writable":
        (box / "ro").mkdir(mode=0o555)
        return box / "ro" / "dest", (f"its parent directory is not writable (at path '{box}/ro'); receive builds "
                                     "the tree beside DEST, then renames it: choose a DEST in a directory you "
                                     "can write")
    if case == "dest is a file":
        return box / "file", f"it exists and is a regular file, not a directory (at path '{box}/file'); {NEW}"
    if case == "dest is a non-empty directory":
        (box / "full").mkdir()
        (box / "full" / "keep").write_bytes(b"mine\n")
        return box / "full", f"it exists and is not an empty directory (at path '{box}/full'); {NEW}"
    if case == "dest is a symlink to an empty directory":
        os.symlink("empty", box / "link")
        return box / "link", (f"it is a symlink to 'empty', a directory (at path '{box}/link'); "
                              f"{NO_FOLLOW}: name '{box}/empty' itself, or a new directory")
    if case == "dest is a symlink to a file":
        os.symlink("file", box / "link")
        return box / "link", (f"it is a symlink to 'file', a regular file (at path '{box}/link'); "
                              f"{NO_FOLLOW}: choose a new directory")
    if case == "dest is a dangling symlink":
        os.symlink("nowhere", box / "link")
        return box / "link", (f"it is a symlink to 'nowhere', which does not exist (at path '{box}/link'); "
                              f"{NO_FOLLOW}: remove it or choose a new directory")
    raise AssertionError(case)


DEST_CASES = ["parent missing", "parent is a file", "an ancestor is a file", "parent not writable",
              "dest is a file", "dest is a non-empty directory", "dest is a symlink to an empty directory",
              "dest is a symlink to a file", "dest is a dangling symlink"]


def _listing(box: Path) -> dict[str, bytes | str | None]:
    out = {}
    for top, dirs, files in os.walk(box):
        for name in dirs + files:
            p = os.path.join(top, name)
            out[os.path.relpath(p, box)] = (os.readlink(p) if os.path.islink(p)
                                            else None if os.path.isdir(p) else Path(p).read_bytes())
    return out


@pytest.mark.parametrize("case", DEST_CASES)
def test_receive_says_what_is_wrong_with_dest(tmp_path, case):
    box = tmp_path / "box"
    box.mkdir()
    dest, message = _dest_case(case, box)
    before = _listing(box)
    proc = subprocess.run(rawsend_argv("receive", "-f", str(GOOD), str(dest)), capture_output=True,
                          preexec_fn=_without_dac_override, timeout=120)
    assert (proc.returncode, proc.stderr.decode()) == (3, PREFIX + message + "\n")
    assert _listing(box) == before  # nothing created, nothing followed
