"""The TimescaleDB sink: the PostgreSQL sink (one transaction per batch holding data and offsets,
idempotent merges, DLQ bisecting) with hypertables, per-table modes and edition detection."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import structlog

from cdc_core.errors import ConfigError, PermanentError
from cdc_core.factories import ComponentContext
from cdc_core.schema import TableSchema
from cdc_core.sinks import Batch, Rejected, WriteResult
from cdc_sink_postgres.history import HistoryTable
from cdc_sink_postgres.layout import TableLayout
from cdc_sink_postgres.sink import PostgresSink
from cdc_sink_timescale.config import TableSpec, TimescaleSinkConfig
from cdc_sink_timescale.ddl import TimescaleDdl, TimescaleHistoryTable
from cdc_sink_timescale.edition import TimescaleEdition, detect_timescale_edition

__all__ = ["TimescaleSink"]

log = structlog.get_logger(__name__)


class TimescaleSink(PostgresSink):
    """Writes change events into TimescaleDB hypertables; see docs/sinks/timescale.md.

    ``capabilities`` is the detected :class:`TimescaleEdition` once started. Policies the server
    cannot run (the Apache-2 build has no compression, retention or jobs) are reported once per
    sink, in one warning, and skipped.
    """

    ddl: TimescaleDdl

    def __init__(self, name: str, config: TimescaleSinkConfig, context: ComponentContext | None = None) -> None:
        super().__init__(name, config.postgres_config(), context)
        self.timescale = config
        self.ddl = TimescaleDdl(config)
        self.capabilities: TimescaleEdition | None = None
        self._refused: dict[TableSchema, str] = {}
        self._reported_refusals: set[str] = set()

    def __repr__(self) -> str:
        return f"TimescaleSink(name={self.name!r}, schema={self.timescale.schema!r})"

    def validate(self, schemas: Iterable[TableSchema]) -> list[str]:
        """For ``cdc validate``: refuses (ConfigError) tables that cannot work, warns otherwise."""
        return self.timescale.validate(schemas)

    # --- extension points of PostgresSink -------------------------------------------------------

    async def prepare_database(self, conn: Any) -> None:
        edition = await detect_timescale_edition(conn)
        if not edition.installed:
            raise PermanentError(
                f"timescale sink {self.name}: the database has no timescaledb extension (CREATE EXTENSION timescaledb; "
                "the server needs shared_preload_libraries = 'timescaledb')"
            )
        self.capabilities = edition
        self.ddl.edition = edition
        self._report(edition)

    def table_mode(self, schema: TableSchema) -> str:
        spec = self.timescale.spec_for(schema)
        self.ddl.specs[(schema.keyspace, schema.table)] = spec
        return spec.mode

    def history_table(self, layout: TableLayout) -> HistoryTable:
        return TimescaleHistoryTable(layout, self.ddl.specs[(layout.keyspace, layout.table)], self.ddl.edition)

    # --- reporting ------------------------------------------------------------------------------

    def _requested(self) -> list[str]:
        """TSL features the configuration asks for (anywhere)."""
        cfg = self.timescale
        compression = cfg.compression is not None or any(t.compression is not None for t in cfg.tables.values())
        retention = cfg.retention is not None or any(t.retention is not None for t in cfg.tables.values())
        out = []
        if compression:
            out += ["compression", "policies"]
        if retention and "policies" not in out:
            out.append("policies")
        return out

    def _report(self, edition: TimescaleEdition) -> None:
        requested = self._requested()
        missing = [f for f in requested if f in edition.unavailable()]
        if missing:
            log.warning(
                "timescaledb features unavailable: configured compression/retention policies are NOT applied",
                sink=self.name,
                timescaledb_version=edition.version,
                license=edition.license,
                unavailable=missing,
                reasons={f: edition.reasons.get(f, "unknown") for f in missing},
            )
        else:
            log.info(
                "timescale sink capabilities",
                sink=self.name,
                timescaledb_version=edition.version,
                license=edition.license,
                unavailable=edition.unavailable(),
            )

    # --- writing --------------------------------------------------------------------------------

    def spec(self, schema: TableSchema) -> TableSpec:
        """The resolved configuration of a table (raises ConfigError if it cannot work)."""
        return self.timescale.spec_for(schema)

    def _refusal(self, schema: TableSchema) -> str | None:
        if schema not in self._refused:
            if len(self._refused) >= 512:  # bounded: schema versions come and go
                self._refused.clear()
            try:
                self.timescale.spec_for(schema)
                self._refused[schema] = ""
            except ConfigError as exc:
                self._refused[schema] = f"timescale sink {self.name}: {exc}"
        return self._refused[schema] or None

    async def write(self, batch: Batch) -> WriteResult:
        """As the PostgreSQL sink; events of a table the configuration refuses (e.g. latest-state
        mode without the time column in the primary key) go to the DLQ with the reason."""
        # Per distinct schema object, not per event: hashing a TableSchema walks all its columns
        # (≈5 µs), which per event cost ~10 µs, as much as the merge of a row.
        reasons = {sid: self._refusal(schema) for sid, schema in {id(e.schema): e.schema for e in batch.events}.items()}
        if not any(reasons.values()):
            return await super().write(batch)
        refused: list[Rejected] = []
        for event in batch.events:
            reason = reasons[id(event.schema)]
            if reason is not None:
                refused.append(Rejected(event=event, error=reason, error_type="ConfigError"))
        for table, reason in {r.event.schema.qualified_name: r.error for r in refused}.items():
            if table not in self._reported_refusals:
                self._reported_refusals.add(table)
                log.error("timescale sink refuses a table: its events go to the DLQ", sink=self.name, table=table, reason=reason)
        if batch.dead_letter is not None:
            # In the DLQ before the write below commits the offsets past them (Batch.dead_letter).
            await batch.dead_letter(refused)
        ok = [e for e in batch.events if reasons[id(e.schema)] is None]
        result = await super().write(attrs.evolve(batch, events=ok))
        return WriteResult(rejected=[*result.rejected, *refused])


def create_sink(config: TimescaleSinkConfig, context: ComponentContext) -> TimescaleSink:
    return TimescaleSink(context.instance_name, config, context)
