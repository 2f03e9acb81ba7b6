"""The identity a subvolume received from a stream is given, and by which its base is found.

btrfs files a received subvolume under its received_uuid (the UUID tree), and `btrfs send`
names a parent by it (the parent's received_uuid if set, else its uuid), so these two
functions decide which streams and subvolumes chain up.  Today both are the rawsend stream
id: a subvolume received from stream X has received_uuid X, and an incremental stream whose
BASE names stream X is applied to a snapshot of it.  A stream that says which btrfs
subvolume it was sent from (its uuid and ctransid) is given that identity here instead.
"""

from __future__ import annotations


def received_identity(header) -> tuple[bytes, int]:
    """(received_uuid, stransid) for the subvolume a stream with ``header`` builds."""
    return header.stream_id, 0


def base_identity(base) -> bytes:
    """The received_uuid of the subvolume an incremental stream's BASE record names."""
    return base.stream_id
