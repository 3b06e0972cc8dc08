"""Which overlapping writes of one sink may merge before their turn.

With ``overlapping_writes``, batch N+1 stages while batch N is being written, and by default
merges only once N has committed (``Batch.wait_turn``). It may merge *before* that when nothing
it locks can be wanted by a write still pending before it:

* every pending earlier write has folded and is known to lock none of the rows N+1 merges (its
  *footprint*: per destination relation, the keys of the rows its merges touch), so neither
  waits for the other's rows; and
* every pending earlier write holds its transaction's advisory lock, on which N+1 then waits
  *inside the server* before its commit turn. Any wait of an earlier write on N+1 — the only
  other one possible is a table lock queued behind a third party's DDL that waits for N+1's
  row-exclusive lock — then closes a cycle PostgreSQL sees and breaks (a deadlock error, which
  is transient and retried), instead of a cycle through the client nobody would break.

Offsets are upserted after the turn in any case, so consecutive batches never both hold the
offsets row. Batches with history-mode tables never merge early (their rows are keyed by
position, not by a footprint this module computes).

A write takes its connection before its turn only with one of the pool's *early slots* (one
fewer than the pool's size, :class:`EarlySlots`): the writes waiting for their turn never hold
every connection, so the write whose turn has come always gets one. More writes in flight than
connections then fold and encode ahead and wait for a connection, which a batch retried after
later ones were handed over needs as much as any. A slot is handed back the moment its write's
turn comes, wherever that write is (still merging early, say): from then on it is the write
whose turn has come, which needs no slot, and the next write may take one.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import weakref
from collections.abc import Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from cdc_core.sinks import Batch
from cdc_core.turns import Turn

__all__ = ["EarlySlot", "EarlySlots", "Flight", "Flights", "Footprint", "turn_due"]

# Per destination relation (its qualified name), the keys of the rows a write's merges lock
# (sets or dict key views: hashed membership, and isdisjoint in C).
Footprint = Mapping[str, AbstractSet[Hashable]]


class Flight:
    """A write in flight: its advisory lock id, whether its transaction holds that lock now,
    and its footprint once folded (None: unknown, or a table that never merges early)."""

    __slots__ = ("footprint", "lock", "locked")

    def __init__(self, lock: int) -> None:
        self.lock = lock
        self.locked = False
        self.footprint: Footprint | None = None


class Flights:
    """The sink's writes in flight, by their turn."""

    def __init__(self) -> None:
        # Advisory lock ids (two int4 keys): one key random per sink instance, so sinks and
        # agents sharing a database do not wait on each other's locks; one per write.
        self.space = secrets.randbits(31)
        self._ids = itertools.count(1)
        self._by_turn: weakref.WeakKeyDictionary[Turn, Flight] = weakref.WeakKeyDictionary()

    def start(self, turn: Turn) -> Flight:
        flight = Flight(next(self._ids) % (2**31))
        self._by_turn[turn] = flight
        return flight

    def end(self, turn: Turn, flight: Flight) -> None:
        if self._by_turn.get(turn) is flight:
            del self._by_turn[turn]

    def early_locks(self, turn: Turn, flight: Flight) -> list[int] | None:
        """The advisory locks to wait on if this write may merge before its turn; None if it
        may not (or need not: nothing is pending before it)."""
        if flight.footprint is None:
            return None
        pending = turn.pending_before()
        if not pending:
            return None
        locks: list[int] = []
        for before in pending:
            other = self._by_turn.get(before)
            if before.abandoned or other is None or not other.locked or other.footprint is None:
                return None
            if not disjoint(flight.footprint, other.footprint):
                return None
            locks.append(other.lock)
        return locks


def disjoint(a: Footprint, b: Footprint) -> bool:
    """No relation has a key in both."""
    for relation, keys in a.items():
        theirs = b.get(relation)
        if theirs is None:
            continue
        small, large = (keys, theirs) if len(keys) <= len(theirs) else (theirs, keys)
        if not large.isdisjoint(small):  # (iterates the smaller, looking each up in the larger)
            return False
    return True


def footprint(relations: Sequence[tuple[str, AbstractSet[Hashable]]]) -> dict[str, AbstractSet[Hashable]]:
    """Merge (relation, keys) pairs into one footprint (a relation named twice: both key sets)."""
    out: dict[str, Any] = {}
    for relation, keys in relations:
        if not keys:
            continue
        mine = out.get(relation)
        out[relation] = keys if mine is None else {*mine, *keys}
    return out


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
