"""Types, idempotency, schema evolution, rejections, history mode, HTTPS — on both engines."""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from frozendict import frozendict

from cdc_core.cqltypes import Duration
from cdc_core.errors import TransientError
from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Deletion, ElementChange, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.secrets import Secret
from cdc_core.sinks import Batch
from cdc_core.testing.model import latest_state
from cdc_sink_clickhouse.mapping import tsv_split

from .conftest import ClickHouseHarness

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(params=["chdb", pytest.param("server", marks=pytest.mark.integration)])
def harness(request: pytest.FixtureRequest) -> ClickHouseHarness:
    h: ClickHouseHarness = request.getfixturevalue("chdb_harness" if request.param == "chdb" else "server_harness")
    return h


def _schema(name: str, regular: dict[str, str], *, static: dict[str, str] | None = None, ck: str | None = "int") -> TableSchema:
    cols = [ColumnSchema(name="pk", type="int", kind=ColumnKind.PARTITION_KEY, position=0)]
    if ck:
        cols.append(ColumnSchema(name="ck", type=ck, kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.ASC))
    cols += [ColumnSchema(name=n, type=t, kind=ColumnKind.REGULAR, position=-1) for n, t in regular.items()]
    cols += [ColumnSchema(name=n, type=t, kind=ColumnKind.STATIC, position=-1) for n, t in (static or {}).items()]
    return TableSchema(keyspace="ks", table=f"{name}_{uuid.uuid4().hex[:6]}", id=uuid.uuid4(), columns=tuple(cols))


def _event(schema: TableSchema, i: int, key: dict[str, Any], cells: dict[str, Cell | ComplexChange], *, insert: bool = True) -> ChangeEvent:
    return ChangeEvent(
        position=Position(node="n1", segment_id=1, offset=i * 10, index=0),
        schema=schema,
        kind=ChangeKind.ROW,
        key=key,
        liveness=Liveness(timestamp=1000 + i) if insert else None,
        cells=cells,
    )


def _batch(events: list[ChangeEvent], bid: str = "b1") -> Batch:
    last = max(e.position for e in events)
    return Batch(batch_id=bid, events=events, positions={"n1": last})


SIMPLE_VALUES: dict[str, list[Any]] = {
    "ascii": ["plain", ""],
    "text": ["zürich ☃ \t tab \n nl \\ back", "a\\nb"],
    "varchar": ["x"],
    "tinyint": [-128, 127],
    "smallint": [-32768, 32767],
    "int": [-(2**31), 2**31 - 1],
    "bigint": [-(2**63), 2**63 - 1],
    "counter": [42],
    "varint": [-(10**40) - 7, 10**38 + 1],
    "decimal": [Decimal("1.50"), Decimal("-12345678901234567890.123456789012345678"), Decimal("1E+3")],
    "float": [1.5, -0.0, math.inf],
    "double": [0.1, 5e-324, -1.7976931348623157e308, 1 / 3],
    "boolean": [True, False],
    "uuid": [uuid.UUID("12345678-1234-5678-1234-567812345678")],
    "timeuuid": [uuid.UUID("e0b5c8c0-1dd2-11b2-8080-808080808080")],
    "timestamp": [EPOCH + dt.timedelta(milliseconds=1_700_000_000_123), EPOCH - dt.timedelta(milliseconds=1_234_567_890_001)],
    "date": [dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(2024, 2, 29)],
    "time": [0, 86_399_999_999_999],
    "duration": [Duration(1, -2, 3_000_000_001)],
    "inet": [ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("2001:db8::1")],
    "blob": [b"\x00\xff\\\t\n'\"binary", b""],
    "frozen<list<int>>": [(1, 2, 3)],
    "frozen<set<text>>": [("a", "b\\c")],
    "frozen<map<text, frozen<list<int>>>>": [frozendict({"k": (1, 2)})],
    "tuple<int, text, boolean>": [(1, None, True)],
    "frozen<udt<ks.addr>{street:text,zip:int}>": [frozendict({"street": "Main \\ St", "zip": None})],
    "vector<float, 3>": [(1.0, -2.5, 0.25)],
}


