"""Harnesses over both engines: a ClickHouse server (root conftest fixtures) and embedded chdb."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from cdc_core.factories import ComponentContext
from cdc_core.schema import TableSchema
from cdc_core.secrets import Secret
from cdc_core.testing.model import TableState
from cdc_sink_clickhouse.config import ClickHouseSinkConfig
from cdc_sink_clickhouse.sink import ClickHouseSink

_CHDB_DIR: str | None = None


def chdb_path() -> str:
    """One embedded data path for the whole test process (chdb allows one per process)."""
    global _CHDB_DIR
    if _CHDB_DIR is None:
        _CHDB_DIR = tempfile.mkdtemp(prefix="cdc-chdb-")
    return _CHDB_DIR


@attrs.define
class ClickHouseHarness:
    """A destination (url + database); every make_sink is a fresh sink over it (a restart)."""

    url: str
    database: str
    sink_name: str = "ch"
    extra: dict[str, Any] = attrs.field(factory=dict)
    sinks: list[ClickHouseSink] = attrs.field(factory=list)

    def config(self, **overrides: Any) -> ClickHouseSinkConfig:
        return ClickHouseSinkConfig(url=Secret(self.url), database=self.database, **{**self.extra, **overrides})

    async def make_sink(self, **overrides: Any) -> ClickHouseSink:
        sink = ClickHouseSink(self.config(**overrides), ComponentContext(instance_name=self.sink_name))
        self.sinks.append(sink)
        await sink.start()
        return sink

    async def read_state(self, schema: TableSchema, now: int) -> TableState:
        sink = await self.make_sink()
        try:
            return await sink.read_state(schema, now)
        finally:
            await sink.close()

    async def query(self, sql: str) -> bytes:
        sink = await self.make_sink()
        try:
            return await sink.transport.select(sql)
        finally:
            await sink.close()

    async def destroy(self) -> None:
        sink = await self.make_sink()
        try:
            await sink.transport.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
        finally:
            await sink.close()


@pytest.fixture
async def chdb_harness() -> AsyncIterator[ClickHouseHarness]:
    pytest.importorskip("chdb")
    h = ClickHouseHarness(url=f"chdb://{chdb_path()}", database=f"t_{uuid.uuid4().hex[:12]}")
    yield h
    await h.destroy()


@pytest.fixture
async def server_harness(clickhouse_url: str, clickhouse_database: str) -> AsyncIterator[ClickHouseHarness]:
    h = ClickHouseHarness(url=clickhouse_url, database=clickhouse_database)
    yield h
    for s in h.sinks:
        await s.close()


def server_env_url() -> str | None:
    return os.environ.get("CDC_TEST_CLICKHOUSE_URL") or None
