"""The precompiled encoders: field counts match the input tables, order keys match order_key."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from cdc_core.cqltypes import CqlType
from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Deletion, ElementChange, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_sink_clickhouse.layout import TableLayout
from cdc_sink_clickhouse.mapping import Features, ValueRejected, invert, order_key, order_key_hex_function


def _layout(ck_order: ClusteringOrder = ClusteringOrder.ASC) -> TableLayout:
    cols = [
        ColumnSchema(name="pk", type="bigint", kind=ColumnKind.PARTITION_KEY, position=0),
        ColumnSchema(name="ck", type="int", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ck_order),
        ColumnSchema(name="v", type="text", kind=ColumnKind.REGULAR, position=-1),
        ColumnSchema(name="d", type="double", kind=ColumnKind.REGULAR, position=-1),
        ColumnSchema(name="l", type="list<int>", kind=ColumnKind.REGULAR, position=-1),
        ColumnSchema(name="s", type="int", kind=ColumnKind.STATIC, position=-1),
    ]
    schema = TableSchema(keyspace="ks", table="t", id=uuid.uuid4(), columns=tuple(cols))
    return TableLayout(schema, Features.from_version("18.16.1"), "db", "ks_t", "latest")


def _event(layout: TableLayout, **kw: Any) -> ChangeEvent:
    base: dict[str, Any] = {"position": Position(node="n", segment_id=1, offset=1), "schema": layout.schema, "kind": ChangeKind.ROW}
    base["key"] = {"pk": 1, "ck": -3}
    base.update(kw)
    return ChangeEvent(**base)


@pytest.mark.parametrize("order", [ClusteringOrder.ASC, ClusteringOrder.DESC])
def test_every_line_has_as_many_fields_as_its_input_table(order: ClusteringOrder) -> None:
    layout = _layout(order)
    tu = uuid.UUID("e0b5c8c0-1dd2-11b2-8080-808080808080")
    events = [
        _event(layout, liveness=Liveness(timestamp=5), cells={"v": Cell(timestamp=5, value="a\tb"), "d": Cell(timestamp=5, value=0.5)}),
        _event(layout, cells={"v": Cell(timestamp=6, tombstone=True)}),
        _event(layout, row_deletion=Deletion(timestamp=7, local_deletion_time=1)),
        _event(layout, cells={"l": ComplexChange(elements=(ElementChange(path=tu, cell=Cell(timestamp=8, value=1)),))}),
        _event(layout, key={"pk": 1}, static=True, cells={"s": Cell(timestamp=9, value=3, ttl=10, local_deletion_time=99)}),
        _event(layout, key={"pk": 1}, kind=ChangeKind.PARTITION_DELETE, partition_deletion=Deletion(timestamp=10, local_deletion_time=1)),
    ]
    widths = (len(layout.rows_wire()), len(layout.parts_wire()))
    for event in events:
        rows, parts = layout.encode_latest(event)
        assert rows or parts
        assert all(len(line.split("\t")) == widths[0] for line in rows)
        assert all(len(line.split("\t")) == widths[1] for line in parts)


def test_cell_version_is_ts_times_four_plus_rank() -> None:
    # rank: 0 plain value < 1 expiring value < 2 tombstone (Cassandra's order on equal timestamps)
    layout = _layout()
    cells = {"v": Cell(timestamp=21, value="x"), "d": Cell(timestamp=22, tombstone=True)}
    rows, _ = layout.encode_latest(_event(layout, cells=cells))
    names = [n for n, _ in layout.rows_wire()]
    fields = dict(zip(names, rows[0].split("\t"), strict=True))
    assert (fields["_i_v"], fields["_i_v__w"], fields["_i_v__x"]) == ("x", "84", str(2**63 - 1))
    assert fields["_i_d__w"] == "90"
    assert fields["_i_l__d"] == str(-(2**63))
    expiring = Cell(timestamp=-3, value="y", ttl=5, local_deletion_time=1234)
    rows, _ = layout.encode_latest(_event(layout, liveness=Liveness(timestamp=7, ttl=5, local_deletion_time=99), cells={"v": expiring}))
    fields = dict(zip(names, rows[0].split("\t"), strict=True))
    assert (fields["_i_v__w"], fields["_i_v__x"]) == ("-11", "1234")
    assert (fields["i__lv"], fields["i__lx"]) == ("7", "99")
    rows, _ = layout.encode_latest(_event(layout, liveness=Liveness(timestamp=7)))
    fields = dict(zip(names, rows[0].split("\t"), strict=True))
    assert (fields["i__lv"], fields["i__lx"]) == ("7", str(-(2**63)))  # a plain marker ranks below any expiring one


@pytest.mark.parametrize("ts", [2**61, -(2**61), 2**62, -(2**62), 2**63 - 1])
def test_write_timestamp_outside_the_version_range_is_rejected(ts: int) -> None:
    layout = _layout()
    with pytest.raises(ValueRejected, match="outside"):
        layout.encode_latest(_event(layout, cells={"v": Cell(timestamp=ts, value="x")}))


VALUES: dict[str, list[Any]] = {
    "int": [0, -1, 2**31 - 1, -(2**31)],
    "bigint": [2**63 - 1, -(2**63), 5],
    "smallint": [3, -3],
    "text": ["a", "", "\x00b", "zürich"],
    "double": [0.5, -1e300, 0.0],
    "decimal": [Decimal("1.50"), Decimal("-3")],
    "uuid": [uuid.UUID("12345678-1234-5678-1234-567812345678")],
    "blob": [b"\x00\xff", b""],
}


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("type_name", sorted(VALUES))
def test_order_key_hex_matches_order_key(type_name: str, descending: bool) -> None:
    typ = CqlType(type_name)
    fn = order_key_hex_function(typ, descending)
    for value in [*VALUES[type_name], None]:
        key = order_key(value, typ)
        assert fn(value) == (invert(key) if descending else key).hex()
