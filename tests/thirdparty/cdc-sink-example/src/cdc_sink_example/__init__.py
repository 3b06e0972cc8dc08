"""An example third-party sink: every change event in SQLite, idempotently, offsets alongside.

It keeps the change log (one row per event position, so a replay inserts nothing new) and
commits the batch's positions in the same SQLite transaction. ``latest_state`` folds the log with
cdc's reference model, so the table reads back exactly as Cassandra would show it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from cdc_core import hookimpl
from cdc_core.factories import ComponentContext, SinkFactory
from cdc_core.positions import Position
from cdc_core.schema import TableSchema
from cdc_core.serialization import event_from_json, event_to_json
from cdc_core.sinks import Batch, WriteResult
from cdc_core.testing.model import TableState, latest_state


@attrs.frozen(kw_only=True)
class ExampleSinkConfig:
    path: str = "changes.sqlite"


class ExampleSink:
    stores_offsets = True

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # a cancelled write's thread may still run: close waits for it

    async def start(self) -> None:
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS changes (tbl TEXT, node TEXT, seg INT, off INT, idx INT, event BLOB, "
            "PRIMARY KEY (node, seg, off, idx, tbl))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS offsets (sink TEXT, node TEXT, seg INT, off INT, idx INT, PRIMARY KEY (sink, node))")

    async def committed_positions(self) -> Mapping[str, Position]:
        assert self._db is not None
        rows = self._db.execute("SELECT node, seg, off, idx FROM offsets WHERE sink = ?", (self.name,)).fetchall()
        return {n: Position(node=n, segment_id=s, offset=o, index=i) for n, s, o, i in rows}

    def _write(self, batch: Batch) -> None:
        with self._lock:
            db = self._db_open()
            with db:  # one transaction: data and offsets together
                db.execute("BEGIN")
                db.executemany(
                    "INSERT OR IGNORE INTO changes VALUES (?, ?, ?, ?, ?, ?)",
                    [(e.schema.qualified_name, *attrs.astuple(e.position), event_to_json(e)) for e in batch.events],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?, ?, ?)",
                    [(self.name, *attrs.astuple(p)) for p in batch.positions.values()],
                )

    async def write(self, batch: Batch) -> WriteResult:
        await asyncio.to_thread(self._write, batch)
        return WriteResult()

    def latest_state(self, schema: TableSchema, now: int | None = None) -> TableState:
        assert self._db is not None
        rows = self._db.execute("SELECT event FROM changes WHERE tbl = ?", (schema.qualified_name,)).fetchall()
        return latest_state((event_from_json(r[0]) for r in rows), now=now)

    def _db_open(self) -> sqlite3.Connection:
        assert self._db is not None, "start() first"
        return self._db

    async def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _create(config: ExampleSinkConfig, ctx: ComponentContext) -> ExampleSink:
    path = Path(config.path)
    return ExampleSink(ctx.instance_name, path if path.is_absolute() else ctx.base_dir / path)


@hookimpl
def cdc_register_sinks() -> list[SinkFactory[Any]]:
    return [SinkFactory(name="example", config_type=ExampleSinkConfig, create=_create, description="change log in SQLite (example)")]
