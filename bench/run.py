"""rawsend against its peers, side by side, on one deterministic corpus.

Every case is a pipeline of real processes connected by ordinary pipes, as a
shell would run it.  For each run we record:

    wall   pipeline start -> last process exit, plus syncfs of the destination
           for cases that write files (so no case hides its writeback)
    cpu    user + sys of every process of the pipeline (os.wait4 rusage)
    rss    peak resident set of the largest process (ru_maxrss)

Each case runs --reps times (rounds interleave the cases, so a noisy moment
of the machine hits them all alike) and the median is reported.  The caches
are warm unless --cold (root only) drops them before each run.

    python bench/run.py [--scale S] [--reps N] [--only NAME,...] [--cold] [--no-btrfs]

The table goes to stdout and, with the machine description, to bench/results.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402  (bench/ is not a package)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = corpus.WORK
MiB = 1 << 20
PASSPHRASE = "pass:x"  # the peers' openssl key: the cost of the cipher, not the secret
TIME = "/usr/bin/time"   # GNU time: peak RSS of each stage


# -- measuring one pipeline ---------------------------------------------------------------------

@dataclass
class Sample:
    wall: float
    cpu: float
    rss_kib: int


class PipelineFailed(Exception):
    pass


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed", str(path))
    finally:
        os.close(fd)


def run_pipeline(stages: list[list[str]], stdout: str | None, sync: Path | None) -> Sample:
    """Run ``stages`` connected by pipes; the last writes to ``stdout`` (a path) or is discarded.

    Each stage runs under GNU time, which reports its peak RSS: a child
    forked straight from this Python process would inherit our own peak in
    ru_maxrss (Linux folds the pre-exec memory into it), time's is ~2 MiB.
    """
    procs, errs, rss_files = [], [], []
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL
    start = time.perf_counter()
    try:
        prev = None
        for i, argv in enumerate(stages):
            last = i == len(stages) - 1
            err = tempfile.TemporaryFile()
            rss_file = tempfile.NamedTemporaryFile("r", prefix="rss-")
            p = subprocess.Popen([TIME, "-f", "%M", "-o", rss_file.name, "--", *argv],
                                 stdin=prev.stdout if prev else subprocess.DEVNULL,
                                 stdout=out if last else subprocess.PIPE, stderr=err)
            if prev is not None:
                prev.stdout.close()  # only the next stage holds the read end
            procs.append(p)
            errs.append(err)
            rss_files.append(rss_file)
            prev = p
        cpu, failed = 0.0, []
        for p, argv, err in zip(procs, stages, errs):
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            cpu += ru.ru_utime + ru.ru_stime  # time's own share is about a millisecond
            if p.returncode != 0:
                err.seek(0)
                failed.append(f"{' '.join(argv)} exited {p.returncode}: "
                              f"{err.read().decode(errors='replace').strip()[-800:]}")
        if sync is not None:
            syncfs(sync)
        wall = time.perf_counter() - start
        rss = max(int(f.read().split()[-1]) for f in rss_files) if not failed else 0
    finally:
        if stdout:
            out.close()
        for f in errs + rss_files:
            f.close()
        for p in procs:
            if p.returncode is None:
                p.kill()
                p.wait()
    if failed:
        raise PipelineFailed("; ".join(failed))
    return Sample(wall, cpu, rss)


# -- cases -------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    group: str
    title: str                              # the command, as a reader would type it
    stages: list[list[str]] = field(default_factory=list)
    logical: int = 0                        # logical bytes the case moves
    files: int = 0                          # regular files it moves (for files/s), 0: not shown
    stdout: str | None = None               # where the last stage writes
    sync: Path | None = None                # a filesystem the case writes to: syncfs'd inside the timing
    peer: str | None = None                 # the case this one is compared with
    rawsend: bool = False
    skip: str | None = None                 # why it does not run
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    def median(self) -> dict | None:
        if not self.samples:
            return None
        wall = statistics.median(s.wall for s in self.samples)
        return dict(wall_s=wall, cpu_s=statistics.median(s.cpu for s in self.samples),
                    rss_mib=max(s.rss_kib for s in self.samples) / 1024,
                    mb_s=self.logical / 1e6 / wall if self.logical else None,
                    files_s=self.files / wall if self.files else None,
                    walls=[round(s.wall, 3) for s in self.samples])


def _rm(path: Path) -> None:
    if path.is_symlink() or path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def _tiny_tree(root: Path) -> Path:
    src = root / "tiny-src"
    if not src.exists():
        (src / "d").mkdir(parents=True)
        (src / "d" / "a.txt").write_bytes(b"hello rawsend\n" * 1000)
    return src


def _probe(cmd: str, what: str) -> str | None:
    """Run a small shell pipeline; None when it works, else why it does not."""
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    if p.returncode == 0:
        return None
    text = (p.stderr or p.stdout).strip().splitlines()
    return f"{what} does not work yet: {text[-1] if text else f'exit {p.returncode}'}"


def probe_encrypt(rawsend: str, tmp: Path) -> tuple[str | None, Path]:
    key = tmp / "bench.key"
    src = _tiny_tree(tmp)
    _rm(key)
    _rm(tmp / "probe-enc")
    why = _probe(f"{rawsend} keygen -o {key} && {rawsend} send --encrypt {key} {src} | "
                 f"{rawsend} receive --key-file {key} {tmp}/probe-enc && cmp {src}/d/a.txt {tmp}/probe-enc/d/a.txt",
                 "send --encrypt | receive --key-file")
    _rm(tmp / "probe-enc")
    return why, key


def probe_store(rawsend: str, tmp: Path) -> str | None:
    src = _tiny_tree(tmp)
    for p in ("probe-store", "probe-out"):
        _rm(tmp / p)
    why = _probe(f"{rawsend} send {src} | {rawsend} receive --store {tmp}/probe-store && "
                 f"{rawsend} send {tmp}/probe-store | {rawsend} receive {tmp}/probe-out && "
                 f"cmp {src}/d/a.txt {tmp}/probe-out/d/a.txt", "send | receive --store; send STORE")
    for p in ("probe-store", "probe-out"):
        _rm(tmp / p)
    return why


def ensure_tools() -> None:
    """zstd and openssl for the peers; installed with apt-get when missing and we are root."""
    missing = [t for t in ("zstd", "openssl", "tar") if shutil.which(t) is None]
    if not os.access(TIME, os.X_OK):
        missing.append("time")
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False)


def leave_dirty(path: Path, size: int) -> None:
    """Write ``size`` bytes to ``path`` and leave them in the page cache, dirty, as a program
    that has not synced yet would (well below the kernel's dirty limits, so none is written
    back before the case runs)."""
    chunk = random.Random(7).randbytes(MiB)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(chunk)


def tree_cases(rawsend: str, src: Path, m: dict, small: Path, ms: dict, huge: Path, mh: dict,
               stream: Path, dest: "Destination", enc_skip: str | None, key: Path, store_skip: str | None,
               relay_store: Path, many: tuple[Path, int, str | None],
               deep: tuple[Path, int, str | None], small_stream: Path) -> list[Case]:
    D = dest.path
    dst, store = D / "tree", D / "store"
    L, F = m["logical_bytes"], m["files"]
    no_tool = {t: f"{t} is not installed" for t in ("zstd", "openssl") if shutil.which(t) is None}
    peer_tool_skip = no_tool.get("zstd") or no_tool.get("openssl")
    zstd_enc = [["zstd", "-q", "-1", "-T2"], ["openssl", "enc", "-aes-256-ctr", "-pbkdf2", "-pass", PASSPHRASE]]
    unenc_unzstd = [["openssl", "enc", "-d", "-aes-256-ctr", "-pbkdf2", "-pass", PASSPHRASE], ["zstd", "-q", "-d"]]

    def fresh() -> None:
        dest.fresh()

    def fresh_dir() -> None:  # tar -x wants its directory to exist
        dest.fresh()
        dst.mkdir()

    dirty = max(64 << 20, int(L * 0.5) >> 20 << 20)  # rs-recv-dirty: half the corpus, not synced by the bench
    w = dict(before=fresh, sync=D)         # every case that writes gets a fresh destination
    wt = dict(before=fresh_dir, sync=D)
    cases = [
        # the pipe limit: the same stream, moved by cat
        Case("cat-file", "pipe", "cat STREAM | cat > FILE", [["cat", str(stream)], ["cat"]], L,
             stdout=str(D / "stream.copy"), **w),
        Case("cat-null", "pipe", "cat STREAM | cat > /dev/null", [["cat", str(stream)], ["cat"]], L),
        # whole tree into a directory
        Case("rs-zstd", "tree", "rawsend send | rawsend receive DIR", [[rawsend, "send", str(src)],
             [rawsend, "receive", str(dst)]], L, F, peer="tar-tar", rawsend=True, **w),
        Case("rs-lz4", "tree", "rawsend send --compress lz4 | rawsend receive DIR",
             [[rawsend, "send", "--compress", "lz4", str(src)], [rawsend, "receive", str(dst)]], L, F,
             peer="tar-tar", rawsend=True, **w),
        Case("rs-recv", "tree", "cat STREAM | rawsend receive DIR", [["cat", str(stream)],
             [rawsend, "receive", str(dst)]], L, F, peer="tar-tar", rawsend=True, **w),
        # another program's dirty data on the same filesystem: receive makes durable only its own
        Case("rs-recv-dirty", "tree", f"cat STREAM | rawsend receive DIR (another program left "
             f"{dirty >> 20} MiB dirty there)", [["cat", str(stream)], [rawsend, "receive", str(dst)]], L, F,
             peer="rs-recv", rawsend=True, before=lambda: (fresh(), leave_dirty(D / "other.bin", dirty))),
        Case("rs-send", "tree", "rawsend send > /dev/null", [[rawsend, "send", str(src)]], L, F,
             rawsend=True),
        Case("tar-tar", "tree", "tar -c | tar -x", [["tar", "-C", str(src), "-cf", "-", "."],
             ["tar", "-C", str(dst), "-xf", "-"]], L, F, **wt),
        # encrypted
        Case("rs-enc-send", "encrypted", "rawsend send --encrypt --level 1 > /dev/null",
             [[rawsend, "send", "--encrypt", str(key), "--level", "1", str(src)]], L, F,
             peer="tar-zstd-enc", rawsend=True, skip=enc_skip),
        Case("tar-zstd-enc", "encrypted", "tar -c | zstd -1 -T2 | openssl enc > /dev/null",
             [["tar", "-C", str(src), "-cf", "-", "."], *zstd_enc], L, F, skip=peer_tool_skip),
        Case("rs-enc", "encrypted", "rawsend send --encrypt --level 1 | rawsend receive --key-file DIR",
             [[rawsend, "send", "--encrypt", str(key), "--level", "1", str(src)],
              [rawsend, "receive", "--key-file", str(key), str(dst)]], L, F,
             peer="tar-zstd-enc-rt", rawsend=True, skip=enc_skip, **w),
        Case("tar-zstd-enc-rt", "encrypted", "tar -c | zstd | openssl enc | openssl enc -d | zstd -d | tar -x",
             [["tar", "-C", str(src), "-cf", "-", "."], *zstd_enc, *unenc_unzstd,
              ["tar", "-C", str(dst), "-xf", "-"]], L, F, skip=peer_tool_skip, **wt),
        # store (a relay: keeps payloads verbatim)
        Case("rs-store", "store", "rawsend send | rawsend receive --store", [[rawsend, "send", str(src)],
             [rawsend, "receive", "--store", str(store)]], L, F, peer="cat-file",
             rawsend=True, skip=store_skip, **w),
        Case("rs-store-recv", "store", "cat STREAM | rawsend receive --store", [["cat", str(stream)],
             [rawsend, "receive", "--store", str(store)]], L, F, peer="cat-file",
             rawsend=True, skip=store_skip, **w),
        Case("rs-store-send", "store", "rawsend send STORE > /dev/null", [[rawsend, "send", str(relay_store)]],
             L, F, peer="cat-null", rawsend=True, skip=store_skip),
        # many small files
        Case("rs-small", "small files", f"rawsend send | rawsend receive DIR ({ms['files']} files)",
             [[rawsend, "send", str(small)], [rawsend, "receive", str(dst)]], ms["logical_bytes"], ms["files"],
             peer="tar-small", rawsend=True, **w),
        Case("tar-small", "small files", f"tar -c | tar -x ({ms['files']} files)",
             [["tar", "-C", str(small), "-cf", "-", "."], ["tar", "-C", str(dst), "-xf", "-"]],
             ms["logical_bytes"], ms["files"], **wt),
        # bounded memory: one multi-GiB sparse file with data spread over it
        Case("rs-huge", "memory", f"rawsend send | rawsend receive DIR (one {mh['logical_bytes'] / 2**30:.0f} GiB "
             f"sparse file, {mh['data_bytes'] / 2**20:.0f} MiB data)",
             [[rawsend, "send", str(huge)], [rawsend, "receive", str(dst)]], mh["logical_bytes"], 1,
             peer="rs-zstd", rawsend=True, **w),
        # what does grow: state kept per file (names for hard links and errors, the checker's inodes)
        Case("rs-files", "memory", f"cat STREAM | rawsend receive DIR ({many[1]} files of 16 bytes)",
             [["cat", str(many[0])], [rawsend, "receive", str(dst)]], many[1] * 16, many[1],
             peer="rs-small", rawsend=True, skip=many[2], **w),
        # the directory fd cache under the worst order: every file in the other deep directory
        Case("rs-deep", "small files", f"cat STREAM | rawsend receive DIR ({deep[1]} files alternating between "
             f"two {DEEP_LEVELS}-deep dirs)", [["cat", str(deep[0])], [rawsend, "receive", str(dst)]],
             0, deep[1], rawsend=True, skip=deep[2], **w),
        # start-up: a command whose work is small, so that interpreter start and imports are most of it
        Case("rs-verify-4m", "start-up", "rawsend verify STREAM (a 4 MiB stream of 8 files)",
             [[rawsend, "verify", str(small_stream)]], VERIFY_BYTES, VERIFY_FILES, rawsend=True),
    ]
    return cases


VERIFY_FILES, VERIFY_BYTES = 8, 4 * MiB


def small_stream(rawsend: str, tmp: Path) -> Path:
    """A 4 MiB stream (8 files of incompressible bytes) for the start-up row."""
    src = tmp / "verify-src"
    src.mkdir()
    rng = random.Random(4)
    for i in range(VERIFY_FILES):
        (src / f"f{i}").write_bytes(rng.randbytes(VERIFY_BYTES // VERIFY_FILES))
    path = tmp / "verify-4m.rs"
    subprocess.run([rawsend, "send", "-o", str(path), str(src)], check=True, stderr=subprocess.DEVNULL)
    return path


def compile_package() -> None:
    """Bytecode for rawsend's modules, as an installed package has it: an editable install under
    PYTHONDONTWRITEBYTECODE would otherwise compile every module in every process of every row."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "rawsend")], check=False,
                   stdout=subprocess.DEVNULL)


