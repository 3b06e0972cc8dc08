"""The dead-letter queue: events a sink refused for good, as JSON lines, one file per sink per day.

Records are written from *transformed* events only (the engine never hands the DLQ anything
else), so masked values stay masked here too. ``cdc dlq replay`` sends them again after a fix.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from cdc_core.events import ChangeEvent
from cdc_core.serialization import event_from_dict, event_to_dict

__all__ = ["DeadLetterQueue", "DlqRecord"]

DlqRecord = dict[str, Any]


class DeadLetterQueue:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _file(self, sink: str, day: dt.date) -> Path:
        return self.directory / sink / f"{day.isoformat()}.jsonl"

    def write(self, sink: str, entries: Sequence[tuple[ChangeEvent, str, str, str | None, int]]) -> Path:
        """Append (event, error type, error message, traceback, attempts) records; fsync'd."""
        now = dt.datetime.now(dt.UTC)
        path = self._file(sink, now.date())
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for event, error_type, error, traceback, attempts in entries:
            record = {
                "time": now.isoformat(),
                "destination": sink,
                "error_type": error_type,
                "error": error,
                "traceback": traceback,
                "attempts": attempts,
                "position": str(event.position),
                "table": event.schema.qualified_name,
                "event": event_to_dict(event),
            }
            lines.append(orjson.dumps(record) + b"\n")
        with path.open("ab") as fh:
            fh.write(b"".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        return path

    def files(self, sink: str | None = None) -> list[Path]:
        if not self.directory.exists():
            return []
        pattern = f"{sink}/*.jsonl" if sink else "*/*.jsonl"
        return sorted(self.directory.glob(pattern))

    @staticmethod
    def records(path: Path) -> Iterator[DlqRecord]:
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    record: DlqRecord = orjson.loads(line)
                    yield record

    @staticmethod
    def event_of(record: DlqRecord) -> ChangeEvent:
        return event_from_dict(record["event"])

    def mark_replayed(self, path: Path) -> Path:
        """Move a replayed file aside (kept for audit, no longer listed as pending)."""
        done = path.parent / "replayed"
        done.mkdir(exist_ok=True)
        target = done / f"{path.stem}-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}.jsonl"
        path.rename(target)
        return target
