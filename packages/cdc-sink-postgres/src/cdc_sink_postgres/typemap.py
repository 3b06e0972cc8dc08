"""CQL → PostgreSQL type mapping, and value conversion in both directions.

The mapping (documented in docs/sinks/postgres.md) is lossless:

* scalars map to their natural PostgreSQL type (``varint``/``decimal`` → ``numeric``,
  ``time`` → ``bigint`` nanoseconds, ``duration`` → ``jsonb`` {months, days, nanoseconds});
* lists, sets and vectors of such scalars map to arrays of them;
* everything else (maps, tuples, UDTs, nested collections) maps to ``jsonb`` in the JSON form
  :func:`to_json` defines.

Values are checked in Python before they reach the server, so a value PostgreSQL cannot hold
(NUL in text, numeric out of range, …) rejects exactly the event that carries it.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import ipaddress
import json
import math
import operator
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Literal

import attrs

from cdc_core.cqltypes import CqlType, Duration

__all__ = [
    "PgType",
    "ValueRejected",
    "bulk_check",
    "dumps",
    "element_text",
    "from_db",
    "from_json",
    "key_string",
    "list_path_key",
    "pg_type_for",
    "to_db",
    "to_json",
]

Form = Literal["scalar", "array", "jsonb"]


class ValueRejected(ValueError):
    """A value the destination cannot store; the event carrying it goes to the DLQ."""


@attrs.frozen
class PgType:
    """A PostgreSQL column type and how values are shaped for it."""

    sql: str
    form: Form
    element_sql: str = ""  # for arrays: the element type


SCALAR_SQL: dict[str, str] = {
    "ascii": "text",
    "text": "text",
    "varchar": "text",
    "tinyint": "smallint",
    "smallint": "smallint",
    "int": "integer",
    "bigint": "bigint",
    "counter": "bigint",
    "varint": "numeric",
    "decimal": "numeric",
    "float": "real",
    "double": "double precision",
    "boolean": "boolean",
    "uuid": "uuid",
    "timeuuid": "uuid",
    "timestamp": "timestamptz",
    "date": "date",
    "time": "bigint",
    "duration": "jsonb",
    "inet": "inet",
    "blob": "bytea",
    "empty": "bytea",
}

_INT_RANGES = {"tinyint": 15, "smallint": 15, "int": 31, "bigint": 63, "counter": 63}
_TEXT_TYPES = frozenset({"ascii", "text", "varchar"})
# Types whose JSON form is a string (map keys of these types are used as they are).
_STRING_JSON = frozenset({"ascii", "text", "varchar", "uuid", "timeuuid", "timestamp", "date", "inet", "blob", "empty"})
_NANOS_PER_DAY = 86_400 * 10**9
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _array_element(t: CqlType) -> str | None:
    if t.name in SCALAR_SQL and SCALAR_SQL[t.name] != "jsonb":
        return SCALAR_SQL[t.name]
    return None


@functools.lru_cache(maxsize=1024)
def pg_type_for(t: CqlType) -> PgType:
    """The default PostgreSQL type of a column of CQL type ``t``."""
    if t.name in SCALAR_SQL:
        sql = SCALAR_SQL[t.name]
        return PgType(sql, "jsonb" if sql == "jsonb" else "scalar")
    if t.name in ("list", "set", "vector"):
        elem = _array_element(t.params[0])
        if elem is not None:
            return PgType(f"{elem}[]", "array", elem)
    return PgType("jsonb", "jsonb")


def is_array_element(t: CqlType) -> bool:
    return _array_element(t) is not None


# --- Python (event model) → database parameter -------------------------------------------------


def check_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueRejected(f"expected text, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueRejected("text contains a NUL character, which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueRejected(f"text is not valid Unicode: {exc.reason}") from None
    return value


def _check_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueRejected(f"expected an integer for {name}, got {type(value).__name__}")
    bits = _INT_RANGES.get(name)
    if bits is not None and not -(2**bits) <= value < 2**bits:
        raise ValueRejected(f"{value} is out of range for {name}")
    return value


def _check_numeric(value: Decimal) -> Decimal:
    if not value.is_finite():
        raise ValueRejected(f"{value} is not a finite number")
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if -exponent > 16383 or len(digits) + exponent > 131072:
        raise ValueRejected("decimal is out of PostgreSQL numeric's range")
    return value


def to_db(value: Any, t: CqlType) -> Any:
    """The asyncpg parameter for ``value`` in a column of CQL type ``t`` (default mapping)."""
    if value is None:
        return None
    name = t.name
    pg = pg_type_for(t)
    if pg.form == "jsonb":
        return dumps(to_json(value, t))
    if pg.form == "array":
        items = [to_db(v, t.params[0]) for v in value]
        # A set's elements in one order whatever the order Python iterates them in (str hashes
        # differ from process to process): the same set is the same array, also as a key.
        return sorted(items, key=_element_order) if name == "set" else items
    if name in _TEXT_TYPES:
        return check_text(value)
    if name in _INT_RANGES:
        return _check_int(value, name)
    if name == "varint":
        return _check_numeric(Decimal(_check_int(value, name)))
    if name == "decimal":
        if not isinstance(value, Decimal):
            raise ValueRejected(f"expected a Decimal, got {type(value).__name__}")
        return _check_numeric(value)
    if name in ("float", "double"):
        if not isinstance(value, float | int) or isinstance(value, bool):
            raise ValueRejected(f"expected a float, got {type(value).__name__}")
        return float(value)
    if name == "boolean":
        if not isinstance(value, bool):
            raise ValueRejected(f"expected a boolean, got {type(value).__name__}")
        return value
    if name in ("uuid", "timeuuid"):
        if not isinstance(value, uuid.UUID):
            raise ValueRejected(f"expected a UUID, got {type(value).__name__}")
        return value
    if name == "timestamp":
        if not isinstance(value, dt.datetime):
            raise ValueRejected(f"expected a datetime, got {type(value).__name__}")
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    if name == "date":
        if not isinstance(value, dt.date):
            raise ValueRejected(f"expected a date, got {type(value).__name__}")
        return value
    if name == "time":
        if not isinstance(value, int) or not 0 <= value < _NANOS_PER_DAY:
            raise ValueRejected(f"{value!r} is not a time of day in nanoseconds")
        return value
    if name == "inet":
        if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise ValueRejected(f"expected an IP address, got {type(value).__name__}")
        return value
    if name in ("blob", "empty"):
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ValueRejected(f"expected bytes, got {type(value).__name__}")
        return bytes(value)
    raise ValueRejected(f"no PostgreSQL mapping for CQL type {t}")


def _element_order(value: Any) -> Any:
    # NaN compares false with everything: ordered after every number, so sorting is total.
    if type(value) is float:
        return (math.isnan(value), 0.0 if math.isnan(value) else value)
    return value


def _fast_text(value: Any) -> Any:
    if type(value) is str and value.isascii() and "\x00" not in value:
        return value
    return check_text(value)


# The converter of each CQL integer type → the range it passes unchanged (an exact int v with
# -(2**bits) ≤ v < 2**bits): the accelerator's fold checks that range itself, without a call.
_INT_CONVERTER_BITS: dict[Callable[[Any], Any], int] = {}


@functools.cache
def _int_converter(name: str) -> Any:
    bits = _INT_RANGES[name]
    lo, hi = -(2**bits), 2**bits

    def conv(value: Any) -> Any:
        if type(value) is int and lo <= value < hi:
            return value
        return _check_int(value, name)

    _INT_CONVERTER_BITS[conv] = bits
    return conv


def int_converter_bits(convert: Callable[[Any], Any]) -> int | None:
    """``bits`` when ``convert`` is the converter of a CQL integer type, which returns an exact
    int in [-(2**bits), 2**bits) unchanged (and checks anything else); None for any other."""
    return _INT_CONVERTER_BITS.get(convert)


def _float_conv(value: Any) -> Any:
    return value if type(value) is float else to_db(value, _DOUBLE)


def _bool_conv(value: Any) -> Any:
    return value if type(value) is bool else to_db(value, _BOOLEAN)


_DOUBLE = CqlType("double")
_BOOLEAN = CqlType("boolean")


@functools.lru_cache(maxsize=1024)
def converter(t: CqlType) -> Any:
    """A function equivalent to ``lambda v: to_db(v, t)`` for non-null ``v``, specialised for
    the common scalar types (the hot path of the sink)."""
    name = t.name
    if name in _TEXT_TYPES:
        return _fast_text
    if name in _INT_RANGES:
        return _int_converter(name)
    if name in ("float", "double"):
        return _float_conv
    if name == "boolean":
        return _bool_conv
    if name == "timestamp":
        return _timestamp_conv
    if name == "decimal":
        return _decimal_conv
    if name in ("uuid", "timeuuid"):
        return _uuid_conv
    return functools.partial(_to_db_flipped, t)


def _timestamp_conv(value: Any) -> Any:
    if type(value) is dt.datetime and value.tzinfo is not None:
        return value
    return to_db(value, _TIMESTAMP)


def _decimal_conv(value: Any) -> Any:
    # Cheap bounds first: only extreme exponents need the exact digit check.
    if type(value) is Decimal and value.is_finite() and -16000 < value.adjusted() < 131000:
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent > -16383:
            return value
    return to_db(value, _DECIMAL)


def _uuid_conv(value: Any) -> Any:
    return value if isinstance(value, uuid.UUID) else to_db(value, _UUID)


_TIMESTAMP = CqlType("timestamp")
_DECIMAL = CqlType("decimal")
_UUID = CqlType("uuid")


def _to_db_flipped(t: CqlType, value: Any) -> Any:
    return to_db(value, t)


# --- column-wise checks (the fast path) -------------------------------------------------------
#
# For the types whose converter returns a valid value unchanged, a whole column of values is
# checked at once with C-level builtins (type sets, min/max, one join). A column failing the check
# is not an error by itself: the caller redoes the batch value by value (``converter``) to find
# and reject exactly the events at fault.

BulkCheck = Callable[[Sequence[Any]], bool]


def _non_null(values: Sequence[Any]) -> Sequence[Any]:
    return [v for v in values if v is not None] if None in values else values


def _bulk_text(values: Sequence[Any]) -> bool:
    values = _non_null(values)
    if not set(map(type, values)) <= {str}:
        return False
    joined = "".join(values)
    if "\x00" in joined:
        return False
    if not joined.isascii():
        try:
            joined.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _bulk_int(name: str) -> BulkCheck:
    bits = _INT_RANGES[name]
    lo, hi = -(2**bits), 2**bits

    def check(values: Sequence[Any]) -> bool:
        values = _non_null(values)
        return not values or (set(map(type, values)) <= {int} and min(values) >= lo and max(values) < hi)

    return check


def _bulk_exact_type(*types: type) -> BulkCheck:
    allowed = set(types)

    def check(values: Sequence[Any]) -> bool:
        return set(map(type, _non_null(values))) <= allowed

    return check


_tzinfo = operator.attrgetter("tzinfo")
_exponent = operator.attrgetter("exponent")


def _bulk_timestamp(values: Sequence[Any]) -> bool:
    values = _non_null(values)
    return set(map(type, values)) <= {dt.datetime} and None not in set(map(_tzinfo, values))


def _bulk_decimal(values: Sequence[Any]) -> bool:
    values = _non_null(values)
    if not values:
        return True
    if not set(map(type, values)) <= {Decimal} or not all(map(Decimal.is_finite, values)):
        return False
    adjusted = list(map(Decimal.adjusted, values))
    if not (min(adjusted) > -16000 and max(adjusted) < 131000):
        return False
    return bool(min(map(_exponent, map(Decimal.as_tuple, values))) > -16383)


@functools.lru_cache(maxsize=1024)
def bulk_check(t: CqlType) -> BulkCheck | None:
    """A column-wise check for type ``t`` if its converter is the identity on valid values:
    ``bulk_check(t)(values)`` is True only if ``converter(t)(v) is v`` for every non-null ``v``
    (False means: convert value by value to find out)."""
    name = t.name
    if name in _TEXT_TYPES:
        return _bulk_text
    if name in _INT_RANGES:
        return _bulk_int(name)
    if name in ("float", "double"):
        return _bulk_exact_type(float)
    if name == "boolean":
        return _bulk_exact_type(bool)
    if name == "timestamp":
        return _bulk_timestamp
    if name == "decimal":
        return _bulk_decimal
    if name in ("uuid", "timeuuid"):
        return _bulk_exact_type(uuid.UUID)
    return None


# --- the JSON form (jsonb columns and collection elements) --------------------------------------


@attrs.frozen
class RawNumber:
    """A JSON number written exactly as given (decimals keep every digit)."""

    text: str


def to_json(value: Any, t: CqlType) -> Any:
    """The JSON form of ``value`` for jsonb columns: numbers stay exact (jsonb stores numeric),
    timestamps are ISO-8601 UTC with milliseconds, blobs base64, maps objects keyed by
    :func:`key_string`, UDTs objects of every field, durations {months, days, nanoseconds}."""
    if value is None:
        return None
    name = t.name
    if name in _TEXT_TYPES:
        return check_text(value)
    if name in _INT_RANGES or name == "time":
        return to_db(value, t)
    if name == "varint":
        return _check_int(value, name)
    if name == "decimal":
        return RawNumber(str(to_db(value, t)))
    if name in ("float", "double"):
        f = to_db(value, t)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return f
    if name == "boolean":
        return to_db(value, t)
    if name in ("uuid", "timeuuid", "inet"):
        return str(to_db(value, t))
    if name == "timestamp":
        ts = to_db(value, t).astimezone(dt.UTC)
        return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    if name == "date":
        return to_db(value, t).isoformat()
    if name == "duration":
        if not isinstance(value, Duration):
            raise ValueRejected(f"expected a Duration, got {type(value).__name__}")
        return {"months": value.months, "days": value.days, "nanoseconds": value.nanoseconds}
    if name in ("blob", "empty"):
        return base64.b64encode(to_db(value, t)).decode("ascii")
    if name in ("list", "set", "vector"):
        return [to_json(v, t.params[0]) for v in value]
    if name == "map":
        k_t, v_t = t.params
        return {key_string(k, k_t): to_json(v, v_t) for k, v in value.items()}
    if name == "tuple":
        return [to_json(v, p) for v, p in zip(value, t.params, strict=True)]
    if name == "udt":
        return {f: to_json(value.get(f), p) for f, p in zip(t.field_names, t.params, strict=True)}
    raise ValueRejected(f"no JSON form for CQL type {t}")


def key_string(value: Any, t: CqlType) -> str:
    """A map key (or set element) as a JSON object key: its JSON form if that is a string,
    else the compact JSON text of it."""
    j = to_json(value, t)
    return j if isinstance(j, str) else dumps(j)


def dumps(obj: Any) -> str:
    """Compact JSON text; :class:`RawNumber` written verbatim."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, RawNumber):
        return obj.text
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj)
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + dumps(v) for k, v in obj.items()) + "}"
    raise TypeError(f"not JSON-able: {type(obj).__name__}")


