"""Decoders of vints and CQL values, checked against cassandra-driver's serializers (an independent oracle)."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import uuid
from decimal import Decimal
from typing import Any

import pytest
from cassandra import cqltypes as d
from cassandra.util import Duration as DriverDuration
from frozendict import frozendict
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_core.commitlog.primitives import DecodeError, read_svint, read_uvint, write_svint, write_uvint
from cdc_core.commitlog.values import counter_value, fixed_length, path_decoder, value_decoder
from cdc_core.cqltypes import CqlType, Duration, parse_type

PV = 5


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_uvint_round_trip(v: int) -> None:
    b = write_uvint(v)
    assert read_uvint(b + b"\x99", 0) == (v, len(b))
    assert len(b) == (639 - 9 * (64 - (v | 1).bit_length())) >> 6


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1))
def test_svint_round_trip(v: int) -> None:
    assert read_svint(write_svint(v), 0) == (v, len(write_svint(v)))


@pytest.mark.parametrize(
    ("value", "hexed"), [(0, "00"), (127, "7f"), (128, "8080"), (16383, "bfff"), (16384, "c04000"), ((1 << 64) - 1, "ff" * 9)]
)
def test_uvint_examples_of_the_format_doc(value: int, hexed: str) -> None:
    assert write_uvint(value).hex() == hexed
    assert read_uvint(bytes.fromhex(hexed), 0) == (value, len(hexed) // 2)


@given(st.binary(max_size=12))
def test_uvint_on_garbage_raises_only_decode_error(data: bytes) -> None:
    try:
        value, pos = read_uvint(data, 0)
    except DecodeError:
        return
    assert 0 <= value < 1 << 64
    assert pos <= len(data)


# --- values versus cassandra-driver --------------------------------------------------------------------

SCALARS: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "int": (d.Int32Type, st.integers(-(2**31), 2**31 - 1)),
    "bigint": (d.LongType, st.integers(-(2**63), 2**63 - 1)),
    "smallint": (d.ShortType, st.integers(-(2**15), 2**15 - 1)),
    "tinyint": (d.ByteType, st.integers(-128, 127)),
    "varint": (d.IntegerType, st.integers(-(2**200), 2**200)),
    "text": (d.UTF8Type, st.text(min_size=1)),
    "ascii": (d.AsciiType, st.text(alphabet=st.characters(max_codepoint=127), min_size=1)),
    "blob": (d.BytesType, st.binary(min_size=1)),
    "boolean": (d.BooleanType, st.booleans()),
    "double": (d.DoubleType, st.floats(allow_nan=False)),
    "float": (d.FloatType, st.floats(width=32, allow_nan=False)),
    "uuid": (d.UUIDType, st.uuids()),
    "timeuuid": (d.TimeUUIDType, st.uuids(version=1)),
    "decimal": (d.DecimalType, st.decimals(allow_nan=False, allow_infinity=False, places=None)),
    "inet": (d.InetAddressType, st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)),
    "timestamp": (
        d.DateType,
        st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)).map(
            lambda x: x.replace(microsecond=x.microsecond // 1000 * 1000)
        ),
    ),
    "date": (d.SimpleDateType, st.dates()),
    "time": (d.TimeType, st.integers(0, 86_400 * 10**9 - 1)),
    "duration": (
        d.DurationType,
        st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1), st.integers(-(2**63), 2**63 - 1)),
    ),
}


def _driver_type(t: CqlType) -> Any:
    if t.name in SCALARS:
        return SCALARS[t.name][0]
    if t.name == "list":
        return d.ListType.apply_parameters([_driver_type(t.params[0])])
    if t.name == "set":
        return d.SetType.apply_parameters([_driver_type(t.params[0])])
    if t.name == "map":
        return d.MapType.apply_parameters([_driver_type(p) for p in t.params])
    if t.name == "tuple":
        return d.TupleType.apply_parameters([_driver_type(p) for p in t.params])
    if t.name == "vector":
        return d.VectorType.apply_parameters([_driver_type(t.params[0]), t.dimension], names=None)
    raise AssertionError(t)


def _driver_value(t: CqlType, v: Any) -> Any:
    if t.name == "duration":
        return DriverDuration(*v)
    if t.name in ("list", "set", "vector"):
        return [_driver_value(t.params[0], x) for x in v]
    if t.name == "map":
        return {_driver_value(t.params[0], k): _driver_value(t.params[1], x) for k, x in v.items()}
    if t.name == "tuple":
        return tuple(_driver_value(p, x) for p, x in zip(t.params, v, strict=True))
    return v


def _expected(t: CqlType, v: Any) -> Any:
    """Our documented Python representation of a generated value."""
    name = t.name
    if name == "timestamp":
        return v.replace(tzinfo=dt.UTC)
    if name == "duration":
        return Duration(*v)
    if name == "inet":
        return ipaddress.ip_address(v)
    if name == "float":
        return v
    if name == "decimal":
        return Decimal(v)
    if name in ("list", "vector"):
        return tuple(_expected(t.params[0], x) for x in v)
    if name == "set":
        return tuple(_expected(t.params[0], x) for x in v)
    if name == "map":
        return frozendict((_expected(t.params[0], k), _expected(t.params[1], x)) for k, x in v.items())
    if name == "tuple":
        return tuple(_expected(p, x) for p, x in zip(t.params, v, strict=True))
    return v


def _values(t: CqlType) -> st.SearchStrategy[Any]:
    if t.name in SCALARS:
        return SCALARS[t.name][1]
    if t.name == "list":
        return st.lists(_values(t.params[0]), max_size=4)
    if t.name == "set":  # sorted like Cassandra stores them
        return st.lists(_values(t.params[0]), max_size=4, unique=True).map(sorted)
    if t.name == "map":
        return st.dictionaries(_values(t.params[0]), _values(t.params[1]), max_size=3).map(lambda m: dict(sorted(m.items())))
    if t.name == "tuple":
        return st.tuples(*(_values(p) for p in t.params))
    if t.name == "vector":
        return st.lists(_values(t.params[0]), min_size=t.dimension, max_size=t.dimension)
    raise AssertionError(t)


ORDERABLE = ["int", "bigint", "text", "uuid", "varint", "date"]
TYPES = [
    *SCALARS,
    "list<int>",
    "list<frozen<list<text>>>",
    "set<bigint>",
    "map<text, frozen<set<int>>>",
    "map<int, frozen<map<text, double>>>",
    "tuple<int, text, frozen<list<uuid>>>",
    "vector<float, 3>",
    "vector<text, 2>",
    "vector<bigint, 4>",
]


@pytest.mark.parametrize("type_string", TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_value_decoders_agree_with_the_driver(type_string: str, data: st.DataObject) -> None:
    t = parse_type(type_string if "<" not in type_string else f"frozen<{type_string}>")
    value = data.draw(_values(t))
    raw = _driver_type(t).serialize(_driver_value(t, value), PV)
    got = value_decoder(t)(raw)
    want = _expected(t, value)
    if t.name == "set":
        assert got == tuple(sorted(want)) or got == want
    else:
        assert got == want
    if fixed_length(t) is not None:
        assert len(raw) == fixed_length(t)


@given(st.lists(st.one_of(st.none(), st.text()), min_size=0, max_size=3))
def test_udt_with_missing_trailing_fields(fields: list[str | None]) -> None:
    t = parse_type("frozen<udt<ks.a>{x:text,y:text,z:text}>")
    raw = b"".join(b"\xff\xff\xff\xff" if f is None else len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)
    got = value_decoder(t)(raw) if raw else None
    if raw:
        padded = [*fields, *[None] * (3 - len(fields))]
        assert got == frozendict(zip("xyz", padded, strict=True))


def test_empty_values() -> None:
    assert value_decoder(parse_type("text"))(b"") == ""
    assert value_decoder(parse_type("blob"))(b"") == b""
    assert value_decoder(parse_type("int"))(b"") is None


def test_counter_context_sums_shards() -> None:
    shard = uuid.uuid4().bytes + (7).to_bytes(8, "big") + (42).to_bytes(8, "big", signed=True)
    other = uuid.uuid4().bytes + (9).to_bytes(8, "big") + (-2).to_bytes(8, "big", signed=True)
    header = (2).to_bytes(2, "big") + (0x8000).to_bytes(2, "big") + (0x8001).to_bytes(2, "big")
    assert counter_value(header + shard + other) == 40
    with pytest.raises(DecodeError):
        counter_value(b"\x00\x05abc")


def test_udt_paths_are_field_names() -> None:
    t = parse_type("udt<ks.a>{street:text,zip:int}")
    assert path_decoder(t)(b"\x00\x01") == "zip"
    with pytest.raises(DecodeError):
        path_decoder(t)(b"\x00\x02")


@pytest.mark.parametrize(
    "type_string", ["int", "bigint", "uuid", "timestamp", "double", "boolean", "frozen<list<int>>", "duration", "inet", "decimal"]
)
@given(raw=st.binary(max_size=40))
def test_garbage_raises_only_value_errors(type_string: str, raw: bytes) -> None:
    with contextlib.suppress(DecodeError, ValueError):
        value_decoder(parse_type(type_string))(raw)
