"""The PostgreSQL sink against a real server: types, rejection, evolution, history, crashes,
concurrency, TLS and credentials."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import ipaddress
import math
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import attrs
import pytest
import structlog
from frozendict import frozendict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_sink_helpers import (
    batch,
    collections_schema,
    int_range_delete,
    layout_of,
    partition_delete,
    pos,
    range_delete,
    schema,
    started_sink,
    upsert,
)

from cdc_core.cqltypes import Duration
from cdc_core.errors import PermanentError, TransientError
from cdc_core.events import Cell, ChangeEvent, ComplexChange, Deletion, ElementChange, RangeBound
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.secrets import Secret
from cdc_core.sinks import Batch
from cdc_core.testing.contract import batches_of, normalise_state
from cdc_core.testing.model import latest_state
from cdc_core.testing.strategies import NOW, event_histories, shuffled_with_duplicates
from cdc_core.turns import write_overlapping
from cdc_sink_postgres.config import DEFAULT_INLINE_MAX_VALUES, PostgresSinkConfig, SslConfig, TableConfig
from cdc_sink_postgres.ddl import LatestStateDdl
from cdc_sink_postgres.layout import TableLayout
from cdc_sink_postgres.merge import latest_state_merges
from cdc_sink_postgres.sink import PostgresSink
from cdc_sink_postgres.testing import PostgresHarness

pytestmark = pytest.mark.integration


# Every test with the harness runs twice: merges sent through COPY and a staging table, and sent
# inline (array parameters; a batch whose turn has come then is one statement).
INLINE = [0, DEFAULT_INLINE_MAX_VALUES]


@pytest.fixture(params=INLINE, ids=["copy", "inline"])
async def harness(pg_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[PostgresHarness]:
    h = PostgresHarness(pg_dsn, config_overrides={"inline_max_values": request.param})
    yield h
    await h.destroy()


def _timeuuid(n: int) -> uuid.UUID:
    return uuid.UUID(fields=(n & 0xFFFFFFFF, (n >> 32) & 0xFFFF, 0x1000 | ((n >> 48) & 0x0FFF), 0x80, 0, 1))


# --- every CQL type round-trips --------------------------------------------------------------

ALL_TYPES: dict[str, tuple[str, Any]] = {
    "c_ascii": ("ascii", "plain"),
    "c_text": ("text", "ünïcode ✓ 'quoted' \"double\""),
    "c_varchar": ("varchar", ""),
    "c_tinyint": ("tinyint", -128),
    "c_smallint": ("smallint", 32767),
    "c_int": ("int", -(2**31)),
    "c_bigint": ("bigint", 2**63 - 1),
    "c_counter": ("counter", 42),
    "c_varint": ("varint", 12345678901234567890123456789012345678901234567890),
    "c_decimal": ("decimal", Decimal("-12345678901234567890.123456789012345678901")),
    "c_float": ("float", 1.5),
    "c_double": ("double", 1 / 3),
    "c_boolean": ("boolean", False),
    "c_uuid": ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    "c_timeuuid": ("timeuuid", _timeuuid(123456789)),
    "c_timestamp": ("timestamp", dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)),
    "c_date": ("date", dt.date(1, 1, 1)),
    "c_time": ("time", 86_399_999_999_999),
    "c_duration": ("duration", Duration(14, -3, 123_456_789_012)),
    "c_inet4": ("inet", ipaddress.ip_address("10.1.2.3")),
    "c_inet6": ("inet", ipaddress.ip_address("2001:db8::1")),
    "c_blob": ("blob", b"\x00\xff\x10binary"),
    "c_flist": ("frozen<list<int>>", (3, 1, 2)),
    "c_fset": ("frozen<set<text>>", ("a", "b")),
    "c_fmap": ("frozen<map<int, text>>", frozendict({1: "one", 2: "two"})),
    "c_tuple": ("tuple<int, text, timestamp>", (1, "x", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))),
    "c_fudt": ("frozen<udt<ks.addr>{street:text,zip:int}>", frozendict({"street": "Main", "zip": None})),
    "c_nested": ("frozen<list<frozen<map<text, decimal>>>>", (frozendict({"k": Decimal("1.50")}),)),
    "c_vector": ("vector<float, 3>", (1.0, -2.5, 0.25)),
    "c_dvector": ("vector<double, 2>", (0.1, 0.2)),
    "c_uuidlist": ("frozen<list<uuid>>", (uuid.UUID(int=1), uuid.UUID(int=2))),
    "c_nan": ("double", math.nan),
    "c_inf": ("float", -math.inf),
}

COLLECTIONS: dict[str, tuple[str, ComplexChange, Any]] = {
    "m_list": (
        "list<text>",
        ComplexChange(
            elements=(
                ElementChange(path=_timeuuid(2), cell=Cell(timestamp=10, value="second")),
                ElementChange(path=_timeuuid(1), cell=Cell(timestamp=10, value="first")),
            )
        ),
        ("first", "second"),
    ),
    "m_set": (
        "set<int>",
        ComplexChange(elements=tuple(ElementChange(path=i, cell=Cell(timestamp=10)) for i in (5, -1, 3))),
        frozenset({5, -1, 3}),
    ),
    "m_map": (
        "map<int, timestamp>",
        ComplexChange(elements=(ElementChange(path=7, cell=Cell(timestamp=10, value=dt.datetime(2021, 5, 5, tzinfo=dt.UTC))),)),
        {7: dt.datetime(2021, 5, 5, tzinfo=dt.UTC)},
    ),
    "m_udt": (
        "udt<ks.pt>{x:int,label:text}",
        ComplexChange(elements=(ElementChange(path="x", cell=Cell(timestamp=10, value=4)),)),
        {"x": 4, "label": None},
    ),
    "m_tuples": (
        "list<frozen<tuple<int, blob>>>",
        ComplexChange(elements=(ElementChange(path=_timeuuid(9), cell=Cell(timestamp=10, value=(1, b"\x01"))),)),
        ((1, b"\x01"),),
    ),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


async def test_tables_keyed_by_frozen_lists_and_sets_are_written(harness: PostgresHarness) -> None:
    """A frozen list or set of scalars is stored as a PostgreSQL array; as a key column its values
    are hashed on the way (the fold's dict keys): rows, updates and deletions of
    such a table converge like any other (a list value once failed the whole batch: unhashable),
    and a set is one array whatever order Python iterates it in."""
    s = schema(f"fk_{uuid.uuid4().hex[:6]}", {"pk": "frozen<list<int>>", "ck": "frozen<set<text>>", "v": "text"}, ck=("ck",))
    events = [
        upsert(s, {"pk": (1, 2), "ck": frozenset({"a"})}, 10, v="x"),
        upsert(s, {"pk": (1, 2), "ck": frozenset({"b", "a"})}, 10, v="y"),
        upsert(s, {"pk": (1, 2), "ck": frozenset({"a"})}, 20, insert=False, v="x2"),
        upsert(s, {"pk": (3,), "ck": frozenset({"c"})}, 10, v="z"),
        partition_delete(s, {"pk": (3,)}, 30),
    ]
    sink = await started_sink(harness)
    for e in events:
        assert (await sink.write(batch([e]))).rejected == []
    assert (await sink.write(batch(events))).rejected == []  # (all in one batch: folded together)
    # (Frozen sets read back as tuples of their elements, in order.)
    assert (await harness.read_state(s, NOW)).rows == {
        ((1, 2), ("a",)): {"pk": (1, 2), "ck": ("a",), "v": "x2"},
        ((1, 2), ("a", "b")): {"pk": (1, 2), "ck": ("a", "b"), "v": "y"},
    }


async def test_every_cql_type_round_trips(harness: PostgresHarness) -> None:
    cols = {"pk": "int"} | {n: t for n, (t, _) in ALL_TYPES.items()} | {n: t for n, (t, _, _) in COLLECTIONS.items()}
    s = schema("alltypes", cols)
    values: dict[str, Any] = {n: v for n, (_, v) in ALL_TYPES.items()} | {n: c for n, (_, c, _) in COLLECTIONS.items()}
    sink = await harness.make_sink()
    result = await sink.write(batch([upsert(s, {"pk": 1}, 10, **values)]))
    assert not result.rejected, [r.error for r in result.rejected]
    state = await harness.read_state(s, NOW)
    row = state.rows[(1,)]
    for name, (_, expected) in ALL_TYPES.items():
        assert _same(row[name], expected), (name, row[name], expected)
    for name, (_, _, expected) in COLLECTIONS.items():
        assert row[name] == expected, (name, row[name], expected)
    # The stored types are the documented ones.
    conn = await asyncpg.connect(harness.dsn)
    try:
        types: dict[str, str] = dict(
            await conn.fetch(  # type: ignore[arg-type]  # Records are (name, type) pairs
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
                harness.schema,
                "ks_alltypes",
            )
        )
        assert types["c_decimal"] == "numeric"
        assert types["c_varint"] == "numeric"
        assert types["c_timestamp"] == "timestamp with time zone"
        assert types["c_time"] == "bigint"
        assert types["c_uuid"] == "uuid"
        assert types["c_inet4"] == "inet"
        assert types["c_blob"] == "bytea"
        assert types["c_flist"] == "ARRAY"
        assert types["c_fmap"] == "jsonb"
        assert types["c_vector"] == "ARRAY"
        assert types["m_set"] == "ARRAY"
        assert types["m_map"] == "jsonb"
        text = await conn.fetchval('SELECT c_fmap::text FROM cdc_test."ks_alltypes"')
        assert text == '{"1": "one", "2": "two"}'
    finally:
        await conn.close()


async def test_every_type_not_staged_as_an_array_round_trips_inline(harness: PostgresHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The types a merge can send inline (every staged type but arrays: frozen lists and sets,
    vectors) round-trip through array parameters exactly as through COPY; in the inline run the
    row merge is really sent inline."""
    from cdc_sink_postgres.merge import StagedMerge

    every = {"pk": "int"} | {n: t for n, (t, _) in ALL_TYPES.items()} | {n: t for n, (t, _, _) in COLLECTIONS.items()}
    layout = TableLayout.from_schema(schema("probe", every), pg_schema=harness.schema, base="probe")
    scalar = {c.name for c in layout.columns if not c.staging_sql.endswith("]")}
    assert {"c_decimal", "c_duration", "c_tuple", "c_fudt", "c_fmap", "c_inet4", "m_map"} <= scalar
    s = schema("alltypes_inline", {n: t for n, t in every.items() if n in scalar})
    values: dict[str, Any] = {n: v for n, (_, v) in ALL_TYPES.items() if n in scalar}
    values |= {n: c for n, (_, c, _) in COLLECTIONS.items() if n in scalar}
    inline: list[str] = []
    merge_inline = StagedMerge.merge_inline

    async def counting(self: StagedMerge, conn: Any, records: Any) -> None:
        inline.append(self.staging)
        await merge_inline(self, conn, records)

    monkeypatch.setattr(StagedMerge, "merge_inline", counting)
    single = PostgresSink._single_statement

    def counting_single(self: PostgresSink, steps: Any, b: Batch, *staged: Any, **kw: Any) -> Any:
        statement = single(self, steps, b, *staged, **kw)
        if statement is not None and all(step.inline for step in steps):
            inline.append("one statement")
        return statement

    monkeypatch.setattr(PostgresSink, "_single_statement", counting_single)
    sink = await harness.make_sink()
    result = await sink.write(batch([upsert(s, {"pk": 1}, 10, **values)]))
    assert not result.rejected, [r.error for r in result.rejected]
    assert bool(inline) == (harness.config_overrides["inline_max_values"] > 0), inline
    row = (await harness.read_state(s, NOW)).rows[(1,)]
    for name, (_, expected) in ALL_TYPES.items():
        if name in scalar:
            assert _same(row[name], expected), (name, row[name], expected)
    for name, (_, _, expected) in COLLECTIONS.items():
        if name in scalar:
            assert row[name] == expected, (name, row[name], expected)


# --- rejection (DLQ) -------------------------------------------------------------------------


async def test_nul_in_text_rejects_only_that_event(harness: PostgresHarness) -> None:
    s = schema("poison", {"pk": "int", "v": "text", "l": "list<text>"})
    good1 = upsert(s, {"pk": 1}, 10, v="fine")
    poison = upsert(s, {"pk": 2}, 10, v="bad\x00value")
    poison_elem = upsert(
        s, {"pk": 4}, 10, l=ComplexChange(elements=(ElementChange(path=_timeuuid(1), cell=Cell(timestamp=10, value="x\x00")),))
    )
    good2 = upsert(s, {"pk": 3}, 10, v="also fine")
    b = batch([good1, poison, poison_elem, good2])
    sink = await harness.make_sink()
    result = await sink.write(b)
    assert [r.event for r in result.rejected] == [poison, poison_elem]
    assert "NUL" in result.rejected[0].error
    state = await harness.read_state(s, NOW)
    assert set(state.rows) == {(1,), (3,)}
    assert dict(await sink.committed_positions()) == dict(b.positions)


async def test_a_batch_of_several_fold_slices_rejects_exactly_its_culprits(harness: PostgresHarness) -> None:
    """The fold runs in slices with the event loop served between them: events refused in any
    slice are exactly the culprits, and a key written again in a later slice merges."""
    from cdc_sink_postgres.sink import FOLD_SLICE

    s = schema("slices", {"pk": "int", "v": "text"})
    n = 3 * FOLD_SLICE + 7
    culprits = {3, FOLD_SLICE + 1, 2 * FOLD_SLICE + 5, n - 2}
    events = [upsert(s, {"pk": i}, 10, v="bad\x00" if i in culprits else f"v{i}") for i in range(n - 1)]
    events.append(upsert(s, {"pk": 0}, 20, v="again"))  # the first slice's key, in the last one
    sink = await started_sink(harness)
    groups = await sink._group(events)
    ticks = 0
    folding = True

    async def ticker() -> None:
        nonlocal ticks
        while folding:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await sink._fold_all(groups)
    finally:
        folding = False
        await task
    assert ticks >= 3  # the loop ran between the slices

    result = await sink.write(batch(events))
    assert sorted(events.index(r.event) for r in result.rejected) == sorted(culprits)
    state = await harness.read_state(s, NOW)
    assert sorted(state.rows) == [(i,) for i in range(n - 1) if i not in culprits]
    assert state.rows[(0,)]["v"] == "again" and state.rows[(FOLD_SLICE + 2,)]["v"] == f"v{FOLD_SLICE + 2}"


async def test_staging_tables_hold_only_the_batch_being_merged(harness: PostgresHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staging tables are emptied when a transaction starts using them (what a committed batch
    staged stays until then; a rolled-back one leaves them as it found them): every merge reads
    exactly its own batch's records."""
    from cdc_sink_postgres.idents import quote_ident
    from cdc_sink_postgres.merge import StagedMerge

    s = schema("staging", {"pk": "int", "v": "text"})
    sink = await started_sink(harness, pool_min_size=1, pool_max_size=1, inline_max_values=0)  # one session, one staging table
    staged: list[int] = []
    merge_staged = StagedMerge.merge_staged

    async def counting(self: StagedMerge, conn: Any) -> None:
        staged.append(await conn.fetchval(f"SELECT count(*) FROM {quote_ident(self.staging)}"))
        await merge_staged(self, conn)

    monkeypatch.setattr(StagedMerge, "merge_staged", counting)
    # Merged one statement at a time (not together with the offsets), so that each merge counts
    # what it reads and the failure comes after it; the one-statement form reads the same tables.
    monkeypatch.setattr(PostgresSink, "_single_statement", lambda self, steps, b, staged=(), **kw: None)
    b1, b2, b3 = (batch([upsert(s, {"pk": i}, ts, v=f"v{ts}") for i in range(n)]) for ts, n in ((10, 5), (11, 3), (12, 2)))
    await sink.write(b1)
    store = sink.offsets.store

    async def failing_once(conn: Any, name: str, positions: Any) -> None:
        sink.offsets.store = store  # type: ignore[method-assign]
        raise TransientError("injected after the merge")

    sink.offsets.store = failing_once  # type: ignore[method-assign,assignment]
    with pytest.raises(TransientError):
        await sink.write(b2)
    await sink.write(b2)
    await sink.write(b3)
    assert staged == [5, 3, 3, 2]
    state = await harness.read_state(s, NOW)
    assert {k: r["v"] for k, r in state.rows.items()} == {(0,): "v12", (1,): "v12", (2,): "v11", (3,): "v10", (4,): "v10"}


async def test_server_side_data_error_is_bisected_to_the_culprit(harness: PostgresHarness) -> None:
    # A configured override the value does not fit: only the server notices (22003).
    s = schema("narrow", {"pk": "int", "v": "int"})
    sink = await started_sink(harness, tables={"ks.narrow": TableConfig(column_types={"v": "smallint"})})
    events = [upsert(s, {"pk": i}, 10, v=100_000 if i == 5 else i) for i in range(8)]
    result = await sink.write(batch(events))
    assert [r.event for r in result.rejected] == [events[5]]
    assert "out of range" in result.rejected[0].error
    state = await harness.read_state(s, NOW)
    assert sorted(state.rows) == [(i,) for i in range(8) if i != 5]
    assert state.rows[(3,)]["v"] == 3


# --- dead-lettering before the commit (Batch.dead_letter) -------------------------------------


def _poisoned(kind: str) -> tuple[TableSchema, list[ChangeEvent], dict[str, Any]]:
    """A batch with one poison event: refused in Python (NUL) or only by the server (22003)."""
    if kind == "python":
        s = schema("dl_py", {"pk": "int", "v": "text"})
        return s, [upsert(s, {"pk": i}, 10, v="bad\x00" if i == 2 else f"v{i}") for i in range(4)], {}
    s = schema("dl_server", {"pk": "int", "v": "int"})
    overrides = {"tables": {"ks.dl_server": TableConfig(column_types={"v": "smallint"})}}
    return s, [upsert(s, {"pk": i}, 10, v=100_000 if i == 2 else i) for i in range(4)], overrides


@pytest.mark.parametrize("kind", ["python", "server"])
async def test_dead_letter_failure_commits_nothing(harness: PostgresHarness, kind: str) -> None:
    s, events, overrides = _poisoned(kind)
    sink = await started_sink(harness, **overrides)
    first = batch([upsert(s, {"pk": 100}, 5, v="x" if kind == "python" else 1)])
    await sink.write(first)

    class DlqDown(Exception):
        pass

    async def failing(rejected: Any) -> None:
        raise DlqDown("the DLQ is unavailable")

    b = attrs.evolve(batch(events), dead_letter=failing)
    with pytest.raises(DlqDown):
        await sink.write(b)
    assert dict(await sink.committed_positions()) == dict(first.positions)
    state = await harness.read_state(s, NOW)
    assert set(state.rows) == {(100,)}


@pytest.mark.parametrize("kind", ["python", "server"])
async def test_dead_letter_is_called_before_the_commit(harness: PostgresHarness, kind: str) -> None:
    s, events, overrides = _poisoned(kind)
    sink = await started_sink(harness, **overrides)
    first = batch([upsert(s, {"pk": 100}, 5, v="x" if kind == "python" else 1)])
    await sink.write(first)
    seen: list[tuple[list[ChangeEvent], list[Any], set[Any]]] = []

    async def recording(rejected: Any) -> None:
        # Another connection: the batch's offsets and data are not committed yet.
        conn = await asyncpg.connect(harness.dsn)
        try:
            offsets = await conn.fetch('SELECT node, "offset" FROM cdc_test.cdc_offsets ORDER BY node')
            keys = {r["pk"] for r in await conn.fetch("SELECT pk FROM cdc_test.ks_" + s.table)}
        finally:
            await conn.close()
        seen.append(([r.event for r in rejected], [(r["node"], r["offset"]) for r in offsets], keys))

    b = attrs.evolve(batch(events), dead_letter=recording)
    result = await sink.write(b)
    assert [r.event for r in result.rejected] == [events[2]]
    assert [events[2]] in [dead for dead, _, _ in seen]
    for _, offsets, keys in seen:
        assert offsets == [(n, p.offset) for n, p in sorted(first.positions.items())]
        assert keys == {100}
    assert dict(await sink.committed_positions()) == dict(b.positions)
    state = await harness.read_state(s, NOW)
    assert set(state.rows) == {(100,), (0,), (1,), (3,)}


# --- keys too long for an index --------------------------------------------------------------


def _incompressible(n: int, seed: int) -> str:
    import random
    import string

    rnd = random.Random(seed)
    return "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(n))


async def test_oversized_key_rejects_only_that_event(harness: PostgresHarness) -> None:
    s = schema("bigkey", {"pk": "int", "ck": "text", "v": "int"}, ck=("ck",))
    big = _incompressible(9000, 1)
    events = [
        upsert(s, {"pk": 1, "ck": "ok1"}, 10, v=1),
        upsert(s, {"pk": 1, "ck": big}, 10, v=2),
        upsert(s, {"pk": 1, "ck": "ok2"}, 10, v=3),
    ]
    sink = await harness.make_sink()
    b = batch(events)
    result = await sink.write(b)
    assert [r.event for r in result.rejected] == [events[1]]
    assert "index row limit" in result.rejected[0].error and "ck" in result.rejected[0].error
    state = await harness.read_state(s, NOW)
    assert set(state.rows) == {(1, "ok1"), (1, "ok2")}
    assert dict(await sink.committed_positions()) == dict(b.positions)


async def test_key_the_server_refuses_class_54_is_bisected(harness: PostgresHarness) -> None:
    # Two clustering values each under the per-value limit, together over the btree row limit:
    # only the server notices (SQLSTATE 54000) and the batch is bisected to the culprit.
    s = schema("bigkey2", {"pk": "int", "a": "text", "b": "text", "v": "int"}, ck=("a", "b"))
    big = upsert(s, {"pk": 1, "a": _incompressible(2000, 2), "b": _incompressible(2000, 3)}, 10, v=0)
    events = [upsert(s, {"pk": 1, "a": f"a{i}", "b": "b"}, 10, v=i) for i in range(6)]
    events.insert(3, big)
    sink = await harness.make_sink()
    result = await sink.write(batch(events))
    assert [r.event for r in result.rejected] == [big]
    state = await harness.read_state(s, NOW)
    assert set(state.rows) == {(1, f"a{i}", "b") for i in range(6)}


async def test_range_deletion_with_huge_bounds_is_stored(harness: PostgresHarness) -> None:
    s = schema("bigbounds", {"pk": "int", "ck": "text", "v": "int"}, ck=("ck",))
    lo, hi = "a" + _incompressible(2500, 4), "b" + _incompressible(2500, 5)
    events = [
        upsert(s, {"pk": 1, "ck": "a"}, 10, v=1),
        upsert(s, {"pk": 1, "ck": "az"}, 10, v=2),
        upsert(s, {"pk": 1, "ck": "c"}, 10, v=3),
        range_delete(s, {"pk": 1}, RangeBound(values=(lo,), inclusive=True), RangeBound(values=(hi,), inclusive=True), 20),
    ]
    sink = await harness.make_sink()
    result = await sink.write(batch(events))
    assert not result.rejected
    state = await harness.read_state(s, NOW)
    assert normalise_state(state) == normalise_state(latest_state(events, now=NOW))


# --- timeuuid clustering order ----------------------------------------------------------------


def _tu(time_60: int, clock_seq: int = 0, node: int = 1) -> uuid.UUID:
    return uuid.UUID(
        fields=(
            time_60 & 0xFFFFFFFF,
            (time_60 >> 32) & 0xFFFF,
            0x1000 | ((time_60 >> 48) & 0x0FFF),
            0x80 | (clock_seq >> 8),
            clock_seq & 0xFF,
            node,
        )
    )


async def test_range_deletion_orders_timeuuids_like_cassandra(harness: PostgresHarness) -> None:
    s = TableSchema(
        keyspace="ks",
        table="tu_range",
        id=uuid.uuid4(),
        columns=(
            ColumnSchema(name="pk", type="int", kind=ColumnKind.PARTITION_KEY, position=0),
            ColumnSchema(name="ck", type="timeuuid", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.ASC),
            ColumnSchema(name="v", type="text", kind=ColumnKind.REGULAR, position=-1),
        ),
    )
    early = _tu(10)  # earlier, but its bytes are greater (time_low first)
    late = _tu(2**32 + 1)
    assert early.time < late.time and early.bytes > late.bytes
    # Same time: TimeUUIDType compares the low 8 bytes as SIGNED bytes (0xff < 0x7f).
    same_hi, same_lo = _tu(2**40, clock_seq=0x7F), _tu(2**40, clock_seq=0xFF)
    rows = {"early": early, "late": late, "same_hi": same_hi, "same_lo": same_lo}

    def until(pk: int, end: uuid.UUID, ts: int) -> ChangeEvent:
        return range_delete(s, {"pk": pk}, None, RangeBound(values=(end,), inclusive=False), ts)

    events = [upsert(s, {"pk": pk, "ck": u}, 100, v=name) for pk in (1, 2) for name, u in rows.items()]
    events += [until(1, late, 200), until(2, same_hi, 200)]  # DELETE … WHERE ck < x
    sink = await harness.make_sink()
    assert not (await sink.write(batch(events))).rejected
    state = await harness.read_state(s, NOW)
    # pk 1: only rows at or after late's time survive; pk 2: every row ordered before same_hi
    # goes, same_lo too (same time, and 0xff is a smaller signed byte than 0x7f).
    assert sorted(r["v"] for k, r in state.rows.items() if k[0] == 1) == ["late", "same_hi", "same_lo"]
    assert sorted(r["v"] for k, r in state.rows.items() if k[0] == 2) == ["same_hi"]


# --- schema evolution ------------------------------------------------------------------------


async def test_added_and_dropped_columns(harness: PostgresHarness) -> None:
    v1 = schema("evolve", {"pk": "int", "a": "text", "b": "int"})
    v2 = attrs.evolve(v1, columns=(*v1.columns, ColumnSchema(name="c", type="set<int>", kind=ColumnKind.REGULAR, position=-1)))
    v3 = attrs.evolve(v2, columns=tuple(c for c in v2.columns if c.name != "b"), dropped=(("b", 500),))
    sink = await harness.make_sink()
    await sink.write(batch([upsert(v1, {"pk": 1}, 10, a="x", b=1)]))
    set_c = ComplexChange(elements=(ElementChange(path=4, cell=Cell(timestamp=20)),))
    await sink.write(batch([upsert(v2, {"pk": 2}, 20, a="y", b=2, c=set_c), upsert(v1, {"pk": 3}, 21, a="z", b=3)]))
    state = await harness.read_state(v2, NOW)
    assert state.rows[(2,)] == {"pk": 2, "a": "y", "b": 2, "c": frozenset({4})}
    assert state.rows[(1,)] == {"pk": 1, "a": "x", "b": 1, "c": None}
    # A restarted sink (fresh caches) drops b: the view hides it, the storage keeps it.
    restarted = await harness.make_sink()
    await restarted.write(batch([upsert(v3, {"pk": 4}, 30, a="w")]))
    # An event of the old schema still writing b (before it saw the drop) does not resurrect it.
    await restarted.write(batch([upsert(v1, {"pk": 5}, 31, a="v", b=5)]))
    state = await harness.read_state(v3, NOW)
    assert state.rows[(4,)] == {"pk": 4, "a": "w", "c": None}
    assert state.rows[(5,)] == {"pk": 5, "a": "v", "c": None}
    conn = await asyncpg.connect(harness.dsn)
    try:
        view_cols = [
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'cdc_test' AND table_name = 'ks_evolve' "
                "ORDER BY ordinal_position"
            )
        ]
        assert view_cols == ["pk", "a", "c"]
        kept = await conn.fetchval('SELECT b FROM cdc_test."ks_evolve__state" WHERE pk = 2')
        assert kept == 2
    finally:
        await conn.close()


async def test_udt_gaining_a_field_widens_the_column(harness: PostgresHarness) -> None:
    t1 = "udt<ks.addr>{street:text,zip:int}"
    t2 = "udt<ks.addr>{street:text,zip:int,city:text}"
    s1 = schema("udt_grow", {"pk": "int", "a": f"frozen<{t1}>", "m": t1})
    s2 = schema("udt_grow", {"pk": "int", "a": f"frozen<{t2}>", "m": t2})
    sink = await harness.make_sink()
    await sink.write(batch([upsert(s1, {"pk": 1}, 100, a=frozendict(street="s", zip=1))]))
    city = ComplexChange(elements=(ElementChange(path="city", cell=Cell(timestamp=200, value="Rome")),))
    r = await sink.write(
        batch([upsert(s2, {"pk": 2}, 200, a=frozendict(street="s2", zip=2, city="Paris")), upsert(s2, {"pk": 3}, 200, m=city)])
    )
    assert not r.rejected, [x.error for x in r.rejected]
    # An event of the older schema afterwards (same batch as a newer one, and alone) never
    # narrows the column back; events of both versions apply.
    r = await sink.write(
        batch(
            [
                upsert(s1, {"pk": 4}, 300, a=frozendict(street="s4", zip=4)),
                upsert(s2, {"pk": 5}, 300, m=city, a=frozendict(street="s5", zip=5, city="Oslo")),
            ]
        )
    )
    assert not r.rejected, [x.error for x in r.rejected]
    restarted = await harness.make_sink()
    assert not (await restarted.write(batch([upsert(s1, {"pk": 6}, 300, a=frozendict(street="s6", zip=6))]))).rejected
    assert not (await restarted.write(batch([upsert(s2, {"pk": 7}, 300, m=city)]))).rejected
    state = await harness.read_state(s2, NOW)
    assert state.rows[(2,)]["a"] == {"street": "s2", "zip": 2, "city": "Paris"}
    assert state.rows[(3,)]["m"] == {"street": None, "zip": None, "city": "Rome"}
    assert state.rows[(5,)]["a"] == {"street": "s5", "zip": 5, "city": "Oslo"}
    assert state.rows[(7,)]["m"] == {"street": None, "zip": None, "city": "Rome"}
    assert state.rows[(4,)]["a"]["street"] == "s4"
    conn = await asyncpg.connect(harness.dsn)
    try:
        rows = await conn.fetch("SELECT column_name, cql_type FROM cdc_test.cdc_columns WHERE destination = 'ks_udt_grow'")
        types: dict[str, str] = {r["column_name"]: r["cql_type"] for r in rows}
    finally:
        await conn.close()
    assert types["a"] == f"frozen<{t2}>" and types["m"] == t2


async def test_dropped_then_re_added_column_hides_the_old_values(harness: PostgresHarness) -> None:
    s1 = schema("readd", {"pk": "int", "v": "text", "st": "set<int>", "w": "int"})
    kept = tuple(c for c in s1.columns if c.name not in ("v", "st"))
    s2 = attrs.evolve(s1, columns=kept, dropped=(("v", 150), ("st", 150)))
    s3 = attrs.evolve(s1, dropped=(("v", 150), ("st", 150)))
    sink = await harness.make_sink()
    elems = ComplexChange(elements=(ElementChange(path=1, cell=Cell(timestamp=100)),))
    await sink.write(batch([upsert(s1, {"pk": 1}, 100, v="old", st=elems, w=1), upsert(s1, {"pk": 9}, 150, insert=False, v="at drop")]))
    await sink.write(batch([upsert(s2, {"pk": 2}, 160, w=2)]))
    new_elems = ComplexChange(elements=(ElementChange(path=7, cell=Cell(timestamp=170)),))
    await sink.write(batch([upsert(s3, {"pk": 3}, 170, v="new", st=new_elems, w=3)]))
    # A late event from before the drop (another replica) is still shadowed by it.
    await sink.write(batch([upsert(s1, {"pk": 3}, 120, insert=False, v="late")]))
    state = await harness.read_state(s3, NOW)
    assert state.rows[(1,)] == {"pk": 1, "v": None, "st": None, "w": 1}
    assert (9,) not in state.rows  # its only cell was written at the drop time
    assert state.rows[(3,)] == {"pk": 3, "v": "new", "st": frozenset({7}), "w": 3}
    # A restarted sink (registry read back) hides them too.
    restarted = await harness.make_sink()
    await restarted.write(batch([upsert(s3, {"pk": 4}, 180, v="x")]))
    state = await harness.read_state(s3, NOW)
    assert state.rows[(1,)]["v"] is None and state.rows[(4,)]["v"] == "x"


async def test_names_colliding_with_bookkeeping_are_refused_clearly(harness: PostgresHarness) -> None:
    clash = schema("clash", {"pk": "int", "v": "text", "v#ts": "bigint"})
    pk_ts = schema("pk_ts", {"ts": "int", "v": "int"}, pk=("ts",))
    fine = schema("hash_ok", {"pk": "int", "a#b": "text", "#c": "int"})
    hashed: dict[str, Any] = {"a#b": "y", "#c": 3}
    sink = await harness.make_sink()
    events = [
        upsert(clash, {"pk": 1}, 10, v="x"),
        upsert(fine, {"pk": 1}, 10, **hashed),
        upsert(pk_ts, {"ts": 1}, 10, v=1),
    ]
    b = batch(events)
    result = await sink.write(b)
    assert [r.event for r in result.rejected] == [events[0], events[2]]
    assert {r.error_type for r in result.rejected} == {"ConfigError"}
    assert "v#ts" in result.rejected[0].error and "collide" in result.rejected[0].error
    assert "'ts'" in result.rejected[1].error
    assert (await harness.read_state(fine, NOW)).rows == {(1,): {"pk": 1, "a#b": "y", "#c": 3}}
    assert dict(await sink.committed_positions()) == dict(b.positions)


async def test_destination_cache_is_keyed_by_value_and_bounded(harness: PostgresHarness) -> None:
    sink = await harness.make_sink()
    assert isinstance(sink, PostgresSink)
    sink.max_cached_targets = 3
    s = schema("cache0", {"pk": "int", "v": "int"})
    for i in range(5):  # equal schemas, distinct objects: one entry
        await sink.write(batch([upsert(attrs.evolve(s), {"pk": i}, 10, v=i)]))
    assert len(sink._targets) == 1
    for i in range(6):
        t = schema(f"cache{i + 1}", {"pk": "int", "v": "int"})
        await sink.write(batch([upsert(t, {"pk": 1}, 10, v=1)]))
    assert len(sink._targets) == 3
    assert (await harness.read_state(s, NOW)).rows.keys() == {(i,) for i in range(5)}


# --- history mode ----------------------------------------------------------------------------


async def test_history_mode_appends_each_event_once(harness: PostgresHarness) -> None:
    s = schema("hist", {"pk": "int", "ck": "text", "v": "text"}, ck=("ck",))
    sink = await started_sink(harness, tables={"ks.hist": TableConfig(mode="history")})
    events = [upsert(s, {"pk": 1, "ck": "a"}, 10 + i, v=f"v{i}") for i in range(5)] + [partition_delete(s, {"pk": 1}, 99)]
    await sink.write(batch(events[:4]))
    await sink.write(batch(events))  # a replay of the first four plus two new
    await sink.write(batch(events[2:]))
    conn = await asyncpg.connect(harness.dsn)
    try:
        rows = await conn.fetch('SELECT cdc_offset, cdc_kind, pk, ck, cdc_event FROM cdc_test."ks_hist" ORDER BY cdc_offset')
        assert [r["cdc_offset"] for r in rows] == [e.position.offset for e in events]
        assert rows[-1]["cdc_kind"] == "partition_delete"
        assert rows[-1]["ck"] is None
        assert rows[0]["ck"] == "a"
        assert '"v0"' in rows[0]["cdc_event"]
    finally:
        await conn.close()


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_history_mode_crash_and_resume_has_no_duplicates_or_gaps(pg_dsn: str, data: st.DataObject) -> None:
    inline = data.draw(INLINE_CHOICES, label="inline_max_values")
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}", config_overrides={"mode": "history", "inline_max_values": inline})
    table = f"crash_{uuid.uuid4().hex[:8]}"
    s = schema(table, {"pk": "int", "v": "int"})
    events = [upsert(s, {"pk": i % 3}, i, v=i) for i in range(1, 25)]
    batches = batches_of(events, data.draw(st.lists(st.integers(1, 7), min_size=1, max_size=3)))
    try:
        await _crash_and_resume(h, batches, data, overlap=data.draw(st.sampled_from([1, 2]), label="overlap"))
        conn = await asyncpg.connect(pg_dsn)
        try:
            offsets = [r[0] for r in await conn.fetch(f'SELECT cdc_offset FROM cdc_test."ks_{table}" ORDER BY 1')]
        finally:
            await conn.close()
        assert offsets == [e.position.offset for e in events]
    finally:
        await h.destroy()


