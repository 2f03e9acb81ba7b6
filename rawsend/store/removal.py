"""Which streams rm and prune take out of a store, and in what order.

Neither removes a stream that a kept stream rests on (chains.py): rm refuses, naming both;
prune keeps it and says why.  Both remove a stream before its bases, so a removal cut off
half-way never leaves a stream whose base it took.  Call both holding ``locked_unless_busy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rawsend.errors import StoreError
from rawsend.store.chains import Chains
from rawsend.store.index import IndexEntry
from rawsend.store.layout import Store

NAMED = 3  # kept streams a refusal names before it counts the rest


@dataclass
class Plan:
    remove: list[IndexEntry]                                # in the order to remove them
    newest: list[str] = field(default_factory=list)         # prune: the newest streams it keeps, newest first
    kept_for: dict[str, str] = field(default_factory=dict)  # prune: a base kept -> a kept stream that needs it


def plan_rm(store: Store, prefixes: list[str]) -> Plan:
    """The streams the id prefixes name; a StoreError, before anything goes, when a kept stream needs one."""
    entries = store.entries()
    chosen: dict[str, IndexEntry] = {}
    for prefix in prefixes:
        entry = store.find(prefix)
        chosen.setdefault(entry.stream_id, entry)
    kept_entries = [e for e in entries if e.stream_id not in chosen]
    kept = [e.stream_id for e in kept_entries]
    blocked = [(sid, needers) for sid in chosen if (needers := store.needed_by_kept(sid, kept_entries))]
    if blocked:
        sid, needers = blocked[0]
        needing = {n for _, ns in blocked for n in ns}
        together = list(chosen) + [n for n in kept if n in needing]
        shown = ", ".join(needers[:NAMED]) + (f" and {len(needers) - NAMED} more" if len(needers) > NAMED else "")
        one = len(needers) == 1
        raise StoreError(f"stream {sid} is a base of kept {'stream' if one else 'streams'} {shown}:"
                         f" {'it' if one else 'they'} cannot be restored without it", path=str(store.root),
                         hint=f"remove them together ('rawsend rm STORE {' '.join(together)}'), or keep {sid};"
                              " nothing was removed")
    return Plan([chosen[sid] for sid in Chains(entries).order(chosen)])


def plan_prune(store: Store, keep_last: int) -> Plan:
    """Keep the ``keep_last`` newest streams (by the order ls shows) and every base they rest on."""
    entries = store.entries()
    newest = [e.stream_id for e in reversed(entries[max(0, len(entries) - keep_last):])] if keep_last > 0 else []
    chains = Chains(entries)
    needed = chains.needed_by(newest)  # each base named with the newest kept stream that needs it
    keep = set(newest) | set(needed)
    by_id = {e.stream_id: e for e in entries}
    gone = chains.order(e.stream_id for e in entries if e.stream_id not in keep)
    return Plan([by_id[sid] for sid in gone], newest,
                {e.stream_id: needed[e.stream_id] for e in entries if e.stream_id in needed})


def carry_out(store: Store, plan: Plan, on_removed) -> None:
    """Remove the plan's streams one by one, each atomically (Store.remove)."""
    for entry in plan.remove:
        store.remove(entry.stream_id)
        on_removed(entry)
