"""rawsend.btrfs.sendstream and sendtree: real `btrfs send` streams of loop-mounted
snapshots (skipped without root and btrfs-progs, see -rs), then damaged streams
built command by command, each refused with its exact error."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import uuid

import pytest
import zstandard

from rawsend.btrfs import sendstream as ss
from rawsend.btrfs.sendstream import SendStreamReader, btrfs_crc32c
from rawsend.btrfs.sendtree import BtrfsTreeError, SendTree, replay
from tests.btrfs_fixtures import btrfs_mount, require_btrfs


def _btrfs(*argv) -> bytes:
    return subprocess.run(["btrfs", *map(str, argv)], check=True, capture_output=True,
                          timeout=120).stdout


def _walk(root) -> dict[bytes, int]:
    """{relative path: st_ino} of a snapshot, as SendTree.walk() gives it."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            out[os.fsencode(os.path.relpath(path, root))] = os.lstat(path).st_ino
    return out


def _populate(sv) -> None:
    os.makedirs(sv / "a/b")
    os.makedirs(sv / "c")
    (sv / "a/f").write_bytes(b"hello\n")
    (sv / "a/b/text").write_bytes(b"".join(b"line %d of some text\n" % i for i in range(40000)))
    (sv / "random").write_bytes(os.urandom(300_000))
    (sv / "x").write_bytes(b"x" * 5000)
    (sv / "y").write_bytes(b"y" * 7000)
    os.mkdir(sv / "dx")
    os.mkdir(sv / "dy")
    (sv / "dx/in").write_bytes(b"in dx\n")
    os.link(sv / "a/f", sv / "c/hard")
    os.symlink("../a/f", sv / "c/sym")
    os.mkfifo(sv / "c/fifo")
    os.setxattr(sv / "a/f", "user.note", b"one")
    os.mkdir(sv / "gone")
    (sv / "gone/f").write_bytes(b"soon gone\n")


def _change(sv) -> None:
    os.rename(sv / "a/b", sv / "c/b2")          # a directory moves under another
    os.rename(sv / "c", sv / "a/c")             # ... which itself moves into a sibling
    os.unlink(sv / "a/f")                       # one link of a hard-linked file goes
    (sv / "a/c/new").write_bytes(b"new file\n")
    os.rename(sv / "random", sv / "random2")
    os.rename(sv / "x", sv / "tmp")             # swap two files
    os.rename(sv / "y", sv / "x")
    os.rename(sv / "tmp", sv / "y")
    os.rename(sv / "dx", sv / "tmpd")           # swap two directories
    os.rename(sv / "dy", sv / "dx")
    os.rename(sv / "tmpd", sv / "dy")
    os.link(sv / "y", sv / "dx/y-link")         # a new hard link
    os.mkdir(sv / "d")
    os.rename(sv / "a/c", sv / "d/c")
    os.unlink(sv / "gone/f")                    # a directory and its file go
    os.rmdir(sv / "gone")


@pytest.fixture(scope="module")
def snaps(tmp_path_factory):
    """(mount, s1, s2): two read-only snapshots of a zstd btrfs, s2 after renames,
    directory moves, swaps and hard links."""
    require_btrfs()
    with btrfs_mount(tmp_path_factory.mktemp("sendstream"), options="compress=zstd") as mnt:
        sv = mnt / "sv"
        _btrfs("subvolume", "create", sv)
        _populate(sv)
        _btrfs("subvolume", "snapshot", "-r", sv, mnt / "s1")
        _change(sv)
        _btrfs("subvolume", "snapshot", "-r", sv, mnt / "s2")
        yield mnt, mnt / "s1", mnt / "s2"


@pytest.fixture(scope="module")
def streams(snaps):
    _, s1, s2 = snaps
    return {
        "v1 full": _btrfs("send", "-q", s1),
        "v2 full": _btrfs("send", "-q", "--proto", "2", "--compressed-data", s1),
        "v1 inc": _btrfs("send", "-q", "-p", s1, s2),
        "v2 inc": _btrfs("send", "-q", "--proto", "2", "--compressed-data", "-p", s1, s2),
        "v2 nodata inc": _btrfs("send", "-q", "--proto", "2", "--no-data", "-p", s1, s2),
    }


def _commands(data: bytes) -> list[ss.SendCommand]:
    return list(SendStreamReader(io.BytesIO(data)))


