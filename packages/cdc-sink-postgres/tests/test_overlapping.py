"""Overlapping writes against a real server: the next batch stages while the previous one is
being written, waits for its turn before anything visible, and commits after it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_sink_helpers import batch, collections_schema, schema, upsert

from cdc_core.sinks import Batch
from cdc_core.testing.contract import batches_of, normalise_state
from cdc_core.testing.model import latest_state
from cdc_core.testing.strategies import NOW, event_histories
from cdc_core.turns import write_overlapping
from cdc_sink_postgres.sink import PostgresSink
from cdc_sink_postgres.testing import PostgresHarness

pytestmark = pytest.mark.integration

S = schema("overlap", {"pk": "int", "v": "text"})


@pytest.fixture
async def harness(pg_dsn: str) -> AsyncIterator[PostgresHarness]:
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}")
    yield h
    await h.destroy()


async def _sink(h: PostgresHarness) -> PostgresSink:
    sink = await h.make_sink()
    assert isinstance(sink, PostgresSink)
    assert sink.overlapping_writes == 2  # the default
    return sink


async def _visible(dsn: str, sink: str) -> tuple[set[int], dict[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT pk FROM cdc_test.ks_overlap")
        offsets = await conn.fetch('SELECT node, "offset" FROM cdc_test.cdc_offsets WHERE sink = $1', sink)
        return {r["pk"] for r in rows}, {r["node"]: r["offset"] for r in offsets}
    finally:
        await conn.close()


async def _last_statement(dsn: str, pid: int) -> tuple[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT state, query FROM pg_stat_activity WHERE pid = $1", pid)
        assert row is not None
        return row["state"], row["query"]
    finally:
        await conn.close()


def _gated(b: Batch, gate: asyncio.Event, waiting: asyncio.Event) -> Batch:
    async def turn() -> None:
        waiting.set()
        await gate.wait()

    return attrs.evolve(b, turn=turn)


async def test_the_next_batch_stages_before_its_turn_and_commits_after_it(harness: PostgresHarness) -> None:
    sink = await _sink(harness)
    await sink.write(batch([upsert(S, {"pk": 0}, 1, v="warm")]))  # the table exists
    first, second = batch([upsert(S, {"pk": 1}, 10, v="a")]), batch([upsert(S, {"pk": 2}, 10, v="b")])
    gate, waiting = asyncio.Event(), asyncio.Event()
    pids: list[int] = []
    original = sink._run_all

    async def run_all(conn: Any, work: Any, b: Batch) -> set[str]:
        pids.append(conn.get_server_pid())
        return await original(conn, work, b)

    sink._run_all = run_all  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(sink.write(_gated(second, gate, waiting)))
    await asyncio.wait_for(waiting.wait(), 10)
    # Waiting for its turn: its rows are staged in its open transaction, nothing is visible.
    state, query = await _last_statement(harness.dsn, pids[-1])
    assert state == "idle in transaction" and query.startswith("COPY"), (state, query)
    visible, offsets = await _visible(harness.dsn, sink.name)
    assert 2 not in visible and offsets["n1"] < second.positions["n1"].offset
    # The batch before it is written meanwhile on another connection, then the turn comes.
    await sink.write(first)
    assert (await _visible(harness.dsn, sink.name))[0] == {0, 1}
    gate.set()
    await asyncio.wait_for(task, 10)
    visible, offsets = await _visible(harness.dsn, sink.name)
    assert visible == {0, 1, 2} and offsets == {"n1": second.positions["n1"].offset}


async def test_a_write_cancelled_while_waiting_for_its_turn_commits_nothing(harness: PostgresHarness) -> None:
    sink = await _sink(harness)
    await sink.write(batch([upsert(S, {"pk": 0}, 1, v="warm")]))
    before = await _visible(harness.dsn, sink.name)
    gate, waiting = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(sink.write(_gated(batch([upsert(S, {"pk": 5}, 10, v="never")]), gate, waiting)))
    await asyncio.wait_for(waiting.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _visible(harness.dsn, sink.name) == before
    # The sink goes on (its pool gave back or replaced the connection).
    last = batch([upsert(S, {"pk": 6}, 10, v="after")])
    await sink.write(last)
    visible, offsets = await _visible(harness.dsn, sink.name)
    assert visible == {0, 6} and offsets == {"n1": last.positions["n1"].offset}


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_overlapping_writes_of_one_history_converge(pg_dsn: str, data: st.DataObject) -> None:
    """Batches sharing keys, written with up to three in flight as the engine does: the state
    is the model's, the offsets are the last batch's (no deadlock, nothing lost)."""
    s = collections_schema()
    events = data.draw(event_histories(s, max_events=24), label="history")
    sizes = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4), label="sizes")
    overlap = data.draw(st.integers(2, 3), label="overlap")
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}", config_overrides={"overlapping_writes": overlap})
    try:
        sink = await h.make_sink()
        batches = batches_of(events, sizes)
        results = await asyncio.wait_for(write_overlapping(sink.write, batches, overlap), 60)
        assert not any(r.rejected for r in results)
        assert normalise_state(await h.read_state(s, NOW)) == normalise_state(latest_state(events, now=NOW))
        expected = {node: p for b in batches for node, p in b.positions.items()}  # the last batch of each node
        assert dict(await sink.committed_positions()) == expected
    finally:
        await h.destroy()
