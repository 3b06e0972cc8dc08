"""Overlapping writes of the PostgreSQL sink: committing rows before the turn vs merging only in it, side by side.

    .venv/bin/python bench/bench_postgres_overlap.py --dsn "$CDC_TEST_POSTGRES_DSN" [--rows 200000] [--batch 20000] [--repeat 3]

The table and events of bench_postgres_sink.py (inserts into new rows, then partial updates of
them). Each repetition runs the sink with ``overlapping_writes = 2`` twice — ``early_merge`` on
(a batch of latest-state tables commits its rows before its turn and its offsets after it) and
off (merges only once the previous batch committed) — interleaved, so both see the same machine
load; medians and
the median of the per-repetition ratios are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid
from pathlib import Path

from cdc_core.secrets import Secret
from cdc_sink_postgres.config import PostgresSinkConfig
from cdc_sink_postgres.sink import PostgresSink

sys.path.insert(0, str(Path(__file__).parent))
from bench_postgres_sink import _batches, _events, drop_schema, write_timed  # the same table and events

KINDS = ("insert", "update")


async def run(dsn: str, rows: int, batch: int, early: bool) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    config = PostgresSinkConfig(dsn=Secret(dsn), schema=schema, pool_min_size=2, pool_max_size=2, overlapping_writes=2, early_merge=early)
    sink = PostgresSink("bench", config)
    await sink.start()
    out: dict[str, float] = {}
    try:
        await sink.write(_batches(_events("insert", 1, 1), 1)[0])  # DDL, warm-up (not timed)
        for kind, ts in zip(KINDS, (10, 20), strict=True):
            out[kind], _cpu = await write_timed(sink, _batches(_events(kind, rows, ts), batch), 2, rows)
    finally:
        await sink.close()
        await drop_schema(dsn, schema)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"# rows {args.rows}, batch {args.batch}, overlapping_writes 2, {args.repeat} interleaved repetitions; load {os.getloadavg()}")
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.repeat):
        for early in (True, False):
            runs[early].append(await run(args.dsn, args.rows, args.batch, early))
    print("| merges | " + " | ".join(f"{k}/s" for k in KINDS) + " | single runs |")
    print("|---|" + "---:|" * len(KINDS) + "---|")
    for early in (True, False):
        med = [statistics.median(r[k] for r in runs[early]) for k in KINDS]
        singles = ", ".join("/".join(f"{r[k]:,.0f}" for k in KINDS) for r in runs[early])
        label = "rows committed before the turn" if early else "only in the turn"
        print(f"| {label} | " + " | ".join(f"{m:,.0f}" for m in med) + f" | {singles} |")
    ratios = {k: statistics.median(a[k] / b[k] for a, b in zip(runs[True], runs[False], strict=True)) for k in KINDS}
    shown = ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
    print(f"# early ÷ in-turn (median of per-repetition ratios): {shown}; load {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
