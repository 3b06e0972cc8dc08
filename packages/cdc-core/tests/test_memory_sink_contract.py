"""The reference in-memory sink passes the sink contract suite."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest

from cdc_core.builtins.memory import MemoryDestination, MemorySink
from cdc_core.events import ChangeKind
from cdc_core.schema import TableSchema
from cdc_core.sinks import Batch, Sink, WriteResult
from cdc_core.testing.contract import SinkContract, SinkHarness
from cdc_core.testing.model import TableState


@attrs.define
class MemoryHarness:
    destination: MemoryDestination = attrs.field(factory=MemoryDestination)

    async def make_sink(self) -> Sink:
        sink = MemorySink("memory", self.destination)
        await sink.start()
        return sink

    async def read_state(self, schema: TableSchema, now: int) -> TableState:
        return self.destination.state(schema, now)

    async def destroy(self) -> None:
        self.destination.events.clear()


class TestMemorySinkContract(SinkContract):
    @pytest.fixture
    async def harness(self) -> AsyncIterator[SinkHarness]:
        h = MemoryHarness()
        yield h
        await h.destroy()


class _ForgetfulSink(MemorySink):
    """Drops partition deletions: the contract suite must notice."""

    async def write(self, batch: Batch) -> WriteResult:
        kept = [e for e in batch.events if e.kind is not ChangeKind.PARTITION_DELETE]
        return await super().write(attrs.evolve(batch, events=kept))


@attrs.define
class _ForgetfulHarness(MemoryHarness):
    async def make_sink(self) -> Sink:
        return _ForgetfulSink("forgetful", self.destination)


async def test_the_suite_catches_a_sink_that_loses_deletions() -> None:
    with pytest.raises(AssertionError):
        await SinkContract().test_deletions_are_not_undone_by_older_writes(_ForgetfulHarness())


def test_timeuuid_clustering_order_is_cassandras() -> None:
    import uuid as uuidlib

    from cdc_core.testing.model import clustering_sort_key

    # Same time; the clock byte 0x7f sorts AFTER 0x80 in Cassandra (signed bytes), not before.
    low = uuidlib.UUID("00000000-0000-1000-8080-000000000000")
    high = uuidlib.UUID("00000000-0000-1000-807f-000000000000")
    assert clustering_sort_key(low, "timeuuid") < clustering_sort_key(high, "timeuuid")
    earlier = uuidlib.UUID("ffffffff-0000-1000-8000-000000000000")  # low time bits high, still earlier
    later = uuidlib.UUID("00000000-0001-1000-8000-000000000000")
    assert clustering_sort_key(earlier, "timeuuid") < clustering_sort_key(later, "timeuuid")
