"""Releasing a test Cassandra node's ``cdc_raw`` space, as a consumer that has read it would.

Test servers live across runs and their ``cdc_total_space`` is small: without this, ``cdc_raw``
fills up after a few runs and the node rejects writes to CDC tables.
"""

from __future__ import annotations

import time
from pathlib import Path

from cdc_core.commitlog.cdc_index import read_cdc_index

__all__ = ["release_completed_segments"]


def release_completed_segments(cdc_raw: Path, *, older_than: float = 600.0) -> int:
    """Delete the segments (``.log`` + ``_cdc.idx``) Cassandra marked COMPLETED more than
    ``older_than`` seconds ago — recent ones are left, another test session may be reading them.
    Returns how many were deleted."""
    if not cdc_raw.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for idx in cdc_raw.glob("CommitLog-*_cdc.idx"):
        try:
            if idx.stat().st_mtime >= cutoff:
                continue
        except OSError:
            continue
        state = read_cdc_index(idx)
        if state is None or not state.completed:
            continue
        idx.with_name(idx.name.replace("_cdc.idx", ".log")).unlink(missing_ok=True)
        idx.unlink(missing_ok=True)
        removed += 1
    return removed
