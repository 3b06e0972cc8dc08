"""INSERT bodies without a server: the chunk payload (native or Python) holds every event's lines,
and the row limit and the bisecting of a refused INSERT cut it at event boundaries."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from cdc_core.events import Cell, ChangeEvent, ChangeKind, Deletion, Liveness
from cdc_core.factories import ComponentContext
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.secrets import Secret
from cdc_sink_clickhouse.config import ClickHouseSinkConfig
from cdc_sink_clickhouse.layout import TableLayout
from cdc_sink_clickhouse.mapping import Features
from cdc_sink_clickhouse.sink import ClickHouseSink, _Body
from cdc_sink_clickhouse.transport import ClickHouseError

FEATURES = Features.from_version("18.16.1")


def _schema() -> TableSchema:
    cols = [
        ColumnSchema(name="pk", type="int", kind=ColumnKind.PARTITION_KEY, position=0),
        ColumnSchema(name="ck", type="int", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.ASC),
        ColumnSchema(name="v", type="text", kind=ColumnKind.REGULAR, position=-1),
        ColumnSchema(name="n", type="int", kind=ColumnKind.REGULAR, position=-1),
        ColumnSchema(name="s", type="int", kind=ColumnKind.STATIC, position=-1),
    ]
    return TableSchema(keyspace="ks", table="t", id=uuid.uuid4(), columns=tuple(cols))


def _events(schema: TableSchema) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    for i in range(12):
        pos = Position(node="n1", segment_id=1, offset=i)
        base: dict[str, Any] = {"position": pos, "schema": schema, "kind": ChangeKind.ROW, "key": {"pk": i % 3, "ck": i}}
        if i % 4 == 1:  # a static row: the Python path, a __parts_in line
            base.update(key={"pk": i % 3}, static=True, cells={"s": Cell(timestamp=i, value=i)})
        elif i % 4 == 2:
            base.update(row_deletion=Deletion(timestamp=i, local_deletion_time=1))
        elif i == 7:  # out of the int range: rejected
            base.update(cells={"n": Cell(timestamp=i, value=2**40)})
        else:
            base.update(liveness=Liveness(timestamp=i), cells={"v": Cell(timestamp=i, value=f"v\t{i}"), "n": Cell(timestamp=i, value=i)})
        out.append(ChangeEvent(**base))
    return out


def _lines(body: _Body, i: int) -> bytes:
    return body.data[body.ends[i - 1] if i else 0 : body.ends[i]]


@pytest.mark.parametrize("native", [True, False])
def test_chunk_body_holds_each_events_python_lines(native: bool) -> None:
    schema = _schema()
    layout = TableLayout(schema, FEATURES, "db", "b", "latest")
    if not native:
        layout._native_row = None
    events = _events(schema)
    rows, parts, rejected = ClickHouseSink._encode_latest(layout, events)
    assert [r.event for r in rejected] == [events[7]]
    for body, which in ((rows, 0), (parts, 1)):
        expected = {id(e): layout.encode_latest_python(e)[which] for e in events if e is not events[7]}
        expected = {k: v for k, v in expected.items() if v}
        assert sorted(id(e) for e in body.events) == sorted(expected)
        for i, event in enumerate(body.events):
            assert _lines(body, i) == ("\n".join(expected[id(event)]) + "\n").encode("utf-8")
            assert body.lines[i] - (body.lines[i - 1] if i else 0) == len(expected[id(event)])
        assert body.data == b"".join(_lines(body, i) for i in range(len(body)))


class _Recorder:
    """A transport that records INSERT payloads and refuses those containing ``BAD``."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    async def insert(self, table: str, columns: list[str], payload: bytes, settings: Mapping[str, str]) -> None:
        if b"BAD" in payload:
            raise ClickHouseError("Code: 27, e.displayText() = DB::Exception: Cannot parse input", code=27, status=500)
        self.payloads.append(payload)


def _sink(transport: _Recorder, limit: int) -> ClickHouseSink:
    config = ClickHouseSinkConfig(url=Secret("http://localhost:1"), max_rows_per_insert=limit)
    sink = ClickHouseSink(config, ComponentContext(instance_name="t"), transport=transport)  # type: ignore[arg-type]
    sink._features = FEATURES
    return sink


async def test_row_limit_and_bisecting_cut_at_event_boundaries() -> None:
    schema = _schema()
    layout = TableLayout(schema, FEATURES, "db", "b", "latest")
    events = _events(schema)
    counts = [1, 2, 1, 1, 3, 1, 2, 1]
    items = [(events[i], [f"e{i}-{j}{'BAD' if i == 5 else ''}" for j in range(n)]) for i, n in enumerate(counts)]
    body = _Body.of(items[:3]) + _Body.of([]) + _Body.of(items[3:])
    assert body.data == b"".join(("\n".join(lines) + "\n").encode() for _, lines in items)
    transport = _Recorder()
    rejected = await _sink(transport, 3)._insert(layout, "__rows_in", ["x"], body, "tok")
    assert [r.event for r in rejected] == [events[5]]
    assert rejected[0].error_type == "ClickHouseDataError"
    # The limit groups events greedily (3 lines at most, an event never split); event 5 is refused alone.
    got = [[line.split("-")[0] for line in p.decode().splitlines()] for p in transport.payloads]
    assert got == [["e0", "e1", "e1"], ["e2", "e3"], ["e4", "e4", "e4"], ["e6", "e6"], ["e7"]]
    transport = _Recorder()
    assert await _sink(transport, 100)._insert(layout, "__rows_in", ["x"], _Body.of(items[:5]), "tok") == []
    assert transport.payloads == [_Body.of(items[:5]).data]
