"""Loop-mounted btrfs images for tests that need a real btrfs.

Plain functions (usable anywhere):
    btrfs_unavailable_reason()      why btrfs tests must skip, or None
    encoded_io_unavailable_reason() why encoded-I/O tests must skip, or None
    require_btrfs() / require_encoded_io()   pytest.skip with that reason
    btrfs_mount(dir, options, size)  context manager yielding a mount Path

Fixtures (import them into a test module or a conftest.py):
    btrfs_required      skips the test when btrfs is unavailable
    btrfs_zstd          module-scoped mount with -o compress=zstd
    btrfs_plain         module-scoped mount without compression
    requires_btrfs      marker: pytest.mark.usefixtures("btrfs_required")

Skip reasons show with `pytest -rs`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Commands here touch only the files they create; a hung mount or umount
# should fail the test, not the whole run.
_CMD_TIMEOUT = 60

_counter = itertools.count()


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=_CMD_TIMEOUT)


def _describe(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or proc.stdout or "").strip()
    return f"{proc.args[0]} exited {proc.returncode}: {text}"


def _unmount(mnt: Path) -> None:
    """umount, falling back to a lazy umount when something still holds it."""
    if _run("umount", str(mnt)).returncode != 0:
        _run("umount", "-l", str(mnt))


@contextlib.contextmanager
def btrfs_mount(directory, options: str = "compress=zstd", size: str = "512M",
                mkfs_args: tuple[str, ...] = ()):
    """Make a sparse image in `directory`, mkfs.btrfs it, loop-mount it, yield
    the mount point; always unmount and delete the image afterwards.

    `options` is a comma-separated mount option string ("" for none), `size`
    anything `truncate -s` takes. Several mounts may share one directory.
    Raises RuntimeError with the failing command's output.
    """
    directory = Path(directory)
    n = next(_counter)
    img = directory / f"btrfs-{os.getpid()}-{n}.img"
    mnt = directory / f"btrfs-{os.getpid()}-{n}.mnt"
    loopdev = None
    mounted = False
    try:
        proc = _run("truncate", "-s", size, str(img))
        if proc.returncode != 0:
            raise RuntimeError(_describe(proc))
        proc = _run("mkfs.btrfs", "-q", *mkfs_args, str(img))
        if proc.returncode != 0:
            raise RuntimeError(_describe(proc))
        mnt.mkdir()
        opts = ",".join(o for o in ("loop", options) if o)
        proc = _run("mount", "-o", opts, str(img), str(mnt))
        if proc.returncode != 0:
            # Some mount builds cannot set up the loop device themselves;
            # do it by hand and mount the device instead.
            lp = _run("losetup", "-f", "--show", str(img))
            if lp.returncode != 0:
                raise RuntimeError(f"{_describe(proc)}; {_describe(lp)}")
            loopdev = lp.stdout.strip()
            argv = ["mount"] + (["-o", options] if options else []) + [loopdev, str(mnt)]
            proc = _run(*argv)
            if proc.returncode != 0:
                raise RuntimeError(_describe(proc))
        mounted = True
        yield mnt
    finally:
        if mounted:
            _unmount(mnt)
        if loopdev:
            _run("losetup", "-d", loopdev)
        with contextlib.suppress(OSError):
            img.unlink()
        with contextlib.suppress(OSError):
            mnt.rmdir()


@functools.lru_cache(maxsize=None)
def btrfs_unavailable_reason() -> str | None:
    """Why loop-mounted btrfs cannot be used here, or None if it can.

    Ends with a real mkfs + mount of a small image, once per process.
    """
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    if os.geteuid() != 0:
        return "not root (loop mounts need root)"
    for tool in ("mkfs.btrfs", "mount", "umount", "losetup", "truncate"):
        if shutil.which(tool) is None:
            return f"{tool} not found" + (" (install btrfs-progs)" if tool == "mkfs.btrfs" else "")
    if not (os.path.exists("/dev/loop-control") or os.path.exists("/dev/loop0")):
        return "no loop devices (/dev/loop-control missing)"
    with tempfile.TemporaryDirectory(prefix="rawsend-btrfs-probe-") as d:
        try:
            with btrfs_mount(d, options="", size="256M") as mnt:
                if not os.path.ismount(mnt):
                    return "mount reported success but nothing is mounted"
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            return f"cannot mount a loop btrfs image: {e}"
    return None


@functools.lru_cache(maxsize=None)
def encoded_io_unavailable_reason() -> str | None:
    """Why BTRFS_IOC_ENCODED_READ cannot be tested here, or None."""
    reason = btrfs_unavailable_reason()
    if reason:
        return reason
    from rawsend import btrfs

    if not btrfs.has_cap_sys_admin():
        return "no CAP_SYS_ADMIN (encoded I/O needs it)"
    with tempfile.TemporaryDirectory(prefix="rawsend-btrfs-probe-") as d:
        with btrfs_mount(d, options="", size="256M") as mnt:
            path = mnt / "probe"
            path.write_bytes(b"x" * 4096)
            fd = os.open(path, os.O_RDONLY)
            try:
                btrfs.encoded_read(fd, 0, bytearray(4096))
            except OSError as e:
                if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    return f"kernel {os.uname().release} lacks btrfs encoded I/O ({e})"
                return f"BTRFS_IOC_ENCODED_READ fails: {e}"
            finally:
                os.close(fd)
    return None


def require_btrfs() -> None:
    reason = btrfs_unavailable_reason()
    if reason:
        pytest.skip(f"btrfs unavailable: {reason}")


def require_encoded_io() -> None:
    reason = encoded_io_unavailable_reason()
    if reason:
        pytest.skip(f"btrfs encoded I/O unavailable: {reason}")


@pytest.fixture
def btrfs_required():
    require_btrfs()


requires_btrfs = pytest.mark.usefixtures("btrfs_required")


@pytest.fixture(scope="module")
def btrfs_zstd(tmp_path_factory):
    """A btrfs mounted with -o compress=zstd, shared by one test module."""
    require_btrfs()
    with btrfs_mount(tmp_path_factory.mktemp("btrfs-zstd"), options="compress=zstd") as mnt:
        yield mnt


@pytest.fixture(scope="module")
def btrfs_plain(tmp_path_factory):
    """A btrfs mounted without compression, shared by one test module."""
    require_btrfs()
    with btrfs_mount(tmp_path_factory.mktemp("btrfs-plain"), options="") as mnt:
        yield mnt
