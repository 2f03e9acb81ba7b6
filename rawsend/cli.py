"""Command line: parse options, call the library, print.  Errors map to exit codes here only.

An error's exit code is its class's (errors.EXIT_CODES lists them; the README's
table is made from them): 1 damaged or forged input, 2 usage, 3 a local problem,
4 a key problem, 5 send finished with warnings, 70 a bug, 128+N signal N,
141 standard output closed by its reader.
"""

from __future__ import annotations

import functools
import os
import signal
import stat
import sys
import time
from contextlib import contextmanager

import click

from rawsend import __version__
from rawsend.errors import (
    InternalError, Interrupted, LocalError, OutputClosed, RawsendError, SendWarning, SourceError, UsageError,
)
from rawsend.fsutil import enlarge_pipe
from rawsend.outfile import atomic_output
from rawsend.stream.records import Compression
from rawsend.text import echo, json_line, quote

def _human(n: float) -> str:
    from rawsend.progress import human
    return human(n)


def _n(count: int, noun: str) -> str:
    """A count and its noun, singular for exactly one: "1 file", "2 files", "0 hard links"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _err(text: str) -> None:
    echo(f"rawsend: {text}", err=True)


# -q: -1, default 0, -v: 1, -vv: 2; set by each command's -v/-q (see with_verbosity)
_verbosity = 0


def _note(text: str) -> None:
    """A summary or note on stderr; -q silences it (errors and send's warnings are always said)."""
    if _verbosity >= 0:
        _err(text)


def _result(text: str) -> None:
    """verify's verdict on stdout; -q leaves only the exit status to say it."""
    if _verbosity >= 0:
        echo(text)


def with_verbosity(func):
    """-v (each file; -vv each record too) and -q (errors only) on a command."""
    @functools.wraps(func)
    def wrapper(*args, verbose=0, quiet=False, **kwargs):
        global _verbosity
        if verbose and quiet:
            raise click.UsageError("-v and -q contradict each other: give one")
        _verbosity = -1 if quiet else verbose
        return func(*args, **kwargs)

    wrapper = click.option("-q", "--quiet", is_flag=True, help="Print only errors (and send's warnings).")(wrapper)
    return click.option("-v", "--verbose", count=True,
                        help="Name each file as it is sent or received (-vv: each record too).")(wrapper)


class _Announcer:
    """-v: one escaped path per file, as `tar -v`; -vv: each record's detail too."""

    def __init__(self, err: bool):
        from rawsend.listing import Paths
        self.paths = Paths()
        self.err = err
        self.dumper = None
        if _verbosity >= 2:
            from rawsend.dump import Dumper
            self.dumper = Dumper()

    def items(self, items):
        """send: say each source item, then hand it on."""
        from rawsend.listing import shown
        from rawsend.sources.tree import DataChunk, EncodedChunk
        from rawsend.stream.records import Create, Link
        for item in items:
            if isinstance(item, (Create, Link)):
                echo(shown(self.paths.of(item), item), err=self.err)
            elif self.dumper is not None and isinstance(item, (DataChunk, EncodedChunk)):
                offset, n = ((item.offset, len(item.data)) if isinstance(item, DataChunk)
                             else (item.extent.offset, item.extent.num_bytes))
                echo(f"  extent at byte {offset}, {_n(n, 'byte')}", err=self.err)
            yield item

    def record(self, raw, rec) -> None:
        """receive and verify: say each record as it is read (on_record)."""
        from rawsend.listing import shown
        from rawsend.stream.records import Create, Link
        if self.dumper is not None:
            echo(self.dumper.line(raw, rec), err=self.err)
        elif isinstance(rec, (Create, Link)):
            echo(shown(self.paths.of(rec), rec), err=self.err)


def _open_input(path: str | None):
    """The stream to read: FILE, or stdin for none or -."""
    if path in (None, "-"):
        how = _input_spelling()
        if os.isatty(0):  # waiting for a stream typed at a terminal would only hang
            raise click.UsageError("refusing to read a binary stream from a terminal; "
                                   f"pipe one in (rawsend send DIR | ...) or give {how}")
        enlarge_pipe(0)
        try:
            return open(0, "rb", buffering=1 << 20, closefd=False)
        except OSError:
            raise click.UsageError(f"there is no standard input: pipe a stream in or give {how}") from None
    try:
        return open(path, "rb", buffering=1 << 20)
    except OSError as e:
        raise LocalError(f"cannot open the stream file: {e.strerror}", path=path) from None


def _input_spelling() -> str:
    """How the running command names a stream file, for messages."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.command.name == "receive":
        return "-f FILE"
    return "STREAM or -f FILE"


def stream_input(func):
    """The one input convention: a positional STREAM or -f FILE; - (or neither) is stdin.

    The command gets ``stream_file``: the path, or "-".
    """
    @functools.wraps(func)
    def wrapper(*args, stream=None, file_opt=None, **kwargs):
        if stream is not None and file_opt is not None:
            raise click.UsageError("give the stream once: as STREAM or as -f FILE")
        return func(*args, stream_file=stream if stream is not None else (file_opt or "-"), **kwargs)

    wrapper = click.option("-f", "--file", "file_opt", metavar="FILE",
                           type=click.Path(allow_dash=True, readable=False),
                           help="Read the stream from FILE (- is stdin), as STREAM does.")(wrapper)
    return click.argument("stream", required=False, type=click.Path(allow_dash=True, readable=False))(wrapper)


def _warn(text: str) -> None:
    _err(f"warning: {text}")


@contextmanager
def _output(output: str | None, tag: str):
    """The stream's file descriptor: -o FILE (written beside it and renamed into place when
    complete), or stdout for no -o or -o -, unless stdout is a terminal."""
    if output not in (None, "-"):
        with atomic_output(output, tag) as fd:
            yield fd
        return
    if os.isatty(1):
        raise click.UsageError("refusing to write a binary stream to a terminal; "
                               "pipe it (| rawsend receive DIR) or use -o FILE")
    enlarge_pipe(1)
    yield 1


def _load_keyring(key_files):
    if not key_files:
        return None
    from rawsend.codecs.crypto import Keyring
    return Keyring.from_files(key_files, warn=_warn)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop(signum, frame) -> None:
    # A second signal while cleaning up ends the process at once, as the default action would;
    # what it leaves is pid-tagged and removed by the next receive.
    _release_stop_signals()
    raise Interrupted(signum)


def _release_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is _stop:
            signal.signal(sig, signal.SIG_DFL)


def _catch_stop_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP unwind the command like an error, so its cleanup runs."""
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup and background jobs ignore some: keep that
            signal.signal(sig, _stop)


@contextmanager
def _on_interrupt(note: str):
    """Say what was undone when a signal stops the command inside this block."""
    try:
        yield
    except Interrupted as e:
        e.note = note
        raise


def _exit_with(e: RawsendError | Interrupted) -> None:
    if not e.silent:
        _err(e.message())
    try:
        sys.stdout.flush()
    except OSError:  # closed: keep the interpreter's own flush at exit from complaining
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(e.exit_code)


