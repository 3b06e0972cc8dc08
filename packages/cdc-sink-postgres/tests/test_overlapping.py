"""Overlapping writes against a real server: the next batch stages while the previous one is
being written, waits for its turn before anything visible, and commits after it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_sink_helpers import batch, collections_schema, partition_delete, range_delete, schema, upsert

from cdc_core.errors import TransientError
from cdc_core.events import ChangeEvent, RangeBound
from cdc_core.sinks import Batch
from cdc_core.testing.contract import batches_of, normalise_state
from cdc_core.testing.model import latest_state
from cdc_core.testing.strategies import NOW, event_histories
from cdc_core.turns import Turns, write_overlapping
from cdc_sink_postgres.config import DEFAULT_INLINE_MAX_VALUES, TableConfig
from cdc_sink_postgres.sink import PostgresSink
from cdc_sink_postgres.testing import PostgresHarness

pytestmark = pytest.mark.integration

S = schema("overlap", {"pk": "int", "v": "text"})


# Each test runs with merges sent through COPY and a staging table, and sent inline (array
# parameters: nothing is staged before the turn).
@pytest.fixture(params=[0, DEFAULT_INLINE_MAX_VALUES], ids=["copy", "inline"])
async def harness(pg_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[PostgresHarness]:
    h = PostgresHarness(pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}", config_overrides={"inline_max_values": request.param})
    yield h
    await h.destroy()


def _staged_only(h: PostgresHarness, state: str, query: str) -> bool:
    """A write waiting with nothing merged: its transaction open and idle, its last statement the
    COPY into its staging table, or with merges sent inline its BEGIN or prelude (no INSERT)."""
    if h.config_overrides.get("inline_max_values", DEFAULT_INLINE_MAX_VALUES):
        return state == "idle in transaction" and "INSERT" not in query.upper()
    return state == "idle in transaction" and query.startswith("COPY")


INLINE_CHOICES = st.sampled_from([0, 8, DEFAULT_INLINE_MAX_VALUES])


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

    async def run_all(conn: Any, steps: Any, b: Batch, *rest: Any, **kw: Any) -> set[str]:
        pids.append(conn.get_server_pid())
        return await original(conn, steps, b, *rest, **kw)

    sink._run_all = run_all  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(sink.write(_gated(second, gate, waiting)))
    try:
        await asyncio.wait_for(waiting.wait(), 10)
        # Waiting for its turn: its rows are staged in its open transaction, nothing is visible.
        state, query = await _last_statement(harness.dsn, pids[-1])
        assert _staged_only(harness, state, query), (state, query)
        visible, offsets = await _visible(harness.dsn, sink.name)
        assert 2 not in visible and offsets["n1"] < second.positions["n1"].offset
        # The batch before it is written meanwhile on another connection, then the turn comes.
        await sink.write(first)
        assert (await _visible(harness.dsn, sink.name))[0] == {0, 1}
        gate.set()
        await asyncio.wait_for(task, 10)
    finally:  # nothing left waiting (the sink must be able to close)
        gate.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
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
    inline = data.draw(INLINE_CHOICES, label="inline_max_values")
    h = PostgresHarness(
        pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}", config_overrides={"overlapping_writes": overlap, "inline_max_values": inline}
    )
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


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_more_writes_in_flight_than_connections_and_retries_converge(pg_dsn: str, data: st.DataObject) -> None:
    """Up to three writes in flight on a pool of one or two connections, some batches failing
    once just before their offsets (in their transaction, or after their turn when they
    committed ahead of it), or their one statement (their connection given back, the batches
    after them already folded or holding a connection) and retried in place as the engine does:
    no write hangs, and the state and offsets are the model's."""
    s = collections_schema()
    events = data.draw(event_histories(s, max_events=24), label="history")
    sizes = data.draw(st.lists(st.integers(1, 5), min_size=2, max_size=5), label="sizes")
    overlap = data.draw(st.integers(2, 3), label="overlap")
    pool = data.draw(st.integers(1, 2), label="pool")
    batches = batches_of(events, sizes)
    failing = data.draw(st.sets(st.sampled_from(range(len(batches)))), label="failing once")
    h = PostgresHarness(
        pg_dsn,
        sink_name=f"pg_{uuid.uuid4().hex[:8]}",
        config_overrides={
            "overlapping_writes": overlap,
            "pool_max_size": pool,
            "pool_min_size": 1,
            "inline_max_values": data.draw(INLINE_CHOICES, label="inline_max_values"),
        },
    )
    try:
        sink = await h.make_sink()
        assert isinstance(sink, PostgresSink)
        store = sink.offsets.store
        to_fail = {id(batches[i].positions) for i in failing}

        async def flaky_store(conn: Any, name: str, positions: Any) -> None:
            if id(positions) in to_fail:
                to_fail.discard(id(positions))
                await asyncio.sleep(0.01)  # the batches after it get going meanwhile
                raise TransientError("injected: connection lost")
            await store(conn, name, positions)

        sink.offsets.store = flaky_store  # type: ignore[method-assign,assignment]
        single = sink._single_statement

        def flaky_single(steps: Any, b: Batch, *staged: Any, **kw: Any) -> Any:  # merges (and offsets) as one statement
            if id(b.positions) in to_fail:
                to_fail.discard(id(b.positions))
                raise TransientError("injected: connection lost")
            return single(steps, b, *staged, **kw)

        sink._single_statement = flaky_single  # type: ignore[method-assign,assignment]

        async def write(b: Batch) -> Any:
            try:
                return await sink.write(b)
            except TransientError:
                return await sink.write(b)  # the engine's retry, in place

        results = await asyncio.wait_for(write_overlapping(write, batches, overlap), 30)
        assert not to_fail  # every chosen batch failed once
        assert not any(r.rejected for r in results)
        assert normalise_state(await h.read_state(s, NOW)) == normalise_state(latest_state(events, now=NOW))
        expected = {node: p for b in batches for node, p in b.positions.items()}
        assert dict(await sink.committed_positions()) == expected
    finally:
        await h.destroy()


