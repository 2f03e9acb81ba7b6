"""The store: keeps streams verbatim (encrypted ones included), lists, verifies and sends them on.

spec/store-format.md is the normative text.  One module per job:
layout (the directory, the lock, atomic commits), index (index entries),
receive (checked, durable receiving), relay (byte-identical sending),
verify (rechecking from disk, with or without keys), chains (what a stream
rests on, through parent links), removal (what rm and prune take out).

The names below are imported from their module when first used (PEP 562), so that
``send DIR`` asking ``is_store`` does not load the store's receive, relay and verify.
"""

import importlib

_WHERE = {
    "UNKNOWN": "index", "IndexEntry": "index",
    "Store": "layout", "is_store": "layout",
    "StoreReceipt": "receive", "receive_into_store": "receive",
    "send_chain_from_store": "relay", "send_from_store": "relay",
    "StreamVerdict": "verify", "verify_store": "verify",
}

__all__ = ["UNKNOWN", "IndexEntry", "Store", "StoreReceipt", "StreamVerdict", "is_store",
           "receive_into_store", "send_chain_from_store", "send_from_store", "verify_store"]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