def _ahead_of(b: Batch, committed: dict[str, Any]) -> bool:
    """Whether ``b`` holds a position past what is committed (events may come from several nodes)."""
    return any(node not in committed or p > committed[node] for node, p in b.positions.items())


async def _crash_and_resume(h: PostgresHarness, batches: list[Batch], data: st.DataObject, overlap: int = 1) -> None:
    """Write ``batches`` — one at a time, or up to ``overlap`` at once as the engine does (with
    its turns: a later latest-state batch commits its rows before its turn) — cancelling at drawn
    points and restarting from the committed positions each time, until every batch is
    committed. The committed positions are always a batch boundary, and end at the last."""
    crashes = data.draw(st.lists(st.integers(0, 40 * overlap), max_size=4), label="cancel points")
    sink = await h.make_sink()
    try:
        while True:
            committed = dict(await sink.committed_positions())
            todo = [b for b in batches if _ahead_of(b, committed)]
            # Committed positions are always a batch boundary: never ahead of the data.
            for node, p in committed.items():
                assert any(b.positions.get(node) == p for b in batches)
            if not todo:
                break
            if crashes:
                task = asyncio.ensure_future(write_overlapping(sink.write, todo, overlap) if overlap > 1 else sink.write(todo[0]))
                for _ in range(crashes.pop()):
                    await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                with contextlib.suppress(Exception):
                    await sink.close()
                sink = await h.make_sink()  # restart
                continue
            results = (
                await asyncio.wait_for(write_overlapping(sink.write, todo, overlap), 60)
                if overlap > 1
                else [await sink.write(b) for b in todo]
            )
            assert not any(r.rejected for r in results)
        assert committed == {node: p for b in batches for node, p in b.positions.items()}
    finally:
        with contextlib.suppress(Exception):
            await sink.close()


