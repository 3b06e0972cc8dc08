"""Where a replicated table lives in PostgreSQL: names of the relations and their columns.

Latest-state mode, for a destination name ``N`` (from the ``table_name`` template):

* ``N__state``: one row per Cassandra row (primary key = partition + clustering columns), each
  regular column with its winning write timestamp ``c#ts`` and expiry ``c#exp`` (seconds), the
  row marker (``#marker_ts``, ``#marker_exp``) and the newest row deletion (``#deleted_ts``).
  A non-frozen collection/UDT column holds a jsonb map element-key → {v, t, e, d} and its
  ``c#ts`` is the newest whole-collection clear.
* ``N__static_state``: the same per partition key for static columns.
* ``N__partition_deletions`` / ``N__range_deletions``: tombstone bookkeeping.
* ``N`` (view) and ``N__static`` (view): the visible state, the documented way to read it.

History mode: ``N`` is an append-only table keyed by the source position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

import attrs

from cdc_core.cqltypes import CqlType, parse_type
from cdc_core.schema import ClusteringOrder, ColumnKind, TableSchema
from cdc_sink_postgres.idents import qualify
from cdc_sink_postgres.typemap import PgType, converter, pg_type_for

__all__ = [
    "DELETED_TS",
    "MARKER_EXP",
    "MARKER_TS",
    "ColumnLayout",
    "TableLayout",
    "pg_name",
    "widens",
]

MARKER_TS = "#marker_ts"
MARKER_EXP = "#marker_exp"
DELETED_TS = "#deleted_ts"
MAX_IDENT_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


def pg_name(name: str) -> str:
    """``name`` fitted into PostgreSQL's 63-byte identifiers (long names keep a hash suffix,
    so two long names never truncate into one)."""
    if len(name.encode("utf-8")) <= MAX_IDENT_BYTES:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]
    cut = name.encode("utf-8")[: MAX_IDENT_BYTES - 11].decode("utf-8", errors="ignore")
    return f"{cut}_{digest}"


def widens(old: CqlType, new: CqlType) -> bool:
    """True when ``new`` is ``old`` grown by ``ALTER TYPE … ADD`` (UDTs anywhere inside it gained
    fields at the end; nothing else differs) — the only type change Cassandra makes to a column."""
    if old.name != new.name or old.frozen != new.frozen or old.udt_name != new.udt_name or old.dimension != new.dimension:
        return False
    if old.name == "udt":
        n = len(old.field_names)
        if new.field_names[:n] != old.field_names or len(new.params) < n:
            return False
        return all(o == w or widens(o, w) for o, w in zip(old.params, new.params[:n], strict=True))
    if len(old.params) != len(new.params):
        return False
    return all(o == w or widens(o, w) for o, w in zip(old.params, new.params, strict=True))


@attrs.frozen(kw_only=True)
class ColumnLayout:
    """One Cassandra column in the destination."""

    name: str
    cql_type: str
    kind: ColumnKind
    position: int = 0
    descending: bool = False
    dropped: bool = False
    override_sql: str | None = None  # a configured PostgreSQL type (values are cast to it)
    dropped_ts: int | None = None  # the newest drop (µs): cells written at or before it stay hidden

    @cached_property
    def cql(self) -> CqlType:
        return parse_type(self.cql_type)

    @cached_property
    def pg(self) -> PgType:
        return pg_type_for(self.cql)

    @cached_property
    def multicell(self) -> bool:
        return self.cql.is_multicell and self.kind in (ColumnKind.REGULAR, ColumnKind.STATIC)

    @cached_property
    def convert(self) -> Callable[[Any], Any]:
        """Python value → database parameter (checked; raises ValueRejected)."""
        conv: Callable[[Any], Any] = converter(self.cql)
        return conv

    @cached_property
    def key_convert(self) -> Callable[[Any], Any]:
        """:attr:`convert` for this column as a key column: the same value, but a one-dimensional
        array (a frozen list or set of scalars) as a tuple, not a list — keys are hashed (the
        fold's dict keys, compaction's sets), and asyncpg takes a tuple for an array."""
        if self.pg.form != "array":
            return self.convert
        convert = self.convert

        def as_tuple(value: Any) -> Any:
            return tuple(convert(value))

        return as_tuple

    @property
    def staging_sql(self) -> str:
        """The type values are copied in with (the default mapping)."""
        return "jsonb" if self.multicell else self.pg.sql

    @property
    def stored_sql(self) -> str:
        if self.multicell:
            return "jsonb"
        return self.override_sql or self.pg.sql

    def stored(self, expr: str) -> str:
        """``expr``, a staged value of this column, as it is stored: cast to the column's type
        override when it has one (values are staged with the default mapping)."""
        return f"{expr}::{self.stored_sql}" if self.override_sql and not self.multicell else expr

    @property
    def ident(self) -> str:
        return pg_name(self.name)

    @property
    def ts_col(self) -> str:
        return pg_name(f"{self.name}#ts")

    @property
    def exp_col(self) -> str:
        return pg_name(f"{self.name}#exp")


@attrs.frozen(kw_only=True)
class TableLayout:
    """All columns ever seen of one table (dropped ones flagged), and the relation names."""

    pg_schema: str
    base: str
    keyspace: str
    table: str
    columns: tuple[ColumnLayout, ...]

    @classmethod
    def from_schema(
        cls,
        schema: TableSchema,
        *,
        pg_schema: str,
        base: str,
        overrides: dict[str, str] | None = None,
        known: Iterable[ColumnLayout] = (),
    ) -> TableLayout:
        """The layout for ``schema``, keeping ``known`` columns (from the database) the schema
        lacks, and flagging the schema's dropped columns."""
        overrides = overrides or {}
        drop_times: dict[str, int] = {}
        for name, when in schema.dropped:
            drop_times[name] = max(when, drop_times.get(name, when))
        dropped = set(drop_times)
        present = {c.name for c in schema.columns}

        def newest_drop(name: str, stored: int | None) -> int | None:
            when = drop_times.get(name)
            return stored if when is None else when if stored is None else max(stored, when)

        cols: dict[str, ColumnLayout] = {
            c.name: attrs.evolve(
                c, dropped=c.dropped or (c.name in dropped and c.name not in present), dropped_ts=newest_drop(c.name, c.dropped_ts)
            )
            for c in known
        }
        for c in schema.columns:
            if c.name in cols:
                # A dropped column comes back only when Cassandra re-added it: the schema then
                # both has it and remembers the drop. A schema older than the drop has it too,
                # but without the drop record, and must not resurrect it.
                if c.name in dropped and cols[c.name].dropped and c.kind is cols[c.name].kind:
                    cols[c.name] = attrs.evolve(cols[c.name], dropped=False)
                # A UDT that gained fields (ALTER TYPE … ADD): the column takes the wider type;
                # an older schema (fewer fields) never narrows it back.
                new_type = str(c.cql_type)
                if new_type != cols[c.name].cql_type and widens(cols[c.name].cql, c.cql_type):
                    cols[c.name] = attrs.evolve(cols[c.name], cql_type=new_type)
                continue
            cols[c.name] = ColumnLayout(
                name=c.name,
                cql_type=str(c.cql_type),
                kind=c.kind,
                position=c.position,
                descending=c.clustering_order is ClusteringOrder.DESC,
                dropped=False,
                override_sql=overrides.get(c.name),
                dropped_ts=drop_times.get(c.name),
            )
        return cls(pg_schema=pg_schema, base=base, keyspace=schema.keyspace, table=schema.table, columns=tuple(cols.values()))

    # --- columns ------------------------------------------------------------------------------

    @cached_property
    def partition_key(self) -> tuple[ColumnLayout, ...]:
        return tuple(sorted((c for c in self.columns if c.kind is ColumnKind.PARTITION_KEY), key=lambda c: c.position))

    @cached_property
    def clustering(self) -> tuple[ColumnLayout, ...]:
        return tuple(sorted((c for c in self.columns if c.kind is ColumnKind.CLUSTERING), key=lambda c: c.position))

    @property
    def primary_key(self) -> tuple[ColumnLayout, ...]:
        return self.partition_key + self.clustering

    @cached_property
    def regular(self) -> tuple[ColumnLayout, ...]:
        """Regular columns, dropped ones included (their storage stays)."""
        return tuple(c for c in self.columns if c.kind is ColumnKind.REGULAR)

    @cached_property
    def static(self) -> tuple[ColumnLayout, ...]:
        return tuple(c for c in self.columns if c.kind is ColumnKind.STATIC)

    @cached_property
    def writable(self) -> dict[str, tuple[ColumnLayout, bool, Callable[[Any], Any]]]:
        """Value columns events may write (not dropped), by name: (column, multicell, converter)
        in a plain tuple (the hot path avoids slotted cached properties)."""
        return {
            c.name: (c, c.multicell, c.convert) for c in self.columns if c.kind in (ColumnKind.REGULAR, ColumnKind.STATIC) and not c.dropped
        }

    @cached_property
    def key_converters(self) -> tuple[tuple[tuple[str, Callable[[Any], Any]], ...], tuple[tuple[str, Callable[[Any], Any]], ...]]:
        """(name, converter) of the partition key and of the clustering columns."""
        return (tuple((c.name, c.key_convert) for c in self.partition_key), tuple((c.name, c.key_convert) for c in self.clustering))

    def column(self, name: str) -> ColumnLayout:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    # --- relation names -------------------------------------------------------------------------

    def q(self, name: str) -> str:
        """A relation of this table's schema, quoted and qualified."""
        return qualify(self.pg_schema, name)

    @property
    def view(self) -> str:
        return pg_name(self.base)

    @property
    def state_table(self) -> str:
        return pg_name(f"{self.base}__state")

    @property
    def static_table(self) -> str:
        return pg_name(f"{self.base}__static_state")

    @property
    def static_view(self) -> str:
        return pg_name(f"{self.base}__static")

    @property
    def partition_deletions(self) -> str:
        return pg_name(f"{self.base}__partition_deletions")

    @property
    def partition_deletions_index(self) -> str:
        return pg_name(f"{self.base}__partition_deletions_key_ts")

    @property
    def range_deletions(self) -> str:
        return pg_name(f"{self.base}__range_deletions")

    @property
    def range_deletions_index(self) -> str:
        return pg_name(f"{self.base}__range_deletions_key")

    @property
    def history_table(self) -> str:
        return pg_name(self.base)

    def name_collisions(self) -> list[str]:
        """Storage names claimed twice (a quoted CQL name can contain ``#`` or equal a bookkeeping
        name, e.g. columns ``v`` and ``v#ts``): such a table cannot be stored, and is refused."""
        relations: list[list[str]] = []
        markers = [MARKER_TS, MARKER_EXP, DELETED_TS]
        for keys, cols in ((self.primary_key, self.regular), (self.partition_key, self.static)):
            names = [c.ident for c in keys] + markers
            for c in cols:
                names += [c.ident, c.ts_col] if c.multicell else [c.ident, c.ts_col, c.exp_col]
            relations.append(names)
        pk = [c.ident for c in self.partition_key]
        relations.append([*pk, "ts"])
        bounds = [f"{side}#{c.ident}" for side in ("start", "end") for c in self.clustering]
        relations.append([*pk, *bounds, "#start_len", "#start_incl", "#end_len", "#end_incl", "#bounds", "ts"])
        clashes: set[str] = set()
        for names in relations:
            seen: set[str] = set()
            for n in names:
                (clashes if n in seen else seen).add(n)
        return sorted(clashes)

    @cached_property
    def signature(self) -> str:
        """Changes whenever the stored shape changes (names staging tables per shape)."""
        text = "|".join(f"{c.name}:{c.cql_type}:{c.kind.value}:{c.dropped}:{c.override_sql}:{c.dropped_ts}" for c in self.columns)
        return hashlib.sha1(f"{self.pg_schema}.{self.base}|{text}".encode()).hexdigest()[:12]
