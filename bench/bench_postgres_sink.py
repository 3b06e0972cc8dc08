"""Throughput of the PostgreSQL sink (latest-state mode) against baselines, in one run.

    .venv/bin/python bench/bench_postgres_sink.py --dsn "$CDC_TEST_POSTGRES_DSN" [--rows 100000] [--repeat 3]

For a 10-column table (bigint key + 9 regular columns: int, bigint, text×3, double, boolean,
timestamp, decimal) it measures rows/s, per batch size, for:

* sink insert: INSERT-shaped events (row marker + every column) into new rows;
* sink update: partial updates (2 of the 9 columns) of existing rows;
* sink delete: row deletions of existing rows;
* naive: ``executemany(INSERT … ON CONFLICT DO UPDATE)`` of plain rows (no LWW bookkeeping);
* raw COPY: ``copy_records_to_table`` into an UNLOGGED table (the floor no sink can beat).

Each figure is the median of ``--repeat`` runs; every run works in a fresh schema.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from cdc_core.events import Cell, ChangeEvent, ChangeKind, Deletion, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ColumnKind, ColumnSchema, TableSchema
from cdc_core.secrets import Secret
from cdc_core.sinks import Batch
from cdc_sink_postgres.config import PostgresSinkConfig
from cdc_sink_postgres.sink import PostgresSink

COLUMNS = {
    "c_int": "int",
    "c_bigint": "bigint",
    "c_text1": "text",
    "c_text2": "text",
    "c_text3": "text",
    "c_double": "double",
    "c_bool": "boolean",
    "c_ts": "timestamp",
    "c_dec": "decimal",
}
SCHEMA = TableSchema(
    keyspace="bench",
    table="t10",
    id=uuid.UUID(int=10),
    columns=(
        ColumnSchema(name="id", type="bigint", kind=ColumnKind.PARTITION_KEY),
        *(ColumnSchema(name=n, type=t, kind=ColumnKind.REGULAR, position=-1) for n, t in COLUMNS.items()),
    ),
)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _values(i: int) -> dict[str, Any]:
    return {
        "c_int": i % 100_000,
        "c_bigint": i * 7919,
        "c_text1": f"name-{i}",
        "c_text2": "x" * (i % 20),
        "c_text3": f"{i:08x}@example.org",
        "c_double": i / 3,
        "c_bool": i % 2 == 0,
        "c_ts": T0 + dt.timedelta(milliseconds=i),
        "c_dec": Decimal(i) / 100,
    }


def _events(kind: str, n: int, ts: int) -> list[ChangeEvent]:
    out = []
    for i in range(n):
        p = Position(node="n1", segment_id=ts, offset=i, index=0)
        if kind == "insert":
            cells = {k: Cell(timestamp=ts, value=v) for k, v in _values(i).items()}
            out.append(
                ChangeEvent(position=p, schema=SCHEMA, kind=ChangeKind.ROW, key={"id": i}, liveness=Liveness(timestamp=ts), cells=cells)
            )
        elif kind == "update":
            cells = {"c_int": Cell(timestamp=ts, value=i + 1), "c_text1": Cell(timestamp=ts, value=f"upd-{i}")}
            out.append(ChangeEvent(position=p, schema=SCHEMA, kind=ChangeKind.ROW, key={"id": i}, cells=cells))
        else:
            d = Deletion(timestamp=ts, local_deletion_time=1)
            out.append(ChangeEvent(position=p, schema=SCHEMA, kind=ChangeKind.ROW, key={"id": i}, row_deletion=d))
    return out


def _batches(events: list[ChangeEvent], size: int) -> list[Batch]:
    return [
        Batch(batch_id=f"b{i}", events=events[i : i + size], positions={"n1": events[min(i + size, len(events)) - 1].position})
        for i in range(0, len(events), size)
    ]


async def _timed(fn: Callable[[], Awaitable[None]], rows: int) -> float:
    start = time.perf_counter()
    await fn()
    return rows / (time.perf_counter() - start)


async def run_sink(dsn: str, rows: int, batch_size: int) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    sink = PostgresSink("bench", PostgresSinkConfig(dsn=Secret(dsn), schema=schema, pool_max_size=2))
    await sink.start()
    results: dict[str, float] = {}
    try:
        for kind, ts in (("insert", 10), ("update", 20), ("delete", 30)):
            batches = _batches(_events(kind, rows, ts), batch_size)

            async def apply(batches: list[Batch] = batches) -> None:
                for b in batches:
                    await sink.write(b)

            results[kind] = await _timed(apply, rows)
    finally:
        await sink.close()
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    return results


async def run_baselines(dsn: str, rows: int, batch_size: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    cols = ", ".join(
        f"{n} {t}"
        for n, t in zip(COLUMNS, ("integer", "bigint", "text", "text", "text", "float8", "boolean", "timestamptz", "numeric"), strict=True)
    )
    records = [(i, *_values(i).values()) for i in range(rows)]
    names = ["id", *COLUMNS]
    results: dict[str, float] = {}
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'CREATE TABLE "{schema}".naive (id bigint PRIMARY KEY, {cols})')
        await conn.execute(f'CREATE UNLOGGED TABLE "{schema}".raw (id bigint PRIMARY KEY, {cols})')
        upsert = (
            f'INSERT INTO "{schema}".naive ({", ".join(names)}) VALUES ({", ".join(f"${i + 1}" for i in range(len(names)))}) '
            f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in COLUMNS)}"
        )

        async def naive() -> None:
            for i in range(0, rows, batch_size):
                async with conn.transaction():
                    await conn.executemany(upsert, records[i : i + batch_size])

        async def raw() -> None:
            for i in range(0, rows, batch_size):
                async with conn.transaction():
                    await conn.copy_records_to_table("raw", schema_name=schema, records=records[i : i + batch_size], columns=names)

        results["naive executemany upsert"] = await _timed(naive, rows)
        results["raw COPY (unlogged)"] = await _timed(raw, rows)
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1000,5000,20000")
    args = parser.parse_args()
    conn = await asyncpg.connect(args.dsn)
    version = await conn.fetchval("SHOW server_version")
    settings = {k: await conn.fetchval(f"SHOW {k}") for k in ("synchronous_commit", "fsync", "shared_buffers")}
    await conn.close()
    print(f"# {dt.date.today()} {platform.node()} {platform.processor() or platform.machine()}, PostgreSQL {version} {settings}")
    print(f"# rows per run: {args.rows}, median of {args.repeat} runs, rows/s")
    print("| batch size | sink insert | sink partial update | sink row delete | naive executemany upsert | raw COPY (unlogged) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.batch_sizes.split(",")):
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for k, v in (await run_sink(args.dsn, args.rows, size)).items():
                runs.setdefault(k, []).append(v)
            for k, v in (await run_baselines(args.dsn, args.rows, size)).items():
                runs.setdefault(k, []).append(v)
        med = {k: statistics.median(v) for k, v in runs.items()}
        cells = [med["insert"], med["update"], med["delete"], med["naive executemany upsert"], med["raw COPY (unlogged)"]]
        print(f"| {size} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")


if __name__ == "__main__":
    asyncio.run(main())