# --- latest state: convergence, crashes, concurrency -----------------------------------------

# 0: every merge through COPY; 8: small steps inline, larger ones through COPY, in one batch.
INLINE_CHOICES = st.sampled_from([0, 8, DEFAULT_INLINE_MAX_VALUES])


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_converges_with_collections_and_clustering(pg_dsn: str, data: st.DataObject) -> None:
    s = collections_schema()
    events = data.draw(event_histories(s, max_events=20), label="history")
    shuffled = data.draw(shuffled_with_duplicates(events), label="arrival")
    sizes = data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=4), label="batch sizes")
    h = PostgresHarness(pg_dsn, config_overrides={"inline_max_values": data.draw(INLINE_CHOICES, label="inline_max_values")})
    try:
        sink = await h.make_sink()
        for b in batches_of(shuffled, sizes):
            assert not (await sink.write(b)).rejected
        assert normalise_state(await h.read_state(s, NOW)) == normalise_state(latest_state(events, now=NOW))
    finally:
        await h.destroy()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_latest_state_crash_and_resume_converges(pg_dsn: str, data: st.DataObject) -> None:
    """Cancelled at drawn points and restarted from the committed positions, one batch at a time
    or two at once as the engine does (a later batch then commits its rows before its turn):
    the offsets are always a batch boundary, and the state ends as the model's."""
    s = collections_schema()
    events = data.draw(event_histories(s, max_events=16), label="history")
    batches = batches_of(events, data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3), label="sizes"))
    inline = data.draw(INLINE_CHOICES, label="inline_max_values")
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}", config_overrides={"inline_max_values": inline})
    try:
        await _crash_and_resume(h, batches, data, overlap=data.draw(st.sampled_from([1, 2]), label="overlap"))
        assert normalise_state(await h.read_state(s, NOW)) == normalise_state(latest_state(events, now=NOW))
    finally:
        await h.destroy()


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_concurrent_writers_converge(pg_dsn: str, data: st.DataObject) -> None:
    """Three agents (replicas) write the same history concurrently, in different orders."""
    s = collections_schema()
    events = data.draw(event_histories(s, max_events=16), label="history")
    h = PostgresHarness(pg_dsn, config_overrides={"inline_max_values": data.draw(INLINE_CHOICES, label="inline_max_values")})
    try:
        sinks = [await h.make_sink() for _ in range(3)]
        orders = [data.draw(st.permutations(events), label=f"order {i}") for i in range(3)]

        async def run(i: int) -> None:
            replica = [attrs.evolve(e, position=attrs.evolve(e.position, node=f"n{i}")) for e in orders[i]]
            for b in batches_of(replica, [3]):
                assert not (await sinks[i].write(b)).rejected

        await asyncio.gather(*(run(i) for i in range(3)))
        assert normalise_state(await h.read_state(s, NOW)) == normalise_state(latest_state(events, now=NOW))
    finally:
        await h.destroy()