async def test_every_cql_type_round_trips(harness: ClickHouseHarness) -> None:
    names = {f"c{i}": t for i, t in enumerate(SIMPLE_VALUES)}
    names.update({"l": "list<int>", "s": "set<text>", "m": "map<text, int>", "u": "udt<ks.pt>{x:int,y:text}"})
    schema = _schema("types", names)
    width = max(len(v) for v in SIMPLE_VALUES.values())
    events: list[ChangeEvent] = []
    for row in range(width):
        cells: dict[str, Cell | ComplexChange] = {}
        for col, typ in names.items():
            if typ in SIMPLE_VALUES:
                values = SIMPLE_VALUES[typ]
                cells[col] = Cell(timestamp=1000 + row, value=values[row % len(values)])
        ts = 1000 + row
        tu = uuid.UUID("e0b5c8c0-1dd2-11b2-8080-808080808080")
        cells["l"] = ComplexChange(elements=(ElementChange(path=tu, cell=Cell(timestamp=ts, value=row)),))
        cells["s"] = ComplexChange(
            elements=(ElementChange(path="x\\y", cell=Cell(timestamp=ts)), ElementChange(path="z", cell=Cell(timestamp=ts)))
        )
        cells["m"] = ComplexChange(elements=(ElementChange(path="k\t1", cell=Cell(timestamp=ts, value=-5)),))
        cells["u"] = ComplexChange(elements=(ElementChange(path="y", cell=Cell(timestamp=ts, value="why")),))
        events.append(_event(schema, row + 1, {"pk": 1, "ck": row}, cells))
    sink = await harness.make_sink()
    try:
        result = await sink.write(_batch(events))
        assert [r.error for r in result.rejected] == []
    finally:
        await sink.close()
    expected = latest_state(events, now=1_800_000_000)
    actual = await harness.read_state(schema, 1_800_000_000)
    assert set(actual.rows) == set(expected.rows)
    for key, row_values in expected.rows.items():
        got = actual.rows[key]
        for col, value in row_values.items():
            want: Any = dict(value) if isinstance(value, frozendict) else value
            have: Any = dict(got[col]) if isinstance(got[col], frozendict) else got[col]
            if isinstance(want, float) and math.isnan(want):
                assert math.isnan(have)
            else:
                assert have == want, (col, names.get(col), have, want)
                assert type(have) is type(want) or isinstance(want, dict), (col, type(have), type(want))
    # Decimal scale is kept exactly (not just numerically equal).
    assert str(actual.rows[(1, 0)]["c9"]) == "1.50"
    assert str(actual.rows[(1, 1)]["c9"]) == "-12345678901234567890.123456789012345678"


async def test_nullable_string_with_backslashes_reads_back_exactly(harness: ClickHouseHarness) -> None:
    # aiochclient decodes Nullable(String) with backslashes wrongly; the sink reads TSV itself.
    schema = _schema("bs", {"v": "text"})
    tricky = ["a\\b", "\\", "\\N", "x\\ty", "end\\", "\\\\"]
    events = [_event(schema, i + 1, {"pk": 1, "ck": i}, {"v": Cell(timestamp=10 + i, value=v)}) for i, v in enumerate(tricky)]
    events.append(_event(schema, 99, {"pk": 1, "ck": 99}, {"v": Cell(timestamp=10, tombstone=True)}))
    sink = await harness.make_sink()
    try:
        await sink.write(_batch(events))
        state = await sink.read_state(schema)  # through the view itself
    finally:
        await sink.close()
    assert [state.rows[(1, i)]["v"] for i in range(len(tricky))] == tricky
    assert state.rows[(1, 99)]["v"] is None  # a real NULL, not the text \N


async def test_same_batch_twice_gives_identical_tables(harness: ClickHouseHarness) -> None:
    schema = _schema("twice", {"v": "text", "n": "int", "l": "list<int>"})
    tu = uuid.UUID("e0b5c8c0-1dd2-11b2-8080-808080808080")
    events = [
        _event(schema, 1, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=5, value="a"), "n": Cell(timestamp=5, value=1)}),
        _event(schema, 2, {"pk": 1, "ck": 1}, {"l": ComplexChange(elements=(ElementChange(path=tu, cell=Cell(timestamp=6, value=7)),))}),
        _event(schema, 3, {"pk": 1, "ck": 2}, {"v": Cell(timestamp=7, value="b")}),
    ]
    batch = _batch(events, "same")
    sink = await harness.make_sink()
    view = f"`{harness.database}`.`ks_{schema.table}`"
    try:
        await sink.write(batch)
        first = await sink.transport.select(f"SELECT * FROM {view} ORDER BY pk, ck")
        await sink.write(batch)
        second = await sink.transport.select(f"SELECT * FROM {view} ORDER BY pk, ck")
        offsets = await sink.committed_positions()
    finally:
        await sink.close()
    assert first == second
    assert len(tsv_split(first)) == 2
    assert offsets == {"n1": events[-1].position}


