"""Decode once, fan out: a shared read of the source for the lanes that keep up with each other.

The shared source reads the commitlog once, runs the transforms once per chunk, and keeps the
last ``capacity`` chunks in memory. Each attached lane has a cursor into them. When the buffer is
full while some lane already waits at its head, the slowest lanes are *detached*: they continue
on a private read of the files from their own position (the commitlog is the buffer), so a slow
sink never holds back the others and memory stays bounded. When every lane is slow, the shared
read simply waits (backpressure). A detached lane that catches up (its sink was only slow for a
while) re-joins the shared read, so a passing slowdown does not double the decoding for good.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import attrs

from cdc_core.positions import Position
from cdc_core.readers import ReaderItem

__all__ = ["Detached", "SharedSource", "chunked", "get_by"]

Chunk = Sequence[ReaderItem]

_END = object()


@attrs.frozen
class _Failure:
    error: BaseException


def _last_positions(items: Sequence[ReaderItem]) -> dict[str, Position]:
    last: dict[str, Position] = {}
    for item in items:
        pos = item.position
        prev = last.get(pos.node)
        if prev is None or pos > prev:
            last[pos.node] = pos
    return last


class Detached(Exception):
    """This lane fell too far behind the shared read: it must read on its own."""


T = TypeVar("T")


async def get_by(queue: asyncio.Queue[T], deadline: float) -> T:
    """The queue's next item: at once if there is one, else waiting until ``deadline`` (loop time).

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` can swallow a cancellation
    that lands just as the item arrives, and a cancelled pipeline then never shuts down.
    """
    if not queue.empty():
        return queue.get_nowait()
    async with asyncio.timeout_at(deadline):
        return await queue.get()


async def chunked(stream: AsyncIterator[ReaderItem], size: int, wait: float) -> AsyncGenerator[list[ReaderItem], None]:
    """Group a stream into chunks of at most ``size`` items, flushing after ``wait`` seconds idle."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=size)

    async def pump() -> None:
        try:
            async for item in stream:
                await queue.put(item)
        except Exception as exc:
            await queue.put(_Failure(exc))
            return
        await queue.put(_END)

    task = asyncio.create_task(pump())
    try:
        ended = False
        while not ended:
            first = await queue.get()
            if first is _END:
                return
            if isinstance(first, _Failure):
                raise first.error
            chunk: list[ReaderItem] = [first]  # type: ignore[list-item]
            deadline = asyncio.get_running_loop().time() + wait
            while len(chunk) < size:
                try:
                    item = await get_by(queue, deadline)
                except TimeoutError:
                    break
                if item is _END:
                    ended = True
                    break
                if isinstance(item, _Failure):
                    yield chunk
                    raise item.error
                chunk.append(item)  # type: ignore[arg-type]
            yield chunk
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


class SharedSource:
    """One read (and transform) of the source shared by several lanes."""

    def __init__(
        self,
        stream: Callable[[Mapping[str, Position]], AsyncIterator[ReaderItem]],
        transform: Callable[[Chunk], list[ReaderItem]],
        lanes: Iterable[str],
        start: Mapping[str, Position],
        *,
        capacity: int,
        chunk_size: int,
        chunk_wait: float,
    ) -> None:
        self._stream = stream
        self._transform = transform
        self._start = dict(start)
        self.capacity = capacity
        self.chunk_size = chunk_size
        self.chunk_wait = chunk_wait
        self._chunks: deque[list[ReaderItem]] = deque()
        # Per buffered chunk, the last position of each node in it; and per node, the last
        # position of what is no longer buffered (or was never read: the start).
        self._marks: deque[dict[str, Position]] = deque()
        self._floor: dict[str, Position] = dict(start)
        self._base = 0  # sequence number of _chunks[0]
        self.rejoins = 0
        self.cursors: dict[str, int] = dict.fromkeys(lanes, 0)
        self.detached: set[str] = set()
        self._ended = False
        self._error: BaseException | None = None
        self._changed = asyncio.Condition()

    @staticmethod
    def common_start(committed: Iterable[Mapping[str, Position]]) -> dict[str, Position]:
        """Per node, the position every lane has committed (a node some lane lacks: from the start)."""
        out: dict[str, Position] | None = None
        for positions in committed:
            out = dict(positions) if out is None else {n: min(p, positions[n]) for n, p in out.items() if n in positions}
        return out or {}

    @property
    def _head(self) -> int:
        return self._base + len(self._chunks)

    def _trim(self) -> None:
        low = min(self.cursors.values(), default=self._head)
        while self._chunks and self._base < low:
            self._chunks.popleft()
            self._floor.update(self._marks.popleft())
            self._base += 1

    def _detach_slowest(self) -> bool:
        """Buffer full: if some lane waits at the head, let the slowest ones go their own way."""
        if len(self.cursors) < 2 or self._head not in self.cursors.values():
            return False
        slowest = min(self.cursors.values())
        for lane in [name for name, c in self.cursors.items() if c == slowest]:
            del self.cursors[lane]
            self.detached.add(lane)
        self._trim()
        return True

    async def run(self) -> None:
        """Read, transform and buffer until the source ends (or fails: every lane sees the error)."""
        try:
            async for chunk in chunked(self._stream(self._start), self.chunk_size, self.chunk_wait):
                items = self._transform(chunk)
                async with self._changed:
                    while self.cursors and self._head - min(self.cursors.values()) >= self.capacity:
                        if self._detach_slowest():
                            self._changed.notify_all()
                        else:
                            await self._changed.wait()
                    if not self.cursors:
                        return  # every lane has left or gone its own way
                    self._chunks.append(items)
                    self._marks.append(_last_positions(items))
                    self._changed.notify_all()
        except Exception as exc:
            self._error = exc
        finally:
            async with self._changed:
                self._ended = True
                self._changed.notify_all()

    async def next(self, lane: str) -> list[ReaderItem] | None:
        """The lane's next chunk; None when the source ended. Raises :class:`Detached`."""
        async with self._changed:
            while True:
                if lane in self.detached:
                    raise Detached(lane)
                cursor = self.cursors[lane]
                if cursor < self._head:
                    chunk = self._chunks[cursor - self._base]
                    self.cursors[lane] = cursor + 1
                    self._trim()
                    self._changed.notify_all()
                    return chunk
                if self._error is not None:
                    raise self._error
                if self._ended:
                    return None
                await self._changed.wait()

    def attached(self, lane: str) -> bool:
        return lane in self.cursors

    async def rejoin(self, lane: str, read: Mapping[str, Position]) -> bool:
        """Attach a detached lane again if what it has ``read`` reaches into the buffer.

        It joins at the latest buffered chunk before which it has read everything the shared read
        has, per node (it skips what it has already seen itself). Only in the newer half of the
        buffer, so a lane that is still slow does not detach again at once and thrash.
        """
        async with self._changed:
            if lane in self.cursors or self._ended or self._error is not None:
                return False
            before = dict(self._floor)
            join: int | None = None
            for seq in range(self._base, self._head + 1):  # what precedes a later chunk only grows
                if not all(node in read and read[node] >= pos for node, pos in before.items()):
                    break
                join = seq
                if seq < self._head:
                    before.update(self._marks[seq - self._base])
            if join is None or self._head - join > self.capacity // 2:
                return False
            self.detached.discard(lane)
            self.cursors[lane] = join
            self.rejoins += 1
            self._changed.notify_all()
            return True

    async def leave(self, lane: str) -> None:
        """The lane stops consuming (finished, failed or stopped)."""
        async with self._changed:
            self.cursors.pop(lane, None)
            self._trim()
            self._changed.notify_all()