def element_text(value: Any, t: CqlType) -> str:
    """A collection element as text PostgreSQL casts to the element's column type (views
    render non-frozen lists and sets from these)."""
    v = to_db(value, t)
    name = t.name
    if name in ("float", "double"):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)
    if name == "boolean":
        return "true" if v else "false"
    if name == "timestamp":
        return str(v.isoformat())
    if name == "date":
        return str(v.isoformat())
    if name in ("blob", "empty"):
        return "\\x" + str(v.hex())
    return str(v)


def list_path_key(path: Any) -> str:
    """A list element's timeuuid path as a string whose C-collation order is the list order."""
    if not isinstance(path, uuid.UUID):
        raise ValueRejected(f"a list element path must be a timeuuid, got {type(path).__name__}")
    return f"{path.time:015x}{path.hex}"


# --- database → Python (event model) values -----------------------------------------------------


def from_json(obj: Any, t: CqlType) -> Any:
    """Inverse of :func:`to_json` (``obj`` parsed with ``parse_float=Decimal``)."""
    if obj is None:
        return None
    name = t.name
    if name in _TEXT_TYPES:
        return str(obj)
    if name in _INT_RANGES or name in ("varint", "time"):
        return int(obj)
    if name == "decimal":
        return Decimal(obj) if not isinstance(obj, Decimal) else obj
    if name in ("float", "double"):
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[obj] if isinstance(obj, str) else float(obj)
    if name == "boolean":
        return bool(obj)
    if name in ("uuid", "timeuuid"):
        return uuid.UUID(obj)
    if name == "inet":
        return ipaddress.ip_address(obj)
    if name == "timestamp":
        return dt.datetime.fromisoformat(obj).astimezone(dt.UTC)
    if name == "date":
        return dt.date.fromisoformat(obj)
    if name == "duration":
        return Duration(int(obj["months"]), int(obj["days"]), int(obj["nanoseconds"]))
    if name in ("blob", "empty"):
        return base64.b64decode(obj)
    if name in ("list", "vector"):
        return tuple(from_json(v, t.params[0]) for v in obj)
    if name == "set":
        items = [from_json(v, t.params[0]) for v in obj]
        return tuple(items) if t.frozen else frozenset(items)
    if name == "map":
        k_t, v_t = t.params
        return {_key_from_string(k, k_t): from_json(v, v_t) for k, v in obj.items()}
    if name == "tuple":
        return tuple(from_json(v, p) for v, p in zip(obj, t.params, strict=True))
    if name == "udt":
        return {f: from_json(obj.get(f), p) for f, p in zip(t.field_names, t.params, strict=True)}
    raise TypeError(f"no JSON form for CQL type {t}")


def _key_from_string(key: str, t: CqlType) -> Any:
    if t.name in _STRING_JSON:
        return from_json(key, t)
    return from_json(json.loads(key, parse_float=Decimal), t)


def from_db(value: Any, t: CqlType, pg: PgType) -> Any:
    """A value read from a column (or view column) of default type ``pg`` as the event model's
    Python value (non-frozen sets as frozensets, maps and UDTs as dicts)."""
    if value is None:
        return None
    if pg.form == "jsonb":
        obj = json.loads(value, parse_float=Decimal) if isinstance(value, str) else value
        return from_json(obj, t)
    if pg.form == "array":
        items = [_scalar_from_db(v, t.params[0]) for v in value]
        if t.name == "set" and not t.frozen:
            return frozenset(items)
        return tuple(items)
    return _scalar_from_db(value, t)


def _scalar_from_db(value: Any, t: CqlType) -> Any:
    name = t.name
    if name == "varint":
        return int(value)
    if name in ("uuid", "timeuuid"):
        return uuid.UUID(str(value))
    if name == "inet":
        return ipaddress.ip_address(str(value).split("/")[0])
    if name == "timestamp":
        return value.astimezone(dt.UTC)
    return value
