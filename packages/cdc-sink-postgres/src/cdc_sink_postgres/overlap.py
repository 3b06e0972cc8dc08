"""Overlapping writes of one sink: the connections writes may take before their turn.

With ``overlapping_writes``, batch N+1 folds and encodes while batch N is being written. A batch
whose every table is in latest-state mode then commits its rows at once, before its turn, and
moves its offsets after it (``PostgresSink.write``): its merges converge whatever the order, a
crash in between replays it, and it never waits for its turn while it holds a row lock. Any
other batch stages before its turn (into its session's temp tables) and merges in it.

A write takes its connection before its turn only with one of the pool's *early slots* (one
fewer than the pool's size, :class:`EarlySlots`): the writes waiting for their turn never hold
every connection, so the write whose turn has come always gets one. More writes in flight than
connections then fold and encode ahead and wait for a connection, which a batch retried after
later ones were handed over needs as much as any. A slot is handed back the moment its write's
turn comes, wherever that write is (a write that committed ahead keeps its connection until
then, for its offsets): from then on it needs no slot, and the next write may take one.
"""

from __future__ import annotations

import asyncio

from cdc_core.sinks import Batch
from cdc_core.turns import Turn

__all__ = ["EarlySlot", "EarlySlots", "turn_due"]


def turn_due(batch: Batch) -> bool:
    """``batch``'s turn has come: ``Batch.wait_turn`` returns at once (raising if the write
    before it failed)."""
    return batch.turn is None or (isinstance(batch.turn, Turn) and batch.turn.due)


class EarlySlot:
    """An early slot held (or not: ``held`` False). It is released when the write's turn comes
    (:meth:`release_at_turn`), or by :meth:`release`, whichever is first."""

    __slots__ = ("_slots", "_watch")

    def __init__(self, slots: asyncio.Semaphore | None) -> None:
        self._slots = slots
        self._watch: asyncio.Future[None] | None = None

    @property
    def held(self) -> bool:
        return self._slots is not None

    def release_at_turn(self, batch: Batch) -> None:
        """Release the slot as soon as ``batch``'s turn comes (or the write before it fails)."""
        if self._slots is None or self._watch is not None:
            return
        watch = self._watch = asyncio.ensure_future(batch.wait_turn())
        watch.add_done_callback(self._turn_came)

    def _turn_came(self, watch: asyncio.Future[None]) -> None:
        if not watch.cancelled():
            watch.exception()  # (retrieved: the write learns of a failure before it on its own)
        self.release()

    def release(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None and not watch.done():
            watch.cancel()
        if self._slots is not None:
            self._slots.release()
            self._slots = None


class EarlySlots:
    """The connections of a pool of ``pool_size`` that writes may hold before their turn."""

    def __init__(self, pool_size: int) -> None:
        self._free = asyncio.Semaphore(max(0, pool_size - 1))

    async def take(self, batch: Batch) -> EarlySlot:
        """Wait until ``batch``'s write may take a connection: a slot is free (held until its
        turn comes), or its turn has come (no slot needed)."""
        if turn_due(batch):
            return EarlySlot(None)
        if not self._free.locked():
            await self._free.acquire()  # free: returns at once
            held = EarlySlot(self._free)
            held.release_at_turn(batch)
            return held
        slot = asyncio.ensure_future(self._free.acquire())
        turn_came = asyncio.ensure_future(batch.wait_turn())
        try:
            await asyncio.wait((slot, turn_came), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            turn_came.cancel()
            if not slot.cancel() and not slot.cancelled() and slot.exception() is None:
                self._free.release()  # got it just now: hand it back
            raise
        turn_came.cancel()
        # Cancelled while still waiting (the turn came first; the semaphore hands the slot on)?
        if slot.cancel() or slot.cancelled() or slot.exception() is not None:
            return EarlySlot(None)
        held = EarlySlot(self._free)
        if turn_came.done():
            held.release()  # both at once: the turn needs no slot
        else:
            held.release_at_turn(batch)
        return held
