"""Helpers to run the scenario on a live node and read its events back (integration tests, fixture script)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cdc_core.commitlog.reader import CommitLogReader, CommitLogReaderConfig
from cdc_core.commitlog.schema_source import CassandraSchemaSource
from cdc_core.events import ChangeEvent
from commitlog.scenario import SCHEMA, WRITES


def run_scenario(session: Any, ks: str) -> None:
    for stmt in SCHEMA:
        session.execute(stmt.replace("{ks}", ks))
    for _label, stmt in WRITES:
        session.execute(stmt.replace("{ks}", ks))


async def read_keyspace_events(
    session: Any, cdc_raw: Path, ks: str, *, wait_seconds: float = 60.0, until_table: str = "comp"
) -> list[ChangeEvent]:
    """Read the keyspace's events from cdc_raw until the sentinel row shows up (the idx offset moves at each fsync)."""
    config = CommitLogReaderConfig(cdc_raw_dir=cdc_raw, contact_points=["unused"], keyspaces=[ks], poll_interval=0.1)
    reader = CommitLogReader(config, schema_source=CassandraSchemaSource(session=session), node="test-node")
    await reader.start()
    events: list[ChangeEvent] = []
    deadline = time.monotonic() + wait_seconds

    async def consume() -> None:
        async for item in reader.read({}, follow=True):
            if isinstance(item, ChangeEvent):
                events.append(item)
                if item.table == until_table and item.key.get("b") == "sentinel":
                    return

    try:
        await asyncio.wait_for(consume(), timeout=max(deadline - time.monotonic(), 1))
    finally:
        await reader.close()
    return events
