"""The reader contract: a source of change events from one or more nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol, runtime_checkable

import attrs

from cdc_core.events import ChangeEvent
from cdc_core.positions import Position

__all__ = ["Progress", "Reader", "ReaderItem"]


@attrs.frozen(kw_only=True)
class Progress:
    """Emitted when the reader moved past data that produced no event (skipped tables, end of a
    segment), so consumers can commit positions that would otherwise never advance. ``bytes_behind``
    and ``newest_write_time`` feed the lag metrics where the reader knows them."""

    position: Position
    bytes_behind: int | None = None


ReaderItem = ChangeEvent | Progress


@runtime_checkable
class Reader(Protocol):
    """Yields events in position order per node, starting strictly after ``start`` per node.

    ``follow`` true: keep waiting for new data (tailing); false: stop at the end of what exists.
    Several ``read`` iterations may run at once (one per sink cursor); each is independent.
    """

    name: str

    async def start(self) -> None: ...

    def read(self, start: Mapping[str, Position], *, follow: bool) -> AsyncIterator[ReaderItem]: ...

    async def release(self, committed: Mapping[str, Position]) -> None:
        """Every consumer has committed up to ``committed``: data before it may be cleaned up."""

    async def close(self) -> None: ...
