"""Convergence end to end (design notes §1): a history of real CQL writes — every kind of write the
reader decodes — goes through ONE pipeline (the commitlog reader on the node's cdc_raw → Postgres,
ClickHouse and a jsonl file), and every sink's latest state must equal what ``SELECT *`` in
Cassandra returns, field by field. The events the jsonl sink wrote, folded by the reference model,
must equal it too: a check of the decoder that does not depend on any sink.

Runs on both test nodes: commitlog v7 (storage_compatibility_mode CASSANDRA_4) and v8 (NONE).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from e2e_support import (
    HISTORY,
    NodeUnderTest,
    SinkTargets,
    create_items_table,
    divergences,
    environ,
    jsonl_events,
    pipeline_config,
    table_schema,
    wait_until,
    write_history,
)

from cdc_core.events import Cell, ChangeKind
from cdc_core.pipeline import Pipeline

pytestmark = pytest.mark.integration


async def test_every_sink_converges_to_cassandra(
    any_node: NodeUnderTest, postgres_dsn: str, clickhouse_url: str, clickhouse_database: str, tmp_path: Path
) -> None:
    node = any_node
    create_items_table(node)
    ttl_expired_at = write_history(node)
    schema = table_schema(node)

    config = pipeline_config(node, tmp_path, clickhouse_database=clickhouse_database)
    pipeline = Pipeline.from_config(config, environ=environ(pg_dsn=postgres_dsn, ch_url=clickhouse_url))
    targets = SinkTargets(pg_dsn=postgres_dsn, ch_url=clickhouse_url, ch_database=clickhouse_database, jsonl=(tmp_path / "events.jsonl",))
    started = time.monotonic()
    task = asyncio.create_task(pipeline.run())
    try:
        poll = await wait_until(lambda: divergences(node, schema, targets, not_before=ttl_expired_at), within=90)
    finally:
        pipeline.stop()
        summary = await asyncio.wait_for(task, 30)
        await pipeline.close()
    elapsed = time.monotonic() - started

    assert summary.failed == [], {name: lane.last_error for name, lane in summary.lanes.items()}
    # After the stop, compare once more, every sink against Cassandra, field by field.
    remaining = await divergences(node, schema, targets)
    assert not remaining, (
        f"[{node.label}] after {poll.seconds:.1f}s of polling ({poll.attempts} polls) the sinks still differ from "
        f"Cassandra's SELECT *:\n  " + "\n  ".join(remaining)
    )
    assert poll.ok, f"[{node.label}] converged only after the stop: {poll.last}"
    assert not list((tmp_path / "dlq").rglob("*.jsonl")), "no event may have been dead-lettered"

    # The history really reached the sinks through the decoder: every kind of event is there.
    events = jsonl_events(tmp_path / "events.jsonl", node.keyspace, node.table)
    kinds = {e.kind for e in events}
    assert kinds >= {ChangeKind.ROW, ChangeKind.PARTITION_DELETE, ChangeKind.RANGE_DELETE}, kinds
    assert any(e.static for e in events)
    assert any(isinstance(c, Cell) and c.ttl for e in events for c in e.cells.values())
    assert len(events) >= len(HISTORY)
    print(f"[{node.label}] {len(events)} events, converged in {poll.seconds:.1f}s ({poll.attempts} polls), run {elapsed:.1f}s")
