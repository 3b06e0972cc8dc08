"""cdc_core.testing.segments: only old COMPLETED segments are released."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cdc_core.testing.segments import release_completed_segments


def _segment(cdc_raw: Path, n: int, idx: str, age: float) -> Path:
    log = cdc_raw / f"CommitLog-7-{n}.log"
    log.write_bytes(b"x")
    index = cdc_raw / f"CommitLog-7-{n}_cdc.idx"
    index.write_text(idx)
    then = time.time() - age
    os.utime(index, (then, then))
    return log


def test_only_old_completed_segments_are_released(tmp_path: Path) -> None:
    old_done = _segment(tmp_path, 1, "100\nCOMPLETED", 3600)
    new_done = _segment(tmp_path, 2, "100\nCOMPLETED", 5)
    old_open = _segment(tmp_path, 3, "100", 3600)
    assert release_completed_segments(tmp_path, older_than=600) == 1
    assert not old_done.exists() and not old_done.with_name("CommitLog-7-1_cdc.idx").exists()
    assert new_done.exists() and old_open.exists()
    assert release_completed_segments(tmp_path / "missing") == 0