async def test_ttl_expiry_is_hidden_by_the_view(harness: PostgresHarness) -> None:
    s = schema("ttl", {"pk": "int", "a": "text", "b": "text"})
    sink = await harness.make_sink()
    ev = upsert(s, {"pk": 1}, 10, a=Cell(timestamp=10, value="short", ttl=60, local_deletion_time=NOW + 60), b="forever")
    await sink.write(batch([ev]))
    assert (await harness.read_state(s, NOW)).rows[(1,)]["a"] == "short"
    assert (await harness.read_state(s, NOW + 60)).rows[(1,)] == {"pk": 1, "a": None, "b": "forever"}


async def test_partial_update_and_null_and_older_write_after_delete(harness: PostgresHarness) -> None:
    s = schema("partial", {"pk": "int", "a": "text", "b": "int"})
    sink = await harness.make_sink()
    await sink.write(batch([upsert(s, {"pk": 1}, 10, a="x", b=1)]))
    await sink.write(batch([upsert(s, {"pk": 1}, 20, insert=False, b=2)]))  # touches only b
    assert (await harness.read_state(s, NOW)).rows[(1,)] == {"pk": 1, "a": "x", "b": 2}
    await sink.write(batch([upsert(s, {"pk": 1}, 30, insert=False, a=Cell(timestamp=30, tombstone=True, local_deletion_time=1))]))
    assert (await harness.read_state(s, NOW)).rows[(1,)] == {"pk": 1, "a": None, "b": 2}
    await sink.write(batch([partition_delete(s, {"pk": 1}, 40)]))
    await sink.write(batch([upsert(s, {"pk": 1}, 35, a="late but older")]))
    assert (await harness.read_state(s, NOW)).rows == {}
    row_delete = ChangeEvent(
        position=pos(),
        schema=s,
        kind=upsert(s, {"pk": 2}, 1).kind,
        key={"pk": 1},
        row_deletion=Deletion(timestamp=50, local_deletion_time=1),
    )
    await sink.write(batch([row_delete, upsert(s, {"pk": 1}, 60, insert=False, b=6)]))
    assert (await harness.read_state(s, NOW)).rows == {(1,): {"pk": 1, "a": None, "b": 6}}


