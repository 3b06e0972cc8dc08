"""The accelerator stages exactly what asyncpg stages.

asyncpg's ``copy_records_to_table`` is the reference: every comparison COPies the same records
twice into the real PostgreSQL, once through asyncpg's encoders and once as the accelerator's
payload, and compares the two tables as text (which shows numeric scales, float bits, infinities).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_sink_postgres import native
from cdc_sink_postgres.merge import StagedMerge

if TYPE_CHECKING:
    import cdc_sink_postgres_native
else:  # without the build these comparisons are skipped; test_installed.py fails in CI instead
    cdc_sink_postgres_native = pytest.importorskip("cdc_sink_postgres_native")

UTC = dt.UTC

_decimals = st.one_of(
    st.builds(lambda c, e: Decimal(c).scaleb(e), st.integers(-(10**40), 10**40), st.integers(-60, 60)),
    st.builds(
        lambda s, d, e: Decimal((s, d, e)), st.integers(0, 1), st.lists(st.integers(0, 9), min_size=1, max_size=30), st.integers(-30, 30)
    ),
    st.sampled_from(
        [
            Decimal("0"),
            Decimal("-0"),
            Decimal("0.000"),
            Decimal("-0.00"),
            Decimal("0E+7"),
            Decimal("1E+100"),
            Decimal("1E-16383"),
            Decimal("-9999.9999"),
            Decimal("10000"),
            Decimal("0.0001"),
            Decimal("123456789.123456789"),
        ]
    ),
)
_float32 = st.floats(width=32, allow_nan=True, allow_infinity=True) | st.floats(min_value=-3.4e38, max_value=3.4e38)
_timestamps = st.datetimes(timezones=st.just(UTC)) | st.sampled_from(
    [
        dt.datetime.max.replace(tzinfo=UTC),
        dt.datetime.min.replace(tzinfo=UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(1900, 2, 28, tzinfo=UTC),
        dt.datetime(2000, 1, 1, tzinfo=UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC),
    ]
)
_dates = st.dates() | st.sampled_from([dt.date.max, dt.date.min, dt.date(2000, 1, 1), dt.date(1999, 12, 31), dt.date(1600, 2, 29)])
_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))

# (column type, values of it) in accelerator type-code order.
COLUMNS: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("smallint", st.integers(-(2**15), 2**15 - 1)),
    ("integer", st.integers(-(2**31), 2**31 - 1)),
    ("bigint", st.integers(-(2**63), 2**63 - 1)),
    ("real", _float32),
    ("double precision", st.floats()),
    ("boolean", st.booleans()),
    ("text", _text),
    ("bytea", st.binary()),
    ("uuid", st.uuids()),
    ("timestamptz", _timestamps),
    ("date", _dates),
    ("numeric", _decimals),
]
TYPES = ("bigint", *(t for t, _ in COLUMNS))  # a row number first
NAMES = ["n", *(f"c{i}" for i in range(len(COLUMNS)))]
_records = st.lists(st.tuples(*(st.none() | s for _, s in COLUMNS)), min_size=0, max_size=12)


async def _staged(conn: asyncpg.Connection, table: str) -> list[tuple[str | None, ...]]:
    cols = ", ".join(f"{n}::text" for n in NAMES)
    return [tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM {table} ORDER BY n")]


async def _both(dsn: str, records: Sequence[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
    """The staged contents via asyncpg and via the accelerator's payload."""
    numbered = [(i, *r) for i, r in enumerate(records)]
    payload = cdc_sink_postgres_native.encode_copy(numbered, native.copy_codes(TYPES) or b"")
    assert payload is not None
    conn = await asyncpg.connect(dsn)
    try:
        defs = ", ".join(f"{n} {t}" for n, t in zip(NAMES, TYPES, strict=True))
        for table in ("via_asyncpg", "via_native"):
            await conn.execute(f"CREATE TEMP TABLE {table} ({defs})")
        await conn.copy_records_to_table("via_asyncpg", records=numbered, columns=NAMES)
        # (asyncpg sends memoryview pieces as they are; its stubs say bytes)
        await conn.copy_to_table("via_native", source=native.pieces([payload]), columns=NAMES, format="binary")  # type: ignore[arg-type]
        return await _staged(conn, "via_asyncpg"), await _staged(conn, "via_native")
    finally:
        await conn.close()