# -- real streams ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, version", [("v1 full", 1), ("v2 full", 2), ("v1 inc", 1), ("v2 inc", 2)])
def test_real_stream_parses_to_end(streams, name, version):
    reader = SendStreamReader(io.BytesIO(streams[name]))
    cmds = list(reader)
    assert reader.version == version
    assert reader.offset == len(streams[name])
    assert cmds[0].name == ("subvol" if "full" in name else "snapshot")
    assert cmds[-1].name == "end"
    assert [c.index for c in cmds] == list(range(1, len(cmds) + 1))
    assert isinstance(cmds[0]["uuid"], uuid.UUID)


def test_v2_has_encoded_writes_v1_none(streams):
    v1 = {c.name for c in _commands(streams["v1 full"])}
    v2 = [c for c in _commands(streams["v2 full"]) if c.name == "encoded_write"]
    assert "encoded_write" not in v1
    assert v2 and all(c["compression"] == 2 and c["encryption"] == 0 for c in v2)  # zstd
    utimes = [c for c in _commands(streams["v2 full"]) if c.name == "utimes"]
    assert all("otime" in c.attrs for c in utimes)


def _rebuild_files(cmds, tree: SendTree) -> dict[int, bytearray]:
    """File contents by inode from WRITE / ENCODED_WRITE / TRUNCATE."""
    files: dict[int, bytearray] = {}
    for cmd in cmds:
        ino = tree.apply(cmd)
        if cmd.name == "mkfile":
            files[ino] = bytearray()
        elif cmd.name in ("write", "encoded_write"):
            if cmd.name == "write":
                data = bytes(cmd["data"])
            else:
                plain = zstandard.ZstdDecompressor().decompressobj().decompress(bytes(cmd["data"]))
                start = cmd["unencoded_offset"]
                data = plain[start:start + cmd["unencoded_file_len"]]
            buf, off = files[ino], cmd["file_offset"]
            if len(buf) < off + len(data):
                buf.extend(bytes(off + len(data) - len(buf)))
            buf[off:off + len(data)] = data
        elif cmd.name == "truncate":
            buf = files[ino]
            del buf[cmd["size"]:]
            buf.extend(bytes(cmd["size"] - len(buf)))
    return files


@pytest.mark.parametrize("name", ["v1 full", "v2 full"])
def test_full_stream_data_rebuilds_every_file(snaps, streams, name):
    _, s1, _ = snaps
    tree = SendTree()
    files = _rebuild_files(_commands(streams[name]), tree)
    for path, ino in _walk(s1).items():
        full = s1 / os.fsdecode(path)
        if full.is_file() and not full.is_symlink():
            assert bytes(files[ino]) == full.read_bytes(), path


@pytest.mark.parametrize("name", ["v1 full", "v2 full"])
def test_tree_of_full_stream_is_the_snapshot(snaps, streams, name):
    _, s1, _ = snaps
    tree, concerns = replay(_commands(streams[name]))
    assert tree.walk() == _walk(s1)
    assert tree.paths(os.lstat(s1 / "a/f").st_ino) == [b"a/f", b"c/hard"]
    mkfiles = [(c, ino) for c, ino in concerns if c.name == "mkfile"]
    assert mkfiles and all(c.path.startswith(b"o%d-" % ino) for c, ino in mkfiles)
    assert all(tree.inodes[ino].gen is not None for _, ino in mkfiles)


@pytest.mark.parametrize("name", ["v1 inc", "v2 inc", "v2 nodata inc"])
def test_tree_of_incremental_is_the_new_snapshot(snaps, streams, name):
    _, s1, s2 = snaps
    tree, concerns = replay(_commands(streams[name]), SendTree.from_directory(s1))
    assert tree.walk() == _walk(s2)
    names = {c.name for c, _ in concerns}
    assert {"rename", "link", "unlink", "mkdir", "mkfile"} <= names
    # each command that names a file concerns an inode whose final path holds that inode
    for cmd, ino in concerns:
        if ino is not None and tree.paths(ino):
            for path in tree.paths(ino):
                assert os.lstat(s2 / os.fsdecode(path)).st_ino == ino


def test_update_extent_maps_to_final_paths(snaps, streams):
    _, s1, s2 = snaps
    tree, concerns = replay(_commands(streams["v2 nodata inc"]), SendTree.from_directory(s1))
    updates = [(c, ino) for c, ino in concerns if c.name == "update_extent"]
    assert updates
    finals = {tree.path(ino) for _, ino in updates}
    assert b"d/c/new" in finals
    # the stream names it by an orphan or pre-move path, the table by its final one
    assert any(c.path != tree.path(ino) for c, ino in updates)


