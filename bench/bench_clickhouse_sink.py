"""Benchmark: ClickHouse sink throughput (events/s) for a 10-column table, batch size swept.

Workload per batch: 60 % inserts (all columns), 30 % partial updates (2 columns), 10 % row
deletions. Reference in the same run: clickhouse-client inserting the same number of rows from a
TSV file into a plain MergeTree table with the same 10 columns.

    eval "$(scripts/services.sh env)"
    .venv/bin/python bench/bench_clickhouse_sink.py [--events 200000] [--batch 1000 5000 20000] [--repeat 3] [--chdb]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from typing import Any

from cdc_core.events import Cell, ChangeEvent, ChangeKind, Deletion, Liveness
from cdc_core.factories import ComponentContext
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.secrets import Secret
from cdc_core.sinks import Batch
from cdc_sink_clickhouse.config import ClickHouseSinkConfig
from cdc_sink_clickhouse.sink import ClickHouseSink

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
REGULAR = {"name": "text", "qty": "int", "total": "bigint", "price": "double", "active": "boolean"}
REGULAR.update({"created": "timestamp", "note": "text", "score": "double"})


def schema() -> TableSchema:
    cols = [
        ColumnSchema(name="pk", type="bigint", kind=ColumnKind.PARTITION_KEY, position=0),
        ColumnSchema(name="ck", type="int", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.ASC),
    ]
    cols += [ColumnSchema(name=n, type=t, kind=ColumnKind.REGULAR, position=-1) for n, t in REGULAR.items()]
    return TableSchema(keyspace="bench", table=f"t{uuid.uuid4().hex[:8]}", id=uuid.uuid4(), columns=tuple(cols))


def values(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "name": f"customer-{i}",
        "qty": rng.randint(0, 1000),
        "total": rng.randint(0, 10**12),
        "price": rng.random() * 1000,
        "active": rng.random() < 0.5,
        "created": EPOCH + dt.timedelta(milliseconds=1_700_000_000_000 + i),
        "note": "note with a \\ backslash" if i % 7 == 0 else "plain note",
        "score": rng.random(),
    }


def events(s: TableSchema, n: int, seed: int = 1) -> list[ChangeEvent]:
    rng = random.Random(seed)
    out: list[ChangeEvent] = []
    for i in range(n):
        ts = 1_700_000_000_000_000 + i
        pos = Position(node="n1", segment_id=1, offset=i, index=0)
        key = {"pk": i % 50_000, "ck": i % 7}
        r = rng.random()
        if r < 0.6:
            cells: dict[str, Any] = {k: Cell(timestamp=ts, value=v) for k, v in values(rng, i).items()}
            out.append(ChangeEvent(position=pos, schema=s, kind=ChangeKind.ROW, key=key, liveness=Liveness(timestamp=ts), cells=cells))
        elif r < 0.9:
            cells = {"qty": Cell(timestamp=ts, value=rng.randint(0, 9)), "note": Cell(timestamp=ts, value="updated")}
            out.append(ChangeEvent(position=pos, schema=s, kind=ChangeKind.ROW, key=key, cells=cells))
        else:
            out.append(
                ChangeEvent(
                    position=pos, schema=s, kind=ChangeKind.ROW, key=key, row_deletion=Deletion(timestamp=ts, local_deletion_time=1)
                )
            )
    return out


async def run_sink(url: str, database: str, evs: list[ChangeEvent], batch: int) -> float:
    cfg = ClickHouseSinkConfig(url=Secret(url), database=database, max_rows_per_insert=10**7)
    sink = ClickHouseSink(cfg, ComponentContext(instance_name="bench"))
    await sink.start()
    try:
        await sink.ensure_table(evs[0].schema)
        t0 = time.perf_counter()
        for start in range(0, len(evs), batch):
            chunk = evs[start : start + batch]
            result = await sink.write(Batch(batch_id=f"b{start}", events=chunk, positions={"n1": chunk[-1].position}))
            assert not result.rejected
        return len(evs) / (time.perf_counter() - t0)
    finally:
        await sink.transport.execute(f"DROP DATABASE IF EXISTS `{database}`")
        await sink.close()


def client_reference(url: str, n: int) -> float | None:
    """clickhouse-client (native TCP) inserting n rows from a TSV file into a plain MergeTree."""
    parts = urllib.parse.urlsplit(url)
    port = os.environ.get("CDC_CLICKHOUSE_TCP_PORT", "19000")
    args = ["clickhouse-client", "--host", parts.hostname or "127.0.0.1", "--port", port]
    if parts.username:
        args += ["--user", urllib.parse.unquote(parts.username), "--password", urllib.parse.unquote(parts.password or "")]
    table = f"default.bench_ref_{uuid.uuid4().hex[:8]}"
    cols = "pk Int64, ck Int32, name String, qty Int32, total Int64, price Float64, active UInt8, created Int64, note String, score Float64"
    rng = random.Random(2)
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
        for i in range(n):
            v = values(rng, i)
            f.write(
                f"{i % 50_000}\t{i % 7}\t{v['name']}\t{v['qty']}\t{v['total']}\t{v['price']!r}\t{int(v['active'])}\t{1_700_000_000_000 + i}"
                f"\t{v['note'].replace(chr(92), chr(92) * 2)}\t{v['score']!r}\n"
            )
        path = f.name
    try:
        subprocess.run([*args, "--query", f"CREATE TABLE {table} ({cols}) ENGINE = MergeTree ORDER BY (pk, ck)"], check=True)
        with open(path, "rb") as data:
            t0 = time.perf_counter()
            subprocess.run([*args, "--query", f"INSERT INTO {table} FORMAT TabSeparated"], stdin=data, check=True)
            elapsed = time.perf_counter() - t0
        subprocess.run([*args, "--query", f"DROP TABLE {table}"], check=True)
        return n / elapsed
    except (OSError, subprocess.CalledProcessError):
        return None
    finally:
        os.unlink(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chdb", action="store_true", help="also measure embedded chdb")
    args = ap.parse_args()
    url = os.environ.get("CDC_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123")
    targets = [("server", url)]
    if args.chdb:
        targets.append(("chdb", f"chdb://{tempfile.mkdtemp(prefix='bench-chdb-')}"))
    print(f"# {platform.node()} {platform.processor() or platform.machine()} cpus={os.cpu_count()} {dt.date.today()}")
    print(f"# events={args.events} (60% inserts, 30% 2-column updates, 10% row deletes), median of {args.repeat}")
    for label, target in targets:
        for batch in args.batch:
            rates = []
            for r in range(args.repeat):
                evs = events(schema(), args.events, seed=r)
                rates.append(asyncio.run(run_sink(target, f"bench_{uuid.uuid4().hex[:8]}", evs, batch)))
            runs = ", ".join(f"{x:,.0f}" for x in rates)
            print(f"{label:7s} batch={batch:6d}  median {statistics.median(rates):10,.0f} events/s  (runs: {runs})")
    ref = [client_reference(url, args.events) for _ in range(args.repeat)]
    if all(x is not None for x in ref):
        print(f"clickhouse-client TSV reference (plain MergeTree): median {statistics.median([x for x in ref if x]):10,.0f} rows/s")


if __name__ == "__main__":
    main()
