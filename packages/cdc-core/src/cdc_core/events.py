"""The change event: one row change (or one partition / range deletion) of one mutation.

Timestamps are Cassandra write timestamps in microseconds. ``local_deletion_time`` values are
Cassandra's, in seconds since the epoch: for an expiring cell, when it expires; for a tombstone,
when it was written (gc bookkeeping). ``cells`` holds only the columns the mutation wrote: a
column absent from ``cells`` was *not written*; a :class:`Cell` whose ``value`` is ``None`` and
``tombstone`` is true was *deleted* (set to null). The two never collapse into one another.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from cdc_core.positions import Position
from cdc_core.schema import TableSchema

__all__ = [
    "Cell",
    "ChangeEvent",
    "ChangeKind",
    "ComplexChange",
    "Deletion",
    "ElementChange",
    "Liveness",
    "RangeBound",
    "RangeDeletion",
]


class ChangeKind(enum.Enum):
    ROW = "row"  # writes and/or a deletion of one (possibly static) row
    PARTITION_DELETE = "partition_delete"
    RANGE_DELETE = "range_delete"


@attrs.frozen(kw_only=True)
class Deletion:
    """A tombstone: shadows everything written at or before ``timestamp``."""

    timestamp: int
    local_deletion_time: int


@attrs.frozen(kw_only=True)
class Liveness:
    """The row marker an INSERT writes (so a row exists even with all regular columns null)."""

    timestamp: int
    ttl: int | None = None
    local_deletion_time: int | None = None  # expiry time when ttl is set


@attrs.frozen(kw_only=True)
class Cell:
    """A written simple cell: a value, or a tombstone (``value`` None, ``tombstone`` True)."""

    timestamp: int
    value: Any = None
    tombstone: bool = False
    ttl: int | None = None
    local_deletion_time: int | None = None

    @property
    def expires_at(self) -> int | None:
        """Seconds since the epoch after which an expiring cell is gone."""
        return self.local_deletion_time if self.ttl is not None else None


@attrs.frozen(kw_only=True)
class ElementChange:
    """One element of a non-frozen collection or UDT.

    ``path`` is the element's identity: a timeuuid for a list, the element for a set, the key for
    a map, the field name for a UDT. The cell's value is the element value (for a set, ``None``
    with ``tombstone`` False means "present"); a tombstone cell removes the element.
    """

    path: Any
    cell: Cell


@attrs.frozen(kw_only=True)
class ComplexChange:
    """Changes to a non-frozen collection/UDT column.

    ``deletion`` set means the whole column was cleared at that timestamp first (an overwrite
    ``SET c = …`` clears at ts-1 and adds elements at ts; ``SET c = null`` only clears).
    """

    deletion: Deletion | None = None
    elements: tuple[ElementChange, ...] = ()


@attrs.frozen(kw_only=True)
class RangeBound:
    """One end of a clustering range: a prefix of clustering values, inclusive or not."""

    values: tuple[Any, ...]
    inclusive: bool


@attrs.frozen(kw_only=True)
class RangeDeletion:
    """A range tombstone; ``None`` as a bound means unbounded on that side."""

    start: RangeBound | None
    end: RangeBound | None
    deletion: Deletion


@attrs.frozen(kw_only=True)
class ChangeEvent:
    """One change, immutable. ``key`` holds the partition key and (for rows) clustering values."""

    position: Position
    schema: TableSchema
    kind: ChangeKind
    key: Mapping[str, Any]
    static: bool = False
    liveness: Liveness | None = None
    row_deletion: Deletion | None = None
    partition_deletion: Deletion | None = None
    range_deletion: RangeDeletion | None = None
    cells: Mapping[str, Cell | ComplexChange] = attrs.field(factory=dict)

    @property
    def keyspace(self) -> str:
        return self.schema.keyspace

    @property
    def table(self) -> str:
        return self.schema.table

    @property
    def max_timestamp(self) -> int:
        """The newest write timestamp this event carries (for lag and ordering metrics)."""
        stamps: list[int] = []
        if self.liveness is not None:
            stamps.append(self.liveness.timestamp)
        for d in (self.row_deletion, self.partition_deletion):
            if d is not None:
                stamps.append(d.timestamp)
        if self.range_deletion is not None:
            stamps.append(self.range_deletion.deletion.timestamp)
        for change in self.cells.values():
            if isinstance(change, Cell):
                stamps.append(change.timestamp)
            else:
                if change.deletion is not None:
                    stamps.append(change.deletion.timestamp)
                stamps.extend(e.cell.timestamp for e in change.elements)
        return max(stamps, default=0)
