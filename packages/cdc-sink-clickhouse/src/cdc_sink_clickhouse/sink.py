"""The ClickHouse sink: latest-state or history tables, offsets in ``cdc_offsets`` after the data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from cdc_core.cqltypes import CqlType, value_from_json
from cdc_core.errors import PermanentError, TransientError
from cdc_core.events import ChangeEvent
from cdc_core.factories import ComponentContext
from cdc_core.positions import Position
from cdc_core.schema import ColumnSchema, TableSchema
from cdc_core.sinks import Batch, Rejected, WriteResult
from cdc_sink_clickhouse.config import ClickHouseSinkConfig
from cdc_sink_clickhouse.layout import TableLayout, UnsupportedSchema, quote, string_literal
from cdc_sink_clickhouse.mapping import Features, ValueRejected, tsv_split
from cdc_sink_clickhouse.transport import ClickHouseError, Transport, open_transport

if TYPE_CHECKING:
    from cdc_core.testing.model import TableState

__all__ = ["ClickHouseSink"]

log = structlog.get_logger()

_Item = tuple[ChangeEvent, list[str]]  # an event and its TSV lines for one input table


class _Body:
    """The body of one INSERT and the events it holds: the lines of ``events[i]`` are
    ``data[ends[i - 1]:ends[i]]`` (each ending with a newline), ``lines[i]`` counts the lines of
    ``events[:i + 1]``. Slices of it are the smaller INSERTs (row limit, bisecting)."""

    __slots__ = ("data", "ends", "events", "lines")

    def __init__(self, events: list[ChangeEvent], data: bytes, ends: list[int], lines: list[int]) -> None:
        self.events = events
        self.data = data
        self.ends = ends
        self.lines = lines

    @classmethod
    def of(cls, items: Sequence[_Item]) -> _Body:
        chunks = [("\n".join(lines) + "\n").encode("utf-8") for _, lines in items]
        return cls(
            [e for e, _ in items], b"".join(chunks), list(accumulate(map(len, chunks))), list(accumulate(len(ls) for _, ls in items))
        )

    def __len__(self) -> int:
        return len(self.events)

    def __add__(self, other: _Body) -> _Body:
        if not other.events:
            return self
        if not self.events:
            return other
        n, m = len(self.data), self.lines[-1]
        return _Body(
            self.events + other.events,
            self.data + other.data,
            self.ends + [e + n for e in other.ends],
            self.lines + [c + m for c in other.lines],
        )

    def slice(self, a: int, b: int) -> _Body:
        start, before = (self.ends[a - 1], self.lines[a - 1]) if a else (0, 0)
        return _Body(
            self.events[a:b],
            self.data[start : self.ends[b - 1]],
            [e - start for e in self.ends[a:b]],
            [c - before for c in self.lines[a:b]],
        )


_EMPTY = _Body([], b"", [], [])


def _sql_error(exc: ClickHouseError, what: str) -> Exception:
    err = exc.classify()
    err.args = (f"{what}: {err.args[0]}",)
    return err


class ClickHouseSink:
    """One configured ClickHouse destination (see docs/sinks/clickhouse.md)."""

    stores_offsets = True

    def __init__(self, config: ClickHouseSinkConfig, context: ComponentContext, transport: Transport | None = None) -> None:
        self.name = context.instance_name
        self.config = config
        self.context = context
        self._transport = transport
        self._features: Features | None = None
        self._layouts: dict[tuple[str, str], TableLayout] = {}
        # Schemas (full column definitions, types included) the table's layout already covers.
        self._covered: dict[tuple[str, str], set[TableSchema]] = {}
        self._ddl_lock = asyncio.Lock()
        self._log = log.bind(sink=self.name)
        self._last_compaction = time.monotonic()

    # --- lifecycle ----------------------------------------------------------------------------------

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("sink not started")
        return self._transport

    @property
    def features(self) -> Features:
        if self._features is None:
            raise RuntimeError("sink not started")
        return self._features

    async def start(self) -> None:
        cfg = self.config
        if self._transport is None:
            self._transport = open_transport(
                cfg.url.reveal(),
                Path(self.context.base_dir),
                user=cfg.user,
                password=cfg.password,
                ca_file=None if cfg.ssl_ca_file is None else str(Path(self.context.base_dir) / cfg.ssl_ca_file),
                verify=cfg.ssl_verify,
                max_in_flight=cfg.max_in_flight,
                request_timeout_s=cfg.request_timeout_s,
                connect_timeout_s=cfg.connect_timeout_s,
            )
        t = self.transport
        try:
            version = (await t.select("SELECT version()")).decode().strip()
            settings = await t.select("SELECT name FROM system.settings WHERE name IN ('insert_deduplication_token')")
            self._features = Features.from_version(version, settings=frozenset(settings.decode().split()))
            if cfg.create_database:
                await t.execute(f"CREATE DATABASE IF NOT EXISTS {quote(cfg.database)}")
            await t.execute(
                f"CREATE TABLE IF NOT EXISTS {self._offsets_table} (sink String, node String, segment_id Int64, offset Int64, idx Int64, "
                "committed_at DateTime) ENGINE = ReplacingMergeTree ORDER BY (sink, node, segment_id, offset, idx)"
            )
        except ClickHouseError as exc:
            raise _sql_error(exc, f"clickhouse {t.description}: start") from None
        self._log.info("clickhouse sink started", target=t.description, engine_version=self.features.label, database=cfg.database)

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()

    @property
    def _offsets_table(self) -> str:
        return f"{quote(self.config.database)}.cdc_offsets"

    # --- offsets --------------------------------------------------------------------------------------

    async def committed_positions(self) -> Mapping[str, Position]:
        sql = (
            "SELECT node, tupleElement(p, 1), tupleElement(p, 2), tupleElement(p, 3) FROM "
            f"(SELECT node, max((segment_id, offset, idx)) AS p FROM {self._offsets_table} FINAL "
            f"WHERE sink = {string_literal(self.name)} GROUP BY node)"
        )
        try:
            rows = tsv_split(await self.transport.select(sql))
        except ClickHouseError as exc:
            raise _sql_error(exc, "reading committed positions") from None
        out: dict[str, Position] = {}
        for node, seg, off, idx in rows:
            out[str(node)] = Position(node=str(node), segment_id=int(str(seg)), offset=int(str(off)), index=int(str(idx)))
        return out

    # --- tables ---------------------------------------------------------------------------------------

    def layout(self, schema: TableSchema) -> TableLayout:
        key = (schema.keyspace, schema.table)
        layout = self._layouts.get(key)
        if layout is None or len(layout.schema.columns) < len(schema.columns) or layout.schema.columns != schema.columns:
            base = self.config.table_name.format(keyspace=schema.keyspace, table=schema.table)
            layout = TableLayout(
                schema,
                self.features,
                self.config.database,
                base,
                self.config.mode_of(schema.keyspace, schema.table),
                self.config.partition_by,
            )
        return layout

    async def _existing_columns(self, layout: TableLayout) -> dict[str, set[str]]:
        pattern = string_literal(layout.base.replace("_", "\\_") + "%")
        sql = f"SELECT table, name FROM system.columns WHERE database = {string_literal(layout.database)} AND table LIKE {pattern}"
        out: dict[str, set[str]] = {}
        for table, name in tsv_split(await self.transport.select(sql)):
            out.setdefault(str(table), set()).add(str(name))
        return out

    async def ensure_table(self, schema: TableSchema) -> TableLayout:
        """Create the table's objects, or evolve them for what a newer schema brought (new columns,
        wider types such as a UDT's new field) before its data."""
        key = (schema.keyspace, schema.table)
        given = schema
        known = self._layouts.get(key)
        if known is not None and schema in self._covered[key]:
            return known
        async with self._ddl_lock:
            known = self._layouts.get(key)
            if known is not None and schema in self._covered[key]:
                return known
            if known is not None:
                schema = _merge_schemas(known.schema, schema)
                if set(schema.columns) == set(known.schema.columns):
                    self._covered[key].add(given)
                    return known
            layout = self.layout(schema)
            statements = 0
            for attempt in range(4):
                try:
                    # Every statement is idempotent and ordered so that no input table is ever
                    # without a materialized view (other agents insert concurrently).
                    stmts = layout.plan(await self._existing_columns(layout))
                    for stmt in stmts:
                        await self.transport.execute(stmt)
                    statements += len(stmts)
                    break
                except ClickHouseError as exc:
                    # Another agent may be running the same DDL (column/view already there):
                    # look again and re-plan.
                    if attempt == 3 or exc.is_transient:
                        raise _sql_error(exc, f"creating {layout.view}") from None
                    self._log.info("clickhouse DDL raced, re-planning", table=layout.base, error=str(exc)[:200])
            if statements:
                self._log.info("clickhouse table created or evolved", table=layout.base, statements=statements)
            self._layouts[key] = layout
            self._covered[key] = {given, schema}
            return layout

    # --- writing --------------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> WriteResult:
        log_ = self._log.bind(batch_id=batch.batch_id)
        started = time.perf_counter()
        by_table: dict[tuple[str, str], list[ChangeEvent]] = {}
        schemas: dict[tuple[str, str], list[TableSchema]] = {}
        last: TableSchema | None = None
        bucket: list[ChangeEvent] = []
        for event in batch.events:
            schema = event.schema
            if schema is not last:  # runs of events share one schema object: look it up once per run
                key = (schema.keyspace, schema.table)
                bucket = by_table.setdefault(key, [])
                versions = schemas.setdefault(key, [])
                if not any(s is schema for s in versions):
                    versions.append(schema)
                last = schema
            bucket.append(event)
        rejected: list[Rejected] = []
        # Encoding is pure Python on the event loop; the server works on another core. Events are
        # encoded in chunks and each chunk's INSERTs start before the next chunk is encoded, so
        # encoding overlaps the inserts in flight (at most max_in_flight at a time).
        semaphore = asyncio.Semaphore(self.transport.max_in_flight)
        tasks: list[asyncio.Task[list[Rejected]]] = []
        chunk_size = self.config.encode_chunk_events

        async def run(layout: TableLayout, suffix: str, cols: list[str], body: _Body, token: str) -> list[Rejected]:
            async with semaphore:
                return await self._insert(layout, suffix, cols, body, token)

        def start(layout: TableLayout, suffix: str, cols: list[str], body: _Body) -> None:
            token = f"{batch.batch_id}-{len(tasks)}"
            tasks.append(asyncio.ensure_future(run(layout, suffix, cols, body, token)))

        try:
            for key, events in by_table.items():
                try:
                    for schema in schemas[key]:  # every version in the batch (merged: the widest wins)
                        layout = await self.ensure_table(schema)
                except UnsupportedSchema as exc:
                    log_.warning("clickhouse cannot store this table", error=str(exc))
                    rejected += [Rejected(event=e, error=str(exc), error_type="UnsupportedSchema") for e in events]
                    continue
                latest = layout.mode == "latest"
                if latest:
                    rows_cols = [quote(n) for n, _ in layout.rows_wire()]
                    parts_cols = [quote(n) for n, _ in layout.parts_wire()]
                else:
                    hist_cols = [quote(n) for n, _ in layout.history_wire()]
                for begin in range(0, len(events), chunk_size):
                    chunk = events[begin : begin + chunk_size]
                    if latest:
                        rows, parts, refused = self._encode_latest(layout, chunk)
                        if rows:
                            start(layout, "__rows_in", rows_cols, rows)
                        if parts:
                            start(layout, "__parts_in", parts_cols, parts)
                    else:
                        hist, refused = self._encode_history(layout, chunk)
                        if hist:
                            start(layout, "__in", hist_cols, hist)
                    rejected += refused
                    await asyncio.sleep(0)  # let the inserts just started send their bodies
            results = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        seen: set[int] = {id(r.event) for r in rejected}
        for refused_now in results:
            for one in refused_now:
                if id(one.event) not in seen:
                    seen.add(id(one.event))
                    rejected.append(one)
        if rejected and batch.dead_letter is not None:
            # The refused events must be in the DLQ before the offsets move past them (a crash in
            # between would lose them otherwise); if this raises, the offsets stay where they were.
            await batch.dead_letter(rejected)
        await self._commit(batch.positions)
        interval = self.config.compact_interval_s
        if interval is not None and time.monotonic() - self._last_compaction >= interval:
            self._last_compaction = time.monotonic()
            for layout in list(self._layouts.values()):
                try:
                    await self.compact(layout.schema)
                except (TransientError, PermanentError) as exc:
                    # The batch is written and committed; compaction only bounds read cost and is
                    # retried at the next interval, so its failure must not fail the batch.
                    log_.warning("clickhouse compaction failed", table=layout.base, error=str(exc)[:300])
        log_.debug(
            "clickhouse batch written",
            events=len(batch.events),
            rejected=len(rejected),
            inserts=len(tasks),
            seconds=round(time.perf_counter() - started, 4),
        )
        return WriteResult(rejected=rejected)

    @staticmethod
    def _encode_latest(layout: TableLayout, events: list[ChangeEvent]) -> tuple[_Body, _Body, list[Rejected]]:
        rows = _EMPTY
        rest = events
        native = layout.native_rows
        if native is not None:
            # One native call for the whole chunk: the payload of every plain row write, in order;
            # the events it declines go through the Python encoder (which may reject them).
            data, ends, declined = native.encode_chunk(events)
            if declined:
                skip = set(declined)
                taken = [e for i, e in enumerate(events) if i not in skip]
                rest = [events[i] for i in declined]
            else:
                taken, rest = events, []
            rows = _Body(taken, data, ends, list(range(1, len(taken) + 1)))
        py_rows: list[_Item] = []
        parts: list[_Item] = []
        rejected: list[Rejected] = []
        encode = layout.encode_latest_python
        for event in rest:
            try:
                r, p = encode(event)
            except (ValueRejected, TypeError, ValueError, AttributeError, KeyError) as exc:
                rejected.append(Rejected(event=event, error=f"{layout.view}: {exc}", error_type="ValueRejected"))
                continue
            if r:
                py_rows.append((event, r))
            if p:
                parts.append((event, p))
        return rows + _Body.of(py_rows), _Body.of(parts), rejected

    @staticmethod
    def _encode_history(layout: TableLayout, events: Sequence[ChangeEvent]) -> tuple[_Body, list[Rejected]]:
        hist: list[_Item] = []
        rejected: list[Rejected] = []
        for event in events:
            try:
                hist.append((event, [layout.encode_history(event)]))
            except (ValueRejected, TypeError, ValueError, AttributeError, KeyError) as exc:
                rejected.append(Rejected(event=event, error=f"{layout.view}: {exc}", error_type="ValueRejected"))
        return _Body.of(hist), rejected

    async def _insert(
        self, layout: TableLayout, suffix: str, columns: list[str], body: _Body, token: str, *, top: bool = True
    ) -> list[Rejected]:
        """Insert ``body``; on a non-transient server error bisect down to the events at fault."""
        limit = self.config.max_rows_per_insert
        if body.lines[-1] > limit and len(body) > 1:
            out: list[Rejected] = []
            first = 0
            for i in range(1, len(body)):
                if body.lines[i] - (body.lines[first - 1] if first else 0) > limit:
                    out += await self._insert(layout, suffix, columns, body.slice(first, i), f"{token}-{len(out)}")
                    first = i
            return out + await self._insert(layout, suffix, columns, body.slice(first, len(body)), f"{token}-c")
        payload = body.data
        settings = {"insert_deduplication_token": token} if self.features.dedup_token else {}
        try:
            await self.transport.insert(layout.q(suffix), columns, payload, settings)
            return []
        except ClickHouseError as exc:
            if exc.is_transient:
                raise _sql_error(exc, f"inserting into {layout.q(suffix)}") from None
            # Any other server error may be caused by some of the events (not only the codes known
            # as data errors): bisect down to them. Only when *every* event of the insert fails on
            # its own with an error that is not a data error is the failure the batch's (a missing
            # grant, a broken table): then nothing is rejected and the whole batch is permanent.
            if len(body) == 1:
                if top and not exc.is_data_error:
                    raise _sql_error(exc, f"inserting into {layout.q(suffix)}") from None
                self._log.warning("clickhouse rejected an event", table=layout.base, code=exc.code, position=str(body.events[0].position))
                kind = "ClickHouseDataError" if exc.is_data_error else "ClickHouseError"
                return [Rejected(event=body.events[0], error=f"{layout.q(suffix)}: {exc}", error_type=kind)]
            half = len(body) // 2
            culprits = await self._insert(layout, suffix, columns, body.slice(0, half), f"{token}-a", top=False)
            culprits += await self._insert(layout, suffix, columns, body.slice(half, len(body)), f"{token}-b", top=False)
            if top and len(culprits) == len(body) and not any(r.error_type == "ClickHouseDataError" for r in culprits):
                raise _sql_error(exc, f"inserting into {layout.q(suffix)}") from None
            return culprits

    async def _commit(self, positions: Mapping[str, Position]) -> None:
        if not positions:
            return
        now = int(time.time())
        lines = [
            f"{self.name}\t{node}\t{p.segment_id}\t{p.offset}\t{p.index}\t{now}".replace("\n", " ") for node, p in sorted(positions.items())
        ]
        try:
            await self.transport.insert(
                self._offsets_table,
                ["sink", "node", "segment_id", "offset", "idx", "committed_at"],
                ("\n".join(lines) + "\n").encode("utf-8"),
                {},
            )
        except ClickHouseError as exc:
            raise _sql_error(exc, "committing positions") from None

    async def compact(self, schema: TableSchema, margin_s: float | None = None) -> None:
        """Fold the table's log rows inserted more than ``margin_s`` (default ``compact_margin_s``)
        ago into its aggregate-state tables, then delete them from the log.

        Safe at any moment and from any number of agents: between the INSERT and the DELETE (or
        after a crash in between) the rows are both logged and compacted, which the idempotent
        states absorb; a second compaction of the same rows only re-adds equal states. Rows of an
        INSERT still in flight are newer than the cut-off (the margin is far above the request
        timeout), so the DELETE never removes rows the INSERT ... SELECT did not see."""
        layout = await self.ensure_table(schema)
        if layout.mode != "latest":
            return
        margin = self.config.compact_margin_s if margin_s is None else margin_s
        try:
            # One cut-off literal for both statements, from the server's clock (it stamps i__at).
            server_now = int((await self.transport.select("SELECT toUInt32(now())")).decode().strip())
            where = f"i__at < toDateTime({int(server_now - margin)})"
            existing = await self._existing_columns(layout)
            for kind, wire in (("__rows", layout.rows_wire()), ("__parts", layout.parts_wire())):
                # An agent still on an older schema would fold only the columns it knows and then
                # delete the rows, newer columns' cells included: it leaves the log alone.
                unknown = existing.get(layout.base + kind + "_in", set()) - {n for n, _ in wire} - {"i__at"}
                if unknown:
                    self._log.info("clickhouse compaction skipped: the log has newer columns", table=layout.base, columns=sorted(unknown))
                    return
            for kind in ("__rows", "__parts"):
                storage = layout.rows_storage() if kind == "__rows" else layout.parts_storage()
                cols = ", ".join(quote(n) for n, _ in storage)
                await self.transport.execute(f"INSERT INTO {layout.q(kind)} ({cols}) {layout.state_select(kind, where)}")
                await self.transport.execute(f"ALTER TABLE {layout.q(kind + '_in')} DELETE WHERE {where}")
        except ClickHouseError as exc:
            raise _sql_error(exc, f"compacting {layout.view}") from None
        self._log.info("clickhouse log compacted", table=layout.base, margin_s=margin)

    # --- reading (tests, tools) -------------------------------------------------------------------------

    async def read_state(self, schema: TableSchema, now: int | None = None) -> TableState:
        """The latest state as the reference model's values, read from the view (``now`` None) or
        from the view's query with TTLs judged at ``now``."""
        from cdc_core.testing.model import TableState

        layout = await self.ensure_table(schema)
        keys = layout.keys
        out_cols = layout.keys + layout.static + layout.regular

        def expr(c: Any) -> str:
            return c.mapping.read_expr.format(quote(c.name)) if c.mapping is not None else quote(c.name)

        src = layout.view if now is None else f"({layout.latest_select(now)})"
        sql = f"SELECT {', '.join(expr(c) for c in out_cols)} FROM {src}"
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for fields in tsv_split(await self.transport.select(sql)):
            values = {c.name: _decode(c, f) for c, f in zip(out_cols, fields, strict=True)}
            key = tuple(values[k.name] for k in keys)
            rows[key] = {c.name: values[c.name] for c in layout.keys + layout.regular}
        statics: dict[tuple[Any, ...], dict[str, Any]] = {}
        if layout.static:
            s_cols = layout.pk + layout.static
            ssrc = layout.static_view if now is None else f"({layout.static_select(now)})"
            sql = f"SELECT {', '.join(expr(c) for c in s_cols)} FROM {ssrc}"
            for fields in tsv_split(await self.transport.select(sql)):
                values = {c.name: _decode(c, f) for c, f in zip(s_cols, fields, strict=True)}
                statics[tuple(values[k.name] for k in layout.pk)] = {c.name: values[c.name] for c in layout.static}
        return TableState(rows=rows, statics=statics)


