"""Cheap constructors for the event model's attrs classes on the decoder's hot path.

An attrs ``@frozen`` class's generated ``__init__`` takes keywords, fills defaults and sets each
slot through ``object.__setattr__``; for the ~10 objects built per mutation that is a large part
of the decoding time. :func:`slot_constructor` builds a plain function that allocates the object
and fills *every* slot through the slot descriptors directly: the result is indistinguishable
from one built by ``__init__`` (same class, same slot values; equality, hashing, ``repr`` and
pickling are attrs' own).

That is only equivalent because these classes have no validators, converters, ``__attrs_pre_init__``
or ``__attrs_post_init__``, and every field is given a value. :func:`slot_constructor` checks that
when it is built (at import) and refuses otherwise, so a later change to the event model (a
validator on ``Cell``, say) fails loudly here instead of being silently bypassed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import attrs

from cdc_core.events import Cell, ChangeEvent, ComplexChange, Deletion, ElementChange, Liveness
from cdc_core.positions import Position

__all__ = [
    "CELL_FIELDS",
    "new_cell",
    "new_element",
    "new_event",
    "new_liveness",
    "new_position",
    "new_uuid",
    "slot_constructor",
    "slot_setters",
]


def slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot descriptors' ``__set__`` of the fields ``names`` (all of them) of ``cls``, after
    checking that filling them on ``object.__new__(cls)`` is the same as calling ``cls(...)``
    (for code that inlines the construction, like the compiled row decoders)."""
    if not attrs.has(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a slotted attrs class")
    fields = attrs.fields(cls)
    if sorted(names) != sorted(f.name for f in fields):
        raise TypeError(f"{cls.__name__}: the constructor must set exactly its fields {[f.name for f in fields]}")
    for f in fields:
        if f.validator is not None or f.converter is not None:
            raise TypeError(f"{cls.__name__}.{f.name} has a validator or converter: build it with its __init__")
    for hook in ("__attrs_pre_init__", "__attrs_post_init__", "__attrs_init__"):
        if hasattr(cls, hook):
            raise TypeError(f"{cls.__name__} defines {hook}: build it with its __init__")
    return tuple(cls.__dict__[name].__set__ for name in names)


def slot_constructor(cls: type, names: tuple[str, ...]) -> Callable[..., Any]:
    """A function ``f(*values)`` returning a ``cls`` whose fields ``names`` (all of them, in this
    order) hold ``values``; equivalent to ``cls(**dict(zip(names, values)))``."""
    setters = slot_setters(cls, names)
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def build({', '.join(f'a{i}' for i in range(len(names)))}):", "    o = _new(_cls)"]
    for i, setter in enumerate(setters):
        namespace[f"_set{i}"] = setter
        lines.append(f"    _set{i}(o, a{i})")
    lines.append("    return o")
    exec(compile("\n".join(lines), f"<slot_constructor {cls.__name__}>", "exec"), namespace)  # the text is built from fixed pieces
    build: Callable[..., Any] = namespace["build"]
    return build


CELL_FIELDS = ("timestamp", "value", "tombstone", "ttl", "local_deletion_time")
#: ``new_cell(timestamp, value, tombstone, ttl, local_deletion_time)``
new_cell: Callable[[int, Any, bool, int | None, int | None], Cell] = slot_constructor(Cell, CELL_FIELDS)
#: ``new_liveness(timestamp, ttl, local_deletion_time)``
new_liveness: Callable[[int, int | None, int | None], Liveness] = slot_constructor(Liveness, ("timestamp", "ttl", "local_deletion_time"))
#: ``new_deletion(timestamp, local_deletion_time)``
new_deletion: Callable[[int, int], Deletion] = slot_constructor(Deletion, ("timestamp", "local_deletion_time"))
#: ``new_complex(deletion, elements)``
new_complex: Callable[[Deletion | None, tuple[ElementChange, ...]], ComplexChange] = slot_constructor(
    ComplexChange, ("deletion", "elements")
)
#: ``new_element(path, cell)``
new_element: Callable[[Any, Cell], ElementChange] = slot_constructor(ElementChange, ("path", "cell"))
#: ``new_position(node, segment_id, offset, index)``
new_position: Callable[[str, int, int, int], Position] = slot_constructor(Position, ("node", "segment_id", "offset", "index"))
#: ``new_event(position, schema, kind, key, static, liveness, row_deletion, partition_deletion,
#: range_deletion, cells)``
new_event: Callable[..., ChangeEvent] = slot_constructor(
    ChangeEvent,
    ("position", "schema", "kind", "key", "static", "liveness", "row_deletion", "partition_deletion", "range_deletion", "cells"),
)

_UUID_INT = uuid.UUID.__dict__["int"].__set__
_UUID_SAFE = uuid.UUID.__dict__["is_safe"].__set__
_UNKNOWN = uuid.SafeUUID.unknown
_new = object.__new__
_UUID = uuid.UUID
_from_bytes = int.from_bytes


def new_uuid(b: bytes) -> uuid.UUID:
    """``uuid.UUID(bytes=b)`` for exactly 16 bytes, without its argument checks (the caller has
    checked the length); the same object state as the stdlib's own ``__setstate__`` produces."""
    u = _new(_UUID)
    _UUID_INT(u, _from_bytes(b, "big"))
    _UUID_SAFE(u, _UNKNOWN)
    return u
