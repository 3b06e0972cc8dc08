"""The TimescaleDB sink against a real server (Apache-2 build from scripts/services.sh):
hypertable dimensions, history idempotence, time_bucket over replicated data, latest-state
convergence, crashes, schema evolution, refused tables and the edition report."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import attrs
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ts_helpers import EPOCH, batch, micros, partition_delete, table, write

from cdc_core.events import ChangeEvent, ChangeKind, Deletion
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.sinks import Batch, Sink
from cdc_core.testing.contract import batches_of, normalise_state
from cdc_core.testing.model import latest_state
from cdc_core.testing.strategies import NOW, event_histories, shuffled_with_duplicates, table_schemas
from cdc_sink_postgres.config import DEFAULT_INLINE_MAX_VALUES
from cdc_sink_timescale.config import CompressionConfig, RetentionConfig, TimescaleTableConfig
from cdc_sink_timescale.sink import TimescaleSink
from cdc_sink_timescale.testing import TimescaleHarness

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


@pytest.fixture
async def harness(timescale_dsn: str) -> AsyncIterator[TimescaleHarness]:
    h = TimescaleHarness(timescale_dsn)
    yield h
    await h.destroy()


async def _sink(h: TimescaleHarness, **overrides: Any) -> TimescaleSink:
    h.config_overrides = overrides
    sink = await h.make_sink()
    assert isinstance(sink, TimescaleSink)
    return sink


async def _fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _apply(sink: Sink, batches: Sequence[Batch]) -> None:
    for b in batches:
        result = await sink.write(b)
        assert not result.rejected, [r.error for r in result.rejected]


# --- hypertables ------------------------------------------------------------------------------

READINGS = table("readings", {"sensor": "text", "ts": "timestamp", "value": "double"}, pk=("sensor",), ck=("ts",))
ORDERS = table("orders", {"id": "int", "created": "timestamp", "total": "decimal"}, pk=("id",))
DAILY = table("daily", {"day": "date", "site": "int", "n": "bigint"}, pk=("day",), ck=("site",))
TICKS = table("ticks", {"pk": "int", "tid": "timeuuid", "v": "text"}, pk=("pk",), ck=("tid",))
COUNTS = table("counts", {"pk": "int", "ms": "bigint", "v": "text"}, pk=("pk",), ck=("ms",), static=())


def _timeuuid(t: dt.datetime, seq: int = 0) -> uuid.UUID:
    ticks = micros(t) * 10 + 0x01B21DD213814000
    return uuid.UUID(fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, 0x1000 | ((ticks >> 48) & 0x0FFF), 0x80, seq, 1))


async def test_hypertables_have_the_configured_dimensions(harness: TimescaleHarness) -> None:
    sink = await _sink(
        harness,
        time_column="ts",
        tables={
            "ks.readings": TimescaleTableConfig(chunk_interval="1 day", space_column="sensor", space_partitions=4),
            "ks.orders": TimescaleTableConfig(chunk_interval="12 hours"),
            "ks.daily": TimescaleTableConfig(time_column="day", chunk_interval="30 days"),
            "ks.ticks": TimescaleTableConfig(time_column="tid", chunk_interval="2 hours"),
            "ks.counts": TimescaleTableConfig(time_column="ms", integer_chunk_interval=60_000),
        },
    )
    ts = micros(T0)
    await _apply(
        sink,
        [
            batch(
                [
                    write(READINGS, {"sensor": "a", "ts": T0}, ts, value=1.5),
                    write(ORDERS, {"id": 1}, ts, created=T0, total=None),
                    write(DAILY, {"day": T0.date(), "site": 3}, ts, n=7),
                    write(TICKS, {"pk": 1, "tid": _timeuuid(T0)}, ts, v="x"),
                    write(COUNTS, {"pk": 1, "ms": 1_000}, ts, v="y"),
                ]
            )
        ],
    )
    rows = await _fetch(
        harness.dsn,
        "SELECT hypertable_name, dimension_number, column_name, column_type::text, dimension_type, time_interval, "
        "integer_interval, num_partitions FROM timescaledb_information.dimensions WHERE hypertable_schema = 'cdc_test' "
        "ORDER BY 1, 2",
    )
    got = {(r[0], r[1]): tuple(r[2:]) for r in rows}
    assert got == {
        ("ks_counts__state", 1): ("ms", "bigint", "Time", None, 60_000, None),
        ("ks_daily__state", 1): ("day", "date", "Time", dt.timedelta(days=30), None, None),
        ("ks_orders", 1): ("cdc_write_time", "timestamp with time zone", "Time", dt.timedelta(hours=12), None, None),
        ("ks_readings__state", 1): ("ts", "timestamp with time zone", "Time", dt.timedelta(days=1), None, None),
        ("ks_readings__state", 2): ("sensor", "text", "Space", None, None, 4),
        # a timeuuid dimension is partitioned through cdc_timeuuid_time(); TimescaleDB shows its interval in µs
        ("ks_ticks__state", 1): ("tid", "uuid", "Time", None, 2 * 3600 * 10**6, None),
    }
    # the bookkeeping tables stay plain tables
    plain = await _fetch(harness.dsn, "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name LIKE '%deletions'")
    assert plain[0][0] == 0
    # rows landed in chunks of the right time range
    chunk = await _fetch(
        harness.dsn,
        "SELECT range_start, range_end, range_start_integer, range_end_integer FROM timescaledb_information.chunks "
        "WHERE hypertable_name = 'ks_ticks__state'",
    )
    # (a function-partitioned dimension has integer ranges: Unix microseconds)
    assert [(c[0], c[2] <= micros(T0) < c[3], c[3] - c[2]) for c in chunk] == [(None, True, 2 * 3600 * 10**6)]
    assert (await _fetch(harness.dsn, "SELECT cdc_test.cdc_timeuuid_time(tid) FROM cdc_test.ks_ticks"))[0][0] == T0
    # a restart finds everything in place (idempotent DDL) and the state reads back
    restarted = await harness.make_sink()
    await _apply(restarted, [batch([write(READINGS, {"sensor": "a", "ts": T0}, ts + 1, value=2.5)])])
    state = await harness.read_state(READINGS, NOW)
    assert state.rows == {("a", T0): {"sensor": "a", "ts": T0, "value": 2.5}}


# --- history mode -----------------------------------------------------------------------------


async def test_history_replay_with_duplicates_adds_nothing(harness: TimescaleHarness) -> None:
    sink = await _sink(harness)  # every table: history on the write time
    s = table("hist", {"pk": "int", "ck": "text", "v": "text"}, ck=("ck",))
    events = [write(s, {"pk": i % 2, "ck": f"c{i}"}, micros(T0) + i * 1_000_000, v=f"v{i}") for i in range(8)]
    events.append(partition_delete(s, {"pk": 0}, micros(T0) + 10**8))
    await _apply(sink, batches_of(events, [3]))
    before = await _fetch(harness.dsn, "SELECT * FROM cdc_test.ks_hist ORDER BY cdc_offset")
    # replays: the whole history again, one by one, shuffled, and through a restarted sink
    await _apply(sink, batches_of(events, [len(events)]))
    await _apply(sink, batches_of(list(reversed(events)), [1]))
    restarted = await harness.make_sink()
    await _apply(restarted, batches_of(events[2:], [4]))
    after = await _fetch(harness.dsn, "SELECT * FROM cdc_test.ks_hist ORDER BY cdc_offset")
    assert after == before
    assert [r["cdc_offset"] for r in after] == [e.position.offset for e in events]
    assert [r["cdc_write_time"] for r in after] == [EPOCH + dt.timedelta(microseconds=e.max_timestamp) for e in events]
    assert after[-1]["cdc_kind"] == "partition_delete"
    assert after[-1]["ck"] is None
    # the same event from another replica (another node's position) is another history row
    other = [write(s, {"pk": 5, "ck": "r"}, micros(T0), node=n, v="same") for n in ("n1", "n2")]
    await _apply(sink, [batch(other)])
    assert (await _fetch(harness.dsn, "SELECT count(*) FROM cdc_test.ks_hist WHERE pk = 5"))[0][0] == 2


async def test_time_bucket_over_history_returns_what_the_events_say(harness: TimescaleHarness) -> None:
    sink = await _sink(harness, chunk_interval="1 hour")
    s = table("clicks", {"pk": "int", "page": "text"})
    # write times spread over five hours, delivered out of order and twice
    offsets_min = [0, 5, 59, 61, 62, 130, 131, 132, 133, 299]
    events = [write(s, {"pk": i}, micros(T0 + dt.timedelta(minutes=m)), page=f"/p{i % 3}") for i, m in enumerate(offsets_min)]
    await _apply(sink, batches_of(list(reversed(events)) + events, [4]))
    rows = await _fetch(
        harness.dsn,
        "SELECT time_bucket(INTERVAL '1 hour', cdc_write_time) AS b, count(*) FROM cdc_test.ks_clicks GROUP BY b ORDER BY b",
    )
    expected: dict[dt.datetime, int] = {}
    for m in offsets_min:
        hour = T0 + dt.timedelta(hours=m // 60)
        expected[hour] = expected.get(hour, 0) + 1
    assert {r[0]: r[1] for r in rows} == expected
    chunks = await _fetch(harness.dsn, "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'ks_clicks'")
    assert chunks[0][0] == len(expected)


async def test_time_bucket_over_latest_state_returns_what_the_events_say(harness: TimescaleHarness) -> None:
    sink = await _sink(harness, time_column="ts", chunk_interval="1 day")
    events: list[ChangeEvent] = []
    values: dict[tuple[str, dt.datetime], float] = {}
    for day in range(3):
        for h in range(0, 24, 6):
            t = T0 + dt.timedelta(days=day, hours=h)
            for sensor in ("a", "b"):
                v = float(day * 100 + h + (0.5 if sensor == "b" else 0))
                events.append(write(READINGS, {"sensor": sensor, "ts": t}, micros(t), value=v))
                values[(sensor, t)] = v
    # a late correction (newer write time) and an older stale write that must lose
    t = T0 + dt.timedelta(hours=6)
    events.append(write(READINGS, {"sensor": "a", "ts": t}, micros(t) + 10, insert=False, value=1000.0))
    events.append(write(READINGS, {"sensor": "a", "ts": t}, micros(t) - 10, insert=False, value=-1.0))
    values[("a", t)] = 1000.0
    # sensor b's readings of the third day deleted by a range deletion
    d3 = T0 + dt.timedelta(days=2)
    from cdc_core.events import RangeBound, RangeDeletion

    events.append(
        ChangeEvent(
            position=write(READINGS, {"sensor": "b", "ts": d3}, 0).position,
            schema=READINGS,
            kind=ChangeKind.RANGE_DELETE,
            key={"sensor": "b"},
            range_deletion=RangeDeletion(
                start=RangeBound(values=(d3,), inclusive=True),
                end=None,
                deletion=Deletion(timestamp=micros(d3) + 10**11, local_deletion_time=1),
            ),
        )
    )
    for k in [k for k in values if k[0] == "b" and k[1] >= d3]:
        del values[k]
    await _apply(sink, batches_of(events[::-1], [5]))
    rows = await _fetch(
        harness.dsn,
        "SELECT sensor, time_bucket(INTERVAL '1 day', ts) AS day, avg(value), count(*) FROM cdc_test.ks_readings "
        "GROUP BY 1, 2 ORDER BY 1, 2",
    )
    expected: dict[tuple[str, dt.datetime], list[float]] = {}
    for (sensor, t), v in values.items():
        expected.setdefault((sensor, t.replace(hour=0)), []).append(v)
    assert {(r[0], r[1]): (r[2], r[3]) for r in rows} == {k: (sum(v) / len(v), len(v)) for k, v in expected.items()}


# --- latest state: convergence and crashes ------------------------------------------------------


def _time_keyed_schema() -> TableSchema:
    return TableSchema(
        keyspace="ks",
        table=f"tk_{uuid.uuid4().hex[:8]}",
        id=uuid.uuid4(),
        columns=(
            ColumnSchema(name="pk", type="int", kind=ColumnKind.PARTITION_KEY, position=0),
            ColumnSchema(name="ts", type="timestamp", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.DESC),
            ColumnSchema(name="seq", type="int", kind=ColumnKind.CLUSTERING, position=1, clustering_order=ClusteringOrder.ASC),
            ColumnSchema(name="v", type="text", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="d", type="decimal", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="tags", type="set<text>", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="m", type="map<text, int>", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="s0", type="int", kind=ColumnKind.STATIC, position=-1),
        ),
    )


LATEST = {"time_column": "ts", "chunk_interval": "3650 days"}
# The inherited merges, through COPY (0), small steps inline and larger ones through COPY (8), or
# mostly inline (the default; a batch whose turn has come is then one statement).
INLINE_CHOICES = st.sampled_from([0, 8, DEFAULT_INLINE_MAX_VALUES])


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_latest_state_on_a_time_keyed_hypertable_converges(timescale_dsn: str, data: st.DataObject) -> None:
    s = _time_keyed_schema()
    events = data.draw(event_histories(s, max_events=16), label="history")
    arrival = data.draw(shuffled_with_duplicates(events), label="arrival")
    sizes = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3), label="batch sizes")
    h = TimescaleHarness(timescale_dsn, config_overrides=LATEST | {"inline_max_values": data.draw(INLINE_CHOICES, label="inline")})
    try:
        assert h.config().spec_for(s).mode == "latest"
        sink = await h.make_sink()
        await _apply(sink, batches_of(arrival, sizes))
        assert normalise_state(await h.read_state(s, NOW)) == normalise_state(latest_state(events, now=NOW))
    finally:
        await h.destroy()


@st.composite
def _time_keyed_random_schemas(draw: st.DrawFn) -> TableSchema:
    """The contract's random tables (cdc_core.testing.strategies.table_schemas), with at least
    one clustering column whose first one, ``ck0``, is the time column (integer or timestamp):
    every such table runs in latest-state mode on a hypertable."""
    base = draw(table_schemas(max_clustering=2).filter(lambda t: len(t.clustering) > 0))
    time_type = draw(st.sampled_from(["bigint", "int", "timestamp"]))
    columns = tuple(attrs.evolve(c, type=time_type) if c.name == "ck0" else c for c in base.columns)
    return attrs.evolve(base, columns=columns)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_latest_state_converges_on_random_time_keyed_hypertables(timescale_dsn: str, data: st.DataObject) -> None:
    s = data.draw(_time_keyed_random_schemas(), label="schema")
    events = data.draw(event_histories(s), label="history")
    arrival = data.draw(shuffled_with_duplicates(events), label="arrival")
    sizes = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=4), label="batch sizes")
    h = TimescaleHarness(
        timescale_dsn,
        config_overrides={
            "time_column": "ck0",
            "integer_chunk_interval": 1000,
            "chunk_interval": "3650 days",
            "inline_max_values": data.draw(INLINE_CHOICES, label="inline"),
        },
    )
    try:
        assert h.config().spec_for(s).mode == "latest"
        sink = await h.make_sink()
        await _apply(sink, batches_of(arrival, sizes))
        assert normalise_state(await h.read_state(s, NOW)) == normalise_state(latest_state(events, now=NOW))
    finally:
        await h.destroy()


async def _crash_and_resume(h: TimescaleHarness, batches: list[Batch], cancel_points: list[int]) -> None:
    """Write ``batches``, cancelling a write after each of ``cancel_points`` event-loop steps and
    restarting from the committed position, until everything is committed."""
    sink = await h.make_sink()
    while True:
        committed = dict(await sink.committed_positions())
        # the committed positions are always a batch boundary: never ahead of the data
        for node, p in committed.items():
            assert p in [b.positions.get(node) for b in batches]
        todo = [b for b in batches if any(n not in committed or p > committed[n] for n, p in b.positions.items())]
        if not todo:
            break
        for b in todo:
            if cancel_points:
                task = asyncio.ensure_future(sink.write(b))
                for _ in range(cancel_points.pop()):
                    await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                with contextlib.suppress(Exception):
                    await sink.close()
                sink = await h.make_sink()
                break
            assert not (await sink.write(b)).rejected
    await sink.close()


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_crash_and_resume_latest_state(timescale_dsn: str, data: st.DataObject) -> None:
    s = _time_keyed_schema()
    events = data.draw(event_histories(s, max_events=14), label="history")
    batches = batches_of(events, data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3), label="sizes"))
    inline = data.draw(INLINE_CHOICES, label="inline")
    h = TimescaleHarness(timescale_dsn, sink_name=f"ts_{uuid.uuid4().hex[:8]}", config_overrides=LATEST | {"inline_max_values": inline})
    try:
        await _crash_and_resume(h, batches, data.draw(st.lists(st.integers(0, 40), max_size=4), label="cancel points"))
        assert normalise_state(await h.read_state(s, NOW)) == normalise_state(latest_state(events, now=NOW))
    finally:
        await h.destroy()


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_crash_and_resume_history_has_no_duplicates_or_gaps(timescale_dsn: str, data: st.DataObject) -> None:
    name = f"crash_{uuid.uuid4().hex[:8]}"
    s = table(name, {"pk": "int", "v": "int"})
    events = [write(s, {"pk": i % 3}, micros(T0) + i * 60_000_000, v=i) for i in range(1, 25)]
    batches = batches_of(events, data.draw(st.lists(st.integers(1, 7), min_size=1, max_size=3), label="sizes"))
    inline = data.draw(INLINE_CHOICES, label="inline")
    h = TimescaleHarness(
        timescale_dsn,
        sink_name=f"ts_{uuid.uuid4().hex[:8]}",
        config_overrides={"chunk_interval": "10 minutes", "inline_max_values": inline},
    )
    try:
        await _crash_and_resume(h, batches, data.draw(st.lists(st.integers(0, 40), max_size=4), label="cancel points"))
        rows = await _fetch(timescale_dsn, f'SELECT cdc_offset FROM cdc_test."ks_{name}" ORDER BY cdc_write_time')
        assert [r[0] for r in rows] == [e.position.offset for e in events]
    finally:
        await h.destroy()


# --- schema evolution, refusal, edition --------------------------------------------------------


async def test_added_column_on_a_hypertable(harness: TimescaleHarness) -> None:
    sink = await _sink(harness, time_column="ts", chunk_interval="1 day")
    v1 = table("evo", {"sensor": "text", "ts": "timestamp", "value": "double"}, pk=("sensor",), ck=("ts",))
    v2 = table("evo", {"sensor": "text", "ts": "timestamp", "value": "double", "unit": "text"}, pk=("sensor",), ck=("ts",))
    t1, t2 = T0, T0 + dt.timedelta(days=3)  # two chunks, the first created before the column existed
    await _apply(sink, [batch([write(v1, {"sensor": "a", "ts": t1}, micros(t1), value=1.0)])])
    await _apply(sink, [batch([write(v2, {"sensor": "a", "ts": t2}, micros(t2), value=2.0, unit="C")])])
    # an old-schema event after the evolution (another agent still on v1) keeps working
    await _apply(sink, [batch([write(v1, {"sensor": "b", "ts": t1}, micros(t1), value=3.0)])])
    # the old row gets the new column through a later update
    await _apply(sink, [batch([write(v2, {"sensor": "a", "ts": t1}, micros(t1) + 1, insert=False, unit="K")])])
    state = await harness.read_state(v2, NOW)
    assert state.rows == {
        ("a", t1): {"sensor": "a", "ts": t1, "value": 1.0, "unit": "K"},
        ("a", t2): {"sensor": "a", "ts": t2, "value": 2.0, "unit": "C"},
        ("b", t1): {"sensor": "b", "ts": t1, "value": 3.0, "unit": None},
    }
    chunks = await _fetch(
        harness.dsn,
        "SELECT c.chunk_schema || '.' || c.chunk_name FROM timescaledb_information.chunks c WHERE hypertable_name = 'ks_evo__state'",
    )
    assert len(chunks) == 2
    for (chunk,) in chunks:  # every chunk has the added storage columns
        cols = await _fetch(
            harness.dsn, "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped", chunk
        )
        assert {"unit", "unit#ts", "unit#exp"} <= {c[0] for c in cols}


async def test_a_refused_table_goes_to_the_dlq_and_the_rest_is_applied(harness: TimescaleHarness) -> None:
    # ts is in the key of READINGS but ORDERS has no ts in its key: latest refused there
    sink = await _sink(harness, time_column="ts", tables={"ks.orders": TimescaleTableConfig(mode="latest", time_column="created")})
    good = write(READINGS, {"sensor": "a", "ts": T0}, micros(T0), value=1.0)
    bad = [write(ORDERS, {"id": i}, micros(T0), created=T0, total=None) for i in range(3)]
    with structlog.testing.capture_logs() as logs:
        result = await sink.write(batch([bad[0], good, bad[1]]))
        result2 = await sink.write(batch([bad[2]]))
    assert [r.event for r in result.rejected] == [bad[0], bad[1]]
    assert [r.event for r in result2.rejected] == [bad[2]]
    assert {r.error_type for r in result.rejected} == {"ConfigError"}
    assert "tables.ks.orders.mode: latest-state mode is refused for table ks.orders" in result.rejected[0].error
    assert [entry["table"] for entry in logs if entry["log_level"] == "error"] == ["ks.orders"]  # reported once
    assert (await harness.read_state(READINGS, NOW)).rows == {("a", T0): {"sensor": "a", "ts": T0, "value": 1.0}}
    assert dict(await sink.committed_positions()) == {"n1": bad[2].position}


async def test_refused_and_rejected_events_are_dead_lettered_before_the_commit(harness: TimescaleHarness) -> None:
    sink = await _sink(harness, time_column="ts", tables={"ks.orders": TimescaleTableConfig(mode="latest", time_column="created")})
    first = batch([write(READINGS, {"sensor": "a", "ts": T0}, micros(T0), value=1.0)])
    await sink.write(first)
    refused = write(ORDERS, {"id": 1}, micros(T0), created=T0, total=None)
    poison = write(READINGS, {"sensor": "bad\x00", "ts": T0}, micros(T0), value=2.0)
    good = write(READINGS, {"sensor": "b", "ts": T0}, micros(T0), value=3.0)
    seen: list[tuple[list[ChangeEvent], list[Any]]] = []

    async def recording(rejected: Any) -> None:
        offsets = await _fetch(harness.dsn, 'SELECT node, "offset" FROM cdc_test.cdc_offsets')
        seen.append(([r.event for r in rejected], [(r["node"], r["offset"]) for r in offsets]))

    b = attrs.evolve(batch([refused, poison, good]), dead_letter=recording)
    result = await sink.write(b)
    assert {id(r.event) for r in result.rejected} == {id(refused), id(poison)}
    assert {id(e) for dead, _ in seen for e in dead} == {id(refused), id(poison)}
    assert all(offsets == [("n1", first.positions["n1"].offset)] for _, offsets in seen)
    assert dict(await sink.committed_positions()) == dict(b.positions)

    async def failing(rejected: Any) -> None:
        raise OSError("DLQ disk full")

    again = attrs.evolve(batch([write(ORDERS, {"id": 2}, micros(T0), created=T0, total=None)]), dead_letter=failing)
    with pytest.raises(OSError, match="DLQ disk full"):
        await sink.write(again)
    assert dict(await sink.committed_positions()) == dict(b.positions)


async def test_apache_edition_reports_unavailable_policies_once(harness: TimescaleHarness) -> None:
    overrides = {
        "time_column": "ts",
        "compression": CompressionConfig(after="7 days", segment_by=("sensor",)),
        "retention": RetentionConfig(drop_after="90 days"),
    }
    with structlog.testing.capture_logs() as logs:
        sink = await _sink(harness, **overrides)
        for i in range(3):
            s = table(f"pol{i}", {"sensor": "text", "ts": "timestamp", "value": "double"}, pk=("sensor",), ck=("ts",))
            await _apply(sink, [batch([write(s, {"sensor": "a", "ts": T0}, micros(T0), value=float(i))])])
        await _apply(sink, [batch([write(ORDERS, {"id": 1}, micros(T0), created=T0)])])
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, warnings
    (w,) = warnings
    assert "NOT applied" in w["event"]
    assert w["license"] == "apache"
    assert w["unavailable"] == ["compression", "policies"]
    assert "license" in w["reasons"]["compression"]
    caps = sink.capabilities
    assert caps is not None
    assert caps.apache_only
    assert (caps.compression, caps.policies, caps.continuous_aggregates) == (False, False, False)
    # nothing was attempted: no jobs, no compression settings on our hypertables
    jobs = await _fetch(harness.dsn, "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_schema = 'cdc_test'")
    assert jobs[0][0] == 0
    hypertables = await _fetch(
        harness.dsn, "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables ORDER BY 1"
    )
    assert [(r[0], r[1]) for r in hypertables] == [
        ("ks_orders", False),
        ("ks_pol0__state", False),
        ("ks_pol1__state", False),
        ("ks_pol2__state", False),
    ]


async def test_apache_edition_without_policies_configured_only_informs(harness: TimescaleHarness) -> None:
    with structlog.testing.capture_logs() as logs:
        sink = await _sink(harness)
    assert [e["log_level"] for e in logs if e.get("sink") == sink.name] == ["info", "info"]
    info = next(e for e in logs if e["event"] == "timescale sink capabilities")
    assert sorted(info["unavailable"]) == ["compression", "continuous_aggregates", "policies"]


async def test_database_without_the_extension_is_refused(postgres_dsn: str) -> None:
    h = TimescaleHarness(postgres_dsn)
    with pytest.raises(Exception, match="no timescaledb extension"):
        await h.make_sink()
    await h.destroy()
