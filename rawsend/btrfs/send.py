"""Drive BTRFS_IOC_SEND from Python and get back a stream that was checked whole.

    result = send_to_file(snapshot, out, parent=older, no_file_data=True)
    for cmd in send(snapshot, parent=older, no_file_data=True):   # parsed commands
        ...

This is what `btrfs send` does (btrfs-progs cmds/send.c): open the read-only
subvolume, call the ioctl with the write end of a pipe, and read the pipe on another
thread.  Here the ioctl runs on the thread and the caller's thread reads, parses
(rawsend.btrfs.sendstream) and copies every byte to `out`.

The kernel hazard this guards against: when the sending process is stopped and
continued (SIGSTOP/SIGCONT) or gets a signal with no handler, the ioctl can restart
its stream from the beginning and still return success, leaving a second stream
header (or a broken command) mid-stream; with a handler it fails with EINTR.  An
attempt whose stream fails any check (second header, CRC, bytes after END, no END)
or whose ioctl fails with EINTR is discarded and run once more from a fresh pipe
into an emptied `out`; a second failure raises SendFailed.  So `out` holds either
one whole stream the reader accepted, or the call raises.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import tempfile
import threading
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

from rawsend.btrfs.ioctl import _IOW, _IOWR, BTRFS_IOCTL_MAGIC, _64BIT, check_call, ioctl
from rawsend.btrfs.sendstream import BtrfsStreamError, SendCommand, SendStreamReader
from rawsend.errors import OutputError, SourceError
from rawsend.fsutil import enlarge_pipe

# -- ioctl layouts (linux/btrfs.h) -----------------------------------------------------


class SendArgs(ctypes.Structure):
    """struct btrfs_ioctl_send_args; parent_root and clone_sources are root ids."""

    _fields_ = [
        ("send_fd", ctypes.c_int64),
        ("clone_sources_count", ctypes.c_uint64),
        ("clone_sources", ctypes.POINTER(ctypes.c_uint64)),
        ("parent_root", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("version", ctypes.c_uint32),
        ("reserved", ctypes.c_uint8 * 28),
    ]


BTRFS_INO_LOOKUP_PATH_MAX = 4080


class InoLookupArgs(ctypes.Structure):
    """struct btrfs_ioctl_ino_lookup_args: treeid 0 means the tree of the fd's subvolume."""

    _fields_ = [
        ("treeid", ctypes.c_uint64),
        ("objectid", ctypes.c_uint64),
        ("name", ctypes.c_char * BTRFS_INO_LOOKUP_PATH_MAX),
    ]


BTRFS_IOC_SEND = _IOW(BTRFS_IOCTL_MAGIC, 38, ctypes.sizeof(SendArgs))
BTRFS_IOC_INO_LOOKUP = _IOWR(BTRFS_IOCTL_MAGIC, 18, ctypes.sizeof(InoLookupArgs))

if _64BIT:
    assert ctypes.sizeof(SendArgs) == 72
    assert BTRFS_IOC_SEND == 0x40489426
    assert ctypes.sizeof(InoLookupArgs) == 4096
    assert BTRFS_IOC_INO_LOOKUP == 0xD0009412

SEND_FLAG_NO_FILE_DATA = 0x1
SEND_FLAG_OMIT_STREAM_HEADER = 0x2
SEND_FLAG_OMIT_END_CMD = 0x4
SEND_FLAG_VERSION = 0x8
SEND_FLAG_COMPRESSED = 0x10

BTRFS_FIRST_FREE_OBJECTID = 256   # a subvolume's top directory

READ_BUFFER = 256 * 1024


class SendFailed(SourceError):
    """btrfs send failed: {detail}"""

    hint = "run it again and do not stop or signal the sending process while it runs"


@dataclass
class SendResult:
    version: int
    commands: int        # END included
    bytes: int           # stream length, header included
    attempts: int        # 1, or 2 when the first attempt was discarded


# -- root ids ----------------------------------------------------------------------------


