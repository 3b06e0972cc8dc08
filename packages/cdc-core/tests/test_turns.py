"""write_overlapping: the engine's ordering of overlapping writes, as benchmarks and tests use it."""

from __future__ import annotations

import asyncio

import pytest

from cdc_core.positions import Position
from cdc_core.sinks import Batch
from cdc_core.turns import write_overlapping


def _batches(n: int) -> list[Batch]:
    return [Batch(batch_id=f"b{i}", events=(), positions={"n1": Position(node="n1", segment_id=1, offset=i)}) for i in range(n)]


async def test_writes_overlap_and_commit_in_order() -> None:
    committed: list[str] = []
    writing = 0
    most = 0

    async def write(batch: Batch) -> str:
        nonlocal writing, most
        writing += 1
        most = max(most, writing)
        try:
            await asyncio.sleep(0.02 if int(batch.batch_id[1:]) % 2 == 0 else 0.0)  # odd ones are ready first
            await batch.wait_turn()
            committed.append(batch.batch_id)
            return batch.batch_id
        finally:
            writing -= 1

    results = await write_overlapping(write, _batches(6), overlap=2)
    assert results == committed == [f"b{i}" for i in range(6)]
    assert most == 2


async def test_a_failure_cancels_the_writes_behind_it() -> None:
    committed: list[str] = []
    cancelled: list[str] = []

    async def write(batch: Batch) -> None:
        try:
            if batch.batch_id == "b1":
                await asyncio.sleep(0.01)
                raise RuntimeError("b1 failed")
            await batch.wait_turn()
            committed.append(batch.batch_id)
        except asyncio.CancelledError:
            cancelled.append(batch.batch_id)
            raise

    with pytest.raises(RuntimeError, match="b1 failed"):
        await write_overlapping(write, _batches(4), overlap=3)
    assert committed == ["b0"]
    assert "b2" in cancelled and "b3" not in committed


async def test_a_turn_is_due_once_the_write_before_it_ended_and_cancelled_behind_a_failed_one() -> None:
    from cdc_core.turns import Turns

    turns = Turns()
    t0, t1, t2 = turns.take(), turns.take(), turns.take()

    def due() -> list[bool]:
        return [t0.due, t1.due, t2.due]

    assert due() == [True, False, False]

    async def write(batch: Batch) -> None:
        await batch.wait_turn()

    await t0.run(write, _batches(1)[0])
    assert due() == [True, True, False]

    async def failing(batch: Batch) -> None:
        raise RuntimeError("t1 failed")

    with pytest.raises(RuntimeError):
        await t1.run(failing, _batches(1)[0])
    assert due() == [True, True, True]
    with pytest.raises(asyncio.CancelledError):
        await t2.wait()  # the write behind a failed one is cancelled
