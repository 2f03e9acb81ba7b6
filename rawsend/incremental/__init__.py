"""Sender-side state for incremental sends: what was sent, and what changed since.

- ``state``: the STATE database (SQLite): streams sent from one SRC, their manifests, the
  per-STATE secret, the persistent file ids; opened, locked, committed, pruned.
- ``manifest``: the per-inode ``Entry`` and ``scan()``, which walks SRC without following
  symlinks and gives every inode its persistent file id.
- ``digest``: keyed digests of extents, xattr values and symlink targets.
- ``diff``: the ordered change operations between a parent manifest and a scan, and the
  ``ExtentMatcher`` that picks which extents of a re-read file are sent.

A send with STATE runs::

    with State.open(state_path, src) as st:
        parent = st.pick_parent(prefix)               # None: send a full stream
        old = st.manifest(parent) if parent else {}
        ids = st.file_ids(old)
        now = scan(src, ids, st.digester)
        plan = diff(old, now, parent_started_ns=parent.started_ns if parent else 0)
        rec = st.begin(ids, parent, now.started_ns)
        ... emit plan.ops; for each DataChanged read the file, digest each extent with
        st.digester.extent(data), send those ExtentMatcher.unchanged() refuses ...
        rec.add(plan.entry(file_id, extents)) for every file id in plan.entries
        ... write END, flush ...
        rec.commit(stream_id, end_digest, keep=10)

spec/incremental.md has the design notes.
"""