def root_id(subvol) -> int:
    """The root (subvolume) id of a subvolume given as a path or an open fd, as
    btrfs-progs finds it: BTRFS_IOC_INO_LOOKUP of its top directory with treeid 0."""
    if isinstance(subvol, int) and not isinstance(subvol, bool):
        return _root_id_of_fd(subvol)
    fd = os.open(subvol, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _root_id_of_fd(fd)
    finally:
        os.close(fd)


def _root_id_of_fd(fd: int) -> int:
    args = InoLookupArgs(treeid=0, objectid=BTRFS_FIRST_FREE_OBJECTID)
    check_call(ioctl(fd, BTRFS_IOC_INO_LOOKUP, ctypes.addressof(args)), "BTRFS_IOC_INO_LOOKUP")
    return args.treeid


def _as_root_id(source) -> int:
    return source if isinstance(source, int) else root_id(source)


# -- one attempt ---------------------------------------------------------------------------


class _Attempt:
    """One BTRFS_IOC_SEND into a fresh pipe, the pipe read, checked and copied to `out`."""

    def __init__(self, subvol_fd: int, args: SendArgs):
        self.subvol_fd = subvol_fd
        self.args = args
        self.errno = 0

    def _ioctl(self, wfd: int) -> None:
        """Runs on the thread; closing wfd is what ends the reader's stream."""
        try:
            # When the reader gives up and closes its end, the kernel's write fails with EPIPE
            # and sends this thread SIGPIPE: blocked here, it cannot kill the process (whatever
            # the process's SIGPIPE disposition) and is discarded when the thread ends.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
            self.args.send_fd = wfd
            if ioctl(self.subvol_fd, BTRFS_IOC_SEND, ctypes.addressof(self.args)) < 0:
                self.errno = ctypes.get_errno()
        finally:
            os.close(wfd)

    def run(self, out: BinaryIO) -> tuple[int, int, int]:
        """(version, commands, bytes) of a stream that passed every check; raises
        BtrfsStreamError for a broken stream, OSError for a failed ioctl."""
        rfd, wfd = os.pipe()
        enlarge_pipe(wfd)
        thread = threading.Thread(target=self._ioctl, args=(wfd,), name="btrfs-send", daemon=True)
        pipe = os.fdopen(rfd, "rb", buffering=READ_BUFFER)
        tee = _Tee(pipe, out)
        try:
            thread.start()
            try:
                reader = SendStreamReader(tee)
                count = sum(1 for _ in reader)
            except BtrfsStreamError:
                # Stop the kernel at once (EPIPE) rather than read a restarted send to its end.
                pipe.close()
                thread.join()
                if self.errno not in (0, errno.EPIPE):
                    self._raise_errno()  # a failed ioctl explains a short stream better
                raise
            thread.join()
            self._raise_errno()
            return reader.version, count, tee.count
        finally:
            pipe.close()                 # an exception above: the ioctl gets EPIPE and returns
            thread.join()

    def _raise_errno(self) -> None:
        if self.errno:
            raise OSError(self.errno, os.strerror(self.errno))


class _Tee:
    """A file object that copies what is read from `src` to `dst`."""

    def __init__(self, src, dst):
        self.src, self.dst, self.count = src, dst, 0

    def read(self, n: int) -> bytes:
        data = self.src.read(n)
        if data:
            try:
                self.dst.write(data)
            except OSError as e:
                # not the ioctl's failure: keep it out of send_to_file's OSError handling
                raise OutputError(f"cannot write the send stream: {e.strerror}") from None
            self.count += len(data)
        return data


def _explain(err: OSError) -> str:
    reasons = {
        errno.EPERM: "the subvolume must be read-only and the caller root (CAP_SYS_ADMIN)",
        errno.ENOTTY: "not a btrfs subvolume",
        errno.EPROTO: "the kernel does not support this send stream version",
        errno.EINVAL: "the kernel refused the arguments (compressed data needs version 2)",
        errno.EAGAIN: "a deduplication runs on the subvolume",
    }
    extra = reasons.get(err.errno)
    return f"{os.strerror(err.errno)}" + (f" ({extra})" if extra else "")


# -- the API -------------------------------------------------------------------------------


def send_to_file(subvol, out: BinaryIO, *, parent=None, clone_sources: Sequence = (),
                 version: int = 2, compressed: bool = False, no_file_data: bool = False,
                 retries: int = 1) -> SendResult:
    """Write the send stream of read-only subvolume `subvol` (a path) to `out`, a seekable
    binary file, checked whole (see the module docstring).

    `parent` (a path or root id) makes it an incremental from that snapshot; like
    `btrfs send -p`, the parent is also a clone source.  `clone_sources` are further
    paths or root ids.  `version` is the stream protocol (0 = the kernel's highest);
    `compressed` sends compressed extents as ENCODED_WRITE (version >= 2);
    `no_file_data` sends UPDATE_EXTENT instead of file data.  Raises SendFailed (exit 3).
    """
    where = os.fsdecode(subvol)
    if compressed and version == 1:
        raise SendFailed("compressed data needs stream version 2 or later", path=where)
    try:
        fd = os.open(subvol, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise SendFailed(f"cannot open the subvolume: {e.strerror}", path=where) from None
    try:
        try:
            sources = [_as_root_id(s) for s in clone_sources]
            parent_root = _as_root_id(parent) if parent is not None else 0
        except OSError as e:
            raise SendFailed(f"cannot find the root id of a parent or clone source: {e.strerror}",
                             path=where) from None
        if parent_root and parent_root not in sources:
            sources.append(parent_root)
        array = (ctypes.c_uint64 * max(1, len(sources)))(*sources)
        flags = SEND_FLAG_VERSION
        flags |= SEND_FLAG_COMPRESSED if compressed else 0
        flags |= SEND_FLAG_NO_FILE_DATA if no_file_data else 0
        failures = []
        for attempt in range(1, retries + 2):
            args = SendArgs(clone_sources_count=len(sources), clone_sources=array,
                            parent_root=parent_root, flags=flags, version=version)
            out.seek(0)
            out.truncate()
            try:
                got_version, commands, size = _Attempt(fd, args).run(out)
            except BtrfsStreamError as e:
                failures.append(str(e))
                continue
            except OSError as e:
                if e.errno != errno.EINTR:
                    raise SendFailed(f"BTRFS_IOC_SEND: {_explain(e)}", path=where,
                                     hint="check the subvolume and the send options") from None
                failures.append("the ioctl was interrupted by a signal (EINTR)")
                continue
            out.flush()
            return SendResult(got_version, commands, size, attempt)
        out.seek(0)
        out.truncate()
        raise SendFailed(f"{len(failures)} attempts gave no whole stream; last: {failures[-1]}",
                         path=where)
    finally:
        os.close(fd)


def send(subvol, *, parent=None, clone_sources: Sequence = (), version: int = 2,
         compressed: bool = False, no_file_data: bool = False,
         spool_dir=None) -> Iterator[SendCommand]:
    """The parsed commands of `subvol`'s send stream (see send_to_file for the options).

    The stream is spooled to an anonymous temporary file in `spool_dir` and checked
    whole before the first command is yielded, so a consumer never acts on a stream
    the kernel restarted; budget the spool for the stream's size (small with
    `no_file_data`).
    """
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        send_to_file(subvol, spool, parent=parent, clone_sources=clone_sources, version=version,
                     compressed=compressed, no_file_data=no_file_data)
        spool.seek(0)
        yield from SendStreamReader(spool)