def _type_width(typ: CqlType) -> int:
    return len(typ.field_names) + sum(_type_width(p) for p in typ.params)


def _merge_schemas(known: TableSchema, new: TableSchema) -> TableSchema:
    """``new``'s columns, plus the known ones it lacks (Cassandra drops are not undone here); for a
    column in both, the wider type (Cassandra only widens a column's type: a UDT gains fields), so
    an event still on the old schema never narrows the layout back."""
    old = {c.name: c for c in known.columns}
    cols: list[ColumnSchema] = []
    for c in new.columns:
        prev = old.get(c.name)
        if prev is not None and prev != c and prev.kind is c.kind and _type_width(prev.cql_type) > _type_width(c.cql_type):
            c = prev
        cols.append(c)
    names = {c.name for c in new.columns}
    cols += [c for c in known.columns if c.name not in names]
    return TableSchema(keyspace=new.keyspace, table=new.table, id=new.id, columns=tuple(cols))


def _decode(col: Any, text: str | None) -> Any:
    if text is None:
        return None
    if col.mapping is not None:
        return col.mapping.decode(text)
    return decode_collection(text, col.schema.cql_type)


def decode_collection(text: str, typ: CqlType) -> Any:
    """A non-frozen collection/UDT column's JSON text (as the view renders it) → model value."""
    obj = orjson.loads(text)
    if typ.name == "list":
        return tuple(value_from_json(v, typ.params[0]) for v in obj)
    if typ.name == "set":
        return frozenset(value_from_json(v, typ.params[0]) for v in obj)
    if typ.name == "map":
        return {value_from_json(k, typ.params[0]): value_from_json(v, typ.params[1]) for k, v in obj}
    if typ.name == "udt":
        return {f: value_from_json(obj.get(f), t) for f, t in zip(typ.field_names, typ.params, strict=True)}
    raise PermanentError(f"not a multi-cell type: {typ}")
