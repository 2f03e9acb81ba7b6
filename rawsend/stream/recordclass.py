"""``@record``: a frozen dataclass with slots for the stream's records, cheap to define.

``dataclass(frozen=True, slots=True)`` compiles seven methods per class when the module is
imported (about 2.5 ms each record class, 45 ms for the registry, paid by every rawsend
process).  ``record`` makes the same kind of class: a dataclass with slots (so
``dataclasses.replace``, ``fields`` and ``asdict`` work), immutable, compared and hashed by
its fields, shown as dataclasses show it; only ``__init__`` is compiled per class, and
repr, eq, hash, the frozen setattr and the state for copy and pickle are shared by the
base class ``Frozen``.
"""

from __future__ import annotations

import dataclasses
from operator import attrgetter

_MISSING = dataclasses.MISSING


class Frozen:
    """Base of every ``@record`` class: what dataclass(frozen=True) would generate per class."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _values = staticmethod(lambda self: ())  # attrgetter of the fields, set by @record

    def __repr__(self) -> str:
        return (f"{type(self).__qualname__}("
                + ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self._values(self))) + ")")

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return self._values(self) == other._values(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values(self))

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def __getstate__(self):
        return self._values(self)

    def __setstate__(self, state):
        for name, value in zip(self._fields, state):
            object.__setattr__(self, name, value)


def record(cls):
    """Make ``cls`` (a subclass of Frozen, fields annotated as for dataclass) a frozen record class."""
    doc = cls.__doc__
    cls.__doc__ = doc or cls.__name__  # a docstring spares dataclass an inspect.signature
    cls = dataclasses.dataclass(slots=True, init=False, repr=False, eq=False)(cls)
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    if not doc:
        cls.__doc__ = f"{cls.__name__}({', '.join(names)})"
    cls._fields = names
    cls._values = staticmethod(attrgetter(*names)) if len(names) > 1 else \
        staticmethod(lambda self, _get=attrgetter(names[0]): (_get(self),))
    cls.__init__ = _init(cls, fields)
    return cls


def _init(cls, fields):
    """``__init__`` with the fields as parameters (defaults as declared), set through the slots."""
    env = {}
    params = []
    for f in fields:
        if f.default is not _MISSING:
            env[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
        else:
            params.append(f.name)
        env[f"_s_{f.name}"] = getattr(cls, f.name).__set__  # the slot's own setter: past the frozen __setattr__
    body = "\n".join(f"    _s_{f.name}(self, {f.name})" for f in fields)
    src = f"def __init__(self, {', '.join(params)}):\n{body}\n"
    exec(src, env)  # noqa: S102  (source built from the class's own field names)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = {**{f.name: f.type for f in fields}, "return": None}
    return init
