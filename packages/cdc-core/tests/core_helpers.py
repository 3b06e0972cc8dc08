"""Test-side plugins and event files for the engine tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cdc_core import hookimpl
from cdc_core.builtins.jsonl import JsonlReader, JsonlReaderConfig
from cdc_core.builtins.memory import MemoryDestination, MemorySink
from cdc_core.errors import PermanentError, TransientError
from cdc_core.events import Cell, ChangeEvent, ChangeKind, Liveness
from cdc_core.factories import ReaderFactory, SinkFactory, TransformFactory
from cdc_core.plugins import PluginInfo
from cdc_core.positions import Position
from cdc_core.readers import ReaderItem
from cdc_core.schema import ColumnKind, ColumnSchema, TableSchema
from cdc_core.serialization import event_to_json
from cdc_core.sinks import Batch, Rejected, WriteResult

SCHEMA = TableSchema(
    keyspace="shop",
    table="orders",
    id=uuid.UUID("00000000-0000-0000-0000-000000000001"),
    columns=(
        ColumnSchema(name="id", type="int", kind=ColumnKind.PARTITION_KEY),
        ColumnSchema(name="note", type="text", kind=ColumnKind.REGULAR, position=-1),
    ),
)


def make_events(n: int, node: str = "n1") -> list[ChangeEvent]:
    return [
        ChangeEvent(
            position=Position(node=node, segment_id=1, offset=100 + i * 10),
            schema=SCHEMA,
            kind=ChangeKind.ROW,
            key={"id": i},
            liveness=Liveness(timestamp=1000 + i),
            cells={"note": Cell(timestamp=1000 + i, value=f"note {i}")},
        )
        for i in range(n)
    ]


def write_events(path: Path, events: Sequence[ChangeEvent]) -> Path:
    path.write_bytes(b"".join(event_to_json(e) + b"\n" for e in events))
    return path


@attrs.frozen(kw_only=True)
class TestSinkConfig:
    delay: float = 0.0
    fail_times: int = 0
    reject_ids: tuple[int, ...] = ()
    permanent: bool = False
    slow_writes: int = 0  # if set, only the first N writes take ``delay``
    preferred_batch: int = 0  # if set, the sink declares preferred_batch_events


class ControlledSink(MemorySink):
    """A memory sink that can be slow, fail transiently N times, or reject chosen rows."""

    def __init__(self, name: str, config: TestSinkConfig) -> None:
        super().__init__(name, DESTINATIONS.setdefault(name, MemoryDestination()), write_delay=0.0 if config.slow_writes else config.delay)
        self.config = config
        self.slow_left = config.slow_writes
        self.failures_left = config.fail_times
        self.max_batch = 0
        self.lifecycle: list[str] = []
        if config.preferred_batch:
            self.preferred_batch_events = config.preferred_batch

    async def write(self, batch: Batch) -> WriteResult:
        try:
            return await self._write(batch)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # a driver rolling back a cancelled transaction takes a moment
            self.lifecycle.append("write unwound")
            raise

    async def close(self) -> None:
        self.lifecycle.append("closed")
        await super().close()

    async def _write(self, batch: Batch) -> WriteResult:
        self.max_batch = max(self.max_batch, len(batch.events))
        if self.slow_left > 0:
            self.slow_left -= 1
            await asyncio.sleep(self.config.delay)
        if self.config.permanent and batch.events:
            raise PermanentError("the destination refuses this table")
        if self.failures_left > 0:
            self.failures_left -= 1
            await asyncio.sleep(0)
            raise TransientError("connection reset (simulated)")
        rejected = [Rejected(event=e, error="value out of range") for e in batch.events if e.key.get("id") in self.config.reject_ids]
        kept = [e for e in batch.events if e.key.get("id") not in self.config.reject_ids]
        await super().write(attrs.evolve(batch, events=kept))
        return WriteResult(rejected=rejected)


@attrs.frozen(kw_only=True)
class OverlappingSinkConfig:
    overlap: int = 2
    # Per write call (by call number, cycling): seconds spent before waiting for the turn.
    delays: tuple[float, ...] = (0.0,)
    # Write calls (by call number) that fail transiently, before or after their turn came.
    fail_calls: tuple[int, ...] = ()
    fail_after_turn: bool = False


class OverlappingSink(MemorySink):
    """A memory sink that declares ``overlapping_writes`` and keeps commits in order with
    ``Batch.wait_turn``, recording what overlapped and the order of its commits."""

    def __init__(self, name: str, config: OverlappingSinkConfig) -> None:
        super().__init__(name, DESTINATIONS.setdefault(name, MemoryDestination()))
        self.config = config
        self.overlapping_writes = config.overlap
        self.calls = 0
        self.writing = 0
        self.most_writing = 0
        self.commits: list[Mapping[str, Position]] = []  # committed positions, in commit order
        self.cancelled = 0

    async def write(self, batch: Batch) -> WriteResult:
        call = self.calls
        self.calls += 1
        self.writing += 1
        self.most_writing = max(self.most_writing, self.writing)
        try:
            delays = self.config.delays
            await asyncio.sleep(delays[call % len(delays)])  # private work: folding, staging
            if call in self.config.fail_calls and not self.config.fail_after_turn:
                raise TransientError(f"write {call} failed before its turn (simulated)")
            await batch.wait_turn()
            if call in self.config.fail_calls:
                raise TransientError(f"write {call} failed after its turn (simulated)")
            result = await super().write(batch)
            self.commits.append(dict(batch.positions))
            return result
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.writing -= 1


DESTINATIONS: dict[str, MemoryDestination] = {}
SINKS: dict[str, ControlledSink] = {}
OVERLAPPING: dict[str, OverlappingSink] = {}


def _create_overlapping(config: OverlappingSinkConfig, ctx: Any) -> OverlappingSink:
    sink = OverlappingSink(ctx.instance_name, config)
    OVERLAPPING[ctx.instance_name] = sink
    return sink


def _create(config: TestSinkConfig, ctx: Any) -> ControlledSink:
    sink = ControlledSink(ctx.instance_name, config)
    SINKS[ctx.instance_name] = sink
    return sink


class CountingReader(JsonlReader):
    """The jsonl reader, counting how often it is read and how many items it yields."""

    reads = 0
    items = 0

    async def read(self, start: Mapping[str, Position], *, follow: bool) -> AsyncIterator[ReaderItem]:
        CountingReader.reads += 1
        async for item in super().read(start, follow=follow):
            CountingReader.items += 1
            yield item


@attrs.frozen(kw_only=True)
class CountingTransformConfig:
    pass


class CountingTransform:
    """Counts the events it sees (to prove transforms run once, not once per sink)."""

    name = "counting"
    seen = 0

    async def start(self) -> None:
        return None

    def apply(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
        CountingTransform.seen += len(events)
        return list(events)

    def audit(self) -> list[dict[str, object]]:
        return []

    async def close(self) -> None:
        return None


class TestPlugin:
    @hookimpl
    def cdc_register_sinks(self) -> list[SinkFactory[Any]]:
        return [
            SinkFactory(name="controlled", config_type=TestSinkConfig, create=_create, description="test sink"),
            SinkFactory(name="overlapping", config_type=OverlappingSinkConfig, create=_create_overlapping, description="test sink"),
        ]

    @hookimpl
    def cdc_register_readers(self) -> list[ReaderFactory[Any]]:
        return [
            ReaderFactory(name="counting", config_type=JsonlReaderConfig, create=lambda c, ctx: CountingReader("counting", c, ctx.base_dir))
        ]

    @hookimpl
    def cdc_register_transforms(self) -> list[TransformFactory[Any]]:
        return [TransformFactory(name="counting", config_type=CountingTransformConfig, create=lambda c, ctx: CountingTransform())]


TEST_PLUGIN = (TestPlugin(), PluginInfo(name="test-plugin", distribution="tests", version="0"))
