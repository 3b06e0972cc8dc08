"""Folding a batch's events into one delta per destination row, in Python.

Last-write-wins per cell is associative and commutative, so the events of one batch that touch
the same row merge into one staging record with the same rules the SQL merge applies; the
database then sees each key once (which ``INSERT … ON CONFLICT DO UPDATE`` requires anyway).
Values are converted (and checked) here: an event with a value PostgreSQL cannot hold is
reported as rejected before anything reaches the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import orjson

from cdc_core.cqltypes import CqlType, value_to_json
from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Liveness, RangeBound
from cdc_sink_postgres.layout import ColumnLayout, TableLayout
from cdc_sink_postgres.typemap import ValueRejected, dumps, element_text, is_array_element, key_string, list_path_key, to_db, to_json

__all__ = ["CellState", "ComplexState", "RangeRecord", "RowDelta", "TableDelta", "element_entry"]

Key = tuple[Any, ...]


@attrs.define
class CellState:
    ts: int
    value: Any  # the database parameter; None for a tombstone
    exp: int | None

    def wins_over(self, old: CellState) -> bool:
        return self.ts > old.ts or (self.ts == old.ts and self.value is None and old.value is not None)


@attrs.define
class ComplexState:
    clear_ts: int | None = None
    elements: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # key → {v, t, e?, d?}

    def merge_clear(self, ts: int | None) -> None:
        if ts is not None and (self.clear_ts is None or ts > self.clear_ts):
            self.clear_ts = ts

    def merge_element(self, key: str, entry: dict[str, Any]) -> None:
        old = self.elements.get(key)
        if old is None or entry["t"] > old["t"] or (entry["t"] == old["t"] and "d" in entry and "d" not in old):
            self.elements[key] = entry

    def record(self) -> tuple[str | None, int | None]:
        live = {k: e for k, e in self.elements.items() if self.clear_ts is None or e["t"] > self.clear_ts}
        return (dumps(live) if live or self.clear_ts is not None else None), self.clear_ts


@attrs.define
class RowDelta:
    marker_ts: int | None = None
    marker_exp: int | None = None
    deleted_ts: int | None = None
    cells: dict[str, CellState] = attrs.field(factory=dict)
    complex: dict[str, ComplexState] = attrs.field(factory=dict)

    def merge_marker(self, ts: int, exp: int | None) -> None:
        if self.marker_ts is None or ts > self.marker_ts or (ts == self.marker_ts and _rank(exp) > _rank(self.marker_exp)):
            self.marker_ts, self.marker_exp = ts, exp

    def merge_deletion(self, ts: int) -> None:
        if self.deleted_ts is None or ts > self.deleted_ts:
            self.deleted_ts = ts

    def merge_cell(self, name: str, cell: CellState) -> None:
        old = self.cells.get(name)
        if old is None or cell.wins_over(old):
            self.cells[name] = cell


def _rank(exp: int | None) -> int:
    return -1 if exp is None else exp


@attrs.frozen
class RangeRecord:
    start: tuple[Any, ...]  # database values (padded with None to the clustering width)
    start_len: int
    start_incl: bool
    end: tuple[Any, ...]
    end_len: int
    end_incl: bool
    bounds: str  # canonical text of both bounds: identifies the tombstone


def element_entry(col: ColumnLayout, path: Any, cell: Cell) -> tuple[str, dict[str, Any]]:
    """The element key and stored entry {v, t, e?, d?} of one element change."""
    t = col.cql
    entry: dict[str, Any] = {"t": cell.timestamp}
    if t.name == "list":
        key = list_path_key(path)
        value = cell.value
        elem_t = t.params[0]
    elif t.name == "set":
        key = key_string(path, t.params[0])
        value = path
        elem_t = t.params[0]
    elif t.name == "map":
        key = key_string(path, t.params[0])
        value = cell.value
        elem_t = t.params[1]
    else:  # udt field
        if path not in t.field_names:
            raise ValueRejected(f"{col.name} has no field {path!r}")
        key = str(path)
        value = cell.value
        elem_t = t.params[t.field_names.index(path)]
    if cell.tombstone:
        entry["d"] = 1
        entry["v"] = None
    else:
        as_array = t.name in ("list", "set") and is_array_element(elem_t)
        entry["v"] = element_text(value, elem_t) if as_array else to_json(value, elem_t)
        if cell.ttl is not None and cell.local_deletion_time is not None:
            entry["e"] = cell.local_deletion_time
    return key, entry


def _bound(layout: TableLayout, bound: RangeBound | None) -> tuple[tuple[Any, ...], int, bool, Any]:
    width = len(layout.clustering)
    if bound is None:
        return (None,) * width, 0, True, None
    values = tuple(to_db(v, c.cql) for v, c in zip(bound.values, layout.clustering, strict=False))
    canon = [value_to_json(v, c.cql) for v, c in zip(bound.values, layout.clustering, strict=False)]
    return values + (None,) * (width - len(values)), len(values), bound.inclusive, [canon, bound.inclusive]


@attrs.define
class TableDelta:
    """Everything one batch does to one table, pre-merged."""

    layout: TableLayout
    rows: dict[Key, RowDelta] = attrs.field(factory=dict)
    statics: dict[Key, RowDelta] = attrs.field(factory=dict)
    partition_deletions: dict[Key, int] = attrs.field(factory=dict)
    range_deletions: dict[tuple[Key, str], tuple[RangeRecord, int]] = attrs.field(factory=dict)

    def add(self, event: ChangeEvent) -> None:
        """Fold ``event`` in; raises :class:`ValueRejected` (leaving the delta untouched) when
        one of its values cannot be stored."""
        layout = self.layout
        key_values = event.key
        pk_conv, ck_conv = layout.key_converters
        pk = tuple([conv(key_values[name]) for name, conv in pk_conv])
        if event.kind is ChangeKind.PARTITION_DELETE:
            if event.partition_deletion is not None:
                ts = event.partition_deletion.timestamp
                old = self.partition_deletions.get(pk)
                self.partition_deletions[pk] = ts if old is None else max(old, ts)
            return
        if event.kind is ChangeKind.RANGE_DELETE:
            rd = event.range_deletion
            if rd is None:
                return
            s_vals, s_len, s_incl, s_canon = _bound(layout, rd.start)
            e_vals, e_len, e_incl, e_canon = _bound(layout, rd.end)
            bounds = orjson.dumps([s_canon, e_canon]).decode()
            rec = RangeRecord(s_vals, s_len, s_incl, e_vals, e_len, e_incl, bounds)
            prev = self.range_deletions.get((pk, bounds))
            ts = rd.deletion.timestamp
            self.range_deletions[(pk, bounds)] = (rec, ts if prev is None else max(prev[1], ts))
            return
        # A row (or the static row): convert everything first, then merge.
        key = pk if event.static else pk + tuple([conv(key_values[name]) for name, conv in ck_conv])
        simple: list[tuple[str, CellState]] = []
        complex_: list[tuple[str, int | None, list[tuple[str, dict[str, Any]]]]] = []
        writable = layout.writable
        for name, change in event.cells.items():
            entry = writable.get(name)
            if entry is None:
                continue  # a dropped column (or one the layout does not know): not written
            col, multicell, convert = entry
            if isinstance(change, Cell):
                if multicell:
                    raise ValueRejected(f"column {name} is a non-frozen collection but the event writes a simple cell")
                value = change.value
                if change.tombstone or value is None:
                    simple.append((name, CellState(change.timestamp, None, None)))
                else:
                    exp = change.local_deletion_time if change.ttl is not None else None
                    simple.append((name, CellState(change.timestamp, convert(value), exp)))
            elif isinstance(change, ComplexChange):
                clear = change.deletion.timestamp if change.deletion is not None else None
                complex_.append((name, clear, [element_entry(col, e.path, e.cell) for e in change.elements]))
        target = self.statics if event.static else self.rows
        delta = target.get(key)
        if delta is None:
            delta = target[key] = RowDelta()
        marker: Liveness | None = event.liveness
        if marker is not None:
            delta.merge_marker(marker.timestamp, marker.local_deletion_time if marker.ttl is not None else None)
        if event.row_deletion is not None:
            delta.merge_deletion(event.row_deletion.timestamp)
        for name, state in simple:
            delta.merge_cell(name, state)
        for name, clear, entries in complex_:
            cs = delta.complex.get(name)
            if cs is None:
                cs = delta.complex[name] = ComplexState()
            cs.merge_clear(clear)
            for element_key, element in entries:
                cs.merge_element(element_key, element)


def row_record(key: Key, delta: RowDelta, cols: Sequence[ColumnLayout]) -> tuple[Any, ...]:
    """A staging record: key, marker, deletion, then per value column its storage fields."""
    out: list[Any] = [*key, delta.marker_ts, delta.marker_exp, delta.deleted_ts]
    for c in cols:
        if c.multicell:
            cs = delta.complex.get(c.name)
            out += cs.record() if cs is not None else (None, None)
        else:
            cell = delta.cells.get(c.name)
            out += (cell.value, cell.ts, cell.exp) if cell is not None else (None, None, None)
    return tuple(out)


def is_array_collection(t: CqlType) -> bool:
    return t.name in ("list", "set") and is_array_element(t.params[0])
