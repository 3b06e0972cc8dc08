"""Test support: a :class:`~cdc_core.testing.contract.SinkHarness` over a TimescaleDB database.

``read_state`` reads a latest-state table through its view (as the PostgreSQL sink documents), and
a history table by folding the events it stored (``cdc_event``, the core's lossless JSON form)
with the reference model — so for history tables it checks that every event arrived exactly as
sent, and nothing else did.
"""

from __future__ import annotations

from typing import Any

import attrs

from cdc_core.schema import TableSchema
from cdc_core.secrets import Secret
from cdc_core.serialization import event_from_json
from cdc_core.sinks import Sink
from cdc_core.testing.model import TableState, latest_state
from cdc_sink_postgres.layout import TableLayout
from cdc_sink_postgres.testing import read_latest_state
from cdc_sink_timescale.config import TimescaleSinkConfig
from cdc_sink_timescale.sink import TimescaleSink

__all__ = ["TimescaleHarness"]


@attrs.define
class TimescaleHarness:
    """Sinks over one database (``dsn``); every ``make_sink`` is a restart over the same data."""

    dsn: str
    schema: str = "cdc_test"
    sink_name: str = "ts"
    config_overrides: dict[str, Any] = attrs.field(factory=dict)
    sinks: list[TimescaleSink] = attrs.field(factory=list)

    def config(self) -> TimescaleSinkConfig:
        return TimescaleSinkConfig(dsn=Secret(self.dsn), schema=self.schema, **self.config_overrides)

    async def make_sink(self) -> Sink:
        sink = TimescaleSink(self.sink_name, self.config())
        await sink.start()
        self.sinks.append(sink)
        return sink

    def layout(self, schema: TableSchema) -> TableLayout:
        cfg = self.config()
        return TableLayout.from_schema(
            schema, pg_schema=cfg.schema, base=cfg.postgres_config().destination_name(schema.keyspace, schema.table)
        )

    async def read_state(self, schema: TableSchema, now: int) -> TableState:
        import asyncpg

        spec = self.config().spec_for(schema)
        layout = self.layout(schema)
        conn = await asyncpg.connect(self.dsn)
        try:
            if spec.mode == "latest":
                if await conn.fetchval("SELECT to_regclass($1)", layout.q(layout.view)) is None:
                    return TableState(rows={}, statics={})
                return await read_latest_state(conn, layout, now)
            if await conn.fetchval("SELECT to_regclass($1)", layout.q(layout.history_table)) is None:
                return TableState(rows={}, statics={})
            docs = await conn.fetch(f"SELECT cdc_event FROM {layout.q(layout.history_table)}")
            return latest_state([event_from_json(r[0]) for r in docs], now=now)
        finally:
            await conn.close()

    async def destroy(self) -> None:
        for sink in self.sinks:
            await sink.close()
        self.sinks.clear()