# --- committing before the turn (PostgresSink.write) --------------------------------------------


async def _backend(dsn: str, application_pid: int) -> tuple[str, str | None, str]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT state, wait_event, query FROM pg_stat_activity WHERE pid = $1", application_pid)
        assert row is not None
        return row["state"], row["wait_event"], row["query"]
    finally:
        await conn.close()


class _Held:
    """Holds chosen batches of a sink in their turn just before they store their offsets (their
    merges done, their transaction open), and records the server pid of each write that runs in
    a transaction."""

    def __init__(self, sink: PostgresSink, held: list[Batch]) -> None:
        self.sink = sink
        self.gate = asyncio.Event()
        self.reached = asyncio.Event()
        self.pids: dict[str, int] = {}
        held_ids = {b.batch_id for b in held}
        store, run_all = sink.offsets.store, sink._run_all

        async def stored(conn: Any, name: str, positions: Any) -> None:
            if any(positions is b.positions for b in held) and conn.is_in_transaction():
                self.reached.set()
                await self.gate.wait()
            await store(conn, name, positions)

        async def ran(conn: Any, steps: Any, b: Batch, *rest: Any, **kw: Any) -> set[str]:
            self.pids[b.batch_id] = conn.get_server_pid()
            return await run_all(conn, steps, b, *rest, **kw)

        sink.offsets.store = stored  # type: ignore[method-assign,assignment]
        sink._run_all = ran  # type: ignore[method-assign,assignment]
        # A held batch stores its offsets in a statement of their own (else its merges and
        # offsets would be one statement: nothing to hold it in).
        single = sink._single_statement

        def no_single(steps: Any, b: Batch, *staged: Any, **kw: Any) -> Any:
            return None if b.batch_id in held_ids else single(steps, b, *staged, **kw)

        sink._single_statement = no_single  # type: ignore[method-assign,assignment]
        assert held_ids


async def _wait_for(predicate: Any) -> None:
    """Poll the server's view until ``predicate`` holds (10 s at most)."""
    async with asyncio.timeout(10):
        while not await predicate():  # noqa: ASYNC110 — the state polled lives in the server
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _pair(
    harness: PostgresHarness, make: Callable[[], tuple[Batch, Batch]]
) -> AsyncIterator[tuple[Batch, Batch, _Held, asyncio.Task[Any], asyncio.Task[Any]]]:
    """The batches ``make()`` builds (after a warm-up write, so their positions come later):
    the first held in its turn before its offsets (merged, transaction open), the second started
    behind it, both with the engine's turns. On the way out nothing is left waiting (the sink
    can close)."""
    sink = await _sink(harness)
    await sink.write(batch([upsert(S, {"pk": 0}, 1, v="warm")]))
    first, second = make()
    held = _Held(sink, [first])
    turns = Turns()
    t1, t2 = turns.take(), turns.take()
    w1 = asyncio.create_task(t1.run(sink.write, first))
    w2: asyncio.Task[Any] | None = None
    try:
        await asyncio.wait_for(held.reached.wait(), 10)
        w2 = asyncio.create_task(t2.run(sink.write, second))
        yield first, second, held, w1, w2
    finally:
        held.gate.set()
        tasks = [t for t in (w1, w2) if t is not None]
        if any(not t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _visible_pk(dsn: str, sink: str, pk: int) -> Callable[[], Any]:
    async def check() -> bool:
        return pk in (await _visible(dsn, sink))[0]

    return check


async def _waiting_on_a_row(dsn: str) -> bool:
    """A sink's statement waits inside the server for a row another transaction holds."""
    conn = await asyncpg.connect(dsn)
    try:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event IN ('transactionid', 'tuple')"
                " AND query LIKE '%ks_overlap__state%'"
            )
        )
    finally:
        await conn.close()


