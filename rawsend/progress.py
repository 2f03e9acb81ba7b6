"""Progress on stderr: bytes done and total, rate and ETA, in the summaries' binary units.

Only a terminal gets a bar unless --progress asks (--no-progress never).  In `send | receive`
on one terminal the sender draws (it knows the tree's size from a stat pre-walk); a receive
or verify whose input is a pipe draws only when asked, so two bars never overwrite each
other.  A receive from a file or a store knows the stream's size and counts stream bytes.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time

DRAW_EVERY = 0.5  # seconds between redraws: cheap, and readable


def human(n: float) -> str:
    """Bytes in binary units, as every summary prints them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def default_on(input_fd: int | None = None) -> bool:
    """A bar by default: stderr is a terminal and, for a reader, its input is not a pipe."""
    if not os.isatty(2):
        return False
    if input_fd is None:
        return True
    try:
        return not stat.S_ISFIFO(os.fstat(input_fd).st_mode)
    except OSError:
        return False


class Progress:
    """Count bytes; draw `desc: done / total (pct) rate ETA` on stderr at most every DRAW_EVERY s."""

    def __init__(self, enabled: bool | None, desc: str, total: int | None = None, input_fd: int | None = None):
        self.enabled = default_on(input_fd) if enabled is None else enabled
        self.desc = desc
        self.total = total  # may be set later, from another thread (the pre-walk)
        self.done = 0
        self._started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    @property
    def active(self) -> bool:
        return self.enabled

    def __call__(self, n: int) -> None:
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._drawn >= DRAW_EVERY:
                self._drawn = now
                self._draw(now)

    def line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {human(self.done)}"
        total = self.total
        if total:
            text += f" / {human(total)} ({min(100, 100 * self.done // total)}%)"
        text += f" {human(rate)}/s"
        if total and rate > 0 and self.done < total:
            text += f" ETA {_clock((total - self.done) / rate)}"
        return text

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = " " * max(0, self._width - len(text))  # blank what a longer line left
        self._width = len(text)
        sys.stderr.write(f"\r{text}{pad}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")  # the summary line replaces the bar
            sys.stderr.flush()
        self.enabled = False


class CountingReader:
    """A stream file that tells a Progress how many bytes were read from it."""

    def __init__(self, stream, progress: Progress):
        self._stream = stream
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._progress(len(data))
        return data

    def readinto(self, buf) -> int:
        k = self._stream.readinto(buf)
        self._progress(k or 0)
        return k

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()


def counted(stream, progress: Progress):
    """``stream``, counted into ``progress`` when it draws a bar (else as it is: no cost per read)."""
    return CountingReader(stream, progress) if progress.enabled else stream


def stream_size(stream) -> int | None:
    """The stream's size when it is a regular file (a stream file, a stored stream), else None."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def prewalk_total(root: str, progress: Progress, excluded=None) -> None:
    """Sum the sizes of the regular files under root on a thread, then set progress.total.

    lstat only, no file opened: cheap next to reading the data, and the bar shows a rate meanwhile.
    """
    def walk() -> None:
        total = 0
        seen: set[tuple[int, int]] = set()  # a hard-linked file counts once, as send sends it once
        root_len = len(root.rstrip("/")) + 1
        for dirpath, dirnames, filenames in os.walk(root):
            if excluded is not None:
                rel = dirpath[root_len:]
                dirnames[:] = [d for d in dirnames if not excluded(f"{rel}/{d}" if rel else d)]
            for name in filenames:
                rel = dirpath[root_len:]
                if excluded is not None and excluded(f"{rel}/{name}" if rel else name):
                    continue
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    if st.st_nlink > 1:
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
        progress.total = total

    if progress.enabled:
        threading.Thread(target=walk, name="prewalk", daemon=True).start()