# -- incremental sends: send --state on the corpus with about 1 % of it changed -------------------

INC_DIR_FILES = 1000   # files of the directory that is renamed
INC_DELETED = 200
INC_ATTRS = 100        # files chmod'ed, and files given an xattr


@dataclass
class Incremental:
    """A copy of the corpus (plus a directory of INC_DIR_FILES files), its STATE after a full send,
    then about 1 % of it changed.  The cases send it again: full (plain and tracked) and incremental."""

    root: Path
    skip: str | None = None
    files: int = 0
    changed: list[str] = field(default_factory=list)
    base_state_bytes: int = 0

    @property
    def tree(self) -> Path:
        return self.root / "src"

    def setup(self, rawsend: str, src: Path) -> None:
        _rm(self.root)
        self.tree.mkdir(parents=True)
        subprocess.run(["cp", "-a", f"{src}/.", str(self.tree)], check=True)
        inbox = self.tree / "inbox"
        inbox.mkdir()
        for i in range(INC_DIR_FILES):
            (inbox / f"msg-{i:04d}.eml").write_bytes(b"Subject: %d\n\n" % i + b"body line\n" * (i % 50))
        self.files = corpus.measure(self.tree)["files"]
        time.sleep(2.1)  # past the race guard: what was just copied is not re-read as racy next time
        state = self.root / "STATE.base"
        subprocess.run([rawsend, "send", "--state", str(state), "-o", str(self.root / "first.rs"), str(self.tree)],
                       check=True, stderr=subprocess.DEVNULL)
        self.base_state_bytes = state.stat().st_size
        self._change(random.Random(12))
        # the receiver's streams: the changed tree in full, and the incremental the apply case applies
        subprocess.run([rawsend, "send", "-o", str(self.full_stream), str(self.tree)], check=True,
                       stderr=subprocess.DEVNULL)
        shutil.copy2(state, self.root / "STATE.apply")
        subprocess.run([rawsend, "send", "--state", str(self.root / "STATE.apply"), "-o", str(self.inc_stream),
                        str(self.tree)], check=True, stderr=subprocess.DEVNULL)

    @property
    def full_stream(self) -> Path:
        return self.root / "now-full.rs"

    @property
    def inc_stream(self) -> Path:
        return self.root / "now-inc.rs"

    def _change(self, rng: random.Random) -> None:
        self.changed = change_one_percent(self.tree, rng, "inbox")

    def reset_state(self) -> None:
        shutil.copy2(self.root / "STATE.base", self.root / "STATE")  # keeps its mode 0600

    def drop_state(self) -> None:
        for name in ("STATE.full",):
            if (self.root / name).exists():
                (self.root / name).unlink()

    def figures(self) -> dict:
        """Stream sizes and STATE's growth, from the files the cases left."""
        full = (self.root / "full.rs").stat().st_size
        inc = (self.root / "inc.rs").stat().st_size
        after = (self.root / "STATE").stat().st_size
        return dict(files=self.files, changes=self.changed, full_stream_bytes=full, incremental_stream_bytes=inc,
                    size_ratio=inc / full, state_first_stream_bytes_per_file=self.base_state_bytes / self.files,
                    state_growth_bytes_per_file=(after - self.base_state_bytes) / self.files)


