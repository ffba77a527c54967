"""Plain record classes: __init__, __repr__ and __eq__ from a class's annotated fields.

What dataclasses.dataclass gives these classes, without its cost at every gdb start:
importing dataclasses imports inspect, and its class processing is heavy (together ~10
ms of a ~0.8 s batch run). Here each class gets one small generated __init__ and shared
__repr__/__eq__.

    @record
    class Lookup:
        symbol: str
        found: bool | None = None
        notes: list = factory(list)   # a fresh list per record

Pure: never imports gdb.
"""
from __future__ import annotations


_MISSING = object()


class factory:
    """A default made anew for each record (dataclasses' default_factory)."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def record(cls):
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    seen_default = False
    for n in names:
        if n in defaults:
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: field {n!r} without a default follows one with a default")
    for n, value in defaults.items():
        if isinstance(value, factory):
            delattr(cls, n)  # the instance attribute always exists; the class one would be shared
    title = cls.__name__
    # One small generated __init__ per class (what dataclasses generate, without the rest of
    # their work): a record is made at every traced stop, so its __init__ is on the hot path.
    params, body, env = [], [], {"_MISSING": _MISSING}
    for n in names:
        if n not in defaults:
            params.append(n)
            body.append(f"    self.{n} = {n}")
        elif isinstance(defaults[n], factory):
            env[f"_make_{n}"] = defaults[n].make
            params.append(f"{n}=_MISSING")
            body.append(f"    self.{n} = _make_{n}() if {n} is _MISSING else {n}")
        else:
            env[f"_default_{n}"] = defaults[n]
            params.append(f"{n}=_default_{n}")
            body.append(f"    self.{n} = {n}")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(compile(source, f"<record {title}>", "exec"), env)
    __init__ = env["__init__"]
    __init__.__qualname__ = f"{title}.__init__"

    def __repr__(self):
        return f"{title}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    cls.__init__ = __init__
    cls.__repr__ = __repr__
    cls.__eq__ = __eq__
    cls.__hash__ = None  # mutable, as dataclasses make them
    cls.__record_fields__ = names
    return cls


def as_dict(obj) -> dict:
    """The record's fields as a new dict (shallow: values are not copied)."""
    return {n: getattr(obj, n) for n in obj.__record_fields__}
