"""Shared test helpers: reading a directory to the end, copying fixtures, a tiny mutation encoder."""

from __future__ import annotations

import json
import shutil
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdc_core.commitlog.reader import CommitLogReader, CommitLogReaderConfig
from cdc_core.events import ChangeEvent
from cdc_core.positions import Position
from cdc_core.readers import ReaderItem

FIXTURES = Path(__file__).parent / "fixtures"
NODE = "node-a"


def copy_fixture(version: int, dest: Path) -> Path:
    target = dest / f"cdc_raw_v{version}"
    shutil.copytree(FIXTURES / f"v{version}", target)
    return target


def make_reader(cdc_raw: Path, snapshot: Path | None = None, **kwargs: Any) -> CommitLogReader:
    kwargs.setdefault("keyspaces", ["cdcfix"])
    config = CommitLogReaderConfig(cdc_raw_dir=cdc_raw, schema_snapshot=snapshot or cdc_raw / "schema.json", node=NODE, **kwargs)
    return CommitLogReader(config)


async def read_all(reader: CommitLogReader, after: Position | None = None) -> list[ReaderItem]:
    start: Mapping[str, Position] = {} if after is None else {NODE: after}
    return [item async for item in reader.read(start, follow=False)]


def events_of(items: list[ReaderItem]) -> list[ChangeEvent]:
    return [i for i in items if isinstance(i, ChangeEvent)]


# --- a tiny independent encoder for one table: (pk int, ck text, v int), PRIMARY KEY (pk, ck) -------------
TABLE_ID = uuid.UUID("5a1c395e-b41f-11e5-9f22-ba0be0483c18")
TS_EPOCH = 1442880000000000


def uvint(v: int) -> bytes:
    v &= (1 << 64) - 1
    for extra in range(9):
        if extra == 8:
            return b"\xff" + v.to_bytes(8, "big")
        if v < 1 << (7 * (extra + 1)):
            raw = v.to_bytes(extra + 1, "big")
            return bytes([raw[0] | (0xFF << (8 - extra)) & 0xFF]) + raw[1:]
    raise AssertionError


def simple_mutation(pk: int, ck: str, v: int, ts: int) -> bytes:
    """INSERT (pk, ck, v) at ts, as in format doc §6.12."""
    ckb = ck.encode()
    return (
        uvint(1)
        + TABLE_ID.bytes
        + uvint(4)
        + struct.pack(">i", pk)
        + b"\x10"
        + uvint(ts - TS_EPOCH)
        + b"\x00\x00"
        + b"\x01\x01v"
        + b"\x01"
        + b"\x24"
        + b"\x00"
        + uvint(len(ckb))
        + ckb
        + b"\x00"
        + b"\x08"
        + struct.pack(">i", v)
        + b"\x01"
    )


def write_simple_snapshot(path: Path) -> None:
    path.write_text(
        json.dumps(
            {
                "format": "cdc-schema-snapshot",
                "version": 1,
                "tables": [
                    {
                        "keyspace": "ks",
                        "table": "t",
                        "id": str(TABLE_ID),
                        "cdc": True,
                        "columns": [
                            {"name": "pk", "type": "int", "kind": "partition_key", "position": 0, "clustering_order": "none"},
                            {"name": "ck", "type": "text", "kind": "clustering", "position": 0, "clustering_order": "asc"},
                            {"name": "v", "type": "int", "kind": "regular", "position": -1, "clustering_order": "none"},
                        ],
                        "dropped": [],
                    }
                ],
                "table_names": {str(TABLE_ID): "ks.t"},
            }
        )
    )