async def test_partition_tombstones_are_appended_and_the_newest_shadows(harness: PostgresHarness) -> None:
    """A partition tombstone is a row appended (no unique key, no ON CONFLICT): a replay or an
    older deletion arriving later adds one, and the views go by each partition's newest."""
    s = schema(f"pdel_{uuid.uuid4().hex[:6]}", {"pk": "int", "a": "text"})
    sink = await harness.make_sink()
    await sink.write(batch([upsert(s, {"pk": 1}, 10, a="x"), upsert(s, {"pk": 2}, 10, a="y")]))
    await sink.write(batch([partition_delete(s, {"pk": 1}, 30)]))
    await sink.write(batch([partition_delete(s, {"pk": 1}, 30)]))  # replayed
    await sink.write(batch([partition_delete(s, {"pk": 1}, 20)]))  # older, later
    await sink.write(batch([upsert(s, {"pk": 1}, 25, a="older than the newest tombstone")]))
    assert (await harness.read_state(s, NOW)).rows == {(2,): {"pk": 2, "a": "y"}}
    await sink.write(batch([upsert(s, {"pk": 1}, 31, insert=False, a="newer")]))
    assert (await harness.read_state(s, NOW)).rows == {(1,): {"pk": 1, "a": "newer"}, (2,): {"pk": 2, "a": "y"}}
    layout = layout_of(harness, s)
    conn = await asyncpg.connect(harness.dsn)
    try:
        rows = await conn.fetch(f"SELECT pk, ts FROM {layout.q(layout.partition_deletions)} ORDER BY ts")
        assert [tuple(r) for r in rows] == [(1, 20), (1, 30), (1, 30)]
        assert await conn.fetchval(f"SELECT count(*) FROM {layout.q(layout.view)}") == 2  # one row per key
    finally:
        await conn.close()


