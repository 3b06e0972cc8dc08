"""Turns: several writes of one lane in flight, their positions moved in order (``Batch.wait_turn``).

The engine takes a :class:`Turn` per batch from the lane's :class:`Turns`; the write awaits its
turn before committing, which comes when the write before it has finished. A write that fails
abandons its turn, and every write waiting behind it is cancelled. :func:`write_overlapping`
drives a sink the way the engine does, for benchmarks and tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import attrs

from cdc_core.sinks import Batch

__all__ = ["Turn", "Turns", "write_overlapping"]

T = TypeVar("T")


class Turn:
    """One write's place in the order: awaiting it (``batch.turn()``, :meth:`wait`) returns once
    the previous write finished; :attr:`due` tells without waiting."""

    __slots__ = ("_finished", "_previous")

    def __init__(self, previous: asyncio.Future[None] | None, finished: asyncio.Future[None]) -> None:
        self._previous = previous
        self._finished = finished

    def __call__(self) -> Awaitable[None]:
        return self.wait()

    async def wait(self) -> None:
        if self._previous is not None:
            # Shielded: a waiter being cancelled must not cancel the previous write's future.
            await asyncio.shield(self._previous)

    @property
    def due(self) -> bool:
        """The previous write has ended: :meth:`wait` returns at once (raising if it failed)."""
        return self._previous is None or self._previous.done()

    async def run(self, write: Callable[[Batch], Awaitable[T]], batch: Batch) -> T:
        """``write(batch)`` with this turn in ``batch.turn``; finishes (or abandons) the turn."""
        try:
            result = await write(attrs.evolve(batch, turn=self))
        except BaseException:
            self._finished.cancel()  # the writes waiting behind this one are cancelled
            raise
        self._finished.set_result(None)
        return result


class Turns:
    """Hands out turns in order, one per batch of a lane."""

    def __init__(self) -> None:
        self._previous: asyncio.Future[None] | None = None

    def take(self) -> Turn:
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        turn = Turn(self._previous, finished)
        self._previous = finished
        return turn


async def write_overlapping(
    write: Callable[[Batch], Awaitable[T]],
    batches: Iterable[Batch] | AsyncIterator[Batch],
    overlap: int,
    written: Callable[[Batch, T], Awaitable[bool]] | None = None,
) -> list[T]:
    """Write ``batches`` as the engine does (it calls this) for a sink with ``overlapping_writes =
    overlap``: up to ``overlap`` at once, each committing after the one before it.

    A batch is taken from ``batches`` only when a slot is free, so a bounded source stays
    bounded. ``written(batch, result)`` runs for each batch in order once its write returned;
    returning True stops there (writes started after it are cancelled). Without ``written`` the
    results are returned in order (with it, none are kept: a lane runs for days). The first
    failure of a write cancels those still running and is raised; an error from ``batches`` is
    raised once the writes started before it are done."""
    turns = Turns()
    slots = asyncio.Semaphore(max(1, overlap))
    started: asyncio.Queue[tuple[Batch, asyncio.Task[T]] | Exception | None] = asyncio.Queue()
    tasks: list[asyncio.Task[T]] = []
    source = batches if isinstance(batches, AsyncIterator) else _async(batches)

    async def start() -> None:
        while True:
            await slots.acquire()
            try:
                batch = await anext(source)
            except StopAsyncIteration:
                started.put_nowait(None)
                return
            except Exception as exc:
                started.put_nowait(exc)
                return
            task = asyncio.create_task(turns.take().run(write, batch))
            tasks.append(task)
            started.put_nowait((batch, task))

    starter = asyncio.create_task(start())
    results: list[T] = []
    try:
        while True:
            item = await started.get()
            if item is None:
                return results
            if isinstance(item, Exception):
                raise item
            batch, task = item
            result = await task
            tasks.remove(task)
            slots.release()
            if written is None:
                results.append(result)
            elif await written(batch, result):
                return results
    finally:
        starter.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(starter, *tasks, return_exceptions=True)


async def _async(batches: Iterable[Batch]) -> AsyncIterator[Batch]:
    for batch in batches:
        yield batch
