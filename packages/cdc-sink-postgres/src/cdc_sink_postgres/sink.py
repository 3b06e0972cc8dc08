"""The PostgreSQL sink: one transaction per batch holding its data and its offsets.

Per batch: events are grouped by table; each table's destination is created or evolved first
(its own short transaction, serialised across writers by an advisory lock); then, in ONE
transaction, each table's pre-merged records are COPied into temp staging tables and merged with
one statement per relation, and the batch's positions are upserted into ``cdc_offsets``.

A value PostgreSQL refuses (data exception / integrity violation) is found by bisecting that
table's events under savepoints; only the culprit events are rejected, the rest commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from cdc_core.errors import PermanentError, TransientError
from cdc_core.events import ChangeEvent
from cdc_core.factories import ComponentContext
from cdc_core.positions import Position
from cdc_core.schema import TableSchema
from cdc_core.sinks import Batch, Rejected, WriteResult
from cdc_sink_postgres.config import PostgresSinkConfig
from cdc_sink_postgres.ddl import COLUMNS_TABLE, LatestStateDdl
from cdc_sink_postgres.errors import Redactor, is_data_error, is_transient
from cdc_sink_postgres.history import HistoryTable
from cdc_sink_postgres.idents import qualify
from cdc_sink_postgres.layout import ColumnLayout, TableLayout
from cdc_sink_postgres.merge import LatestStateMerges, latest_state_merges
from cdc_sink_postgres.offsets import OffsetTable
from cdc_sink_postgres.premerge import TableDelta, row_record
from cdc_sink_postgres.tls import build_ssl
from cdc_sink_postgres.typemap import ValueRejected

__all__ = ["PostgresSink", "TableTarget"]

log = structlog.get_logger(__name__)


class TableTarget:
    """One replicated table in one mode, with its cached statements."""

    def __init__(self, layout: TableLayout, mode: str, history: HistoryTable | None, merges: LatestStateMerges | None) -> None:
        self.layout = layout
        self.mode = mode
        self.history = history
        self.merges = merges


class PostgresSink:
    """Writes change events into PostgreSQL; see docs/sinks/postgres.md."""

    stores_offsets = True
    ddl_class: type[LatestStateDdl] = LatestStateDdl
    history_class: type[HistoryTable] = HistoryTable

    def __init__(self, name: str, config: PostgresSinkConfig, context: ComponentContext | None = None) -> None:
        self.name = name
        self.config = config
        self.base_dir = context.base_dir if context is not None else Path(".")
        self.ddl = self.ddl_class()
        self.offsets = OffsetTable(config.schema, config.offsets_table)
        self._redact = Redactor([config.dsn.reveal()] + ([config.ssl.key_password.reveal()] if config.ssl.key_password else []))
        self._pool: Any = None
        self._targets: dict[int, tuple[TableSchema, TableTarget]] = {}  # id(schema) → target
        self._by_schema: dict[TableSchema, TableTarget] = {}

    def __repr__(self) -> str:
        return f"PostgresSink(name={self.name!r}, schema={self.config.schema!r})"

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        cfg = self.config
        try:
            self._pool = await asyncpg.create_pool(
                dsn=cfg.dsn.reveal(),
                min_size=cfg.pool_min_size,
                max_size=cfg.pool_max_size,
                timeout=cfg.connect_timeout,
                command_timeout=cfg.command_timeout,
                statement_cache_size=cfg.statement_cache_size,
                ssl=build_ssl(cfg.ssl, self.base_dir),
                server_settings={"application_name": cfg.application_name},
            )
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"cdc:{cfg.schema}")
                for stmt in self.ddl.schema_statements(cfg.schema):
                    await conn.execute(stmt)
                await conn.execute(self.offsets.create_sql)
                await self.prepare_database(conn)
        except BaseException as exc:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise self._translate(exc, "connecting") from None
        log.info("postgres sink started", sink=self.name, schema=cfg.schema)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:
                pool.terminate()

    async def committed_positions(self) -> Mapping[str, Position]:
        try:
            async with self._acquire() as conn:
                return await self.offsets.load(conn, self.name)
        except (TransientError, PermanentError):
            raise
        except BaseException as exc:
            raise self._translate(exc, "reading offsets") from None

    def _acquire(self) -> Any:
        if self._pool is None:
            raise TransientError(f"postgres sink {self.name} is not started")
        return self._pool.acquire()

    def _translate(self, exc: BaseException, doing: str) -> BaseException:
        """The project's error for ``exc``, its message free of credentials."""
        if isinstance(exc, TransientError | PermanentError):
            return exc
        if not isinstance(exc, Exception):
            return exc  # CancelledError, KeyboardInterrupt: propagate as they are
        message = self._redact(f"postgres sink {self.name}: {doing} failed: {type(exc).__name__}: {exc}")
        return TransientError(message) if is_transient(exc) else PermanentError(message)

    # --- extension points (for sinks built on this one, e.g. TimescaleDB) -------------------------

    async def prepare_database(self, conn: Any) -> None:
        """Called once by :meth:`start` inside its setup transaction (after the schema and the
        offsets table exist); the default does nothing."""

    def table_mode(self, schema: TableSchema) -> str:
        """``"latest"`` or ``"history"`` for a replicated table (default: from the config)."""
        return self.config.mode_for(schema.keyspace, schema.table)

    def history_table(self, layout: TableLayout) -> HistoryTable:
        """The history table of ``layout`` (default: ``history_class(layout)``)."""
        return self.history_class(layout)

    # --- destinations ---------------------------------------------------------------------------

    async def target_for(self, schema: TableSchema) -> TableTarget:
        cached = self._targets.get(id(schema))
        if cached is not None and cached[0] is schema:
            return cached[1]
        target = self._by_schema.get(schema)
        if target is None:
            target = await self._ensure(schema)
            self._by_schema[schema] = target
        self._targets[id(schema)] = (schema, target)
        return target

    async def _ensure(self, schema: TableSchema) -> TableTarget:
        cfg = self.config
        mode = self.table_mode(schema)
        base = cfg.destination_name(schema.keyspace, schema.table)
        overrides = dict(cfg.table_config(schema.keyspace, schema.table).column_types)
        async with self._acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"cdc:{cfg.schema}.{base}")
            if mode == "history":
                layout = TableLayout.from_schema(schema, pg_schema=cfg.schema, base=base, overrides=overrides)
                history = self.history_table(layout)
                if cfg.create_tables:
                    for stmt in history.create_statements():
                        await conn.execute(stmt)
                return TableTarget(layout, mode, history, None)
            layout = await self._evolve(conn, schema, base, overrides)
        return TableTarget(layout, mode, None, latest_state_merges(layout))

    async def _evolve(self, conn: Any, schema: TableSchema, base: str, overrides: dict[str, str]) -> TableLayout:
        """Create or evolve the latest-state relations of ``schema`` (inside the DDL lock)."""
        cfg = self.config
        columns_table = qualify(cfg.schema, COLUMNS_TABLE)
        rows = await conn.fetch(
            f"SELECT column_name, cql_type, kind, position, descending, dropped, override_type FROM {columns_table} "
            "WHERE destination = $1 ORDER BY ordinal",
            base,
        )
        from cdc_core.schema import ColumnKind

        known = [
            ColumnLayout(
                name=r["column_name"],
                cql_type=r["cql_type"],
                kind=ColumnKind(r["kind"]),
                position=r["position"],
                descending=r["descending"],
                dropped=r["dropped"],
                override_sql=r["override_type"],
            )
            for r in rows
        ]
        known_by_name = {c.name: c for c in known}
        layout = TableLayout.from_schema(schema, pg_schema=cfg.schema, base=base, overrides=overrides, known=known)
        added = [c for c in layout.columns if c.name not in known_by_name]
        changed_drop = [c for c in layout.columns if c.name in known_by_name and c.dropped != known_by_name[c.name].dropped]
        if not added and not changed_drop:
            return layout
        if not cfg.create_tables:
            raise PermanentError(f"table {cfg.schema}.{base} lacks columns {[c.name for c in added]} and create_tables is off")
        for stmt in self.ddl.create_statements(layout):
            await conn.execute(stmt)
        if known:
            for col in added:
                if col.kind.value in ("regular", "static"):
                    for stmt in self.ddl.add_column_statements(layout, col):
                        await conn.execute(stmt)
        await conn.executemany(
            f"INSERT INTO {columns_table} (destination, column_name, cql_type, kind, position, descending, dropped, override_type) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (destination, column_name) DO UPDATE SET dropped = excluded.dropped",
            [(base, c.name, c.cql_type, c.kind.value, c.position, c.descending, c.dropped, c.override_sql) for c in added + changed_drop],
        )
        for stmt in self.ddl.view_statements(layout):
            await conn.execute(stmt)
        log.info(
            "postgres sink evolved table",
            sink=self.name,
            table=f"{cfg.schema}.{base}",
            added=[c.name for c in added],
            dropped=[c.name for c in changed_drop if c.dropped],
        )
        return layout

    # --- writing --------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> WriteResult:
        if self._pool is None:
            raise TransientError(f"postgres sink {self.name} is not started")
        try:
            groups: dict[int, tuple[TableTarget, list[ChangeEvent]]] = {}
            by_table: dict[tuple[str, str], TableTarget] = {}
            for event in batch.events:
                target = await self.target_for(event.schema)
                # Events of one table under different schema versions: the widest layout wins.
                key = (event.schema.keyspace, event.schema.table)
                current = by_table.get(key)
                if current is None or len(target.layout.columns) > len(current.layout.columns):
                    by_table[key] = target
            for event in batch.events:
                target = by_table[(event.schema.keyspace, event.schema.table)]
                groups.setdefault(id(target), (target, []))[1].append(event)
            rejected: list[Rejected] = []
            async with self._acquire() as conn, conn.transaction():
                for target, events in groups.values():
                    rejected += await self._apply(conn, target, events)
                await self.offsets.store(conn, self.name, batch.positions)
        except (TransientError, PermanentError):
            raise
        except BaseException as exc:
            raise self._translate(exc, f"writing batch {batch.batch_id}") from None
        if rejected:
            log.warning("postgres sink rejected events", sink=self.name, batch_id=batch.batch_id, rejected=len(rejected))
        return WriteResult(rejected=rejected)

    async def _apply(self, conn: Any, target: TableTarget, events: Sequence[ChangeEvent]) -> list[Rejected]:
        """Apply ``events`` under a savepoint; on a data error bisect to the culprits."""
        rejected: list[Rejected] = []
        good: list[ChangeEvent] = []
        prepared = self._prepare(target, events, rejected, good)
        if not good:
            return rejected
        try:
            async with conn.transaction():
                await self._run(conn, target, prepared)
        except Exception as exc:
            if not is_data_error(exc):
                raise
            if len(good) == 1:
                rejected.append(Rejected(event=good[0], error=self._redact(f"{type(exc).__name__}: {exc}")))
                return rejected
            mid = len(good) // 2
            rejected += await self._apply(conn, target, good[:mid])
            rejected += await self._apply(conn, target, good[mid:])
        return rejected

    def _prepare(self, target: TableTarget, events: Sequence[ChangeEvent], rejected: list[Rejected], good: list[ChangeEvent]) -> Any:
        if target.history is not None:
            records: list[tuple[Any, ...]] = []
            for event in events:
                try:
                    records.append(target.history.record(event))
                    good.append(event)
                except ValueRejected as exc:
                    rejected.append(Rejected(event=event, error=str(exc)))
            return records
        delta = TableDelta(target.layout)
        for event in events:
            try:
                delta.add(event)
                good.append(event)
            except ValueRejected as exc:
                rejected.append(Rejected(event=event, error=str(exc)))
        return delta

    async def _run(self, conn: Any, target: TableTarget, prepared: Any) -> None:
        if target.history is not None:
            await target.history.staged_insert().run(conn, prepared)
            return
        delta: TableDelta = prepared
        merges = target.merges
        assert merges is not None
        layout = target.layout
        if delta.partition_deletions:
            await merges.partition_deletions.run(conn, [(*pk, ts) for pk, ts in delta.partition_deletions.items()])
        if delta.range_deletions and merges.range_deletions is not None:
            await merges.range_deletions.run(
                conn,
                [
                    (*pk, *r.start, r.start_len, r.start_incl, *r.end, r.end_len, r.end_incl, r.bounds, ts)
                    for (pk, _), (r, ts) in delta.range_deletions.items()
                ],
            )
        if delta.rows:
            await merges.rows.run(conn, [row_record(k, d, layout.regular) for k, d in delta.rows.items()])
        if delta.statics and merges.statics is not None:
            await merges.statics.run(conn, [row_record(k, d, layout.static) for k, d in delta.statics.items()])


def create_sink(config: PostgresSinkConfig, context: ComponentContext) -> PostgresSink:
    return PostgresSink(context.instance_name, config, context)
