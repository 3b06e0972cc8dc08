"""Hypothesis strategies: random table schemas, values and event histories.

Writes get their own timestamps (multiples of 10, so an overwrite's clear at ts-1 never meets
another write), which keeps histories inside the model's contract: no two different live values
share a timestamp. Deletions and "set to null" updates may reuse a write's timestamp, to test the
tie rules (a tombstone wins; a deletion shadows what has its own timestamp). Events come from two
nodes, each in its own position order. Duplicates are exact copies, as replicas and replays make.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import attrs
from hypothesis import strategies as st

from cdc_core.events import (
    Cell,
    ChangeEvent,
    ChangeKind,
    ComplexChange,
    Deletion,
    ElementChange,
    Liveness,
    RangeBound,
    RangeDeletion,
)
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.testing.model import clustering_sort_key

__all__ = [
    "KEY_TYPES",
    "NOW",
    "VALUE_TYPES",
    "event_histories",
    "shuffled_with_duplicates",
    "table_schemas",
    "values_of",
]

NOW = 1_800_000_000
"""The ``now`` (seconds) the generated TTLs are relative to: pass it to ``latest_state``."""

KEY_TYPES = ("int", "bigint", "text", "uuid", "timeuuid")
VALUE_TYPES = (
    "int",
    "bigint",
    "text",
    "boolean",
    "double",
    "decimal",
    "uuid",
    "timestamp",
    "date",
    "blob",
    "list<int>",
    "set<text>",
    "map<text, int>",
    "frozen<list<text>>",
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_table_counter = itertools.count(1)


def values_of(type_string: str) -> st.SearchStrategy[Any]:
    """Values of a (simple or frozen) CQL type, in the event model's Python form."""
    t = type_string.replace(" ", "")
    if t == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if t == "bigint":
        return st.integers(-(2**63), 2**63 - 1)
    if t == "text":
        return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
    if t == "boolean":
        return st.booleans()
    if t == "double":
        return st.floats(allow_nan=False, allow_infinity=False, width=64)
    if t == "decimal":
        return st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=Decimal("-1e12"), max_value=Decimal("1e12"))
    if t == "uuid":
        return st.uuids()
    if t == "timeuuid":
        # Times and clock bits drawn apart so their order and the byte order differ.
        return st.builds(_timeuuid, st.integers(0, 2**60 - 1), st.integers(0, 2**14 - 1))
    if t == "timestamp":
        return st.integers(-(10**11), 10**13).map(lambda ms: _EPOCH + dt.timedelta(milliseconds=ms))
    if t == "date":
        return st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31))
    if t == "blob":
        return st.binary(max_size=16)
    if t.startswith("frozen<list<") and t.endswith(">>"):
        return st.lists(values_of(t[len("frozen<list<") : -2]), max_size=4).map(tuple)
    raise ValueError(f"no value strategy for {type_string!r}")


@st.composite
def table_schemas(
    draw: st.DrawFn,
    *,
    key_types: tuple[str, ...] = KEY_TYPES,
    value_types: tuple[str, ...] = VALUE_TYPES,
    max_clustering: int = 2,
    allow_static: bool = True,
) -> TableSchema:
    """A random table: 1–2 partition key columns, 0–``max_clustering`` clustering columns
    (ASC or DESC), 1–5 regular columns and maybe a static column. Table names are unique."""
    n_pk = draw(st.integers(1, 2))
    n_ck = draw(st.integers(0, max_clustering))
    n_reg = draw(st.integers(1, 5))
    columns: list[ColumnSchema] = []
    for i in range(n_pk):
        columns.append(ColumnSchema(name=f"pk{i}", type=draw(st.sampled_from(key_types)), kind=ColumnKind.PARTITION_KEY, position=i))
    for i in range(n_ck):
        order = draw(st.sampled_from([ClusteringOrder.ASC, ClusteringOrder.DESC]))
        columns.append(
            ColumnSchema(
                name=f"ck{i}", type=draw(st.sampled_from(key_types)), kind=ColumnKind.CLUSTERING, position=i, clustering_order=order
            )
        )
    for i in range(n_reg):
        columns.append(ColumnSchema(name=f"c{i}", type=draw(st.sampled_from(value_types)), kind=ColumnKind.REGULAR, position=-1))
    if allow_static and n_ck and draw(st.booleans()):
        columns.append(ColumnSchema(name="s0", type=draw(st.sampled_from(("int", "text"))), kind=ColumnKind.STATIC, position=-1))
    return TableSchema(keyspace="ks", table=f"t{next(_table_counter)}", id=uuid.uuid4(), columns=tuple(columns))


