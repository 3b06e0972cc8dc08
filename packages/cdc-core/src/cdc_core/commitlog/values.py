"""CQL value bytes → the Python representation of :mod:`cdc_core.cqltypes` (format doc §7).

:func:`value_decoder` builds (and caches) one decoding function per type, so the hot path makes
no type dispatch. A decoder takes the complete value bytes (no length prefix).

An *empty* value (zero bytes, which Cassandra allows for every type) decodes to ``""`` or
``b""`` for the string and blob types and to ``None`` for the others, which have no Python
representation of "empty".

Counters: a cell of a counter column holds a counter *context* (§7.5); :func:`counter_value`
sums its shards. In the commitlog that is the writing node's new cumulative shard value.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any

from frozendict import frozendict

from cdc_core.commitlog.primitives import DecodeError, read_svint, read_uvint
from cdc_core.cqltypes import CqlType, Duration
from cdc_core.fastobj import new_uuid

__all__ = ["Decoder", "counter_value", "fixed_length", "path_decoder", "value_decoder"]

Decoder = Callable[[bytes], Any]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DATE = dt.date(1970, 1, 1)

_FIXED = {
    "boolean": 1,
    "int": 4,
    "bigint": 8,
    "float": 4,
    "double": 8,
    "uuid": 16,
    "timeuuid": 16,
    "timestamp": 8,
    "empty": 0,
}

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_U32 = struct.Struct(">I")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")


def fixed_length(typ: CqlType) -> int | None:
    """Storage length of a value of ``typ`` if fixed (written without a length prefix), else None."""
    if typ.is_multicell:
        return None
    n = _FIXED.get(typ.name)
    if n is not None:
        return n
    if typ.name == "vector":
        elem = fixed_length(typ.params[0])
        return None if elem is None else elem * typ.dimension
    return None


def _exact(size: int, unpack: Callable[[bytes], tuple[Any, ...]], name: str) -> Decoder:
    def decode(b: bytes) -> Any:
        if len(b) == size:
            return unpack(b)[0]
        if not b:
            return None
        raise DecodeError(f"{name} value of {len(b)} bytes (want {size})")

    return decode


def _text(b: bytes) -> str:
    return b.decode("utf-8") if b else ""


def _ascii(b: bytes) -> str:
    return b.decode("ascii") if b else ""


def _blob(b: bytes) -> bytes:
    return bytes(b)


def _boolean(b: bytes) -> bool | None:
    if len(b) == 1:
        return b[0] != 0
    if not b:
        return None
    raise DecodeError(f"boolean value of {len(b)} bytes")


def _varint(b: bytes) -> int | None:
    return int.from_bytes(b, "big", signed=True) if b else None


def _decimal(b: bytes) -> Decimal | None:
    if not b:
        return None
    if len(b) < 4:
        raise DecodeError(f"decimal value of {len(b)} bytes")
    scale = _I32.unpack_from(b)[0]
    unscaled = int.from_bytes(b[4:], "big", signed=True)
    digits = tuple(int(d) for d in str(abs(unscaled)))
    return Decimal((1 if unscaled < 0 else 0, digits, -scale))


def _uuid(b: bytes) -> uuid.UUID | None:
    if len(b) == 16:
        return new_uuid(b)
    if not b:
        return None
    raise DecodeError(f"uuid value of {len(b)} bytes")


def _timestamp(b: bytes) -> dt.datetime | int | None:
    if len(b) != 8:
        if not b:
            return None
        raise DecodeError(f"timestamp value of {len(b)} bytes")
    ms = int(_I64.unpack_from(b)[0])
    try:
        return _EPOCH + dt.timedelta(0, ms // 1000, (ms % 1000) * 1000)  # = milliseconds=ms, faster
    except OverflowError:
        return ms  # outside datetime's years 1..9999: kept as epoch milliseconds (documented)


def _date(b: bytes) -> dt.date | int | None:
    if len(b) != 4:
        if not b:
            return None
        raise DecodeError(f"date value of {len(b)} bytes")
    days = int(_U32.unpack_from(b)[0]) - (1 << 31)
    try:
        return _EPOCH_DATE + dt.timedelta(days=days)
    except OverflowError:
        return days  # outside datetime's range: kept as days since the epoch (documented)


def _time(b: bytes) -> int | None:
    if len(b) == 8:
        return int(_I64.unpack_from(b)[0])
    if not b:
        return None
    raise DecodeError(f"time value of {len(b)} bytes")


def _duration(b: bytes) -> Duration | None:
    if not b:
        return None
    months, pos = read_svint(b, 0)
    days, pos = read_svint(b, pos)
    nanos, pos = read_svint(b, pos)
    if pos != len(b):
        raise DecodeError("trailing bytes in a duration")
    return Duration(months, days, nanos)


def _inet(b: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if len(b) == 4:
        return ipaddress.IPv4Address(bytes(b))
    if len(b) == 16:
        return ipaddress.IPv6Address(bytes(b))
    if not b:
        return None
    raise DecodeError(f"inet value of {len(b)} bytes")


def counter_value(b: bytes) -> int | None:
    """Sum of the shard counts of a counter context (header int16 n, n int16 indexes, 32-byte shards).

    An 8-byte value (a plain long, as counters travel on the native protocol) is read as is.
    """
    if not b:
        return None
    if len(b) < 2:
        raise DecodeError("counter context shorter than its header")
    n = abs(_I16.unpack_from(b)[0])
    body = 2 + 2 * n
    if body > len(b) or (len(b) - body) % 32:
        if len(b) == 8 and n == 0:
            return int(_I64.unpack_from(b)[0])
        raise DecodeError(f"counter context of {len(b)} bytes with {n} header entries")
    total = 0
    for off in range(body + 24, len(b), 32):
        total += _I64.unpack_from(b, off)[0]
    return total


_SCALARS: dict[str, Decoder] = {
    "ascii": _ascii,
    "text": _text,
    "varchar": _text,
    "blob": _blob,
    "boolean": _boolean,
    "int": _exact(4, _I32.unpack, "int"),
    "bigint": _exact(8, _I64.unpack, "bigint"),
    "smallint": _exact(2, _I16.unpack, "smallint"),
    "tinyint": _exact(1, _I8.unpack, "tinyint"),
    "float": _exact(4, _F32.unpack, "float"),
    "double": _exact(8, _F64.unpack, "double"),
    "varint": _varint,
    "decimal": _decimal,
    "uuid": _uuid,
    "timeuuid": _uuid,
    "timestamp": _timestamp,
    "date": _date,
    "time": _time,
    "duration": _duration,
    "inet": _inet,
    "counter": counter_value,
    "empty": lambda b: b"",
}


def _elements(b: bytes, count_pairs: int) -> list[bytes | None]:
    """Frozen collection body: int32 count, then count (or 2×count) int32-length-prefixed items."""
    if len(b) < 4:
        raise DecodeError("collection value shorter than its count")
    n = _I32.unpack_from(b)[0]
    if n < 0:
        raise DecodeError(f"negative collection count {n}")
    items = n * count_pairs
    if items > len(b):
        raise DecodeError(f"collection count {n} larger than its value")
    out: list[bytes | None] = []
    pos = 4
    size = len(b)
    for _ in range(items):
        if pos + 4 > size:
            raise DecodeError("truncated collection element length")
        length = _I32.unpack_from(b, pos)[0]
        pos += 4
        if length < 0:
            out.append(None)
            continue
        end = pos + length
        if end > size:
            raise DecodeError("collection element runs past the value")
        out.append(b[pos:end])
        pos = end
    if pos != size:
        raise DecodeError("trailing bytes in a collection value")
    return out


def _fields(b: bytes, max_fields: int) -> list[bytes | None]:
    """Tuple/UDT body: int32 length (-1 = null) + bytes per field; trailing fields may be absent."""
    out: list[bytes | None] = []
    pos = 0
    size = len(b)
    while pos < size:
        if len(out) >= max_fields:
            raise DecodeError("more fields than the type has")
        if pos + 4 > size:
            raise DecodeError("truncated field length")
        length = _I32.unpack_from(b, pos)[0]
        pos += 4
        if length < 0:
            out.append(None)
            continue
        end = pos + length
        if end > size:
            raise DecodeError("field runs past the value")
        out.append(b[pos:end])
        pos = end
    out.extend([None] * (max_fields - len(out)))
    return out


def _opt(dec: Decoder) -> Callable[[bytes | None], Any]:
    return lambda b: None if b is None else dec(b)


@lru_cache(maxsize=1024)
def value_decoder(typ: CqlType) -> Decoder:
    """The decoder of a whole value of ``typ`` (frozen form for collections and UDTs)."""
    name = typ.name
    scalar = _SCALARS.get(name)
    if scalar is not None:
        return scalar
    if name in ("list", "set"):
        elem = _opt(value_decoder(typ.params[0]))

        def seq(b: bytes) -> tuple[Any, ...] | None:
            if not b:
                return None
            return tuple(elem(x) for x in _elements(b, 1))

        return seq
    if name == "map":
        key = _opt(value_decoder(typ.params[0]))
        val = _opt(value_decoder(typ.params[1]))

        def mapping(b: bytes) -> frozendict[Any, Any] | None:
            if not b:
                return None
            items = _elements(b, 2)
            return frozendict((key(items[i]), val(items[i + 1])) for i in range(0, len(items), 2))

        return mapping
    if name == "tuple":
        decs = [_opt(value_decoder(p)) for p in typ.params]

        def tup(b: bytes) -> tuple[Any, ...] | None:
            if not b:
                return None
            return tuple(d(x) for d, x in zip(decs, _fields(b, len(decs)), strict=True))

        return tup
    if name == "udt":
        decs = [_opt(value_decoder(p)) for p in typ.params]
        names = typ.field_names

        def udt(b: bytes) -> frozendict[str, Any] | None:
            if not b:
                return None
            return frozendict((n, d(x)) for n, d, x in zip(names, decs, _fields(b, len(decs)), strict=True))

        return udt
    if name == "vector":
        return _vector_decoder(typ)
    raise DecodeError(f"no decoder for CQL type {typ}")


def _vector_decoder(typ: CqlType) -> Decoder:
    elem_t = typ.params[0]
    dim = typ.dimension
    elem = value_decoder(elem_t)
    size = fixed_length(elem_t)
    if size is not None:
        if elem_t.name in ("float", "double", "int", "bigint"):
            fmt = struct.Struct(">" + {"float": "f", "double": "d", "int": "i", "bigint": "q"}[elem_t.name] * dim)

            def packed(b: bytes) -> tuple[Any, ...] | None:
                if len(b) == fmt.size:
                    return fmt.unpack(b)
                if not b:
                    return None
                raise DecodeError(f"vector value of {len(b)} bytes (want {fmt.size})")

            return packed
        total = size * dim

        def fixed(b: bytes) -> tuple[Any, ...] | None:
            if len(b) != total:
                if not b:
                    return None
                raise DecodeError(f"vector value of {len(b)} bytes (want {total})")
            return tuple(elem(b[i : i + size]) for i in range(0, total, size))

        return fixed

    def variable(b: bytes) -> tuple[Any, ...] | None:
        if not b:
            return None
        out = []
        pos = 0
        for _ in range(dim):
            n, pos = read_uvint(b, pos)
            end = pos + n
            if end > len(b):
                raise DecodeError("vector element runs past the value")
            out.append(elem(b[pos:end]))
            pos = end
        if pos != len(b):
            raise DecodeError("trailing bytes in a vector value")
        return tuple(out)

    return variable


def path_decoder(typ: CqlType) -> Decoder:
    """Decoder of a cell path of a non-frozen collection/UDT column (§6.11).

    list → timeuuid, set → element, map → key, UDT → field name (from its 2-byte position).
    """
    if typ.name == "list":
        return _uuid
    if typ.name in ("set", "map"):
        return value_decoder(typ.params[0])
    if typ.name == "udt":
        names = typ.field_names

        def field(b: bytes) -> str:
            if len(b) != 2:
                raise DecodeError(f"UDT cell path of {len(b)} bytes")
            idx = (b[0] << 8) | b[1]
            if idx >= len(names):
                raise DecodeError(f"UDT field position {idx} beyond the {len(names)} known fields")
            return names[idx]

        return field
    raise DecodeError(f"{typ} is not a multi-cell type")


def element_decoder(typ: CqlType) -> Decoder | None:
    """Decoder of a cell value of a non-frozen list/set/map column (None for sets: no value); UDTs use :func:`udt_field_decoders`."""
    if typ.name == "list":
        return value_decoder(typ.params[0])
    if typ.name == "set":
        return None
    if typ.name == "map":
        return value_decoder(typ.params[1])
    raise DecodeError(f"{typ} has no single element decoder")


def udt_field_decoders(typ: CqlType) -> tuple[Decoder, ...]:
    return tuple(value_decoder(p) for p in typ.params)