pytestmark = pytest.mark.integration


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(records=_records)
def test_staged_values_equal_asyncpg(postgres_dsn: str, records: list[tuple[Any, ...]]) -> None:
    reference, accelerated = asyncio.run(_both(postgres_dsn, records))
    assert accelerated == reference


def test_edge_values_equal_asyncpg(postgres_dsn: str) -> None:
    edge = [
        (
            -(2**15),
            -(2**31),
            -(2**63),
            math.nan,
            math.nan,
            True,
            "",
            b"",
            uuid.UUID(int=0),
            dt.datetime.max.replace(tzinfo=UTC),
            dt.date.max,
            Decimal("-0"),
        ),
        (
            2**15 - 1,
            2**31 - 1,
            2**63 - 1,
            math.inf,
            -math.inf,
            False,
            "äöü €𝄞 中文",
            b"\x00\xff",
            uuid.UUID(int=2**128 - 1),
            dt.datetime.min.replace(tzinfo=UTC),
            dt.date.min,
            Decimal("1E-16383"),
        ),
        (
            0,
            0,
            0,
            -0.0,
            -0.0,
            True,
            "x" * 10_000,
            bytearray(b"ba"),
            uuid.uuid4(),
            dt.datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC),
            dt.date(1969, 7, 20),
            Decimal("-12345678901234567890.000001000"),
        ),
        (None,) * len(COLUMNS),
    ]
    reference, accelerated = asyncio.run(_both(postgres_dsn, edge))
    assert accelerated == reference
    assert reference[0][4:6] == ("NaN", "NaN") and reference[1][4:6] == ("Infinity", "-Infinity")
    assert reference[0][10] == "infinity" and reference[1][10] == "-infinity"  # as asyncpg maps them


@pytest.mark.parametrize(
    ("sql", "value"),
    [
        ("smallint", 2**15),
        ("integer", -(2**31) - 1),
        ("bigint", 2**63),
        ("bigint", "1"),
        ("bigint", 1.0),
        ("real", 1e39),
        ("real", "1.5"),
        ("double precision", Decimal("1.5")),
        ("boolean", 1),
        ("text", b"bytes"),
        ("text", "lone \ud800 surrogate"),
        ("bytea", "text"),
        ("bytea", memoryview(b"x")),
        ("uuid", "00000000-0000-0000-0000-000000000000"),
        ("timestamptz", dt.datetime(2020, 1, 1)),  # naive: asyncpg reads it in the local zone
        ("timestamptz", dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))),
        ("timestamptz", dt.date(2020, 1, 1)),
        ("date", dt.datetime(2020, 1, 1, tzinfo=UTC)),
        ("numeric", Decimal("NaN")),
        ("numeric", Decimal("-Infinity")),
        ("numeric", Decimal("1E-16384")),
        ("numeric", 5),
        ("numeric", 1.5),
    ],
)
def test_declines_what_asyncpg_must_handle(sql: str, value: Any) -> None:
    codes = native.copy_codes(("bigint", sql))
    assert codes is not None
    assert cdc_sink_postgres_native.encode_copy([(1, value)], codes) is None
    assert cdc_sink_postgres_native.encode_copy([(1, None)], codes) is not None


def test_declines_unknown_types_and_shapes() -> None:
    assert native.copy_codes(("bigint", "jsonb")) is None
    assert native.copy_codes(("text[]",)) is None
    codes = native.copy_codes(("bigint", "text")) or b""
    assert cdc_sink_postgres_native.encode_copy([(1,)], codes) is None  # wrong width
    assert cdc_sink_postgres_native.encode_copy([{1, 2}], codes) is None  # type: ignore[list-item]  # not a tuple or list
    assert cdc_sink_postgres_native.encode_copy([], bytes([99])) is None  # unknown code
    assert cdc_sink_postgres_native.encode_copy([[1, "a"]], codes) == cdc_sink_postgres_native.encode_copy([(1, "a")], codes)