def incremental_cases(rawsend: str, inc: Incremental, m: dict, dest: "Destination | None") -> list[Case]:
    t, r = str(inc.tree), inc.root
    L, F = m["logical_bytes"], m["files"]
    dst = dest.path / "tree" if dest else Path("DIR")
    no_dest = None if dest else "no destination yet"

    def fresh() -> None:
        dest.fresh()

    def holding_base() -> None:  # DEST holds the base: received from the first stream, synced, outside the timing
        dest.fresh()
        with open(r / "first.rs", "rb") as f:
            subprocess.run([rawsend, "receive", str(dst)], stdin=f, check=True, stderr=subprocess.DEVNULL)
        syncfs(dest.path)

    return [
        Case("rs-inc-plain", "incremental", "rawsend send > FILE (the changed tree, full)",
             [[rawsend, "send", t]], L, F, stdout=str(r / "full.rs"), rawsend=True, skip=inc.skip),
        Case("rs-inc-full", "incremental", "rawsend send --state NEW > FILE (full, tracked)",
             [[rawsend, "send", "--state", str(r / "STATE.full"), t]], L, F, stdout=str(r / "full-tracked.rs"),
             before=inc.drop_state, peer="rs-inc-plain", rawsend=True, skip=inc.skip),
        Case("rs-inc", "incremental", "rawsend send --state STATE > FILE (about 1 % changed)",
             [[rawsend, "send", "--state", str(r / "STATE"), t]], L, F, stdout=str(r / "inc.rs"),
             before=inc.reset_state, peer="rs-inc-plain", rawsend=True, skip=inc.skip),
        Case("rs-inc-recv", "incremental", "cat FULL | rawsend receive DIR (the changed tree, full)",
             [["cat", str(inc.full_stream)], [rawsend, "receive", str(dst)]], L, F, sync=dest and dest.path,
             before=fresh, rawsend=True, skip=inc.skip or no_dest),
        Case("rs-inc-apply", "incremental", "cat INCREMENTAL | rawsend receive DIR (DIR holds the base)",
             [["cat", str(inc.inc_stream)], [rawsend, "receive", str(dst)]], L, F, sync=dest and dest.path,
             before=holding_base, peer="rs-inc-recv", rawsend=True, skip=inc.skip or no_dest),
    ]


