"""Small builders of schemas and events for the tests."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Deletion, Liveness, RangeBound, RangeDeletion
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.sinks import Batch
from cdc_sink_postgres.layout import TableLayout
from cdc_sink_postgres.sink import PostgresSink
from cdc_sink_postgres.testing import PostgresHarness

_positions = itertools.count(1)


def schema(table: str, columns: dict[str, str], *, pk: tuple[str, ...] = ("pk",), ck: tuple[str, ...] = (), **kinds: str) -> TableSchema:
    """``columns`` name → type; ``pk``/``ck`` name the key columns; ``kinds`` marks statics."""
    cols: list[ColumnSchema] = []
    for name, typ in columns.items():
        if name in pk:
            cols.append(ColumnSchema(name=name, type=typ, kind=ColumnKind.PARTITION_KEY, position=pk.index(name)))
        elif name in ck:
            cols.append(
                ColumnSchema(name=name, type=typ, kind=ColumnKind.CLUSTERING, position=ck.index(name), clustering_order=ClusteringOrder.ASC)
            )
        else:
            kind = ColumnKind.STATIC if kinds.get(name) == "static" else ColumnKind.REGULAR
            cols.append(ColumnSchema(name=name, type=typ, kind=kind, position=-1))
    return TableSchema(keyspace="ks", table=table, id=uuid.UUID(int=hash(table) & (2**128 - 1)), columns=tuple(cols))


def pos(node: str = "n1") -> Position:
    i = next(_positions)
    return Position(node=node, segment_id=1, offset=i * 10, index=0)


def upsert(s: TableSchema, key: dict[str, Any], ts: int, *, insert: bool = True, **values: Any) -> ChangeEvent:
    cells: dict[str, Cell | ComplexChange] = {}
    for name, v in values.items():
        cells[name] = v if isinstance(v, Cell | ComplexChange) else Cell(timestamp=ts, value=v)
    return ChangeEvent(
        position=pos(),
        schema=s,
        kind=ChangeKind.ROW,
        key=key,
        liveness=Liveness(timestamp=ts) if insert else None,
        cells=cells,
    )


def partition_delete(s: TableSchema, key: dict[str, Any], ts: int) -> ChangeEvent:
    return ChangeEvent(
        position=pos(),
        schema=s,
        kind=ChangeKind.PARTITION_DELETE,
        key=key,
        partition_deletion=Deletion(timestamp=ts, local_deletion_time=1),
    )


def range_delete(s: TableSchema, key: dict[str, Any], start: RangeBound | None, end: RangeBound | None, ts: int) -> ChangeEvent:
    return ChangeEvent(
        position=pos(),
        schema=s,
        kind=ChangeKind.RANGE_DELETE,
        key=key,
        range_deletion=RangeDeletion(start=start, end=end, deletion=Deletion(timestamp=ts, local_deletion_time=1)),
    )


def batch(events: list[ChangeEvent]) -> Batch:
    positions: dict[str, Position] = {}
    for e in events:
        p = positions.get(e.position.node)
        if p is None or e.position > p:
            positions[e.position.node] = e.position
    return Batch(batch_id=uuid.uuid4().hex, events=events, positions=positions)


def collections_schema() -> TableSchema:
    """A fresh table with clustering, collections, a decimal and a static column."""
    return TableSchema(
        keyspace="ks",
        table=f"conv_{uuid.uuid4().hex[:8]}",
        id=uuid.uuid4(),
        columns=(
            ColumnSchema(name="pk", type="int", kind=ColumnKind.PARTITION_KEY, position=0),
            ColumnSchema(name="ck0", type="text", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.DESC),
            ColumnSchema(name="ck1", type="bigint", kind=ColumnKind.CLUSTERING, position=1, clustering_order=ClusteringOrder.ASC),
            ColumnSchema(name="l", type="list<int>", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="st", type="set<text>", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="m", type="map<text, int>", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="t", type="text", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="d", type="decimal", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="s0", type="int", kind=ColumnKind.STATIC, position=-1),
        ),
    )


async def started_sink(h: PostgresHarness, **overrides: Any) -> PostgresSink:
    """A started sink of ``h`` with ``overrides`` of its configuration (kept for later sinks)."""
    h.config_overrides = {**h.config_overrides, **overrides}
    sink = await h.make_sink()
    assert isinstance(sink, PostgresSink)
    return sink


def layout_of(h: PostgresHarness, s: TableSchema) -> TableLayout:
    """The layout ``h``'s sinks give table ``s``."""
    cfg = h.config()
    return TableLayout.from_schema(s, pg_schema=cfg.schema, base=cfg.destination_name(s.keyspace, s.table))


def int_range_delete(s: TableSchema, pk: int, lo: int, hi: int, ts: int) -> ChangeEvent:
    """Deletion of the rows of partition ``pk`` with ``lo`` ≤ ck ≤ ``hi`` (one int clustering column)."""
    return range_delete(s, {"pk": pk}, RangeBound(values=(lo,), inclusive=True), RangeBound(values=(hi,), inclusive=True), ts)