def test_tree_refuses_a_rename_of_a_missing_path():
    tree = SendTree()
    cmd = ss.SendCommand(3, 99, ss.RENAME, {"path": b"nope", "path_to": b"x"})
    with pytest.raises(BtrfsTreeError) as e:
        tree.apply(cmd)
    assert str(e.value) == ("btrfs send command does not fit the tree: rename: no file at b'nope'"
                            " (at record 3, byte offset 99); " + ss._RESEND)
    assert e.value.exit_code == 1


def test_tree_refuses_a_name_that_exists_and_a_full_rmdir():
    tree = SendTree()
    tree.apply(ss.SendCommand(1, 17, ss.MKDIR, {"path": b"d", "ino": 257}))
    tree.apply(ss.SendCommand(2, 40, ss.MKFILE, {"path": b"d/f", "ino": 258}))
    with pytest.raises(BtrfsTreeError, match=r"mkfile: b'd/f' exists \(at record 3"):
        tree.apply(ss.SendCommand(3, 60, ss.MKFILE, {"path": b"d/f", "ino": 259}))
    with pytest.raises(BtrfsTreeError, match=r"rmdir of b'd', which is not empty \(at record 4"):
        tree.apply(ss.SendCommand(4, 80, ss.RMDIR, {"path": b"d"}))
    with pytest.raises(BtrfsTreeError, match=r"rename: bad name b'd/\.\.'"):
        tree.apply(ss.SendCommand(5, 90, ss.RENAME, {"path": b"d/f", "path_to": b"d/.."}))


def test_tree_refuses_a_directory_moved_into_itself_and_the_root_removed():
    tree = SendTree()
    tree.apply(ss.SendCommand(1, 17, ss.MKDIR, {"path": b"d", "ino": 257}))
    tree.apply(ss.SendCommand(2, 40, ss.MKDIR, {"path": b"d/e", "ino": 258}))
    for path_to in (b"d/e/d", b"d/d"):
        with pytest.raises(BtrfsTreeError, match=r"rename of b'd' into itself \(b'd/"):
            tree.apply(ss.SendCommand(3, 60, ss.RENAME, {"path": b"d", "path_to": path_to}))
    for cmd in (ss.RMDIR, ss.UNLINK):
        with pytest.raises(BtrfsTreeError, match=r"of the subvolume root \(at record 4"):
            tree.apply(ss.SendCommand(4, 80, cmd, {"path": b""}))
    with pytest.raises(BtrfsTreeError, match=r"rename of the subvolume root"):
        tree.apply(ss.SendCommand(5, 90, ss.RENAME, {"path": b"", "path_to": b"x"}))
    assert tree.walk() == {b"d": 257, b"d/e": 258}


# -- damaged streams, built command by command ------------------------------------------------

def _tlv(atype: int, value: bytes) -> bytes:
    return struct.pack("<HH", atype, len(value)) + value


