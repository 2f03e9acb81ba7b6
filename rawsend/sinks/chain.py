"""Receiving a chain (spec/chain-format.md) into a new DEST, atomically.

The whole chain is built in a private directory inside DEST's state directory
(``.DEST.rawsend/restore-PID-TAG/tree``): member 1 as a full receive into it, every later
member applied to it as to any DEST. Only after the last member's END was checked is the tree
renamed to DEST and its state moved beside it, so DEST is absent (or the empty directory it
was) or holds the last member's tree; a receive killed before leaves a private directory of
a dead process, which the next receive into DEST removes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rawsend.errors import DestinationError, MalformedRecord, RawsendError
from rawsend.fsutil import fsync_dir, left_by_dead_process
from rawsend.pipeline import ReceiveStats, receive
from rawsend.sinks.dest import DestSink
from rawsend.sinks.deststate import Lock, make_state_dir, remove_leftovers, remove_unused_state_dir, state_dir
from rawsend.sinks.namespace import check_dest, check_parent, remove_tree
from rawsend.stream.chain import Member
from rawsend.stream.records import PREAMBLE, Feature

WORK_PREFIX = "restore-"


@dataclass
class ChainResult:
    stats: list[ReceiveStats] = field(default_factory=list)  # one per member
    warnings: list = field(default_factory=list)


def receive_chain(members: Iterable[Member], dest, *, keyring=None, limits=None,
                  on_member: Callable[[Member, ReceiveStats], None] | None = None, **options) -> ChainResult:
    """Receive every member of a chain; DEST appears, holding the last member's tree, only at the end."""
    dest = Path(os.path.abspath(dest))
    check_parent(dest.parent)
    check_dest(dest)
    sdir = state_dir(dest)
    made_dir = make_state_dir(sdir)
    result = ChainResult()
    with Lock(sdir):
        clean_stale_work(sdir)
        work = sdir / f"{WORK_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(work, 0o700)
        tree = work / "tree"
        try:
            before = None
            for member in members:
                sink = DestSink(tree, **{**options, "subvolume": False})  # applied in place: a directory
                checked = _MemberSink(sink, member, before)
                try:
                    stats = receive(member.input, checked, keyring=keyring, limits=limits)
                except RawsendError as e:
                    member.blame(e)
                    raise
                before = (checked.stream_id, checked.digest)
                result.stats.append(stats)
                result.warnings += sink.report.warnings
                if on_member is not None:
                    on_member(member, stats)
            move_into_place(tree, dest, sdir)
        except BaseException:
            remove_tree(work)
            if made_dir:
                remove_unused_state_dir(sdir)
            raise
        remove_tree(work)
    return result


def move_into_place(tree: Path, dest: Path, sdir: Path) -> None:
    """The tree first, then its state: killed between the two, DEST is complete but untracked
    (status says so), never tracked as a tree it does not hold."""
    try:
        os.rename(tree, dest)  # replaces DEST only when it is an empty directory
    except OSError as e:
        raise DestinationError(f"cannot move the received tree into place: {e.strerror}", path=str(dest),
                               hint="DEST must stay absent or empty while a chain is received") from None
    fsync_dir(dest.parent)
    built = state_dir(tree) / "state.db"
    if built.exists():  # member 1 was tracked (send --state), as every chain with more than one is
        remove_leftovers(sdir, ("stage-", "journal"))  # an earlier DEST's: not this DEST's any more
        os.rename(built, sdir / "state.db")
        fsync_dir(sdir)


def clean_stale_work(sdir: Path) -> None:
    """Remove the private directories of chain receives whose process is gone."""
    for p in sdir.iterdir():
        if p.name.startswith(WORK_PREFIX) and left_by_dead_process(p.name[len(WORK_PREFIX):]) \
                and p.is_dir() and not p.is_symlink():
            remove_tree(p)


class _MemberSink:
    """The sink of one member, which first checks the member's place in the chain: member 1 a
    full stream, every later one incremental with a BASE that names the member before it."""

    def __init__(self, sink: DestSink, member: Member, before: tuple[bytes, bytes] | None):
        self._sink = sink
        self._member = member
        self._before = before  # (stream id, END digest) of the member before, None for member 1
        self.stream_id = self.digest = b""

    def begin(self, header) -> None:
        incremental = bool(header.required_features & Feature.INCREMENTAL)
        if incremental != (self._before is not None):
            raise MalformedRecord("the first member of a chain must be a full stream" if incremental else
                                  "every member of a chain after the first must be an incremental stream",
                                  record=0, offset=PREAMBLE.size, hint=NOT_A_CHAIN)
        self.stream_id = header.stream_id
        self._sink.begin(header)

    def base(self, rec) -> None:
        if (rec.stream_id, rec.digest) != self._before:
            raise MalformedRecord(f"its base is stream {rec.stream_id.hex()}, not member {self._member.number - 1}"
                                  f" (stream {self._before[0].hex()})", hint=NOT_A_CHAIN)
        self._sink.base(rec)

    def end(self, end) -> None:
        self.digest = end.digest
        self._sink.end(end)

    def __getattr__(self, name):
        return getattr(self._sink, name)


NOT_A_CHAIN = "the members are not one chain in order: write it with 'rawsend send STORE --chain'"
