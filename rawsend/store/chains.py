"""Chains in a store: from a stream through its index entry's parent links to its full stream.

ls, verify, rm and prune all ask here what a stream rests on.  A link counts only when the
store holds the stream it names with the END digest it names; otherwise the chain is broken
there.  Index entries are not trusted (names.py): hostile ones may link in a loop, so a walk
visits each stream at most once and ends after at most as many steps as the store has entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rawsend.errors import StoreDamaged
from rawsend.store.index import IndexEntry

MISSING = "missing"    # the base is not in the store
MISMATCH = "mismatch"  # the store's stream of that id has another END digest: it is not the base
LOOP = "loop"          # the links come back to a stream already in the chain

BASE_HINT = ("receive that base into the store, or send a full stream (send without --state, or with a new"
             " STATE) and receive it")
LOOP_HINT = ("rawsend never writes a loop: something else changed these index entries; remove the streams of"
             " the loop, and those that rest on them, with 'rawsend rm', and receive them again")


@dataclass(frozen=True)
class Break:
    """Where a chain breaks: the link of ``stream_id`` to ``base_id`` fails."""
    kind: str                # MISSING, MISMATCH or LOOP
    stream_id: str           # the stream whose parent link fails
    base_id: str             # the stream that link names
    want_digest: str = ""    # MISMATCH: the END digest the link names
    found_digest: str = ""   # MISMATCH: the END digest of the store's stream with that id


@dataclass(frozen=True)
class Chain:
    """What one stream rests on."""
    reach: int                 # streams of the chain the store holds, this one included, up to the break
    broken: Break | None = None

    @property
    def length(self) -> int | None:
        """Streams from this one to its full stream (1: a full stream); None when broken."""
        return None if self.broken else self.reach


class Chains:
    """The chains of a store's streams; each link is followed once, whatever is asked."""

    def __init__(self, entries: Iterable[IndexEntry]):
        self.entries = {e.stream_id: e for e in entries}
        self._chains: dict[str, Chain] = {}

    def base(self, stream_id: str) -> str | Break | None:
        """One link: the id of the base ``stream_id`` rests on, None for a full stream, or the Break."""
        parent = self.entries[stream_id].parent
        if parent is None:
            return None
        base = self.entries.get(parent.stream_id)
        if base is None:
            return Break(MISSING, stream_id, parent.stream_id)
        if base.end_digest != parent.end_digest:
            return Break(MISMATCH, stream_id, parent.stream_id, parent.end_digest, base.end_digest)
        return parent.stream_id

    def walk(self, stream_id: str, stop) -> tuple[list[str], str | Break | None]:
        """Follow the links from ``stream_id`` (a stream of the store) until a full stream, a break,
        a loop, or a stream in ``stop``.  The streams passed (``stream_id`` first, the one in ``stop``
        not included) and how it ended: None (a full stream), the Break, or the stream of ``stop``."""
        path: list[str] = []
        on_path: set[str] = set()
        at = stream_id
        while at not in stop:
            path.append(at)
            on_path.add(at)
            nxt = self.base(at)
            if not isinstance(nxt, str):
                return path, nxt
            if nxt in on_path:  # each step adds a new stream: at most len(entries) steps
                return path, Break(LOOP, at, nxt)
            at = nxt
        return path, at

    def of(self, stream_id: str) -> Chain:
        """The chain of a stream of the store."""
        path, end = self.walk(stream_id, self._chains)
        if isinstance(end, str):
            tail = self._chains[end]
        else:
            tail = Chain(0, end)
        loop_start = path.index(end.base_id) if isinstance(end, Break) and end.kind == LOOP else len(path)
        for i, sid in enumerate(path):
            self._chains[sid] = Chain(tail.reach + len(path) - min(i, loop_start), tail.broken)
        return self._chains[stream_id]

    def parent_id(self, stream_id: str) -> str | None:
        """The base its entry names, held or not; None for a full stream."""
        parent = self.entries[stream_id].parent
        return parent.stream_id if parent else None

    def through(self, base_id: str, streams: Iterable[str]) -> list[str]:
        """Those of ``streams`` whose chain passes through ``base_id`` (``base_id`` itself excluded)."""
        passes: dict[str, bool] = {base_id: True}
        found = []
        for sid in streams:
            path, end = self.walk(sid, passes)
            result = passes[end] if isinstance(end, str) else False
            for p in path:
                passes[p] = result
            if result and sid != base_id:
                found.append(sid)
        return found

    def needed_by(self, kept: Iterable[str]) -> dict[str, str]:
        """Every stream that a chain of ``kept`` passes through and that is not in ``kept`` itself,
        each with the first of ``kept`` found to need it."""
        kept = list(kept)
        keep = set(kept)
        needed: dict[str, str] = {}
        seen: set[str] = set()  # a stream already walked: its bases are known, each walked once
        for sid in kept:
            path, _ = self.walk(sid, seen)
            seen.update(path)
            for p in path:
                if p not in keep:
                    needed[p] = sid
        return needed

    def order(self, stream_ids: Iterable[str]) -> list[str]:
        """``stream_ids`` with each stream before its bases: the order to remove them in, so that a
        removal cut off never leaves a stream whose base it removed."""
        return sorted(stream_ids, key=lambda sid: -self.of(sid).reach)


def describe(stream_id: str, br: Break) -> StoreDamaged:
    """The error for a stream whose chain is broken at ``br``."""
    where = "" if br.stream_id == stream_id else f" (the base of stream {br.stream_id}, which it rests on)"
    if br.kind == MISSING:
        return StoreDamaged(f"stream {stream_id} cannot be restored from this store: its chain needs base"
                            f" {br.base_id}{where}, which is not in the store", hint=BASE_HINT)
    if br.kind == MISMATCH:
        return StoreDamaged(f"stream {stream_id} cannot be restored from this store: its chain needs base"
                            f" {br.base_id}{where} with END digest {br.want_digest[:16]}..., and the store's"
                            f" stream {br.base_id} has END digest {br.found_digest[:16]}...: it is another stream",
                            hint=BASE_HINT)
    return StoreDamaged(f"stream {stream_id}: the parent links of its chain form a loop (stream {br.stream_id}"
                        f" names base {br.base_id}, which is already in the chain)", hint=LOOP_HINT)
