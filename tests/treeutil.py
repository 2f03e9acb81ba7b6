"""Snapshot a directory tree with everything a round trip must preserve, for comparisons."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def snapshot(root: Path, *, owners: bool = True, blocks: bool = True) -> dict:
    """path -> attributes; hard-link groups as sorted path lists."""
    root = Path(root)
    out: dict = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(dirnames + filenames) if dirpath == str(root) else sorted(dirnames + filenames):
            p = Path(dirpath, name) if name else Path(dirpath)
            rel = str(p.relative_to(root)) if name or p != root else "."
            st = os.lstat(p)
            entry = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                     "mtime_ns": st.st_mtime_ns}
            if owners:
                entry["owner"] = (st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                entry["size"] = st.st_size
                entry["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
                if blocks:
                    entry["blocks"] = st.st_blocks
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            try:
                names = sorted(os.listxattr(p, follow_symlinks=False))
                entry["xattrs"] = {n: os.getxattr(p, n, follow_symlinks=False) for n in names}
            except OSError:
                entry["xattrs"] = None
            out[rel] = entry
    out["<hardlink groups>"] = sorted(sorted(g) for g in inodes.values())
    return out


def diff(a: dict, b: dict) -> list[str]:
    """Human-readable differences between two snapshots (empty when identical)."""
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            lines.append(f"{key}: {a.get(key)!r} != {b.get(key)!r}")
    return lines