async def test_range_tombstones_are_appended_and_the_newest_shadows(harness: PostgresHarness) -> None:
    """Range tombstones are appended too: a replay and an older, wider deletion arriving later
    add rows; each row shows as the newest tombstone covering it allows."""
    s = schema(f"rdel_{uuid.uuid4().hex[:6]}", {"pk": "int", "ck": "int", "v": "text"}, ck=("ck",))
    events = [upsert(s, {"pk": 1, "ck": ck}, 10, v=f"v{ck}") for ck in range(1, 6)]
    events += [int_range_delete(s, 1, 2, 4, 20), int_range_delete(s, 1, 2, 4, 20), int_range_delete(s, 1, 1, 5, 15)]
    events += [upsert(s, {"pk": 1, "ck": 3}, 18, v="older than its tombstone"), upsert(s, {"pk": 1, "ck": 1}, 16, v="newer")]
    sink = await harness.make_sink()
    for e in events:
        assert (await sink.write(batch([e]))).rejected == []
    state = await harness.read_state(s, NOW)
    assert state.rows == {(1, 1): {"pk": 1, "ck": 1, "v": "newer"}}
    assert normalise_state(state) == normalise_state(latest_state(events, now=NOW))
    layout = layout_of(harness, s)
    conn = await asyncpg.connect(harness.dsn)
    try:
        rows = await conn.fetch(f'SELECT "start#ck", "end#ck", ts FROM {layout.q(layout.range_deletions)} ORDER BY ts, "start#ck"')
        assert [tuple(r) for r in rows] == [(1, 5, 15), (2, 4, 20), (2, 4, 20)]
    finally:
        await conn.close()


