"""The core sink contract against a real TimescaleDB (Apache-2 build).

Configuration (see docs/sinks/timescale.md, "The contract"): ``time_column: ck`` with an integer
chunk interval. The contract's fixed scenario table (``pk int``, clustering ``ck int``) thus runs
in **latest-state mode on a hypertable whose time dimension is the clustering column ck**; its
random schemas have no ``ck`` column, so they fall back to the write time and run in **history
mode** (a hypertable on cdc_write_time), read back by folding the stored events with the model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cdc_core.testing.contract import SinkContract, SinkHarness
from cdc_sink_timescale.testing import TimescaleHarness

pytestmark = pytest.mark.integration


class TestTimescaleSinkContract(SinkContract):
    @pytest.fixture
    async def harness(self, timescale_dsn: str) -> AsyncIterator[SinkHarness]:
        h = TimescaleHarness(timescale_dsn, config_overrides={"time_column": "ck", "integer_chunk_interval": 1000})
        yield h
        await h.destroy()