INCREMENTAL: dict = {}  # Incremental.figures(), once the cases ran


def change_one_percent(t: Path, rng: random.Random, moved: str) -> list[str]:
    """About 1 % of the corpus tree ``t`` changed: overwrites, appends, the directory ``moved`` renamed,
    deletes, chmods and xattrs; returns what was done, for the report."""
    blobs = sorted((p for p in (t / "random").iterdir()), key=lambda p: -p.stat().st_size)[:4]
    for p in blobs:  # 4 KiB overwrites inside the largest files
        size = p.stat().st_size
        fd = os.open(p, os.O_WRONLY)
        for _ in range(4):
            os.pwrite(fd, rng.randbytes(4096), rng.randrange(0, max(1, size - 4096)))
        os.close(fd)
    logs = sorted((t / "logs").iterdir())[:3]
    total = sum(p.stat().st_size for p in (t / "logs").iterdir())
    for p in logs:  # appended logs: together 1 % of all logs
        with open(p, "ab") as f:
            f.write(b"".join(b"10.0.0.%d - - [03/Dec/2026] \"GET /x/%d HTTP/1.1\" 200 512\n"
                             % (i % 250, i) for i in range(total // 100 // len(logs) // 52)))
    os.rename(t / moved, t / f"{moved}-2026")
    moved_files = sum(1 for _ in (t / f"{moved}-2026").rglob("*"))
    small = sorted(p for d in sorted((t / "small").iterdir()) for p in d.iterdir())
    picked = rng.sample(small, INC_DELETED + 2 * INC_ATTRS)
    for p in picked[:INC_DELETED]:
        p.unlink()
    for p in picked[INC_DELETED:INC_DELETED + INC_ATTRS]:
        p.chmod(0o600)
    for p in picked[INC_DELETED + INC_ATTRS:]:
        os.setxattr(p, "user.tag", b"reviewed")
    return [f"{len(blobs) * 4} 4 KiB overwrites in {len(blobs)} files", f"{len(logs)} logs appended",
            f"a directory of {moved_files} entries renamed", f"{INC_DELETED} files deleted",
            f"{INC_ATTRS} chmods", f"{INC_ATTRS} xattrs"]


DEEP_LEVELS = 500


def deep_dirs_stream(path: Path, n: int) -> str | None:
    """Two chains of DEEP_LEVELS directories, then ``n`` empty files alternating between their tips."""
    try:
        from rawsend.pipeline import send
        from rawsend.stream.records import Compression, Create, RecordType
        from rawsend.stream.writer import fd_writer
    except ImportError as e:
        return f"rawsend is not importable here ({e})"

    def items():
        yield Create(RecordType.MKDIR, 1, 0, b"", 0o40755, 0, 0, 0, 0, 0, b"")
        tips, file_id = [], 2
        for top in (b"a", b"b"):
            parent = 1
            for level in range(DEEP_LEVELS):
                yield Create(RecordType.MKDIR, file_id, parent, top if level == 0 else b"d%d" % level,
                             0o40755, 0, 0, 0, 0, 0, b"")
                parent, file_id = file_id, file_id + 1
            tips.append(parent)
        for i in range(n):
            yield Create(RecordType.MKFILE, file_id, tips[i % 2], b"f%07d" % i, 0o100644, 0, 0, 0, 0, 0, b"")
            file_id += 1

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        send(items(), fd_writer(fd), compression=Compression.NONE, threads=1, stream_id=bytes(16), created_ns=0)
    finally:
        os.close(fd)
    return None


def many_files_stream(path: Path, n: int) -> str | None:
    """A stream of ``n`` 16-byte files in directories of 1000, made with rawsend's library."""
    try:
        from rawsend.pipeline import send
        from rawsend.sources.tree import DataChunk
        from rawsend.stream.records import Compression, Create, RecordType
        from rawsend.stream.writer import fd_writer
    except ImportError as e:
        return f"rawsend is not importable here ({e})"

    def items():
        yield Create(RecordType.MKDIR, 1, 0, b"", 0o40755, 0, 0, 0, 0, 0, b"")
        file_id = 2
        for d in range((n + 999) // 1000):
            dir_id, file_id = file_id, file_id + 1
            yield Create(RecordType.MKDIR, dir_id, 1, b"d%05d" % d, 0o40755, 0, 0, 0, 0, 0, b"")
            for i in range(min(1000, n - d * 1000)):
                yield Create(RecordType.MKFILE, file_id, dir_id, b"f%07d" % i, 0o100644, 0, 0, 0, 0, 16, b"")
                yield DataChunk(file_id, 0, b"%016d" % file_id)
                file_id += 1

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        send(items(), fd_writer(fd), compression=Compression.NONE, threads=1, stream_id=bytes(16), created_ns=0)
    finally:
        os.close(fd)
    return None


def fill_store(rawsend: str, stream: Path, store: Path) -> None:
    with open(stream, "rb") as f:
        subprocess.run([rawsend, "receive", "--store", str(store)], stdin=f, check=True,
                       stderr=subprocess.DEVNULL)


# -- btrfs loop images ---------------------------------------------------------------------------

def btrfs_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "not root (loop mounts need root)"
    for tool in ("mkfs.btrfs", "btrfs", "losetup"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install btrfs-progs)"
    return None


class LoopFs:
    """A sparse image on a loop device (direct I/O: no second page-cache copy), formatted and mounted."""

    def __init__(self, img: Path, size: int, mkfs: list[str], options: str = ""):
        self.img, self.size, self.mkfs, self.options = img, size, mkfs, options
        self.mnt = img.with_suffix(".mnt")
        self.dev: str | None = None

    def __enter__(self) -> Path:
        self._clean()
        with open(self.img, "wb") as f:
            f.truncate(self.size)
        self.dev = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", str(self.img)],
                                  check=True, capture_output=True, text=True).stdout.strip()
        self.mnt.mkdir(exist_ok=True)
        self.format()
        return self.mnt

    def format(self) -> None:
        """A new, empty filesystem at the mount point."""
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", str(self.mnt)], check=True)
        subprocess.run([*self.mkfs, self.dev], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["mount", *(["-o", self.options] if self.options else []), self.dev, str(self.mnt)],
                       check=True)

    def __exit__(self, *exc) -> None:
        if self.dev is not None:
            subprocess.run(["umount", str(self.mnt)], check=False, stderr=subprocess.DEVNULL)
            subprocess.run(["losetup", "-d", self.dev], check=False)
            self.dev = None
        self._clean()

    def _clean(self) -> None:
        if self.mnt.exists() and os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], check=False)
        if self.mnt.exists():
            self.mnt.rmdir()
        self.img.unlink(missing_ok=True)


MKFS_BTRFS = ["mkfs.btrfs", "-q", "-f"]
# inode tables and journal written now, not by a background thread during the runs
MKFS_EXT4 = ["mkfs.ext4", "-q", "-F", "-i", "8192", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"]


class Destination:
    """Where the tree cases write: a new ext4 for every run when root, else a directory in bench/work.

    A new filesystem each run matters: ext4 skips inodes freed in the last
    minutes when it allocates (recently_deleted), so creating 20,000 files
    right after deleting the previous run's costs ~200 us each instead of ~8.
    """

    def __init__(self, work: Path, size: int):
        self.loop = None
        if os.geteuid() == 0 and shutil.which("mkfs.ext4") and shutil.which("losetup"):
            self.loop = LoopFs(work / "dst-ext4.img", size, MKFS_EXT4)
            self.path = self.loop.__enter__()
            self.kind = "a new ext4 (loop, direct I/O) for every run"
        else:
            self.path = work / "dst"
            self.path.mkdir(parents=True, exist_ok=True)
            self.kind = f"a directory in {work} (not root: no loop mounts; ext4 slows creates after deletes)"

    def fresh(self) -> None:
        if self.loop is not None:
            self.loop.format()
        else:
            for p in list(self.path.iterdir()):
                _rm(p)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.__exit__()
            self.loop = None


def btrfs_cases(rawsend: str, snap: Path, dst: Path, m: dict, native: bool) -> list[Case]:
    L, F = m["logical_bytes"], m["files"]
    how = "ENCODED_READ/ENCODED_WRITE" if native else "read and written as plain files"

    def drop_received() -> None:
        if (dst / "snap").exists():
            subprocess.run(["btrfs", "-q", "subvolume", "delete", "-c", str(dst / "snap")], check=True)
        _rm(dst / "rs")

    return [
        Case("bt-rs", "btrfs", f"rawsend send SNAP | rawsend receive DIR ({how})",
             [[rawsend, "send", str(snap)], [rawsend, "receive", str(dst / "rs")]], L, F, sync=dst,
             peer="bt-send", rawsend=True, before=drop_received, after=drop_received),
        Case("bt-send", "btrfs", "btrfs send --proto 2 --compressed-data SNAP | btrfs receive",
             [["btrfs", "-q", "send", "--proto", "2", "--compressed-data", str(snap)],
              ["btrfs", "-q", "receive", str(dst)]], L, F, sync=dst, before=drop_received, after=drop_received),
        Case("bt-rs-send", "btrfs", f"rawsend send SNAP > /dev/null ({how})", [[rawsend, "send", str(snap)]],
             L, F, peer="bt-send-null", rawsend=True),
        Case("bt-send-null", "btrfs", "btrfs send --proto 2 --compressed-data SNAP > /dev/null",
             [["btrfs", "-q", "send", "--proto", "2", "--compressed-data", str(snap)]], L, F),
    ]


def btrfs_incremental_cases(rawsend: str, pair: "BtrfsPair", work: Path, m: dict) -> list[Case]:
    """snap2 is snap with about 1 % changed: the kernel's diff through rawsend (send --state -p, the
    base received from a tracked full stream) against btrfs send -p | btrfs receive (the base
    received as a subvolume); each DEST holds the base before every run, outside the timing."""
    snap, snap2, dst = pair.snap, pair.snap2, pair.dst
    L, F = m["logical_bytes"], m["files"]
    rs_dest, bt_dest = dst / "inc-rs" / "tree", dst / "inc-bt"

    def rs_base() -> None:
        if not (work / "full.rs").exists():
            work.mkdir(parents=True, exist_ok=True)
            subprocess.run([rawsend, "send", "--state", str(work / "STATE.base"), "-o", str(work / "full.rs"),
                            str(snap)], check=True, stderr=subprocess.DEVNULL)
        shutil.copy2(work / "STATE.base", work / "STATE")
        _rm(rs_dest.parent)
        rs_dest.parent.mkdir(parents=True)
        with open(work / "full.rs", "rb") as f:
            subprocess.run([rawsend, "receive", str(rs_dest)], stdin=f, check=True, stderr=subprocess.DEVNULL)
        syncfs(dst)

    def bt_base() -> None:
        if not (bt_dest / "snap").exists():
            bt_dest.mkdir(parents=True, exist_ok=True)
            send = subprocess.Popen(["btrfs", "-q", "send", str(snap)], stdout=subprocess.PIPE)
            subprocess.run(["btrfs", "-q", "receive", str(bt_dest)], stdin=send.stdout, check=True)
            send.wait()
        if (bt_dest / "snap2").exists():
            subprocess.run(["btrfs", "-q", "subvolume", "delete", "-c", str(bt_dest / "snap2")], check=True)
        syncfs(dst)

    return [
        Case("rs-bt-inc", "btrfs", "rawsend send --state STATE -p SNAP SNAP2 | rawsend receive DIR (about 1 % changed)",
             [[rawsend, "send", "--state", str(work / "STATE"), "-p", str(snap), str(snap2)],
              [rawsend, "receive", str(rs_dest)]], L, F, sync=dst, peer="bt-inc", rawsend=True, before=rs_base),
        Case("bt-inc", "btrfs", "btrfs send -p SNAP SNAP2 | btrfs receive (about 1 % changed)",
             [["btrfs", "-q", "send", "-p", str(snap), str(snap2)], ["btrfs", "-q", "receive", str(bt_dest)]],
             L, F, sync=dst, before=bt_base),
    ]


# -- running and reporting ---------------------------------------------------------------------

def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_case(case: Case, cold: bool) -> None:
    if case.before:
        case.before()
    if cold:
        drop_caches()
    try:
        case.samples.append(run_pipeline(case.stages, case.stdout, case.sync))
    except PipelineFailed as e:
        case.error = str(e)
    finally:
        if case.after:
            case.after()


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(WORK)], capture_output=True,
                        text=True).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return dict(cores=os.cpu_count(), cpu=cpu, kernel=platform.release(), memory_gib=round(mem / 2**30, 1),
                filesystem=fs, python=platform.python_version(),
                date=time.strftime("%Y-%m-%d %H:%M", time.localtime()))


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def ratios(case: Case, by_name: dict[str, Case]) -> dict | None:
    peer = by_name.get(case.peer) if case.peer else None
    a, b = case.median(), peer.median() if peer else None
    if not a or not b:
        return None
    return dict(peer=peer.name, speed=b["wall_s"] / a["wall_s"], cpu=a["cpu_s"] / b["cpu_s"] if b["cpu_s"] else None,
                rss=a["rss_mib"] / b["rss_mib"] if b["rss_mib"] else None)


