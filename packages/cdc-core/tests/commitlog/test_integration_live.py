"""Against the real Cassandra 5.0 nodes: every CQL type and kind of write, commitlog v7 and v8."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from commitlog.live import read_keyspace_events, run_scenario
from commitlog.scenario import check_events

pytestmark = pytest.mark.integration


async def test_scenario_v7(cassandra_session: Any, cassandra_keyspace: str, cdc_raw_dir: Path) -> None:
    run_scenario(cassandra_session, cassandra_keyspace)
    events = await read_keyspace_events(cassandra_session, cdc_raw_dir, cassandra_keyspace)
    assert {e.keyspace for e in events} == {cassandra_keyspace}
    assert all(e.position.segment_id > 0 for e in events)
    check_events(events)


async def test_scenario_v8(cassandra8_session: Any, cassandra8_keyspace: str, cdc_raw_dir8: Path) -> None:
    run_scenario(cassandra8_session, cassandra8_keyspace)
    events = await read_keyspace_events(cassandra8_session, cdc_raw_dir8, cassandra8_keyspace)
    assert {e.keyspace for e in events} == {cassandra8_keyspace}
    check_events(events)
