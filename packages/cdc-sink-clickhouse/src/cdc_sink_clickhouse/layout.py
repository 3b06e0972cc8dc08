"""The ClickHouse objects of one Cassandra table, their DDL, row encoding and the reading SQL.

Latest-state mode (docs/sinks/clickhouse.md has the full picture)::

    {base}__rows_in  MergeTree ORDER BY (pk..., ck...)   the cell log: one row per event, as sent
    {base}__parts_in MergeTree ORDER BY (pk...)
    {base}__rows     AggregatingMergeTree   compacted states (compact() moves old log rows here)
    {base}__parts    AggregatingMergeTree
    {base}           VIEW: log + compacted states merged, rows joined with their partition,
                     shadowing and TTL applied
    {base}_static    VIEW: static columns per partition

Inserts go into plain MergeTree logs (no materialized view: the per-insert aggregate states cost
the server 2-3x a plain insert). The view turns log rows into the same aggregate states at query
time and merges them with the compacted ones: every cell an ``argMax`` keyed by its version, every
deletion a ``max``, collection elements a ``groupUniqArray`` set resolved per path. These merge
idempotently and commutatively, so any permutation with duplicates -- and a log row that is also
compacted -- converges.

History mode: ``{base}__in`` (Null) --MV--> ``{base}`` ReplacingMergeTree ORDER BY (key..., position).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any

import attrs
import orjson

from cdc_core.cqltypes import CqlType, value_to_json
from cdc_core.errors import PermanentError
from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Deletion, Liveness, RangeBound
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.serialization import event_to_dict
from cdc_sink_clickhouse.mapping import (
    _DT64_MAX_MS,
    _DT64_MIN_MS,
    _INT_NAMES,
    INT64_MAX,
    INT64_MIN,
    Features,
    TypeMapping,
    ValueRejected,
    _double_enc,
    _text_enc,
    invert,
    mapping_for,
    order_key,
    order_key_function,
    order_key_hex_function,
    tsv_escape,
)

try:  # the optional compiled encoder (distribution cdc-sink-clickhouse-native); same bytes as _cells
    import cdc_sink_clickhouse_native as _native
except ImportError:  # pragma: no cover - the pure-Python encoder
    _native = None  # type: ignore[assignment]

__all__ = ["NATIVE", "TableLayout", "UnsupportedSchema", "quote", "string_literal"]

NATIVE = _native is not None

MIN = f"toInt64({INT64_MIN})"
_ELEM = "Tuple(String, String, Int64, UInt8, Int64, String)"
_RANGE = "Tuple(String, UInt8, String, UInt8, Int64)"
_MIN_TEXT = str(INT64_MIN)
_MAX_TEXT = str(INT64_MAX)
# A cell's version is ``ts * 4 + rank`` with rank 0 a plain live value, 1 an expiring one, 2 a
# tombstone: Cassandra's order on equal timestamps (Cells.reconcile, CASSANDRA-14592). One Int64 keeps
# the value's argMax state on ClickHouse's fast numeric path; write timestamps must therefore lie
# strictly inside ±2^61. Between two expiring cells of one version the later expiry wins: the
# expiry is kept as max((version, expiry)).
_VERSION_LIMIT = 2**61
_NO_ELEM = "\t".join(["", "", "", "0", "0", "0", ""])
# The row marker is max((ts, rank)): rank = the expiry of an expiring marker, -2^63 for a plain one
# (LivenessInfo.supersedes: on equal timestamps an expiring marker wins, then the later expiry).
_NO_LIVENESS = f"{_MIN_TEXT}\t{_MIN_TEXT}"
_ABSENT: Any = object()
# Integer columns the compiled encoder checks itself (the same bounds as mapping._int_mapping).
_INT_RANGES = {"tinyint": (-(2**7), 2**7 - 1), "smallint": (-(2**15), 2**15 - 1), "int": (-(2**31), 2**31 - 1)}
_INT_RANGES.update({"bigint": (INT64_MIN, INT64_MAX), "counter": (INT64_MIN, INT64_MAX)})
# Bumped whenever the stored states change meaning (materialized view names carry it).
LAYOUT_FORMAT = 4
# The log tables' insert time (compaction moves rows older than a margin into the states).
_AT = ("i__at", "DateTime DEFAULT now()")
_MV_SUFFIX = re.compile(r"_v(\d+)_([0-9a-f]{8})")
# (name, encoder or None for multi-cell columns, default text, absent-cell text, column)
_Spec = tuple[str, "Callable[[Any], str] | None", str, str, "_Col"]


def _dominates(a: Set[str], rank_a: tuple[int, str], b: Set[str], rank_b: tuple[int, str]) -> bool:
    """View ``a`` makes view ``b`` redundant: it writes a superset of its columns, or the same
    columns with a newer (format, query hash). A strict partial order: no two views dominate each
    other, so concurrent agents never drop each other's views."""
    return a > b or (a == b and rank_a > rank_b)