class RawsendGroup(click.Group):
    def invoke(self, ctx):
        _catch_stop_signals()
        try:
            return super().invoke(ctx)
        except (RawsendError, Interrupted) as e:
            _exit_with(e)
        except KeyboardInterrupt:  # raised by Python's own handler, before ours was in place
            _exit_with(Interrupted(signal.SIGINT))
        except BrokenPipeError:  # printing to a closed stdout; a stream's fd_writer raises OutputClosed
            _exit_with(OutputClosed())
        except click.UsageError as e:  # one line and where to look, not click's usage block
            sub = e.ctx is not None and e.ctx.parent is not None
            hint = (f"'rawsend {e.ctx.info_name} --help' shows the usage" if sub
                    else "'rawsend --help' lists the commands")
            _exit_with(UsageError(e.format_message().rstrip("."), hint=hint))
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # --help and click's other exits: click prints them and exits 2 or 0
        except OSError as e:  # a local problem no layer below named more precisely
            _exit_with(LocalError(e.strerror or str(e), path=e.filename))
        except Exception as e:
            if os.environ.get("RAWSEND_DEBUG"):
                raise
            _exit_with(InternalError(f"{type(e).__name__}: {e}"))
        finally:
            _release_stop_signals()  # past the command, a signal has nothing left to clean up


