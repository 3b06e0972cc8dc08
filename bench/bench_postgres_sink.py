"""Throughput of the PostgreSQL sink (latest-state mode) against baselines, in one run.

    .venv/bin/python bench/bench_postgres_sink.py --dsn "$CDC_TEST_POSTGRES_DSN" [--rows 100000] [--repeat 3]

For a 10-column table (bigint key + 9 regular columns: int, bigint, text×3, double, boolean,
timestamp, decimal) it measures rows/s, per batch size, for:

* sink insert: INSERT-shaped events (row marker + every column) into new rows;
* sink update: partial updates (2 of the 9 columns) of existing rows;
* sink delete: ``DELETE FROM t WHERE id = ?`` of existing rows — for this table (no clustering
  columns) Cassandra writes that as a *partition* deletion (cql3 ``DeleteStatement``: an empty
  clustering deletes the partition), and so do these events (until 2026-11-27 they were row
  deletions, which Cassandra writes only for tables with clustering columns);
* naive: ``executemany`` into a plain table (no LWW bookkeeping): ``INSERT … ON CONFLICT DO
  UPDATE`` of whole rows (insert), of the same 2 columns (update), ``DELETE … WHERE id = $1``;
* staged: the plain staged upsert of the issue's calibration, no LWW bookkeeping: binary COPY
  into a TEMP ``ON COMMIT DELETE ROWS`` table, then one ``INSERT … SELECT … ON CONFLICT (id) DO
  UPDATE`` into a plain table (whole rows for insert, the same 2 columns for update) — what any
  COPY-based upsert costs on this machine, so the sink's bookkeeping overhead is visible;
* raw COPY: ``copy_records_to_table`` of whole rows into an UNLOGGED table (the floor).

Swept over batch sizes and 1 vs 2 connections (baselines: batches spread over the connections;
sink: a pool of that many connections and ``overlapping_writes: 2``, its default, driven by
``cdc_core.turns.write_overlapping`` exactly as the engine drives it — the next batch folds and
encodes while the previous one merges, with a second connection stages and may merge too, and
commits strictly after it). Each figure is
the median of ``--repeat`` runs, every run in a fresh schema; ratios are computed within each
repetition (same machine load) and their median reported, with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import gc
import logging
import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import structlog

from cdc_core.events import Cell, ChangeEvent, ChangeKind, Deletion, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ColumnKind, ColumnSchema, TableSchema
from cdc_core.secrets import Secret
from cdc_core.sinks import Batch
from cdc_core.turns import write_overlapping
from cdc_sink_postgres.config import PostgresSinkConfig
from cdc_sink_postgres.native import native_module
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
            out.append(ChangeEvent(position=p, schema=SCHEMA, kind=ChangeKind.PARTITION_DELETE, key={"id": i}, partition_deletion=d))
    return out


def _batches(events: list[ChangeEvent], size: int) -> list[Batch]:
    return [
        Batch(batch_id=f"b{i}", events=events[i : i + size], positions={"n1": events[min(i + size, len(events)) - 1].position})
        for i in range(0, len(events), size)
    ]


async def _timed(fn: Callable[[], Awaitable[object]], rows: int) -> float:
    start = time.perf_counter()
    await fn()
    return rows / (time.perf_counter() - start)


async def _spread(items: list[Any], workers: int, apply: Callable[[Any], Awaitable[object]]) -> None:
    """Apply ``items`` in order, ``workers`` at a time (each worker takes the next item)."""
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await apply(item)

    await asyncio.gather(*(worker() for _ in range(workers)))


async def write_timed(sink: PostgresSink, batches: list[Batch], overlap: int, rows: int) -> tuple[float, float]:
    """(rows/s, the client's CPU µs per row) of writing ``batches`` as the engine does.

    The events of every batch are built up front, which the engine never does (it holds a few
    batches at a time): frozen, the cyclic GC does not rescan them again and again (unfrozen,
    200k prebuilt events cost the insert runs ≈ 40 %)."""
    gc.collect()
    gc.freeze()
    cpu = time.process_time()
    try:
        rate = await _timed(functools.partial(write_overlapping, sink.write, batches, overlap), rows)
    finally:
        gc.unfreeze()
    return rate, (time.process_time() - cpu) / rows * 1e6


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


async def run_sink(dsn: str, rows: int, batch_size: int, workers: int, overlap: int | None = None) -> dict[str, float]:
    """The sink with a pool of ``workers`` connections and ``overlapping_writes = overlap`` (by
    default at least its default 2), written to as the engine does."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    overlap = overlap or max(2, workers)
    config = PostgresSinkConfig(dsn=Secret(dsn), schema=schema, pool_min_size=workers, pool_max_size=workers, overlapping_writes=overlap)
    sink = PostgresSink("bench", config)
    await sink.start()
    results: dict[str, float] = {}
    try:
        # Warm-up (not timed): the table's DDL and each connection's staging tables.
        warm = _events("insert", workers, 1)
        await _spread(_batches([dataclass_replace(e, key={"id": -1 - j}) for j, e in enumerate(warm)], 1), workers, sink.write)
        for kind, ts in (("insert", 10), ("update", 20), ("delete", 30)):
            batches = _batches(_events(kind, rows, ts), batch_size)
            results[kind], results[f"{kind} cpu"] = await write_timed(sink, batches, overlap, rows)
    finally:
        await sink.close()
        await drop_schema(dsn, schema)
    return results


def dataclass_replace(event: ChangeEvent, **changes: Any) -> ChangeEvent:
    import attrs

    return attrs.evolve(event, **changes)


async def run_baselines(dsn: str, rows: int, batch_size: int, workers: int) -> dict[str, float]:
    """Plain tables, no bookkeeping: executemany upserts/deletes, and raw COPY (the floor)."""
    conns = [await asyncpg.connect(dsn) for _ in range(workers)]
    conn = conns[0]
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    cols = ", ".join(
        f"{n} {t}"
        for n, t in zip(COLUMNS, ("integer", "bigint", "text", "text", "text", "float8", "boolean", "timestamptz", "numeric"), strict=True)
    )
    records = [(i, *_values(i).values()) for i in range(rows)]
    updates = [(i, i + 1, f"upd-{i}") for i in range(rows)]
    deletes = [(i,) for i in range(rows)]
    names = ["id", *COLUMNS]
    results: dict[str, float] = {}
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'CREATE TABLE "{schema}".naive (id bigint PRIMARY KEY, {cols})')
        await conn.execute(f'CREATE UNLOGGED TABLE "{schema}".raw (id bigint PRIMARY KEY, {cols})')
        await conn.execute(f'CREATE TABLE "{schema}".staged (id bigint PRIMARY KEY, {cols})')
        for c in conns:
            await c.execute(f"CREATE TEMP TABLE stage_rows (id bigint, {cols}) ON COMMIT DELETE ROWS")
            await c.execute("CREATE TEMP TABLE stage_upd (id bigint, c_int integer, c_text1 text) ON COMMIT DELETE ROWS")
        staged_sql = {
            "stage_rows": f'INSERT INTO "{schema}".staged SELECT * FROM stage_rows ORDER BY id '
            f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in COLUMNS)}",
            "stage_upd": f'INSERT INTO "{schema}".staged (id, c_int, c_text1) SELECT * FROM stage_upd ORDER BY id '
            "ON CONFLICT (id) DO UPDATE SET c_int = excluded.c_int, c_text1 = excluded.c_text1",
        }
        upsert = (
            f'INSERT INTO "{schema}".naive ({", ".join(names)}) VALUES ({", ".join(f"${i + 1}" for i in range(len(names)))}) '
            f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in COLUMNS)}"
        )
        update = (
            f'INSERT INTO "{schema}".naive (id, c_int, c_text1) VALUES ($1, $2, $3) '
            "ON CONFLICT (id) DO UPDATE SET c_int = excluded.c_int, c_text1 = excluded.c_text1"
        )
        delete = f'DELETE FROM "{schema}".naive WHERE id = $1'
        pool: asyncio.Queue[Any] = asyncio.Queue()
        for c in conns:
            pool.put_nowait(c)

        def chunks(recs: list[Any]) -> list[list[Any]]:
            return [recs[i : i + batch_size] for i in range(0, rows, batch_size)]

        async def many(sql: str, chunk: list[Any]) -> None:
            c = await pool.get()
            try:
                async with c.transaction():
                    await c.executemany(sql, chunk)
            finally:
                pool.put_nowait(c)

        async def copy(chunk: list[Any]) -> None:
            c = await pool.get()
            try:
                async with c.transaction():
                    await c.copy_records_to_table("raw", schema_name=schema, records=chunk, columns=names)
            finally:
                pool.put_nowait(c)

        async def staged(stage: str, chunk: list[Any]) -> None:
            c = await pool.get()
            try:
                async with c.transaction():
                    await c.copy_records_to_table(stage, records=chunk)
                    await c.execute(staged_sql[stage])
            finally:
                pool.put_nowait(c)

        for label, sql, recs in (("naive insert", upsert, records), ("naive update", update, updates), ("naive delete", delete, deletes)):
            results[label] = await _timed(functools.partial(_spread, chunks(recs), workers, functools.partial(many, sql)), rows)
        for label, stage, recs in (("staged insert", "stage_rows", records), ("staged update", "stage_upd", updates)):
            results[label] = await _timed(functools.partial(_spread, chunks(recs), workers, functools.partial(staged, stage)), rows)
        results["raw COPY"] = await _timed(lambda: _spread(chunks(records), workers, copy), rows)
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        for c in conns:
            await c.close()
    return results


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1000,5000,20000")
    parser.add_argument("--workers", default="1,2", help="connections (baselines; the sink's pool)")
    parser.add_argument("--overlap", type=int, default=None, help="the sink's overlapping_writes (default: 2, or the connections if more)")
    args = parser.parse_args()
    # The sink's info lines (one per table created) would land between the table's rows on stdout.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    conn = await asyncpg.connect(args.dsn)
    version = await conn.fetchval("SHOW server_version")
    settings = {k: await conn.fetchval(f"SHOW {k}") for k in ("synchronous_commit", "fsync", "shared_buffers")}
    await conn.close()
    print(f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z {platform.node()} {_machine()}, PostgreSQL {version} {settings}")
    print(f"# rows per run: {args.rows}, median of {args.repeat} runs, rows/s; load average at start {os.getloadavg()}")
    print(f"# sink: a pool of `conns` connections, overlapping_writes {args.overlap or 'max(2, conns)'}")
    module = native_module()
    encoding = "native (cdc_sink_postgres_native)" if module is not None else "asyncpg (CDC_SINK_POSTGRES_NATIVE=0 or not installed)"
    print(f"# COPY encoding: {encoding}")
    print("# ins/upd cpu: the benchmark process's CPU time per row (µs) while the sink inserts/updates (client side only)")
    print(
        "# x/COPY: ratio to raw COPY (same batch size, connections and run); x/naive: to the naive baseline of the same operation;"
        " x/staged: to the plain staged upsert (insert, update)"
    )
    kinds = ("insert", "update", "delete")
    head = " | ".join(f"sink {k} | {k} x/COPY | {k} x/naive" + (f" | {k} x/staged" if k != "delete" else "") for k in kinds)
    base_cols = ("naive insert", "naive update", "naive delete", "staged insert", "staged update", "raw COPY")
    print(f"| batch | conns | {head} | ins cpu | upd cpu | {' | '.join(base_cols)} | load |")
    print("|---:|---:|" + "---:|" * (len(kinds) * 3 + 2 + 2 + len(base_cols) + 1))
    for size in (int(s) for s in args.batch_sizes.split(",")):
        for workers in (int(w) for w in args.workers.split(",")):
            runs: dict[str, list[float]] = {}
            ratios: dict[str, list[float]] = {}
            for _ in range(args.repeat):
                sink = await run_sink(args.dsn, args.rows, size, workers, args.overlap)
                base = await run_baselines(args.dsn, args.rows, size, workers)
                for k, v in (*sink.items(), *base.items()):
                    runs.setdefault(k, []).append(v)
                for k in kinds:  # ratios within one repetition (same load), then their median
                    ratios.setdefault(f"{k}/copy", []).append(sink[k] / base["raw COPY"])
                    ratios.setdefault(f"{k}/naive", []).append(sink[k] / base[f"naive {k}"])
                    if k != "delete":
                        ratios.setdefault(f"{k}/staged", []).append(sink[k] / base[f"staged {k}"])
            med = {k: statistics.median(v) for k, v in (*runs.items(), *ratios.items())}
            cells = []
            for k in kinds:
                cells += [f"{med[k]:,.0f}", f"{med[f'{k}/copy']:.2f}", f"{med[f'{k}/naive']:.2f}"]
                if k != "delete":
                    cells.append(f"{med[f'{k}/staged']:.2f}")
            cells += [f"{med['insert cpu']:.2f}", f"{med['update cpu']:.2f}"]
            cells += [f"{med[k]:,.0f}" for k in base_cols]
            print(f"| {size} | {workers} | " + " | ".join(cells) + f" | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
