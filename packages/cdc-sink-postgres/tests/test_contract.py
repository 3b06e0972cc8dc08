"""The sink contract suite (cdc_core.testing.contract) against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cdc_core.testing.contract import SinkContract, SinkHarness
from cdc_sink_postgres.testing import PostgresHarness

pytestmark = pytest.mark.integration


class TestPostgresSinkContract(SinkContract):
    @pytest.fixture
    async def harness(self, pg_dsn: str) -> AsyncIterator[SinkHarness]:
        h = PostgresHarness(pg_dsn)
        yield h
        await h.destroy()
