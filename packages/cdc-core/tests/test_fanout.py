"""The shared read's re-join rule: a lane that comes back loses nothing and sees nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cdc_core.fanout import Detached, SharedSource, get_by
from cdc_core.positions import Position
from cdc_core.readers import Progress, ReaderItem


def _items(nodes: list[int]) -> list[ReaderItem]:
    """One item per entry, on node n<entry>, each node's positions increasing in file order."""
    offsets: dict[str, int] = {}
    out: list[ReaderItem] = []
    for n in nodes:
        node = f"n{n}"
        offsets[node] = offsets.get(node, 0) + 10
        out.append(Progress(position=Position(node=node, segment_id=1, offset=offsets[node])))
    return out


async def _take(hub: SharedSource, lane: str) -> list[ReaderItem] | None:
    """The lane's next chunk, or None if the shared read has nothing more for now."""
    try:
        return await asyncio.wait_for(hub.next(lane), 0.05)
    except TimeoutError:
        return None


async def _scenario(items: list[ReaderItem], fast_chunks: int, read_upto: int, capacity: int, chunk_size: int) -> None:
    async def stream(_start: Mapping[str, Position]) -> AsyncIterator[ReaderItem]:
        for item in items:
            yield item
        await asyncio.Event().wait()  # then waits at the end, as the reader of a live node does

    hub = SharedSource(stream, list, ["fast", "late"], {}, capacity=capacity, chunk_size=chunk_size, chunk_wait=0.001)
    runner = asyncio.create_task(hub.run())
    try:
        # "fast" takes some chunks while "late" takes none: once the buffer is full with "fast"
        # waiting at its head, "late" is detached.
        fast: list[ReaderItem] = []
        for _ in range(fast_chunks):
            chunk = await _take(hub, "fast")
            if chunk is None:
                break
            fast.extend(chunk)
        if "late" not in hub.detached:
            event("never detached")
            return  # everything fitted in the buffer: nothing to re-join
        with_all = len(fast) == len(items)

        # "late" read a prefix of the file on its own, then asks to re-join.
        read: dict[str, Position] = {}
        for item in items[:read_upto]:
            read[item.position.node] = item.position
        joined = await hub.rejoin("late", read)
        if with_all and read_upto == len(items):
            assert joined, "a lane that has read everything the shared read has must be able to re-join"
        event("re-joined" if joined else "refused")
        if not joined:
            return
        # Both go on; "late" skips what it has read itself, as the pipeline's lanes do.
        # (Joined ahead of "fast", "late" may now have "fast" detached in turn: it then reads the
        # rest on its own, which the shared read no longer has to hold.)
        late: list[ReaderItem] = list(items[:read_upto])
        lanes = {"fast": fast, "late": late}
        progress = True
        while progress:
            progress = False
            for lane, got in list(lanes.items()):
                try:
                    chunk = await _take(hub, lane)
                except Detached:
                    assert lane == "fast", "a lane that re-joined in the newer half was detached again at once"
                    del lanes[lane]
                    got.extend(items[len(got) :])
                    continue
                if chunk is not None:
                    progress = True
                    got.extend(i for i in chunk if lane == "fast" or i.position.node not in read or i.position > read[i.position.node])
        assert fast == items
        assert late == items  # nothing lost, nothing twice, order kept
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.lists(st.integers(1, 3), min_size=8, max_size=60),
    fast_fraction=st.floats(0, 1),
    read_fraction=st.one_of(st.just(1.0), st.floats(0.5, 1), st.floats(0, 1)),
    capacity=st.integers(2, 6),
    chunk_size=st.integers(1, 4),
)
def test_a_rejoining_lane_gets_exactly_what_it_has_not_read(
    nodes: list[int], fast_fraction: float, read_fraction: float, capacity: int, chunk_size: int
) -> None:
    items = _items(nodes)
    chunks = -(-len(items) // chunk_size)
    fast_chunks = capacity + 1 + round(fast_fraction * max(0, chunks - capacity - 1))  # enough to detach "late"
    asyncio.run(_scenario(items, fast_chunks, round(read_fraction * len(items)), capacity, chunk_size))


async def test_get_by_takes_a_waiting_item_even_past_the_deadline_and_times_out_when_empty() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    past = asyncio.get_running_loop().time() - 1
    queue.put_nowait(7)
    assert await get_by(queue, past) == 7
    start = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await get_by(queue, start + 0.05)
    assert asyncio.get_running_loop().time() - start >= 0.04
