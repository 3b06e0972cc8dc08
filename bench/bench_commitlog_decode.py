#!/usr/bin/env python3
"""Commitlog decode throughput (mutations/s and MB/s on one core), peak memory, tail latency,
and Cassandra's own CommitLogReader over the same segments.

    # test node: bash scripts/services.sh up cassandra; eval "$(bash scripts/services.sh env)"
    # 1. record >= 200 MB of real segments per table (outside the repo; resumes if interrupted):
    python bench/bench_commitlog_decode.py generate --out ~/.cache/cdc-bench --mb 210
    # 2. decode them: Python (a fresh process per table, pinned to one core) then bench/java/run.sh
    #    (javac + Cassandra's CommitLogReader, same core, same segments); medians of --repeats
    python bench/bench_commitlog_decode.py run --data ~/.cache/cdc-bench --repeats 3
    # 3. write -> event latency through the tailing reader (poll interval 0.25 s)
    python bench/bench_commitlog_decode.py latency --writes 200

``generate`` streams single-row INSERTs (one mutation each) into a 10-column table (``wide``) and
then a collection-heavy table (``coll``) with modest concurrency and retries; after every batch
it copies the segments Cassandra marked COMPLETED out of cdc_raw and deletes them there, so the
node's small ``cdc_total_space`` never fills up (CDC writes, also other users', would be rejected).

``run`` measures the decoder alone (sections -> entries -> mutation -> ChangeEvents) and the whole
reader (``CommitLogReader.read``, follow=False), as wall-clock and as CPU-time rates (the machine
is shared: CPU time is the per-core figure), and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdc_core.commitlog.cdc_index import read_cdc_index
from cdc_core.commitlog.events_builder import build_events
from cdc_core.commitlog.mutation import TableDecoder, UnknownTableError, decode_mutation, first_table_id
from cdc_core.commitlog.reader import CommitLogReader, CommitLogReaderConfig
from cdc_core.commitlog.schema_source import dump_schema, load_schema_snapshot
from cdc_core.commitlog.segment import MutationEntry, Section, SegmentCursor, iter_entries, logical_end, parse_segment_name
from cdc_core.events import ChangeEvent

TABLES = {
    "wide": (
        "CREATE TABLE {ks}.wide (id bigint, seq int, c1 text, c2 int, c3 bigint, c4 double, c5 boolean, c6 timestamp, c7 uuid,"
        " c8 text, PRIMARY KEY (id, seq)) WITH cdc = true",
        "INSERT INTO {ks}.wide (id, seq, c1, c2, c3, c4, c5, c6, c7, c8) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    "coll": (
        "CREATE TABLE {ks}.coll (id bigint PRIMARY KEY, tags set<text>, attrs map<text, int>, hist list<bigint>) WITH cdc = true",
        "INSERT INTO {ks}.coll (id, tags, attrs, hist) VALUES (?, ?, ?, ?)",
    ),
}


def _row(table: str, i: int) -> tuple[Any, ...]:
    import datetime as dt

    if table == "wide":
        return (
            i // 10,
            i % 10,
            f"name-{i}",
            i,
            i * 1000,
            i / 7,
            i % 2 == 0,
            dt.datetime(2024, 1, 1) + dt.timedelta(seconds=i),
            uuid.uuid4(),
            "x" * 20,
        )
    # 8 elements in each of the three non-frozen collections: 24 element cells per row
    return (
        i,
        {f"tag-{(i + k) % 50}" for k in range(8)},
        {f"k{(i + k) % 20}": i * k for k in range(8)},
        [i * 10 + k for k in range(8)],
    )


def _harvest(cdc_raw: Path, target: Path, floor_id: int) -> int:
    """Copy this run's COMPLETED segments (ids above ``floor_id``) out of cdc_raw, up to their
    logical end, with a COMPLETED idx, then delete them from cdc_raw. Returns bytes copied."""
    copied = 0
    for p in sorted(cdc_raw.iterdir()):
        name = parse_segment_name(p)
        if name is None or name.segment_id <= floor_id:
            continue
        idx = read_cdc_index(name.index_paths[0])
        if idx is None or not idx.completed:
            continue
        end = logical_end(name)
        with open(name.path, "rb") as f:
            (target / name.path.name).write_bytes(f.read(end))
        (target / name.index_paths[0].name).write_text(f"{end}\nCOMPLETED")
        name.path.unlink(missing_ok=True)
        name.index_paths[0].unlink(missing_ok=True)
        copied += end
    return copied


def _write_batch(session: Any, prepared: Any, rows: list[tuple[Any, ...]], concurrency: int, between: Callable[[], Any]) -> None:
    """Write ``rows``; retry the failed ones (timeouts under load, or cdc_raw full: ``between``
    moves completed segments out) with exponential backoff."""
    from cassandra.concurrent import execute_concurrent_with_args

    delay = 0.5
    for attempt in range(12):
        results = execute_concurrent_with_args(session, prepared, rows, concurrency=concurrency, raise_on_first_error=False)
        rows = [row for row, (ok, _) in zip(rows, results, strict=True) if not ok]
        if not rows:
            return
        print(f"  {len(rows)} writes failed (attempt {attempt + 1}), retrying in {delay:.1f}s", flush=True)
        time.sleep(delay)
        between()
        delay = min(delay * 2, 10)
    raise RuntimeError(f"{len(rows)} writes still failing")


def generate(out: Path, mb: int, batch: int, concurrency: int, fresh: bool) -> None:
    """Stream single-row INSERTs (one mutation each) into a fresh keyspace; after every batch,
    move the segments Cassandra completed out of cdc_raw (the node's cdc_total_space is small and
    shared). Stops once ``mb`` MB of completed segments are copied, then drops the keyspace (which
    closes the active segment) and copies that one too."""
    from cassandra.cluster import Cluster

    cdc_raw = Path(os.environ["CDC_TEST_CASSANDRA_CDC_RAW"])
    cluster = Cluster(
        os.environ["CDC_TEST_CASSANDRA_HOSTS"].split(","), port=int(os.environ["CDC_TEST_CASSANDRA_PORT"]), protocol_version=5
    )
    session = cluster.connect()
    session.default_timeout = 30
    for table, (ddl, insert) in TABLES.items():
        target = out / table
        target.mkdir(parents=True, exist_ok=True)
        if fresh:
            for old in target.iterdir():
                old.unlink()
        written = sum(p.stat().st_size for p in target.glob("*.log"))
        if written >= mb * 1_000_000:
            continue
        ks = "cdcbench"
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
        session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
        session.execute(ddl.replace("{ks}", ks))
        snapshot = dump_schema(session, [ks])
        merged = target / "schema.json"
        if merged.exists():  # resuming: keep the table ids of the segments already copied
            known = {t["id"] for t in snapshot["tables"]}
            snapshot["tables"] += [t for t in json.loads(merged.read_text())["tables"] if t["id"] not in known]
        merged.write_text(json.dumps(snapshot))
        # segments already COMPLETED are someone else's; the ones still being written get ours too
        floor_id = max(
            (
                n.segment_id
                for p in cdc_raw.iterdir()
                if (n := parse_segment_name(p)) and (i := read_cdc_index(n.index_paths[0])) and i.completed
            ),
            default=-1,
        )
        prepared = session.prepare(insert.replace("{ks}", ks))
        counter = 0
        started = time.monotonic()

        def harvest(target: Path = target, floor_id: int = floor_id) -> int:
            return _harvest(cdc_raw, target, floor_id)

        while written < mb * 1_000_000:
            _write_batch(session, prepared, [_row(table, counter + i) for i in range(batch)], concurrency, harvest)
            counter += batch
            written += harvest()
            rate = counter / (time.monotonic() - started)
            print(f"{table}: {written / 1e6:.1f} MB of segments copied, {counter} rows ({rate:.0f} rows/s)", flush=True)
        session.execute(f"DROP KEYSPACE {ks}", timeout=120)  # closes the active segment
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            got = _harvest(cdc_raw, target, floor_id)
            written += got
            if got:
                break
        print(f"{table}: done, {written / 1e6:.1f} MB, {counter} rows", flush=True)
    cluster.shutdown()


def decode_only(data: Path, table: str) -> tuple[int, int, int, float, float]:
    """(mutations decoded, events, bytes of sections, wall seconds, CPU seconds)."""
    catalog = load_schema_snapshot(data / "schema.json")
    decoders = {t.bytes: TableDecoder(s, catalog.dropped_types.get(t)) for t, s in catalog.tables.items()}
    wanted = {t.bytes for t, s in catalog.tables.items() if s.table == table}

    def resolve(raw: bytes) -> TableDecoder:
        try:
            return decoders[raw]
        except KeyError:
            raise UnknownTableError(uuid.UUID(bytes=raw)) from None

    mutations = events = nbytes = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    for path in sorted(data.glob("*.log")):
        name = parse_segment_name(path)
        assert name is not None
        cursor = SegmentCursor(name)
        mv = 12 if name.version == 7 else 13
        for section in cursor.sections(None):
            if not isinstance(section, Section):
                break
            nbytes += len(section.data)
            for entry in iter_entries(section):
                if not isinstance(entry, MutationEntry) or first_table_id(entry.data) not in wanted:
                    continue
                updates = decode_mutation(entry.data, resolve, mv)
                events += len(build_events(updates, "bench", name.segment_id, entry.end))
                mutations += 1
    return mutations, events, nbytes, time.perf_counter() - started, time.process_time() - cpu_started


async def whole_reader(data: Path, table: str) -> tuple[int, float, float]:
    """(events, wall seconds, CPU seconds) of CommitLogReader.read(follow=False)."""
    reader = CommitLogReader(
        CommitLogReaderConfig(cdc_raw_dir=data, schema_snapshot=data / "schema.json", node="bench", tables=[f"*.{table}"])
    )
    await reader.start()
    n = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    async for item in reader.read({}, follow=False):
        if isinstance(item, ChangeEvent):
            n += 1
    return n, time.perf_counter() - started, time.process_time() - cpu_started


def run_one(data: Path, table: str, repeats: int) -> dict[str, Any]:
    """The Python measurements of one table (run in a fresh process: peak RSS is this table's)."""
    size = sum(p.stat().st_size for p in data.glob("*.log"))
    rates, cpu_rates, cpu_mbs, reader_rates, reader_cpu_rates = [], [], [], [], []
    mutations = events = 0
    for _ in range(repeats):
        mutations, events, _nbytes, seconds, cpu = decode_only(data, table)
        rates.append(mutations / seconds)
        cpu_rates.append(mutations / cpu)
        cpu_mbs.append(size / cpu / 1e6)
        n, secs, cpu = asyncio.run(whole_reader(data, table))
        reader_rates.append(n / secs)
        reader_cpu_rates.append(n / cpu)
    return {
        "table": table,
        "segments": len(list(data.glob("*.log"))),
        "segment_bytes": size,
        "mutations": mutations,
        "events": events,
        "decode_mutations_per_s_wall_median": round(statistics.median(rates)),
        "decode_mutations_per_s_cpu_median": round(statistics.median(cpu_rates)),
        "decode_mb_per_s_cpu_median": round(statistics.median(cpu_mbs), 2),
        "decode_mutations_per_s_cpu_all": [round(r) for r in cpu_rates],
        "reader_events_per_s_wall_median": round(statistics.median(reader_rates)),
        "reader_events_per_s_cpu_median": round(statistics.median(reader_cpu_rates)),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "repeats": repeats,
    }


def _tables_tsv(data: Path, table: str) -> None:
    """<data>/tables.tsv for bench/java: every recorded id of ``table`` with its CREATE TABLE."""
    snapshot = json.loads((data / "schema.json").read_text())
    ddl = TABLES[table][0]
    # a resumed `generate` recorded the table under several ids (one per keyspace re-creation): each
    # gets a keyspace of its own here (mutations name tables by id only; the names do not matter)
    ids = [t["id"] for t in snapshot["tables"] if t["table"] == table]
    lines = [f"{tid}\tcdcbench_{i}\t{ddl.replace('{ks}', f'cdcbench_{i}')}" for i, tid in enumerate(ids)]
    (data / "tables.tsv").write_text("\n".join(lines) + "\n")


def run_java(data: Path, table: str, repeats: int) -> dict[str, Any]:
    """Cassandra's CommitLogReader (bench/java) over the same directory: pass 0 includes JIT warm-up."""
    import subprocess

    _tables_tsv(data, table)
    script = Path(__file__).parent / "java" / "run.sh"
    proc = subprocess.run(["bash", str(script), str(data), str(repeats + 1)], capture_output=True, text=True, check=False)
    passes = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not passes:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    warm = passes[1:] or passes
    return {
        "mutations": passes[0]["mutations"],
        "errors": sum(p["errors"] for p in passes),
        "cold_mutations_per_s_cpu": passes[0]["cpu_mutations_per_s"],
        "warm_mutations_per_s_wall_median": round(statistics.median(p["mutations_per_s"] for p in warm)),
        "warm_mutations_per_s_cpu_median": round(statistics.median(p["cpu_mutations_per_s"] for p in warm)),
        "warm_mb_per_s_cpu_median": round(statistics.median(p["cpu_mb_per_s"] for p in warm), 2),
        "warm_mutations_per_s_cpu_all": [round(p["cpu_mutations_per_s"]) for p in warm],
    }


def run(data_root: Path, repeats: int, java: bool, cpu: int) -> None:
    import subprocess

    for table in TABLES:
        data = data_root / table
        if not data.is_dir():
            print(f"{data}: missing (run `generate` first)", file=sys.stderr)
            continue
        load_before = os.getloadavg()
        cmd = ["taskset", "-c", str(cpu), sys.executable, __file__, "run-one", "--data", str(data), "--table", table]
        proc = subprocess.run([*cmd, "--repeats", str(repeats)], capture_output=True, text=True, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if java:
            result["java"] = run_java(data, table, repeats)
            jm = result["java"].get("warm_mutations_per_s_cpu_median")
            if jm and result["java"]["mutations"] == result["mutations"]:
                result["python_to_java_cpu_ratio"] = round(result["decode_mutations_per_s_cpu_median"] / jm, 3)
        result["loadavg_before_after"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
        print(json.dumps(result), flush=True)


async def _latency(writes: int, interval: float, poll: float) -> dict[str, Any]:
    from cassandra.cluster import Cluster

    from cdc_core.commitlog.schema_source import CassandraSchemaSource

    cdc_raw = Path(os.environ["CDC_TEST_CASSANDRA_CDC_RAW"])
    cluster = Cluster(
        os.environ["CDC_TEST_CASSANDRA_HOSTS"].split(","), port=int(os.environ["CDC_TEST_CASSANDRA_PORT"]), protocol_version=5
    )
    session = cluster.connect()
    ks = "cdcbench_lat"
    session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=120)
    session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    session.execute(f"CREATE TABLE {ks}.lat (id int PRIMARY KEY, v text) WITH cdc = true")
    insert = session.prepare(f"INSERT INTO {ks}.lat (id, v) VALUES (?, ?)")
    config = CommitLogReaderConfig(cdc_raw_dir=cdc_raw, contact_points=["unused"], keyspaces=[ks], poll_interval=poll)
    reader = CommitLogReader(config, schema_source=CassandraSchemaSource(session=session), node="bench")
    await reader.start()
    seen: dict[int, float] = {}
    done = asyncio.Event()

    async def consume() -> None:
        async for item in reader.read({}, follow=True):
            if isinstance(item, ChangeEvent) and item.table == "lat":
                seen.setdefault(int(item.key["id"]), time.monotonic())
                if len(seen) >= writes:
                    done.set()
                    return

    task = asyncio.create_task(consume())
    await asyncio.sleep(8)  # let the reader pass over what cdc_raw already holds
    sent: dict[int, float] = {}
    acked: dict[int, float] = {}
    for i in range(writes):
        sent[i] = time.monotonic()
        await asyncio.to_thread(session.execute, insert, (i, f"value-{i}"))
        acked[i] = time.monotonic()
        await asyncio.sleep(interval)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=60)
    task.cancel()
    await reader.close()
    session.execute(f"DROP KEYSPACE {ks}", timeout=120)
    cluster.shutdown()
    from_ack = sorted((seen[i] - acked[i]) * 1000 for i in acked if i in seen)
    from_send = sorted((seen[i] - sent[i]) * 1000 for i in sent if i in seen)

    def pct(xs: list[float], q: float) -> float:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else float("nan")

    return {
        "writes": writes,
        "events_seen": len(from_ack),
        "poll_interval_s": poll,
        "ack_to_event_ms": {"median": pct(from_ack, 0.5), "p99": pct(from_ack, 0.99), "max": pct(from_ack, 1.0)},
        "send_to_event_ms": {"median": pct(from_send, 0.5), "p99": pct(from_send, 0.99), "max": pct(from_send, 1.0)},
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--mb", type=int, default=200)
    g.add_argument("--batch", type=int, default=5000)
    g.add_argument("--concurrency", type=int, default=24)
    g.add_argument("--fresh", action="store_true", help="delete what an earlier run copied (default: resume)")
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--no-java", action="store_true", help="skip Cassandra's own reader (bench/java)")
    r.add_argument("--cpu", type=int, default=0, help="the core both readers are pinned to")
    o = sub.add_parser("run-one")
    o.add_argument("--data", type=Path, required=True)
    o.add_argument("--table", required=True)
    o.add_argument("--repeats", type=int, default=3)
    lat = sub.add_parser("latency")
    lat.add_argument("--writes", type=int, default=200)
    lat.add_argument("--interval", type=float, default=0.05)
    lat.add_argument("--poll-interval", type=float, default=0.25)
    args = parser.parse_args()
    if args.cmd == "generate":
        generate(args.out, args.mb, args.batch, args.concurrency, args.fresh)
    elif args.cmd == "run":
        run(args.data, args.repeats, not args.no_java, args.cpu)
    elif args.cmd == "run-one":
        print(json.dumps(run_one(args.data, args.table, args.repeats)))
    else:
        print(json.dumps(asyncio.run(_latency(args.writes, args.interval, args.poll_interval))))


if __name__ == "__main__":
    main()
