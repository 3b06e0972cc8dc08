"""The sink contract suite: every sink in this repository passes it, and third parties run it.

Subclass :class:`SinkContract` in your test module and provide a ``harness`` fixture returning a
:class:`SinkHarness` over a fresh destination::

    class TestMySink(SinkContract):
        @pytest.fixture
        async def harness(self) -> AsyncIterator[SinkHarness]:
            h = MyHarness(...)
            yield h
            await h.destroy()

What it checks: the sink's latest state equals :func:`cdc_core.testing.model.latest_state` after
(1) events applied in commitlog order, (2) the same events again (idempotent replay), (3) any
permutation with duplicates split into random batches (convergence), (4) deletions arriving out
of order; and (5) committed positions are never ahead of the data, also when a write is cancelled
at a random point (a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_core.events import Cell, ChangeEvent, ChangeKind, Deletion, Liveness, RangeBound, RangeDeletion
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.sinks import Batch, Sink
from cdc_core.testing.model import TableState, latest_state
from cdc_core.testing.strategies import NOW, event_histories, shuffled_with_duplicates, table_schemas

__all__ = ["SinkContract", "SinkHarness", "batches_of", "normalise_state"]


class SinkHarness(Protocol):
    """What the suite needs from a sink's test setup."""

    async def make_sink(self) -> Sink:
        """A started sink over the harness's destination; a second call simulates a restart."""

    async def read_state(self, schema: TableSchema, now: int) -> TableState:
        """The table's latest state read the documented way, as the model's Python values."""

    async def destroy(self) -> None:
        """Drop what the harness created."""


def batches_of(events: Sequence[ChangeEvent], sizes: Sequence[int]) -> list[Batch]:
    """Split ``events`` into batches (sizes cycle); each commits the highest position it holds."""
    out: list[Batch] = []
    i = 0
    k = 0
    while i < len(events):
        size = max(1, sizes[k % len(sizes)] if sizes else len(events))
        chunk = list(events[i : i + size])
        positions: dict[str, Position] = {}
        for e in chunk:
            p = positions.get(e.position.node)
            if p is None or e.position > p:
                positions[e.position.node] = e.position
        out.append(Batch(batch_id=uuid.uuid4().hex, events=chunk, positions=positions))
        i += size
        k += 1
    return out