def quote(name: str) -> str:
    """A ClickHouse identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def string_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _path_type(typ: CqlType) -> CqlType:
    if typ.name == "list":
        return CqlType("timeuuid")
    if typ.name in ("set", "map"):
        return typ.params[0]
    return CqlType("text")


def _element_type(typ: CqlType, path: Any) -> CqlType | None:
    if typ.name == "list":
        return typ.params[0]
    if typ.name == "map":
        return typ.params[1]
    if typ.name == "udt":
        return typ.params[typ.field_names.index(path)]
    return None


def _json(value: Any, typ: CqlType | None) -> str:
    if typ is None or value is None:
        return "null"
    return orjson.dumps(value_to_json(value, typ)).decode("utf-8")


@attrs.frozen
class _Col:
    schema: ColumnSchema
    mapping: TypeMapping | None  # None for multi-cell (non-frozen collection / UDT) columns

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def complex(self) -> bool:
        return self.mapping is None


class UnsupportedSchema(PermanentError):
    """A table this sink cannot lay out (its events are rejected to the DLQ with this reason)."""


@attrs.frozen
class _MvSpec:
    kind: str
    name: str
    create: str
    columns: frozenset[str]


class TableLayout:
    """Names, DDL and encoders for one table in one mode on one engine."""

    def __init__(
        self, schema: TableSchema, features: Features, database: str, base: str, mode: str, partition_by: str | None = None
    ) -> None:
        bad = [c.name for c in schema.columns if not c.name or c.name.startswith("_") or "__" in c.name]
        if bad:
            raise UnsupportedSchema(
                f"{schema.qualified_name}: column name(s) {', '.join(repr(b) for b in bad)} cannot be stored by the ClickHouse sink: "
                "names starting with '_' or containing '__' are reserved for its bookkeeping columns (e.g. _ck, c__vx, i_c__w)"
            )
        self.schema = schema
        self.features = features
        self.database = database
        self.base = base
        self.mode = mode
        self.partition_by = partition_by
        self.keys = [_Col(c, mapping_for(c.cql_type, features)) for c in schema.primary_key]
        self.pk = self.keys[: len(schema.partition_key)]
        self.ck = self.keys[len(schema.partition_key) :]
        self.regular = [self._col(c) for c in schema.value_columns if c.kind is ColumnKind.REGULAR]
        self.static = [self._col(c) for c in schema.value_columns if c.kind is ColumnKind.STATIC]
        self.by_name = {c.name: c for c in self.keys + self.regular + self.static}
        # The collection-element wire columns only where a non-frozen collection can use them (each
        # column costs the server per row and part); added by ALTER when one appears.
        self._rows_elem = any(c.complex for c in self.regular)
        self._parts_elem = any(c.complex for c in self.static)
        self._compile()

    def _col(self, c: ColumnSchema) -> _Col:
        return _Col(c, None if c.cql_type.is_multicell else mapping_for(c.cql_type, self.features))

    # --- names ----------------------------------------------------------------------------------

    def q(self, suffix: str = "") -> str:
        return f"{quote(self.database)}.{quote(self.base + suffix)}"

    @property
    def view(self) -> str:
        return self.q()

    @property
    def static_view(self) -> str:
        return self.q("_static")

    def input_tables(self) -> list[str]:
        return ["__rows_in", "__parts_in"] if self.mode == "latest" else ["__in"]

    # --- columns ----------------------------------------------------------------------------------

    def _value_wire(self, cols: Sequence[_Col]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for c in cols:
            if c.mapping is not None:
                # Defaults are the "not written" sentinels: an agent that does not know a column
                # yet (schema change in progress) inserts without it.
                # (18.16 does not fill a column without an explicit DEFAULT before pushing to views.)
                m = c.mapping
                out += [
                    (f"_i_{c.name}", f"{m.wire} DEFAULT CAST({string_literal(m.default)} AS {m.wire})"),
                    (f"_i_{c.name}__w", f"Int64 DEFAULT {MIN}"),
                    (f"_i_{c.name}__x", "Int64 DEFAULT toInt64(0)"),
                ]
            else:
                out.append((f"_i_{c.name}__d", f"Int64 DEFAULT {MIN}"))
        return out

    _ELEM_WIRE = (
        ("i__col", "String"),
        ("i__ps", "String"),
        ("i__pj", "String"),
        ("i__et", "Int64"),
        ("i__ek", "UInt8"),
        ("i__ex", "Int64"),
        ("i__ev", "String"),
    )

    def rows_wire(self) -> list[tuple[str, str]]:
        cols = [(f"_i_{k.name}", k.mapping.wire) for k in self.keys if k.mapping is not None]
        cols += [("i__ck", "String"), ("i__rd", "Int64"), ("i__lv", "Int64"), ("i__lx", "Int64")]
        return cols + self._value_wire(self.regular) + (list(self._ELEM_WIRE) if self._rows_elem else [])

    def parts_wire(self) -> list[tuple[str, str]]:
        cols = [(f"_i_{k.name}", k.mapping.wire) for k in self.pk if k.mapping is not None]
        cols += [("i__pd", "Int64"), ("i__srd", "Int64"), ("i__rs", "String"), ("i__rsk", "UInt8"), ("i__re", "String")]
        cols += [("i__rek", "UInt8"), ("i__rts", "Int64")]
        return cols + self._value_wire(self.static) + (list(self._ELEM_WIRE) if self._parts_elem else [])

    def _value_storage(self, cols: Sequence[_Col]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for c in cols:
            if c.mapping is not None:
                t = c.mapping.storage
                out += [
                    (c.name, f"AggregateFunction(argMax, {t}, Int64)"),
                    (f"{c.name}__vx", "AggregateFunction(max, Tuple(Int64, Int64))"),
                ]
            else:
                out += [(f"{c.name}__d", "AggregateFunction(max, Int64)"), (f"{c.name}__e", f"AggregateFunction(groupUniqArray, {_ELEM})")]
        return out

    def rows_storage(self) -> list[tuple[str, str]]:
        cols = [(k.name, k.mapping.storage) for k in self.keys if k.mapping is not None]
        cols += [
            ("_ck", "AggregateFunction(any, String)"),
            ("_rd", "AggregateFunction(max, Int64)"),
            ("_lvx", "AggregateFunction(max, Tuple(Int64, Int64))"),
        ]
        return cols + self._value_storage(self.regular)

    def parts_storage(self) -> list[tuple[str, str]]:
        cols = [(k.name, k.mapping.storage) for k in self.pk if k.mapping is not None]
        cols += [("_pd", "AggregateFunction(max, Int64)"), ("_srd", "AggregateFunction(max, Int64)")]
        cols += [("_rg", f"AggregateFunction(groupUniqArray, {_RANGE})")]
        return cols + self._value_storage(self.static)

    def history_wire(self) -> list[tuple[str, str]]:
        cols = [(f"_i_{k.name}", k.mapping.wire) for k in self.keys if k.mapping is not None]
        cols += [("i__node", "String"), ("i__segment", "Int64"), ("i__offset", "Int64"), ("i__index", "Int64"), ("i__kind", "String")]
        cols += [("i__static", "UInt8"), ("i__ts", "Int64"), ("i__written", "Array(String)"), ("i__deleted", "Array(String)")]
        for c in self.regular + self.static:
            wire = f"Nullable({c.mapping.wire})" if c.mapping is not None else "Nullable(String)"
            cols.append((f"_i_{c.name}", f"{wire} DEFAULT NULL"))
        return [*cols, ("i__event", "String")]

    def history_storage(self) -> list[tuple[str, str]]:
        cols = [(k.name, k.mapping.storage) for k in self.keys if k.mapping is not None]
        cols += [("_node", "String"), ("_segment", "Int64"), ("_offset", "Int64"), ("_index", "Int64"), ("_kind", "String")]
        cols += [("_static", "UInt8"), ("_ts", "Int64"), ("_written", "Array(String)"), ("_deleted", "Array(String)")]
        for c in self.regular + self.static:
            cols.append((c.name, f"Nullable({c.mapping.storage})" if c.mapping is not None else "Nullable(String)"))
        return [*cols, ("_event", "String")]

    # --- DDL ------------------------------------------------------------------------------------------

    @staticmethod
    def _cols_ddl(cols: Sequence[tuple[str, str]]) -> str:
        return ", ".join(f"{quote(n)} {t}" for n, t in cols)

    def _key_expr(self, keys: Sequence[_Col]) -> str:
        return "(" + ", ".join(quote(k.name) for k in keys) + ")" if keys else "tuple()"

    def _conv(self, c: _Col, wire: str) -> str:
        assert c.mapping is not None
        return c.mapping.convert.format(quote(wire))

    def _value_states(self, cols: Sequence[_Col]) -> list[str]:
        out: list[str] = []
        for c in cols:
            n = c.name
            if c.mapping is not None:
                ver = quote(f"_i_{n}__w")
                out += [
                    f"argMaxState({self._conv(c, f'_i_{n}')}, {ver}) AS {quote(n)}",
                    f"maxState(({ver}, {quote(f'_i_{n}__x')})) AS {quote(n + '__vx')}",
                ]
            else:
                elem = "(i__ps, i__pj, i__et, i__ek, i__ex, i__ev)"
                out += [
                    f"maxState({quote(f'_i_{n}__d')}) AS {quote(n + '__d')}",
                    f"groupUniqArrayStateIf({elem}, i__col = {string_literal(n)}) AS {quote(n + '__e')}",
                ]
        return out

    def _mv_keys(self, keys: Sequence[_Col]) -> tuple[list[str], str]:
        sel = [f"{self._conv(k, '_i_' + k.name)} AS {quote(k.name)}" for k in keys]
        group = ", ".join(quote("_i_" + k.name) for k in keys)
        return sel, (f" GROUP BY {group}" if group else "")

    def state_select(self, kind: str, where: str = "") -> str:
        """SQL turning the log ``{base}{kind}_in`` (kind ``__rows`` or ``__parts``) into the aggregate
        states of ``{base}{kind}``, column for column (a UNION ALL with the compacted states)."""
        cond = f" WHERE {where}" if where else ""
        if kind == "__rows":
            sel, group = self._mv_keys(self.keys)
            sel += ["anyState(i__ck) AS _ck", "maxState(i__rd) AS _rd", "maxState((i__lv, i__lx)) AS _lvx"]
            sel += self._value_states(self.regular)
        else:
            sel, group = self._mv_keys(self.pk)
            sel += ["maxState(i__pd) AS _pd", "maxState(i__srd) AS _srd"]
            sel += [f"groupUniqArrayStateIf((i__rs, i__rsk, i__re, i__rek, i__rts), i__rts != {MIN}) AS _rg"]
            sel += self._value_states(self.static)
        return f"SELECT {', '.join(sel)} FROM {self.q(kind + '_in')}{cond}{group}"

    def _state_source(self, kind: str) -> str:
        """The states of ``kind``: compacted ones and the log's, unmerged (callers GROUP BY and -Merge)."""
        storage = self.rows_storage() if kind == "__rows" else self.parts_storage()
        cols = ", ".join(quote(n) for n, _ in storage)
        return f"(SELECT {cols} FROM {self.q(kind)} UNION ALL {self.state_select(kind)})"

    def _mv_specs(self) -> list[_MvSpec]:
        """The materialized views (history mode only): (kind, create statement for the versioned name, output columns)."""
        if self.mode != "history":
            return []
        sel = [f"{self._conv(k, '_i_' + k.name)} AS {quote(k.name)}" for k in self.keys]
        sel += [f"i__{n} AS _{n}" for n in ("node", "segment", "offset", "index", "kind", "static", "ts", "written", "deleted")]
        for c in self.regular + self.static:
            if c.mapping is not None and c.mapping.convert != "{}":
                w = quote("_i_" + c.name)
                sel.append(f"if(isNull({w}), NULL, {c.mapping.convert.format(f'assumeNotNull({w})')}) AS {quote(c.name)}")
            else:
                sel.append(f"{quote('_i_' + c.name)} AS {quote(c.name)}")
        sel.append("i__event AS _event")
        queries = [("__mv", self.view, f"SELECT {', '.join(sel)} FROM {self.q('__in')}", self.history_storage())]
        out: list[_MvSpec] = []
        for kind, target, select, cols in queries:
            digest = hashlib.sha256(select.encode("utf-8")).hexdigest()[:8]
            name = f"{self.base}{kind}_v{LAYOUT_FORMAT}_{digest}"
            create = f"CREATE MATERIALIZED VIEW IF NOT EXISTS {quote(self.database)}.{quote(name)} TO {target} AS {select}"
            out.append(_MvSpec(kind=kind, name=name, create=create, columns=frozenset(n for n, _ in cols)))
        return out

    def _table_ddl(self) -> list[tuple[str, list[tuple[str, str]], str]]:
        """(suffix, columns, engine clause) of the tables (input tables first)."""
        if self.mode == "history":
            order = [quote(k.name) for k in self.keys] + ["_node", "_segment", "_offset", "_index"]
            partition = f" PARTITION BY {self.partition_by}" if self.partition_by else ""
            return [
                ("__in", self.history_wire(), "ENGINE = Null"),
                ("", self.history_storage(), f"ENGINE = ReplacingMergeTree{partition} ORDER BY ({', '.join(order)})"),
            ]

        def log_order(keys: Sequence[_Col]) -> str:
            return "(" + ", ".join(quote("_i_" + k.name) for k in keys) + ")"

        return [
            ("__rows_in", [*self.rows_wire(), _AT], f"ENGINE = MergeTree ORDER BY {log_order(self.keys)}"),
            ("__parts_in", [*self.parts_wire(), _AT], f"ENGINE = MergeTree ORDER BY {log_order(self.pk)}"),
            ("__rows", self.rows_storage(), f"ENGINE = AggregatingMergeTree ORDER BY {self._key_expr(self.keys)}"),
            ("__parts", self.parts_storage(), f"ENGINE = AggregatingMergeTree ORDER BY {self._key_expr(self.pk)}"),
        ]

    def _is_mv_of(self, name: str, kind: str) -> bool:
        prefix = self.base + kind
        return name == prefix or (name.startswith(prefix) and _MV_SUFFIX.fullmatch(name[len(prefix) :]) is not None)

    def _mv_rank(self, name: str, kind: str) -> tuple[int, str]:
        m = _MV_SUFFIX.fullmatch(name[len(self.base + kind) :])
        return (0, "") if m is None else (int(m.group(1)), m.group(2))

    def plan(self, existing: Mapping[str, set[str]]) -> list[str]:
        """The DDL that brings the objects in ``existing`` (table → its columns) to this layout,
        in an order that never leaves an input table without a materialized view.

        Materialized views are versioned (``{base}{kind}_v{format}_{hash of the query}``) and
        replaced by *create new, then drop old*: an INSERT (from any agent) during the overlap goes
        through both views, which the idempotent aggregate states absorb. A view is dropped only
        by an agent that has just made sure one that dominates it exists (a superset of its
        columns, or the same columns and a higher (format, hash)), so the dominant view of all is
        never dropped and an agent with an older schema never undoes a newer one's view."""
        if self.mode == "latest":
            rows, parts = existing.get(self.base + "__rows", set()), existing.get(self.base + "__parts", set())
            simple = [c.name + "__x" for c in self.regular + self.static if c.mapping is not None]
            # Formats < 4 fed the states through materialized views from Null input tables (no i__at);
            # formats < 3 also ranked equal timestamps differently. Their tables are refused as a whole.
            logs = [existing[self.base + k] for k in ("__rows_in", "__parts_in") if self.base + k in existing]
            if "_lv" in rows or any(n in rows or n in parts for n in simple) or any(_AT[0] not in cols for cols in logs):
                raise PermanentError(
                    f"{self.q('__rows')}: created by an older cdc-sink-clickhouse (layout format < {LAYOUT_FORMAT}: Null input "
                    "tables and materialized views, or states ranking equal timestamps differently); drop the table's objects "
                    "(base__rows*, base__parts*, the views base and base_static) and replay from the start — "
                    "docs/sinks/clickhouse.md, 'Upgrading'"
                )
        stmts: list[str] = []
        for suffix, cols, engine in self._table_ddl():
            have = existing.get(self.base + suffix)
            if have is None:
                stmts.append(f"CREATE TABLE IF NOT EXISTS {self.q(suffix)} ({self._cols_ddl(cols)}) {engine}")
                continue
            stmts += [f"ALTER TABLE {self.q(suffix)} ADD COLUMN {quote(n)} {t}" for n, t in cols if n not in have]
        newest = True
        created = False
        for spec in self._mv_specs():
            rank = (LAYOUT_FORMAT, spec.name[-8:])
            others = {n: set(c) for n, c in existing.items() if n != spec.name and self._is_mv_of(n, spec.kind)}
            if any(_dominates(c, self._mv_rank(n, spec.kind), spec.columns, rank) for n, c in others.items()):
                newest = False  # a newer agent's view covers us: leave everything as it is
                continue
            if spec.name not in existing:
                stmts.append(spec.create)
                created = True
            for n, c in sorted(others.items()):
                if _dominates(spec.columns, rank, c, self._mv_rank(n, spec.kind)):
                    stmts.append(f"DROP TABLE IF EXISTS {quote(self.database)}.{quote(n)}")
        if self.mode == "latest":
            views = [(self.view, self.base, self.latest_select(None), self.keys + self.static + self.regular)]
            views.append((self.static_view, self.base + "_static", self.static_select(None), self.pk + self.static))
            for qname, name, select, out in views:
                have = existing.get(name)
                if have is None:
                    stmts.append(f"CREATE VIEW IF NOT EXISTS {qname} AS {select}")
                elif newest and (created or have < {c.name for c in out}):
                    # A plain view holds no data: replacing it never loses a row (18.16 has no
                    # CREATE OR REPLACE VIEW, so readers may miss it for a moment there).
                    if self.features.replace_view:
                        stmts.append(f"CREATE OR REPLACE VIEW {qname} AS {select}")
                    else:
                        stmts += [f"DROP TABLE IF EXISTS {qname}", f"CREATE VIEW IF NOT EXISTS {qname} AS {select}"]
        return stmts

    # --- the latest-state SQL -----------------------------------------------------------------------

    @staticmethod
    def _cover(r: str, k: str) -> str:
        """SQL: range tuple ``r`` (start, start kind, end, end kind, ts) covers clustering key ``k``."""
        s, sk, e, ek = (f"tupleElement({r}, {i})" for i in (1, 2, 3, 4))
        start = f"({sk} = 0 OR ({sk} = 1 AND {k} >= {s}) OR ({sk} = 2 AND {k} > {s} AND substring({k}, 1, length({s})) != {s}))"
        end = f"({ek} = 0 OR ({ek} = 1 AND ({k} <= {e} OR substring({k}, 1, length({e})) = {e})) OR ({ek} = 2 AND {k} < {e}))"
        return f"({start} AND {end})"

    def _finals(self, cols: Sequence[_Col]) -> list[str]:
        out: list[str] = []
        for c in cols:
            n = c.name
            if c.mapping is not None:
                out += [
                    f"argMaxMerge({quote(n)}) AS {quote('a__' + n)}",
                    f"maxMerge({quote(n + '__vx')}) AS {quote('a__' + n + '__vx')}",
                ]
            else:
                out += [
                    f"maxMerge({quote(n + '__d')}) AS {quote('a__' + n + '__d')}",
                    f"groupUniqArrayMerge({quote(n + '__e')}) AS {quote('a__' + n + '__e')}",
                ]
        return out

    def _renders(self, cols: Sequence[_Col], shadow: str, now: str) -> list[str]:
        out: list[str] = []
        for c in cols:
            n = c.name
            a = quote("a__" + n)
            if c.mapping is not None:
                # (version, expiry); version = ts * 4 + rank (2 = tombstone), ts = floor(version / 4).
                vx = quote(f"a__{n}__vx")
                w, x = f"tupleElement({vx}, 1)", f"tupleElement({vx}, 2)"
                live = f"bitAnd({w}, 3) != 2 AND intDiv({w} - bitAnd({w}, 3), 4) > {shadow} AND {x} > {now}"
                out.append(f"if({live}, {a}, NULL) AS {quote('x__' + n)}")
                continue
            els = quote(f"a__{n}__e")
            sh = f"greatest({shadow}, {quote(f'a__{n}__d')})"
            # Newest write per path first (path, ts, tombstone descending), then keep the first of each
            # path if it is live. No lambda captures a column: 18.16 loses captured joined columns.
            srt, prev = quote(f"s__{n}"), quote(f"p__{n}")
            # Equal timestamps: a tombstone, then an expiring write, then the later expiry first.
            order = (
                f"(tupleElement(_e, 1), tupleElement(_e, 3), tupleElement(_e, 4), tupleElement(_e, 5) != {_MAX_TEXT}, tupleElement(_e, 5))"
            )
            out.append(f"arrayReverseSort(_e -> {order}, {els}) AS {srt}")
            out.append(f"arrayPopBack(arrayPushFront(arrayMap(_e -> tupleElement(_e, 1), {srt}), '')) AS {prev}")
            live = f"tupleElement(_e, 1) != _p AND tupleElement(_e, 4) = 0 AND tupleElement(_e, 3) > _s AND tupleElement(_e, 5) > {now}"
            w = quote(f"w__{n}")
            out.append(
                f"arraySort(_e -> tupleElement(_e, 1), arrayFilter((_e, _p, _s) -> {live}, {srt}, {prev}, "
                f"arrayResize(emptyArrayInt64(), length({srt}), {sh}))) AS {w}"
            )
            kind = c.schema.cql_type.name
            if kind == "list":
                item, open_, close = "tupleElement(_e, 6)", "[", "]"
            elif kind == "set":
                item, open_, close = "tupleElement(_e, 2)", "[", "]"
            elif kind == "map":
                item, open_, close = "concat('[', tupleElement(_e, 2), ',', tupleElement(_e, 6), ']')", "[", "]"
            else:
                item, open_, close = "concat(tupleElement(_e, 2), ':', tupleElement(_e, 6))", "{", "}"
            render = f"concat('{open_}', arrayStringConcat(arrayMap(_e -> {item}, {w}), ','), '{close}')"
            out.append(f"if(empty({w}), NULL, {render}) AS {quote('x__' + n)}")
        return out

    def _parts_select(self, now: str) -> str:
        pk = ", ".join(quote(k.name) for k in self.pk)
        sel = [pk, "1 AS _p_has", "maxMerge(_pd) AS _p_pd", "maxMerge(_srd) AS _p_srd", "groupUniqArrayMerge(_rg) AS _p_rg"]
        sel += self._finals(self.static)
        sel += ["greatest(_p_pd, _p_srd) AS _p_sh"]
        sel += self._renders(self.static, "_p_sh", now)
        return f"SELECT {', '.join(sel)} FROM {self._state_source('__parts')} AS s GROUP BY {pk}"

    @staticmethod
    def _now(now: int | None) -> str:
        return "toInt64(toUnixTimestamp(now()))" if now is None else f"toInt64({int(now)})"

    def latest_select(self, now: int | None) -> str:
        """The view's query; with ``now`` given, TTLs are judged at that time instead of the clock."""
        n = self._now(now)
        keys = ", ".join(quote(k.name) for k in self.keys)
        pk = ", ".join(quote(k.name) for k in self.pk)
        rows = [keys, "anyMerge(_ck) AS _a_ck", "maxMerge(_rd) AS _a_rd", "maxMerge(_lvx) AS _a_lvx"]
        rows += self._finals(self.regular)
        cover = self._cover("_r", "_k")
        keys_arr = "arrayResize(emptyArrayString(), length(_p_rg), _a_ck)"
        rng = f"arrayReduce('max', arrayConcat([{MIN}], arrayMap((_r, _k) -> if({cover}, tupleElement(_r, 5), {MIN}), _p_rg, {keys_arr})))"
        mid = [keys] + [quote("x__" + c.name) for c in self.static]
        mid += [f"greatest(greatest(_a_rd, if(_p_has = 1, _p_pd, {MIN})), {rng}) AS _r_sh"]
        mid += self._renders(self.regular, "_r_sh", n)
        lv, lx = "tupleElement(_a_lvx, 1)", "tupleElement(_a_lvx, 2)"
        live = [f"({lv} > _r_sh AND ({lx} = {MIN} OR {lx} > {n}))"] + [f"isNotNull({quote('x__' + c.name)})" for c in self.regular]
        mid.append(f"({' OR '.join(live)}) AS _r_live")
        out = [quote(c.name) for c in self.keys] + [f"{quote('x__' + c.name)} AS {quote(c.name)}" for c in self.static + self.regular]
        return (
            f"SELECT {', '.join(out)} FROM (SELECT {', '.join(mid)} FROM "
            f"(SELECT {', '.join(rows)} FROM {self._state_source('__rows')} AS s GROUP BY {keys}) AS r "
            f"ANY LEFT JOIN ({self._parts_select(n)}) AS p USING {pk}) WHERE _r_live"
        )

    def static_select(self, now: int | None) -> str:
        cols = [quote(c.name) for c in self.pk] + [f"{quote('x__' + c.name)} AS {quote(c.name)}" for c in self.static]
        if not self.static:
            return f"SELECT {', '.join(cols)} FROM ({self._parts_select(self._now(now))}) AS p WHERE 0"
        cond = " OR ".join(f"isNotNull({quote('x__' + c.name)})" for c in self.static)
        return f"SELECT {', '.join(cols)} FROM ({self._parts_select(self._now(now))}) AS p WHERE {cond}"

    # --- encoding events ----------------------------------------------------------------------------
    #
    # Everything that depends only on the table (encoders, sentinel text, the order-key function of
    # each clustering column) is chosen once in _compile(); per event only the cells present are
    # looked at, and an absent column costs one pre-joined string.

    def _compile(self) -> None:
        def specs(cols: Sequence[_Col]) -> list[_Spec]:
            out: list[_Spec] = []
            for c in cols:
                if c.mapping is not None:
                    out.append((c.name, c.mapping.encode, c.mapping.default, f"{c.mapping.default}\t{_MIN_TEXT}\t0", c))
                else:
                    out.append((c.name, None, "", _MIN_TEXT, c))
            return out

        def keys(cols: Sequence[_Col]) -> list[tuple[str, Callable[[Any], str]]]:
            return [(k.name, k.mapping.encode) for k in cols if k.mapping is not None]

        self._reg_specs = specs(self.regular)
        self._static_specs = specs(self.static)
        self._reg_sentinel = "\t".join(s[3] for s in self._reg_specs)
        self._static_sentinel = "\t".join(s[3] for s in self._static_specs)
        self._pk_enc = keys(self.pk)
        self._ck_enc = keys(self.ck)
        desc = ClusteringOrder.DESC
        self._ck_order = [(k.name, order_key_function(k.schema.cql_type), k.schema.clustering_order is desc) for k in self.ck]
        self._ck_hex = [(k.name, order_key_hex_function(k.schema.cql_type, k.schema.clustering_order is desc)) for k in self.ck]
        self._native_row = self._native_encoder()

    def _native_kind(self, c: _Col) -> tuple[int, int, int]:
        """(native value encoder, lo, hi) of a simple column; KIND_CALL calls its Python encoder."""
        assert _native is not None and c.mapping is not None
        cql = c.schema.cql_type.name
        if c.mapping.encode is _text_enc:
            return _native.KIND_TEXT, 0, 0
        if c.mapping.encode is _double_enc:
            return _native.KIND_DOUBLE, 0, 0
        if cql == "boolean":
            return _native.KIND_BOOL, 0, 0
        if cql == "timestamp":  # epoch ms; DateTime64 engines reject values outside its range
            return (_native.KIND_TS, *((_DT64_MIN_MS, _DT64_MAX_MS) if self.features.datetime64 else (INT64_MIN, INT64_MAX)))
        if cql in _INT_RANGES:
            return _native.KIND_INT, *_INT_RANGES[cql]
        return _native.KIND_CALL, 0, 0

    def _native_encoder(self) -> Any:
        """The compiled encoder of plain ``__rows_in`` lines (every regular column simple), or None:
        ``encode_latest`` is then pure Python. It returns None for any event outside its fast path."""
        if _native is None or self.mode != "latest" or not self._reg_specs or any(s[1] is None for s in self._reg_specs):
            return None

        def key(k: _Col, hex_fn: Callable[[Any], str] | None, desc: bool) -> tuple[Any, ...]:
            assert _native is not None and k.mapping is not None
            kind, lo, hi = self._native_kind(k)
            mode = _native.HEX_CALL
            if hex_fn is not None and k.schema.cql_type.name in _INT_NAMES:
                mode = _native.HEX_INT_DESC if desc else _native.HEX_INT_ASC
            return (k.name, kind, k.mapping.encode, lo, hi, hex_fn, mode)

        desc = ClusteringOrder.DESC
        pk = [key(k, None, False) for k in self.pk]
        hexes = dict(self._ck_hex)
        ck = [key(k, hexes[k.name], k.schema.clustering_order is desc) for k in self.ck]
        cells: list[tuple[str, int, Callable[[Any], str], str, str, int, int]] = []
        for name, enc, default, absent, c in self._reg_specs:
            assert enc is not None
            kind, lo, hi = self._native_kind(c)
            cells.append((name, kind, enc, default, absent, lo, hi))
        known = frozenset(self.by_name)
        types = (ChangeEvent, Cell, Liveness, Deletion)
        try:
            return _native.RowEncoder(pk, ck, cells, known, ChangeKind.ROW, types, _VERSION_LIMIT, _NO_ELEM if self._rows_elem else "")
        except TypeError:  # an event class without __slots__ fields (or an older module): pure Python
            return None

    @staticmethod
    def _keys(encoders: Sequence[tuple[str, Callable[[Any], str]]], key: Mapping[str, Any], out: list[str]) -> None:
        for name, enc in encoders:
            value = key.get(name, _ABSENT)
            if value is None:
                raise ValueRejected(f"key column {name} is null")
            if value is _ABSENT:
                raise ValueRejected(f"key column {name} is missing")
            out.append(enc(value))

    def _key_fields(self, keys: Sequence[_Col], event: ChangeEvent, *, defaults: bool = False) -> list[str]:
        out: list[str] = []
        for k in keys:
            assert k.mapping is not None
            if k.name in event.key:
                value = event.key[k.name]
                if value is None:
                    raise ValueRejected(f"key column {k.name} is null")
                out.append(k.mapping.encode(value))
            elif defaults:
                out.append(k.mapping.default)
            else:
                raise ValueRejected(f"key column {k.name} is missing")
        return out

    def clustering_key(self, values: Sequence[Any]) -> str:
        parts: list[bytes] = []
        for value, (_, fn, desc) in zip(values, self._ck_order, strict=False):
            key = fn(value)
            parts.append(invert(key) if desc else key)
        return b"".join(parts).hex()

    def _bound(self, bound: RangeBound | None) -> tuple[str, str]:
        if bound is None:
            return "", "0"
        return self.clustering_key(bound.values), "1" if bound.inclusive else "2"

    @staticmethod
    def _expiry(ttl: int | None, ldt: int | None) -> str:
        return str(ldt) if ttl is not None and ldt is not None else _MAX_TEXT

    def _cells(self, specs: Sequence[_Spec], event: ChangeEvent) -> tuple[list[str], list[tuple[str, list[str]]]]:
        """The wire text of the columns in ``specs`` for ``event`` (one tab-joined chunk per column:
        value, version, expiry), and its element rows as (column, 6 fields)."""
        fields: list[str] = []
        elements: list[tuple[str, list[str]]] = []
        cells = event.cells
        for name, enc, default, absent, c in specs:
            change = cells.get(name)
            if change is None:
                fields.append(absent)
                continue
            if enc is not None:
                if not isinstance(change, Cell):
                    raise ValueRejected(f"column {name} is not a collection but got element changes")
                ts = change.timestamp
                if not -_VERSION_LIMIT < ts < _VERSION_LIMIT:
                    raise ValueRejected(f"column {name}: write timestamp {ts} is outside ±2^61")
                expiring = change.ttl is not None and change.local_deletion_time is not None
                x = str(change.local_deletion_time) if expiring else _MAX_TEXT
                value = change.value
                if change.tombstone or value is None:
                    fields.append(f"{default}\t{ts * 4 + 2}\t{x}")
                    continue
                try:
                    text = enc(value)
                except ValueRejected as exc:
                    raise ValueRejected(f"column {name}: {exc}") from None
                fields.append(f"{text}\t{ts * 4 + 1 if expiring else ts * 4}\t{x}")
                continue
            if not isinstance(change, ComplexChange):
                raise ValueRejected(f"column {name} is a non-frozen collection but got a whole-cell write")
            fields.append(_MIN_TEXT if change.deletion is None else str(change.deletion.timestamp))
            typ = c.schema.cql_type
            path_t = _path_type(typ)
            for element in change.elements:
                cell = element.cell
                try:
                    if typ.name == "udt":
                        if element.path not in typ.field_names:
                            raise ValueRejected(f"column {name}: no field {element.path!r}")
                        ps = typ.field_names.index(element.path).to_bytes(2, "big").hex()
                    else:
                        ps = order_key(element.path, path_t).hex()
                    pj = _json(element.path, path_t)
                    dead = cell.tombstone
                    ev = "null" if dead else _json(cell.value, _element_type(typ, element.path))
                except (TypeError, ValueError, AttributeError) as exc:
                    raise ValueRejected(f"column {name}: element {element.path!r}: {exc}") from None
                elements.append(
                    (
                        name,
                        [
                            tsv_escape(ps),
                            tsv_escape(pj),
                            str(cell.timestamp),
                            "1" if dead else "0",
                            self._expiry(cell.ttl, cell.local_deletion_time),
                            tsv_escape(ev),
                        ],
                    )
                )
        return fields, elements

    def encode_latest(self, event: ChangeEvent) -> tuple[list[str], list[str]]:
        """TSV lines for ``__rows_in`` and ``__parts_in``. Raises ValueRejected."""
        if self._native_row is not None:
            line = self._native_row.encode(event)
            if line is not None:  # the same bytes as below (tests/test_native.py)
                return [line], []
        return self.encode_latest_python(event)

    @property
    def native_rows(self) -> Any:
        """The compiled encoder of plain ``__rows_in`` lines (``encode_chunk`` encodes a whole list
        of events into one payload and names the events it declines), or None."""
        return self._native_row

    def encode_latest_python(self, event: ChangeEvent) -> tuple[list[str], list[str]]:
        """``encode_latest`` without the compiled encoder (the reference it must match)."""
        by_name = self.by_name
        for name in event.cells:
            if name not in by_name:
                raise ValueRejected(f"column {name} is not in table {self.schema.qualified_name}")
        rows: list[str] = []
        parts: list[str] = []
        pk_fields: list[str] = []
        self._keys(self._pk_enc, event.key, pk_fields)
        row_event = event.kind is ChangeKind.ROW
        static = event.static
        if event.partition_deletion is not None or event.range_deletion is not None or (static and row_event):
            pd = _MIN_TEXT if event.partition_deletion is None else str(event.partition_deletion.timestamp)
            if event.range_deletion is not None and self.ck:
                rd = event.range_deletion
                rs, rsk = self._bound(rd.start)
                re_, rek = self._bound(rd.end)
                rng = [rs, rsk, re_, rek, str(rd.deletion.timestamp)]
            else:
                rng = ["", "0", "", "0", _MIN_TEXT]
            elements: list[tuple[str, list[str]]] = []
            if static and row_event:
                srd = _MIN_TEXT if event.row_deletion is None else str(event.row_deletion.timestamp)
                values, elements = self._cells(self._static_specs, event)
            else:
                srd, values = _MIN_TEXT, [self._static_sentinel] if self._static_specs else []
            parts.append("\t".join([*pk_fields, pd, srd, *rng, *values, *([_NO_ELEM] if self._parts_elem else [])]))
            if elements:
                sentinel = [self._static_sentinel] if self._static_specs else []
                base = [*pk_fields, _MIN_TEXT, _MIN_TEXT, "", "0", "", "0", _MIN_TEXT, *sentinel]
                parts.extend("\t".join([*base, tsv_escape(col), *f]) for col, f in elements)
        if not row_event or static:
            return rows, parts
        key = event.key
        line = pk_fields
        self._keys(self._ck_enc, key, line)
        ck = "".join([fn(key.get(name)) for name, fn in self._ck_hex])
        line.append(ck)
        line.append(_MIN_TEXT if event.row_deletion is None else str(event.row_deletion.timestamp))
        liveness = event.liveness
        if liveness is None:
            line.append(_NO_LIVENESS)
        else:
            ldt = liveness.local_deletion_time
            line.append(f"{liveness.timestamp}\t{_MIN_TEXT if liveness.ttl is None or ldt is None else ldt}")
        values, elements = self._cells(self._reg_specs, event)
        line += values
        if self._rows_elem:
            line.append(_NO_ELEM)
        rows.append("\t".join(line))
        if elements:
            sentinel = [self._reg_sentinel] if self._reg_specs else []
            base = [*line[: len(self.keys)], ck, _MIN_TEXT, _MIN_TEXT, "0", *sentinel]
            rows.extend("\t".join([*base, tsv_escape(col), *f]) for col, f in elements)
        return rows, parts

    def encode_history(self, event: ChangeEvent) -> str:
        for name in event.cells:
            if name not in self.by_name:
                raise ValueRejected(f"column {name} is not in table {self.schema.qualified_name}")
        fields = self._key_fields(self.pk, event) + self._key_fields(self.ck, event, defaults=True)
        p = event.position
        written = list(event.cells)
        deleted = [
            n for n, ch in event.cells.items() if (isinstance(ch, Cell) and ch.tombstone) or (isinstance(ch, ComplexChange) and ch.deletion)
        ]
        fields += [tsv_escape(p.node), str(p.segment_id), str(p.offset), str(p.index), event.kind.value, "1" if event.static else "0"]
        fields += [str(event.max_timestamp), _string_array(written), _string_array(deleted)]
        cells_json: dict[str, Any] = event_to_dict(event).get("cells", {})
        for c in self.regular + self.static:
            change = event.cells.get(c.name)
            if change is None:
                fields.append("\\N")
            elif c.mapping is not None:
                if not isinstance(change, Cell):
                    raise ValueRejected(f"column {c.name} is not a collection but got element changes")
                dead = change.tombstone or change.value is None
                try:
                    fields.append("\\N" if dead else c.mapping.encode(change.value))
                except ValueRejected as exc:
                    raise ValueRejected(f"column {c.name}: {exc}") from None
            else:
                fields.append(tsv_escape(orjson.dumps(cells_json[c.name]).decode("utf-8")))
        from cdc_core.serialization import event_to_json

        fields.append(tsv_escape(event_to_json(event).decode("utf-8")))
        return "\t".join(fields)


def _string_array(items: Sequence[str]) -> str:
    return "[" + ",".join(tsv_escape(string_literal(i)) for i in items) + "]"
