"""The sink contract: what the engine calls on every destination.

A sink applies a :class:`Batch` atomically with its offsets where it can
(``stores_offsets = True``: the batch's ``positions`` are committed in the same transaction as the
data), or leaves offsets to the core offset store. Applying the same batch twice, or any events
again in any order, must not change the result (design-notes §1, §3).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import attrs

from cdc_core.events import ChangeEvent
from cdc_core.positions import Position

__all__ = ["Batch", "Rejected", "Sink", "WriteResult"]


@attrs.frozen(kw_only=True)
class Batch:
    """Events to apply, and per node the position to commit once they are applied.

    ``positions`` may run ahead of the last event (events of skipped tables still advance it).
    ``batch_id`` is deterministic for the batch's content so a re-sent batch can be recognised
    (ClickHouse insert deduplication tokens); it also serves as the log correlation id.

    ``dead_letter``: a sink that stores its own offsets and refuses single events must await
    ``batch.dead_letter(rejected)`` *before* it commits the batch's positions, so a crash between
    the two can never lose the refused events (they are in the DLQ, durably, first). It may be
    called more than once; it is ``None`` when nobody listens (tests, ``cdc dlq replay``).

    ``turn``: set by the engine for a sink declaring ``overlapping_writes > 1`` (see
    :class:`Sink`), which may then be handed a batch while the lane's previous one is still being
    written. Such a sink awaits :meth:`wait_turn` before anything that must follow the previous
    batch's commit (moving offsets, committing what must be in order), and returns only after it;
    what is private to its own session (folding, staging into a temporary table) may run before,
    and so may committing data that converges in any order. :meth:`wait_turn` returns once
    every earlier batch of the lane is applied; if one of them fails, the waiting write is
    cancelled instead (it must then move no positions; data it committed before its turn must
    be what replaying the batch writes anyway, since the engine resumes from the positions).
    """

    batch_id: str
    events: Sequence[ChangeEvent]
    positions: Mapping[str, Position]
    dead_letter: Callable[[Sequence[Rejected]], Awaitable[None]] | None = attrs.field(default=None, eq=False, repr=False)
    turn: Callable[[], Awaitable[None]] | None = attrs.field(default=None, eq=False, repr=False)

    async def wait_turn(self) -> None:
        """Wait until every earlier batch of the lane is applied (immediately without ``turn``)."""
        if self.turn is not None:
            await self.turn()


@attrs.frozen(kw_only=True)
class Rejected:
    """An event the destination refused for good, with why; it goes to the DLQ."""

    event: ChangeEvent
    error: str
    error_type: str = "PermanentError"


@attrs.frozen(kw_only=True)
class WriteResult:
    """What ``write`` did: all events applied except ``rejected``."""

    rejected: Sequence[Rejected] = ()


@runtime_checkable
class Sink(Protocol):
    """A destination. ``name`` is the configured instance name (e.g. ``warehouse_pg``)."""

    name: str
    stores_offsets: bool
    # Optional (read with getattr, default 1): how many batches of one lane the sink may be
    # writing at once. Above 1, the engine hands it the next batch before the previous one has
    # committed, and the sink moves its positions in order with ``Batch.wait_turn``.
    # overlapping_writes: int

    async def start(self) -> None:
        """Connect and prepare; called once before anything else."""

    async def committed_positions(self) -> Mapping[str, Position]:
        """Per node, the last position durably applied (only asked when ``stores_offsets``)."""

    async def write(self, batch: Batch) -> WriteResult:
        """Apply the batch (idempotently). Raise TransientError to be retried, PermanentError
        for a batch that can never apply (each event then goes to the DLQ), or return the events
        refused one by one in ``WriteResult.rejected`` while the rest is applied — passing them
        to ``batch.dead_letter`` first when the sink commits offsets itself."""

    async def close(self) -> None:
        """Release connections. Not guaranteed to be called: correctness never depends on it."""
