"""Decoded partition updates → ChangeEvents (design notes §2).

Per mutation, in order: for each PartitionUpdate, its partition deletion, its static row (an
event of its own, ``static=True``), then rows and range deletions in clustering order. A range
tombstone's open and close markers are paired into one RANGE_DELETE event (emitted at the close
marker; a boundary closes one range and opens the next). ``index`` counts events within the
mutation from 0.
"""

from __future__ import annotations

from typing import Any

from cdc_core.commitlog.mutation import (
    EXCL_END_BOUND,
    EXCL_END_INCL_START_BOUNDARY,
    EXCL_START_BOUND,
    INCL_END_BOUND,
    INCL_END_EXCL_START_BOUNDARY,
    INCL_START_BOUND,
    DecodedMarker,
    DecodedUpdate,
)
from cdc_core.commitlog.primitives import DecodeError
from cdc_core.events import ChangeEvent, ChangeKind, Deletion, RangeBound, RangeDeletion
from cdc_core.fastobj import new_event, new_position
from cdc_core.positions import Position

__all__ = ["build_events"]

_ROW = ChangeKind.ROW
_PARTITION_DELETE = ChangeKind.PARTITION_DELETE
_RANGE_DELETE = ChangeKind.RANGE_DELETE


def build_events(updates: list[DecodedUpdate], node: str, segment_id: int, offset: int, first_index: int = 0) -> list[ChangeEvent]:
    """The events of one mutation entry ending at ``offset`` of segment ``segment_id``."""
    events: list[ChangeEvent] = []
    index = first_index
    for update in updates:
        schema = update.table.schema
        pk = update.key
        if update.partition_deletion is not None:
            events.append(
                new_event(
                    new_position(node, segment_id, offset, index),
                    schema,
                    _PARTITION_DELETE,
                    pk,
                    False,
                    None,
                    None,
                    update.partition_deletion,
                    None,
                    {},
                )
            )
            index += 1
        static_row = update.static_row
        if static_row is not None and (static_row.cells or static_row.liveness is not None or static_row.deletion is not None):
            events.append(
                new_event(
                    new_position(node, segment_id, offset, index),
                    schema,
                    _ROW,
                    pk,
                    True,
                    static_row.liveness,
                    static_row.deletion,
                    None,
                    None,
                    static_row.cells,
                )
            )
            index += 1
        clustering_names = update.table.clustering_names
        open_start: RangeBound | None = None
        open_deletion: Deletion | None = None
        is_open = False
        for item in update.unfiltered:
            if isinstance(item, DecodedMarker):
                kind = item.kind
                if kind in (INCL_START_BOUND, EXCL_START_BOUND):
                    if is_open:
                        raise DecodeError("range tombstone opened twice without a close")
                    is_open = True
                    open_start = RangeBound(values=item.values, inclusive=kind == INCL_START_BOUND) if item.values else None
                    open_deletion = item.deletion
                    continue
                if not is_open:
                    raise DecodeError("range tombstone closed without an open marker")
                end_inclusive = kind in (INCL_END_BOUND, INCL_END_EXCL_START_BOUNDARY)
                deletion = open_deletion or item.deletion
                if deletion is not None:
                    events.append(
                        ChangeEvent(
                            position=Position(node, segment_id, offset, index),
                            schema=schema,
                            kind=_RANGE_DELETE,
                            key=pk,
                            range_deletion=RangeDeletion(
                                start=open_start,
                                end=RangeBound(values=item.values, inclusive=end_inclusive) if item.values else None,
                                deletion=deletion,
                            ),
                        )
                    )
                    index += 1
                if kind in (EXCL_END_INCL_START_BOUNDARY, INCL_END_EXCL_START_BOUNDARY):
                    open_start = RangeBound(values=item.values, inclusive=kind == EXCL_END_INCL_START_BOUNDARY)
                    open_deletion = item.open_deletion
                else:
                    assert kind in (EXCL_END_BOUND, INCL_END_BOUND)
                    is_open = False
                    open_start = open_deletion = None
                continue
            row = item
            key: dict[str, Any] = dict(pk)
            for name, value in zip(clustering_names, row.clustering, strict=True):
                key[name] = value
            events.append(
                new_event(
                    new_position(node, segment_id, offset, index),
                    schema,
                    _ROW,
                    key,
                    False,
                    row.liveness,
                    row.deletion,
                    None,
                    None,
                    row.cells,
                )
            )
            index += 1
        if is_open:
            raise DecodeError("range tombstone left open at the end of the partition")
    return events
