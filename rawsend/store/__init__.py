"""The store: keeps streams verbatim (encrypted ones included), lists, verifies and sends them on.

spec/store-format.md is the normative text.  One module per job:
layout (the directory, the lock, atomic commits), index (index entries),
receive (checked, durable receiving), relay (byte-identical sending),
verify (rechecking from disk, with or without keys), chains (what a stream
rests on, through parent links), removal (what rm and prune take out).
"""

from rawsend.store.index import UNKNOWN, IndexEntry
from rawsend.store.layout import Store, is_store
from rawsend.store.receive import StoreReceipt, receive_into_store
from rawsend.store.relay import send_chain_from_store, send_from_store
from rawsend.store.verify import StreamVerdict, verify_store

__all__ = ["UNKNOWN", "IndexEntry", "Store", "StoreReceipt", "StreamVerdict", "is_store",
           "receive_into_store", "send_chain_from_store", "send_from_store", "verify_store"]