def targets(by_name: dict[str, Case], peak_rss: float | None) -> list[dict]:
    def speed(a: str, b: str):
        ca, cb = by_name.get(a), by_name.get(b)
        ma, mb = (ca.median() if ca else None), (cb.median() if cb else None)
        if not ma or not mb:
            why = next((c.skip or c.error for c in (ca, cb) if c and (c.skip or c.error)), "not run")
            return None, why
        return mb["wall_s"] / ma["wall_s"], None

    out = []

    def add(what: str, value, goal: float, why: str | None, unit: str = "x", higher_is_better: bool = True):
        met = None if value is None else (value >= goal if higher_is_better else value <= goal)
        out.append(dict(target=what, value=None if value is None else round(value, 3), goal=goal, unit=unit,
                        met=met, note=why))

    v, why = speed("rs-store-recv", "cat-file")
    add("receive --store >= 0.8 x cat to a file (cat STREAM | receive --store vs cat | cat > FILE)", v, 0.8, why)
    v, why = speed("bt-rs", "bt-send")
    add("btrfs->btrfs wall <= 0.8 x btrfs send|receive (rawsend wall / btrfs wall)",
        None if v is None else 1 / v, 0.8, why, higher_is_better=False)
    v, why = speed("rs-bt-inc", "bt-inc")
    add("btrfs incremental (about 1 % changed) wall <= 1.0 x btrfs send -p | btrfs receive",
        None if v is None else 1 / v, 1.0, why, higher_is_better=False)
    v, why = speed("rs-enc-send", "tar-zstd-enc")
    add("send --encrypt (zstd 1, AES-256-GCM) >= 1.0 x tar | zstd -1 -T2 | openssl", v, 1.0, why)
    v, why = speed("rs-small", "tar-small")
    add("small files send|receive >= 1.0 x tar -c | tar -x (files/s)", v, 1.0, why)
    add("peak RSS of every rawsend process <= 256 MiB", peak_rss, 256, None if peak_rss else "not run",
        unit="MiB", higher_is_better=False)
    inc = INCREMENTAL or {}
    why = None if inc else "not run"
    add("incremental stream <= 3 % of the full stream (about 1 % changed)",
        inc.get("size_ratio") and 100 * inc["size_ratio"], 3, why, unit="%", higher_is_better=False)
    c = by_name.get("rs-verify-4m")
    med = c.median() if c else None
    add("rawsend verify of a 4 MiB stream, wall <= 0.12 s", med and med["wall_s"], 0.12,
        None if med else (c and (c.skip or c.error)) or "not run", unit="s", higher_is_better=False)
    v, why = speed("rs-inc", "rs-inc-plain")
    add("incremental send wall <= 15 % of the full send's (send --state vs send)",
        None if v is None else 100 / v, 15, why, unit="%", higher_is_better=False)
    v, why = speed("rs-inc-apply", "rs-inc-recv")
    add("incremental receive (apply) wall <= 15 % of the full receive's (receive into DIR holding the base"
        " vs into an empty one)", None if v is None else 100 / v, 15, why, unit="%", higher_is_better=False)
    add("STATE bytes per file per kept stream <= 200 (the first stream's; each later one adds"
        f" {inc['state_growth_bytes_per_file']:.1f})" if inc else "STATE bytes per file per kept stream <= 200",
        inc.get("state_first_stream_bytes_per_file"), 200, None if inc else "not run", unit="B",
        higher_is_better=False)
    return out


