"""Which overlapping writes may merge before their turn (cdc_sink_postgres.overlap), without a server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Set as AbstractSet

from hypothesis import given
from hypothesis import strategies as st

from cdc_core.sinks import Batch
from cdc_core.turns import Turn, Turns
from cdc_sink_postgres.overlap import EarlySlots, Flights, disjoint, footprint

keys = st.sets(st.tuples(st.integers(0, 20), st.sampled_from(["a", "b"])), max_size=12)
# The sink's footprints hold the fold's dict key views; merged ones, sets.
key_sets = keys | keys.map(lambda s: dict.fromkeys(s).keys())
footprints = st.dictionaries(st.sampled_from(["r1", "r2", "r3"]), key_sets, max_size=3)


Keys = AbstractSet[tuple[int, str]]


@given(a=footprints, b=footprints)
def test_disjoint_is_no_shared_key_in_any_relation(a: dict[str, Keys], b: dict[str, Keys]) -> None:
    shared = any(set(a[r]) & set(b[r]) for r in a.keys() & b.keys())
    assert disjoint(a, b) is not shared
    assert disjoint(a, b) == disjoint(b, a)


def test_footprint_merges_a_relation_named_twice_and_drops_empty_ones() -> None:
    fp = footprint([("r", {1}), ("s", set()), ("r", {2}.union({3}))])
    assert {k: set(v) for k, v in fp.items()} == {"r": {1, 2, 3}}


async def test_early_merge_needs_every_pending_write_locked_known_and_disjoint() -> None:
    flights = Flights()
    turns = Turns()
    t0, t1, t2 = turns.take(), turns.take(), turns.take()
    f0, f1, f2 = flights.start(t0), flights.start(t1), flights.start(t2)
    f2.footprint = {"r": {5}}
    assert flights.early_locks(t2, f2) is None  # earlier ones have not folded yet
    f0.footprint, f1.footprint = {"r": {1}}, {"r": {2}, "s": {5}}
    assert flights.early_locks(t2, f2) is None  # nor taken their lock
    f0.locked = f1.locked = True
    assert flights.early_locks(t2, f2) == [f1.lock, f0.lock]
    f1.footprint = {"r": {5}}
    assert flights.early_locks(t2, f2) is None  # a shared row
    f1.footprint = {"r": {2}}
    flights.end(t1, f1)
    assert flights.early_locks(t2, f2) is None  # a pending write between retries: unknown
    assert flights.early_locks(t0, f0) is None  # nothing pending before the first one
    f2.footprint = None
    f1 = flights.start(t1)
    assert flights.early_locks(t2, f2) is None  # history-mode tables never merge early


# --- early slots: connections held before the turn -------------------------------------------


def _batch(turn: Turn | None) -> Batch:
    return Batch(batch_id="b", events=[], positions={}, turn=turn)


async def _finish(turn: Turn) -> None:
    async def write(b: Batch) -> None:
        return None

    await turn.run(write, _batch(None))


async def test_a_pool_of_one_leaves_no_slot_before_the_turn() -> None:
    slots = EarlySlots(pool_size=1)
    turns = Turns()
    t0, t1 = turns.take(), turns.take()
    assert not (await slots.take(_batch(t0))).held  # its turn has come: needs no slot
    waiting = asyncio.create_task(slots.take(_batch(t1)))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # no slot to give: it waits for its turn
    await _finish(t0)
    slot = await asyncio.wait_for(waiting, 1)
    assert not slot.held
    assert not (await slots.take(_batch(None))).held  # a write without a turn never waits


async def test_writes_before_their_turn_hold_one_connection_fewer_than_the_pool() -> None:
    slots = EarlySlots(pool_size=2)
    turns = Turns()
    t0, t1, t2, t3 = turns.take(), turns.take(), turns.take(), turns.take()
    first = await slots.take(_batch(t1))
    assert first.held
    second = asyncio.create_task(slots.take(_batch(t2)))
    third = asyncio.create_task(slots.take(_batch(t3)))
    await asyncio.sleep(0.01)
    assert not second.done() and not third.done()
    first.release()
    first.release()  # idempotent: hands back one slot only
    got = await asyncio.wait_for(second, 1)
    assert got.held
    await asyncio.sleep(0.01)
    assert not third.done()
    # Cancelled while waiting: nothing is lost, the next one gets the slot.
    third.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await third
    got.release()
    again = await asyncio.wait_for(slots.take(_batch(t3)), 1)
    assert again.held
    again.release()
    # A turn that comes while waiting for a slot: no slot needed, and none taken.
    blocker = await slots.take(_batch(t2))
    assert blocker.held
    waiting = asyncio.create_task(slots.take(_batch(t1)))
    await asyncio.sleep(0.01)
    await _finish(t0)
    assert not (await asyncio.wait_for(waiting, 1)).held
    blocker.release()
    assert (await slots.take(_batch(t3))).held  # the one slot is free again


async def test_a_slot_goes_back_the_moment_its_writes_turn_comes() -> None:
    # The write holding it may still be merging early: it no longer waits for its turn, so the
    # next write may take a connection.
    slots = EarlySlots(pool_size=2)
    turns = Turns()
    t0, t1, t2, t3 = turns.take(), turns.take(), turns.take(), turns.take()
    first = await slots.take(_batch(t1))
    assert first.held
    waiting = asyncio.create_task(slots.take(_batch(t2)))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # t1 holds the only slot
    await _finish(t0)
    second = await asyncio.wait_for(waiting, 1)
    assert (first.held, second.held) == (False, True)  # (a tuple: mypy narrowed first.held above)
    first.release()  # a no-op now: it must not hand back the slot t2 holds
    third = asyncio.create_task(slots.take(_batch(t3)))
    await asyncio.sleep(0.01)
    assert not third.done()

    # The write before fails: the slot goes back too (its write is cancelled anyway).
    async def fail(b: Batch) -> None:
        raise RuntimeError("boom")

    with contextlib.suppress(RuntimeError):
        await t1.run(fail, _batch(None))
    assert (await asyncio.wait_for(third, 1)).held
    assert not second.held