def _disjoint() -> tuple[Batch, Batch]:
    return batch([upsert(S, {"pk": 1}, 10, v="a")]), batch([upsert(S, {"pk": 2}, 10, v="b")])


def _sharing() -> tuple[Batch, Batch]:
    return batch([upsert(S, {"pk": 1}, 10, v="a"), upsert(S, {"pk": 3}, 10, v="c")]), batch([upsert(S, {"pk": 3}, 20, v="c2")])


def _sharing_a_partition_tombstone() -> tuple[Batch, Batch]:
    first = batch([upsert(S, {"pk": 1}, 10, v="a"), partition_delete(S, {"pk": 3}, 10)])
    return first, batch([partition_delete(S, {"pk": 3}, 20), upsert(S, {"pk": 2}, 10, v="b")])


R = schema("overlap_ranges", {"pk": "int", "ck": "int", "v": "text"}, ck=("ck",))


def _range_delete(pk: int, lo: int, hi: int, ts: int) -> ChangeEvent:
    return range_delete(R, {"pk": pk}, RangeBound(values=(lo,), inclusive=True), RangeBound(values=(hi,), inclusive=True), ts)


def _sharing_a_range_tombstone() -> tuple[Batch, Batch]:
    first = batch([upsert(R, {"pk": 1, "ck": 1}, 10, v="a"), _range_delete(3, 1, 2, 10)])
    return first, batch([_range_delete(3, 1, 2, 20), upsert(R, {"pk": 2, "ck": 1}, 10, v="b")])


async def test_a_later_batch_commits_its_rows_before_its_turn_and_its_offsets_after_it(harness: PostgresHarness) -> None:
    async with _pair(harness, _disjoint) as (_, second, held, w1, w2):
        # The first batch is merged, uncommitted, in its turn; the second commits its rows now.
        await _wait_for(_visible_pk(harness.dsn, harness.sink_name, 2))
        visible, offsets = await _visible(harness.dsn, harness.sink_name)
        assert 1 not in visible and offsets["n1"] < second.positions["n1"].offset  # its offsets wait for the turn
        assert not w2.done()  # and so does the write
        held.gate.set()
        await asyncio.wait_for(asyncio.gather(w1, w2), 10)
        visible, offsets = await _visible(harness.dsn, harness.sink_name)
        assert visible == {0, 1, 2} and offsets == {"n1": second.positions["n1"].offset}


async def test_batches_sharing_only_a_partition_tombstone_commit_before_their_turn(harness: PostgresHarness) -> None:
    """Partition tombstones are appended and lock nothing: a batch deleting a partition that a
    pending earlier batch deletes too does not wait for it."""
    async with _pair(harness, _sharing_a_partition_tombstone) as (_, second, held, w1, w2):
        await _wait_for(_visible_pk(harness.dsn, harness.sink_name, 2))
        held.gate.set()
        await asyncio.wait_for(asyncio.gather(w1, w2), 10)
        visible, offsets = await _visible(harness.dsn, harness.sink_name)
        assert visible == {0, 1, 2} and offsets == {"n1": second.positions["n1"].offset}


async def test_batches_sharing_only_a_range_tombstone_commit_before_their_turn(harness: PostgresHarness) -> None:
    """Range tombstones are appended too."""

    async def second_visible() -> bool:
        return (2, 1) in (await harness.read_state(R, NOW)).rows

    async with _pair(harness, _sharing_a_range_tombstone) as (_, second, held, w1, w2):
        await _wait_for(second_visible)
        assert not w2.done()
        held.gate.set()
        await asyncio.wait_for(asyncio.gather(w1, w2), 10)
        assert set((await harness.read_state(R, NOW)).rows) == {(1, 1), (2, 1)}
        _, offsets = await _visible(harness.dsn, harness.sink_name)
        assert offsets == {"n1": second.positions["n1"].offset}


async def test_a_batch_sharing_rows_with_an_earlier_one_waits_for_them_in_the_server(harness: PostgresHarness) -> None:
    async with _pair(harness, _sharing) as (_, second, held, w1, w2):
        await _wait_for(lambda: _waiting_on_a_row(harness.dsn))  # on pk 3, the first batch's
        visible, offsets = await _visible(harness.dsn, harness.sink_name)
        assert visible == {0} and offsets["n1"] < second.positions["n1"].offset
        held.gate.set()
        await asyncio.wait_for(asyncio.gather(w1, w2), 10)
        conn = await asyncpg.connect(harness.dsn)
        try:
            assert await conn.fetchval("SELECT v FROM cdc_test.ks_overlap WHERE pk = 3") == "c2"
        finally:
            await conn.close()
        assert (await _visible(harness.dsn, harness.sink_name))[1] == {"n1": second.positions["n1"].offset}


