"""CQL types as parsed values, and the lossless JSON form of CQL values.

A column's type is written as a CQL-like type string that is self-contained (UDTs carry their
fields), e.g. ``map<text, frozen<list<int>>>`` or ``frozen<udt<ks.address>{street:text,zip:int}>``.
Events carry these strings in their table schema, so the JSON form of a value never needs type
tags of its own: the schema says how to read it back.

Python representation of values (the event model's, documented in docs/events.md):

============================  ====================================================
CQL                           Python
============================  ====================================================
ascii, text, varchar          str
tinyint … bigint, varint,     int
counter
decimal                       decimal.Decimal
float, double                 float
boolean                       bool
uuid, timeuuid                uuid.UUID
timestamp                     datetime.datetime (UTC, millisecond precision)
date                          datetime.date
time                          int (nanoseconds since midnight; Python's time has µs)
duration                      Duration(months, days, nanoseconds)
inet                          ipaddress.IPv4Address / IPv6Address
blob                          bytes
list, set, vector             tuple (Cassandra's order)
map                           frozendict (Cassandra's key order)
tuple                         tuple
udt                           frozendict of field name → value (missing fields: None)
============================  ====================================================
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import math
import uuid
from decimal import Decimal
from functools import lru_cache
from typing import Any

import attrs
from frozendict import frozendict

__all__ = [
    "CqlType",
    "Duration",
    "TypeParseError",
    "parse_type",
    "value_from_json",
    "value_to_json",
]

SCALAR_TYPES = frozenset(
    {
        "ascii",
        "text",
        "varchar",
        "int",
        "bigint",
        "smallint",
        "tinyint",
        "varint",
        "counter",
        "decimal",
        "float",
        "double",
        "boolean",
        "uuid",
        "timeuuid",
        "timestamp",
        "date",
        "time",
        "duration",
        "inet",
        "blob",
        "empty",
    }
)
COLLECTION_KINDS = frozenset({"list", "set", "map"})

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class TypeParseError(ValueError):
    """A type string does not follow the grammar."""


@attrs.frozen
class Duration:
    """CQL ``duration``: months, days and nanoseconds, kept apart as Cassandra does."""

    months: int
    days: int
    nanoseconds: int


@attrs.frozen
class CqlType:
    """A parsed CQL type.

    ``name`` is a scalar name or one of ``list set map tuple vector udt``. ``params`` are the
    element types; for ``udt`` they pair with ``field_names``; for ``vector`` ``dimension`` is set.
    """

    name: str
    params: tuple[CqlType, ...] = ()
    frozen: bool = False
    field_names: tuple[str, ...] = ()
    udt_name: str = ""
    dimension: int = 0

    @property
    def is_collection(self) -> bool:
        return self.name in COLLECTION_KINDS

    @property
    def is_multicell(self) -> bool:
        """True for non-frozen collections and UDTs: written element by element."""
        return not self.frozen and self.name in ("list", "set", "map", "udt")

    def __str__(self) -> str:
        if self.name in SCALAR_TYPES:
            text = self.name
        elif self.name == "udt":
            fields = ",".join(f"{n}:{t}" for n, t in zip(self.field_names, self.params, strict=True))
            text = f"udt<{self.udt_name}>{{{fields}}}"
        elif self.name == "vector":
            text = f"vector<{self.params[0]}, {self.dimension}>"
        else:
            text = f"{self.name}<{', '.join(str(p) for p in self.params)}>"
        return f"frozen<{text}>" if self.frozen and self.name != "tuple" else text


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> TypeParseError:
        return TypeParseError(f"{what} at character {self.pos} of type {self.text!r}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def word(self) -> str:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "_."):
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a name")
        return self.text[start : self.pos]

    def expect(self, char: str) -> None:
        self.skip_ws()
        if not self.text.startswith(char, self.pos):
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def peek(self, char: str) -> bool:
        self.skip_ws()
        return self.text.startswith(char, self.pos)

    def parse(self, frozen: bool = False) -> CqlType:
        name = self.word().lower()
        if name == "frozen":
            self.expect("<")
            inner = self.parse(frozen=True)
            self.expect(">")
            return inner
        if name in SCALAR_TYPES:
            return CqlType(name)
        if name in ("list", "set"):
            self.expect("<")
            elem = self.parse(frozen=True)
            self.expect(">")
            return CqlType(name, (elem,), frozen=frozen)
        if name == "map":
            self.expect("<")
            key = self.parse(frozen=True)
            self.expect(",")
            value = self.parse(frozen=True)
            self.expect(">")
            return CqlType(name, (key, value), frozen=frozen)
        if name == "tuple":
            self.expect("<")
            items = [self.parse(frozen=True)]
            while self.peek(","):
                self.expect(",")
                items.append(self.parse(frozen=True))
            self.expect(">")
            return CqlType(name, tuple(items), frozen=True)
        if name == "vector":
            self.expect("<")
            elem = self.parse(frozen=True)
            self.expect(",")
            dim = self.word()
            if not dim.isdigit():
                raise self.error("expected the vector dimension")
            self.expect(">")
            return CqlType(name, (elem,), frozen=True, dimension=int(dim))
        if name == "udt":
            self.expect("<")
            udt_name = self.word()
            self.expect(">")
            self.expect("{")
            names: list[str] = []
            types: list[CqlType] = []
            while not self.peek("}"):
                if names:
                    self.expect(",")
                names.append(self.word())
                self.expect(":")
                types.append(self.parse(frozen=True))
            self.expect("}")
            return CqlType("udt", tuple(types), frozen=frozen, field_names=tuple(names), udt_name=udt_name)
        raise self.error(f"unknown type {name!r}")


@lru_cache(maxsize=4096)
def parse_type(text: str) -> CqlType:
    """Parse a type string (cached: schemas repeat the same few strings)."""
    parser = _Parser(text)
    result = parser.parse()
    parser.skip_ws()
    if parser.pos != len(text):
        raise parser.error("unexpected trailing text")
    return result


# --- JSON form of values -----------------------------------------------------------------------
# Chosen to be exact: varint and decimal as strings (JSON numbers lose them in many readers),
# 64-bit integers as JSON integers, float specials as strings, bytes as base64, timestamps as
# epoch milliseconds.

_FLOAT_SPECIALS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def value_to_json(value: Any, typ: CqlType) -> Any:
    """The JSON-able form of ``value`` of type ``typ`` (None stays None)."""
    if value is None:
        return None
    name = typ.name
    if name in ("ascii", "text", "varchar", "int", "bigint", "smallint", "tinyint", "counter", "boolean", "time"):
        return value
    if name == "varint":
        return str(value)
    if name in ("float", "double"):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if name == "decimal":
        return str(value)
    if name in ("uuid", "timeuuid", "inet"):
        return str(value)
    if name == "timestamp":
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if name == "date":
        return value.isoformat()
    if name == "duration":
        return [value.months, value.days, value.nanoseconds]
    if name in ("blob", "empty"):
        return base64.b64encode(value).decode("ascii")
    if name in ("list", "set", "vector"):
        elem = typ.params[0]
        return [value_to_json(v, elem) for v in value]
    if name == "map":
        k_t, v_t = typ.params
        return [[value_to_json(k, k_t), value_to_json(v, v_t)] for k, v in value.items()]
    if name == "tuple":
        return [value_to_json(v, t) for v, t in zip(value, typ.params, strict=True)]
    if name == "udt":
        return {f: value_to_json(value.get(f), t) for f, t in zip(typ.field_names, typ.params, strict=True)}
    raise TypeError(f"no JSON form for CQL type {typ}")


def value_from_json(obj: Any, typ: CqlType) -> Any:
    """Inverse of :func:`value_to_json`."""
    if obj is None:
        return None
    name = typ.name
    if name in ("ascii", "text", "varchar"):
        return str(obj)
    if name in ("int", "bigint", "smallint", "tinyint", "varint", "counter", "time"):
        return int(obj)
    if name == "boolean":
        return bool(obj)
    if name in ("float", "double"):
        return _FLOAT_SPECIALS[obj] if isinstance(obj, str) else float(obj)
    if name == "decimal":
        return Decimal(obj)
    if name in ("uuid", "timeuuid"):
        return uuid.UUID(obj)
    if name == "inet":
        return ipaddress.ip_address(obj)
    if name == "timestamp":
        return _EPOCH + dt.timedelta(milliseconds=int(obj))
    if name == "date":
        return dt.date.fromisoformat(obj)
    if name == "duration":
        return Duration(int(obj[0]), int(obj[1]), int(obj[2]))
    if name in ("blob", "empty"):
        return base64.b64decode(obj)
    if name in ("list", "set", "vector"):
        elem = typ.params[0]
        return tuple(value_from_json(v, elem) for v in obj)
    if name == "map":
        k_t, v_t = typ.params
        return frozendict((value_from_json(k, k_t), value_from_json(v, v_t)) for k, v in obj)
    if name == "tuple":
        return tuple(value_from_json(v, t) for v, t in zip(obj, typ.params, strict=True))
    if name == "udt":
        return frozendict((f, value_from_json(obj.get(f), t)) for f, t in zip(typ.field_names, typ.params, strict=True))
    raise TypeError(f"no JSON form for CQL type {typ}")
