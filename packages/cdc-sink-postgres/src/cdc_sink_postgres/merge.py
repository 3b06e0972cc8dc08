"""COPY staging and the set-based merge statements of latest-state mode.

Per table and batch: the pre-merged records are COPied (binary) into a TEMP staging table shaped
like the target, then ONE ``INSERT … SELECT … ON CONFLICT DO UPDATE`` folds them in with
last-write-wins per cell (tombstone wins ties), greatest() for row deletions and an
element-wise merge for collections; partition and range tombstones are appended, the newest
one counting. Every rule is commutative, associative and idempotent, so any order of batches,
replays and concurrent writers converge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs

from cdc_sink_postgres.ddl import MERGE_FUNCTION
from cdc_sink_postgres.idents import qualify, quote_ident
from cdc_sink_postgres.layout import DELETED_TS, MARKER_EXP, MARKER_TS, ColumnLayout, TableLayout, pg_name
from cdc_sink_postgres.native import Payload, ProjectedRecords, encode_copy_sliced, pieces

__all__ = ["RowMergeShapes", "StagedMerge", "latest_state_merges"]


def q(name: str) -> str:
    return quote_ident(name)


@attrs.frozen(kw_only=True)
class StagedMerge:
    """One staging table (TEMP) and the statement that merges it.

    The staging table is emptied by an explicit ``TRUNCATE`` in the transaction that fills it,
    before the ``COPY`` (what a transaction that committed staged stays there until the next use:
    emptying it first leaves the commit path one statement shorter, and a rolled-back transaction
    leaves the staging table as it found it, so every use must empty it first anyway). Not ``ON
    COMMIT DELETE ROWS``: PostgreSQL truncates *every* such table of the session at each commit
    that touched a temp table, and a session holds one per table and batch shape (measured: 16 of
    them made each commit ≈28 ms, against ≈6 ms truncating just the one used)."""

    staging: str  # unqualified temp table name
    columns: tuple[str, ...]
    column_types: tuple[str, ...]
    # The merge is ``{select_sql} FROM <source> s {tail_sql}``: its source is the staging table,
    # or ``unnest`` of one array parameter per staging column (inline_sql).
    select_sql: str
    tail_sql: str

    @property
    def merge_sql(self) -> str:
        return f"{self.select_sql} FROM {q(self.staging)} s {self.tail_sql}"

    @property
    def inlinable(self) -> bool:
        """Whether records can be sent inline: no array among the staging types (``unnest`` of
        several arrays flattens a multi-dimensional one)."""
        return not any(t.endswith("]") for t in self.column_types)

    def sends_inline(self, records: int, max_values: int) -> bool:
        """Whether a step of ``records`` records is sent inline: up to ``max_values`` values
        (records × staged columns; the sink's ``inline_max_values``)."""
        return self.inlinable and records * len(self.columns) <= max_values

    def inline_sql(self, first: int = 1) -> str:
        """The merge reading its records from array parameters ``$first``, ``$first+1`` … (one
        per staging column, :meth:`inline_args`) instead of the staging table."""
        arrays = ", ".join(f"${first + i}::{t}[]" for i, t in enumerate(self.column_types))
        return f"{self.select_sql} FROM unnest({arrays}) AS s({', '.join(q(c) for c in self.columns)}) {self.tail_sql}"

    def inline_args(self, records: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """``records`` as the array parameters of :meth:`inline_sql`, one per column."""
        if isinstance(records, ProjectedRecords):
            return records.columns()
        return [list(column) for column in zip(*records, strict=True)]

    async def merge_inline(self, conn: Any, records: Sequence[Sequence[Any]]) -> None:
        """Merge ``records`` sent inline (no staging table, one round trip)."""
        await conn.execute(self.inline_sql(), *self.inline_args(records))

    @property
    def create_sql(self) -> str:
        defs = ", ".join(f"{q(c)} {t}" for c, t in zip(self.columns, self.column_types, strict=True))
        return f"CREATE TEMP TABLE IF NOT EXISTS {q(self.staging)} ({defs})"

    @property
    def truncate_sql(self) -> str:
        return f"TRUNCATE {q(self.staging)}"

    async def run(self, conn: Any, records: Sequence[Sequence[Any]]) -> None:
        """COPY ``records`` in and merge them (inside the caller's transaction)."""
        if not records:
            return
        await conn.execute(f"{self.create_sql};\n{self.truncate_sql}")
        await self.copy_and_merge(conn, records)

    async def copy_and_merge(self, conn: Any, records: Sequence[Sequence[Any]], encoded: Payload | Literal[False] | None = False) -> None:
        """COPY ``records`` into the (existing, empty) staging table and merge them; the merge
        is a cached prepared statement. The caller creates the staging table and empties it
        (``truncate_sql``) first, in the same transaction."""
        if not records:
            return
        await self.copy_in(conn, records, encoded)
        await self.merge_staged(conn)

    async def merge_staged(self, conn: Any) -> None:
        """Merge what :meth:`copy_in` staged (a cached prepared statement)."""
        await conn.fetch(self.merge_sql)

    async def copy_in(self, conn: Any, records: Sequence[Sequence[Any]], encoded: Payload | Literal[False] | None = False) -> None:
        """COPY ``records`` into the staging table: the binary payload built by the optional
        accelerator (in slices, the event loop served between them) when it encodes every value,
        else asyncpg's per-value encoders (the same bytes; see cdc_sink_postgres.native).
        ``encoded``: what :func:`~cdc_sink_postgres.native.encode_copy_sliced` returned for
        ``records`` already (None: declined), False to encode them here."""
        payload = await encode_copy_sliced(records, self.column_types) if encoded is False else encoded
        if payload is not None:
            await conn.copy_to_table(self.staging, source=pieces(payload), columns=list(self.columns), format="binary")
        else:
            await conn.copy_records_to_table(self.staging, records=records, columns=list(self.columns))


def _value_columns(cols: Sequence[ColumnLayout]) -> list[tuple[str, str, ColumnLayout | None]]:
    """(storage column, staging type, owning column or None for the ts/exp fields)."""
    out: list[tuple[str, str, ColumnLayout | None]] = []
    for c in cols:
        out.append((c.ident, c.staging_sql, c))
        out.append((c.ts_col, "bigint", None))
        if not c.multicell:
            out.append((c.exp_col, "bigint", None))
    return out


def _set_clauses(cols: Sequence[ColumnLayout], pg_schema: str) -> list[str]:
    sets = [
        # Row marker: newest wins; on a tie an expiring marker beats a non-expiring one.
        *(
            f"{q(f)} = CASE WHEN excluded.{q(MARKER_TS)} IS NOT NULL AND (t.{q(MARKER_TS)} IS NULL"
            f" OR excluded.{q(MARKER_TS)} > t.{q(MARKER_TS)} OR (excluded.{q(MARKER_TS)} = t.{q(MARKER_TS)}"
            f" AND coalesce(excluded.{q(MARKER_EXP)}, -1) > coalesce(t.{q(MARKER_EXP)}, -1)))"
            f" THEN excluded.{q(f)} ELSE t.{q(f)} END"
            for f in (MARKER_TS, MARKER_EXP)
        ),
        f"{q(DELETED_TS)} = greatest(t.{q(DELETED_TS)}, excluded.{q(DELETED_TS)})",
    ]
    fn = qualify(pg_schema, MERGE_FUNCTION)
    for c in cols:
        v, ts = q(c.ident), q(c.ts_col)
        if c.multicell:
            sets.append(
                f"{v} = CASE WHEN excluded.{v} IS NULL AND excluded.{ts} IS NULL THEN t.{v}"
                f" ELSE {fn}(t.{v}, excluded.{v}, greatest(t.{ts}, excluded.{ts})) END"
            )
            sets.append(f"{ts} = greatest(t.{ts}, excluded.{ts})")
            continue
        exp = q(c.exp_col)
        wins = (
            f"excluded.{ts} IS NOT NULL AND (t.{ts} IS NULL OR excluded.{ts} > t.{ts} OR (excluded.{ts} = t.{ts} AND excluded.{v} IS NULL))"
        )
        for f in (v, ts, exp):
            sets.append(f"{f} = CASE WHEN {wins} THEN excluded.{f} ELSE t.{f} END")
    return sets


def _row_merge(
    layout: TableLayout,
    target: str,
    keys: Sequence[ColumnLayout],
    cols: Sequence[ColumnLayout],
    tag: str,
    present: Sequence[bool] | None = None,
    aliases: Sequence[tuple[int, int]] = (),
) -> StagedMerge:
    """The staged merge of ``cols``; with ``present`` (one flag per staging field, keys first)
    only the fields set in a batch are staged and only what it writes is updated: a field left
    out is NULL in ``excluded``, exactly like a staged NULL, and a column (or the row marker, or
    the row deletion) whose staged fields are all NULL would only be set to itself. ``aliases``
    (field, anchor): fields not staged but inserted from the anchor field's staging column."""
    vcols = _value_columns(cols)
    names = [c.ident for c in keys] + [MARKER_TS, MARKER_EXP, DELETED_TS] + [n for n, _, _ in vcols]
    types = [c.staging_sql for c in keys] + ["bigint"] * 3 + [t for _, t, _ in vcols]
    select = [c.stored(f"s.{q(c.ident)}") for c in keys] + [f"s.{q(n)}" for n in (MARKER_TS, MARKER_EXP, DELETED_TS)]
    select += [owner.stored(f"s.{q(n)}") if owner is not None else f"s.{q(n)}" for n, _, owner in vcols]
    staging = pg_name(f"cdc_stage_{layout.signature}_{tag}")
    staged_names, staged_types = names, types
    sets_cols = list(cols)
    marker = deletion = True
    if present is not None and (aliases or not all(present)):
        alias_of = dict(aliases)
        for f, anchor in aliases:
            select[f] = f"s.{q(names[anchor])}"  # the same value, staged once
        keep = [i for i, p in enumerate(present) if p]
        staged = [i for i in keep if i not in alias_of]
        staged_names, staged_types = [names[i] for i in staged], [types[i] for i in staged]
        names, select = [names[i] for i in keep], [select[i] for i in keep]
        shape = "".join("2" if i in alias_of else "1" if p else "0" for i, p in enumerate(present))
        staging = pg_name(f"cdc_stage_{layout.signature}_{tag}_{int(shape, 3):x}")
        written = {n for (n, _, _), p in zip(vcols, present[len(keys) + 3 :], strict=True) if p}
        sets_cols = [c for c in cols if c.ident in written or c.ts_col in written or (not c.multicell and c.exp_col in written)]
        marker = present[len(keys)] or present[len(keys) + 1]
        deletion = present[len(keys) + 2]
    key_list = ", ".join(q(c.ident) for c in keys)
    sets = _set_clauses(sets_cols, layout.pg_schema)
    if not marker:
        sets = sets[2:]
    if not deletion:
        sets = [s for s in sets if not s.startswith(f"{q(DELETED_TS)} =")]
    action = f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING"
    return StagedMerge(
        staging=staging,
        columns=tuple(staged_names),
        column_types=tuple(staged_types),
        select_sql=f"INSERT INTO {layout.q(target)} AS t ({', '.join(q(n) for n in names)}) SELECT {', '.join(select)}",
        tail_sql=f"ORDER BY {', '.join(f's.{q(c.ident)}' for c in keys)} ON CONFLICT ({key_list}) {action}",
    )


class RowMergeShapes:
    """The row (or static) merge per batch shape (which staging fields are set, which are
    aliased), built on first use and cached; past ``limit`` shapes, None (use ``full`` with
    full-width records)."""

    limit = 64

    def __init__(self, layout: TableLayout, target: str, keys: Sequence[ColumnLayout], cols: Sequence[ColumnLayout], tag: str) -> None:
        self._args = (layout, target, tuple(keys), tuple(cols), tag)
        self.full = _row_merge(layout, target, keys, cols, tag)
        self._shapes: dict[tuple[tuple[bool, ...], tuple[tuple[int, int], ...]], StagedMerge] = {}

    def for_shape(self, present: tuple[bool, ...], aliases: tuple[tuple[int, int], ...] = ()) -> StagedMerge | None:
        """The merge of records holding just the ``present`` staging fields minus ``aliases``."""
        if all(present) and not aliases:
            return self.full
        merge = self._shapes.get((present, aliases))
        if merge is None:
            if len(self._shapes) >= self.limit:
                return None
            merge = self._shapes[(present, aliases)] = _row_merge(*self._args, present=present, aliases=aliases)
        return merge


def _partition_deletions_merge(layout: TableLayout) -> StagedMerge:
    """Partition tombstones appended (ddl: no unique key; the views take each partition's
    newest), so a replay or another replica's copy of a deletion adds a row and changes nothing
    visible. Sorted by key: neighbouring index entries go in together."""
    keys = layout.partition_key
    names = [c.ident for c in keys] + ["ts"]
    types = [c.staging_sql for c in keys] + ["bigint"]
    staging = pg_name(f"cdc_stage_{layout.signature}_pdel")
    key_list = ", ".join(q(c.ident) for c in keys)
    return StagedMerge(
        staging=staging,
        columns=tuple(names),
        column_types=tuple(types),
        select_sql=f"INSERT INTO {layout.q(layout.partition_deletions)} ({', '.join(q(n) for n in names)}) "
        f"SELECT {', '.join([c.stored(f's.{q(c.ident)}') for c in keys] + ['s.ts'])}",
        tail_sql=f"ORDER BY {key_list}",
    )


def range_columns(layout: TableLayout) -> list[tuple[str, str, ColumnLayout | None]]:
    out: list[tuple[str, str, ColumnLayout | None]] = [(c.ident, c.staging_sql, c) for c in layout.partition_key]
    for side in ("start", "end"):
        out += [(f"{side}#{c.ident}", c.staging_sql, c) for c in layout.clustering]
        out += [(f"#{side}_len", "integer", None), (f"#{side}_incl", "boolean", None)]
    out += [("#bounds", "text", None), ("ts", "bigint", None)]
    return out


def _range_deletions_merge(layout: TableLayout) -> StagedMerge:
    """Range tombstones appended, as partition tombstones are (the view takes the newest one
    covering a row, however many cover it)."""
    cols = range_columns(layout)
    staging = pg_name(f"cdc_stage_{layout.signature}_rdel")
    key_list = ", ".join([q(c.ident) for c in layout.partition_key] + [q("#bounds")])
    select = [owner.stored(f"s.{q(n)}") if owner is not None else f"s.{q(n)}" for n, _, owner in cols]
    return StagedMerge(
        staging=staging,
        columns=tuple(n for n, _, _ in cols),
        column_types=tuple(t for _, t, _ in cols),
        select_sql=f"INSERT INTO {layout.q(layout.range_deletions)} ({', '.join(q(n) for n, _, _ in cols)}) SELECT {', '.join(select)}",
        tail_sql=f"ORDER BY {key_list}",
    )


@attrs.frozen(kw_only=True)
class LatestStateMerges:
    rows: StagedMerge
    statics: StagedMerge | None
    partition_deletions: StagedMerge
    range_deletions: StagedMerge | None
    row_shapes: RowMergeShapes | None = None
    static_shapes: RowMergeShapes | None = None


def latest_state_merges(layout: TableLayout) -> LatestStateMerges:
    """The staged merges of one layout (build once per layout and cache)."""
    rows = RowMergeShapes(layout, layout.state_table, layout.primary_key, layout.regular, "rows")
    statics = RowMergeShapes(layout, layout.static_table, layout.partition_key, layout.static, "static") if layout.static else None
    return LatestStateMerges(
        rows=rows.full,
        statics=statics.full if statics is not None else None,
        partition_deletions=_partition_deletions_merge(layout),
        range_deletions=_range_deletions_merge(layout) if layout.clustering else None,
        row_shapes=rows,
        static_shapes=statics,
    )