def _normalise(value: Any) -> Any:
    """Compare-friendly values: floats by repr-equality of exact values, containers recursively."""
    if isinstance(value, Mapping):
        return {_normalise(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return frozenset(_normalise(v) for v in value)
    if isinstance(value, tuple | list):
        return tuple(_normalise(v) for v in value)
    return value


def normalise_state(state: TableState) -> TableState:
    return TableState(
        rows={_normalise(k): _normalise(v) for k, v in state.rows.items()},
        statics={_normalise(k): _normalise(v) for k, v in state.statics.items()},
    )


async def _apply(sink: Sink, batches: Sequence[Batch]) -> None:
    for batch in batches:
        result = await sink.write(batch)
        assert not result.rejected, f"the sink rejected valid events: {[r.error for r in result.rejected]}"


def _deletes_schema() -> TableSchema:
    return TableSchema(
        keyspace="ks",
        table=f"deletes_{uuid.uuid4().hex[:8]}",
        id=uuid.uuid4(),
        columns=(
            ColumnSchema(name="pk", type="int", kind=ColumnKind.PARTITION_KEY, position=0),
            ColumnSchema(name="ck", type="int", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.ASC),
            ColumnSchema(name="v", type="text", kind=ColumnKind.REGULAR, position=-1),
            ColumnSchema(name="w", type="int", kind=ColumnKind.REGULAR, position=-1),
        ),
    )


class SinkContract:
    """Base class of a sink's contract tests; subclasses provide the ``harness`` fixture."""

    max_examples: int = 20

    @pytest.fixture
    def harness(self) -> SinkHarness:
        raise NotImplementedError("a SinkContract subclass must override the 'harness' fixture")

    async def _check(self, harness: SinkHarness, schema: TableSchema, events: Sequence[ChangeEvent]) -> None:
        expected = normalise_state(latest_state(events, now=NOW))
        actual = normalise_state(await harness.read_state(schema, NOW))
        assert actual == expected

    async def test_applies_history_in_order(self, harness: SinkHarness) -> None:
        schema = _deletes_schema()
        events = _scenario(schema)
        sink = await harness.make_sink()
        try:
            await _apply(sink, batches_of(events, [3]))
            await self._check(harness, schema, events)
        finally:
            await sink.close()

    async def test_replay_changes_nothing(self, harness: SinkHarness) -> None:
        schema = _deletes_schema()
        events = _scenario(schema)
        sink = await harness.make_sink()
        try:
            await _apply(sink, batches_of(events, [2]))
            first = normalise_state(await harness.read_state(schema, NOW))
            await _apply(sink, batches_of(events, [len(events)]))
            await _apply(sink, batches_of(events, [1]))
            assert normalise_state(await harness.read_state(schema, NOW)) == first
            await self._check(harness, schema, events)
        finally:
            await sink.close()

    async def test_deletions_are_not_undone_by_older_writes(self, harness: SinkHarness) -> None:
        schema = _deletes_schema()
        events = _scenario(schema)
        sink = await harness.make_sink()
        try:
            # Newest first: every deletion arrives before the older writes it shadows.
            await _apply(sink, batches_of(list(reversed(events)), [1]))
            await self._check(harness, schema, events)
            state = await harness.read_state(schema, NOW)
            assert (1, 1) not in state.rows  # partition deleted after its writes
            assert (2, 2) not in state.rows
            assert (2, 3) not in state.rows
            assert (2, 4) in state.rows
        finally:
            await sink.close()

    async def test_offsets_are_committed_with_the_data(self, harness: SinkHarness) -> None:
        schema = _deletes_schema()
        events = _scenario(schema)
        sink = await harness.make_sink()
        if not sink.stores_offsets:
            await sink.close()
            pytest.skip("this sink leaves offsets to the core offset store")
        try:
            first, second = batches_of(events, [len(events) // 2])[:2]
            await _apply(sink, [first])
            assert dict(await sink.committed_positions()) == dict(first.positions)
            await _apply(sink, [second])
        finally:
            await sink.close()
        restarted = await harness.make_sink()
        try:
            assert dict(await restarted.committed_positions()) == dict(second.positions)
        finally:
            await restarted.close()

    @pytest.mark.parametrize("cancel_after", [0, 1, 2, 3, 5, 8, 13])
    async def test_cancelled_write_never_commits_ahead_of_data(self, harness: SinkHarness, cancel_after: int) -> None:
        schema = _deletes_schema()
        events = _scenario(schema)
        first, second = batches_of(events, [len(events) // 2])[:2]
        sink = await harness.make_sink()
        try:
            await _apply(sink, [first])
            task = asyncio.ensure_future(sink.write(second))
            for _ in range(cancel_after):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            with contextlib.suppress(Exception):
                await sink.close()
        restarted = await harness.make_sink()
        try:
            committed = dict(await restarted.committed_positions()) if restarted.stores_offsets else dict(first.positions)
            if committed == dict(second.positions):
                await self._check(harness, schema, events)  # committed means applied
            else:
                assert committed == dict(first.positions)
                await _apply(restarted, [second])  # resume from the committed position
                await self._check(harness, schema, events)
        finally:
            await restarted.close()

    @pytest.mark.parametrize("newest_first", [False, True])
    async def test_ties_follow_cassandra(self, harness: SinkHarness, newest_first: bool) -> None:
        """Equal timestamps: a tombstone beats a value, an expiring cell or marker beats a plain
        one, and a deletion shadows what carries its own timestamp — in either arrival order."""
        schema = _deletes_schema()
        events = _ties_scenario(schema)
        sink = await harness.make_sink()
        try:
            await _apply(sink, batches_of(list(reversed(events)) if newest_first else events, [1]))
            await self._check(harness, schema, events)
            state = normalise_state(await harness.read_state(schema, NOW))
            assert state.rows[(1, 1)]["v"] is None  # the tombstone won the tie
            assert state.rows[(1, 1)]["w"] == 7
            assert (2, 1) not in state.rows  # row deletion at the write's timestamp
            assert (3, 1) not in state.rows  # partition deletion at the write's timestamp
            assert (4, 2) not in state.rows  # range deletion at the write's timestamp
            assert (4, 5) in state.rows
            assert (5, 1) not in state.rows  # the expired marker beat the plain one of the same timestamp
        finally:
            await sink.close()

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    async def test_converges_under_shuffling_and_duplicates(self, harness: SinkHarness, data: st.DataObject) -> None:
        schema = data.draw(table_schemas(), label="schema")
        events = data.draw(event_histories(schema), label="history")
        shuffled = data.draw(shuffled_with_duplicates(events), label="arrival order")
        sizes = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=4), label="batch sizes")
        sink = await harness.make_sink()
        try:
            await _apply(sink, batches_of(shuffled, sizes))
            await self._check(harness, schema, events)
        finally:
            await sink.close()


def _scenario(schema: TableSchema) -> list[ChangeEvent]:
    """A fixed history with every kind of deletion, in commitlog order."""
    ldt = NOW - 1000

    def pos(i: int) -> Position:
        return Position(node="n1", segment_id=7, offset=i * 100, index=0)

    def row(i: int, pk: int, ck: int, ts: int, **cells: Cell) -> ChangeEvent:
        return ChangeEvent(
            position=pos(i),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": pk, "ck": ck},
            liveness=Liveness(timestamp=ts),
            cells=cells,
        )

    return [
        row(1, 1, 1, 100, v=Cell(timestamp=100, value="a"), w=Cell(timestamp=100, value=1)),
        row(2, 2, 2, 110, v=Cell(timestamp=110, value="b")),
        row(3, 2, 3, 120, v=Cell(timestamp=120, value="c")),
        row(4, 2, 4, 130, v=Cell(timestamp=130, value="d"), w=Cell(timestamp=130, value=4)),
        # Partial update, then a cell set to null.
        ChangeEvent(
            position=pos(5), schema=schema, kind=ChangeKind.ROW, key={"pk": 2, "ck": 4}, cells={"v": Cell(timestamp=140, value="d2")}
        ),
        ChangeEvent(
            position=pos(6),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": 2, "ck": 4},
            cells={"w": Cell(timestamp=150, tombstone=True, local_deletion_time=ldt)},
        ),
        ChangeEvent(
            position=pos(7),
            schema=schema,
            kind=ChangeKind.PARTITION_DELETE,
            key={"pk": 1},
            partition_deletion=Deletion(timestamp=160, local_deletion_time=ldt),
        ),
        ChangeEvent(
            position=pos(8),
            schema=schema,
            kind=ChangeKind.RANGE_DELETE,
            key={"pk": 2},
            range_deletion=RangeDeletion(
                start=RangeBound(values=(2,), inclusive=True),
                end=RangeBound(values=(3,), inclusive=True),
                deletion=Deletion(timestamp=170, local_deletion_time=ldt),
            ),
        ),
        # A write older than the range deletion: stays shadowed.
        row(9, 2, 3, 115, v=Cell(timestamp=115, value="old")),
        # A row deletion, then a newer write to the same row: the row is back with only `v`.
        ChangeEvent(
            position=pos(10),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": 3, "ck": 1},
            row_deletion=Deletion(timestamp=200, local_deletion_time=ldt),
        ),
        row(11, 3, 1, 190, v=Cell(timestamp=190, value="gone"), w=Cell(timestamp=190, value=9)),
        ChangeEvent(
            position=pos(12), schema=schema, kind=ChangeKind.ROW, key={"pk": 3, "ck": 1}, cells={"v": Cell(timestamp=210, value="back")}
        ),
    ]


def _ties_scenario(schema: TableSchema) -> list[ChangeEvent]:
    """Writes and deletions sharing timestamps (each with its Cassandra outcome asserted)."""
    ldt = NOW - 1000

    def pos(i: int, node: str = "n1") -> Position:
        return Position(node=node, segment_id=9, offset=i * 100, index=0)

    def row(i: int, pk: int, ck: int, ts: int, *, ttl: int | None = None, exp: int | None = None, **cells: Cell) -> ChangeEvent:
        return ChangeEvent(
            position=pos(i),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": pk, "ck": ck},
            liveness=Liveness(timestamp=ts, ttl=ttl, local_deletion_time=exp),
            cells=cells,
        )

    return [
        row(1, 1, 1, 100, v=Cell(timestamp=100, value="x"), w=Cell(timestamp=100, value=7)),
        ChangeEvent(
            position=pos(2, "n2"),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": 1, "ck": 1},
            cells={"v": Cell(timestamp=100, tombstone=True, local_deletion_time=ldt)},
        ),
        row(3, 2, 1, 200, v=Cell(timestamp=200, value="gone")),
        ChangeEvent(
            position=pos(4, "n2"),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": 2, "ck": 1},
            row_deletion=Deletion(timestamp=200, local_deletion_time=ldt),
        ),
        row(5, 3, 1, 300, v=Cell(timestamp=300, value="gone")),
        ChangeEvent(
            position=pos(6, "n2"),
            schema=schema,
            kind=ChangeKind.PARTITION_DELETE,
            key={"pk": 3},
            partition_deletion=Deletion(timestamp=300, local_deletion_time=ldt),
        ),
        row(7, 4, 2, 400, v=Cell(timestamp=400, value="gone")),
        row(8, 4, 5, 400, v=Cell(timestamp=400, value="stays")),
        ChangeEvent(
            position=pos(9, "n2"),
            schema=schema,
            kind=ChangeKind.RANGE_DELETE,
            key={"pk": 4},
            range_deletion=RangeDeletion(
                start=RangeBound(values=(1,), inclusive=True),
                end=RangeBound(values=(3,), inclusive=False),
                deletion=Deletion(timestamp=400, local_deletion_time=ldt),
            ),
        ),
        # Two INSERTs (markers only) with one timestamp: the expiring one, already expired, wins.
        row(10, 5, 1, 500),
        row(11, 5, 1, 500, ttl=60, exp=NOW - 10),
    ]
