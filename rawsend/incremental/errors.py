"""Errors about a STATE file.  All are LocalError (exit 3) but a bad --parent, a UsageError (exit 2).

They live here, beside the only code that raises them, and derive from the one tree in
rawsend/errors.py, so the CLI maps them like every other error.
"""

from __future__ import annotations

from rawsend.errors import LocalError, UsageError


class StateError(LocalError):
    """cannot use STATE: {detail}"""


class NotAState(StateError):
    """not a rawsend STATE file: {detail}"""

    hint = "give the path of a STATE written by 'rawsend send --state', or a path that does not exist yet"


class StateVersion(StateError):
    """STATE has an unsupported schema version: {detail}"""

    hint = "use the rawsend that wrote it, or start a new STATE (the next send is then a full stream)"


class StateOtherSource(StateError):
    """STATE belongs to another source: {detail}"""

    hint = "use one STATE per source directory"


class StateDamaged(StateError):
    """STATE is damaged: {detail}"""

    hint = "move it aside and send again with a new STATE (the next send is then a full stream)"


class StateLocked(StateError):
    """STATE is in use: {detail}"""

    hint = "wait for the other send to finish; a send that was killed leaves no lock behind"


class UnknownParent(UsageError):
    """no such parent stream in STATE: {detail}"""

    hint = "give a prefix of a stream id that STATE lists (or no --parent for the newest)"
