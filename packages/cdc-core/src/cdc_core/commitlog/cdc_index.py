"""``_cdc.idx`` files (format doc §10.3): the durable (fsynced) logical offset and COMPLETED."""

from __future__ import annotations

from pathlib import Path

import attrs

__all__ = ["CdcIndex", "parse_cdc_index", "read_cdc_index"]


@attrs.frozen
class CdcIndex:
    offset: int  # logical position up to which the segment is durable
    completed: bool  # Cassandra closed the segment: nothing more will be written to it


class CdcIndexUnreadable(ValueError):
    """The idx text is not ``<offset>[\\nCOMPLETED]``."""


def parse_cdc_index(text: str) -> CdcIndex | None:
    """Parse idx text; None for an empty file (Cassandra truncates it before rewriting it)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        offset = int(lines[0])
    except ValueError:
        raise CdcIndexUnreadable(f"first line is not an offset: {lines[0][:40]!r}") from None
    if offset < 0:
        raise CdcIndexUnreadable(f"negative offset {offset}")
    completed = len(lines) > 1 and lines[1] == "COMPLETED"
    if len(lines) > 1 and not completed:
        raise CdcIndexUnreadable(f"unexpected second line {lines[1][:40]!r}")
    return CdcIndex(offset=offset, completed=completed)


def read_cdc_index(path: Path, retries: int = 3) -> CdcIndex | None:
    """Read an idx file; None if it does not exist or stays empty/partial across ``retries`` reads
    (it is being rewritten; the caller polls again later)."""
    for _ in range(max(retries, 1)):
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return None
        try:
            got = parse_cdc_index(text)
        except CdcIndexUnreadable:
            got = None  # caught mid-rewrite (e.g. "12" of "1234"): read again
        if got is not None:
            return got
    return None
