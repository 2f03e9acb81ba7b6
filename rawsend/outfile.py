"""-o FILE made atomic: the stream goes to a temporary file beside FILE, renamed over it
only after the last byte is flushed, so an interrupted or failed command leaves FILE as it was.

A FILE that exists and is not a regular file (a FIFO, /dev/null, a tape) is written in place:
renaming over it would replace the device, not write to it.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rawsend.errors import OutputError


def _in_place(path: str) -> bool:
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise OutputError(e.strerror, path=path) from None


@contextmanager
def atomic_output(path: str, tag: str) -> Iterator[int]:
    """Yield a writable fd; on a normal exit FILE holds exactly what was written, else it is untouched."""
    if _in_place(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise OutputError(e.strerror, path=path) from None
        try:
            yield fd
        finally:
            os.close(fd)
        return
    target = Path(path)
    temp = str(target.parent / f".{target.name}.{tag}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise OutputError(e.strerror, path=path) from None
    done = False
    try:
        yield fd
        try:
            os.fsync(fd)
            os.rename(temp, path)
        except OSError as e:
            raise OutputError(e.strerror, path=path) from None
        done = True
    finally:
        os.close(fd)
        if not done:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