def _cmd(cmd: int, body: bytes, *, crc: int | None = None, length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    if crc is None:
        crc = btrfs_crc32c(body, btrfs_crc32c(struct.pack("<IHI", length, cmd, 0)))
    return struct.pack("<IHI", length, cmd, crc) + body


def _header(version: int = 1) -> bytes:
    return ss.MAGIC + struct.pack("<I", version)


SUBVOL = _cmd(ss.SUBVOL, _tlv(ss.A_PATH, b"snap") + _tlv(ss.A_UUID, bytes(16))
              + _tlv(ss.A_CTRANSID, struct.pack("<Q", 7)))
END = _cmd(ss.END, b"")
OFF = 17 + len(SUBVOL)        # where the second command starts


def _error(data: bytes):
    with pytest.raises(ss.BtrfsStreamError) as e:
        list(SendStreamReader(io.BytesIO(data)))
    assert e.value.exit_code == 1
    return e.value


def test_builder_matches_the_kernel_crc(streams):
    """The test's own encoder gives the CRC of a real kernel command (the SUBVOL)."""
    real = streams["v1 full"]
    length, cmd, crc = struct.unpack_from("<IHI", real, 17)
    assert _cmd(cmd, real[27:27 + length]) == real[17:27 + length]


def test_minimal_stream():
    cmds = _commands(_header() + SUBVOL + END)
    assert [c.name for c in cmds] == ["subvol", "end"]
    assert cmds[0].attrs == {"path": b"snap", "uuid": uuid.UUID(int=0), "ctransid": 7}
    assert cmds[1].offset == OFF


def test_bad_magic():
    e = _error(b"btrfs-strEAM\0\1\0\0\0" + SUBVOL)
    assert isinstance(e, ss.BtrfsBadMagic)
    assert str(e) == ("not a btrfs send stream: first bytes are b'btrfs-strEAM\\x00', not"
                      " b'btrfs-stream\\x00' (at record 0, byte offset 0); give the output of 'btrfs send'")


def test_short_header():
    e = _error(ss.MAGIC[:5])
    assert str(e).startswith("btrfs send stream ends early: 5 bytes, shorter than the 17-byte stream"
                             " header (at record 0, byte offset 0)")


def test_header_cut_in_its_version():
    e = _error(ss.MAGIC + b"\1\0")
    assert str(e).startswith("btrfs send stream ends early: 15 bytes, shorter than the 17-byte stream"
                             " header (at record 0, byte offset 0)")


def test_unknown_version():
    e = _error(_header(4) + SUBVOL + END)
    assert str(e) == ("unsupported btrfs send stream version: version 4, this reader knows 1, 2 and 3"
                      " (at record 0, byte offset 13); send it again with 'btrfs send --proto 2' (or 1)")


def test_truncated_command():
    e = _error((_header() + SUBVOL)[:-5])
    assert str(e).startswith("btrfs send stream ends early: command subvol cut off after 35 of 40 bytes"
                             " (at record 1, byte offset 17)")


def test_truncated_command_header():
    e = _error(_header() + SUBVOL + END[:4])
    assert "command header cut off after 4 of 10 bytes (at record 2, byte offset %d)" % OFF in str(e)


def test_no_end():
    e = _error(_header() + SUBVOL)
    assert isinstance(e, ss.BtrfsTruncatedStream)
    assert f"no END command after command 1 (at record 2, byte offset {OFF})" in str(e)


def test_crc_mismatch():
    bad = bytearray(SUBVOL)
    bad[-1] ^= 1
    e = _error(_header() + bytes(bad) + END)
    assert isinstance(e, ss.BtrfsChecksumMismatch)
    assert str(e).startswith("btrfs send stream checksum mismatch: command subvol has crc 0x")
    assert "(at record 1, byte offset 17)" in str(e)


def test_crc_of_a_real_stream_is_checked(streams):
    data = bytearray(streams["v2 full"])
    data[len(data) // 2] ^= 0x40
    assert isinstance(_error(bytes(data)), ss.BtrfsChecksumMismatch)


@pytest.mark.parametrize("version, cmd", [(1, ss.FALLOCATE), (2, ss.ENABLE_VERITY), (3, 27), (1, 0)])
def test_unknown_command(version, cmd):
    e = _error(_header(version) + SUBVOL + _cmd(cmd, b"") + END)
    assert str(e) == (f"malformed btrfs send command: unknown command {cmd} in a version {version} stream"
                      f" (at record 2, byte offset {OFF}); " + ss._RESEND)


def test_attribute_overruns_command():
    body = struct.pack("<HH", ss.A_PATH, 9) + b"abc"
    e = _error(_header() + SUBVOL + _cmd(ss.UNLINK, body) + END)
    assert str(e) == ("malformed btrfs send command: unlink: attribute path of 9 bytes overruns the command"
                      f" by 6 bytes (at record 2, byte offset {OFF + 10}); " + ss._RESEND)


def test_attribute_header_overruns_command():
    e = _error(_header() + SUBVOL + _cmd(ss.UNLINK, _tlv(ss.A_PATH, b"f") + b"\x0f\x00\x01") + END)
    assert "unlink: attribute header overruns the command (at record 2" in str(e)


def test_wrong_size_value_and_unknown_attribute():
    e = _error(_header() + SUBVOL + _cmd(ss.TRUNCATE, _tlv(ss.A_PATH, b"f") + _tlv(ss.A_SIZE, b"\0" * 4)) + END)
    assert "truncate: attribute size (u64) has 4 bytes (at record 2" in str(e)
    e = _error(_header() + SUBVOL + _cmd(ss.UNLINK, _tlv(ss.A_PATH, b"f") + _tlv(ss.A_COMPRESSION, b"\0" * 4)) + END)
    assert "unlink: unknown attribute 30 in a version 1 stream (at record 2" in str(e)
    e = _error(_header() + SUBVOL + _cmd(ss.UNLINK, _tlv(ss.A_PATH, b"f") + _tlv(ss.A_PATH, b"g")) + END)
    assert "unlink: attribute path given twice (at record 2" in str(e)


def test_missing_required_attribute():
    e = _error(_header() + SUBVOL + _cmd(ss.MKFILE, _tlv(ss.A_PATH, b"o257-5-0")) + END)
    assert str(e) == ("malformed btrfs send command: mkfile: required attribute ino missing"
                      f" (at record 2, byte offset {OFF}); " + ss._RESEND)


def test_v2_data_runs_to_the_end_of_its_command():
    body = (_tlv(ss.A_PATH, b"f") + _tlv(ss.A_FILE_OFFSET, struct.pack("<Q", 4096))
            + struct.pack("<H", ss.A_DATA) + b"D" * 70000)
    cmds = _commands(_header(2) + SUBVOL + _cmd(ss.WRITE, body) + END)
    assert cmds[1]["file_offset"] == 4096 and bytes(cmds[1]["data"]) == b"D" * 70000


def test_encoded_write_defaults_compression_and_encryption():
    body = (_tlv(ss.A_PATH, b"f") + b"".join(_tlv(a, struct.pack("<Q", v)) for a, v in (
        (ss.A_FILE_OFFSET, 0), (ss.A_UNENCODED_FILE_LEN, 170), (ss.A_UNENCODED_LEN, 170),
        (ss.A_UNENCODED_OFFSET, 0))) + struct.pack("<H", ss.A_DATA) + b"z" * 33)
    cmd = _commands(_header(2) + SUBVOL + _cmd(ss.ENCODED_WRITE, body) + END)[1]
    assert (cmd["compression"], cmd["encryption"], len(cmd["data"])) == (0, 0, 33)


def test_v3_enable_verity():
    body = (_tlv(ss.A_PATH, b"f") + _tlv(ss.A_VERITY_ALGORITHM, b"\x01")
            + _tlv(ss.A_VERITY_BLOCK_SIZE, struct.pack("<I", 4096)) + _tlv(ss.A_VERITY_SALT_DATA, b"salt"))
    cmd = _commands(_header(3) + SUBVOL + _cmd(ss.ENABLE_VERITY, body) + END)[1]
    assert (cmd.name, cmd["verity_algorithm"], cmd["verity_block_size"]) == ("enable_verity", 1, 4096)
    assert (bytes(cmd["verity_salt_data"]), bytes(cmd["verity_sig_data"])) == (b"salt", b"")
    e = _error(_header(2) + SUBVOL + _cmd(ss.ENABLE_VERITY, body) + END)
    assert "unknown command 26 in a version 2 stream" in str(e)


class _CountingReader(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.largest = 0

    def read(self, n=-1):
        self.largest = max(self.largest, n)
        return super().read(n)


@pytest.mark.parametrize("version, limit", [(1, 64 * 1024), (2, 144 * 1024)])
def test_oversized_command_refused_before_reading_it(version, limit):
    declared = limit - 10 + 1
    f = _CountingReader(_header(version) + SUBVOL + struct.pack("<IHI", declared, ss.WRITE, 0))
    with pytest.raises(ss.BtrfsCommandTooLarge) as e:
        list(SendStreamReader(f))
    assert str(e.value) == (f"btrfs send command too large: command 15 declares {limit + 1} bytes, the kernel"
                            f" sends at most {limit} in version {version} (at record 2, byte offset {OFF});"
                            " " + ss._RESEND)
    assert f.largest < 100   # nothing the size of the declared command was asked for


def test_largest_allowed_command_parses():
    body = _tlv(ss.A_PATH, b"f") + _tlv(ss.A_FILE_OFFSET, bytes(8)) + struct.pack("<H", ss.A_DATA)
    body += b"d" * (144 * 1024 - 10 - len(body))
    assert len(_commands(_header(2) + SUBVOL + _cmd(ss.WRITE, body) + END)) == 3


def test_second_stream_header_is_a_restart():
    e = _error(_header() + SUBVOL + _header() + SUBVOL + END)
    assert isinstance(e, ss.BtrfsStreamRestarted)
    assert str(e) == (f"btrfs send stream starts over: a second stream header where command 2 should start"
                      f" (at record 2, byte offset {OFF}); BTRFS_IOC_SEND restarts its stream when the"
                      " sender is stopped and continued (SIGSTOP/SIGCONT) or signalled; run btrfs send"
                      " again without stopping it")


def test_real_stream_restarted_midway(streams):
    real = streams["v1 full"]
    cut = _commands(real)[5].offset
    e = _error(real[:cut] + real)
    assert isinstance(e, ss.BtrfsStreamRestarted) and e.record == 6 and e.offset == cut


def test_trailing_bytes_after_end():
    e = _error(_header() + SUBVOL + END + b"\0")
    assert str(e) == ("trailing data after the btrfs send END command: bytes follow the END command"
                      f" (first byte 0x00) (at record 3, byte offset {OFF + 10}); " + ss._RESEND)


def test_two_concatenated_streams_are_one_too_many(streams):
    e = _error(streams["v1 inc"] + streams["v1 inc"])
    assert isinstance(e, ss.BtrfsTrailingData) and e.offset == len(streams["v1 inc"])
