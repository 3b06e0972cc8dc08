"""Test support: a :class:`~cdc_core.testing.contract.SinkHarness` over a PostgreSQL database,
reading the latest state back through the views (reusable by sinks built on this one)."""

from __future__ import annotations

from typing import Any

import attrs

from cdc_core.schema import TableSchema
from cdc_core.secrets import Secret
from cdc_core.sinks import Sink
from cdc_core.testing.model import TableState
from cdc_sink_postgres.config import PostgresSinkConfig
from cdc_sink_postgres.idents import quote_ident
from cdc_sink_postgres.layout import ColumnLayout, TableLayout
from cdc_sink_postgres.sink import PostgresSink
from cdc_sink_postgres.typemap import from_db

__all__ = ["PostgresHarness", "read_latest_state"]


def _convert(col: ColumnLayout, value: Any) -> Any:
    return from_db(value, col.cql, col.pg)


async def read_latest_state(conn: Any, layout: TableLayout, now: int | None = None) -> TableState:
    """The state the views show (as of ``now`` seconds, if given), as the model's values."""
    if now is not None:
        await conn.execute("SELECT set_config('cdc.now', $1, false)", str(now))
    try:
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        statics: dict[tuple[Any, ...], dict[str, Any]] = {}
        regular = [c for c in layout.regular if not c.dropped]
        names = [c.ident for c in layout.primary_key] + [c.ident for c in regular]
        cols = list(layout.primary_key) + regular
        sql = f"SELECT {', '.join(quote_ident(n) for n in names)} FROM {layout.q(layout.view)}"
        for record in await conn.fetch(sql):
            values = {c.name: _convert(c, record[i]) for i, c in enumerate(cols)}
            rows[tuple(values[c.name] for c in layout.primary_key)] = values
        if layout.static:
            static = [c for c in layout.static if not c.dropped]
            scols = list(layout.partition_key) + static
            sql = f"SELECT {', '.join(quote_ident(c.ident) for c in scols)} FROM {layout.q(layout.static_view)}"
            for record in await conn.fetch(sql):
                pk = tuple(_convert(c, record[i]) for i, c in enumerate(layout.partition_key))
                statics[pk] = {c.name: _convert(c, record[len(layout.partition_key) + i]) for i, c in enumerate(static)}
        return TableState(rows=rows, statics=statics)
    finally:
        if now is not None:
            await conn.execute("RESET cdc.now")


@attrs.define
class PostgresHarness:
    """Sinks over one database (``dsn``); every ``make_sink`` is a restart over the same data."""

    dsn: str
    schema: str = "cdc_test"
    sink_name: str = "pg"
    config_overrides: dict[str, Any] = attrs.field(factory=dict)
    sinks: list[PostgresSink] = attrs.field(factory=list)

    def config(self) -> PostgresSinkConfig:
        return PostgresSinkConfig(dsn=Secret(self.dsn), schema=self.schema, **self.config_overrides)

    async def make_sink(self) -> Sink:
        sink = PostgresSink(self.sink_name, self.config())
        await sink.start()
        self.sinks.append(sink)
        return sink

    async def read_state(self, schema: TableSchema, now: int) -> TableState:
        import asyncpg

        cfg = self.config()
        layout = TableLayout.from_schema(
            schema,
            pg_schema=cfg.schema,
            base=cfg.destination_name(schema.keyspace, schema.table),
        )
        conn = await asyncpg.connect(self.dsn)
        try:
            exists = await conn.fetchval("SELECT to_regclass($1)", layout.q(layout.view))
            if exists is None:
                return TableState(rows={}, statics={})
            return await read_latest_state(conn, layout, now)
        finally:
            await conn.close()

    async def destroy(self) -> None:
        for sink in self.sinks:
            await sink.close()
        self.sinks.clear()