@click.group(cls=RawsendGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rawsend")
def main():
    """Move file trees between hosts as raw encoded extents."""


# -- send ---------------------------------------------------------------------------------------

@main.command()
@with_verbosity
# existence and access are checked when opened: a missing or unreadable path is a local problem (3)
@click.argument("source", type=click.Path(readable=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the stream to FILE (renamed into place once complete; - is stdout) instead of stdout.")
@click.option("--compress", "compress_name", type=click.Choice(["zstd", "zlib", "lz4", "none"]),
              default="zstd", show_default=True, help="Codec for extents that are not already compressed.")
@click.option("--level", type=int, default=None,
              help="Compression level: zstd 1-19 (default 3), zlib 1-9 (default 3); lz4 and none take none.")
@click.option("--encrypt", "encrypt_key", type=click.Path(readable=False),
              help="Seal extents and metadata with this key file.")
@click.option("--cipher", type=click.Choice(["aes-256-gcm", "chacha20-poly1305"]), default="aes-256-gcm",
              show_default=True, help="AEAD used with --encrypt.")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Encoding threads (default: cores, max 4).")
@click.option("--no-raw", is_flag=True,
              help="On btrfs, read and compress compressed extents too instead of sending them as stored.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr: done, total, rate, ETA (default: when a terminal).")
@click.option("--stream", "stream_id", default=None,
              help="When SOURCE is a store: the stream to relay (a unique prefix of its id; default: the newest).")
@click.option("--chain", is_flag=True,
              help="When SOURCE is a store: relay the stream with every base it needs, from its full stream on, as"
                   " one chain that 'rawsend receive DEST' restores.")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Leave out paths matching PATTERN (repeatable): fnmatch on the path relative to SOURCE and"
                   " on the base name; a leading / anchors it at SOURCE; an excluded directory is not entered.")
@click.option("--exclude-from", "exclude_from", multiple=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Read exclude patterns from FILE, one per line (blank lines and lines starting with # skipped).")
@click.option("-x", "--one-file-system", "one_fs", is_flag=True,
              help="Do not enter directories on another filesystem (mount points, btrfs subvolumes); send them empty.")
@click.option("-n", "--dry-run", is_flag=True,
              help="Walk SOURCE and say what would be sent and the estimated stream size; write nothing.")
# send --state: incremental sends (the _send_tracked block below)
@click.option("--state", "state_path", type=click.Path(dir_okay=False, readable=False),
              help="Keep what was sent from SOURCE in this file (created when missing) and send only what changed"
                   " since: a full stream the first time, an incremental stream after.")
@click.option("--parent", "parent_id", default=None, metavar="STREAM_ID",
              help="With --state: send against this earlier stream (a unique prefix of its id; default: the newest).")
@click.option("--keep-state", "keep_state", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --state: keep the newest N streams in STATE to send against (default: 10).")
@click.option("--label", "label_text", default=None, metavar="TEXT",
              help="Record TEXT (UTF-8, at most 1024 bytes), this host's name, the SOURCE path and the rawsend"
                   " version in the stream (sealed with --encrypt); 'rawsend ls STORE' and dump show them.")
# send -p: the kernel's diff between read-only btrfs snapshots (the _send_snapshot block below)
@click.option("-p", "--parent-snapshot", "parent_snap", type=click.Path(file_okay=False, readable=False),
              metavar="PARENT_SNAP",
              help="With --state, SOURCE a read-only btrfs snapshot: send what changed since the read-only snapshot"
                   " PARENT_SNAP, whose stream STATE holds, as btrfs computes it (as 'btrfs send -p').")
def send(source, output, compress_name, level, encrypt_key, cipher, threads, no_raw, progress, stream_id, chain,
         excludes, exclude_from, one_fs, dry_run, state_path, parent_id, keep_state, label_text, parent_snap):
    """Write a stream of the tree SOURCE to stdout (or -o FILE).

    When SOURCE is a store, relay one stored stream instead, byte for byte.
    """
    from rawsend.store import is_store
    _check_source(source)
    if is_store(source):
        given = [name for name, value in (("--encrypt", encrypt_key), ("--level", level), ("--threads", threads))
                 if value is not None]
        given += [name for name, value in (("--exclude", excludes), ("--exclude-from", exclude_from),
                                           ("--one-file-system", one_fs), ("--dry-run", dry_run),
                                           ("--state", state_path), ("--label", label_text is not None))
                  if value]
        if click.get_current_context().get_parameter_source("compress_name") is click.core.ParameterSource.COMMANDLINE:
            given.append("--compress")
        if given:
            raise click.UsageError(f"{', '.join(given)} cannot apply: a store's streams are relayed as stored")
        _relay_store(source, stream_id, output, chain)
        return
    if stream_id is not None or chain:
        raise click.UsageError(f"{'--stream' if stream_id is not None else '--chain'} applies only when SOURCE is"
                               " a store")
    if state_path is None and (parent_id is not None or keep_state is not None):
        raise click.UsageError(f"{'--parent' if parent_id is not None else '--keep-state'} applies only with --state")
    from rawsend.codecs.compress import DEFAULT_LEVELS
    from rawsend.pipeline import send as do_send
    from rawsend.progress import Progress, prewalk_total
    from rawsend.sources.tree import WalkRules
    from rawsend.stream.writer import fd_writer

    _check_level(compress_name, level)
    from rawsend.labels import make_label
    label = make_label(label_text, source) if label_text is not None else None
    patterns = tuple(excludes) + _patterns_from(exclude_from)
    compression = Compression.BY_NAME[compress_name]
    if level is None:
        level = DEFAULT_LEVELS[compression]
    sealer = None
    if encrypt_key:
        from rawsend.codecs.crypto import Sealer
        from rawsend.codecs.keys import load_key
        from rawsend.stream.records import Cipher
        sealer = Sealer(load_key(encrypt_key, warn=_warn), Cipher.BY_NAME[cipher])
    if parent_snap is not None:
        _send_snapshot(source, parent_snap, state_path, parent_id, keep_state, output, compression, level, threads,
                       sealer, no_raw, patterns, one_fs, dry_run, label)
        return
    if state_path is not None:
        _send_tracked(source, state_path, parent_id, keep_state, output, compression, level, threads, sealer,
                      progress, patterns, one_fs, dry_run, label)
        return
    tree, report = _tree_source(source, raw=not no_raw)
    if dry_run:
        tree.rules = WalkRules(exclude=patterns, one_filesystem=one_fs)
        _dry_run(tree, report, compress_name, compression, level, sealer is not None)
        return
    with _output(output, "send") as out_fd:
        tree.rules = WalkRules(exclude=patterns, one_filesystem=one_fs, skip_inodes=_own_output(out_fd, output))
        bar = Progress(progress, "send")
        prewalk_total(source, bar, tree.rules.excludes if patterns else None)
        started = time.monotonic()
        try:
            items = _Announcer(err=True).items(tree) if _verbosity >= 1 else tree  # stdout may be the stream
            stats = do_send(items, fd_writer(out_fd), compression=compression, level=level,
                            threads=threads, sealer=sealer, progress=bar, label=label)
        finally:
            bar.close()
    elapsed = time.monotonic() - started
    for w in report.warnings:
        _err(f"warning: {w}")
    for note in report.notices:
        _note(f"note: {note}")
    mix = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_compression.items())) or "no extents"
    left_out = f"; {_n(report.excluded, 'path')} excluded" if report.excluded else ""
    _note(f"sent {_n(report.files, 'file')}, {_n(report.dirs, 'dir')}, {_n(report.symlinks, 'symlink')}, "
         f"{_n(report.hardlinks, 'hard link')}: {_human(stats.logical_bytes)} of data as "
         f"{_human(stats.stream_bytes)} of stream ({_n(stats.extents, 'extent')}: {mix}) in {elapsed:.2f} s"
         + left_out + _btrfs_send_summary(report))
    if report.warnings:
        sys.exit(SendWarning.exit_code)


# -- send --state ------------------------------------------------------------------------------

def _send_tracked(source, state_path, parent_id, keep, output, compression, level, threads, sealer, progress,
                  patterns, one_fs, dry_run, label=None) -> None:
    """send --state: the stream of what changed since the parent (all of SOURCE the first time);
    STATE records it only once the stream's last byte is written and flushed."""
    from rawsend.incremental.diff import describe
    from rawsend.incremental.send import TrackedSend, warnings_of
    from rawsend.incremental.state import DEFAULT_KEEP
    from rawsend.patterns import matches
    from rawsend.progress import Progress
    from rawsend.stream.writer import fd_writer
    from rawsend.text import clean

    exclude = functools.partial(matches, tuple(patterns)) if patterns else None
    started = time.monotonic()
    with TrackedSend.open(state_path, source, parent=parent_id, warn=_warn, dry_run=dry_run) as ts:
        if dry_run:
            plan = ts.scan(source, one_file_system=one_fs, exclude=exclude)
            for line in plan.lines() if _verbosity >= 1 else ():
                echo(clean(line))  # no stream: stdout is free
            _tracked_summary(ts, None, None, time.monotonic() - started)
            return
        with _output(output, "send") as out_fd:
            plan = ts.scan(source, one_file_system=one_fs, exclude=exclude, skip_inodes=_own_output(out_fd, output))
            for line in plan.lines() if _verbosity >= 1 else ():
                echo(clean(line), err=True)  # stdout may be the stream
            bar = Progress(progress, "send", total=ts.bytes_to_read())
            try:
                stats = ts.send(fd_writer(out_fd), compression=compression, level=level, threads=threads,
                                sealer=sealer, progress=bar if bar.active else None, label=label)
            finally:
                bar.close()
        info = ts.commit(keep or DEFAULT_KEEP)  # the stream is complete: -o FILE is in place, stdout written
        warnings = warnings_of(ts)
        _tracked_summary(ts, stats, info, time.monotonic() - started)
    if warnings:
        sys.exit(SendWarning.exit_code)


def _send_snapshot(source, parent_snap, state_path, parent_id, keep, output, compression, level, threads, sealer,
                   no_raw, patterns, one_fs, dry_run, label) -> None:
    """send -p: the kernel's diff from PARENT_SNAP to SOURCE as an incremental stream against the
    stream STATE holds of PARENT_SNAP; STATE records it once the stream is complete."""
    from rawsend.btrfs.snapshot_send import SnapshotSend
    from rawsend.incremental.state import DEFAULT_KEEP
    from rawsend.stream.writer import fd_writer

    given = [name for name, value in (("--parent", parent_id), ("--exclude", patterns), ("--one-file-system", one_fs),
                                      ("--dry-run", dry_run), ("--no-raw", no_raw)) if value]
    if state_path is None:
        raise click.UsageError("-p needs --state: the STATE that holds the stream sent from PARENT_SNAP")
    if given:
        raise click.UsageError(f"{', '.join(given)} cannot apply with -p: the kernel diffs the whole snapshot")
    started = time.monotonic()
    with SnapshotSend.open(state_path, source, parent_snap, warn=_warn) as snap:
        snap.diff()
        with _output(output, "send") as out_fd:
            stats = snap.send(fd_writer(out_fd), compression=compression, level=level, threads=threads,
                              sealer=sealer, label=label)
        info = snap.commit(keep or DEFAULT_KEEP)
        s = snap.stats
        changes = ", ".join(f"{n} {name}" for name, n in sorted(s.changes.items())) or "no changes"
        _note(f"sent incremental stream against {snap.base.id_hex} (btrfs send -p {parent_snap}: {s.commands}"
              f" commands, {_human(s.kernel_bytes)}; {changes}); {_n(s.ranges, 'range')} read"
              f" ({_human(s.range_bytes)}): {_human(stats.logical_bytes)} of data as {_human(stats.stream_bytes)}"
              f" of stream in {time.monotonic() - started:.2f} s")
        _note(f"stream {info.id_hex} recorded in STATE {snap.state.path} ({_human(snap.state.size())},"
              f" {_n(len(snap.state.streams()), 'stream')} kept)")


def _tracked_summary(ts, stats, info, elapsed: float) -> None:
    from rawsend.incremental.send import warnings_of
    report = ts.report
    for w in warnings_of(ts):
        _err(f"warning: {w}")
    for note in report.notices:
        _note(f"note: {note}")
    changes = ", ".join(f"{n} {kind}" for kind, n in ts.stats.changes.items() if kind != "times set") or "no changes"
    left_out = f"; {_n(report.excluded, 'path')} excluded" if report.excluded else ""
    if ts.incremental:
        what = f"incremental stream against {ts.parent.id_hex}: {changes}"
    else:
        what = (f"full stream: {_n(report.files, 'file')}, {_n(report.dirs, 'dir')}, "
                f"{_n(report.symlinks, 'symlink')}, {_n(report.hardlinks, 'hard link')}")
    s = ts.stats
    data = (f"{_n(s.files_read, 'file')} read ({_human(s.bytes_read)}), {_n(s.extents_sent, 'extent')} sent,"
            f" {s.extents_unchanged} unchanged" + (f", {_n(s.holes_punched, 'hole')} punched" if s.holes_punched else ""))
    if stats is None:
        _note(f"would send {what}; {_n(len(ts.plan.reread), 'file')} to read"
              f" ({_human(ts.bytes_to_read())}){left_out}; nothing written, STATE unchanged")
        return
    _note(f"sent {what}; {data}: {_human(stats.logical_bytes)} of data as {_human(stats.stream_bytes)} of stream"
          f" in {elapsed:.2f} s{left_out}")
    _note(f"stream {info.id_hex} recorded in STATE {ts.state.path} ({_human(ts.state.size())},"
          f" {_n(len(ts.state.streams()), 'stream')} kept)")


def _dry_run(tree, report, compress_name: str, compression: int, level: int, sealed: bool) -> None:
    from rawsend.estimate import estimate

    items = _Announcer(err=False).items(tree) if _verbosity >= 1 else tree  # no stream: stdout is free
    est = estimate(items, compression, level, sealed)
    for w in report.warnings:
        _err(f"warning: {w}")
    for note in report.notices:
        _note(f"note: {note}")
    how = f"{compress_name} level {level}" if compress_name in LEVELS else compress_name
    sample = f"{_human(est.sampled_in)} of {_human(est.data_bytes)} compressed as a sample" if est.sampled_in \
        else "no data to sample"
    left_out = f"; {_n(report.excluded, 'path')} excluded" if report.excluded else ""
    _note(f"would send {_n(report.files, 'file')}, {_n(report.dirs, 'dir')}, {_n(report.symlinks, 'symlink')}, "
          f"{_n(report.hardlinks, 'hard link')}: {_human(est.data_bytes)} of data as about "
          f"{_human(est.stream_bytes)} of stream ({_n(est.extents, 'extent')}, {how}; {sample}){left_out}"
          "; nothing written")
    if report.warnings:
        sys.exit(SendWarning.exit_code)


def _patterns_from(files) -> tuple[str, ...]:
    """--exclude-from: one pattern a line; blank lines and # comments skipped, line ends kept as they are."""
    patterns = []
    for path in files:
        try:
            if path == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(path, "rb") as f:
                    data = f.read()
        except OSError as e:
            raise LocalError(f"cannot read the exclude file: {e.strerror}", path=path) from None
        for line in os.fsdecode(data).splitlines():
            if line.strip() and not line.startswith("#"):
                patterns.append(line)
    return tuple(patterns)


# zstd's 20-22 need windows larger than the 128 KiB btrfs decodes with, so they gain nothing here
LEVELS = {"zstd": (1, 19), "zlib": (1, 9)}


def _check_level(compress_name: str, level: int | None) -> None:
    if level is None:
        return
    valid = ", ".join(f"{name} {lo}-{hi}" for name, (lo, hi) in LEVELS.items())
    if compress_name not in LEVELS:
        raise click.BadParameter(f"--compress {compress_name} has no levels (levels: {valid})", param_hint="--level")
    lo, hi = LEVELS[compress_name]
    if not lo <= level <= hi:
        raise click.BadParameter(f"{level} is not a {compress_name} level: give {lo}-{hi}", param_hint="--level")


def _own_output(out_fd: int, output: str | None) -> dict:
    """(dev, ino) of the stream file being written, and of the one it replaces, for the walk to skip."""
    inodes = {}
    st = os.fstat(out_fd)
    if stat.S_ISREG(st.st_mode):
        inodes[(st.st_dev, st.st_ino)] = output or "the standard output"
    if output not in (None, "-"):
        try:
            st = os.stat(output)
            inodes[(st.st_dev, st.st_ino)] = output
        except OSError:
            pass
    return inodes


def _check_source(path: str) -> None:
    """Before any output is created: SOURCE must be a directory this process can read."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as e:
        raise SourceError(e.strerror, path=path, hint="give a directory that exists and can be read") from None


def _tree_source(path: str, raw: bool):
    """The source for a directory and its report: on btrfs, one that sends compressed
    extents as they lie on disk (unless raw is False)."""
    from rawsend import btrfs
    from rawsend.sources.tree import SourceReport, TreeSource

    try:
        on_btrfs = raw and btrfs.is_btrfs(path)
    except OSError:
        on_btrfs = False
    if on_btrfs:
        from rawsend.sources.btrfs import BtrfsSource, BtrfsSourceReport
        report = BtrfsSourceReport()
        return BtrfsSource(path, report), report
    report = SourceReport()
    return TreeSource(path, report), report


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))


def _btrfs_send_summary(report) -> str:
    if not hasattr(report, "raw_extents") or not (report.raw_extents or report.decoded_extents):
        return ""
    text = f"; {_n(report.raw_extents, 'extent')} as stored on btrfs ({_human(report.raw_bytes)})"
    if report.decoded_extents:
        text += (f", {_n(report.decoded_extents, 'compressed extent')} sent decoded"
                 f" ({_reasons(report.decoded_reasons)})")
    return text


# -- receive ------------------------------------------------------------------------------------

@main.command()
@with_verbosity
@click.argument("dest", type=click.Path())
@click.option("-f", "--file", "input_path", type=click.Path(dir_okay=False, allow_dash=True, readable=False),
              help="Read the stream from FILE (- is stdin) instead of stdin.")
@click.option("--key-file", "key_files", multiple=True, type=click.Path(readable=False),
              help="Key for an encrypted stream (repeatable; the stream's key id picks one).")
@click.option("--preserve-owner/--no-preserve-owner", default=None,
              help="Apply the stream's uid/gid and setuid/setgid bits (default: when root).")
@click.option("--preserve-special", is_flag=True,
              help="Create FIFOs, and sockets when root (default: skip them).")
@click.option("--preserve-devices", is_flag=True,
              help="Create block and character devices, as root (default: skip them).")
@click.option("--max-bytes", type=click.IntRange(0), default=None,
              help="Refuse streams whose files declare more bytes in all (default 2^50, 1 PiB).")
@click.option("--max-files", type=click.IntRange(1), default=None,
              help="Refuse streams with more names: files, dirs, links (default 10,000,000).")
# receiving at depth N nests N Python frames (fd cache refills, cleanup): 800 stays clear of the limit
@click.option("--max-depth", type=click.IntRange(1, 800), default=None,
              help="Refuse streams nesting directories deeper (default 512, at most 800).")
@click.option("--no-sync", is_flag=True,
              help="Do not make the received tree durable (fsync or syncfs) before renaming it into place.")
@click.option("--no-raw", is_flag=True,
              help="Decode compressed extents and write plain bytes, even where btrfs could take them as they are.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when a terminal and the stream is not a pipe: in send | receive"
                   " the sender draws).")
@click.option("--include", "includes", multiple=True, metavar="PATTERN",
              help="Restore only paths matching PATTERN (repeatable; as send --exclude matches), what is under a"
                   " matching directory, and their parent directories.")
@click.option("--store", "into_store", is_flag=True,
              help="DEST is a store (created if missing): keep the stream verbatim, encrypted or not; no key needed.")
@click.option("--force", is_flag=True,
              help="Incremental stream: apply it also over files changed in DEST since it was received.")
@click.option("--no-subvolume", is_flag=True,
              help="On btrfs, make DEST a plain directory, not a read-only received subvolume (an incremental"
                   " stream then changes the DEST that holds its base).")
def receive(dest, input_path, key_files, preserve_owner, preserve_special, preserve_devices, max_bytes, max_files,
            max_depth, no_sync, no_raw, progress, includes, into_store, force, no_subvolume):
    """Rebuild the tree from a stream on stdin into DEST (which must not exist, or be empty).

    With --store, add the stream as it is to the store DEST instead.
    """
    from rawsend.stream.checker import Limits

    limits = Limits()
    if max_bytes is not None:
        limits.max_bytes = max_bytes
    if max_files is not None:
        limits.max_files = max_files
    if max_depth is not None:
        limits.max_depth = max_depth
    if into_store:
        given = [name for name, value in (("--key-file", key_files), ("--preserve-owner", preserve_owner is not None),
                                          ("--preserve-special", preserve_special),
                                          ("--preserve-devices", preserve_devices), ("--no-sync", no_sync),
                                          ("--include", includes), ("--force", force),
                                          ("--no-subvolume", no_subvolume)) if value]
        if given:
            raise click.UsageError(f"{', '.join(given)} cannot apply with --store: a store keeps the stream as it"
                                   " came (verify STORE --key-file authenticates it)")
        _receive_store(dest, input_path, limits, progress)
        return
    options = dict(preserve_owner=preserve_owner, preserve_special=preserve_special,
                   preserve_devices=preserve_devices, sync=not no_sync, encoded_writes=not no_raw)
    with _open_input(input_path) as stream:
        from rawsend.stream.chain import starts_chain
        is_chain, stream = starts_chain(stream)
        if is_chain:
            if includes or force:
                raise click.UsageError(f"{'--include' if includes else '--force'} cannot apply to a chain"
                                       " (send STORE --chain): it restores a whole tree into a new DEST")
            _receive_chain(stream, dest, _load_keyring(key_files), limits, options, progress)
            return
        if not includes:  # a selection is never a subvolume: nothing can be sent against it
            options["subvolume"] = not no_subvolume
        _receive_tree(stream, dest, key_files, limits, options, progress, includes, force, preserve_owner)


def _receive_tree(stream, dest, key_files, limits, options, progress, includes, force, preserve_owner) -> None:
    from rawsend.pipeline import receive as do_receive
    from rawsend.progress import Progress, counted, stream_size
    from rawsend.sinks.dest import DestSink
    from rawsend.sinks.tree import TreeSink

    selected = None
    if includes:  # a selection of a tree: not one an incremental stream can change later
        from rawsend.sinks.select import SelectSink
        sink = selected = SelectSink(TreeSink(dest, track=False, **options), includes)
    else:
        sink = DestSink(dest, force=force, **options)
    keyring = _load_keyring(key_files)
    started = time.monotonic()
    with _on_interrupt(f"nothing was kept: {dest} is as it was"):
        bar = Progress(progress, "receive", total=stream_size(stream), input_fd=stream.fileno())
        try:
            stats = do_receive(counted(stream, bar), sink, keyring=keyring, limits=limits,
                               on_record=_Announcer(err=False).record if _verbosity >= 1 else None)
        finally:
            bar.close()
    elapsed = time.monotonic() - started
    for w in sink.report.warnings:
        _err(f"warning: {w}")
    setid, caps = sink.report.kept_setid, sink.report.kept_capabilities
    kept = ([f"{setid} setuid/setgid file" + ("s" if setid > 1 else "")] if setid else []) + \
           ([f"{caps} file capabilit" + ("ies" if caps > 1 else "y")] if caps else [])
    if kept:
        _warn(f"kept {' and '.join(kept)} from the stream with their owners"
              f" ({'the default as root' if preserve_owner is None else '--preserve-owner'}): they grant"
              f" privileges in {dest}; --no-preserve-owner drops them")
    extra = []
    if sink.report.skipped_special - sink.report.skipped_devices:
        extra.append(f"{_n(sink.report.skipped_special - sink.report.skipped_devices, 'special file')} skipped"
                     " (--preserve-special)")
    if sink.report.skipped_devices:
        extra.append(f"{_n(sink.report.skipped_devices, 'device node')} skipped (--preserve-devices, as root)")
    if sink.report.skipped_xattrs:
        extra.append(f"{_n(sink.report.skipped_xattrs, 'xattr')} not set")
    if sink.report.stripped_modes:
        extra.append(f"{_n(sink.report.stripped_modes, 'setuid/setgid bit')} dropped (--preserve-owner)")
    if sink.report.encoded_extents or sink.report.decoded_extents:
        reasons = _reasons(sink.report.decoded_reasons)
        extra.append(f"{_n(sink.report.encoded_extents, 'extent')} written encoded,"
                     f" {sink.report.decoded_extents} decoded"
                     + (f" ({reasons})" if reasons else ""))
    if selected is not None:
        for name in selected.missing_links:
            _warn(f"hard link {name} not restored: no --include matched the name its data is under; include that too")
        extra.append(f"--include: {_n(selected.kept, 'path')} restored, {selected.skipped} passed over")
    if sink.report.unchecked_extents:
        extra.append(f"{_n(sink.report.unchecked_extents, 'LZO extent')} written without a decode check "
                     "(install rawsend[lzo] to check them)")
    if stats.changes:
        _note(f"applied {_n(stats.changes, 'change')}, {_n(stats.files, 'new file')}, {_n(stats.dirs, 'new dir')},"
              f" {_human(stats.logical_bytes)} of data ({_n(stats.extents, 'extent')},"
              f" {_human(stats.stream_bytes)} of stream) to {dest} in {elapsed:.2f} s"
              + ("; " + "; ".join(extra) if extra else ""))
        return
    _note(f"received {_n(stats.files, 'file')}, {_n(stats.dirs, 'dir')}, {_n(stats.symlinks, 'symlink')}, "
         f"{_n(stats.hardlinks, 'hard link')}, {_human(stats.logical_bytes)} of data "
         f"({_n(stats.extents, 'extent')}, {_human(stats.stream_bytes)} of stream) into {dest} in {elapsed:.2f} s"
         + ("; " + "; ".join(extra) if extra else ""))


def _receive_chain(stream, dest, keyring, limits, options, progress) -> None:
    """A chain (send STORE --chain): every member, then DEST appears at the last one."""
    from rawsend.progress import Progress, counted, stream_size
    from rawsend.sinks.chain import receive_chain
    from rawsend.stream.chain import ChainReader

    started = time.monotonic()
    with _on_interrupt(f"nothing was kept: {dest} is as it was"):
        bar = Progress(progress, "receive", total=stream_size(stream), input_fd=stream.fileno())
        try:
            result = receive_chain(ChainReader(counted(stream, bar)), dest, keyring=keyring, limits=limits,
                                   on_member=_member_note, **options)
        finally:
            bar.close()
    _chain_summary(result, f"into {dest}", started)


def _member_note(member, stats) -> None:
    _note(f"chain member {member.number} of {member.count}: {'applied' if member.number > 1 else 'received'}"
          f" {_n(stats.records, 'record')}, {_human(stats.logical_bytes)} of data")


def _chain_summary(result, where: str, started: float) -> None:
    for w in result.warnings:
        _err(f"warning: {w}")
    _note(f"restored a chain of {_n(len(result.stats), 'stream')} {where}:"
          f" {_human(sum(st.stream_bytes for st in result.stats))} of stream in {time.monotonic() - started:.2f} s")


@main.command()
@with_verbosity
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.argument("dest", type=click.Path())
@click.option("--stream", "stream_id", default=None,
              help="The stream to restore (a unique prefix of its id; default: the newest).")
@click.option("--key-file", "key_files", multiple=True, type=click.Path(readable=False),
              help="Key of encrypted streams (repeatable; each stream's key id picks one).")
@click.option("--preserve-owner/--no-preserve-owner", default=None,
              help="Apply the streams' uid/gid and setuid/setgid bits (default: when root).")
@click.option("--preserve-special", is_flag=True, help="Create FIFOs, and sockets when root (default: skip them).")
@click.option("--preserve-devices", is_flag=True, help="Create block and character devices, as root.")
@click.option("--no-sync", is_flag=True,
              help="Do not make the restored tree durable (fsync or syncfs) before renaming it into place.")
@click.option("--no-raw", is_flag=True, help="Decode compressed extents and write plain bytes.")
def restore(store, dest, stream_id, key_files, preserve_owner, preserve_special, preserve_devices, no_sync, no_raw):
    """Restore the stream of STORE (the newest, or --stream) into the new directory DEST, with every base
    it needs: the full stream and each incremental stream after it, applied in one step.

    DEST appears only when the last stream is applied: until then it stays absent (or the empty
    directory it was). The same as 'rawsend send STORE --stream ID --chain | rawsend receive DEST'.
    """
    from rawsend.stream.checker import Limits
    from rawsend.store.restore import restore as do_restore

    options = dict(preserve_owner=preserve_owner, preserve_special=preserve_special,
                   preserve_devices=preserve_devices, sync=not no_sync, encoded_writes=not no_raw)
    keyring = _load_keyring(key_files)
    started = time.monotonic()
    with _on_interrupt(f"nothing was kept: {dest} is as it was"):
        result = do_restore(store, stream_id, dest, keyring=keyring, limits=Limits(), on_member=_member_note,
                            **options)
    _chain_summary(result, f"from store {store} into {dest}", started)


# -- status DEST: what a received tree holds ---------------------------------------------------

@main.command()
@click.argument("dest", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def status(dest, as_json):
    """Say which stream DEST holds and whether an interrupted apply was pending (which it completes)."""
    from rawsend.sinks.deststate import DestState

    state = DestState.open(dest, recover=False)
    if state is None:
        if as_json:
            echo(json_line({"dest": os.path.abspath(dest), "tracked": False}))
        else:
            echo(f"{dest}: holds no tree received from a tracked stream (send --state)")
        return
    with state:
        pending = state.pending
        state.recover()
        chain, held = state.chain, state.held
        info = {"dest": os.path.abspath(dest), "tracked": True, "stream_id": held.stream_id.hex(),
                "digest": held.digest.hex(), "created": _utc(held.created_ns), "received": _utc(held.received_ns),
                "chain_length": len(chain), "chain": [h.stream_id.hex() for h in chain],
                "files": state.file_count(), "next_id": held.next_id,
                "encrypted": held.key_id is not None, "key_id": held.key_id.hex() if held.key_id else None,
                "pending": pending,
                "rolled_forward": state.rolled_forward.hex() if state.rolled_forward else None}
    if as_json:
        echo(json_line(info))
        return
    echo(f"{dest}: holds stream {info['stream_id']} (created {info['created']}, received {info['received']})")
    echo(f"  chain of {_n(len(chain), 'stream')}: " + " -> ".join(info["chain"]))
    echo(f"  {_n(info['files'], 'file')}, next file id {held.next_id}"
         + (f", encrypted with key {info['key_id']}" if info["encrypted"] else ""))
    if pending:
        echo(f"  an interrupted apply was pending: completed now, DEST holds stream {info['rolled_forward']}")
    else:
        echo("  no interrupted apply pending")


# -- store: receive --store, send/verify STORE, ls --------------------------------------------

def _utc(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))


def _relay_store(store, stream_id, output, chain: bool = False) -> None:
    from rawsend.store import send_chain_from_store, send_from_store
    from rawsend.stream.writer import fd_writer

    started = time.monotonic()
    with _output(output, "send") as out_fd:
        if chain:
            entries = send_chain_from_store(store, stream_id, fd_writer(out_fd))
        else:
            entries = [send_from_store(store, stream_id, fd_writer(out_fd))]
    what = (f"the chain of {_n(len(entries), 'stream')} ending at stream {entries[-1].stream_id}" if chain
            else f"stream {entries[-1].stream_id}")
    _note(f"relayed {what} from store {store}: {_human(sum(e.stored_bytes for e in entries))} as stored "
          f"({_human(sum(e.logical_bytes for e in entries))} of data) in {time.monotonic() - started:.2f} s")


def _receive_store(store, input_path, limits, progress) -> None:
    from rawsend.progress import Progress, counted, stream_size
    from rawsend.store import receive_into_store

    from rawsend.stream.chain import ChainReader, starts_chain

    started = time.monotonic()
    with _open_input(input_path) as stream, _on_interrupt(f"nothing was stored: {store} is as it was"):
        is_chain, stream = starts_chain(stream)
        bar = Progress(progress, "receive", total=stream_size(stream), input_fd=stream.fileno())
        try:
            if is_chain:  # each member stored as if received alone, each with its summary
                from rawsend.store.receive import receive_chain_into_store
                receive_chain_into_store(ChainReader(counted(stream, bar)), store, limits=limits,
                                         on_member=lambda member, receipt: _stored_note(receipt, started))
                return
            receipt = receive_into_store(counted(stream, bar), store, limits=limits)
        finally:
            bar.close()
    _stored_note(receipt, started)


def _stored_note(receipt, started: float) -> None:
    e = receipt.entry
    if not receipt.stored:
        _note(f"stream {e.stream_id} is already in store {receipt.store} with identical bytes; nothing stored")
        return
    _note(f"stored stream {e.stream_id} in {receipt.store}: {_n(e.records, 'record')}, "
          f"{_human(e.logical_bytes)} of data "
         f"as {_human(e.stored_bytes)}, {'encrypted, key id ' + e.key_id if e.encrypted else 'not encrypted'}"
         f" in {time.monotonic() - started:.2f} s"
         + (f"; {receipt.unchecked_extents} LZO extents stored without a decode check (install rawsend[lzo]"
            " to check them)" if receipt.unchecked_extents else "")
         + ("; names, links and the tree rules are sealed and were not checked (verify STORE --key-file"
            " checks them)" if e.encrypted else ""))
    if receipt.base_problem:
        _warn(f"stream {e.stream_id} is incremental and {receipt.base_problem}: it cannot be restored from"
              " this store until its base is received into it")


def _verify_store(store, stream_id, key_files) -> None:
    from rawsend.store import verify_store

    checked, failed = 0, []
    for verdict in verify_store(store, stream_id, _load_keyring(key_files)):
        checked += 1
        if not verdict.ok:
            errors = [e for e in (verdict.error, verdict.chain_error) if e is not None]
            failed.append(errors[0])
            for error in errors:
                _err(str(error))
            continue
        e, stats = verdict.entry, verdict.stats
        files = e.files if e.encrypted and not stats.authenticated else stats.files
        summary = (f"{_n(stats.records, 'record')}, {_n(files, 'file')}, {_human(stats.logical_bytes)} logical, "
                   f"{_human(stats.stream_bytes)} stored")
        _result(f"{e.stream_id}: {_verdict(stats, summary)}")
    if failed:
        _err(f"{len(failed)} of {_n(checked, 'stored stream')} failed verification")
        sys.exit(failed[0].exit_code)
    if not checked:
        _result("the store holds no stream")


@main.command("ls")
@with_verbosity
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per stream (its index entry) per line.")
@click.option("--key-file", "key_files", multiple=True, type=click.Path(readable=False),
              help="Key of encrypted streams, to show their labels (repeatable); without it they show as sealed.")
def ls(store, as_json, key_files):
    """List the streams of STORE, oldest received first, with their labels (send --label); no key needed
    but for the labels of encrypted streams."""
    import dataclasses

    from rawsend.labels import Found, json_fields, read_label, shown
    from rawsend.store import Store
    from rawsend.store.chains import LOOP, Chains, describe

    keyring = _load_keyring(key_files)
    damaged = []
    opened = Store.open(store)
    entries = opened.entries(damaged)
    chains, loops = Chains(entries), set()
    for e in entries:
        chain = chains.of(e.stream_id)
        if chain.broken is not None and chain.broken.kind == LOOP and chain.broken not in loops:
            loops.add(chain.broken)  # said once per loop; a missing base is no damage: it may come later
            damaged.append(describe(e.stream_id, chain.broken))
        parent_id = chains.parent_id(e.stream_id)
        try:
            with opened.open_stream(e.stream_id) as f:
                found = read_label(f, keyring)
        except RawsendError as error:  # the entry is still listed; the error follows the list
            error.detail = f"stored stream {e.stream_id}: its label: {error.detail}"
            damaged.append(error)
            found = Found(unreadable=True)
        if as_json:
            echo(json_line({**dataclasses.asdict(e), "parent_id": parent_id, "chain_length": chain.length,
                            **json_fields(found)}, sort_keys=True))
            continue
        mix = ",".join(f"{name}:{n}" for name, n in e.compression.items()) or "no-extents"
        crypt = f"encrypted {e.cipher} key {e.key_id}" if e.encrypted else "not-encrypted"
        echo(f"{e.stream_id}  {_utc(e.received_ns)}  {_human(e.logical_bytes)} logical  "
             f"{_human(e.stored_bytes)} stored  {_n(e.files, 'file')}  {mix}  {crypt}  parent {parent_id or '-'}  "
             f"chain {'broken' if chain.length is None else chain.length}  {shown(found)}")
    for error in damaged:
        _err(str(error))
    if damaged:
        sys.exit(damaged[0].exit_code)


@main.command("rm")
@with_verbosity
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.argument("ids", nargs=-1, required=True)
@click.option("-n", "--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
def rm(store, ids, dry_run):
    """Remove the streams IDS (unique id prefixes, as ls shows) from STORE.

    Each stream goes atomically: it is listed, or it is gone with its file.  Refused, removing
    nothing, while another process is receiving into STORE, or when a stream that stays needs one
    of them as a base.
    """
    from rawsend.store import Store
    from rawsend.store.removal import plan_rm

    with Store.open(store) as st, st.locked_unless_busy():
        _remove(st, plan_rm(st, list(ids)), dry_run)


@main.command("prune")
@with_verbosity
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--keep-last", "keep_last", type=click.IntRange(min=1), required=True, metavar="N",
              help="Keep the N newest streams (as ls orders them) and every base they need.")
@click.option("-n", "--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
def prune(store, keep_last, dry_run):
    """Remove every stream of STORE but the N newest and the bases those need (restic's
    forget --keep-last).

    Each stream goes atomically, a stream before its bases.  Refused, removing nothing, while
    another process is receiving into STORE or when an index entry is damaged.
    """
    from rawsend.store import Store
    from rawsend.store.removal import plan_prune

    with Store.open(store) as st, st.locked_unless_busy():
        plan = plan_prune(st, keep_last)
        for base, needer in plan.kept_for.items():
            _result(f"kept {base}  base of kept stream {needer}")
        _remove(st, plan, dry_run)
    kept = _n(len(plan.newest), "newest stream") + (f" and {_n(len(plan.kept_for), 'base')} they need"
                                                    if plan.kept_for else "")
    removed = f"{_n(len(plan.remove), 'stream')} ({_human(sum(e.stored_bytes for e in plan.remove))} stored)"
    _note(f"would keep {kept}; would remove {removed}" if dry_run else f"kept {kept}; removed {removed}")


def _remove(st, plan, dry_run: bool) -> None:
    from rawsend.store.removal import carry_out

    if dry_run:
        for entry in plan.remove:
            _result(f"would remove {entry.stream_id}  {_human(entry.stored_bytes)} stored")
        return
    carry_out(st, plan, lambda entry: _result(f"removed {entry.stream_id}  {_human(entry.stored_bytes)} stored"))


# -- list ---------------------------------------------------------------------------------------

@main.command("list")
@with_verbosity
@stream_input
@click.option("-l", "--long", "long_format", is_flag=True, help="Mode, uid/gid, size and mtime (UTC) too, as tar -tv.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per path.")
@click.option("--key-file", "key_files", multiple=True, type=click.Path(readable=False),
              help="Key of an encrypted stream: its names are sealed without it.")
@click.option("--stream", "stream_id", default=None,
              help="When given a store: the stream to list (a unique prefix of its id; default: the newest).")
def list_(stream_file, long_format, as_json, key_files, stream_id):
    """List the paths in a stream (STREAM or -f FILE; - or none is stdin), one per line, as tar -t.

    Given a store directory, list one of its streams (--stream).  Each record is checked as it
    is read; a damaged stream ends the listing with its error.
    """
    from rawsend.errors import KeyMissing
    from rawsend.listing import Paths, json_entry, long_line, shown
    from rawsend.pipeline import NullSink, receive as do_receive
    from rawsend.stream.records import Create, Header, Link

    keyring = _load_keyring(key_files)
    paths = Paths()

    def show(raw, rec):
        if isinstance(rec, Header) and rec.encrypted and keyring is None:
            raise KeyMissing(f"its names are sealed; it needs key id {rec.key_id.hex()}", record=0, offset=raw.offset,
                             hint="pass --key-file with that key ('rawsend verify' checks it without one)")
        if not isinstance(rec, (Create, Link)):
            return
        path = paths.of(rec)
        target = paths.file(rec.file_id) if isinstance(rec, Link) else None
        if as_json:
            echo(json_entry(path, rec, target))
        elif long_format:
            echo(long_line(path, rec, target))
        else:
            echo(shown(path, rec) + (" link to " + shown(target, rec) if target is not None else ""))

    with _open_stream_or_stored(stream_file, stream_id) as stream:
        do_receive(stream, NullSink(), keyring=keyring, require_key=False, on_record=show)


def _open_stream_or_stored(path: str, stream_id: str | None):
    """A stream file, stdin, or one stream of the store at path."""
    if path != "-" and os.path.isdir(path):
        from rawsend.store import Store
        store = Store.open(path)
        entry = store.find(stream_id)
        return _open_input(str(store.stream_path(entry.stream_id)))
    if stream_id is not None:
        raise click.UsageError("--stream applies only to a store")
    return _open_input(path)


# -- dump / verify ------------------------------------------------------------------------------

@main.command()
@with_verbosity
@stream_input
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--key-file", "key_files", multiple=True, type=click.Path(readable=False),
              help="Key to show the names inside an encrypted stream.")
def dump(stream_file, as_json, key_files):
    """Print the header and one line per record of a stream (STREAM or -f FILE; - or none is stdin)."""
    from rawsend.dump import Dumper, dump_stream

    dumper = Dumper()
    fmt = dumper.json_line if as_json else dumper.line

    def show(raw, rec):
        echo(fmt(raw, rec))

    with _open_input(stream_file) as stream:
        dump_stream(stream, show, _load_keyring(key_files))


@main.command()
@with_verbosity
@stream_input
@click.option("--key-file", "key_files", multiple=True, type=click.Path(readable=False),
              help="Authenticate an encrypted stream with this key.")
@click.option("--stream", "stream_id", default=None,
              help="When given a store: check only this stream (a unique prefix of its id).")
@click.option("--signer", "signers", multiple=True, type=click.Path(readable=False),
              help="Public signing key (repeatable: any of them): STREAM_FILE.minisig must be its signature.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when a terminal and the stream is not a pipe).")
def verify(stream_file, key_files, stream_id, signers, progress):
    """Check a stream's framing, every CRC, the digest and END; decode every payload.

    The stream is STREAM or -f FILE (- or none is stdin).  Given a store directory, check
    every stored stream (no key needed).
    """
    from rawsend.pipeline import NullSink, receive as do_receive
    from rawsend.progress import Progress, counted, stream_size

    if signers:
        _verify_signed(stream_file, signers, key_files, stream_id)
        return
    if stream_file != "-" and os.path.isdir(stream_file):
        _verify_store(stream_file, stream_id, key_files)
        return
    if stream_id is not None:
        raise click.UsageError("--stream applies only to a store")
    with _open_input(stream_file) as stream:
        bar = Progress(progress, "verify", total=stream_size(stream), input_fd=stream.fileno())
        try:
            stats = do_receive(counted(stream, bar), NullSink(), keyring=_load_keyring(key_files),
                               require_key=False, on_record=_Announcer(err=False).record if _verbosity >= 1 else None)
        finally:
            bar.close()
    sealed = stats.encrypted and not stats.authenticated  # names and counts are inside sealed records
    files = "unknown files and dirs (sealed)" if sealed else f"{_n(stats.files, 'file')}, {_n(stats.dirs, 'dir')}"
    summary = (f"{_n(stats.records, 'record')}, {files}, "
               f"{_human(stats.logical_bytes)} logical, {_human(stats.stream_bytes)} stream")
    _result(_verdict(stats, summary))


def _verdict(stats, summary: str) -> str:
    """What verify says of one stream: good, and whether that includes authenticity."""
    if stats.encrypted and not stats.authenticated:
        return (f"intact, NOT authenticated (encrypted; no key given; names, links and the tree rules"
                f" are sealed and were not checked): {summary}")
    if stats.encrypted:
        return f"OK, authenticated: {summary}"
    return f"OK: {summary}"


# -- keygen / rekey -----------------------------------------------------------------------------

@main.command()
@with_verbosity
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Create this key file (mode 0600; never overwrites). Default: stdout.")
@click.option("--sign", "signing", is_flag=True,
              help="Make an Ed25519 signing key pair instead (minisign format): -o NAME and NAME.pub.")
def keygen(output, signing):
    """Make a new 256-bit key and print its key id on stderr."""
    from rawsend.codecs.keys import format_key, new_key, write_key_file

    if signing:
        _keygen_sign(output)
        return
    key = new_key()
    if output:
        write_key_file(output, key)
    else:
        sys.stdout.buffer.write(format_key(key.secret))
        sys.stdout.buffer.flush()
    _note(f"key id {key.key_id_hex}" + (f" written to {output}" if output else ""))


def _keygen_sign(output) -> None:
    from rawsend.codecs import signing

    if not output:
        raise click.UsageError("keygen --sign needs -o NAME: it writes the secret key NAME and the public key NAME.pub")
    secret = signing.new_secret_key()
    sk_path, pk_path = signing.write_key_pair(output, secret)
    _err(f"signing key id {secret.key_id_hex}: secret key {sk_path} (mode 0600, not encrypted: keep it private),"
         f" public key {pk_path}")


@main.command("sign")
@click.argument("stream_file", type=click.Path(dir_okay=False, readable=False))
@click.option("-k", "--key", "key_path", required=True, type=click.Path(readable=False),
              help="Secret signing key (from keygen --sign, or minisign -G -W).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the signature here (default: STREAM_FILE.minisig).")
def sign(stream_file, key_path, output):
    """Check the stream file STREAM_FILE, then sign every byte of it (a minisign .minisig)."""
    from rawsend.codecs import signing

    if stream_file == "-":
        raise click.UsageError("sign needs a stream file: its signature goes beside it")
    secret = signing.load_secret_key(key_path, warn=_warn)
    output = output or stream_file + ".minisig"
    hashed, seen = _check_hashed(stream_file, ())
    comment = signing.trusted_comment(os.path.basename(stream_file), seen["header"].stream_id,
                                      seen["end"].digest, hashed.size)
    signing.write_signature(output, signing.signature_file(secret, hashed.digest(), comment))
    _err(f"signed {stream_file} (stream {seen['header'].stream_id.hex()}, {hashed.size} bytes) with key id"
         f" {secret.key_id_hex}: {output}")


def _check_hashed(stream_file, key_files, on_damage=None):
    """The usual verify of a stream file, hashing every byte it reads; then the HEADER and END it found."""
    from rawsend.codecs.signing import HashingReader
    from rawsend.errors import DamagedInput
    from rawsend.pipeline import NullSink, ReceiveStats, deliver
    from rawsend.stream.checked import CheckedReader, EndEvent, HeaderEvent

    seen = {"header": None, "end": None, "stats": ReceiveStats()}
    with _open_input(stream_file) as stream:
        hashed = HashingReader(stream)
        reader = CheckedReader(hashed, _load_keyring(key_files), require_key=False)
        try:
            for event in deliver(reader, NullSink(), seen["stats"]):
                if type(event) is HeaderEvent:
                    seen["header"] = event.header
                elif type(event) is EndEvent:
                    seen["end"] = event.end
        except DamagedInput:
            if on_damage is not None:  # a signature mismatch says more than the first damage found
                hashed.drain()
                on_damage(hashed, seen["header"])
            raise
        hashed.drain()
    return hashed, seen


def _verify_signed(stream_file, signers, key_files, stream_id) -> None:
    """verify --signer: the signature beside the stream names a given signer and covers every byte read."""
    from rawsend.codecs import signing

    if stream_file == "-" or os.path.isdir(stream_file) or stream_id is not None:
        raise click.UsageError("--signer needs a stream file: its signature is read from FILE.minisig beside it")
    keys = [signing.load_public_key(p) for p in signers]
    sig = signing.load_signature(stream_file + ".minisig")
    signer = signing.signer_of(sig, keys)

    def check(hashed, header):
        signing.check_file(sig, signer, hashed.digest(), hashed.size, stream_file,
                           header.stream_id if header is not None else None)

    hashed, seen = _check_hashed(stream_file, key_files, on_damage=check)
    check(hashed, seen["header"])
    echo(f"signed by key id {signer.key_id_hex} ({signer.path}): every byte is as signed"
         f" ({hashed.size} bytes, BLAKE2b-512); trusted comment: {quote(sig.trusted_comment)}")
    stats = seen["stats"]
    sealed = stats.encrypted and not stats.authenticated
    files = "unknown files and dirs (sealed)" if sealed else f"{stats.files} files, {stats.dirs} dirs"
    echo(_verdict(stats, f"{stats.records} records, {files}, {_human(stats.logical_bytes)} logical, "
                         f"{_human(stats.stream_bytes)} stream"))


@main.command()
@with_verbosity
@click.option("--from", "old_key", required=True, type=click.Path(readable=False),
              help="Key file the stream is sealed with now.")
@click.option("--to", "new_key", required=True, type=click.Path(readable=False),
              help="Key file to seal it with.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the new stream to FILE (replaced only on success; - is stdout) instead of stdout.")
@stream_input
@click.option("-i", "--input", "input_path", type=click.Path(allow_dash=True, readable=False), hidden=True)
def rekey(old_key, new_key, input_path, output, stream_file):
    """Reseal an encrypted stream (STREAM or -f FILE; - or none is stdin) under another key;
    extent payloads keep their bytes and encoding."""
    if input_path is not None:  # the older spelling of -f
        if stream_file != "-":
            raise click.UsageError("give the stream once: as STREAM, -f FILE or -i FILE")
        stream_file = input_path
    from rawsend.codecs.keys import load_key
    from rawsend.rekey import rekey as do_rekey
    from rawsend.stream.writer import fd_writer

    old, new = load_key(old_key, warn=_warn), load_key(new_key, warn=_warn)
    with _output(output, "rekey") as out_fd, _open_input(stream_file) as stream:
        stats = do_rekey(stream, fd_writer(out_fd), old, new)
    _note(f"rekeyed {_n(stats.records, 'record')} ({_n(stats.extents, 'extent')}, "
          f"{_human(stats.payload_bytes)} of payload"
          f" kept as it was) from key id {stats.old_key_id} to key id {stats.new_key_id}")