async def test_writers_of_the_same_partition_tombstone_do_not_wait_for_each_other(pg_dsn: str) -> None:
    """Two transactions appending a tombstone of the same partition: neither waits for the other
    (no unique key to check against an uncommitted row): overlapping batches deleting the same
    partition never wait for each other on the server."""
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}")
    try:
        s = schema(f"pdel_{uuid.uuid4().hex[:6]}", {"pk": "int", "a": "text"})
        sink = await started_sink(h)
        await sink.write(batch([partition_delete(s, {"pk": 1}, 5)]))
        merge = latest_state_merges(layout_of(h, s)).partition_deletions
        first, second = await asyncpg.connect(pg_dsn), await asyncpg.connect(pg_dsn)
        try:
            async with first.transaction():
                await first.execute(merge.inline_sql(), [1], [10])
                async with second.transaction():
                    await second.execute("SET LOCAL lock_timeout = '500ms'")
                    await second.execute(merge.inline_sql(), [1], [20])  # would raise LockNotAvailableError
            assert (await h.read_state(s, NOW)).rows == {}
            rows = await first.fetch(f"SELECT ts FROM {layout_of(h, s).q(layout_of(h, s).partition_deletions)} ORDER BY ts")
            assert [r["ts"] for r in rows] == [5, 10, 20]
        finally:
            await first.close()
            await second.close()
    finally:
        await h.destroy()


@pytest.mark.parametrize("case", ["same-columns", "column-added", "view-changed-by-hand"])
async def test_a_partition_tombstone_table_of_an_older_version_is_made_append_only(pg_dsn: str, case: str) -> None:
    """Restarted over a tombstone table an older sink made (one upserted row per partition, under
    a primary key, and views joining it directly), the sink drops the key, indexes it like a new
    one and replaces the views — also when the table evolves in the same start. When the views
    cannot be replaced (here: a column added to one by hand), it changes nothing and says why:
    the old views would show a row per tombstone."""
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}")
    try:
        table = f"pdel_{uuid.uuid4().hex[:6]}"
        s = schema(table, {"pk": "int", "a": "text"})
        sink = await started_sink(h)
        await sink.write(batch([upsert(s, {"pk": 1}, 10, a="x"), upsert(s, {"pk": 2}, 10, a="y"), partition_delete(s, {"pk": 2}, 20)]))
        layout, ddl = layout_of(h, s), LatestStateDdl()
        pdel = layout.q(layout.partition_deletions)
        conn = await asyncpg.connect(pg_dsn)
        try:  # back to how the sink made them before 2026-11-27
            await conn.execute(f'DROP INDEX {layout.q(layout.partition_deletions_index)}; ALTER TABLE {pdel} ADD PRIMARY KEY ("pk")')
            old_view = ddl.row_view(layout).replace(ddl._partition_deletion(layout), pdel)
            assert old_view != ddl.row_view(layout)
            if case == "view-changed-by-hand":
                old_view = old_view.replace(" FROM ", ", 1 AS extra FROM ", 1)
            await conn.execute(old_view.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
        finally:
            await conn.close()
        await h.destroy()
        if case == "column-added":
            s = schema(table, {"pk": "int", "a": "text", "b": "int"})
        restarted = await started_sink(h)
        events = [partition_delete(s, {"pk": 2}, 30), upsert(s, {"pk": 2}, 35, a="back"), partition_delete(s, {"pk": 1}, 40)]
        conn = await asyncpg.connect(pg_dsn)
        try:
            primary_keys = "SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'"
            if case == "view-changed-by-hand":
                with pytest.raises(PermanentError, match="its tombstones are appended"):
                    await restarted.write(batch(events))
                assert await conn.fetchval(primary_keys, pdel) == 1
                return
            assert (await restarted.write(batch(events))).rejected == []
            expected = {"pk": 2, "a": "back"} | ({"b": None} if case == "column-added" else {})
            assert (await h.read_state(s, NOW)).rows == {(2,): expected}
            layout = layout_of(h, s)
            assert await conn.fetchval(f"SELECT count(*) FROM {layout.q(layout.view)}") == 1  # not one row per tombstone
            assert await conn.fetchval(primary_keys, pdel) == 0
            assert await conn.fetchval("SELECT to_regclass($1)", layout.q(layout.partition_deletions_index)) is not None
            assert [tuple(r) for r in await conn.fetch(f"SELECT pk, ts FROM {pdel} ORDER BY pk, ts")] == [(1, 40), (2, 20), (2, 30)]
        finally:
            await conn.close()
    finally:
        await h.destroy()


async def test_a_range_tombstone_table_of_an_older_version_is_made_append_only(pg_dsn: str) -> None:
    """A range-tombstone table an older sink made (primary key on the partition key and the
    bounds, one upserted row per range) is made append-only on restart: replaying a range
    deletion then adds a row instead of violating the key."""
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}")
    try:
        s = schema(f"rdel_{uuid.uuid4().hex[:6]}", {"pk": "int", "ck": "int", "v": "text"}, ck=("ck",))
        events = [upsert(s, {"pk": 1, "ck": ck}, 10, v=f"v{ck}") for ck in range(1, 4)] + [int_range_delete(s, 1, 1, 2, 20)]
        sink = await started_sink(h)
        await sink.write(batch(events))
        layout = layout_of(h, s)
        rdel = layout.q(layout.range_deletions)
        conn = await asyncpg.connect(pg_dsn)
        try:  # back to how the sink made it before 2026-11-27
            await conn.execute(f'DROP INDEX {layout.q(layout.range_deletions_index)}; ALTER TABLE {rdel} ADD PRIMARY KEY ("pk", "#bounds")')
        finally:
            await conn.close()
        await h.destroy()
        restarted = await started_sink(h)
        again = [int_range_delete(s, 1, 1, 2, 20), int_range_delete(s, 1, 2, 3, 30)]  # a replay, and a newer one
        assert (await restarted.write(batch(again))).rejected == []
        assert (await h.read_state(s, NOW)).rows == {}
        assert normalise_state(await h.read_state(s, NOW)) == normalise_state(latest_state(events + again, now=NOW))
        conn = await asyncpg.connect(pg_dsn)
        try:
            keys = await conn.fetchval("SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'", rdel)
            assert keys == 0
            assert await conn.fetchval("SELECT to_regclass($1)", layout.q(layout.range_deletions_index)) is not None
            assert await conn.fetchval(f"SELECT count(*) FROM {rdel}") == 3
        finally:
            await conn.close()
    finally:
        await h.destroy()


# --- offsets, TLS, credentials ---------------------------------------------------------------


