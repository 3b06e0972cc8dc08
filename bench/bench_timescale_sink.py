"""Throughput of the TimescaleDB sink against the PostgreSQL sink on the same data, in one run.

    .venv/bin/python bench/bench_timescale_sink.py --pg-dsn "$CDC_TEST_POSTGRES_DSN" \
        --ts-dsn "$CDC_TEST_TIMESCALE_DSN" [--rows 50000] [--repeat 3] [--batch-sizes 5000]

A time-keyed table: ``PRIMARY KEY ((sensor bigint), ts timestamp)`` + 8 regular columns (int,
bigint, text×2, double, boolean, timestamp, decimal); readings spread over 28 days (four 7-day
chunks). Rows/s (events/s), each figure the median of ``--repeat`` runs, fresh schema per run:

* latest insert / latest update: INSERT-shaped events into new rows, then partial updates (2 of
  the 8 columns) of the same rows — PostgreSQL sink (plain table) vs TimescaleDB sink (the state
  table is a hypertable on ``ts``, 7-day chunks);
* history: the same insert events appended — PostgreSQL sink history table vs TimescaleDB
  history hypertable on the write time.

The ratio column is PostgreSQL rows/s ÷ TimescaleDB rows/s (above 1: TimescaleDB slower), computed within
each repetition (both sinks back to back) and its median reported, with the range and the load.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import time
import uuid
from decimal import Decimal
from typing import Any

import asyncpg

from cdc_core.events import Cell, ChangeEvent, ChangeKind, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.secrets import Secret
from cdc_core.sinks import Batch
from cdc_sink_postgres.config import PostgresSinkConfig
from cdc_sink_postgres.sink import PostgresSink
from cdc_sink_timescale.config import TimescaleSinkConfig
from cdc_sink_timescale.sink import TimescaleSink

COLUMNS = {
    "c_int": "int",
    "c_bigint": "bigint",
    "c_text1": "text",
    "c_text2": "text",
    "c_double": "double",
    "c_bool": "boolean",
    "c_ts": "timestamp",
    "c_dec": "decimal",
}
SCHEMA = TableSchema(
    keyspace="bench",
    table="readings",
    id=uuid.UUID(int=11),
    columns=(
        ColumnSchema(name="sensor", type="bigint", kind=ColumnKind.PARTITION_KEY),
        ColumnSchema(name="ts", type="timestamp", kind=ColumnKind.CLUSTERING, clustering_order=ClusteringOrder.ASC),
        *(ColumnSchema(name=n, type=t, kind=ColumnKind.REGULAR, position=-1) for n, t in COLUMNS.items()),
    ),
)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SENSORS = 100
SPAN = dt.timedelta(days=28)


def _key(i: int, rows: int) -> dict[str, Any]:
    return {"sensor": i % SENSORS, "ts": T0 + SPAN * (i / rows)}


def _values(i: int) -> dict[str, Any]:
    return {
        "c_int": i % 100_000,
        "c_bigint": i * 7919,
        "c_text1": f"name-{i}",
        "c_text2": "x" * (i % 20),
        "c_double": i / 3,
        "c_bool": i % 2 == 0,
        "c_ts": T0 + dt.timedelta(milliseconds=i),
        "c_dec": Decimal(i) / 100,
    }


def _events(kind: str, rows: int, ts: int) -> list[ChangeEvent]:
    out = []
    for i in range(rows):
        p = Position(node="n1", segment_id=ts, offset=i, index=0)
        key = _key(i, rows)
        # µs write times spread like the keys, so the history hypertable has several chunks too
        write_ts = int((key["ts"] - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).total_seconds() * 1_000_000) + ts
        if kind == "insert":
            cells = {k: Cell(timestamp=write_ts, value=v) for k, v in _values(i).items()}
            out.append(
                ChangeEvent(position=p, schema=SCHEMA, kind=ChangeKind.ROW, key=key, liveness=Liveness(timestamp=write_ts), cells=cells)
            )
        else:
            cells = {"c_int": Cell(timestamp=write_ts, value=i + 1), "c_text1": Cell(timestamp=write_ts, value=f"upd-{i}")}
            out.append(ChangeEvent(position=p, schema=SCHEMA, kind=ChangeKind.ROW, key=key, cells=cells))
    return out


def _batches(events: list[ChangeEvent], size: int) -> list[Batch]:
    return [
        Batch(batch_id=f"b{i}", events=events[i : i + size], positions={"n1": events[min(i + size, len(events)) - 1].position})
        for i in range(0, len(events), size)
    ]


async def _rate(sink: PostgresSink, batches: list[Batch], rows: int) -> float:
    start = time.perf_counter()
    for b in batches:
        result = await sink.write(b)
        assert not result.rejected, result.rejected[:1]
    return rows / (time.perf_counter() - start)


async def run(engine: str, mode: str, dsn: str, inserts: list[Batch], updates: list[Batch], rows: int) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    sink: PostgresSink
    if engine == "postgres":
        sink = PostgresSink("bench", PostgresSinkConfig(dsn=Secret(dsn), schema=schema, mode=mode, pool_max_size=2))
    else:
        sink = TimescaleSink(
            "bench",
            TimescaleSinkConfig(dsn=Secret(dsn), schema=schema, mode=mode, time_column="ts", chunk_interval="7 days", pool_max_size=2),
        )
    await sink.start()
    results: dict[str, float] = {}
    try:
        if mode == "latest":
            results["latest insert"] = await _rate(sink, inserts, rows)
            results["latest update"] = await _rate(sink, updates, rows)
        else:
            results["history"] = await _rate(sink, inserts, rows)
    finally:
        await sink.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg-dsn", default=os.environ.get("CDC_TEST_POSTGRES_DSN"))
    parser.add_argument("--ts-dsn", default=os.environ.get("CDC_TEST_TIMESCALE_DSN"))
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-sizes", default="5000")
    args = parser.parse_args()
    if not args.pg_dsn or not args.ts_dsn:
        parser.error("--pg-dsn and --ts-dsn are required (or CDC_TEST_POSTGRES_DSN / CDC_TEST_TIMESCALE_DSN)")
    conn = await asyncpg.connect(args.ts_dsn)
    version = await conn.fetchval("SHOW server_version")
    ts_version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    await conn.close()
    load = os.getloadavg()
    print(
        f"# {dt.date.today()} {platform.node()} {platform.machine()} {os.cpu_count()} cores, PostgreSQL {version}, TimescaleDB {ts_version}"
    )
    print(f"# rows per run: {args.rows}, median of {args.repeat} runs, rows/s; load average at start {load[0]:.1f}")
    print("| batch size | workload | PostgreSQL sink | TimescaleDB sink | ratio (pg ÷ ts) | ratio range | load |")
    print("|---:|---|---:|---:|---:|---|---:|")
    inserts_events = _events("insert", args.rows, 10)
    updates_events = _events("update", args.rows, 20)
    for size in (int(s) for s in args.batch_sizes.split(",")):
        inserts, updates = _batches(inserts_events, size), _batches(updates_events, size)
        runs: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeat):
            for mode in ("latest", "history"):
                for engine, dsn in (("postgres", args.pg_dsn), ("timescale", args.ts_dsn)):
                    for k, v in (await run(engine, mode, dsn, inserts, updates, args.rows)).items():
                        runs.setdefault((engine, k), []).append(v)
        for workload in ("latest insert", "latest update", "history"):
            pg_runs, ts_runs = runs[("postgres", workload)], runs[("timescale", workload)]
            pg, ts = statistics.median(pg_runs), statistics.median(ts_runs)
            # Ratios within each repetition (both sinks back to back, same load), then their median.
            ratios = sorted(p / t for p, t in zip(pg_runs, ts_runs, strict=True))
            print(
                f"| {size} | {workload} | {pg:,.0f} | {ts:,.0f} | {statistics.median(ratios):.2f} "
                f"| {ratios[0]:.2f}–{ratios[-1]:.2f} | {os.getloadavg()[0]:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main())
