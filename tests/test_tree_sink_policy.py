"""What the tree sink keeps of a stream's privileges: device nodes, special files' modes,
setuid bits and capabilities kept as root, ACLs; through the rawsend command."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from rawsend.stream.records import SetXattr
from tests.conftest import run_rawsend
from tests.hostile import mkdir, mkfile, mknod, plain_extent, tree_stream

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (device nodes, chown, capabilities)")

NULL_DEV = os.makedev(1, 3)  # /dev/null: harmless whatever opens it
LOOP0 = os.makedev(7, 0)     # a block device of this host


def _receive(tmp_path: Path, data: bytes, *options: str, umask: int | None = None):
    stream, dest = tmp_path / "s.rs", tmp_path / "dest"
    stream.write_bytes(data)
    old = os.umask(umask) if umask is not None else None
    try:
        proc = run_rawsend("receive", "--no-progress", "--no-sync", *options, "-f", str(stream), str(dest))
    finally:
        if old is not None:
            os.umask(old)
    return proc, dest, proc.stderr.decode()


def _specials() -> bytes:
    data, _ = tree_stream(mknod(2, 1, b"null", stat.S_IFCHR, NULL_DEV, 0o666),
                          mknod(3, 1, b"loop0", stat.S_IFBLK, LOOP0, 0o660),
                          mknod(4, 1, b"fifo", stat.S_IFIFO, 0, 0o666))
    return data


# -- device nodes ---------------------------------------------------------------------------------

@needs_root
def test_preserve_special_creates_fifos_but_not_devices(tmp_path):
    proc, dest, err = _receive(tmp_path, _specials(), "--preserve-special")
    assert proc.returncode == 0, err
    assert sorted(os.listdir(dest)) == ["fifo"]
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    assert "2 device nodes skipped (--preserve-devices, as root)" in err
    assert "special files skipped" not in err


@needs_root
def test_preserve_devices_creates_block_and_character_devices(tmp_path):
    proc, dest, err = _receive(tmp_path, _specials(), "--preserve-devices")
    assert proc.returncode == 0, err
    assert sorted(os.listdir(dest)) == ["loop0", "null"]
    assert os.lstat(dest / "null").st_rdev == NULL_DEV and stat.S_ISCHR(os.lstat(dest / "null").st_mode)
    assert os.lstat(dest / "loop0").st_rdev == LOOP0 and stat.S_ISBLK(os.lstat(dest / "loop0").st_mode)
    assert "1 special file skipped (--preserve-special)" in err
    assert "device nodes skipped" not in err


def test_without_either_flag_every_special_file_is_skipped(tmp_path):
    proc, dest, err = _receive(tmp_path, _specials())
    assert proc.returncode == 0, err
    assert os.listdir(dest) == []
    assert "1 special file skipped (--preserve-special)" in err
    assert "2 device nodes skipped (--preserve-devices, as root)" in err


def test_preserve_devices_has_no_meaning_for_a_store(tmp_path):
    stream = tmp_path / "s.rs"
    stream.write_bytes(_specials())
    proc = run_rawsend("receive", "--store", "--preserve-devices", "-f", str(stream), str(tmp_path / "store"))
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert "usage error: --preserve-devices cannot apply with --store" in err


# -- modes of special files ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o666, 0o640, 0o604])
def test_a_fifo_gets_the_stream_mode_whatever_the_umask(tmp_path, mode):
    data, _ = tree_stream(mknod(2, 1, b"fifo", stat.S_IFIFO, 0, mode))
    proc, dest, err = _receive(tmp_path, data, "--preserve-special", "--no-preserve-owner", umask=0o077)
    assert proc.returncode == 0, err
    assert stat.S_IMODE(os.lstat(dest / "fifo").st_mode) == mode


@needs_root
def test_a_device_gets_the_stream_mode_whatever_the_umask(tmp_path):
    data, _ = tree_stream(mknod(2, 1, b"null", stat.S_IFCHR, NULL_DEV, 0o666))
    proc, dest, err = _receive(tmp_path, data, "--preserve-devices", umask=0o027)
    assert proc.returncode == 0, err
    assert stat.S_IMODE(os.lstat(dest / "null").st_mode) == 0o666


# -- setuid, setgid and capabilities kept as root ---------------------------------------------------

CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # vfs caps v2, cap_net_raw+ep


def _privileged() -> bytes:
    data, _ = tree_stream(mkfile(2, 1, b"suid", 4, 0o4755, uid=4321, gid=4321), plain_extent(2, 0, b"\x7fELF"),
                          mkfile(3, 1, b"sgid", 0, 0o2755), mkfile(4, 1, b"ping", 4, 0o755),
                          plain_extent(4, 0, b"\x7fELF"), SetXattr(4, b"security.capability", CAP_NET_RAW),
                          mkdir(5, 1, b"shared", 0o2775), mkfile(6, 1, b"plain", 0, 0o644))
    return data


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("rawsend: warning:")]


@needs_root
def test_as_root_one_warning_counts_the_setuid_files_and_capabilities_kept(tmp_path):
    proc, dest, err = _receive(tmp_path, _privileged())
    assert proc.returncode == 0, err
    assert stat.S_IMODE(os.stat(dest / "suid").st_mode) == 0o4755 and os.stat(dest / "suid").st_uid == 4321
    assert os.getxattr(dest / "ping", "security.capability") == CAP_NET_RAW
    assert _warnings(err) == [
        "rawsend: warning: kept 2 setuid/setgid files and 1 file capability from the stream with their"
        f" owners (the default as root): they grant privileges in {dest}; --no-preserve-owner drops them"]


@needs_root
def test_no_warning_when_nothing_privileged_was_kept(tmp_path):
    data, _ = tree_stream(mkdir(2, 1, b"shared", 0o2775), mkfile(3, 1, b"plain", 0, 0o644))
    proc, _dest, err = _receive(tmp_path, data, "--preserve-owner")
    assert proc.returncode == 0, err
    assert _warnings(err) == []


def test_without_owners_nothing_privileged_is_kept_and_nothing_warned(tmp_path):
    proc, dest, err = _receive(tmp_path, _privileged(), "--no-preserve-owner")
    assert proc.returncode == 0, err
    assert stat.S_IMODE(os.stat(dest / "suid").st_mode) == 0o755
    assert "security.capability" not in os.listxattr(dest / "ping")
    assert not any("kept" in w for w in _warnings(err))


# -- POSIX ACLs ------------------------------------------------------------------------------------

ACL_ENTRY = struct.Struct("<HHI")  # posix_acl_xattr_entry: tag, perm, id (after a u32 version, 2)
NO_ID = 0xFFFFFFFF


def _acl(user: int) -> bytes:
    """user::rw-, user:<user>:rwx, group::r--, mask::rwx, other::r-- (mode 0674: the mask is the group bits)"""
    entries = [(0x01, 6, NO_ID), (0x02, 7, user), (0x04, 4, NO_ID), (0x10, 7, NO_ID), (0x20, 4, NO_ID)]
    return struct.pack("<I", 2) + b"".join(ACL_ENTRY.pack(*e) for e in entries)


def _with_acls() -> bytes:
    data, _ = tree_stream(mkfile(2, 1, b"shared", 0, 0o674), SetXattr(2, b"system.posix_acl_access", _acl(4321)),
                          mkdir(3, 1, b"inherit", 0o775), SetXattr(3, b"system.posix_acl_default", _acl(4321)),
                          SetXattr(3, b"user.note", b"kept"))
    return data


def test_acls_are_dropped_with_a_warning_unless_owners_are_kept(tmp_path):
    proc, dest, err = _receive(tmp_path, _with_acls(), "--no-preserve-owner")
    assert proc.returncode == 0, err
    assert not [n for n in os.listxattr(dest / "shared") if n.startswith("system.posix_acl")]
    assert os.listxattr(dest / "inherit") == ["user.note"]
    assert "2 xattrs not set" in err
    assert "xattr system.posix_acl_access not set: ACLs name users and groups by number" in err


@needs_root
def test_acls_are_kept_with_their_owners(tmp_path):
    proc, dest, err = _receive(tmp_path, _with_acls(), "--preserve-owner")
    assert proc.returncode == 0, err
    assert os.getxattr(dest / "shared", "system.posix_acl_access") == _acl(4321)
    assert os.getxattr(dest / "inherit", "system.posix_acl_default") == _acl(4321)
    assert "xattrs not set" not in err
