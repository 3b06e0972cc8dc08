"""The PostgreSQL sink: one transaction per batch holding its data and its offsets.

Per batch: events are grouped by table; each table's destination is created or evolved first
(its own short transaction, serialised across writers by an advisory lock); then, in ONE
transaction, each table's pre-merged records are COPied into temp staging tables and merged with
one statement per relation, and the batch's positions are upserted into ``cdc_offsets``. (With
overlapping writes, a batch of latest-state tables commits its rows before its turn and upserts
its positions in a statement of their own after it: see ``write``.)

A statement PostgreSQL refuses for a non-transient reason (a value, an integrity violation, an
over-long key …) is traced by bisecting each table's events under savepoints; only the culprit
events are rejected, the rest commits. Rejected events are handed to ``batch.dead_letter`` before
the transaction moving the offsets commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import weakref
from collections import Counter, OrderedDict
from collections.abc import Collection, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import structlog

from cdc_core.errors import PermanentError, TransientError
from cdc_core.events import ChangeEvent
from cdc_core.factories import ComponentContext
from cdc_core.positions import Position
from cdc_core.schema import TableSchema
from cdc_core.sinks import Batch, Rejected, WriteResult
from cdc_core.turns import Turn
from cdc_sink_postgres.compaction import TombstoneCompaction
from cdc_sink_postgres.config import PostgresSinkConfig
from cdc_sink_postgres.ddl import COLUMNS_TABLE, LatestStateDdl
from cdc_sink_postgres.errors import Redactor, is_bisectable, is_transient
from cdc_sink_postgres.history import HistoryTable
from cdc_sink_postgres.idents import qualify, quote_ident
from cdc_sink_postgres.layout import ColumnLayout, TableLayout
from cdc_sink_postgres.merge import LatestStateMerges, StagedMerge, latest_state_merges
from cdc_sink_postgres.native import Payload, encode_copy_sliced
from cdc_sink_postgres.offsets import OffsetTable
from cdc_sink_postgres.overlap import EarlySlot, EarlySlots, turn_due
from cdc_sink_postgres.premerge import FoldPlan, NeedsEagerFold, RecordFold, StagingRecords
from cdc_sink_postgres.tls import build_ssl
from cdc_sink_postgres.typemap import ValueRejected

__all__ = ["PostgresSink", "TableTarget"]

log = structlog.get_logger(__name__)


T = TypeVar("T")

_serials = itertools.count(1)

# Events folded between two returns to the event loop (≈ 0.5–1 ms of folding: the loop then
# hears of a finished statement of the write in flight before this one that much late at most).
FOLD_SLICE = 250
# Tombstone keys noted for compaction (cdc_sink_postgres.compaction) beyond which it runs before
# its interval is up.
COMPACTION_MAX_KEYS = 100_000


class TableTarget:
    """One replicated table in one mode, with its cached statements. ``serial`` grows with every
    target built: a later one reflects the newest registry (wider types, drops)."""

    def __init__(self, layout: TableLayout, mode: str, history: HistoryTable | None, merges: LatestStateMerges | None) -> None:
        self.serial = next(_serials)
        self.layout = layout
        self.mode = mode
        self.history = history
        self.merges = merges
        self.plan = FoldPlan(layout) if merges is not None else None
        self.evolved = False  # set when building it changed the table's registry
        self.refusal: str | None = None  # why this table cannot be stored (its events are rejected)
        self.history_insert = history.staged_insert() if history is not None else None


class PostgresSink:
    """Writes change events into PostgreSQL; see docs/sinks/postgres.md."""

    stores_offsets = True
    # The lane's batch size unless the configuration sets batch.max_events: per batch written
    # through COPY the sink pays ≈ 3.6 ms beyond its per-row work (a transaction, staging,
    # offsets, a commit). Small merges go inline instead; from 1,000 rows the sink is ahead of a
    # naive executemany, most so from 5,000 (docs/benchmarks.md).
    preferred_batch_events = 10_000
    ddl_class: type[LatestStateDdl] = LatestStateDdl
    history_class: type[HistoryTable] = HistoryTable

    def __init__(self, name: str, config: PostgresSinkConfig, context: ComponentContext | None = None) -> None:
        self.name = name
        self.config = config
        # Batches the engine may hand over while the previous one is being written: the next
        # one's fold and encoding overlap this one's merge and commit, and with a connection of
        # its own its staging too (see _run_all). Writes waiting for their turn hold at most
        # pool_max_size - 1 connections (cdc_sink_postgres.overlap.EarlySlots): the write whose
        # turn has come always gets one.
        self.overlapping_writes = max(1, config.overlapping_writes)
        self.base_dir = context.base_dir if context is not None else Path(".")
        self.ddl = self.ddl_class()
        self.offsets = OffsetTable(config.schema, config.offsets_table)
        self._redact = Redactor([config.dsn.reveal()] + ([config.ssl.key_password.reveal()] if config.ssl.key_password else []))
        self._pool: Any = None
        # Destinations per schema, by value (an LRU, bounded: schema objects come and go with
        # every schema change and restart of a reader).
        self._targets: OrderedDict[TableSchema, TableTarget] = OrderedDict()
        self._views_refreshed: set[str] = set()  # destinations whose views this process (re)wrote
        # Per pooled connection, the staging tables its session already has.
        self._staging: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._fold_lock = asyncio.Lock()
        self._early_slots = EarlySlots(config.pool_max_size)
        self._compaction = TombstoneCompaction(COMPACTION_MAX_KEYS)
        self._compaction_due = asyncio.Event()
        self._compaction_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresSink(name={self.name!r}, schema={self.config.schema!r})"

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        import asyncpg

        cfg = self.config
        try:
            self._pool = await asyncpg.create_pool(
                dsn=cfg.dsn.reveal(),
                min_size=cfg.pool_min_size,
                max_size=cfg.pool_max_size,
                timeout=cfg.connect_timeout,
                command_timeout=cfg.command_timeout,
                statement_cache_size=cfg.statement_cache_size,
                ssl=build_ssl(cfg.ssl, self.base_dir),  # type: ignore[arg-type]  # a validated sslmode string
                server_settings={**cfg.session_settings(), "application_name": cfg.application_name},
                reset=_keep_session,
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
        if cfg.tombstone_compaction_interval > 0:
            self._compaction_task = asyncio.create_task(self._compact_periodically(cfg.tombstone_compaction_interval))
        log.info("postgres sink started", sink=self.name, schema=cfg.schema)

    async def close(self) -> None:
        task, self._compaction_task = self._compaction_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
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

    max_cached_targets = 512

    async def target_for(self, schema: TableSchema) -> TableTarget:
        """The destination of ``schema`` (created or evolved on first use; cached by value)."""
        target = self._targets.get(schema)
        if target is not None:
            self._targets.move_to_end(schema)
            return target
        target = await self._ensure(schema)
        if target.evolved:
            # Other schema versions of the table were built against an older registry: rebuild
            # them on their next use (they then see the wider types and the drops).
            for other in [k for k in self._targets if (k.keyspace, k.table) == (schema.keyspace, schema.table)]:
                del self._targets[other]
        self._targets[schema] = target
        while len(self._targets) > self.max_cached_targets:
            self._targets.popitem(last=False)
        return target

    async def _ensure(self, schema: TableSchema) -> TableTarget:
        cfg = self.config
        mode = self.table_mode(schema)
        base = cfg.destination_name(schema.keyspace, schema.table)
        overrides = dict(cfg.table_config(schema.keyspace, schema.table).column_types)
        if mode == "history":
            layout = TableLayout.from_schema(schema, pg_schema=cfg.schema, base=base, overrides=overrides)
            clashes = _duplicates([n for n, _ in self.history_table(layout).columns()])
        else:
            layout = TableLayout.from_schema(schema, pg_schema=cfg.schema, base=base, overrides=overrides)
            clashes = layout.name_collisions()
        if clashes:
            refused = TableTarget(layout, mode, None, None)
            refused.refusal = (
                f"postgres sink {self.name}: table {schema.qualified_name} cannot be stored in {cfg.schema}.{base}: "
                f"its column names collide with each other or with the sink's bookkeeping columns on {clashes} "
                "(a quoted CQL name containing '#' or equal to a bookkeeping name); see docs/sinks/postgres.md"
            )
            log.error("postgres sink refuses a table", sink=self.name, table=schema.qualified_name, collisions=clashes)
            return refused
        async with self._acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"cdc:{cfg.schema}.{base}")
            if mode == "history":
                history = self.history_table(layout)
                if cfg.create_tables:
                    for stmt in history.create_statements():
                        await conn.execute(stmt)
                return TableTarget(layout, mode, history, None)
            layout, evolved = await self._evolve(conn, schema, base, overrides)
        target = TableTarget(layout, mode, None, latest_state_merges(layout))
        target.evolved = evolved
        return target

    async def _evolve(self, conn: Any, schema: TableSchema, base: str, overrides: dict[str, str]) -> tuple[TableLayout, bool]:
        """Create or evolve the latest-state relations of ``schema`` (inside the DDL lock);
        returns the layout and whether the registry changed."""
        cfg = self.config
        columns_table = qualify(cfg.schema, COLUMNS_TABLE)
        rows = await conn.fetch(
            f"SELECT column_name, cql_type, kind, position, descending, dropped, override_type, dropped_ts FROM {columns_table} "
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
                dropped_ts=r["dropped_ts"],
            )
            for r in rows
        ]
        known_by_name = {c.name: c for c in known}
        layout = TableLayout.from_schema(schema, pg_schema=cfg.schema, base=base, overrides=overrides, known=known)
        added = [c for c in layout.columns if c.name not in known_by_name]
        changed = [c for c in layout.columns if c.name in known_by_name and c != known_by_name[c.name]]
        migrated = bool(known) and base not in self._views_refreshed and await self._append_tombstones(conn, layout)
        changed_drop = [c for c in changed if c.dropped != known_by_name[c.name].dropped]
        retyped = [c for c in changed if c.cql_type != known_by_name[c.name].cql_type]
        for c in retyped:
            if c.stored_sql != known_by_name[c.name].stored_sql:
                raise PermanentError(
                    f"table {cfg.schema}.{base}: column {c.name} changed type from {known_by_name[c.name].cql_type} to {c.cql_type}, "
                    "which needs a different PostgreSQL type"
                )
        if not added and not changed:
            if base not in self._views_refreshed:
                # Once per process: views written by an older version of the sink get the current
                # definitions (same columns, so CREATE OR REPLACE keeps views built on them).
                try:
                    async with conn.transaction():
                        for stmt in self.ddl.view_statements(layout, replace=True):
                            await conn.execute(stmt)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    if migrated:  # the old views would show a row per tombstone: undo it all
                        raise PermanentError(
                            f"table {cfg.schema}.{base}: its tombstones are appended since 2026-11-27, and its views "
                            f"must be replaced to read the newest one per partition, which failed: {type(exc).__name__}: {exc} "
                            "(see docs/sinks/postgres.md, Tombstones)"
                        ) from None
                    log.warning("postgres sink could not refresh views", sink=self.name, table=f"{cfg.schema}.{base}", error=str(exc))
                self._views_refreshed.add(base)
            return layout, False
        if not cfg.create_tables:
            raise PermanentError(f"table {cfg.schema}.{base} lacks columns {[c.name for c in added]} and create_tables is off")
        for stmt in self.ddl.create_statements(layout):
            await conn.execute(stmt)
        if known:
            for col in added:
                if col.kind.value in ("regular", "static"):
                    for stmt in self.ddl.add_column_statements(layout, col):
                        await conn.execute(stmt)
        # (Under the DDL lock, so the registry read above is current.)
        await conn.executemany(
            f"INSERT INTO {columns_table} "
            "(destination, column_name, cql_type, kind, position, descending, dropped, override_type, dropped_ts) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (destination, column_name) DO UPDATE SET "
            "dropped = excluded.dropped, cql_type = excluded.cql_type, dropped_ts = excluded.dropped_ts",
            [
                (base, c.name, c.cql_type, c.kind.value, c.position, c.descending, c.dropped, c.override_sql, c.dropped_ts)
                for c in added + changed
            ],
        )
        for stmt in self.ddl.view_statements(layout):
            await conn.execute(stmt)
        self._views_refreshed.add(base)
        log.info(
            "postgres sink evolved table",
            sink=self.name,
            table=f"{cfg.schema}.{base}",
            added=[c.name for c in added],
            dropped=[c.name for c in changed_drop if c.dropped],
            retyped=[c.name for c in retyped],
        )
        return layout, True

    async def _append_tombstones(self, conn: Any, layout: TableLayout) -> bool:
        """Whether a tombstone table was one an older version of the sink created (one upserted
        row per key, under a primary key), now made append-only as the merges write it. Inside
        the caller's transaction (the table's DDL lock), which then replaces the views (they
        must take the newest tombstone of a key before a second one is written): if that fails,
        everything is rolled back."""
        migrated = False
        for table in self.ddl.tombstone_indexes(layout):
            primary_key = await conn.fetchval(
                "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'", layout.q(table)
            )
            if primary_key is None:
                continue
            for stmt in self.ddl.tombstones_migration(layout, table, primary_key):
                await conn.execute(stmt)
            log.info("postgres sink made tombstones append-only", sink=self.name, table=f"{layout.pg_schema}.{table}")
            migrated = True
        return migrated

    # --- writing --------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> WriteResult:
        if self._pool is None:
            raise TransientError(f"postgres sink {self.name} is not started")
        # A write the engine overlaps with others may commit its rows before its turn, and its
        # offsets after it (docs/sinks/postgres.md, Overlapping writes).
        early = isinstance(batch.turn, Turn) and self.overlapping_writes > 1 and self.config.early_merge
        slot = EarlySlot(None)
        try:
            groups = await self._group(batch.events)
            # The Python work (fold, conversion, checks) happens before a connection is taken, in
            # slices between which the event loop runs: it keeps sending the statements of the
            # batch in flight before this one (overlapping_writes), whose merge then runs on the
            # server while this one folds. (A worker thread would not do: the fold holds the GIL,
            # and the loop waited up to 70 ms to hear of a finished statement.) One fold at a time.
            async with self._fold_lock:
                work, rejected = await self._fold_all(groups)
            steps = await _encoded(self._steps_of(work), self.config.inline_max_values)
            # Events refused in Python reach the DLQ before anything commits (Batch.dead_letter).
            await _dead_letter(batch, rejected)
            slot = await self._early_slots.take(batch)
            ahead = early and not turn_due(batch) and _latest_state_only(work)
            committed_ahead = False  # (its rows, in a transaction of their own)
            async with self._acquire() as conn:
                try:
                    single = self._single_statement(steps, batch, offsets=not ahead) if ahead or turn_due(batch) else None
                    if single is not None:
                        if not ahead:
                            await batch.wait_turn()  # (due: returns at once, or raises if the previous write failed)
                            slot.release()
                        await conn.execute(*single)
                    else:
                        # _run_all opens the transaction (its BEGIN shares a round trip with the
                        # prelude) and, in the batch's turn, stores the offsets; on a failure the
                        # pool's reset, or the bisecting path below, rolls it back.
                        created = await self._run_all(conn, steps, batch, slot, in_turn=not ahead)
                        await conn.execute("COMMIT")
                        self._staging_created(conn).update(created)
                    committed_ahead = ahead
                except Exception as exc:
                    if not is_bisectable(exc):
                        raise
                    if conn.is_in_transaction():
                        await conn.execute("ROLLBACK")
                    await batch.wait_turn()  # (the refusal may have come while staging, before it)
                    slot.release()
                    # The server refuses something (a value, an over-long key …): redo the batch
                    # table by table under savepoints, bisecting to the culprit events; they
                    # reach the DLQ before the transaction moving the offsets commits.
                    async with conn.transaction():
                        refused: list[Rejected] = []
                        for target, events, _ in work:
                            refused += await self._apply(conn, target, events)
                        await self.offsets.store(conn, self.name, batch.positions)
                        await _dead_letter(batch, refused)
                    rejected += refused
                if committed_ahead:
                    # Committed ahead of its turn: the offsets move once every earlier batch is
                    # applied (a crash before that replays this batch, which converges to the
                    # same state), and the write returns only then (the next batch's turn is this
                    # one's end). It keeps its connection, and its early slot until the turn.
                    await batch.wait_turn()
                    await self.offsets.store(conn, self.name, batch.positions)
        except _DeadLetterFailed as failed:
            raise failed.cause from None  # the engine's own error, as it raised it
        except (TransientError, PermanentError):
            raise
        except BaseException as exc:
            raise self._translate(exc, f"writing batch {batch.batch_id}") from None
        finally:
            slot.release()
        self._note_tombstones(work)
        if rejected:
            log.warning("postgres sink rejected events", sink=self.name, batch_id=batch.batch_id, rejected=len(rejected))
        return WriteResult(rejected=rejected)

    # --- tombstone compaction (cdc_sink_postgres.compaction) -------------------------------------

    def _note_tombstones(self, work: Sequence[tuple[TableTarget, list[ChangeEvent], Any]]) -> None:
        """The keys whose tombstones a committed batch appended, for the next compaction."""
        for target, _, prepared in work:
            # (An array-typed key column cannot go back as an unnest()ed array parameter: a table
            # whose tombstones are not inlinable is not compacted.)
            if isinstance(prepared, PreparedTable) and target.merges is not None and target.merges.partition_deletions.inlinable:
                fold = prepared.fold
                if fold.partition_deletions or fold.range_deletions:
                    # (the dict itself: a set made of it reuses the hashes it holds)
                    self._compaction.note(target.layout, fold.partition_deletions, fold.range_deletions.keys())
        if self._compaction.due:
            self._compaction_due.set()

    async def compact_tombstones(self) -> int:
        """Remove the tombstone rows that a newer one of the same key makes redundant, for the keys
        this process appended more than once since the last call; returns the rows removed. Each chunk
        of keys is a short transaction of its own on a pooled connection; a chunk that fails is
        logged and dropped (its rows stay until that key is deleted again: space, not data)."""
        removed = 0
        for sql, args in self._compaction.take():
            try:
                async with self._acquire() as conn:
                    status = await conn.execute(sql, *args)
                removed += int(status.split()[-1])
            except Exception as exc:
                log.warning("postgres sink tombstone compaction failed", sink=self.name, error=self._redact(f"{type(exc).__name__}: {exc}"))
        if removed:
            log.debug("postgres sink compacted tombstones", sink=self.name, removed=removed)
        return removed

    async def _compact_periodically(self, interval: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # (the interval is up)
                await asyncio.wait_for(self._compaction_due.wait(), interval)
            self._compaction_due.clear()
            if self._compaction.pending or self._compaction.due:  # (due: forgets the keys)
                await self.compact_tombstones()

    async def _fold_all(
        self, groups: Sequence[tuple[TableTarget, list[ChangeEvent]]]
    ) -> tuple[list[tuple[TableTarget, list[ChangeEvent], Any]], list[Rejected]]:
        """Every table's events folded into staging records; the events refused on the way."""
        rejected: list[Rejected] = []
        work: list[tuple[TableTarget, list[ChangeEvent], Any]] = []
        # The fold allocates many short-lived objects and no cycles: the cyclic GC (which would
        # walk the whole heap of pending events again and again) waits until it ends.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for target, events in groups:
                if target.refusal is not None:
                    rejected += [Rejected(event=e, error=target.refusal, error_type="ConfigError") for e in events]
                    continue
                good: list[ChangeEvent] = []
                prepared = await self._prepare(target, events, rejected, good)
                if good:
                    work.append((target, good, prepared))
        finally:
            if gc_was_enabled:
                gc.enable()
        return work, rejected

    async def _group(self, events: Sequence[ChangeEvent]) -> list[tuple[TableTarget, list[ChangeEvent]]]:
        """The batch's events per destination table (in batch order), the tables in name order:
        two batches merging at once lock their rows table after table in the same order."""
        targets: dict[int, TableTarget] = {}  # id(schema) → target, for this batch
        by_table: dict[tuple[str, str], TableTarget] = {}
        for event in events:
            schema = event.schema
            if id(schema) in targets:
                continue
            target = targets[id(schema)] = await self.target_for(schema)
            # Events of one table under different schema versions: the widest layout wins, and
            # among equally wide ones the newest built (the current registry: wider UDTs, drops).
            key = (schema.keyspace, schema.table)
            current = by_table.get(key)
            if current is None or (len(target.layout.columns), target.serial) > (len(current.layout.columns), current.serial):
                by_table[key] = target
        if len(targets) == 1:
            return [(by_table[(events[0].schema.keyspace, events[0].schema.table)], list(events))]
        chosen = {sid: by_table[(t.layout.keyspace, t.layout.table)] for sid, t in targets.items()}
        groups: dict[int, tuple[TableTarget, list[ChangeEvent]]] = {}
        for event in events:
            target = chosen[id(event.schema)]
            groups.setdefault(id(target), (target, []))[1].append(event)
        return sorted(groups.values(), key=lambda group: (group[0].layout.keyspace, group[0].layout.table))

    def _staging_created(self, conn: Any) -> set[str]:
        """Staging tables known to exist in ``conn``'s session (TEMP tables live as long as it)."""
        raw = getattr(conn, "_con", None) or conn  # the pooled connection behind a proxy
        known = self._staging.get(raw)
        if known is None:
            known = self._staging[raw] = set()
        return known

    def _steps_of(self, work: Sequence[tuple[TableTarget, list[ChangeEvent], Any]]) -> list[tuple[StagedMerge, Sequence[Sequence[Any]]]]:
        """Every table's (merge, records) steps of a batch, in order."""
        steps: list[tuple[StagedMerge, Sequence[Sequence[Any]]]] = []
        for target, _, prepared in work:
            steps += self._steps(target, prepared)
        return steps

    async def _run_all(
        self, conn: Any, steps: Sequence[_Step], batch: Batch, slot: EarlySlot | None = None, *, in_turn: bool = True
    ) -> set[str]:
        """The fast path: a transaction begun, every table's records staged and merged in it, no
        savepoints, and (``in_turn``) the offsets stored; the caller commits. Returns the staging
        tables created (they exist once the transaction commits).

        Staging tables are private to the session, so they are filled before the batch's turn
        (``Batch.wait_turn``: while the previous batch may still be merging on another
        connection); in the turn, the merges, which lock destination rows, and the offsets. A
        write committing ahead of its turn (not ``in_turn``) merges at once and stores no
        offsets."""
        known = self._staging_created(conn)
        staged = [step for step in steps if not step.inline]
        missing = {step.merge.staging: step.merge.create_sql for step in staged if step.merge.staging not in known}
        uses = Counter(step.merge.staging for step in staged)
        # One round trip: BEGIN, and the staging tables created where missing and emptied of
        # what the last transaction of this session that used them committed (StagedMerge).
        prelude = ["BEGIN", *missing.values()]
        if uses:
            prelude.append("TRUNCATE " + ", ".join(quote_ident(s) for s in uses))
        await conn.execute(";\n".join(prelude))
        # A staging table two steps share (two tables of one shape) is filled after the turn, once
        # the first step's merge has read it.
        early = {i for i, step in enumerate(steps) if not step.inline and uses[step.merge.staging] == 1 and step.records}
        for i in sorted(early):
            merge, records, payload, _ = steps[i]
            await merge.copy_in(conn, records, payload)
        if in_turn:
            await batch.wait_turn()
            if slot is not None:
                slot.release()
        # Every step inline or staged already: the merges (and the offsets) as one statement.
        together = self._single_statement(steps, batch, early, offsets=in_turn)
        if together is not None:
            await conn.execute(*together)
            return set(missing)
        await self._merge_each(conn, steps, early)
        if in_turn:
            await self.offsets.store(conn, self.name, batch.positions)
        return set(missing)

    async def _merge_each(self, conn: Any, steps: Sequence[_Step], early: Collection[int]) -> None:
        """Every step's merge, one statement each (the ``early`` ones staged already)."""
        used: set[str] = set()
        for i, (merge, records, payload, inline) in enumerate(steps):
            if inline:
                await merge.merge_inline(conn, records)
                continue
            if i in early:
                await merge.merge_staged(conn)
            else:
                if merge.staging in used:  # two tables sharing a staging table: empty it first
                    await conn.execute(merge.truncate_sql)
                await merge.copy_and_merge(conn, records, payload)
            used.add(merge.staging)

    def _single_statement(
        self, steps: Sequence[_Step], batch: Batch, staged: Collection[int] = (), *, offsets: bool = True
    ) -> tuple[Any, ...] | None:
        """The whole batch as ONE statement, atomic on its own (its implicit transaction holds
        the data and, with ``offsets``, the offsets): each merge and the offsets upsert, all but
        the last as data-modifying CTEs (each writes other relations; PostgreSQL runs every one
        of them). One round trip, where a transaction takes at least three. For a batch whose
        every step is sent inline, or (inside the batch's transaction) is one of the steps
        ``staged`` already; else None. Returns the statement and its arguments."""
        if not steps or not _ready(steps, staged):
            return None
        parts: list[str] = []
        args: list[Any] = []
        if offsets and batch.positions:
            parts.append(self.offsets.upsert_sql)
            args += self.offsets.upsert_args(self.name, batch.positions)
        parts += _merge_statements(steps, args)
        ctes = ", ".join(f'"#write{i}" AS ({sql})' for i, sql in enumerate(parts[:-1]))
        return (f"WITH {ctes} {parts[-1]}" if ctes else parts[-1], *args)

    def _steps(self, target: TableTarget, prepared: Any) -> list[tuple[StagedMerge, Sequence[Sequence[Any]]]]:
        """(merge, records) of one table's prepared batch, in the order they must run."""
        if target.history_insert is not None:
            return [(target.history_insert, prepared)] if prepared else []
        table: PreparedTable = prepared
        delta = table.fold
        merges = target.merges
        assert merges is not None
        out: list[tuple[StagedMerge, Sequence[Sequence[Any]]]] = []
        if delta.partition_deletions:
            out.append((merges.partition_deletions, [(*pk, ts) for pk, ts in delta.partition_deletions.items()]))
        if delta.range_deletions and merges.range_deletions is not None:
            out.append(
                (
                    merges.range_deletions,
                    [
                        (*pk, *r.start, r.start_len, r.start_incl, *r.end, r.end_len, r.end_incl, r.bounds, ts)
                        for (pk, _), (r, ts) in delta.range_deletions.items()
                    ],
                )
            )
        for staged, shapes in ((table.rows, merges.row_shapes), (table.statics, merges.static_shapes)):
            if staged is None or not staged.records or shapes is None:
                continue
            merge = shapes.for_shape(staged.present, staged.aliases)
            if merge is None:  # too many shapes: the full-width merge
                merge = shapes.full
                records: Sequence[Sequence[Any]] = staged.full_records()
            else:
                records = staged.records
            out.append((merge, records))
        return out

    async def _apply(self, conn: Any, target: TableTarget, events: Sequence[ChangeEvent]) -> list[Rejected]:
        """Apply ``events`` under a savepoint; on a data error bisect to the culprits."""
        rejected: list[Rejected] = []
        good: list[ChangeEvent] = []
        prepared = await self._prepare(target, events, rejected, good)
        if not good:
            return rejected
        try:
            async with conn.transaction():
                await self._run(conn, target, prepared)
        except Exception as exc:
            if not is_bisectable(exc):
                raise
            if len(good) == 1:
                rejected.append(Rejected(event=good[0], error=self._redact(f"{type(exc).__name__}: {exc}")))
                return rejected
            mid = len(good) // 2
            rejected += await self._apply(conn, target, good[:mid])
            rejected += await self._apply(conn, target, good[mid:])
        return rejected

    async def _prepare(self, target: TableTarget, events: Sequence[ChangeEvent], rejected: list[Rejected], good: list[ChangeEvent]) -> Any:
        """``events`` as ``target``'s staging records (the good ones appended to ``good``, the
        refused ones to ``rejected``), folded in slices of :data:`FOLD_SLICE` events with the
        event loop served between them."""
        if target.history is not None:
            records: list[tuple[Any, ...]] = []
            for i, event in enumerate(events):
                if i and not i % FOLD_SLICE:
                    await asyncio.sleep(0)
                try:
                    records.append(target.history.record(event))
                    good.append(event)
                except ValueRejected as exc:
                    rejected.append(Rejected(event=event, error=str(exc)))
            return records
        assert target.plan is not None
        # Optimistic first (values checked column-wise at the end); if that cannot vouch for
        # every value, again converting each value as it comes (rejecting exactly the culprits).
        for eager in (False, True):
            fold = RecordFold(target.plan, eager=eager)
            try:
                failed: list[tuple[int, ValueRejected]] = []
                for start in range(0, len(events), FOLD_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    part = events[start : start + FOLD_SLICE] if len(events) > FOLD_SLICE else events
                    failed += [(start + i, exc) for i, exc in fold.add_all(part)]
                bad = [Rejected(event=events[i], error=str(exc)) for i, exc in failed]
                if failed:
                    refused = {i for i, _ in failed}
                    ok = [e for i, e in enumerate(events) if i not in refused]
                else:
                    ok = list(events)
                rows = await _stepwise(fold.staged_rows_stepwise()) if fold.rows else None
                statics = await _stepwise(fold.staged_statics_stepwise()) if fold.statics else None
            except NeedsEagerFold:
                continue
            rejected += bad
            good += ok
            return PreparedTable(fold, rows, statics)
        raise AssertionError("an eager fold never asks for an eager fold")

    async def _run(self, conn: Any, target: TableTarget, prepared: Any) -> None:
        """One table's prepared batch, self-contained (creates and empties its staging tables):
        the path of the bisection under savepoints."""
        for merge, records in self._steps(target, prepared):
            await merge.run(conn, records)


class _Step(NamedTuple):
    """One merge of a batch and its records, ready to send."""

    merge: StagedMerge
    records: Sequence[Sequence[Any]]
    payload: Payload | None  # the records' binary COPY payload; None: asyncpg encodes them
    inline: bool  # sent inline, as array parameters (StagedMerge.sends_inline): no staging, no payload


def _ready(steps: Sequence[_Step], staged: Collection[int]) -> bool:
    """Every step can merge as part of a combined statement: sent inline, or ``staged`` already."""
    return all(step.inline or i in staged for i, step in enumerate(steps))


def _merge_statements(steps: Sequence[_Step], args: list[Any]) -> list[str]:
    """Each step's merge as a statement to combine with others: an inline step reads array
    parameters, appended to ``args`` (numbered after those already there); a staged one its
    staging table."""
    parts: list[str] = []
    for merge, records, _, inline in steps:
        if inline:
            parts.append(merge.inline_sql(len(args) + 1))
            args += merge.inline_args(records)
        else:
            parts.append(merge.merge_sql)
    return parts


async def _encoded(steps: Sequence[tuple[StagedMerge, Sequence[Sequence[Any]]]], inline_max_values: int) -> list[_Step]:
    """``steps`` ready to send: the COPY payloads of those not sent inline, encoded before the
    write takes a connection (the accelerator's, in slices; see cdc_sink_postgres.native)."""
    out: list[_Step] = []
    for merge, records in steps:
        if merge.sends_inline(len(records), inline_max_values):
            out.append(_Step(merge, records, None, True))
        else:
            out.append(_Step(merge, records, await encode_copy_sliced(records, merge.column_types) if records else None, False))
    return out


async def _stepwise(steps: Generator[None, None, T]) -> T:
    """Run a stepwise computation (premerge's), serving the event loop between its steps."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await asyncio.sleep(0)


async def _keep_session(conn: Any) -> None:
    """The pool's reset on release, after asyncpg rolled back a transaction left open: nothing
    more. Its default (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) costs a
    round trip per batch and undoes nothing the sink does: it takes transaction-level advisory
    locks only, opens no cursor, listens to nothing, and sets its session settings at connect
    time (what ``RESET ALL`` would return to anyway); its staging tables are meant to stay."""


def _latest_state_only(work: Sequence[tuple[TableTarget, list[ChangeEvent], Any]]) -> bool:
    """Every table of the batch is in latest-state mode: its merges converge in any order, so
    the batch may commit before an earlier one. (History-mode rows are appended in position
    order: a reader following them by position must never see a later one first.)"""
    return all(target.history is None and isinstance(prepared, PreparedTable) for target, _, prepared in work)


def _duplicates(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out: set[str] = set()
    for n in names:
        (out if n in seen else seen).add(n)
    return sorted(out)


class _DeadLetterFailed(Exception):
    """``batch.dead_letter`` raised: the batch must not commit; ``cause`` propagates unchanged."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _dead_letter(batch: Batch, rejected: Sequence[Rejected]) -> None:
    """Hand ``rejected`` to the engine's DLQ (durably) before the caller commits offsets."""
    if not rejected or batch.dead_letter is None:
        return
    try:
        await batch.dead_letter(list(rejected))
    except Exception as exc:
        raise _DeadLetterFailed(exc) from exc


class PreparedTable:
    """One table's batch, folded: the fold (deletions) and the staged row/static records."""

    __slots__ = ("fold", "rows", "statics")

    def __init__(self, fold: RecordFold, rows: StagingRecords | None, statics: StagingRecords | None) -> None:
        self.fold = fold
        self.rows = rows
        self.statics = statics


def create_sink(config: PostgresSinkConfig, context: ComponentContext) -> PostgresSink:
    return PostgresSink(context.instance_name, config, context)
