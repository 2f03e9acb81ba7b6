"""Path patterns for send --exclude and receive --include: one rule for both.

fnmatch, case-sensitive (``*`` also crosses ``/``), tried on the path relative to the tree's
root (``a/b.o``) and on the base name (``b.o``); a pattern that starts with ``/`` is tried on
the relative path only, anchored at the root.
"""

from __future__ import annotations

import fnmatch


def matches(patterns, rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.startswith("/"):
            if fnmatch.fnmatchcase(rel, pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(rel, pattern) or fnmatch.fnmatchcase(base, pattern):
            return True
    return False