async def test_schema_evolution_adds_columns_before_their_data(harness: ClickHouseHarness) -> None:
    schema = _schema("evo", {"v": "text"}, static={"s": "int"})
    newer = TableSchema(
        keyspace=schema.keyspace,
        table=schema.table,
        id=schema.id,
        columns=(
            *schema.columns,
            ColumnSchema(name="added", type="double", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="tags", type="set<text>", kind=ColumnKind.REGULAR, position=-1),
        ),
    )
    old_event = _event(schema, 1, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=5, value="old")})
    new_event = _event(
        newer,
        2,
        {"pk": 1, "ck": 2},
        {"added": Cell(timestamp=6, value=2.5), "tags": ComplexChange(elements=(ElementChange(path="t", cell=Cell(timestamp=6)),))},
    )
    sink = await harness.make_sink()
    try:
        await sink.write(_batch([old_event], "b1"))
        await sink.write(_batch([new_event], "b2"))
    finally:
        await sink.close()
    # A restarted sink (no memory of the evolution) reads with the newer schema.
    state = await harness.read_state(newer, 1_800_000_000)
    assert state.rows[(1, 1)] == {"pk": 1, "ck": 1, "v": "old", "added": None, "tags": None}
    assert state.rows[(1, 2)] == {"pk": 1, "ck": 2, "v": None, "added": 2.5, "tags": frozenset({"t"})}


async def test_unconvertible_value_is_rejected_and_the_rest_applied(harness: ClickHouseHarness) -> None:
    schema = _schema("dlq", {"n": "int", "v": "text"})
    good = _event(schema, 1, {"pk": 1, "ck": 1}, {"n": Cell(timestamp=5, value=1)})
    bad = _event(schema, 2, {"pk": 1, "ck": 2}, {"n": Cell(timestamp=5, value=2**40)})
    also_bad = _event(schema, 3, {"pk": 1, "ck": 3}, {"v": Cell(timestamp=5, value=12)})
    sink = await harness.make_sink()
    try:
        result = await sink.write(_batch([good, bad, also_bad]))
        committed = await sink.committed_positions()
    finally:
        await sink.close()
    assert sorted(r.event.position.offset for r in result.rejected) == [20, 30]
    assert "column n" in result.rejected[0].error
    state = await harness.read_state(schema, 1_800_000_000)
    assert set(state.rows) == {(1, 1)}
    assert committed == {"n1": also_bad.position}


async def test_server_side_data_error_is_bisected_to_the_event(harness: ClickHouseHarness) -> None:
    schema = _schema("bisect", {"v": "text"})
    events = [_event(schema, i + 1, {"pk": 1, "ck": i}, {"v": Cell(timestamp=5, value=f"v{i}")}) for i in range(6)]
    sink = await harness.make_sink()
    layout = await sink.ensure_table(schema)
    layout._native_row = None  # every event through the Python encoder, patched below
    original = layout.encode_latest_python

    def corrupt(event: ChangeEvent) -> tuple[list[str], list[str]]:
        rows, parts = original(event)
        if event is events[4]:
            rows = [rows[0].replace("\t", "\tnot-a-number\t", 1)]  # shifts the fields: the server refuses it
        return rows, parts

    layout.encode_latest_python = corrupt  # type: ignore[method-assign]
    try:
        result = await sink.write(_batch(events))
    finally:
        await sink.close()
    assert [r.event for r in result.rejected] == [events[4]]
    assert result.rejected[0].error_type == "ClickHouseDataError"
    state = await harness.read_state(schema, 1_800_000_000)
    assert sorted(state.rows) == [(1, i) for i in range(6) if i != 4]