def _timeuuid(time_60: int, clock_seq: int) -> uuid.UUID:
    """A version-1 UUID from drawn parts (deterministic, unlike uuid.uuid1)."""
    return uuid.UUID(
        fields=(
            time_60 & 0xFFFFFFFF,
            (time_60 >> 32) & 0xFFFF,
            ((time_60 >> 48) & 0x0FFF) | 0x1000,
            0x80 | (clock_seq >> 8),
            clock_seq & 0xFF,
            0,
        )
    )


def _clustering_cmp(schema: TableSchema) -> Callable[[tuple[Any, ...], tuple[Any, ...]], int]:
    descending = [c.clustering_order is ClusteringOrder.DESC for c in schema.clustering]
    types = [c.cql_type.name for c in schema.clustering]

    def compare(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
        for x, y, desc, t in zip(a, b, descending, types, strict=False):
            if x != y:
                kx, ky = clustering_sort_key(x, t), clustering_sort_key(y, t)
                return (1 if kx > ky else -1) * (-1 if desc else 1)
        return 0

    return compare


def _ttl_parts(draw: st.DrawFn) -> tuple[int | None, int | None]:
    if draw(st.integers(0, 5)) != 0:
        return None, None
    # Either already expired at NOW, or far in the future.
    return 3600, draw(st.sampled_from([NOW - 100, NOW + 10**6]))


def _cell(draw: st.DrawFn, type_string: str, ts: int, *, allow_tombstone: bool = True) -> Cell:
    if allow_tombstone and draw(st.integers(0, 6)) == 0:
        return Cell(timestamp=ts, tombstone=True, local_deletion_time=NOW - 1000)
    ttl, ldt = _ttl_parts(draw)
    return Cell(timestamp=ts, value=draw(values_of(type_string)), ttl=ttl, local_deletion_time=ldt)


def _complex(draw: st.DrawFn, col: ColumnSchema, ts: int, list_paths: list[uuid.UUID]) -> ComplexChange:
    kind = col.cql_type
    elem_t = str(kind.params[-1])
    overwrite = draw(st.booleans())
    deletion = Deletion(timestamp=ts - 1, local_deletion_time=NOW - 1000) if overwrite else None
    elements: list[ElementChange] = []
    for _ in range(draw(st.integers(0, 3))):
        remove = not overwrite and draw(st.integers(0, 3)) == 0
        if kind.name == "list":
            # Appends make new paths; removals and set-by-index hit existing ones.
            if (remove or draw(st.booleans())) and list_paths:
                path: Any = draw(st.sampled_from(list_paths))
            else:
                path = _timeuuid(draw(st.integers(0, 2**60 - 1)), draw(st.integers(0, 2**14 - 1)))
                list_paths.append(path)
        elif kind.name == "set":
            path = draw(values_of(str(kind.params[0])))
        else:
            path = draw(values_of(str(kind.params[0])))
        if remove:
            cell = Cell(timestamp=ts, tombstone=True, local_deletion_time=NOW - 1000)
        elif kind.name == "set":
            ttl, ldt = _ttl_parts(draw)
            cell = Cell(timestamp=ts, value=None, ttl=ttl, local_deletion_time=ldt)
        else:
            cell = _cell(draw, elem_t, ts, allow_tombstone=False)
        elements.append(ElementChange(path=path, cell=cell))
    # One cell per path in one mutation, as Cassandra writes them.
    unique: dict[Any, ElementChange] = {e.path: e for e in elements}
    return ComplexChange(deletion=deletion, elements=tuple(unique.values()))


@st.composite
def event_histories(draw: st.DrawFn, schema: TableSchema, *, max_events: int = 12, node: str = "n1") -> list[ChangeEvent]:
    """Events of one table in commitlog order (positions increasing), unique timestamps."""
    n = draw(st.integers(1, max_events))
    stamps = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    pk_pool = draw(st.lists(st.tuples(*(values_of(c.type) for c in schema.partition_key)), min_size=1, max_size=3, unique=True))
    ck_pool = draw(st.lists(st.tuples(*(values_of(c.type) for c in schema.clustering)), min_size=1, max_size=4, unique=True))
    statics = [c for c in schema.value_columns if c.kind is ColumnKind.STATIC]
    regulars = [c for c in schema.value_columns if c.kind is ColumnKind.REGULAR]
    list_paths: list[uuid.UUID] = []
    events: list[ChangeEvent] = []
    nodes = (node, f"{node}-replica")
    for i, raw_ts in enumerate(stamps):
        ts = raw_ts * 10
        # Deletions may take the timestamp of some write: ties test "tombstone/deletion wins".
        tie_ts = draw(st.sampled_from(stamps)) * 10
        pos = Position(node=draw(st.sampled_from(nodes)), segment_id=1, offset=(i + 1) * 100, index=0)
        pk = draw(st.sampled_from(pk_pool))
        key = dict(zip((c.name for c in schema.partition_key), pk, strict=True))
        choice = draw(st.integers(0, 9))
        if choice == 0:
            events.append(
                ChangeEvent(
                    position=pos,
                    schema=schema,
                    kind=ChangeKind.PARTITION_DELETE,
                    key=key,
                    partition_deletion=Deletion(timestamp=tie_ts, local_deletion_time=NOW - 1000),
                )
            )
            continue
        if choice == 1 and schema.clustering:
            # Bounds in clustering order (DESC columns reversed), as Cassandra writes them.
            a, b = sorted((draw(st.sampled_from(ck_pool)) for _ in range(2)), key=functools.cmp_to_key(_clustering_cmp(schema)))
            prefix = draw(st.integers(1, len(schema.clustering)))
            start = RangeBound(values=a[:prefix], inclusive=draw(st.booleans()))
            end = RangeBound(values=b[:prefix], inclusive=draw(st.booleans()))
            events.append(
                ChangeEvent(
                    position=pos,
                    schema=schema,
                    kind=ChangeKind.RANGE_DELETE,
                    key=key,
                    range_deletion=RangeDeletion(
                        start=start if draw(st.integers(0, 4)) else None,
                        end=end if draw(st.integers(0, 4)) else None,
                        deletion=Deletion(timestamp=tie_ts, local_deletion_time=NOW - 1000),
                    ),
                )
            )
            continue
        if choice == 2 and statics:
            cells: dict[str, Cell | ComplexChange] = {c.name: _cell(draw, c.type, ts) for c in statics}
            events.append(ChangeEvent(position=pos, schema=schema, kind=ChangeKind.ROW, key=key, static=True, cells=cells))
            continue
        ck = draw(st.sampled_from(ck_pool))
        key.update(zip((c.name for c in schema.clustering), ck, strict=True))
        if choice == 3:
            events.append(
                ChangeEvent(
                    position=pos,
                    schema=schema,
                    kind=ChangeKind.ROW,
                    key=key,
                    row_deletion=Deletion(timestamp=tie_ts, local_deletion_time=NOW - 1000),
                )
            )
            continue
        simple = [c for c in regulars if not c.cql_type.is_multicell]
        if choice == 4 and simple:
            # UPDATE … SET c = null at a write's timestamp: tombstones only, so ties stay in contract.
            nulled = draw(st.lists(st.sampled_from(simple), min_size=1, max_size=len(simple), unique_by=lambda c: c.name))
            tombstones: dict[str, Cell | ComplexChange] = {
                c.name: Cell(timestamp=tie_ts, tombstone=True, local_deletion_time=draw(st.sampled_from([NOW - 1000, NOW - 500])))
                for c in nulled
            }
            events.append(ChangeEvent(position=pos, schema=schema, kind=ChangeKind.ROW, key=key, cells=tombstones))
            continue
        insert = draw(st.booleans())
        written = draw(st.lists(st.sampled_from(regulars), min_size=0 if insert else 1, max_size=len(regulars), unique_by=lambda c: c.name))
        cells = {}
        for col in written:
            cells[col.name] = _complex(draw, col, ts, list_paths) if col.cql_type.is_multicell else _cell(draw, col.type, ts)
        liveness = None
        if insert:
            ttl, ldt = _ttl_parts(draw)
            liveness = Liveness(timestamp=ts, ttl=ttl, local_deletion_time=ldt)
        events.append(ChangeEvent(position=pos, schema=schema, kind=ChangeKind.ROW, key=key, liveness=liveness, cells=cells))
    return events


@st.composite
def shuffled_with_duplicates(draw: st.DrawFn, events: list[ChangeEvent]) -> list[ChangeEvent]:
    """A permutation of ``events`` with some of them repeated (as replicas and replays do)."""
    extra = draw(st.lists(st.sampled_from(events), max_size=len(events))) if events else []
    return draw(st.permutations(events + extra))


def with_position(event: ChangeEvent, position: Position) -> ChangeEvent:
    return attrs.evolve(event, position=position)
