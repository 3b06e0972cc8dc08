"""CQL → ClickHouse type mapping, the TSV text form of values, and order-preserving key encodings.

Every value is written as TabSeparated text built here. Three choices keep it lossless:

* floats travel as their IEEE-754 bits (``UInt32``/``UInt64``) and the input materialized view
  reinterprets them: ClickHouse 18.16 parses float text imprecisely;
* ``timestamp`` travels as epoch milliseconds (``fromUnixTimestamp64Milli`` where DateTime64
  exists, an ``Int64`` column where it does not);
* values with no exact native type (decimal, varint, duration, inet, tuples, UDTs, frozen
  collections) are stored as text: the decimal's own string (scale kept) or the JSON form of
  :func:`cdc_core.cqltypes.value_to_json`.

Order encodings (:func:`order_key`) turn clustering values and collection element paths into
hex strings whose byte order is the clustering order, so the latest-state view can evaluate range
tombstones and order collection elements with plain string comparisons.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
import orjson
from frozendict import frozendict

from cdc_core.cqltypes import CqlType, Duration, value_from_json, value_to_json

__all__ = [
    "Features",
    "TypeMapping",
    "ValueRejected",
    "mapping_for",
    "order_key",
    "order_key_function",
    "order_key_hex_function",
    "tsv_escape",
    "tsv_split",
    "tsv_unescape",
]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DATE = dt.date(1970, 1, 1)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# DateTime64's range in ClickHouse 22.8+ (1900-01-01 .. 2299-12-31 23:59:59.999), in ms.
_DT64_MIN_MS = -2208988800000
_DT64_MAX_MS = 10413791999999


class ValueRejected(ValueError):
    """A value that cannot be stored losslessly; its event goes to the DLQ with this reason."""


@attrs.frozen(kw_only=True)
class Features:
    """What the connected engine supports (decided from its version)."""

    version: tuple[int, ...]
    datetime64: bool
    bool_type: bool
    dedup_token: bool
    replace_view: bool = False  # CREATE OR REPLACE VIEW (not on 18.16)

    @classmethod
    def from_version(cls, text: str, *, settings: frozenset[str] = frozenset()) -> Features:
        parts = tuple(int(p) for p in re.findall(r"\d+", text)[:4])
        return cls(
            version=parts,
            datetime64=parts >= (20, 5),
            bool_type=parts >= (22, 3),
            dedup_token="insert_deduplication_token" in settings,
            replace_view=parts >= (20, 8),
        )

    @property
    def label(self) -> str:
        return ".".join(str(p) for p in self.version)


# --- TSV ----------------------------------------------------------------------------------------

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0", "\b": "\\b", "\f": "\\f"})
_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r\0\b\f]")


def tsv_escape(text: str) -> str:
    """A string as one TabSeparated field."""
    if _NEEDS_ESCAPE.search(text) is None:
        return text
    return text.translate(_ESCAPES)


_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "'": "'", "a": "\a", "v": "\v", '"': '"'}
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


def tsv_unescape(field: str) -> str:
    if "\\" not in field:
        return field
    return _UNESCAPE_RE.sub(lambda m: _UNESCAPES.get(m.group(1), m.group(1)), field)


def tsv_split(payload: bytes) -> list[list[str | None]]:
    """Parse TabSeparated output into rows of unescaped fields (``None`` for ``\\N``).

    Bytes that are not UTF-8 (blobs) survive as surrogate escapes: ``str.encode('utf-8',
    'surrogateescape')`` gives them back.
    """
    text = payload.decode("utf-8", "surrogateescape")
    rows: list[list[str | None]] = []
    for line in text.split("\n"):
        if not line:
            continue
        rows.append([None if f == "\\N" else tsv_unescape(f) for f in line.split("\t")])
    return rows


def _json_text(value: Any, typ: CqlType) -> str:
    return orjson.dumps(value_to_json(value, typ)).decode("utf-8")


# --- per-type mapping ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TypeMapping:
    """How one CQL type is stored.

    ``storage``: the column type (never Nullable; the view adds nullability). ``wire``: the input
    table's column type. ``convert``: SQL turning the wire column (``{}``) into the storage type.
    ``encode``: value → TSV field text. ``read_expr``: SQL turning a stored column into the text
    ``decode`` reads back. ``default``: TSV text of a placeholder value (for absent cells).
    """

    cql: CqlType
    storage: str
    wire: str
    convert: str
    encode: Callable[[Any], str]
    read_expr: str
    decode: Callable[[str], Any]
    default: str
    native: bool
    note: str = ""


def _int_mapping(typ: CqlType, storage: str, lo: int, hi: int) -> TypeMapping:
    def enc(v: Any) -> str:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueRejected(f"{v!r} is not a {typ.name}")
        return str(v)

    return TypeMapping(
        cql=typ, storage=storage, wire=storage, convert="{}", encode=enc, read_expr="{}", decode=int, default="0", native=True
    )


def _text_enc(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueRejected(f"{v!r} is not text")
    return tsv_escape(v)


_UNPRINTABLE = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")


def _blob_enc(v: Any) -> str:
    # Printable ASCII as is, everything else as \xHH: the payload stays ASCII on every engine.
    if not isinstance(v, bytes | bytearray | memoryview):
        raise ValueRejected(f"{type(v).__name__} is not a blob")
    return _UNPRINTABLE.sub(lambda m: b"\\x%02x" % m[0][0], bytes(v)).decode("ascii")


def _blob_dec(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


_PACK_D = struct.Struct("<d").pack
_PACK_F = struct.Struct("<f").pack
_from_bytes = int.from_bytes


def _double_enc(v: Any) -> str:
    return str(_from_bytes(_PACK_D(float(v)), "little"))


def _float_enc(v: Any) -> str:
    return str(_from_bytes(_PACK_F(float(v)), "little"))


def _float_dec(text: str) -> float:
    return float(text)


def _ts_ms(v: Any) -> int:
    if not isinstance(v, dt.datetime):
        raise ValueRejected(f"{v!r} is not a timestamp")
    if v.tzinfo is None:
        v = v.replace(tzinfo=dt.UTC)
    delta = v - _EPOCH
    ms: int = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return ms


def _ts_from_ms(text: str) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=int(text))


def _ts64_enc(v: Any) -> str:
    ms = _ts_ms(v)
    if not _DT64_MIN_MS <= ms <= _DT64_MAX_MS:
        raise ValueRejected(f"timestamp {v.isoformat()} is outside DateTime64's range 1900-01-01..2299-12-31")
    return str(ms)


def _date_enc(v: Any) -> str:
    if not isinstance(v, dt.date) or isinstance(v, dt.datetime):
        raise ValueRejected(f"{v!r} is not a date")
    return str((v - _EPOCH_DATE).days)


def _date_dec(text: str) -> dt.date:
    return _EPOCH_DATE + dt.timedelta(days=int(text))


def _bool_dec(text: str) -> bool:
    return text in ("1", "true")


def _decimal_enc(v: Any) -> str:
    if not isinstance(v, Decimal) or not v.is_finite():
        raise ValueRejected(f"{v!r} is not a finite decimal")
    return str(v)


def _uuid_enc(v: Any) -> str:
    if not isinstance(v, uuid.UUID):
        raise ValueRejected(f"{v!r} is not a UUID")
    return str(v)


def _json_mapping(typ: CqlType, note: str) -> TypeMapping:
    def enc(v: Any) -> str:
        try:
            return tsv_escape(_json_text(v, typ))
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise ValueRejected(f"cannot encode {type(v).__name__} as {typ}: {exc}") from exc

    def dec(text: str) -> Any:
        return value_from_json(orjson.loads(text), typ)

    return TypeMapping(
        cql=typ, storage="String", wire="String", convert="{}", encode=enc, read_expr="{}", decode=dec, default="", native=False, note=note
    )


def mapping_for(typ: CqlType, features: Features) -> TypeMapping:
    """The storage of a simple (or frozen) value of ``typ`` on an engine with ``features``."""
    name = typ.name
    if name in ("text", "varchar", "ascii"):
        return TypeMapping(
            cql=typ, storage="String", wire="String", convert="{}", encode=_text_enc, read_expr="{}", decode=str, default="", native=True
        )
    if name == "tinyint":
        return _int_mapping(typ, "Int8", -(2**7), 2**7 - 1)
    if name == "smallint":
        return _int_mapping(typ, "Int16", -(2**15), 2**15 - 1)
    if name == "int":
        return _int_mapping(typ, "Int32", -(2**31), 2**31 - 1)
    if name in ("bigint", "counter"):
        return _int_mapping(typ, "Int64", INT64_MIN, INT64_MAX)
    if name == "time":
        m = _int_mapping(typ, "Int64", 0, 86_400 * 10**9 - 1)
        return attrs.evolve(m, note="nanoseconds since midnight")
    if name == "varint":

        def varint_enc(v: Any) -> str:
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueRejected(f"{v!r} is not a varint")
            return str(v)

        return TypeMapping(
            cql=typ,
            storage="String",
            wire="String",
            convert="{}",
            encode=varint_enc,
            read_expr="{}",
            decode=int,
            default="",
            native=False,
            note="decimal digits (unbounded)",
        )
    if name == "decimal":
        return TypeMapping(
            cql=typ,
            storage="String",
            wire="String",
            convert="{}",
            encode=_decimal_enc,
            read_expr="{}",
            decode=Decimal,
            default="",
            native=False,
            note="the decimal's text, scale kept (CQL decimals have no fixed scale)",
        )
    if name == "double":
        return TypeMapping(
            cql=typ,
            storage="Float64",
            wire="UInt64",
            convert="reinterpretAsFloat64(reinterpretAsString({}))",
            encode=_double_enc,
            read_expr="{}",
            decode=_float_dec,
            default="0",
            native=True,
        )
    if name == "float":
        return TypeMapping(
            cql=typ,
            storage="Float32",
            wire="UInt32",
            convert="reinterpretAsFloat32(reinterpretAsString({}))",
            encode=_float_enc,
            read_expr="{}",
            decode=_float_dec,
            default="0",
            native=True,
        )
    if name == "boolean":
        storage = "Bool" if features.bool_type else "UInt8"
        return TypeMapping(
            cql=typ,
            storage=storage,
            wire="UInt8",
            convert="CAST({} AS Bool)" if features.bool_type else "{}",
            encode=lambda v: "1" if v else "0",
            read_expr="toUInt8({})",
            decode=_bool_dec,
            default="0",
            native=True,
        )
    if name in ("uuid", "timeuuid"):
        return TypeMapping(
            cql=typ,
            storage="UUID",
            wire="UUID",
            convert="{}",
            encode=_uuid_enc,
            read_expr="{}",
            decode=uuid.UUID,
            default="00000000-0000-0000-0000-000000000000",
            native=True,
        )
    if name == "timestamp":
        if features.datetime64:
            return TypeMapping(
                cql=typ,
                storage="DateTime64(3, 'UTC')",
                wire="Int64",
                convert="fromUnixTimestamp64Milli({}, 'UTC')",
                encode=_ts64_enc,
                read_expr="toUnixTimestamp64Milli({})",
                decode=_ts_from_ms,
                default="0",
                native=True,
                note="values outside 1900..2299 are rejected (DLQ)",
            )
        return TypeMapping(
            cql=typ,
            storage="Int64",
            wire="Int64",
            convert="{}",
            encode=lambda v: str(_ts_ms(v)),
            read_expr="{}",
            decode=_ts_from_ms,
            default="0",
            native=False,
            note="epoch milliseconds (no DateTime64 before 20.1)",
        )
    if name == "date":
        return TypeMapping(
            cql=typ,
            storage="Int32",
            wire="Int32",
            convert="{}",
            encode=_date_enc,
            read_expr="{}",
            decode=_date_dec,
            default="0",
            native=False,
            note="days since 1970-01-01 (CQL dates span ±5.8 million years; Date/Date32 do not)",
        )
    if name in ("blob", "empty"):
        return TypeMapping(
            cql=typ,
            storage="String",
            wire="String",
            convert="{}",
            encode=_blob_enc,
            read_expr="{}",
            decode=_blob_dec,
            default="",
            native=True,
        )
    if name == "inet":

        def inet_enc(v: Any) -> str:
            if not isinstance(v, ipaddress.IPv4Address | ipaddress.IPv6Address):
                raise ValueRejected(f"{v!r} is not an inet address")
            return str(v)

        return TypeMapping(
            cql=typ,
            storage="String",
            wire="String",
            convert="{}",
            encode=inet_enc,
            read_expr="{}",
            decode=ipaddress.ip_address,
            default="",
            native=False,
            note="address text (IPv4 and IPv6 in one column)",
        )
    if name == "duration":
        return _json_mapping(typ, "JSON [months, days, nanoseconds]")
    return _json_mapping(typ, "JSON text of the value (cdc_core.cqltypes.value_to_json)")


# --- order-preserving encodings -----------------------------------------------------------------


def _bytes_key(data: bytes) -> bytes:
    # Escape 0x00 as 00 FF and terminate with 00 00: prefix-free, bytewise order kept.
    return data.replace(b"\x00", b"\x00\xff") + b"\x00\x00"


def _int_key(v: int) -> bytes:
    return (v + 2**63).to_bytes(8, "big")


def _varint_key(v: int) -> bytes:
    mag = abs(v).to_bytes((abs(v).bit_length() + 7) // 8 or 1, "big")
    if v >= 0:
        return b"\x01" + len(mag).to_bytes(4, "big") + mag
    return b"\x00" + (2**32 - 1 - len(mag)).to_bytes(4, "big") + bytes(255 - b for b in mag)


def _float_key(v: float, double: bool) -> bytes:
    if math.isnan(v):
        return b"\xff" * (8 if double else 4)
    if v == 0:
        v = 0.0
    bits = struct.unpack(">Q", struct.pack(">d", v))[0] if double else struct.unpack(">I", struct.pack(">f", v))[0]
    width = 64 if double else 32
    bits = int(bits)
    bits = bits ^ ((1 << width) - 1) if bits >> (width - 1) else bits | (1 << (width - 1))
    return bits.to_bytes(width // 8, "big")


def _decimal_key(v: Decimal) -> bytes:
    if v.is_zero():
        return b"\x01"
    sign, digits, exponent = v.normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(str(d) for d in digits)
    e = len(text) + exponent  # v = 0.d1d2... x 10^e
    body = (e + 2**31).to_bytes(4, "big") + text.encode("ascii") + b"\x00"
    return b"\x00" + bytes(255 - b for b in body) if sign else b"\x02" + body


def order_key(value: Any, typ: CqlType) -> bytes:
    """Bytes whose lexicographic order is the order of values of ``typ``; prefix-free.

    The order is the one Python (and the reference model) uses; for ``timeuuid`` it is Cassandra's
    (time first, then the low bytes signed), for ``uuid`` the unsigned byte order.
    """
    name = typ.name
    if value is None:
        return b"\x00"
    if name in ("int", "bigint", "smallint", "tinyint", "counter", "time"):
        return _int_key(value)
    if name == "varint":
        return _varint_key(value)
    if name in ("text", "varchar", "ascii"):
        return _bytes_key(value.encode("utf-8"))
    if name in ("blob", "empty"):
        return _bytes_key(bytes(value))
    if name == "uuid":
        return bytes(value.bytes)
    if name == "timeuuid":
        # TimeUUIDType: the time, then the low 8 bytes as signed bytes (sign bit flipped here).
        stamp = int(value.time) if value.version == 1 else 0
        return stamp.to_bytes(8, "big") + bytes(b ^ 0x80 for b in value.bytes[8:])
    if name == "boolean":
        return b"\x01" if value else b"\x00"
    if name == "double":
        return _float_key(value, True)
    if name == "float":
        return _float_key(value, False)
    if name == "decimal":
        return _decimal_key(value)
    if name == "timestamp":
        return _int_key(_ts_ms(value))
    if name == "date":
        return _int_key((value - _EPOCH_DATE).days)
    if name == "inet":
        return _bytes_key(value.packed)
    if name == "duration":
        assert isinstance(value, Duration)
        return _int_key(value.months) + _int_key(value.days) + _int_key(value.nanoseconds)
    if name in ("list", "set", "vector"):
        items = sorted(value, key=lambda x: order_key(x, typ.params[0])) if name == "set" else value
        return b"".join(b"\x01" + order_key(x, typ.params[0]) for x in items) + b"\x00"
    if name == "map":
        k_t, v_t = typ.params
        keys = sorted(value, key=lambda k: order_key(k, k_t))
        return b"".join(b"\x01" + order_key(k, k_t) + order_key(value[k], v_t) for k in keys) + b"\x00"
    if name == "tuple":
        return b"".join(b"\x00" if x is None else b"\x01" + order_key(x, t) for x, t in zip(value, typ.params, strict=True))
    if name == "udt":
        return b"".join(
            b"\x00" if value.get(f) is None else b"\x01" + order_key(value.get(f), t)
            for f, t in zip(typ.field_names, typ.params, strict=True)
        )
    raise ValueRejected(f"no order for CQL type {typ}")


_INT_NAMES = frozenset({"int", "bigint", "smallint", "tinyint", "counter", "time"})


def order_key_function(typ: CqlType) -> Callable[[Any], bytes]:
    """:func:`order_key` for one type, chosen once (clustering columns are encoded per event)."""
    if typ.name in _INT_NAMES:
        return lambda v: b"\x00" if v is None else _int_key(v)
    if typ.name in ("text", "varchar", "ascii"):
        return lambda v: b"\x00" if v is None else _bytes_key(v.encode("utf-8"))
    return lambda v: order_key(v, typ)


def order_key_hex_function(typ: CqlType, descending: bool) -> Callable[[Any], str]:
    """The hex of :func:`order_key` (inverted when ``descending``) for one clustering column."""
    if typ.name in _INT_NAMES:
        # offset binary, 8 bytes; inverted = 2^64 - 1 - (v + 2^63)
        if descending:
            return lambda v: "ff" if v is None else "%016x" % (_INT_DESC - v)
        return lambda v: "00" if v is None else "%016x" % (v + _INT_OFFSET)
    fn = order_key_function(typ)
    if descending:
        return lambda v: invert(fn(v)).hex()
    return lambda v: fn(v).hex()


_INT_OFFSET = 2**63
_INT_DESC = 2**63 - 1


def invert(key: bytes) -> bytes:
    """The order key of a DESC clustering column."""
    return bytes(255 - b for b in key)


def model_value(value: Any, typ: CqlType) -> Any:
    """Normalise a decoded value to the reference model's form (sets and maps of frozen types)."""
    if isinstance(value, frozendict):
        return dict(value)
    return value
