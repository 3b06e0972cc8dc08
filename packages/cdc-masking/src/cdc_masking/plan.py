"""Rules compiled per table into a plan: which columns, which leaves, which function, which new type.

A :class:`TablePlan` is built once per :class:`~cdc_core.schema.TableSchema` and cached by the
transform, so masking an event is a few dict lookups and the strategy calls themselves.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from frozendict import frozendict

from cdc_core.cqltypes import CqlType
from cdc_core.errors import ConfigError
from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, ElementChange, Liveness, RangeBound, RangeDeletion
from cdc_core.fastobj import new_cell, new_event, slot_setters
from cdc_core.schema import ColumnKind, TableSchema
from cdc_masking.config import MaskingRule
from cdc_masking.strategies import Masker, memoised, native_module

__all__ = ["ColumnPlan", "CompiledRule", "TablePlan", "addressable_names", "build_plan", "compile_pattern"]

ValueFn = Callable[[Any], Any]
ManyFn = Callable[[list[Any]], list[Any]]
_APPLY_TO = ("both", "keys", "values")


def compile_pattern(pattern: str, *, case_sensitive: bool, what: str) -> Callable[[str], bool]:
    """A matcher for a glob (fnmatch) or ``re:<regex>`` pattern; ``ConfigError`` if it is malformed."""
    if not pattern:
        raise ConfigError(f"{what}: empty pattern")
    flags = 0 if case_sensitive else re.IGNORECASE
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:], flags)
        except re.error as exc:
            raise ConfigError(f"{what}: bad regular expression {pattern[3:]!r}: {exc}") from None
        return lambda name: regex.fullmatch(name) is not None
    depth = 0
    for char in pattern:  # fnmatch silently takes an unclosed '[' literally: almost always a typo
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        raise ConfigError(f"{what}: bad glob {pattern!r}: unclosed '['")
    if pattern == "*":
        return lambda _name: True
    if not any(c in pattern for c in "*?["):
        literal = pattern if case_sensitive else pattern.lower()
        if case_sensitive:
            return lambda name: name == literal
        return lambda name: name.lower() == literal
    regex = re.compile(fnmatch.translate(pattern), flags)
    return lambda name: regex.match(name) is not None


@attrs.frozen(kw_only=True)
class CompiledRule:
    index: int
    rule: MaskingRule
    name: str
    strategy: str
    masker: Masker
    keyspace: Callable[[str], bool]
    table: Callable[[str], bool]
    column: Callable[[str], bool]


def _none(_value: Any) -> None:
    return None


@attrs.frozen(kw_only=True)
class _Node:
    """How to mask values of one type position. ``fn`` None: nothing under it is masked."""

    fn: ValueFn | None
    typ: CqlType
    many: ManyFn | None = None  # a leaf's fn over a list of values (one call per column per batch), sharing fn's memo
    batched: bool = False  # many is the strategy's own list form (Masker.batch), not a loop over fn
    rules: frozenset[int] = frozenset()
    nulls: bool = False
    injective: bool = True
    order_preserving: bool = False  # a leaf whose masked values sort like the originals
    elem: _Node | None = None  # list / set / vector elements
    key: _Node | None = None  # map keys
    value: _Node | None = None  # map values
    fields: Mapping[str, _Node] = attrs.field(factory=dict)  # udt fields with something to mask


def _unmasked(typ: CqlType) -> _Node:
    return _Node(fn=None, typ=typ)


def _seq_fn(efn: ValueFn) -> ValueFn:
    return lambda v: tuple([efn(x) for x in v])


def _map_fn(kfn: ValueFn | None, vfn: ValueFn | None) -> ValueFn:
    if kfn is not None and vfn is not None:
        return lambda v: frozendict({kfn(k): vfn(x) for k, x in v.items()})
    if kfn is not None:
        return lambda v: frozendict({kfn(k): x for k, x in v.items()})
    assert vfn is not None
    return lambda v: frozendict({k: vfn(x) for k, x in v.items()})


def _udt_fn(fns: Mapping[str, ValueFn]) -> ValueFn:
    def mask(v: Any) -> Any:
        return frozendict({f: (fns[f](x) if x is not None and f in fns else x) for f, x in v.items()})

    return mask


def _tuple_fn(fns: Sequence[ValueFn | None]) -> ValueFn:
    def mask(v: Any) -> Any:
        return tuple(f(x) if f is not None and x is not None else x for f, x in zip(fns, v, strict=False))

    return mask


class _Builder:
    def __init__(self, rules: Sequence[CompiledRule], memo_size: int) -> None:
        self.rules = rules
        self.memo_size = memo_size

    def resolve(self, path: str) -> CompiledRule | None:
        for rule in self.rules:
            if rule.column(path):
                return rule
        return None

    def whole(self, typ: CqlType, rule: CompiledRule) -> _Node:
        """Every leaf under ``typ`` masked by ``rule``."""
        m = rule.masker
        used = frozenset({rule.index})
        if m.nulls:
            return _Node(fn=_none, typ=typ, rules=used, nulls=True, injective=False)
        name = typ.name
        if name in ("list", "set", "vector"):
            e = self.whole(typ.params[0], rule)
            assert e.fn is not None
            return _Node(fn=_seq_fn(e.fn), typ=attrs.evolve(typ, params=(e.typ,)), rules=used, injective=e.injective, elem=e)
        if name == "map":
            k = self.whole(typ.params[0], rule) if rule.rule.apply_to in ("both", "keys") else _unmasked(typ.params[0])
            v = self.whole(typ.params[1], rule) if rule.rule.apply_to in ("both", "values") else _unmasked(typ.params[1])
            return _Node(
                fn=_map_fn(k.fn, v.fn),
                typ=attrs.evolve(typ, params=(k.typ, v.typ)),
                rules=used,
                injective=k.injective and v.injective,
                key=k,
                value=v,
            )
        if name == "tuple":
            items = [self.whole(t, rule) for t in typ.params]
            return _Node(
                fn=_tuple_fn([i.fn for i in items]),
                typ=attrs.evolve(typ, params=tuple(i.typ for i in items)),
                rules=used,
                injective=all(i.injective for i in items),
            )
        if name == "udt":
            fields = {f: self.whole(t, rule) for f, t in zip(typ.field_names, typ.params, strict=True)}
            return _Node(
                fn=_udt_fn({f: n.fn for f, n in fields.items() if n.fn is not None}),
                typ=attrs.evolve(typ, params=tuple(n.typ for n in fields.values())),
                rules=used,
                injective=all(n.injective for n in fields.values()),
                fields=fields,
            )
        fn, many = memoised(m, self.memo_size)
        return _Node(
            fn=fn,
            many=many,
            batched=m.batch is not None,
            typ=m.result_type(typ),
            rules=used,
            injective=m.injective and m.deterministic,
            order_preserving=m.order_preserving and m.deterministic,
        )

    def build(self, typ: CqlType, path: str, rule: CompiledRule | None) -> _Node:
        """The node for ``typ`` at ``path``: ``rule`` masks it whole; else field rules (``path.field``) apply below."""
        if rule is not None:
            return self.whole(typ, rule)
        name = typ.name
        if name == "udt":
            fields: dict[str, _Node] = {}
            new_params = []
            for f, t in zip(typ.field_names, typ.params, strict=True):
                sub = f"{path}.{f}"
                node = self.build(t, sub, self.resolve(sub))
                new_params.append(node.typ)
                if node.fn is not None:
                    fields[f] = node
            if not fields:
                return _unmasked(typ)
            return _Node(
                fn=_udt_fn({f: n.fn for f, n in fields.items() if n.fn is not None}),
                typ=attrs.evolve(typ, params=tuple(new_params)),
                rules=frozenset().union(*(n.rules for n in fields.values())),
                fields=fields,
            )
        if name in ("list", "set", "vector"):
            e = self.build(typ.params[0], path, None)
            if e.fn is None:
                return _unmasked(typ)
            return _Node(fn=_seq_fn(e.fn), typ=attrs.evolve(typ, params=(e.typ,)), rules=e.rules, injective=e.injective, elem=e)
        if name == "map":
            k = self.build(typ.params[0], path, None)
            v = self.build(typ.params[1], path, None)
            if k.fn is None and v.fn is None:
                return _unmasked(typ)
            return _Node(
                fn=_map_fn(k.fn, v.fn),
                typ=attrs.evolve(typ, params=(k.typ, v.typ)),
                rules=k.rules | v.rules,
                injective=k.injective and v.injective,
                key=k,
                value=v,
            )
        if name == "tuple":
            items = [self.build(t, path, None) for t in typ.params]
            if all(i.fn is None for i in items):
                return _unmasked(typ)
            return _Node(
                fn=_tuple_fn([i.fn for i in items]),
                typ=attrs.evolve(typ, params=tuple(i.typ for i in items)),
                rules=frozenset().union(*(i.rules for i in items)),
                injective=all(i.injective for i in items),
            )
        return _unmasked(typ)


_EVENT_FIELDS = ("position", "schema", "kind", "key", "static", "liveness", "row_deletion", "partition_deletion", "range_deletion", "cells")
_CELL_FIELDS = ("timestamp", "value", "tombstone", "ttl", "local_deletion_time")
# The hot path builds events and cells with the core's slot constructors (cdc_core.fastobj: they
# refuse at import a class with validators or other fields); should the core ever add a field,
# fall back to attrs.evolve so nothing is silently dropped.
_NO_CELLS: Mapping[str, Cell | ComplexChange] = frozendict()
_DIRECT = tuple(a.name for a in attrs.fields(ChangeEvent)) == _EVENT_FIELDS and tuple(a.name for a in attrs.fields(Cell)) == _CELL_FIELDS


_VALUE_SLOT = _CELL_FIELDS.index("value")
_SCHEMA_SLOT = _EVENT_FIELDS.index("schema")
_CELLS_SLOT = _EVENT_FIELDS.index("cells")
_builders: dict[int, tuple[Any, Any, Any, Any]] = {}


def _native_builders() -> tuple[Any, Any, Any, Any] | None:
    """The accelerator's ``(SlotClass(Cell), SlotClass(ChangeEvent), dicts_with, live_cells)``, or None without it.

    ``SlotClass`` copies an object slot by slot; ``cdc_core.fastobj.slot_setters`` is the core's own
    check (raising otherwise) that filling every slot is the same as calling ``__init__``.
    """
    native = native_module()
    if native is None or not _DIRECT:
        return None
    built = _builders.get(id(native))
    if built is None:
        slot_setters(Cell, _CELL_FIELDS)
        slot_setters(ChangeEvent, _EVENT_FIELDS)
        built = _builders[id(native)] = (
            native.SlotClass(Cell, [Cell.__dict__[name] for name in _CELL_FIELDS]),
            native.SlotClass(ChangeEvent, [ChangeEvent.__dict__[name] for name in _EVENT_FIELDS]),
            native.dicts_with,
            native.live_cells,
        )
    return built


def _with_value(cell: Cell, value: Any) -> Cell:
    if value is None:  # a strategy removed the value: written as null
        return attrs.evolve(cell, value=None, tombstone=True, ttl=None)
    if _DIRECT:
        return new_cell(cell.timestamp, value, False, cell.ttl, cell.local_deletion_time)
    return attrs.evolve(cell, value=value)


@attrs.frozen(kw_only=True)
class ColumnPlan:
    """One masked column of a table."""

    name: str
    index: int  # into TablePlan.counts
    node: _Node
    multicell: bool
    rules: tuple[CompiledRule, ...]
    can_null: bool = False  # some leaf of it is masked by a nulling strategy (null)


class TablePlan:
    """The compiled masking of one table (one schema version)."""

    def __init__(self, source: TableSchema, schema: TableSchema, columns: Sequence[ColumnPlan], warnings: Sequence[str]) -> None:
        self.source = source  # kept so the id()-keyed cache can never see a recycled id
        self.schema = schema  # the masked events' schema (masked columns retyped)
        self.columns = tuple(columns)
        self.warnings = tuple(warnings)
        self.counts = [0] * len(self.columns)
        self.empty = not self.columns
        by_name = {c.name: c for c in self.columns}
        self._key_cols = [(c.name, by_name[c.name]) for c in source.primary_key if c.name in by_name]
        self._bound_fns: list[tuple[int, ColumnPlan] | None] = [
            (by_name[c.name].index, by_name[c.name]) if c.name in by_name else None for c in source.clustering
        ]
        self._has_bounds = any(b is not None for b in self._bound_fns)
        # clustering positions whose masked values do not sort like the originals: a range over them
        # says nothing about the masked rows (hmac(3)..hmac(6) is an arbitrary slice of hex strings)
        self._unordered = tuple(b is not None and not b[1].node.order_preserving for b in self._bound_fns)
        self.unordered_columns = tuple(c.name for c, u in zip(source.clustering, self._unordered, strict=True) if u)
        self.dropped_ranges = 0  # range deletions dropped since the last batch flush
        self._nulling = [(c.name, c) for c in self.columns if c.can_null]
        keys = {c.name for c in source.primary_key}
        self._simple_cols = [(c.name, c.index, c.node.fn) for c in self.columns if c.name not in keys and not c.multicell]
        # simple columns of scalars are masked column by column across a batch (one call per column:
        # the native accelerator hashes the whole list); frozen collections/UDTs stay per value
        self._batch_cols = [
            (c.name, c.index, c.node.many) for c in self.columns if c.name not in keys and not c.multicell and c.node.many is not None
        ]
        batched = {name for name, _, _ in self._batch_cols}
        self._value_cols = [col for col in self._simple_cols if col[0] not in batched]
        self._complex_cols = [(c.name, c) for c in self.columns if c.name not in keys and c.multicell]
        # nothing but simple scalar columns to mask: mask_batch rebuilds events without the per-event path
        self._cells_only = bool(self._batch_cols) and not (
            self._key_cols or self._has_bounds or self._nulling or self._value_cols or self._complex_cols
        )
        self._batch_names = [name for name, _, _ in self._batch_cols]
        self._native = _native_builders() if self._cells_only else None  # rebuilds whole batches natively
        # column by column only pays with a list form of a strategy or the native rebuild: a Python
        # loop per column costs more than masking event by event (callgrind: +13% instructions)
        self._column_wise = self._native is not None or any(c.node.batched for c in self.columns if c.name in batched)

    def mask_batch(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent | None]:
        """``[self.mask_event(e) for e in events]``, column by column: the live values of each simple scalar
        column are gathered across the events and masked in one call (``_Node.many``), then the events rebuilt."""
        if not self._column_wise:
            return [self.mask_event(event) for event in events]
        if self._native is not None and events:
            done = self._mask_batch_native(events if type(events) is list else list(events))
            if done is not None:
                return done
        counts = self.counts
        n = len(events)
        # range deletions keep the per-event path (mask_event may drop them before any cell is counted)
        all_cells = [event.cells if event.range_deletion is None else _NO_CELLS for event in events]
        regular = self._cells_only
        columns: list[list[Cell | None]] = []
        new_cells: list[dict[str, Cell | ComplexChange] | None] = [None] * n
        for name, index, many in self._batch_cols:
            olds = [cells.get(name) for cells in all_cells]
            # live plain cells only; absent cells, tombstones and other shapes are left to the per-event path
            live = [i for i, cell in enumerate(olds) if type(cell) is Cell and cell.value is not None and not cell.tombstone]
            if regular and len(live) != n - olds.count(None) and any(c is not None and type(c) is not Cell for c in olds):
                regular = False  # a non-Cell in a simple column (never from the decoder): the general path decides
            news: list[Cell | None] = [None] * n
            if live:
                assert many is not None
                masked_values = many([olds[i].value for i in live])  # type: ignore[union-attr]
                counts[index] += len(live)
                for i, masked in zip(live, masked_values, strict=True):
                    cell = olds[i]
                    if masked is not None and _DIRECT:
                        new = new_cell(cell.timestamp, masked, False, cell.ttl, cell.local_deletion_time)  # type: ignore[union-attr]
                    else:
                        new = _with_value(cell, masked)  # type: ignore[arg-type]
                    news[i] = new
                    if regular:
                        changed = new_cells[i]
                        if changed is None:
                            changed = new_cells[i] = dict(all_cells[i])
                        changed[name] = new
            columns.append(news)
        if regular and _DIRECT:
            # only simple scalar columns are masked (no keys, bounds, collections, nulling): the new
            # cells are in place, what remains is the event itself
            schema = self.schema
            return [
                new_event(
                    e.position,
                    schema,
                    e.kind,
                    e.key,
                    e.static,
                    e.liveness,
                    e.row_deletion,
                    e.partition_deletion,
                    e.range_deletion,
                    e.cells if c is None else c,
                )
                for e, c in zip(events, new_cells, strict=True)
            ]
        return [self.mask_event(event, row) for event, row in zip(events, zip(*columns, strict=True), strict=True)]

    def _mask_batch_native(self, events: list[ChangeEvent]) -> list[ChangeEvent | None] | None:
        """``mask_batch`` of a plan that masks only simple scalar columns, with cells, cell dicts and events
        rebuilt by the accelerator; None (nothing counted) for a batch it does not handle exactly."""
        cells_cls, events_cls, dicts_with, live_cells = self._native  # type: ignore[misc]
        all_cells = [event.cells for event in events]
        gathered = []
        for name, index, many in self._batch_cols:
            found = live_cells(all_cells, name, Cell)  # per event: the live Cell (else None), and their values
            if found is None:
                return None  # a non-Cell in a simple column (never from the decoder): the general path decides
            live, values = found
            gathered.append((index, many, live, values))
        columns = []
        for _index, many, live, values in gathered:
            masked = many(values) if values else []
            if None in masked:  # a strategy removed a value: a tombstone, built by the general path
                return None
            columns.append(cells_cls.evolve_many(live, {}, {_VALUE_SLOT: masked}))
        counts = self.counts
        for index, _many, _live, values in gathered:
            counts[index] += len(values)
        cells = dicts_with(all_cells, self._batch_names, columns)
        return events_cls.evolve_many(events, {_SCHEMA_SLOT: self.schema}, {_CELLS_SLOT: cells})  # type: ignore[no-any-return]

    def mask_event(self, event: ChangeEvent, row: tuple[Cell | None, ...] | None = None) -> ChangeEvent | None:
        """The masked event, or None for a range deletion that cannot be masked faithfully (counted in ``dropped_ranges``).

        ``row`` (from ``mask_batch``) holds the already masked cells of ``_batch_cols`` (None: not masked there).
        """
        counts = self.counts
        key = event.key
        if self._key_cols:
            new_key: dict[str, Any] | None = None
            for name, col in self._key_cols:
                value = key.get(name)
                if value is not None:
                    if new_key is None:
                        new_key = dict(key)
                    assert col.node.fn is not None
                    new_key[name] = col.node.fn(value)
                    counts[col.index] += 1
            if new_key is not None:
                key = new_key
        range_deletion = event.range_deletion
        if range_deletion is not None and self._has_bounds:
            if not self._exact_range(range_deletion):
                self.dropped_ranges += 1
                return None
            range_deletion = RangeDeletion(
                start=self._mask_bound(range_deletion.start),
                end=self._mask_bound(range_deletion.end),
                deletion=range_deletion.deletion,
            )
        cells = event.cells
        if cells:
            new_cells: dict[str, Cell | ComplexChange] | None = None
            simple_cols = self._simple_cols
            if row is not None:
                simple_cols = self._value_cols
                for (name, index, _many), done in zip(self._batch_cols, row, strict=True):
                    if done is None:
                        old = cells.get(name)
                        if old is None or type(old) is Cell:  # absent, a tombstone or a null value: unchanged
                            continue
                        done = self._mask_change(self.columns[index], old)  # type: ignore[assignment]
                    if new_cells is None:
                        new_cells = dict(cells)
                    new_cells[name] = done  # type: ignore[assignment]
            for name, index, fn in simple_cols:
                cell = cells.get(name)
                if cell is None:
                    continue
                value = cell.value  # type: ignore[union-attr]
                if value is None or cell.tombstone or type(cell) is not Cell:  # type: ignore[union-attr]
                    if type(cell) is Cell:
                        continue
                    masked_change = self._mask_change(self.columns[index], cell)
                else:
                    counts[index] += 1
                    masked = fn(value)  # type: ignore[misc]
                    if masked is not None and _DIRECT:
                        masked_change = new_cell(cell.timestamp, masked, False, cell.ttl, cell.local_deletion_time)
                    else:
                        masked_change = _with_value(cell, masked)
                if new_cells is None:
                    new_cells = dict(cells)
                new_cells[name] = masked_change
            for name, col in self._complex_cols:
                change = cells.get(name)
                if change is None:
                    continue
                masked_change = self._mask_change(col, change)
                if masked_change is not change:
                    if new_cells is None:
                        new_cells = dict(cells)
                    new_cells[name] = masked_change
            if new_cells is not None:
                cells = new_cells
        liveness = event.liveness
        if self._nulling and liveness is None and cells is not event.cells and not event.static and event.kind is ChangeKind.ROW:
            liveness = self._nulled_liveness(event.cells, cells)
        if _DIRECT:
            return new_event(
                event.position,
                self.schema,
                event.kind,
                key,
                event.static,
                liveness,
                event.row_deletion,
                event.partition_deletion,
                range_deletion,
                cells,
            )
        return attrs.evolve(event, schema=self.schema, key=key, cells=cells, range_deletion=range_deletion, liveness=liveness)

    def _exact_range(self, rd: RangeDeletion) -> bool:
        """Whether masking the bounds of ``rd`` selects exactly the masked rows ``rd`` selects.

        Positions of the bounds' common prefix (equal in both bounds) are compared for equality only,
        which deterministic injective masking preserves; every position after it is compared for
        order, which only an order-preserving strategy preserves. So ``c1 = x`` (a point range, also
        on a clustering prefix) or ``c1 = x AND c2 > y`` with ``c2`` unmasked is exact, ``c1 > x``
        with ``c1`` masked is not. Both bounds unbounded (the whole partition's rows) is exact.
        """
        unordered = self._unordered
        start, end = rd.start, rd.end
        common = 0
        if start is not None and end is not None:
            for a, b in zip(start.values, end.values, strict=False):
                if a != b or type(a) is not type(b):
                    break
                common += 1
        for bound in (start, end):
            if bound is not None:
                for i in range(common, len(bound.values)):
                    if i < len(unordered) and unordered[i]:
                        return False
        return True

    def _nulled_liveness(self, before: Mapping[str, Cell | ComplexChange], after: Mapping[str, Cell | ComplexChange]) -> Liveness | None:
        """A row marker standing in for the live cells a nulling strategy turned into tombstones.

        In Cassandra a row written only by ``UPDATE`` (no row marker) is visible as long as one of
        its cells is live; nulling its only written cell would make it vanish downstream. The
        marker carries the cell's timestamp and TTL, so the row stays visible (with the column
        null) exactly as long as the cell would have kept it, and a later row, range or partition
        deletion still removes it. (A later ``DELETE ssn`` alone does not remove a marker as it
        removes the cell: see docs/masking.md.)
        """
        lasting: Cell | None = None  # the newest non-expiring nulled cell
        expiring: Cell | None = None  # the nulled expiring cell that lives longest
        for name, _col in self._nulling:
            old = before.get(name)
            new = after.get(name)
            if old is None or old is new:
                continue
            if isinstance(old, Cell):
                gone = [old] if not old.tombstone and (not isinstance(new, Cell) or new.tombstone) else []
            else:
                new_elements = new.elements if isinstance(new, ComplexChange) else ()
                if len(new_elements) == len(old.elements):
                    gone = [o.cell for o, n in zip(old.elements, new_elements, strict=True) if not o.cell.tombstone and n.cell.tombstone]
                else:
                    gone = [o.cell for o in old.elements if not o.cell.tombstone]
            for cell in gone:
                if cell.ttl is None:
                    if lasting is None or cell.timestamp > lasting.timestamp:
                        lasting = cell
                elif expiring is None or (cell.local_deletion_time or 0, cell.timestamp) > (
                    expiring.local_deletion_time or 0,
                    expiring.timestamp,
                ):
                    expiring = cell
        chosen = lasting if lasting is not None else expiring
        if chosen is None:
            return None
        return Liveness(timestamp=chosen.timestamp, ttl=chosen.ttl, local_deletion_time=chosen.local_deletion_time)

    def _mask_bound(self, bound: RangeBound | None) -> RangeBound | None:
        if bound is None:
            return None
        values = list(bound.values)
        for i, value in enumerate(values):
            plan = self._bound_fns[i] if i < len(self._bound_fns) else None
            if plan is not None and value is not None:
                index, col = plan
                assert col.node.fn is not None
                values[i] = col.node.fn(value)
                self.counts[index] += 1
        return RangeBound(values=tuple(values), inclusive=bound.inclusive)

    def _mask_change(self, col: ColumnPlan, change: Cell | ComplexChange) -> Cell | ComplexChange:
        node = col.node
        if isinstance(change, Cell):
            if change.tombstone or change.value is None:
                return change
            assert node.fn is not None
            self.counts[col.index] += 1
            return _with_value(change, node.fn(change.value))
        if node.nulls:
            self.counts[col.index] += len(change.elements)
            return ComplexChange(deletion=change.deletion, elements=())
        name = node.typ.name
        elements: list[ElementChange] = []
        masked = 0
        for element in change.elements:
            path, cell = element.path, element.cell
            if name == "set":
                assert node.elem is not None and node.elem.fn is not None
                path = node.elem.fn(path)
                masked += 1
            elif name == "map":
                if node.key is not None and node.key.fn is not None:
                    path = node.key.fn(path)
                    masked += 1
                if node.value is not None and node.value.fn is not None and not cell.tombstone and cell.value is not None:
                    cell = _with_value(cell, node.value.fn(cell.value))
                    masked += 1
            elif name == "list":
                if node.elem is not None and node.elem.fn is not None and not cell.tombstone and cell.value is not None:
                    cell = _with_value(cell, node.elem.fn(cell.value))
                    masked += 1
            elif name == "udt":
                field = node.fields.get(path)
                if field is not None and field.fn is not None and not cell.tombstone and cell.value is not None:
                    cell = _with_value(cell, field.fn(cell.value))
                    masked += 1
            elements.append(element if path is element.path and cell is element.cell else ElementChange(path=path, cell=cell))
        self.counts[col.index] += masked
        return ComplexChange(deletion=change.deletion, elements=tuple(elements))


def _can_null(node: _Node) -> bool:
    if node.nulls:
        return True
    children = [n for n in (node.elem, node.key, node.value) if n is not None] + list(node.fields.values())
    return any(_can_null(n) for n in children)


def build_plan(source: TableSchema, rules: Sequence[CompiledRule], memo_size: int) -> TablePlan:
    """Compile the rules that apply to ``source`` (``ConfigError`` if one cannot apply, e.g. null on a key)."""
    applicable = [r for r in rules if r.keyspace(source.keyspace) and r.table(source.table)]
    if not applicable:
        return TablePlan(source, source, (), ())
    builder = _Builder(applicable, memo_size)
    columns: list[ColumnPlan] = []
    new_columns = []
    warnings: list[str] = []
    for column in source.columns:
        typ = column.cql_type
        node = builder.build(typ, column.name, builder.resolve(column.name))
        if node.fn is None:
            new_columns.append(column)
            continue
        used = tuple(r for r in applicable if r.index in node.rules)
        is_key = column.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING)
        if is_key:
            names = ", ".join(repr(r.name) for r in used)
            if node.nulls:
                raise ConfigError(
                    f"masking rule {names} (strategy null) matches primary-key column {source.qualified_name}.{column.name}: "
                    "a key cannot be null; use hmac or tokenize"
                )
            if not node.injective:
                warnings.append(
                    f"masking rule {names} masks primary-key column {source.qualified_name}.{column.name} with a strategy that "
                    "maps different values to one output: distinct rows will collapse into one in the sinks (use hmac or tokenize)"
                )
            if column.kind is ColumnKind.CLUSTERING and not node.order_preserving:
                warnings.append(
                    f"masking rule {names} masks clustering column {source.qualified_name}.{column.name} with a strategy that "
                    "does not preserve order: range deletions over it (DELETE ... WHERE "
                    f"{column.name} > ...) cannot be masked faithfully, so they are dropped (audited, counted in "
                    "cdc_masking_dropped_range_deletions_total, logged); rows, row deletions and point ranges "
                    f"({column.name} = ...) replicate exactly"
                )
        columns.append(
            ColumnPlan(name=column.name, index=len(columns), node=node, multicell=typ.is_multicell, rules=used, can_null=_can_null(node))
        )
        new_type = str(node.typ)
        new_columns.append(column if new_type == column.type else attrs.evolve(column, type=new_type))
    unchanged = all(a is b for a, b in zip(new_columns, source.columns, strict=True))
    schema = source if unchanged else attrs.evolve(source, columns=tuple(new_columns))
    return TablePlan(source, schema, columns, warnings)


def addressable_names(schema: TableSchema) -> list[str]:
    """Every name a rule can address in ``schema``: columns and (dotted) UDT fields, also inside collections."""
    names: list[str] = []

    def walk(typ: CqlType, path: str) -> None:
        if typ.name == "udt":
            for f, t in zip(typ.field_names, typ.params, strict=True):
                names.append(f"{path}.{f}")
                walk(t, f"{path}.{f}")
        else:
            for p in typ.params:
                walk(p, path)

    for column in schema.columns:
        names.append(column.name)
        walk(column.cql_type, column.name)
    return names
