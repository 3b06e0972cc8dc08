#!/usr/bin/env python3
"""Record small real commitlog segments (v7 and v8) for the tests and the quickstart sample.

Needs the nodes of ``scripts/services.sh up`` (reads ``CDC_TEST_CASSANDRA*`` from the
environment: ``eval "$(bash scripts/services.sh env)"``). For each node it:

1. forces a fresh segment (creating and dropping a throwaway keyspace recycles the active one),
2. runs the test scenario (packages/cdc-core/tests/commitlog/scenario.py) in keyspace ``cdcfix``,
3. reads it back through the reader until the last write is durable, dumps the schema snapshot,
4. drops the keyspace (Cassandra then closes the segment: its ``_cdc.idx`` says COMPLETED),
5. copies the segments that hold the scenario's data, cut at the end of their sync-marker chain
   (the rest of a memory-mapped segment is zeros), with their idx files and ``schema.json``.

Writes packages/cdc-core/tests/commitlog/fixtures/v7 and v8, and copies v7 to the package's
``cdc_core/commitlog/sample`` (the quickstart's replayable cdc_raw).

    python scripts/make_commitlog_fixtures.py
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packages/cdc-core/tests"))

from cassandra.cluster import Cluster  # noqa: E402
from commitlog.live import read_keyspace_events, run_scenario  # noqa: E402
from commitlog.scenario import check_events  # noqa: E402

from cdc_core.commitlog.cdc_index import read_cdc_index  # noqa: E402
from cdc_core.commitlog.schema_source import dump_schema  # noqa: E402
from cdc_core.commitlog.segment import SegmentName, logical_end  # noqa: E402

KEYSPACE = "cdcfix"
FIXTURES = ROOT / "packages/cdc-core/tests/commitlog/fixtures"
SAMPLE = ROOT / "packages/cdc-core/src/cdc_core/commitlog/sample"


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        sys.exit(f'{name} is not set: run `eval "$(bash scripts/services.sh env)"` first')
    return value


def record(prefix: str, version: int, out: Path) -> None:
    hosts = _env(f"{prefix}_HOSTS").split(",")
    port = int(_env(f"{prefix}_PORT"))
    cdc_raw = Path(_env(f"{prefix}_CDC_RAW"))
    cluster = Cluster(hosts, port=port, protocol_version=5)
    session = cluster.connect()
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
        session.execute(
            "CREATE KEYSPACE IF NOT EXISTS cdcfix_switch WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.execute("CREATE TABLE IF NOT EXISTS cdcfix_switch.t (pk int PRIMARY KEY) WITH cdc = true")
        session.execute("DROP KEYSPACE cdcfix_switch")  # recycles the active segment: ours starts fresh
        session.execute(f"CREATE KEYSPACE {KEYSPACE} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
        run_scenario(session, KEYSPACE)
        events = asyncio.run(read_keyspace_events(session, cdc_raw, KEYSPACE))
        check_events(events)
        snapshot = dump_schema(session, [KEYSPACE])
        segment_ids = sorted({e.position.segment_id for e in events})
        session.execute(f"DROP KEYSPACE {KEYSPACE}")
    finally:
        cluster.shutdown()
    names = [SegmentName(segment_id=s, version=version, path=cdc_raw / f"CommitLog-{version}-{s}.log") for s in segment_ids]
    deadline = time.monotonic() + 60
    for name in names:
        while True:
            idx = read_cdc_index(name.index_paths[0])
            if idx is not None and idx.completed:
                break
            if time.monotonic() > deadline:
                sys.exit(f"{name.path.name} was not COMPLETED within 60 s")
            time.sleep(0.2)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / ".gitignore").write_text("!*.log\n")
    for name in names:
        end = logical_end(name)
        with open(name.path, "rb") as src:
            data = src.read(end)
        (out / name.path.name).write_bytes(data)
        shutil.copyfile(name.index_paths[0], out / name.index_paths[0].name)
        print(f"{out.relative_to(ROOT)}/{name.path.name}: {len(data)} bytes (idx {name.index_paths[0].read_text()!r})")
    (out / "schema.json").write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"{out.relative_to(ROOT)}: {len(events)} events of {KEYSPACE} in {len(names)} segment(s)")


def main() -> None:
    record("CDC_TEST_CASSANDRA", 7, FIXTURES / "v7")
    record("CDC_TEST_CASSANDRA8", 8, FIXTURES / "v8")
    if SAMPLE.exists():
        shutil.rmtree(SAMPLE)
    shutil.copytree(FIXTURES / "v7", SAMPLE)
    total = sum(p.stat().st_size for p in SAMPLE.iterdir())
    print(f"{SAMPLE.relative_to(ROOT)}: {total} bytes")


if __name__ == "__main__":
    main()
