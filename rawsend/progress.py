"""Progress on stderr when it is a terminal (tqdm draws it; rawsend only counts)."""

from __future__ import annotations

import os
import sys


class Progress:
    def __init__(self, enabled: bool | None, desc: str, total: int | None = None):
        if enabled is None:
            enabled = os.isatty(2)
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, leave=False, mininterval=0.5)

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