async def test_a_write_cancelled_after_committing_ahead_moves_no_offsets_and_replays_to_the_same_state(harness: PostgresHarness) -> None:
    """The engine cancels the writes after one that failed, and later resumes from the offsets:
    rows committed ahead of their turn are then written again, which changes nothing."""
    async with _pair(harness, _disjoint) as (first, second, held, w1, w2):
        await _wait_for(_visible_pk(harness.dsn, harness.sink_name, 2))  # committed, waiting for its turn
        w2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await w2
        held.gate.set()
        await asyncio.wait_for(w1, 10)
        visible, offsets = await _visible(harness.dsn, harness.sink_name)
        assert visible == {0, 1, 2} and offsets == {"n1": first.positions["n1"].offset}
        before = await harness.read_state(S, NOW)
        await held.sink.write(second)  # the replay
        assert await harness.read_state(S, NOW) == before
        assert (await _visible(harness.dsn, harness.sink_name))[1] == {"n1": second.positions["n1"].offset}


async def test_a_third_party_ddl_between_overlapping_writes_cannot_hang_them(harness: PostgresHarness) -> None:
    """A write committing ahead of its turn never waits for it holding a lock, so a third
    party's DDL queued between overlapping writes (behind the table lock of one that waits on a
    row of an earlier one) only waits for them: everything goes through, in order."""
    sink = await _sink(harness)
    await sink.write(batch([upsert(S, {"pk": 0}, 1, v="warm")]))
    b0 = batch([upsert(S, {"pk": 1}, 10, v="a")])
    b1 = batch([upsert(S, {"pk": 1}, 20, v="a2")])  # shares pk 1 with b0: waits for its row
    b2 = batch([upsert(S, {"pk": 2}, 10, v="b")])  # disjoint from both: commits ahead
    held = _Held(sink, [b0])
    turns = Turns()
    t0, t1, t2 = turns.take(), turns.take(), turns.take()
    tasks = [asyncio.create_task(t0.run(sink.write, b0))]
    try:
        await asyncio.wait_for(held.reached.wait(), 10)
        tasks.append(asyncio.create_task(t1.run(sink.write, b1)))
        await _wait_for(lambda: _waiting_on_a_row(harness.dsn))
        tasks.append(asyncio.create_task(t2.run(sink.write, b2)))
        await _wait_for(_visible_pk(harness.dsn, harness.sink_name, 2))
        ddl = await asyncpg.connect(harness.dsn)
        try:
            alter = asyncio.create_task(ddl.execute("ALTER TABLE cdc_test.ks_overlap__state ADD COLUMN IF NOT EXISTS extra int"))
            await asyncio.sleep(0.3)  # the ALTER queues behind b0's and b1's locks
            assert not alter.done()
            held.gate.set()  # b0 commits, b1 gets its row and commits, then the ALTER runs
            await asyncio.wait_for(asyncio.gather(*tasks, alter), 30)
        finally:
            await ddl.close()
        conn = await asyncpg.connect(harness.dsn)
        try:
            rows = await conn.fetch("SELECT pk, v FROM cdc_test.ks_overlap ORDER BY pk")
            assert [(r["pk"], r["v"]) for r in rows] == [(0, "warm"), (1, "a2"), (2, "b")]
        finally:
            await conn.close()
        assert (await _visible(harness.dsn, harness.sink_name))[1] == {"n1": b2.positions["n1"].offset}
    finally:  # nothing left waiting, whatever failed (the sink must be able to close)
        held.gate.set()
        if any(not t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_history_mode_batch_waits_for_its_turn_before_anything_visible(pg_dsn: str) -> None:
    """History rows are appended in position order for readers following them: a batch with a
    history-mode table merges only in its turn, also when it could commit ahead."""
    h = PostgresHarness(
        pg_dsn, sink_name=f"pg_{uuid.uuid4().hex[:8]}", config_overrides={"tables": {"ks.overlap": TableConfig(mode="history")}}
    )

    async def rows() -> int:
        conn = await asyncpg.connect(h.dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM cdc_test.ks_overlap"))
        finally:
            await conn.close()

    try:
        async with _pair(h, _disjoint) as (_, second, held, w1, w2):

            async def staged_and_idle() -> bool:
                pid = held.pids.get(second.batch_id)
                return pid is not None and _staged_only(h, *(await _backend(h.dsn, pid))[::2])

            await _wait_for(staged_and_idle)
            assert await rows() == 1  # the warm-up's
            held.gate.set()
            await asyncio.wait_for(asyncio.gather(w1, w2), 10)
            assert await rows() == 3
    finally:
        await h.destroy()
