"""The reference in-memory sink: keeps every distinct event and folds them with the model.

It exists to prove the contract suite and the engine, and for embedding in tests. It stores its
offsets with its data (both in memory), so it behaves like a transactional destination.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import attrs

from cdc_core.events import ChangeEvent
from cdc_core.positions import Position
from cdc_core.schema import TableSchema
from cdc_core.sinks import Batch, WriteResult
from cdc_core.testing.model import TableState, latest_state

__all__ = ["MemoryDestination", "MemorySink", "MemorySinkConfig"]


@attrs.define
class MemoryDestination:
    """What a memory sink writes into; share one between sink instances to simulate restarts."""

    events: dict[str, dict[tuple[str, int, int, int], ChangeEvent]] = attrs.field(factory=dict)
    offsets: dict[str, Position] = attrs.field(factory=dict)

    def state(self, schema: TableSchema, now: int | None = None) -> TableState:
        return latest_state(self.events.get(schema.qualified_name, {}).values(), now=now)

    def all_events(self) -> list[ChangeEvent]:
        return [e for table in self.events.values() for e in table.values()]


@attrs.frozen(kw_only=True)
class MemorySinkConfig:
    """No options: the destination lives as long as the process."""


_destinations: dict[str, MemoryDestination] = {}


class MemorySink:
    stores_offsets = True

    def __init__(self, name: str, destination: MemoryDestination | None = None, *, write_delay: float = 0.0) -> None:
        self.name = name
        self.destination = destination if destination is not None else MemoryDestination()
        self.write_delay = write_delay

    async def start(self) -> None:
        return None

    async def committed_positions(self) -> Mapping[str, Position]:
        return dict(self.destination.offsets)

    async def write(self, batch: Batch) -> WriteResult:
        if self.write_delay:
            await asyncio.sleep(self.write_delay)
        # Stage first, then publish data and offsets together: a cancellation before this point
        # leaves both untouched, as a transaction would.
        staged = [
            (e.schema.qualified_name, (e.position.node, e.position.segment_id, e.position.offset, e.position.index), e)
            for e in batch.events
        ]
        await asyncio.sleep(0)
        for table, key, event in staged:
            self.destination.events.setdefault(table, {})[key] = event
        self.destination.offsets.update(batch.positions)
        return WriteResult()

    async def close(self) -> None:
        return None


def destination_named(name: str) -> MemoryDestination:
    """The process-wide destination of the memory sink instance called ``name``."""
    return _destinations.setdefault(name, MemoryDestination())
