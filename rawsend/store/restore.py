"""``rawsend restore STORE DEST``: the chain ending at a stored stream, received into a new DEST.

It is ``send STORE --stream ID --chain | receive DEST`` in one process: a thread relays the
chain into a pipe, with every check of a relay, and the receiver reads it from the pipe with
every check of a receive (the key's included), so a restore trusts the store no more than a
receive from the network would.
"""

from __future__ import annotations

import os
import threading

from rawsend.errors import OutputClosed, RawsendError
from rawsend.fsutil import PIPE_SIZE, enlarge_pipe
from rawsend.sinks.chain import ChainResult, receive_chain
from rawsend.store.relay import send_chain_from_store
from rawsend.stream.chain import ChainReader
from rawsend.stream.writer import fd_writer


def restore(store_path, stream_id: str | None, dest, **receive_options) -> ChainResult:
    """Receive the chain ending at ``stream_id`` (None: the newest) into the new directory ``dest``."""
    read_fd, write_fd = os.pipe()
    enlarge_pipe(write_fd)
    relay_error: list[BaseException] = []

    def relay() -> None:
        try:
            send_chain_from_store(store_path, stream_id, fd_writer(write_fd))
        except OutputClosed:
            pass  # the receiver stopped reading: its own error says why
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            relay_error.append(e)
        finally:
            os.close(write_fd)

    thread = threading.Thread(target=relay, name="rawsend-restore-relay", daemon=True)
    thread.start()
    try:
        with os.fdopen(read_fd, "rb", buffering=PIPE_SIZE) as chain:
            try:
                return receive_chain(ChainReader(chain), dest, **receive_options)
            except RawsendError:
                if relay_error:  # the relay's error names the stored stream and its fault
                    raise relay_error[0] from None
                raise
            finally:
                chain.close()  # before the join: a relay blocked on a full pipe gets EPIPE
                thread.join()
    finally:
        if relay_error and not isinstance(relay_error[0], RawsendError):
            raise relay_error[0]