def report(cases: list[Case], info: dict, args) -> dict:
    by_name = {c.name: c for c in cases}
    rows = []
    print(f"\nrawsend bench: scale {args.scale:g}, {args.reps} runs each, median; "
          f"{'cold' if args.cold else 'warm'} caches")
    print(f"machine: {info['cores']} cores, {info['cpu']}, Linux {info['kernel']}, "
          f"{info['memory_gib']} GiB RAM, corpus on {info['filesystem']}; Python {info['python']}")
    print(f"tree cases write into {info['destination']}\n")
    head = f"{'case':<16} {'wall s':>7} {'MB/s':>7} {'files/s':>8} {'CPU s':>6} {'RSS MiB':>7}  {'vs peer':<28} command"
    print(head)
    print("-" * len(head))
    group = None
    peak_rss = None
    for c in cases:
        if c.group != group:
            group = c.group
            print(f"[{group}]")
        med = c.median()
        r = ratios(c, by_name)
        row = dict(name=c.name, group=c.group, command=c.title, logical_bytes=c.logical, files=c.files,
                   skipped=c.skip, error=c.error, **(med or {}), vs_peer=r)
        rows.append(row)
        if c.skip or c.error or not med:
            print(f"{c.name:<16} {'skipped: ' + (c.skip or '') if c.skip else 'FAILED: ' + (c.error or 'no runs')}")
            continue
        if c.rawsend:
            peak_rss = max(peak_rss or 0, med["rss_mib"])
        vs = ""
        if r:
            vs = f"{r['rss']:.2f}x RSS" if c.group == "memory" else \
                f"{r['speed']:.2f}x speed, {_fmt(r['cpu'], '.2f')}x CPU"
            vs += f" (vs {r['peer']})" if c.group == "memory" else ""
        print(f"{c.name:<16} {med['wall_s']:7.2f} {_fmt(med['mb_s'], '7.0f')} {_fmt(med['files_s'], '8.0f')} "
              f"{med['cpu_s']:6.2f} {med['rss_mib']:7.1f}  {vs:<28} {c.title}")
    tg = targets(by_name, peak_rss)
    print("\ntargets:")
    for t in tg:
        state = "skipped" if t["met"] is None else ("MET" if t["met"] else "NOT MET")
        value = "-" if t["value"] is None else f"{t['value']:.2f} {t['unit']}"
        print(f"  {state:<8} {value:>12}  {t['target']}" + (f"  ({t['note']})" if t["note"] else ""))
    print("\n'vs peer': speed = peer wall / rawsend wall (above 1: rawsend is faster); "
          "CPU = rawsend CPU / peer CPU.")
    return dict(scale=args.scale, reps=args.reps, caches="cold" if args.cold else "warm", machine=info,
                cases=rows, targets=tg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=corpus.default_scale(),
                    help="corpus size factor; 1.0 is about 1 GiB (default: RAWSEND_BENCH_SCALE or 1.0)")
    ap.add_argument("--reps", type=int, default=3, help="runs per case; the median is reported")
    ap.add_argument("--only", default="", help="comma-separated case names (and their peers) to run")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before every run (root)")
    ap.add_argument("--no-btrfs", action="store_true", help="skip the loop-mounted btrfs cases")
    ap.add_argument("--json", type=Path, default=BENCH / "results.json")
    args = ap.parse_args(argv)
    if args.cold and os.geteuid() != 0:
        ap.error("--cold needs root (it writes /proc/sys/vm/drop_caches)")

    rawsend = shutil.which("rawsend")
    if rawsend is None:
        print("rawsend is not on PATH (make bench puts the venv's first)", file=sys.stderr)
        return 2
    ensure_tools()
    compile_package()
    if not os.access(TIME, os.X_OK):
        print(f"{TIME} (GNU time) is missing: apt-get install time", file=sys.stderr)
        return 2
    info = machine()
    info["rawsend"] = rawsend
    src, m = corpus.ensure("main", args.scale)
    huge, mh = corpus.ensure("huge", args.scale)
    m, mh = corpus.measure(src), corpus.measure(huge)
    small = src / "small"
    ms = corpus.measure(small)
    tmp = WORK / f"run-s{args.scale:g}"
    _rm(tmp)
    tmp.mkdir(parents=True)
    stream = tmp / "stream.rs"
    subprocess.run([rawsend, "send", "-o", str(stream), str(src)], check=True, stderr=subprocess.DEVNULL)
    enc_skip, key = probe_encrypt(rawsend, tmp)
    store_skip = probe_store(rawsend, tmp)
    relay_store = tmp / "relay-store"
    if store_skip is None:
        fill_store(rawsend, stream, relay_store)
    n_many = max(2000, int(200_000 * args.scale))
    many = (tmp / "many-files.rs", n_many, many_files_stream(tmp / "many-files.rs", n_many))
    n_deep = max(1000, int(4000 * args.scale))
    deep = (tmp / "deep-dirs.rs", n_deep, deep_dirs_stream(tmp / "deep-dirs.rs", n_deep))
    bt_skip = "--no-btrfs" if args.no_btrfs else btrfs_unavailable()
    wanted = set(filter(None, args.only.split(",")))

    def selected(all_cases: list[Case]) -> list[Case]:
        if not wanted:
            return all_cases
        names = wanted | {c.peer for c in all_cases if c.name in wanted and c.peer}
        return [c for c in all_cases if c.name in names]

    inc = Incremental(tmp / "incremental")
    inc_m = m
    if selected(incremental_cases(rawsend, inc, m, None)):
        print("setting up the incremental cases (a copy of the corpus, a full send, 1 % changed) ...",
              file=sys.stderr, flush=True)
        inc.setup(rawsend, src)
        inc_m = corpus.measure(inc.tree)

    started = time.monotonic()
    dest = Destination(tmp, max(1 << 30, int(3 * args.scale * (1 << 30)) + (512 << 20)))
    info["destination"] = dest.kind
    try:
        inc_cases = selected(incremental_cases(rawsend, inc, inc_m, dest))
        cases = selected(tree_cases(rawsend, src, m, small, ms, huge, mh, stream, dest, enc_skip, key,
                                    store_skip, relay_store, many, deep, small_stream(rawsend, tmp))) + inc_cases
        with BtrfsPair(args.scale, src, bt_skip) as pair:
            if pair.skip is None:
                native = (REPO / "rawsend" / "sources" / "btrfs.py").exists()
                cases += selected(btrfs_cases(rawsend, pair.snap, pair.dst, m, native))
                cases += selected(btrfs_incremental_cases(rawsend, pair, tmp / "btrfs-incremental", m))
            else:
                cases.append(Case("bt-rs", "btrfs", "rawsend vs btrfs send | btrfs receive", skip=pair.skip))
            for rep in range(args.reps):
                for c in cases:
                    if c.skip or c.error:
                        continue
                    print(f"run {rep + 1}/{args.reps}: {c.name}", file=sys.stderr, flush=True)
                    run_case(c, args.cold)
    finally:
        dest.close()
    info["bench_seconds"] = round(time.monotonic() - started, 1)
    if {"rs-inc", "rs-inc-plain"} <= {c.name for c in inc_cases if c.samples}:  # figures() reads their streams
        INCREMENTAL.update(inc.figures())
    out = report(cases, info, args)
    if INCREMENTAL:
        i = INCREMENTAL
        print(f"incremental: {i['files']} files; {', '.join(i['changes'])}: stream {i['incremental_stream_bytes']:,}"
              f" bytes vs full {i['full_stream_bytes']:,} ({100 * i['size_ratio']:.2f} %); STATE"
              f" {i['state_first_stream_bytes_per_file']:.0f} B/file for the first stream,"
              f" +{i['state_growth_bytes_per_file']:.1f} B/file for the incremental")
        out["incremental"] = INCREMENTAL
    out["corpus"] = dict(main=m, small=ms, huge=mh, stream_bytes=stream.stat().st_size)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwritten to {args.json}")
    _rm(tmp)
    return 0


