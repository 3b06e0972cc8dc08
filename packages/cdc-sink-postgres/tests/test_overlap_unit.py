"""The connections overlapping writes may take before their turn (cdc_sink_postgres.overlap), without a server."""

from __future__ import annotations

import asyncio
import contextlib

from cdc_core.sinks import Batch
from cdc_core.turns import Turn, Turns
from cdc_sink_postgres.overlap import EarlySlots

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