async def test_offsets_table_and_positions(harness: PostgresHarness) -> None:
    s = schema("offs", {"pk": "int", "v": "int"})
    sink = await harness.make_sink()
    assert dict(await sink.committed_positions()) == {}
    e1 = upsert(s, {"pk": 1}, 1, v=1)
    e2 = attrs.evolve(upsert(s, {"pk": 2}, 2, v=2), position=pos("n2"))
    b = batch([e1, e2])
    await sink.write(b)
    assert dict(await sink.committed_positions()) == {"n1": e1.position, "n2": e2.position}
    conn = await asyncpg.connect(harness.dsn)
    try:
        rows = await conn.fetch('SELECT sink, node, segment_id, "offset", idx FROM cdc_test.cdc_offsets ORDER BY node')
        assert [tuple(r) for r in rows] == [("pg", "n1", 1, e1.position.offset, 0), ("pg", "n2", 1, e2.position.offset, 0)]
    finally:
        await conn.close()


async def test_a_batch_whose_turn_has_come_is_one_statement_holding_data_and_offsets(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sent inline, with its turn come, a batch of two tables (rows and a partition deletion) is
    ONE statement — no transaction, no COPY — and its data and offsets commit or fail together."""
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}")
    try:
        sink = await started_sink(h)
        s1, s2 = schema("one_a", {"pk": "int", "v": "text"}), schema("one_b", {"pk": "int", "v": "text"})
        await sink.write(batch([upsert(s1, {"pk": 0}, 1, v="warm"), upsert(s2, {"pk": 0}, 1, v="warm")]))  # the tables exist
        calls: collections.Counter[str] = collections.Counter()
        for name in ("execute", "executemany", "fetch", "fetchval", "fetchrow", "copy_to_table", "copy_records_to_table", "transaction"):
            real = getattr(asyncpg.connection.Connection, name)

            def spy(self: Any, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                calls[_name] += 1
                return _real(self, *args, **kwargs)

            monkeypatch.setattr(asyncpg.connection.Connection, name, spy)
        b = batch([upsert(s1, {"pk": 1}, 10, v="a"), partition_delete(s1, {"pk": 0}, 10), upsert(s2, {"pk": 1}, 10, v="b")])
        await sink.write(b)
        monkeypatch.undo()
        assert calls == {"execute": 1}
        assert sorted((await h.read_state(s1, NOW)).rows) == [(1,)] and sorted((await h.read_state(s2, NOW)).rows) == [(0,), (1,)]
        assert dict(await sink.committed_positions()) == dict(b.positions)
        # The server refuses its offsets: none of its data commits either.
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute('ALTER TABLE cdc_test.cdc_offsets ADD CONSTRAINT below_a_million CHECK ("offset" < 1000000)')
        finally:
            await conn.close()
        refused = batch([upsert(s1, {"pk": 2}, 10, v="never"), upsert(s2, {"pk": 2}, 10, v="never")])
        refused = attrs.evolve(refused, positions={"n1": Position(node="n1", segment_id=1, offset=10**7, index=0)})
        with pytest.raises(PermanentError, match="below_a_million"):
            await sink.write(refused)
        assert sorted((await h.read_state(s1, NOW)).rows) == [(1,)] and sorted((await h.read_state(s2, NOW)).rows) == [(0,), (1,)]
        assert dict(await sink.committed_positions()) == dict(b.positions)
    finally:
        await h.destroy()


async def test_a_staged_batch_in_its_turn_merges_and_stores_offsets_in_one_statement(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through COPY, with its turn come, a batch of two tables is one transaction of three
    statements and its COPYs: BEGIN with the prelude, every merge together with the offsets
    upsert, COMMIT."""
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}", config_overrides={"inline_max_values": 0})
    try:
        sink = await started_sink(h)
        s1, s2 = schema("both_a", {"pk": "int", "v": "text"}), schema("both_b", {"pk": "int", "v": "text"})
        await sink.write(batch([upsert(s1, {"pk": 0}, 1, v="warm"), upsert(s2, {"pk": 0}, 1, v="warm")]))  # the tables exist
        sent: list[str] = []
        calls: collections.Counter[str] = collections.Counter()
        for name in ("execute", "executemany", "fetch", "fetchval", "fetchrow", "copy_to_table", "copy_records_to_table", "transaction"):
            real = getattr(asyncpg.connection.Connection, name)

            def spy(self: Any, *args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                calls[_name] += 1
                if _name == "execute":
                    sent.append(args[0])
                return _real(self, *args, **kwargs)

            monkeypatch.setattr(asyncpg.connection.Connection, name, spy)
        b = batch([upsert(s1, {"pk": 1}, 10, v="a"), partition_delete(s1, {"pk": 0}, 10), upsert(s2, {"pk": 1}, 10, v="b")])
        await sink.write(b)
        monkeypatch.undo()
        assert calls["execute"] == 3 and calls["copy_to_table"] + calls["copy_records_to_table"] == 3, calls
        assert set(calls) <= {"execute", "copy_to_table", "copy_records_to_table"}, calls
        assert sent[0].startswith("BEGIN") and sent[2] == "COMMIT", sent
        assert sent[1].count("INSERT INTO") == 4 and "cdc_offsets" in sent[1], sent[1]  # 3 merges and the offsets
        assert sorted((await h.read_state(s1, NOW)).rows) == [(1,)] and sorted((await h.read_state(s2, NOW)).rows) == [(0,), (1,)]
        assert dict(await sink.committed_positions()) == dict(b.positions)
    finally:
        await h.destroy()


def _password(dsn: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(dsn).password


async def test_wrong_password_never_appears_in_errors_reprs_or_logs(pg_dsn: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(pg_dsn)
    secret = "Wr0ng-p4ss-" + uuid.uuid4().hex[:6]
    user = parts.username or "cdc"
    bad = urlunsplit(parts._replace(netloc=f"{user}:{secret}@{parts.hostname}:{parts.port}"))
    config = PostgresSinkConfig(dsn=Secret(bad), connect_timeout=5)
    sink = PostgresSink("pw", config)
    assert secret not in repr(config)
    assert secret not in repr(sink)
    with structlog.testing.capture_logs() as logs, pytest.raises((TransientError, PermanentError)) as info:
        await sink.start()
    text = str(info.value) + repr(info.value) + repr(logs)
    assert secret not in text
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    # A DSN that does not parse: its text must not leak either.
    broken = PostgresSink("pw2", PostgresSinkConfig(dsn=Secret(f"postgresql://u:{secret}@[bad-host:99999/x")))
    with pytest.raises((TransientError, PermanentError)) as info2:
        await broken.start()
    assert secret not in str(info2.value)


@pytest.fixture
def ca_file(postgres_ca_file: Path) -> str:
    # The root conftest's fixture: in CI a server without TLS fails the run instead of skipping.
    return str(postgres_ca_file)


@pytest.fixture
def other_ca(tmp_path: Any) -> str:
    """A CA certificate that did not sign the server's certificate."""
    import subprocess

    other = tmp_path / "other-ca.crt"
    cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k"), "-out", str(other)]
    subprocess.run([*cmd, "-days", "1", "-subj", "/CN=not-the-ca"], check=True, capture_output=True)
    return str(other)


async def test_tls_verify_full(pg_dsn: str, ca_file: str, other_ca: str) -> None:
    config = PostgresSinkConfig(dsn=Secret(pg_dsn), schema="tls", ssl=SslConfig(mode="verify-full", ca_file=ca_file))
    sink = PostgresSink("tls", config)
    await sink.start()
    try:
        async with sink._acquire() as conn:
            assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        s = schema("tls", {"pk": "int", "v": "text"})
        assert not (await sink.write(batch([upsert(s, {"pk": 1}, 1, v="over tls")]))).rejected
    finally:
        await sink.close()
    # A CA that did not sign the server's certificate: refused.
    wrong = PostgresSink("tls2", attrs.evolve(config, ssl=SslConfig(mode="verify-full", ca_file=other_ca), connect_timeout=5))
    with pytest.raises((TransientError, PermanentError)) as info:
        await wrong.start()
    password = _password(pg_dsn)
    assert password is None or password not in str(info.value)