async def test_history_mode_keeps_every_change_once(harness: ClickHouseHarness) -> None:
    schema = _schema("hist", {"v": "text", "d": "double", "l": "list<int>"})
    tu = uuid.UUID("e0b5c8c0-1dd2-11b2-8080-808080808080")
    events = [
        _event(schema, 1, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=5, value="a\\b"), "d": Cell(timestamp=5, value=0.1)}),
        _event(schema, 2, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=6, tombstone=True)}, insert=False),
        _event(schema, 3, {"pk": 1, "ck": 1}, {"l": ComplexChange(elements=(ElementChange(path=tu, cell=Cell(timestamp=7, value=3)),))}),
        ChangeEvent(
            position=Position(node="n1", segment_id=1, offset=40),
            schema=schema,
            kind=ChangeKind.PARTITION_DELETE,
            key={"pk": 1},
            partition_deletion=Deletion(timestamp=8, local_deletion_time=1),
        ),
    ]
    sink = await harness.make_sink(mode="history")
    table = f"`{harness.database}`.`ks_{schema.table}`"
    try:
        await sink.write(_batch(events))
        await sink.write(_batch(list(reversed(events)), "again"))
        rows = tsv_split(await sink.transport.select(f"SELECT _offset, _kind, v, d, _deleted, l FROM {table} FINAL ORDER BY _offset"))
    finally:
        await sink.close()
    assert [r[0] for r in rows] == ["10", "20", "30", "40"]
    assert rows[0][1:4] == ["row", "a\\b", "0.1"]
    assert rows[1][2] is None
    assert rows[1][4] == "['v']"
    assert rows[3][1] == "partition_delete"
    assert rows[2][5] is not None
    assert '"path"' in rows[2][5]


async def test_view_reads_current_state_without_now(harness: ClickHouseHarness) -> None:
    schema = _schema("statics", {"v": "text"}, static={"s": "text"})
    events = [
        _event(schema, 1, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=5, value="a")}),
        ChangeEvent(
            position=Position(node="n1", segment_id=1, offset=20),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": 1},
            static=True,
            cells={"s": Cell(timestamp=6, value="shared")},
        ),
        ChangeEvent(
            position=Position(node="n1", segment_id=1, offset=30),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": 2},
            static=True,
            cells={"s": Cell(timestamp=6, value="alone")},
        ),
    ]
    sink = await harness.make_sink()
    try:
        await sink.write(_batch(events))
        rows = tsv_split(await sink.transport.select(f"SELECT pk, ck, s, v FROM `{harness.database}`.`ks_{schema.table}`"))
        statics = tsv_split(await sink.transport.select(f"SELECT pk, s FROM `{harness.database}`.`ks_{schema.table}_static` ORDER BY pk"))
    finally:
        await sink.close()
    assert rows == [["1", "1", "shared", "a"]]  # statics joined onto their partition's rows, like CQL
    assert statics == [["1", "shared"], ["2", "alone"]]
    assert latest_state(events).statics == {(1,): {"s": "shared"}, (2,): {"s": "alone"}}


@pytest.mark.integration
async def test_https_with_ca_file(clickhouse_https_url: str, clickhouse_ca_file: Path, clickhouse_database: str) -> None:
    h = ClickHouseHarness(url=clickhouse_https_url, database=clickhouse_database, extra={"ssl_ca_file": str(clickhouse_ca_file)})
    schema = _schema("tls", {"v": "text"})
    sink = await h.make_sink()
    try:
        assert sink.transport.description.startswith("https://")
        assert "@" not in sink.transport.description
        await sink.write(_batch([_event(schema, 1, {"pk": 1, "ck": 1}, {"v": Cell(timestamp=5, value="over tls")})]))
        state = await sink.read_state(schema)
    finally:
        await sink.close()
    assert state.rows[(1, 1)]["v"] == "over tls"


@pytest.mark.integration
async def test_https_without_the_ca_is_refused(clickhouse_https_url: str, clickhouse_database: str) -> None:
    h = ClickHouseHarness(url=clickhouse_https_url, database=clickhouse_database)
    with pytest.raises(TransientError):
        await h.make_sink()
    for s in h.sinks:
        await s.close()


async def test_unreachable_server_is_transient() -> None:
    h = ClickHouseHarness(url="http://127.0.0.1:9/", database="nowhere", extra={"connect_timeout_s": 2.0})
    with pytest.raises(TransientError):
        await h.make_sink()
    for s in h.sinks:
        await s.close()


def test_secrets_never_print() -> None:
    h = ClickHouseHarness(url="http://user:hunter2@127.0.0.1:1/", database="d", extra={"password": Secret("hunter3")})
    text = repr(h.config())
    assert "hunter2" not in text
    assert "hunter3" not in text
