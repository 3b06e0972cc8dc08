"""Fault injection with Toxiproxy (design notes §4, §7): the Postgres sink reaches its server through
the proxy. Mid-run the proxy is disabled (connections cut, new ones refused): the Postgres lane
retries, fails and restarts from its committed position, while the ClickHouse lane keeps applying
and converges on its own. The proxy comes back and both sinks converge to Cassandra's ``SELECT *``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    HISTORY,
    NodeUnderTest,
    SinkTargets,
    create_items_table,
    divergences,
    environ,
    pipeline_config,
    table_schema,
    wait_until,
    write_history,
)

from cdc_core.pipeline import Pipeline

pytestmark = pytest.mark.integration


async def test_postgres_outage_does_not_stop_clickhouse_and_both_converge(
    node8: NodeUnderTest,
    postgres_dsn: str,
    postgres_proxy_dsn: str,
    clickhouse_url: str,
    clickhouse_database: str,
    toxiproxy: Any,
    tmp_path: Path,
) -> None:
    node = node8
    create_items_table(node)
    schema = table_schema(node)
    half = len(HISTORY) // 2
    write_history(node, HISTORY[:half])

    config = pipeline_config(node, tmp_path, clickhouse_database=clickhouse_database)
    pg = config["sinks"]["pg"]
    pg.update(
        connect_timeout=2,
        command_timeout=5,
        retry={"attempts": 3, "base_delay": 0.1, "max_delay": 0.3},
        on_failure="restart",
        restart_delay=0.5,
    )
    # The pipeline writes to Postgres through the proxy; the test reads it directly.
    pipeline = Pipeline.from_config(config, environ=environ(pg_dsn=postgres_proxy_dsn, ch_url=clickhouse_url))
    both = SinkTargets(pg_dsn=postgres_dsn, ch_url=clickhouse_url, ch_database=clickhouse_database)
    only_ch = SinkTargets(ch_url=clickhouse_url, ch_database=clickhouse_database)
    timings: dict[str, float] = {}
    task = asyncio.create_task(pipeline.run())
    try:
        poll = await wait_until(lambda: divergences(node, schema, both))
        assert poll.ok, "before the outage:\n  " + "\n  ".join(poll.last)
        timings["first half"] = poll.seconds
        pg_lane, ch_lane = pipeline.lanes["pg"].status, pipeline.lanes["ch"].status
        pg_before, ch_before = pg_lane.applied_events, ch_lane.applied_events

        toxiproxy.disable("postgres")
        outage = time.monotonic()
        ttl_expired_at = await asyncio.to_thread(write_history, node, HISTORY[half:])
        poll = await wait_until(lambda: divergences(node, schema, only_ch, not_before=ttl_expired_at))
        assert poll.ok, "ClickHouse during the Postgres outage:\n  " + "\n  ".join(poll.last)
        timings["clickhouse during the outage"] = poll.seconds
        assert ch_lane.applied_events > ch_before, "the ClickHouse lane applied nothing while Postgres was down"
        assert pg_lane.applied_events == pg_before, "the Postgres lane applied events through a disabled proxy?"
        # Postgres really was behind (its view still shows the first half only).
        assert await divergences(node, schema, SinkTargets(pg_dsn=postgres_dsn)), "Postgres converged through a disabled proxy?"
        # Let the lane exhaust its retries at least once (it restarts from its committed position).
        poll = await wait_until(lambda: _failed_once(pipeline), within=60, interval=0.2)
        assert poll.ok, poll.last
        down_for = time.monotonic() - outage

        toxiproxy.enable("postgres")
        poll = await wait_until(lambda: divergences(node, schema, both))
        assert poll.ok, "after the outage:\n  " + "\n  ".join(poll.last)
        timings["postgres after the outage"] = poll.seconds
        assert pg_lane.applied_events > pg_before
    finally:
        toxiproxy.enable("postgres")
        pipeline.stop()
        summary = await asyncio.wait_for(task, 30)
        await pipeline.close()
    assert summary.lanes["ch"].failures == 0, summary.lanes["ch"].last_error
    assert summary.lanes["pg"].failures >= 1
    retries = pipeline.metrics.registry.get_sample_value("cdc_retries_total", {"destination": "pg"})
    assert retries is not None and retries > 0, "the Postgres lane never retried"
    remaining = await divergences(node, schema, both)
    assert not remaining, "after the stop:\n  " + "\n  ".join(remaining)
    print(
        f"fault injection: Postgres down {down_for:.1f}s, {summary.lanes['pg'].failures} lane failures, {retries:.0f} retries; "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    )


async def _failed_once(pipeline: Pipeline) -> list[str]:
    status = pipeline.lanes["pg"].status
    return [] if status.failures >= 1 else [f"pg lane: state {status.state}, no failure yet ({status.last_error})"]
