#!/usr/bin/env python3
"""Commitlog decode throughput: mutations/s and MB/s on one core, and peak memory.

Two steps:

    # 1. record real segments from the test Cassandra (scripts/services.sh up; eval "$(... env)"):
    python bench/bench_commitlog_decode.py generate --out /tmp/cdcbench --mb 200
    # 2. decode them (run 5 times, report medians):
    python bench/bench_commitlog_decode.py run --data /tmp/cdcbench

``generate`` writes a 10-column table (``wide``) and a collection-heavy table (``coll``) in
chunks; after each chunk it drops the keyspace (Cassandra then closes the segment), copies the
COMPLETED segments that hold the data and deletes them from cdc_raw, so the node's small
``cdc_total_space`` never fills up (other users' CDC writes would be rejected).

``run`` measures two paths per data set: the decoder alone (sections → entries → mutation →
ChangeEvents) and the whole reader (``CommitLogReader.read``, follow=False).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
import uuid
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
    return (i, {f"t{i % 7}", f"u{i % 13}", "all"}, {"a": i, "b": i * 2, f"k{i % 5}": 1}, [i, i + 1, i + 2, i + 3])


def generate(out: Path, mb: int, chunk_mb: int) -> None:
    from cassandra.cluster import Cluster
    from cassandra.concurrent import execute_concurrent_with_args

    cdc_raw = Path(os.environ["CDC_TEST_CASSANDRA_CDC_RAW"])
    cluster = Cluster(
        os.environ["CDC_TEST_CASSANDRA_HOSTS"].split(","), port=int(os.environ["CDC_TEST_CASSANDRA_PORT"]), protocol_version=5
    )
    session = cluster.connect()
    for table, (ddl, insert) in TABLES.items():
        target = out / table
        target.mkdir(parents=True, exist_ok=True)
        written = sum(p.stat().st_size for p in target.glob("*.log"))
        counter = 0
        while written < mb * 1024 * 1024:
            ks = "cdcbench"
            session.execute(f"DROP KEYSPACE IF EXISTS {ks}")
            session.execute(f"CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
            session.execute(ddl.replace("{ks}", ks))
            before = {n.segment_id for p in cdc_raw.iterdir() if (n := parse_segment_name(p))}
            prepared = session.prepare(insert.replace("{ks}", ks))
            rows = chunk_mb * 1024 * 1024 // (180 if table == "wide" else 260)
            execute_concurrent_with_args(session, prepared, [_row(table, counter + i) for i in range(rows)], concurrency=64)
            counter += rows
            snapshot = dump_schema(session, [ks])
            time.sleep(0.5)
            session.execute(f"DROP KEYSPACE {ks}")  # closes the active segment
            deadline = time.monotonic() + 60
            mine = []
            while time.monotonic() < deadline:
                segs = sorted(n for p in cdc_raw.iterdir() if (n := parse_segment_name(p)) and n.segment_id not in before)
                segs += sorted(n for p in cdc_raw.iterdir() if (n := parse_segment_name(p)) and n.segment_id == max(before, default=-1))
                done = [(n, read_cdc_index(n.index_paths[0])) for n in segs]
                mine = [n for n, idx in done if idx is not None and idx.completed]
                if mine and all(idx is None or idx.completed for _, idx in done if _.segment_id <= max(n.segment_id for n in mine)):
                    break
                time.sleep(0.5)
            for name in mine:
                end = logical_end(name)
                with open(name.path, "rb") as f:
                    (target / name.path.name).write_bytes(f.read(end))
                (target / name.index_paths[0].name).write_text(f"{end}\nCOMPLETED")
                name.path.unlink(missing_ok=True)
                name.index_paths[0].unlink(missing_ok=True)
            merged = target / "schema.json"
            if merged.exists():
                old = json.loads(merged.read_text())
                snapshot["tables"] += [t for t in old["tables"] if t["id"] not in {x["id"] for x in snapshot["tables"]}]
            merged.write_text(json.dumps(snapshot))
            written = sum(p.stat().st_size for p in target.glob("*.log"))
            print(f"{table}: {written / 1e6:.1f} MB of segments, {counter} rows", flush=True)
    cluster.shutdown()


def decode_only(data: Path, table: str) -> tuple[int, int, int, float]:
    """(mutations decoded, events, bytes of sections, seconds)."""
    catalog = load_schema_snapshot(data / "schema.json")
    decoders = {t.bytes: TableDecoder(s, catalog.dropped_types.get(t)) for t, s in catalog.tables.items()}
    wanted = {t.bytes for t, s in catalog.tables.items() if s.table == table}

    def resolve(raw: bytes) -> TableDecoder:
        try:
            return decoders[raw]
        except KeyError:
            raise UnknownTableError(uuid.UUID(bytes=raw)) from None

    mutations = events = nbytes = 0
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
    return mutations, events, nbytes, time.perf_counter() - started


async def whole_reader(data: Path, table: str) -> tuple[int, float]:
    reader = CommitLogReader(
        CommitLogReaderConfig(cdc_raw_dir=data, schema_snapshot=data / "schema.json", node="bench", tables=[f"*.{table}"])
    )
    await reader.start()
    n = 0
    started = time.perf_counter()
    async for item in reader.read({}, follow=False):
        if isinstance(item, ChangeEvent):
            n += 1
    return n, time.perf_counter() - started


def run(data_root: Path, repeats: int) -> None:
    for table in TABLES:
        data = data_root / table
        if not data.is_dir():
            print(f"{data}: missing (run `generate` first)", file=sys.stderr)
            continue
        size = sum(p.stat().st_size for p in data.glob("*.log"))
        rates, mbs, reader_rates = [], [], []
        for _ in range(repeats):
            mutations, events, nbytes, seconds = decode_only(data, table)
            rates.append(mutations / seconds)
            mbs.append(nbytes / seconds / 1e6)
            n, secs = asyncio.run(whole_reader(data, table))
            reader_rates.append(n / secs)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "table": table,
                    "segment_bytes": size,
                    "mutations": mutations,
                    "events": events,
                    "decode_mutations_per_s_median": round(statistics.median(rates)),
                    "decode_mb_per_s_median": round(statistics.median(mbs), 2),
                    "reader_events_per_s_median": round(statistics.median(reader_rates)),
                    "peak_rss_mb": round(peak_mb, 1),
                    "repeats": repeats,
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--mb", type=int, default=200)
    g.add_argument("--chunk-mb", type=int, default=24)
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.cmd == "generate":
        generate(args.out, args.mb, args.chunk_mb)
    else:
        run(args.data, args.repeats)


if __name__ == "__main__":
    main()


