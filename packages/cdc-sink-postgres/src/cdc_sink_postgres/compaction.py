"""Removing tombstone rows that a newer tombstone of the same key makes redundant.

Tombstones are appended (docs/sinks/postgres.md, *Tombstones*): a partition or range deleted
again, a replayed batch and each replica lane's copy of a deletion add a row, and only the
newest of a key counts. The sink notes the keys whose tombstones it committed and, out of band
(its own short transactions, never inside a batch's), deletes the older rows of the keys it
appended more than once. Batches only insert into these tables, so the deletes' row locks never
make a batch wait, and nothing visible changes: the views read each key's newest tombstone,
which stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cdc_sink_postgres.idents import quote_ident as q
from cdc_sink_postgres.layout import ColumnLayout, TableLayout

__all__ = ["CHUNK_KEYS", "TombstoneCompaction", "partition_compaction_sql", "range_compaction_sql"]

# Keys per DELETE (and transaction): each key is an index look-up of its rows.
CHUNK_KEYS = 5_000


def _compaction_sql(table: str, keys: Sequence[ColumnLayout], extra: Sequence[tuple[str, str]]) -> str:
    """DELETE of every row of ``table`` but the newest (greatest ``ts``, then the last in the
    table) of each key given as array parameters (one per column of ``keys`` and ``extra``,
    (name, type) columns). Shaped so that it costs index look-ups per key whatever the planner
    knows of the table: each key's newest row and its other rows are LATERAL subqueries (the
    ``LIMIT`` and ``OFFSET 0`` keep them from being flattened into joins, which the planner
    hashed over a scan of the whole table), and the rows found are deleted by ``ctid``."""
    names = [c.ident for c in keys] + [n for n, _ in extra]
    types = [c.staging_sql for c in keys] + [t for _, t in extra]
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
    given = [c.stored(f"k.{q(c.ident)}") for c in keys] + [f"k.{q(n)}" for n, _ in extra]

    def of_key(alias: str) -> str:
        return " AND ".join(f"{alias}.{q(n)} = {v}" for n, v in zip(names, given, strict=True))

    return (
        f"DELETE FROM {table} d WHERE d.ctid = ANY (ARRAY("
        f"SELECT o.ctid FROM unnest({arrays}) AS k({', '.join(q(n) for n in names)}), "
        f"LATERAL (SELECT n.ctid AS keep FROM {table} n WHERE {of_key('n')} ORDER BY n.ts DESC, n.ctid DESC LIMIT 1) AS newest, "
        f"LATERAL (SELECT o.ctid FROM {table} o WHERE {of_key('o')} AND o.ctid <> newest.keep OFFSET 0) AS o))"
    )


def partition_compaction_sql(layout: TableLayout) -> str:
    """The redundant partition tombstones of the partitions given as arrays (one per key column)."""
    return _compaction_sql(layout.q(layout.partition_deletions), layout.partition_key, ())


def range_compaction_sql(layout: TableLayout) -> str:
    """The redundant range tombstones of the (partition, ``#bounds``) pairs given as arrays."""
    return _compaction_sql(layout.q(layout.range_deletions), layout.partition_key, (("#bounds", "text"),))


class _Keys:
    __slots__ = ("again", "once", "sql")

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.once: set[tuple[Any, ...]] = set()
        self.again: set[tuple[Any, ...]] = set()


class TombstoneCompaction:
    """Per tombstone table, the keys whose tombstones this process committed. Only keys appended
    more than once (a replica lane's copy of a deletion, a replay, a partition deleted again) are
    compacted: they have a row to remove for sure. A key appended once has one only if an earlier
    process wrote a tombstone of it too — looking every such key up again would cost about as
    much as appending it. A run leaves each key it compacted with one row, as if appended once.
    At most ``max_keys`` keys are tracked: at that many :attr:`due` asks for a run before the
    interval is up, and that run forgets them all (a key appended once before and once after
    is then not compacted)."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._tables: dict[str, _Keys] = {}
        self._tracked = 0

    @property
    def pending(self) -> int:
        """Keys a run would compact."""
        return sum(len(keys.again) for keys in self._tables.values())

    @property
    def due(self) -> bool:
        return self._tracked >= self.max_keys

    def note(self, layout: TableLayout, partitions: Iterable[tuple[Any, ...]], ranges: Iterable[tuple[tuple[Any, ...], str]]) -> None:
        """Keys of ``layout`` whose tombstones a committed batch appended (one row each): partition
        keys, and (partition key, ``#bounds``) of range tombstones. (The keys go back as
        ``unnest``ed arrays: the caller leaves out tables whose tombstones cannot be sent inline.)"""
        self._add(layout.q(layout.partition_deletions), lambda: partition_compaction_sql(layout), partitions)
        if layout.clustering:
            self._add(layout.q(layout.range_deletions), lambda: range_compaction_sql(layout), ((*pk, bounds) for pk, bounds in ranges))

    def _add(self, table: str, sql: Callable[[], str], keys: Iterable[tuple[Any, ...]]) -> None:
        entry = self._tables.get(table)
        if entry is None:
            entry = self._tables[table] = _Keys(sql())
        # (Set algebra: one pass in C per batch, not a Python step per key.)
        batch = set(keys) - entry.again
        moved = batch & entry.once
        entry.once -= moved
        entry.again |= moved
        fresh = batch - moved
        entry.once |= fresh
        self._tracked += len(fresh)

    def take(self) -> list[tuple[str, list[list[Any]]]]:
        """(DELETE, its array parameters) per chunk of at most :data:`CHUNK_KEYS` of the keys
        appended more than once. They count as appended once from now on; when :attr:`due`,
        every key is forgotten instead."""
        out: list[tuple[str, list[list[Any]]]] = []
        for keys in self._tables.values():
            listed = list(keys.again)
            for i in range(0, len(listed), CHUNK_KEYS):
                out.append((keys.sql, [list(column) for column in zip(*listed[i : i + CHUNK_KEYS], strict=True)]))
            keys.once |= keys.again
            keys.again = set()
        if self.due:
            self._tables, self._tracked = {}, 0
        return out