def test_payload_layout() -> None:
    payload = cdc_sink_postgres_native.encode_copy([(1, None)], native.copy_codes(("bigint", "text")) or b"")
    assert (
        payload
        == b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8 + b"\x00\x02" + b"\x00\x00\x00\x08" + (1).to_bytes(8, "big") + b"\xff" * 4 + b"\xff\xff"
    )


def _merge(table: str, types: tuple[str, ...]) -> StagedMerge:
    return StagedMerge(staging=table, columns=tuple(NAMES[: len(types)]), column_types=types, select_sql="SELECT 1", tail_sql="")


async def _copy_in_both_ways(dsn: str, records: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any], int]:
    calls = 0
    real = cdc_sink_postgres_native

    class Spy:
        @staticmethod
        def encode_copy(recs: Any, codes: bytes) -> bytes | None:
            nonlocal calls
            calls += 1
            out: bytes | None = real.encode_copy(recs, codes)
            return out

    monkeypatch.setattr(native, "_native", Spy)
    conn = await asyncpg.connect(dsn)
    try:
        types = TYPES[: len(records[0])]
        defs = ", ".join(f"{n} {t}" for n, t in zip(NAMES, types, strict=True))
        out = []
        for table, switch in (("fallback", "0"), ("accelerated", "1")):
            monkeypatch.setenv("CDC_SINK_POSTGRES_NATIVE", switch)
            await conn.execute(f"CREATE TEMP TABLE {table} ({defs})")
            await _merge(table, types).copy_in(conn, records)
            cols = ", ".join(f"{n}::text" for n in NAMES[: len(types)])
            out.append([tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM {table} ORDER BY n")])
        return out[0], out[1], calls
    finally:
        await conn.close()


def test_staged_merge_uses_it_and_falls_back(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # NaN decimals are declined: that COPY goes through asyncpg, with the same result.
    for records in (
        [
            (
                1,
                7,
                8,
                9,
                1.5,
                2.5,
                True,
                "t",
                b"b",
                uuid.UUID(int=1),
                dt.datetime(2020, 1, 1, tzinfo=UTC),
                dt.date(2020, 1, 1),
                Decimal("1.10"),
            )
        ],
        [(1, None, None, None, None, None, None, None, None, None, None, None, Decimal("NaN"))],
    ):
        fallback, accelerated, calls = asyncio.run(_copy_in_both_ways(postgres_dsn, records, monkeypatch))
        assert calls == 1  # only with the switch on
        assert accelerated == fallback


def test_text_with_nul_is_refused_by_the_server_either_way(postgres_dsn: str) -> None:
    async def run() -> tuple[type[BaseException], type[BaseException]]:
        conn = await asyncpg.connect(postgres_dsn)
        errors: list[type[BaseException]] = []
        try:
            await conn.execute("CREATE TEMP TABLE nul (n bigint, t text)")
            payload = cdc_sink_postgres_native.encode_copy([(1, "a\x00b")], native.copy_codes(("bigint", "text")) or b"")
            assert payload is not None
            for copy in (
                conn.copy_records_to_table("nul", records=[(1, "a\x00b")], columns=["n", "t"]),
                conn.copy_to_table("nul", source=native.pieces([payload]), columns=["n", "t"], format="binary"),  # type: ignore[arg-type]
            ):
                with pytest.raises(asyncpg.PostgresError) as info:
                    await copy
                errors.append(type(info.value))
        finally:
            await conn.close()
        return errors[0], errors[1]

    reference, accelerated = asyncio.run(run())
    assert accelerated is reference


@settings(max_examples=100, deadline=None)
@given(records=_records, data=st.data())
def test_encoding_selected_fields_equals_encoding_their_tuples(records: list[tuple[Any, ...]], data: st.DataObject) -> None:
    width = len(COLUMNS)
    keep = data.draw(st.lists(st.integers(0, width - 1), min_size=2, max_size=width, unique=True))
    codes = native.copy_codes(tuple(COLUMNS[i][0] for i in keep)) or b""
    full = [list(r) for r in records]
    projected = native.ProjectedRecords(full, keep)
    tuples = [tuple(r[i] for i in keep) for r in records]
    assert len(projected) == len(tuples) and list(projected) == tuples and projected == tuples
    if tuples:
        assert projected[0] == tuples[0] and projected[1:] == tuples[1:]
    assert repr(projected) == repr(tuples)
    assert cdc_sink_postgres_native.encode_copy(full, codes, keep) == cdc_sink_postgres_native.encode_copy(tuples, codes)
    assert cdc_sink_postgres_native.encode_copy(records, codes, keep) == cdc_sink_postgres_native.encode_copy(tuples, codes)
    # native.encode_copy takes the fields straight from the source
    assert native.encode_copy(projected, tuple(COLUMNS[i][0] for i in keep)) == cdc_sink_postgres_native.encode_copy(tuples, codes)


def test_selected_fields_out_of_range_or_miscounted_decline() -> None:
    codes = native.copy_codes(("bigint", "bigint")) or b""
    assert cdc_sink_postgres_native.encode_copy([[1, 2]], codes, [0, 5]) is None
    assert cdc_sink_postgres_native.encode_copy([(1, 2)], codes, [0, 5]) is None
    assert cdc_sink_postgres_native.encode_copy([[1, 2]], codes, [0]) is None
    with pytest.raises(ValueError, match="two fields"):
        native.ProjectedRecords([[1]], [0])


@settings(max_examples=100, deadline=None)
@given(records=_records, slice_rows=st.integers(1, 5), data=st.data())
def test_sliced_encoding_is_the_one_payload_in_pieces(records: list[tuple[Any, ...]], slice_rows: int, data: st.DataObject) -> None:
    numbered = [(i, *r) for i, r in enumerate(records)]
    whole = native.encode_copy(numbered, TYPES)
    pieces = asyncio.run(native.encode_copy_sliced(numbered, TYPES, slice_rows))
    assert pieces is not None and whole is not None
    assert b"".join(pieces) == whole
    assert len(pieces) == max(1, -(-len(numbered) // slice_rows))
    # Projected records (the staged shape) slice the same way.
    keep = data.draw(st.lists(st.integers(0, len(TYPES) - 1), min_size=2, max_size=len(TYPES), unique=True), label="keep")
    projected = native.ProjectedRecords([list(r) for r in numbered], keep)
    kept_types = tuple(TYPES[i] for i in keep)
    sliced = asyncio.run(native.encode_copy_sliced(projected, kept_types, slice_rows))
    assert sliced is not None and b"".join(sliced) == native.encode_copy(projected, kept_types)


def test_sliced_encoding_declines_when_any_slice_does() -> None:
    records = [(i, Decimal(i)) for i in range(7)] + [(7, Decimal("NaN"))]
    assert asyncio.run(native.encode_copy_sliced(records, ("bigint", "numeric"), 3)) is None
    assert asyncio.run(native.encode_copy_sliced(records[:7], ("bigint", "numeric"), 3)) is not None


def test_a_sliced_payload_copies_what_asyncpg_copies(postgres_dsn: str) -> None:
    """Pieces of a payload sent as separate COPY messages: the server sees one stream."""
    records = [(i, f"text {i}", Decimal(i) / 7, dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=i)) for i in range(2500)]
    types = ("bigint", "text", "numeric", "timestamptz")

    async def run() -> tuple[list[Any], list[Any]]:
        pieces = await native.encode_copy_sliced(records, types, 333)
        assert pieces is not None and len(pieces) == 8
        conn = await asyncpg.connect(postgres_dsn)
        try:
            for table in ("sliced_ref", "sliced"):
                await conn.execute(f"CREATE TEMP TABLE {table} (n bigint, t text, d numeric, ts timestamptz)")
            await conn.copy_records_to_table("sliced_ref", records=records, columns=["n", "t", "d", "ts"])
            # (asyncpg sends any buffer; its stubs say bytes)
            source: Any = native.pieces(pieces)
            await conn.copy_to_table("sliced", source=source, columns=["n", "t", "d", "ts"], format="binary")
            query = "SELECT n, t, d::text, ts::text FROM {} ORDER BY n"
            reference = [tuple(r) for r in await conn.fetch(query.format("sliced_ref"))]
            return reference, [tuple(r) for r in await conn.fetch(query.format("sliced"))]
        finally:
            await conn.close()

    reference, sliced = asyncio.run(run())
    assert len(sliced) == 2500 and sliced == reference