class BtrfsPair:
    """Source btrfs (compress=zstd:1) holding the corpus in a read-only snapshot, and an empty destination."""

    def __init__(self, scale: float, src: Path, skip: str | None):
        self.skip, self.src = skip, src
        self.dir = WORK / "btrfs"
        size = max(1 << 30, int(3 * scale * (1 << 30)) + (512 << 20))
        self._src = LoopFs(self.dir / "src.img", size, MKFS_BTRFS, "compress=zstd:1")
        self._dst = LoopFs(self.dir / "dst.img", size, MKFS_BTRFS, "compress=no")
        self.snap = self.snap2 = self.dst = None
        self.changed: list[str] = []

    def __enter__(self) -> "BtrfsPair":
        if self.skip:
            print(f"btrfs cases skipped: {self.skip}", file=sys.stderr)
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            mnt = self._src.__enter__()
            print("copying the corpus into a compressed btrfs ...", file=sys.stderr, flush=True)
            subprocess.run(["btrfs", "-q", "subvolume", "create", str(mnt / "data")], check=True)
            subprocess.run(["cp", "-a", f"{self.src}/.", str(mnt / "data")], check=True)
            subprocess.run(["btrfs", "-q", "subvolume", "snapshot", "-r", str(mnt / "data"), str(mnt / "snap")],
                           check=True)
            data = mnt / "data"  # then about 1 % changed, for the incremental cases
            self.changed = change_one_percent(data, random.Random(12), f"small/{sorted(os.listdir(data / 'small'))[0]}")
            subprocess.run(["btrfs", "-q", "subvolume", "snapshot", "-r", str(data), str(mnt / "snap2")], check=True)
            os.sync()
            self.snap, self.snap2 = mnt / "snap", mnt / "snap2"
            self.dst = self._dst.__enter__()
        except (subprocess.CalledProcessError, OSError) as e:
            self.skip = f"cannot set up loop btrfs: {e}"
            self.__exit__()
        return self

    def __exit__(self, *exc) -> None:
        self._dst.__exit__()  # each side unmounts and detaches only once
        self._src.__exit__()


if __name__ == "__main__":
    sys.exit(main())
