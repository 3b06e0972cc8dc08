"""The ``jsonl`` reader and sink: events as JSON lines in the documented form (docs/events.md).

The reader replays captured streams and DLQ-free event files (``cdc tail`` output, a previous
``jsonl`` sink's file); the sink writes what a pipeline produces, like Debezium's console sink.
The sink is at-least-once: a replay after a crash appends the replayed events again.
"""

from __future__ import annotations

import asyncio
import glob
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO

import attrs

from cdc_core.errors import ConfigError
from cdc_core.positions import Position
from cdc_core.readers import ReaderItem
from cdc_core.serialization import EventDecodeError, event_from_json, event_to_json
from cdc_core.sinks import Batch, WriteResult

__all__ = ["JsonlReader", "JsonlReaderConfig", "JsonlSink", "JsonlSinkConfig"]


@attrs.frozen(kw_only=True)
class JsonlReaderConfig:
    """``path``: a file, a directory (its ``*.jsonl`` files in name order) or a glob."""

    path: str
    follow: bool = False
    poll_interval: float = 0.25


class JsonlReader:
    def __init__(self, name: str, config: JsonlReaderConfig, base_dir: Path) -> None:
        self.name = name
        self.config = config
        self.base_dir = base_dir

    def _files(self) -> list[Path]:
        raw = Path(self.config.path)
        path = raw if raw.is_absolute() else self.base_dir / raw
        if path.is_dir():
            return sorted(path.glob("*.jsonl"))
        if any(ch in self.config.path for ch in "*?["):
            return [Path(p) for p in sorted(glob.glob(str(path)))]
        if not path.exists():
            raise ConfigError(f"source.path: {path} does not exist")
        return [path]

    async def start(self) -> None:
        self._files()

    async def read(self, start: Mapping[str, Position], *, follow: bool) -> AsyncIterator[ReaderItem]:
        follow = follow and self.config.follow
        offsets: dict[Path, int] = {}
        while True:
            progressed = False
            for path in self._files():
                with path.open("rb") as fh:
                    fh.seek(offsets.get(path, 0))
                    line_no = 0
                    while True:
                        line = fh.readline()
                        if not line or (not line.endswith(b"\n") and follow):
                            break  # a partial last line: wait for the writer to finish it
                        offsets[path] = fh.tell()
                        line_no += 1
                        if not line.strip():
                            continue
                        try:
                            event = event_from_json(line)
                        except EventDecodeError as exc:
                            raise EventDecodeError(f"{path}: byte {offsets[path] - len(line)}: {exc}") from exc
                        last = start.get(event.position.node)
                        if last is not None and not event.position > last:
                            continue
                        progressed = True
                        yield event
                        if line_no % 1000 == 0:
                            await asyncio.sleep(0)  # let other lanes run on long files
            if not follow:
                return
            if not progressed:
                await asyncio.sleep(self.config.poll_interval)

    async def release(self, committed: Mapping[str, Position]) -> None:
        return None

    async def close(self) -> None:
        return None


@attrs.frozen(kw_only=True)
class JsonlSinkConfig:
    """``path``: the file to append to, or ``-`` for standard output."""

    path: str = "-"
    fsync: bool = False


class JsonlSink:
    stores_offsets = False

    def __init__(self, name: str, config: JsonlSinkConfig, base_dir: Path) -> None:
        self.name = name
        self.config = config
        self.base_dir = base_dir
        self._fh: IO[bytes] | None = None

    async def start(self) -> None:
        if self.config.path == "-":
            self._fh = sys.stdout.buffer
            return
        raw = Path(self.config.path)
        path = raw if raw.is_absolute() else self.base_dir / raw
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_last_line(path)
        self._fh = path.open("ab")

    async def committed_positions(self) -> Mapping[str, Position]:
        return {}

    async def write(self, batch: Batch) -> WriteResult:
        assert self._fh is not None, "start() first"
        data = b"".join(event_to_json(e) + b"\n" for e in batch.events)
        self._fh.write(data)
        self._fh.flush()
        if self.config.fsync and self.config.path != "-":
            await asyncio.to_thread(_fsync, self._fh)
        return WriteResult()

    async def close(self) -> None:
        if self._fh is not None and self.config.path != "-":
            self._fh.close()
        self._fh = None


def _drop_partial_last_line(path: Path) -> None:
    """A crash mid-write can leave half a line at the end; it was never committed (offsets move
    only after the write), so it is replayed: cut it off rather than append after it."""
    if not path.exists():
        return
    with path.open("r+b") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            cut = fh.read(end - start).rfind(b"\n")
            if cut != -1:
                fh.truncate(start + cut + 1)
                return
            end = start
        fh.truncate(0)


def _fsync(fh: IO[bytes]) -> None:
    import os

    os.fsync(fh.fileno())
