"""The core's sink contract suite, on embedded chdb (ClickHouse 26.x) and on the server (18.16)."""

from __future__ import annotations

import pytest

from cdc_core.testing.contract import SinkContract, SinkHarness

from .conftest import ClickHouseHarness


class TestChdbContract(SinkContract):
    @pytest.fixture
    def harness(self, chdb_harness: ClickHouseHarness) -> SinkHarness:
        return chdb_harness


@pytest.mark.integration
class TestServerContract(SinkContract):
    @pytest.fixture
    def harness(self, server_harness: ClickHouseHarness) -> SinkHarness:
        return server_harness
