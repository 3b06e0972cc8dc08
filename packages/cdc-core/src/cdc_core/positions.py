"""Source positions: where in one node's commitlog an event came from.

Within one node, positions are totally ordered: segment ids grow with time, ``offset`` is the
logical position of the mutation entry inside its segment (for compressed segments the
uncompressed position, as Cassandra's own ``CommitLogPosition``), and ``index`` orders the events
decoded from one mutation. Positions of different nodes are not comparable.

A committed position means "this event and everything before it on that node is applied". A
reader resumed at a committed position yields exactly the events after it.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["Position", "PositionParseError"]

_TEXT_FORM = re.compile(r"^(?P<node>[^@]+)@(?P<segment>\d+):(?P<offset>\d+):(?P<index>\d+)$")


class PositionParseError(ValueError):
    """A position given as text is not ``node@segment:offset:index``."""


@attrs.frozen(order=True)
class Position:
    """One event's place in one node's commitlog (ordered by segment, offset, index)."""

    node: str = attrs.field(order=False)
    segment_id: int
    offset: int
    index: int = 0

    def __str__(self) -> str:
        return f"{self.node}@{self.segment_id}:{self.offset}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse the text form ``node@segment:offset:index`` (as printed and in ``--from``)."""
        match = _TEXT_FORM.match(text.strip())
        if match is None:
            raise PositionParseError(f"not a position (want node@segment:offset:index): {text!r}")
        return cls(
            node=match["node"],
            segment_id=int(match["segment"]),
            offset=int(match["offset"]),
            index=int(match["index"]),
        )

    def is_after(self, other: Position) -> bool:
        """Strictly later than ``other`` on the same node."""
        if other.node != self.node:
            raise ValueError(f"positions of different nodes are not comparable: {self} vs {other}")
        return self > other
