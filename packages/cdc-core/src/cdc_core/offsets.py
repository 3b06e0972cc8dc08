"""Offset stores: per (consumer, node) the last committed position, for sinks that cannot keep
their offsets atomically with their data themselves."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from cdc_core.positions import Position

__all__ = ["MemoryOffsetStore", "OffsetStore", "SqliteOffsetStore"]


@runtime_checkable
class OffsetStore(Protocol):
    async def load(self, consumer: str) -> dict[str, Position]:
        """Per node, the committed position of ``consumer`` (empty when it never committed)."""

    async def commit(self, consumer: str, positions: Mapping[str, Position]) -> None:
        """Record the positions durably (all of them or none)."""

    async def reset(self, consumer: str, node: str | None = None) -> None:
        """Forget the consumer's positions (one node's, or all)."""

    async def consumers(self) -> list[str]: ...

    async def close(self) -> None: ...


class MemoryOffsetStore:
    """For tests and embedded use where nothing must survive the process."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Position]] = {}

    async def load(self, consumer: str) -> dict[str, Position]:
        return dict(self._data.get(consumer, {}))

    async def commit(self, consumer: str, positions: Mapping[str, Position]) -> None:
        self._data.setdefault(consumer, {}).update(positions)

    async def reset(self, consumer: str, node: str | None = None) -> None:
        if node is None:
            self._data.pop(consumer, None)
        else:
            self._data.get(consumer, {}).pop(node, None)

    async def consumers(self) -> list[str]:
        return sorted(self._data)

    async def close(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cdc_offsets (
    consumer   TEXT NOT NULL,
    node       TEXT NOT NULL,
    segment_id INTEGER NOT NULL,
    offset     INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, node)
)
"""


class SqliteOffsetStore:
    """The default store: one SQLite file, WAL mode, one transaction per commit.

    SQLite calls are short; they run in a worker thread so the event loop never waits on fsync.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None  # opened on first use: `cdc validate` creates nothing
        self._lock = asyncio.Lock()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    def _load(self, consumer: str) -> dict[str, Position]:
        rows = self._conn.execute("SELECT node, segment_id, offset, idx FROM cdc_offsets WHERE consumer = ?", (consumer,)).fetchall()
        return {node: Position(node=node, segment_id=seg, offset=off, index=idx) for node, seg, off, idx in rows}

    def _commit(self, consumer: str, positions: Mapping[str, Position]) -> None:
        with self._conn:  # one transaction
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO cdc_offsets (consumer, node, segment_id, offset, idx) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (consumer, node) DO UPDATE SET segment_id = excluded.segment_id, offset = excluded.offset, "
                "idx = excluded.idx, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                [(consumer, p.node, p.segment_id, p.offset, p.index) for p in positions.values()],
            )

    def _reset(self, consumer: str, node: str | None) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            if node is None:
                self._conn.execute("DELETE FROM cdc_offsets WHERE consumer = ?", (consumer,))
            else:
                self._conn.execute("DELETE FROM cdc_offsets WHERE consumer = ? AND node = ?", (consumer, node))

    async def load(self, consumer: str) -> dict[str, Position]:
        async with self._lock:
            return await asyncio.to_thread(self._load, consumer)

    async def commit(self, consumer: str, positions: Mapping[str, Position]) -> None:
        if positions:
            async with self._lock:
                await asyncio.to_thread(self._commit, consumer, positions)

    async def reset(self, consumer: str, node: str | None = None) -> None:
        async with self._lock:
            await asyncio.to_thread(self._reset, consumer, node)

    async def consumers(self) -> list[str]:
        async with self._lock:
            rows = await asyncio.to_thread(lambda: self._conn.execute("SELECT DISTINCT consumer FROM cdc_offsets ORDER BY 1").fetchall())
        return [r[0] for r in rows]

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
