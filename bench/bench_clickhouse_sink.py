"""Benchmark: ClickHouse sink throughput (events/s) for a 10-column table, batch size swept.

Workloads: ``insert`` (all columns), ``update`` (2 columns), ``delete`` (row deletions) and
``mixed`` (60/30/10 %). Measured in the same run, so ratios hold on a noisy machine:

* the sink, ``write()`` end to end (encoding, HTTP, offsets), on the server and (``--chdb``) chdb;
* the split: the sink's Python encoding alone, and the same encoded payloads POSTed alone (server);
* the protocol ceiling: the same rows as plain TSV POSTed (aiohttp) into a plain MergeTree;
* the reference: clickhouse-client inserting the same rows from a TSV file (native TCP).

    eval "$(scripts/services.sh env)"
    .venv/bin/python bench/bench_clickhouse_sink.py [--events 100000] [--batch 1000 5000 20000] [--repeat 3] [--chdb]
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
from cdc_sink_clickhouse.layout import quote
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


def events(s: TableSchema, n: int, seed: int = 1, kind: str = "mixed") -> list[ChangeEvent]:
    rng = random.Random(seed)
    out: list[ChangeEvent] = []
    for i in range(n):
        ts = 1_700_000_000_000_000 + i
        pos = Position(node="n1", segment_id=1, offset=i, index=0)
        key = {"pk": i % 50_000, "ck": i % 7}
        r = {"insert": 0.0, "update": 0.7, "delete": 0.95}.get(kind, rng.random())
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


def server_cpu_s() -> float | None:
    """CPU seconds used so far by the local clickhouse-server process (None if not visible): on a
    shared machine CPU per row is steadier than wall-clock rates."""
    try:
        pid = subprocess.run(["pgrep", "-o", "-f", "^/usr/sbin/clickhouse-server"], capture_output=True, text=True).stdout.split()[0]
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


async def run_split(url: str, database: str, evs: list[ChangeEvent], batch: int) -> tuple[float, float, float, float | None]:
    """(encode-only events/s, POST-only events/s, encode CPU us/event, server CPU us/event): the
    sink's encoder alone, then its payloads alone."""
    cfg = ClickHouseSinkConfig(url=Secret(url), database=database, max_rows_per_insert=10**7)
    sink = ClickHouseSink(cfg, ComponentContext(instance_name="bench"))
    await sink.start()
    try:
        layout = await sink.ensure_table(evs[0].schema)
        t0, c0 = time.perf_counter(), time.process_time()
        payloads: list[tuple[str, bytes]] = []
        step = min(batch, cfg.encode_chunk_events)
        for start in range(0, len(evs), step):  # as write() does: one payload per chunk and table
            rows, parts, _ = sink._encode_latest(layout, evs[start : start + step])
            for suffix, body in (("__rows_in", rows), ("__parts_in", parts)):
                if body:
                    payloads.append((suffix, body.data))
        encode = len(evs) / (time.perf_counter() - t0)
        encode_cpu = (time.process_time() - c0) * 1e6 / len(evs)
        cols = {s: [quote(n) for n, _ in w] for s, w in (("__rows_in", layout.rows_wire()), ("__parts_in", layout.parts_wire()))}
        await asyncio.sleep(0.5)  # let earlier work (merges) settle before counting the server's CPU
        s0 = server_cpu_s()
        t0 = time.perf_counter()
        for suffix, payload in payloads:
            await sink.transport.insert(layout.q(suffix), cols[suffix], payload, {})
        post = len(evs) / (time.perf_counter() - t0)
        await asyncio.sleep(0.5)
        s1 = server_cpu_s()
        server_cpu = None if s0 is None or s1 is None else (s1 - s0) * 1e6 / len(evs)
        return encode, post, encode_cpu, server_cpu
    finally:
        await sink.transport.execute(f"DROP DATABASE IF EXISTS `{database}`")
        await sink.close()


PLAIN_COLS = (
    "pk Int64, ck Int32, name String, qty Int32, total Int64, price Float64, active UInt8, created Int64, note String, score Float64"
)


def tsv_lines(n: int) -> list[str]:
    rng = random.Random(2)
    out = []
    for i in range(n):
        v = values(rng, i)
        out.append(
            f"{i % 50_000}\t{i % 7}\t{v['name']}\t{v['qty']}\t{v['total']}\t{v['price']!r}\t{int(v['active'])}\t{1_700_000_000_000 + i}"
            f"\t{v['note'].replace(chr(92), chr(92) * 2)}\t{v['score']!r}"
        )
    return out


