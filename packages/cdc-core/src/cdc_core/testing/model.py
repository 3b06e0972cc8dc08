"""The reference model of Cassandra's conflict resolution: what ``SELECT *`` returns after a set
of change events, whatever their order and however many duplicates.

Rules (design-notes §1): per cell the highest write timestamp wins and a tombstone wins a tie;
row, range and partition deletions shadow every cell (and row marker) whose timestamp is at or
below theirs; an expiring cell or marker is dead once its ``local_deletion_time`` <= ``now``; a
row is visible while its marker or any regular cell is live. Empty collections read as null.

Two *different live values* written with the same timestamp are outside the contract: Cassandra
breaks that tie by comparing serialized bytes, which sinks do not reproduce.

Every sink's latest-state table must read back as :func:`latest_state` says; the sink contract
suite checks exactly that.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

import attrs

from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Deletion, Liveness, RangeDeletion
from cdc_core.schema import ColumnKind, TableSchema

__all__ = ["TableState", "cell_wins", "latest_state", "liveness_wins"]


def _tie_rank(cell: Cell) -> tuple[int, int]:
    # Cassandra's Cells.resolveRegular on equal timestamps: a tombstone beats an expiring cell,
    # which beats a plain live one (CASSANDRA-14592); then the later local deletion time wins.
    kind = 2 if cell.tombstone else (1 if cell.ttl is not None else 0)
    return kind, ((cell.local_deletion_time or 0) if kind else 0)


def cell_wins(new: Cell, old: Cell | None) -> bool:
    """True when ``new`` replaces ``old``: the higher write timestamp wins; on a tie, a tombstone,
    then an expiring cell, then the later expiry (two plain live values: outside the contract)."""
    if old is None or new.timestamp > old.timestamp:
        return True
    return new.timestamp == old.timestamp and _tie_rank(new) > _tie_rank(old)


def liveness_wins(new: Liveness, old: Liveness | None) -> bool:
    """Cassandra's LivenessInfo.supersedes: higher timestamp; on a tie an expiring marker beats a
    plain one, and between two expiring ones the later expiry wins."""
    if old is None or new.timestamp != old.timestamp:
        return old is None or new.timestamp > old.timestamp
    new_expiring, old_expiring = new.ttl is not None, old.ttl is not None
    if new_expiring != old_expiring:
        return new_expiring
    return (new.local_deletion_time or 0) > (old.local_deletion_time or 0)


@attrs.frozen(kw_only=True)
class TableState:
    """Visible rows by primary-key tuple, and static values by partition-key tuple."""

    rows: dict[tuple[Any, ...], dict[str, Any]]
    statics: dict[tuple[Any, ...], dict[str, Any]]


@attrs.define
class _Complex:
    deletion: int | None = None
    elements: dict[Any, Cell] = attrs.field(factory=dict)


@attrs.define
class _Row:
    liveness: Liveness | None = None
    deletion: int | None = None
    cells: dict[str, Cell] = attrs.field(factory=dict)
    complex: dict[str, _Complex] = attrs.field(factory=dict)


@attrs.define
class _Partition:
    deletion: int | None = None
    ranges: list[RangeDeletion] = attrs.field(factory=list)
    rows: dict[tuple[Any, ...], _Row] = attrs.field(factory=dict)
    static: _Row = attrs.field(factory=_Row)


def _max(a: int | None, d: Deletion | None) -> int | None:
    if d is None:
        return a
    return d.timestamp if a is None else max(a, d.timestamp)


def _merge_row(row: _Row, event: ChangeEvent) -> None:
    if event.liveness is not None and liveness_wins(event.liveness, row.liveness):
        row.liveness = event.liveness
    row.deletion = _max(row.deletion, event.row_deletion)
    for name, change in event.cells.items():
        if isinstance(change, Cell):
            if cell_wins(change, row.cells.get(name)):
                row.cells[name] = change
        else:
            _merge_complex(row.complex.setdefault(name, _Complex()), change)


def _merge_complex(state: _Complex, change: ComplexChange) -> None:
    state.deletion = _max(state.deletion, change.deletion)
    for element in change.elements:
        if cell_wins(element.cell, state.elements.get(element.path)):
            state.elements[element.path] = element.cell


def clustering_sort_key(value: Any, type_name: str) -> Any:
    """How Cassandra orders a clustering value: timeuuids by their time first, then their low
    8 bytes compared as signed bytes (TimeUUIDType); other supported key types by their natural
    Python order."""
    if type_name == "timeuuid":
        return (value.time, bytes(b ^ 0x80 for b in value.bytes[8:]))
    return value


def _compare_key(values: tuple[Any, ...], bound: tuple[Any, ...], descending: tuple[bool, ...], types: tuple[str, ...]) -> int:
    """Compare a clustering tuple with a bound prefix, honouring DESC columns (-1, 0 or 1)."""
    for v, b, desc, t in zip(values, bound, descending, types, strict=False):
        if v == b:
            continue
        less = clustering_sort_key(v, t) < clustering_sort_key(b, t)
        if desc:
            less = not less
        return -1 if less else 1
    return 0


def _in_range(clustering: tuple[Any, ...], rd: RangeDeletion, descending: tuple[bool, ...], types: tuple[str, ...]) -> bool:
    if rd.start is not None:
        c = _compare_key(clustering, rd.start.values, descending, types)
        if c < 0 or (c == 0 and not rd.start.inclusive):
            return False
    if rd.end is not None:
        c = _compare_key(clustering, rd.end.values, descending, types)
        if c > 0 or (c == 0 and not rd.end.inclusive):
            return False
    return True


def _live(cell: Cell, shadow: int | None, now: int) -> bool:
    if cell.tombstone or (shadow is not None and cell.timestamp <= shadow):
        return False
    return not (cell.ttl is not None and cell.local_deletion_time is not None and cell.local_deletion_time <= now)


def _list_order(path: Any) -> tuple[int, bytes]:
    # List elements are ordered by their timeuuid path: time first, then the bytes.
    assert isinstance(path, uuid.UUID)
    return (path.time, path.bytes)


def _visible_complex(schema: TableSchema, name: str, state: _Complex, shadow: int | None, now: int) -> Any:
    shadow = state.deletion if shadow is None else (shadow if state.deletion is None else max(shadow, state.deletion))
    live = {p: c for p, c in state.elements.items() if _live(c, shadow, now)}
    if not live:
        return None
    kind = schema.column(name).cql_type
    if kind.name == "list":
        return tuple(live[p].value for p in sorted(live, key=_list_order))
    if kind.name == "set":
        return frozenset(live)
    if kind.name == "map":
        return {p: c.value for p, c in live.items()}
    # A non-frozen UDT: every field, unwritten ones null.
    return {f: (live[f].value if f in live else None) for f in kind.field_names}


def _render(schema: TableSchema, row: _Row, shadow: int | None, now: int, kind: ColumnKind) -> tuple[dict[str, Any], bool]:
    """The visible values of ``kind`` columns, and whether any of them is live."""
    shadow = row.deletion if shadow is None else (shadow if row.deletion is None else max(shadow, row.deletion))
    values: dict[str, Any] = {}
    any_live = False
    for col in schema.value_columns:
        if col.kind is not kind:
            continue
        value: Any = None
        if col.name in row.cells:
            cell = row.cells[col.name]
            if _live(cell, shadow, now):
                value = cell.value
        elif col.name in row.complex:
            value = _visible_complex(schema, col.name, row.complex[col.name], shadow, now)
        values[col.name] = value
        any_live = any_live or value is not None
    return values, any_live


def latest_state(events: Iterable[ChangeEvent], *, now: int | None = None) -> TableState:
    """Fold events of ONE table (any order, duplicates allowed) into what Cassandra shows."""
    now = int(time.time()) if now is None else now
    schema: TableSchema | None = None
    partitions: dict[tuple[Any, ...], _Partition] = {}
    for event in events:
        if schema is None or len(event.schema.columns) > len(schema.columns):
            schema = event.schema  # the newest schema seen (columns only grow)
        pk = tuple(event.key[c.name] for c in event.schema.partition_key)
        part = partitions.setdefault(pk, _Partition())
        if event.kind is ChangeKind.PARTITION_DELETE:
            part.deletion = _max(part.deletion, event.partition_deletion)
        elif event.kind is ChangeKind.RANGE_DELETE:
            if event.range_deletion is not None and event.range_deletion not in part.ranges:
                part.ranges.append(event.range_deletion)
        elif event.static:
            _merge_row(part.static, event)
        else:
            ck = tuple(event.key[c.name] for c in event.schema.clustering)
            _merge_row(part.rows.setdefault(ck, _Row()), event)
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    statics: dict[tuple[Any, ...], dict[str, Any]] = {}
    if schema is None:
        return TableState(rows=rows, statics=statics)
    descending = tuple(c.clustering_order.value == "desc" for c in schema.clustering)
    types = tuple(c.cql_type.name for c in schema.clustering)
    for pk, part in partitions.items():
        static_values, static_live = _render(schema, part.static, part.deletion, now, ColumnKind.STATIC)
        if static_live:
            statics[pk] = static_values
        for ck, row in part.rows.items():
            shadow = part.deletion
            for rd in part.ranges:
                if _in_range(ck, rd, descending, types):
                    shadow = rd.deletion.timestamp if shadow is None else max(shadow, rd.deletion.timestamp)
            values, any_live = _render(schema, row, shadow, now, ColumnKind.REGULAR)
            marker = row.liveness
            row_shadow = shadow if row.deletion is None else (row.deletion if shadow is None else max(shadow, row.deletion))
            marker_live = (
                marker is not None
                and (row_shadow is None or marker.timestamp > row_shadow)
                and not (marker.ttl is not None and marker.local_deletion_time is not None and marker.local_deletion_time <= now)
            )
            if not (marker_live or any_live):
                continue
            key_values = dict(zip((c.name for c in schema.primary_key), pk + ck, strict=True))
            rows[pk + ck] = {**key_values, **values}
    return TableState(rows=rows, statics=statics)
