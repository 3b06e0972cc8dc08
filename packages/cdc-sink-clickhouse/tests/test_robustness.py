"""Regressions from review: concurrent schema changes, dead-lettering before offsets, UDT evolution,
server-side error bisecting, equal-timestamp tie-breaks, colliding column names — on both engines."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
from frozendict import frozendict

from cdc_core.errors import PermanentError, TransientError
from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Deletion, ElementChange, Liveness, RangeBound, RangeDeletion
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.sinks import Batch
from cdc_core.testing.model import latest_state
from cdc_sink_clickhouse.transport import ClickHouseError

from .conftest import ClickHouseHarness

NOW = 1_800_000_000
_offsets = itertools.count(1)


@pytest.fixture(params=["chdb", pytest.param("server", marks=pytest.mark.integration)])
def harness(request: pytest.FixtureRequest) -> ClickHouseHarness:
    h: ClickHouseHarness = request.getfixturevalue("chdb_harness" if request.param == "chdb" else "server_harness")
    return h


def _schema(table: str, regular: dict[str, str], *, static: dict[str, str] | None = None, ck: bool = True) -> TableSchema:
    cols = [ColumnSchema(name="pk", type="int", kind=ColumnKind.PARTITION_KEY, position=0)]
    if ck:
        cols.append(ColumnSchema(name="ck", type="int", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.ASC))
    cols += [ColumnSchema(name=n, type=t, kind=ColumnKind.REGULAR, position=-1) for n, t in regular.items()]
    cols += [ColumnSchema(name=n, type=t, kind=ColumnKind.STATIC, position=-1) for n, t in (static or {}).items()]
    return TableSchema(keyspace="ks", table=table, id=uuid.UUID(int=1), columns=tuple(cols))


def _row(
    schema: TableSchema,
    key: dict[str, Any],
    cells: dict[str, Cell | ComplexChange],
    *,
    liveness: Liveness | None = None,
    node: str = "n1",
    **extra: Any,
) -> ChangeEvent:
    return ChangeEvent(
        position=Position(node=node, segment_id=1, offset=next(_offsets) * 10, index=0),
        schema=schema,
        kind=extra.pop("kind", ChangeKind.ROW),
        key=key,
        liveness=liveness,
        cells=cells,
        **extra,
    )


def _batch(events: Sequence[ChangeEvent], dead_letter: Callable[[Sequence[Any]], Awaitable[None]] | None = None) -> Batch:
    positions: dict[str, Position] = {}
    for e in events:
        if e.position.node not in positions or e.position > positions[e.position.node]:
            positions[e.position.node] = e.position
    return Batch(batch_id=uuid.uuid4().hex, events=list(events), positions=positions, dead_letter=dead_letter)


async def _assert_state(harness: ClickHouseHarness, schema: TableSchema, events: Sequence[ChangeEvent]) -> None:
    expected = latest_state(events, now=NOW)
    actual = await harness.read_state(schema, NOW)
    assert actual.rows == expected.rows
    assert actual.statics == expected.statics


# --- 1. schema change while other agents insert ---------------------------------------------------


def _table(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:6]}"


async def test_schema_change_while_another_agent_writes_loses_nothing(harness: ClickHouseHarness) -> None:
    name = _table("race")
    s1 = _schema(name, {"v": "text", "l": "list<int>"}, static={"s": "int"})
    s2 = _schema(name, {"v": "text", "l": "list<int>", "w": "int"}, static={"s": "int", "t": "text"})
    a = await harness.make_sink()  # agent of node 1
    b = await harness.make_sink()  # agent of node 2, same destination, still on the old schema
    events: list[ChangeEvent] = []
    tu = uuid.UUID("e0b5c8c0-1dd2-11b2-8080-808080808080")

    def old_write(i: int) -> ChangeEvent:
        return _row(
            s1,
            {"pk": i, "ck": 0},
            {
                "v": Cell(timestamp=100 + i, value=f"b{i}"),
                "l": ComplexChange(elements=(ElementChange(path=tu, cell=Cell(timestamp=100 + i, value=i)),)),
            },
            liveness=Liveness(timestamp=100 + i),
            node="n2",
        )

    pending: list[ChangeEvent] = []

    async def b_writes() -> None:
        pk = len(events) + len(pending) + 10
        for e in (
            old_write(pk),
            _row(s1, {"pk": pk}, {"s": Cell(timestamp=100, value=pk)}, node="n2", static=True),
        ):
            before = await b.committed_positions()
            try:
                await b.write(_batch([e]))
                events.append(e)
            except TransientError:
                # Whatever refuses an insert during the schema change must apply and commit
                # nothing; the engine retries the batch later.
                assert await b.committed_positions() == before
                pending.append(e)

    for e in (old_write(1), old_write(2)):
        events.append(e)
        await (a if e.key["pk"] == 1 else b).write(_batch([e]))
    ddl: list[str] = []
    original = a.transport.execute

    async def execute(sql: str) -> None:
        await original(sql)
        ddl.append(sql)
        await b_writes()  # B inserts (and commits its offsets) after every DDL statement of A

    a.transport.execute = execute  # type: ignore[method-assign]
    new = _row(
        s2, {"pk": 3, "ck": 0}, {"v": Cell(timestamp=200, value="a2"), "w": Cell(timestamp=200, value=7)}, liveness=Liveness(timestamp=200)
    )
    new_static = _row(s2, {"pk": 3}, {"t": Cell(timestamp=200, value="tt")}, static=True)
    events += [new, new_static]
    await a.write(_batch([new, new_static]))
    a.transport.execute = original  # type: ignore[method-assign]
    assert any("ALTER TABLE" in s for s in ddl)
    # Latest mode inserts into plain log tables (no materialized view in the way): an agent on the
    # old schema is never refused, on either engine, while another one alters the tables.
    assert not pending
    for e in pending:  # the engine's retry
        await b.write(_batch([e]))
        events.append(e)
    # B's rows went through whatever view existed at each moment: none lost.
    await b_writes()
    # A restarted agent still on the old schema neither re-creates nor drops views: A's new column still lands.
    c = await harness.make_sink()
    for e in (old_write(99), old_write(98)):
        await c.write(_batch([e]))
        events.append(e)
    later = _row(s2, {"pk": 4, "ck": 0}, {"w": Cell(timestamp=300, value=8)}, liveness=Liveness(timestamp=300))
    events.append(later)
    await a.write(_batch([later]))
    for s in (a, b, c):
        await s.close()
    await _assert_state(harness, s2, events)
    mvs = await harness.query(f"SELECT name FROM system.tables WHERE database = '{harness.database}' AND engine = 'MaterializedView'")
    assert mvs.decode().split() == []  # layout format 4: no materialized views in latest mode
    # Compacting after the race (A's states table has every column, B's old-schema rows default) changes nothing.
    d = await harness.make_sink()
    await d.compact(s2, margin_s=-5)
    await d.close()
    await _assert_state(harness, s2, events)


async def test_first_collection_column_adds_the_element_columns(harness: ClickHouseHarness) -> None:
    # Tables without non-frozen collections have no element wire columns; the first such column
    # (regular and static) adds them by ALTER while an agent on the old schema keeps inserting.
    name = _table("firstcoll")
    s1 = _schema(name, {"v": "text"}, static={"s": "int"})
    s2 = _schema(name, {"v": "text", "l": "list<int>"}, static={"s": "int", "m": "map<text, int>"})
    tu = uuid.UUID("e0b5c8c0-1dd2-11b2-8080-808080808080")
    old, new = await harness.make_sink(), await harness.make_sink()
    events = [
        _row(s1, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=10, value="a")}, liveness=Liveness(timestamp=10)),
        _row(s1, {"pk": 1}, {"s": Cell(timestamp=10, value=1)}, static=True),
    ]
    try:
        await old.write(_batch(events))
        layout = await old.ensure_table(s1)
        assert not any(n.startswith("i__") and n[3:] in ("col", "ps", "ev") for n, _ in layout.rows_wire() + layout.parts_wire())
        later = [
            _row(s2, {"pk": 1, "ck": 1}, {"l": ComplexChange(elements=(ElementChange(path=tu, cell=Cell(timestamp=20, value=5)),))}),
            _row(s2, {"pk": 1}, {"m": ComplexChange(elements=(ElementChange(path="k", cell=Cell(timestamp=20, value=6)),))}, static=True),
        ]
        await new.write(_batch(later))
        events += later
        still_old = [_row(s1, {"pk": 2, "ck": 1}, {"v": Cell(timestamp=30, value="b")}, liveness=Liveness(timestamp=30))]
        await old.write(_batch(still_old))  # the old agent's layout (no element columns) keeps working
        events += still_old
    finally:
        await old.close()
        await new.close()
    await _assert_state(harness, s2, events)


async def test_an_agent_on_an_older_schema_does_not_compact_away_newer_columns(harness: ClickHouseHarness) -> None:
    name = _table("oldcompact")
    s1 = _schema(name, {"v": "text"}, static={"s": "int"})
    s2 = _schema(name, {"v": "text", "w": "int"}, static={"s": "int", "t": "text"})
    old, new = await harness.make_sink(), await harness.make_sink()
    events = [_row(s1, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=10, value="a")}, liveness=Liveness(timestamp=10))]
    try:
        await old.write(_batch(events))
        newer = [
            _row(s2, {"pk": 1, "ck": 1}, {"w": Cell(timestamp=20, value=5)}),
            _row(s2, {"pk": 1}, {"t": Cell(timestamp=20, value="tt")}, static=True),
        ]
        await new.write(_batch(newer))
        events += newer
        await old.compact(s1, margin_s=-5)  # knows neither w nor t: must not fold and delete their cells
        await _assert_state(harness, s2, events)
        await new.compact(s2, margin_s=-5)  # an agent that knows every column does compact
    finally:
        await old.close()
        await new.close()
    await _assert_state(harness, s2, events)


async def test_periodic_compaction_runs_after_batches_and_its_failure_does_not_fail_them(harness: ClickHouseHarness) -> None:
    schema = _schema(_table("periodic"), {"v": "text"})
    events = [
        _row(schema, {"pk": 1, "ck": i}, {"v": Cell(timestamp=10 + i, value=f"v{i}")}, liveness=Liveness(timestamp=5)) for i in range(4)
    ]
    sink = await harness.make_sink(compact_interval_s=0.001, compact_margin_s=0.0)
    calls: list[str] = []
    original = sink.compact

    async def compact(schema: TableSchema, margin_s: float | None = None) -> None:
        calls.append(schema.table)
        if len(calls) == 1:
            raise TransientError("compaction refused")  # must not fail the batch
        await original(schema, margin_s)

    sink.compact = compact  # type: ignore[method-assign]
    try:
        for e in events:
            await asyncio.sleep(0.002)
            result = await sink.write(_batch([e]))
            assert not result.rejected
        positions = await sink.committed_positions()
    finally:
        await sink.close()
    assert len(calls) >= 3
    assert positions["n1"] == events[-1].position
    await _assert_state(harness, schema, events)


async def test_a_row_logged_twice_and_compacted_twice_is_counted_once(harness: ClickHouseHarness) -> None:
    # A compaction that crashed between its INSERT of states and its DELETE from the log leaves
    # every row both compacted and logged; a second compaction adds the same states again, and
    # replays log the rows again. The aggregate states must make all of it invisible (every kind
    # of state involved).
    name = _table("dupmv")
    schema = _schema(name, {"v": "text", "n": "int", "l": "list<int>", "m": "map<text, int>"}, static={"s": "text"})
    sink = await harness.make_sink()
    layout = await sink.ensure_table(schema)
    tu = [uuid.UUID(f"e0b5c8c{i}-1dd2-11b2-8080-808080808080") for i in range(3)]
    events = [
        _row(
            schema,
            {"pk": 1, "ck": 1},
            {"v": Cell(timestamp=10, value="a"), "n": Cell(timestamp=10, value=1)},
            liveness=Liveness(timestamp=10),
        ),
        _row(schema, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=12, value="b"), "n": Cell(timestamp=11, tombstone=True)}),
        _row(
            schema,
            {"pk": 1, "ck": 2},
            {"l": ComplexChange(elements=tuple(ElementChange(path=t, cell=Cell(timestamp=20, value=i)) for i, t in enumerate(tu)))},
        ),
        _row(
            schema, {"pk": 1, "ck": 2}, {"l": ComplexChange(elements=(ElementChange(path=tu[1], cell=Cell(timestamp=21, tombstone=True)),))}
        ),
        _row(
            schema,
            {"pk": 1, "ck": 3},
            {
                "m": ComplexChange(
                    deletion=Deletion(timestamp=29, local_deletion_time=1),
                    elements=(ElementChange(path="k", cell=Cell(timestamp=30, value=5)),),
                )
            },
        ),
        _row(
            schema,
            {"pk": 1, "ck": 4},
            {"v": Cell(timestamp=40, value="ttl", ttl=100, local_deletion_time=NOW + 100)},
            liveness=Liveness(timestamp=40, ttl=100, local_deletion_time=NOW + 100),
        ),
        _row(schema, {"pk": 1, "ck": 5}, {"v": Cell(timestamp=40, value="gone", ttl=100, local_deletion_time=NOW - 1)}),
        _row(schema, {"pk": 1}, {"s": Cell(timestamp=50, value="st")}, static=True),
        _row(schema, {"pk": 2, "ck": 1}, {"v": Cell(timestamp=10, value="x")}, liveness=Liveness(timestamp=10)),
        _row(schema, {"pk": 2, "ck": 2}, {"v": Cell(timestamp=10, value="y")}, liveness=Liveness(timestamp=10)),
        _row(
            schema,
            {"pk": 2},
            {},
            kind=ChangeKind.RANGE_DELETE,
            range_deletion=RangeDeletion(
                start=RangeBound(values=(2,), inclusive=True), end=None, deletion=Deletion(timestamp=15, local_deletion_time=1)
            ),
        ),
        _row(schema, {"pk": 3, "ck": 1}, {"v": Cell(timestamp=10, value="z")}, liveness=Liveness(timestamp=10)),
        _row(schema, {"pk": 3}, {}, kind=ChangeKind.PARTITION_DELETE, partition_deletion=Deletion(timestamp=11, local_deletion_time=1)),
        _row(schema, {"pk": 1, "ck": 6}, {}, liveness=None, row_deletion=Deletion(timestamp=5, local_deletion_time=1)),
    ]
    try:
        await sink.write(_batch(events))
        for kind in ("__rows", "__parts"):  # the compaction's first half only: the crash window
            storage = layout.rows_storage() if kind == "__rows" else layout.parts_storage()
            cols = ", ".join(f"`{n}`" for n, _ in storage)
            await sink.transport.execute(f"INSERT INTO {layout.q(kind)} ({cols}) {layout.state_select(kind)}")
        await sink.write(_batch(events[::-1]))
        await _assert_state(harness, schema, events)
        await sink.compact(schema, margin_s=-5)
        await sink.compact(schema, margin_s=-5)
        for _ in range(100):  # the DELETE is an asynchronous mutation on 18.16
            left = [int(await sink.transport.select(f"SELECT count() FROM {layout.q(k)}")) for k in ("__rows_in", "__parts_in")]
            if left == [0, 0]:
                break
            await asyncio.sleep(0.1)
        assert left == [0, 0]  # compaction emptied the log
        await _assert_state(harness, schema, events)
        await sink.write(_batch(events[3:9]))
        raw = await sink.transport.select(f"SELECT count() FROM {layout.q('__rows')}")
    finally:
        await sink.close()
    assert int(raw) > 0
    await _assert_state(harness, schema, events)


# --- 2. dead-letter before the offsets move --------------------------------------------------------


async def test_rejected_events_are_dead_lettered_before_the_offsets_move(harness: ClickHouseHarness) -> None:
    schema = _schema(_table("dlq"), {"n": "int"})
    good = _row(schema, {"pk": 1, "ck": 1}, {"n": Cell(timestamp=5, value=1)}, liveness=Liveness(timestamp=5))
    poison = _row(schema, {"pk": 1, "ck": 2}, {"n": Cell(timestamp=5, value=2**40)})  # Python-side refusal
    server_poison = _row(schema, {"pk": 1, "ck": 3}, {"n": Cell(timestamp=5, value=3)})  # the server refuses it
    sink = await harness.make_sink()
    layout = await sink.ensure_table(schema)
    layout._native_row = None  # every event through the Python encoder, patched below
    original = layout.encode_latest_python

    def corrupt(event: ChangeEvent) -> tuple[list[str], list[str]]:
        rows, parts = original(event)
        if event is server_poison:
            rows = [rows[0].replace("\t", "\tnot-a-number\t", 1)]
        return rows, parts

    layout.encode_latest_python = corrupt  # type: ignore[method-assign]

    async def failing_dlq(rejected: Sequence[Any]) -> None:
        raise OSError("DLQ disk full")

    seen: list[tuple[list[ChangeEvent], dict[str, Position]]] = []

    async def recording_dlq(rejected: Sequence[Any]) -> None:
        seen.append(([r.event for r in rejected], dict(await sink.committed_positions())))

    try:
        with pytest.raises(OSError, match="DLQ disk full"):
            await sink.write(_batch([good, poison, server_poison], failing_dlq))
        assert await sink.committed_positions() == {}  # the offsets did not move past the poison
        result = await sink.write(_batch([good, poison, server_poison], recording_dlq))
        committed = await sink.committed_positions()
    finally:
        await sink.close()
    assert [r.event for r in result.rejected] == [poison, server_poison]  # still returned (the engine de-duplicates)
    assert len(seen) == 1
    assert seen[0][0] == [poison, server_poison]
    assert seen[0][1] == {}  # dead-lettered while the offsets had not moved yet
    assert committed == {"n1": server_poison.position}


# --- 3. a UDT gains a field ------------------------------------------------------------------------


async def test_udt_gaining_a_field_is_kept_in_the_same_process(harness: ClickHouseHarness) -> None:
    name = _table("udt")
    t1, t2 = "frozen<udt<ks.addr>{street:text,zip:int}>", "frozen<udt<ks.addr>{street:text,zip:int,city:text}>"
    n1, n2 = "udt<ks.pt>{x:int}", "udt<ks.pt>{x:int,y:text}"
    s1, s2 = _schema(name, {"a": t1, "p": n1}), _schema(name, {"a": t2, "p": n2})

    def ev(s: TableSchema, pk: int, a: dict[str, Any], p: dict[str, Any]) -> ChangeEvent:
        elements = tuple(ElementChange(path=f, cell=Cell(timestamp=10, value=v)) for f, v in p.items())
        return _row(s, {"pk": pk, "ck": 0}, {"a": Cell(timestamp=10, value=frozendict(a)), "p": ComplexChange(elements=elements)})

    events = [
        ev(s1, 1, {"street": "s1", "zip": 1}, {"x": 1}),
        ev(s2, 2, {"street": "s2", "zip": 2, "city": "Paris"}, {"x": 2, "y": "why"}),
        ev(s1, 3, {"street": "s3", "zip": 3}, {"x": 3}),  # another node still on the old type, same batch
    ]
    late = ev(s1, 4, {"street": "s4", "zip": 4}, {"x": 4})  # and in a later batch: must not narrow the type back
    newer = ev(s2, 5, {"street": "s5", "zip": 5, "city": "Rome"}, {"y": "z"})
    sink = await harness.make_sink()
    try:
        r1 = await sink.write(_batch(events[:1]))
        r2 = await sink.write(_batch(events[1:]))
        r3 = await sink.write(_batch([late]))
        r4 = await sink.write(_batch([newer]))
    finally:
        await sink.close()
    assert [r.error for r in (*r1.rejected, *r2.rejected, *r3.rejected, *r4.rejected)] == []
    state = await harness.read_state(s2, NOW)
    got = {k[0]: (dict(row["a"]), dict(row["p"])) for k, row in state.rows.items()}
    assert got == {
        1: ({"street": "s1", "zip": 1, "city": None}, {"x": 1, "y": None}),
        2: ({"street": "s2", "zip": 2, "city": "Paris"}, {"x": 2, "y": "why"}),
        3: ({"street": "s3", "zip": 3, "city": None}, {"x": 3, "y": None}),
        4: ({"street": "s4", "zip": 4, "city": None}, {"x": 4, "y": None}),
        5: ({"street": "s5", "zip": 5, "city": "Rome"}, {"x": None, "y": "z"}),
    }


# --- 4. any non-transient server error is bisected ---------------------------------------------------


async def test_non_data_server_error_is_bisected_to_its_culprit(harness: ClickHouseHarness) -> None:
    schema = _schema(_table("bisect"), {"v": "text"})
    events = [_row(schema, {"pk": 1, "ck": i}, {"v": Cell(timestamp=5, value=f"v{i}")}, liveness=Liveness(timestamp=5)) for i in range(7)]
    sink = await harness.make_sink()
    original = sink.transport.insert
    mode = "culprit"

    async def insert(table: str, columns: list[str], payload: bytes, settings: Any) -> None:
        if "__rows_in" in table and (mode == "all" or (mode == "culprit" and b"\tv3\t" in payload)):
            # a code outside DATA_ERROR_CODES (e.g. a constraint or a function throwing on a value)
            raise ClickHouseError("Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero", code=395)
        await original(table, columns, payload, settings)

    sink.transport.insert = insert  # type: ignore[method-assign]
    try:
        result = await sink.write(_batch(events))
        assert [r.event for r in result.rejected] == [events[3]]
        assert result.rejected[0].error_type == "ClickHouseError"
        assert await sink.committed_positions() == {"n1": events[-1].position}
        # The same error from every event: the batch's fault, nothing rejected or committed.
        mode = "all"
        more = [_row(schema, {"pk": 2, "ck": i}, {"v": Cell(timestamp=5, value="x")}) for i in range(3)]
        with pytest.raises(PermanentError, match="395"):
            await sink.write(_batch(more))
        with pytest.raises(PermanentError, match="395"):
            await sink.write(_batch(more[:1]))
        assert await sink.committed_positions() == {"n1": events[-1].position}
        # A transient error is never bisected.
        calls = 0

        async def overloaded(table: str, columns: list[str], payload: bytes, settings: Any) -> None:
            nonlocal calls
            calls += 1
            raise ClickHouseError("Code: 241, e.displayText() = DB::Exception: Memory limit exceeded", code=241)

        sink.transport.insert = overloaded  # type: ignore[method-assign]
        with pytest.raises(TransientError):
            await sink.write(_batch(more))
        assert calls == 1
    finally:
        await sink.close()
    state = await harness.read_state(schema, NOW)
    assert sorted(state.rows) == [(1, i) for i in range(7) if i != 3]


# --- 5. equal timestamps: Cassandra's tie-breaks, whatever the arrival order -----------------------------


@pytest.mark.parametrize("reverse", [False, True])
async def test_equal_timestamp_ties_do_not_depend_on_arrival_order(harness: ClickHouseHarness, reverse: bool) -> None:
    schema = _schema(_table("ties"), {"v": "text", "s": "set<int>"})
    soon, later, past = NOW + 100, NOW + 200, NOW - 5

    def ev(pk: int, node: str, liveness: Liveness | None = None, **cells: Cell | ComplexChange) -> ChangeEvent:
        return _row(schema, {"pk": pk, "ck": 0}, dict(cells), liveness=liveness, node=node)

    def el(value: int, cell: Cell) -> ComplexChange:
        return ComplexChange(elements=(ElementChange(path=value, cell=cell),))

    events = [
        # Markers at one timestamp: an expired TTL marker beats a plain one (row 1 gone) ...
        ev(1, "n1", Liveness(timestamp=50)),
        ev(1, "n2", Liveness(timestamp=50, ttl=10, local_deletion_time=past)),
        # ... and between two TTL markers the later expiry wins (row 2 stays).
        ev(2, "n1", Liveness(timestamp=50, ttl=10, local_deletion_time=past)),
        ev(2, "n2", Liveness(timestamp=50, ttl=10, local_deletion_time=later)),
        # Cells: the expired TTL copy of a value beats its plain copy (row 3 has no v) ...
        ev(3, "n1", Liveness(timestamp=1), v=Cell(timestamp=60, value="a")),
        ev(3, "n2", v=Cell(timestamp=60, value="a", ttl=10, local_deletion_time=past)),
        # ... the later expiry wins between two TTL copies (row 4 keeps v) ...
        ev(4, "n1", Liveness(timestamp=1), v=Cell(timestamp=60, value="b", ttl=10, local_deletion_time=past)),
        ev(4, "n2", v=Cell(timestamp=60, value="b", ttl=10, local_deletion_time=soon)),
        # ... and a tombstone beats both.
        ev(5, "n1", Liveness(timestamp=1), v=Cell(timestamp=60, value="c", ttl=10, local_deletion_time=later)),
        ev(5, "n2", v=Cell(timestamp=60, tombstone=True, local_deletion_time=past)),
        # Collection elements follow the same order.
        ev(6, "n1", Liveness(timestamp=1), s=el(1, Cell(timestamp=70))),
        ev(6, "n2", s=el(1, Cell(timestamp=70, ttl=10, local_deletion_time=past))),
        ev(6, "n1", s=el(2, Cell(timestamp=70, ttl=10, local_deletion_time=past))),
        ev(6, "n2", s=el(2, Cell(timestamp=70, ttl=10, local_deletion_time=soon))),
        ev(6, "n1", s=el(3, Cell(timestamp=70, ttl=10, local_deletion_time=soon))),
        ev(6, "n2", s=el(3, Cell(timestamp=70, tombstone=True, local_deletion_time=past))),
    ]
    sink = await harness.make_sink()
    try:
        for e in reversed(events) if reverse else events:
            await sink.write(_batch([e]))
    finally:
        await sink.close()
    state = await harness.read_state(schema, NOW)
    assert sorted(state.rows) == [(2, 0), (3, 0), (4, 0), (5, 0), (6, 0)]
    assert [state.rows[(k, 0)]["v"] for k in (3, 4, 5)] == [None, "b", None]
    assert state.rows[(6, 0)]["s"] == frozenset({2})
    await _assert_state(harness, schema, events)


@pytest.mark.parametrize("old", ["format2", "format3"])
async def test_a_table_of_the_older_layout_format_is_refused_clearly(harness: ClickHouseHarness, old: str) -> None:
    schema = _schema(_table("oldfmt"), {"v": "text"})
    sink = await harness.make_sink()
    try:
        layout = await sink.ensure_table(schema)
        if old == "format2":
            await sink.transport.execute(f"ALTER TABLE {layout.q('__rows')} ADD COLUMN _lv AggregateFunction(max, Int64)")
        else:  # format 3: Null input tables (no insert time) feeding materialized views
            await sink.transport.execute(f"DROP TABLE {layout.q('__rows_in')}")
            cols = ", ".join(f"`{n}` {t}" for n, t in layout.rows_wire())
            await sink.transport.execute(f"CREATE TABLE {layout.q('__rows_in')} ({cols}) ENGINE = Null")
    finally:
        await sink.close()
    fresh = await harness.make_sink()
    try:
        with pytest.raises(PermanentError, match="older cdc-sink-clickhouse"):
            await fresh.ensure_table(schema)
    finally:
        await fresh.close()


# --- 6. resetting offsets as the docs say --------------------------------------------------------------


async def test_offsets_reset_as_documented(harness: ClickHouseHarness) -> None:
    schema = _schema(_table("reset"), {"v": "text"})
    sink = await harness.make_sink()
    db, name = harness.database, sink.name
    try:
        far = [_row(schema, {"pk": 1, "ck": i}, {"v": Cell(timestamp=5, value="x")}, node=node) for i, node in enumerate(("n1", "n2"))]
        await sink.write(_batch(far))
        assert set(await sink.committed_positions()) == {"n1", "n2"}
        # docs/sinks/clickhouse.md, "Resetting offsets" (the pipeline is stopped meanwhile):
        await sink.transport.execute(f"ALTER TABLE `{db}`.cdc_offsets DELETE WHERE sink = '{name}' AND node = 'n1'")
        for _ in range(100):
            pending = await sink.transport.select(
                f"SELECT count() FROM system.mutations WHERE database = '{db}' AND table = 'cdc_offsets' AND is_done = 0"
            )
            if int(pending) == 0:
                break
            await asyncio.sleep(0.1)
        assert set(await sink.committed_positions()) == {"n2"}
        # ... optionally re-inserting the position to resume from:
        await sink.transport.execute(
            f"INSERT INTO `{db}`.cdc_offsets (sink, node, segment_id, offset, idx, committed_at) VALUES ('{name}', 'n1', 1, 5, 0, now())"
        )
        assert (await sink.committed_positions())["n1"] == Position(node="n1", segment_id=1, offset=5, index=0)
        # Then the sink moves on from there.
        await sink.write(_batch([_row(schema, {"pk": 2, "ck": 0}, {"v": Cell(timestamp=5, value="y")})]))
        assert (await sink.committed_positions())["n1"].offset > 5
        # The whole sink: TRUNCATE (every sink on that database) or the DELETE without the node.
        await sink.transport.execute(f"TRUNCATE TABLE `{db}`.cdc_offsets")
        assert await sink.committed_positions() == {}
    finally:
        await sink.close()


# --- 7. column names against the sink's own names ---------------------------------------------------


async def test_names_like_the_sinks_own_aliases_are_stored_faithfully(harness: ClickHouseHarness) -> None:
    # Key and value names that the view's internal aliases used to be built from (a_, x_, p__, ...).
    name = _table("names")
    cols = [
        ColumnSchema(name="a_v", type="int", kind=ColumnKind.PARTITION_KEY, position=0),
        ColumnSchema(name="x_v", type="int", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.ASC),
        ColumnSchema(name="v", type="text", kind=ColumnKind.REGULAR, position=-1),
        ColumnSchema(name="ck", type="int", kind=ColumnKind.REGULAR, position=-1),
        ColumnSchema(name="sh", type="set<int>", kind=ColumnKind.REGULAR, position=-1),
        ColumnSchema(name="i_v", type="text", kind=ColumnKind.REGULAR, position=-1),
        ColumnSchema(name="has", type="text", kind=ColumnKind.STATIC, position=-1),
    ]
    schema = TableSchema(keyspace="ks", table=name, id=uuid.UUID(int=2), columns=tuple(cols))
    events = [
        _row(
            schema,
            {"a_v": 1, "x_v": 2},
            {
                "v": Cell(timestamp=5, value="v"),
                "ck": Cell(timestamp=5, value=3),
                "sh": ComplexChange(elements=(ElementChange(path=4, cell=Cell(timestamp=5)),)),
                "i_v": Cell(timestamp=5, value="iv"),
            },
            liveness=Liveness(timestamp=5),
        ),
        _row(schema, {"a_v": 1}, {"has": Cell(timestamp=5, value="static")}, static=True),
        _row(schema, {"a_v": 1, "x_v": 3}, {"v": Cell(timestamp=5, value="w")}),
    ]
    sink = await harness.make_sink()
    try:
        assert (await sink.write(_batch(events))).rejected == []
    finally:
        await sink.close()
    await _assert_state(harness, schema, events)


@pytest.mark.parametrize("bad", ["_ck", "v__w", "__", "_lvx"])
async def test_reserved_column_names_are_refused_clearly(harness: ClickHouseHarness, bad: str) -> None:
    odd = _schema(_table("odd"), {"v": "text", bad: "int"})
    fine = _schema(_table("fine"), {"v": "text"})
    events = [
        _row(odd, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=5, value="a"), bad: Cell(timestamp=5, value=1)}),
        _row(fine, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=5, value="b")}),
    ]
    sink = await harness.make_sink()
    try:
        result = await sink.write(_batch(events))
        committed = await sink.committed_positions()
    finally:
        await sink.close()
    assert [r.event for r in result.rejected] == [events[0]]
    assert repr(bad) in result.rejected[0].error and "reserved" in result.rejected[0].error
    assert committed == {"n1": events[1].position}
    assert (await harness.read_state(fine, NOW)).rows == {(1, 1): {"pk": 1, "ck": 1, "v": "b"}}