async def plain_post(url: str, lines: list[str], batch: int) -> float:
    """The same rows as plain TSV POSTed (aiohttp, one request per batch) into a plain MergeTree."""
    database = f"bench_plain_{uuid.uuid4().hex[:8]}"
    sink = ClickHouseSink(ClickHouseSinkConfig(url=Secret(url), database=database), ComponentContext(instance_name="bench"))
    await sink.start()
    table = f"`{database}`.plain"
    try:
        await sink.transport.execute(f"CREATE TABLE {table} ({PLAIN_COLS}) ENGINE = MergeTree ORDER BY (pk, ck)")
        payloads = [("\n".join(lines[i : i + batch]) + "\n").encode() for i in range(0, len(lines), batch)]
        names = [c.split()[0] for c in PLAIN_COLS.split(", ")]
        t0 = time.perf_counter()
        for payload in payloads:
            await sink.transport.insert(table, names, payload, {})
        return len(lines) / (time.perf_counter() - t0)
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
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
        f.write("\n".join(tsv_lines(n)) + "\n")
        path = f.name
    try:
        subprocess.run([*args, "--query", f"CREATE TABLE {table} ({PLAIN_COLS}) ENGINE = MergeTree ORDER BY (pk, ck)"], check=True)
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
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--kinds", nargs="+", default=["insert", "update", "delete", "mixed"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chdb", action="store_true", help="also measure embedded chdb")
    ap.add_argument("--no-native", action="store_true", help="pure-Python encoder even if cdc-sink-clickhouse-native is installed")
    args = ap.parse_args()
    if args.no_native:
        import cdc_sink_clickhouse.layout

        setattr(cdc_sink_clickhouse.layout, "_native", None)  # noqa: B010 — a private switch, for this benchmark only (mypy: not exported)
    url = os.environ.get("CDC_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123")
    n, med = args.events, statistics.median

    def load() -> str:
        return os.getloadavg().__repr__()

    print(f"# {platform.node()} {platform.processor() or platform.machine()} cpus={os.cpu_count()} {dt.date.today()} load={load()}")
    import cdc_sink_clickhouse.layout

    native = getattr(cdc_sink_clickhouse.layout, "_native", None) is not None
    print(f"# events={n}, median of {args.repeat}; ratios are to clickhouse-client measured in this run; native encoder: {native}")
    ref_runs = [client_reference(url, n) for _ in range(args.repeat)]
    ref = med([x for x in ref_runs if x]) if all(ref_runs) else None
    print(f"reference clickhouse-client TSV -> plain MergeTree: {ref or 0:10,.0f} rows/s  (runs: {ref_runs})")

    def show(label: str, rates: list[float]) -> None:
        ratio = f"{med(rates) / ref:6.1%} of ref" if ref else ""
        print(f"{label:40s} median {med(rates):10,.0f}/s {ratio}  (runs: {', '.join(f'{x:,.0f}' for x in rates)})")

    lines = tsv_lines(n)
    for batch in args.batch:
        show(f"plain TSV POST batch={batch}", [asyncio.run(plain_post(url, lines, batch)) for _ in range(args.repeat)])
    targets = [("server", url)]
    chdb_dir = tempfile.TemporaryDirectory(prefix="bench-chdb-") if args.chdb else None  # removed at exit
    if chdb_dir is not None:
        targets.append(("chdb", f"chdb://{chdb_dir.name}"))
    for kind in args.kinds:
        for label, target in targets:
            for batch in args.batch:
                rates = []
                for r in range(args.repeat):
                    evs = events(schema(), n, seed=r, kind=kind)
                    rates.append(asyncio.run(run_sink(target, f"bench_{uuid.uuid4().hex[:8]}", evs, batch)))
                show(f"sink {label} {kind} batch={batch}", rates)
        big = max(args.batch)
        split = []
        for r in range(args.repeat):
            evs = events(schema(), n, seed=r, kind=kind)
            split.append(asyncio.run(run_split(url, f"bench_{uuid.uuid4().hex[:8]}", evs, big)))
        show(f"  split {kind} encode only batch={big}", [e for e, _, _, _ in split])
        show(f"  split {kind} POST only (server) batch={big}", [p for _, p, _, _ in split])
        cpu = [c for _, _, _, c in split if c is not None]
        print(
            f"  split {kind} CPU per event: encode {med([e for _, _, e, _ in split]):.2f} us, "
            f"server {med(cpu) if cpu else float('nan'):.2f} us (incl. merges within 0.5 s)"
        )
    print(f"# load at end={load()}")
    if chdb_dir is not None:
        chdb_dir.cleanup()


if __name__ == "__main__":
    main()
