"""Small builders of schemas, events and batches for the TimescaleDB sink's tests."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Sequence
from typing import Any

from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Deletion, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.sinks import Batch

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_offsets = itertools.count(1)


def table(
    name: str, columns: dict[str, str], *, pk: Sequence[str] = ("pk",), ck: Sequence[str] = (), static: Sequence[str] = ()
) -> TableSchema:
    cols: list[ColumnSchema] = []
    for col, typ in columns.items():
        if col in pk:
            cols.append(ColumnSchema(name=col, type=typ, kind=ColumnKind.PARTITION_KEY, position=list(pk).index(col)))
        elif col in ck:
            cols.append(
                ColumnSchema(
                    name=col, type=typ, kind=ColumnKind.CLUSTERING, position=list(ck).index(col), clustering_order=ClusteringOrder.ASC
                )
            )
        else:
            kind = ColumnKind.STATIC if col in static else ColumnKind.REGULAR
            cols.append(ColumnSchema(name=col, type=typ, kind=kind, position=-1))
    return TableSchema(keyspace="ks", table=name, id=uuid.uuid5(uuid.NAMESPACE_DNS, name), columns=tuple(cols))


def pos(node: str = "n1") -> Position:
    return Position(node=node, segment_id=1, offset=next(_offsets) * 10, index=0)


def write(s: TableSchema, key: dict[str, Any], ts: int, *, insert: bool = True, node: str = "n1", **values: Any) -> ChangeEvent:
    cells: dict[str, Cell | ComplexChange] = {
        name: v if isinstance(v, Cell | ComplexChange) else Cell(timestamp=ts, value=v) for name, v in values.items()
    }
    return ChangeEvent(
        position=pos(node), schema=s, kind=ChangeKind.ROW, key=key, liveness=Liveness(timestamp=ts) if insert else None, cells=cells
    )


def partition_delete(s: TableSchema, key: dict[str, Any], ts: int) -> ChangeEvent:
    return ChangeEvent(
        position=pos(),
        schema=s,
        kind=ChangeKind.PARTITION_DELETE,
        key=key,
        partition_deletion=Deletion(timestamp=ts, local_deletion_time=1),
    )


def batch(events: Sequence[ChangeEvent]) -> Batch:
    positions: dict[str, Position] = {}
    for e in events:
        p = positions.get(e.position.node)
        if p is None or e.position > p:
            positions[e.position.node] = e.position
    return Batch(batch_id=uuid.uuid4().hex, events=list(events), positions=positions)


def micros(t: dt.datetime) -> int:
    return (t - EPOCH) // dt.timedelta(microseconds=1)
