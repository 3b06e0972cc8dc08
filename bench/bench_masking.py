"""Masking throughput: events/s through the ``masking`` transform on one core.

A 10-column row (text partition key, int clustering column, 8 regular columns) of which 3 are
masked: ``email`` (hmac), ``ssn`` (hmac) and ``phone`` (tokenize). Three workloads:

* ``unique``   — every event carries new values (worst case: every value is hashed);
* ``repeated`` — values drawn from a pool of 10,000 people, each written 3 times in a row as a
  replication-factor-3 cluster delivers it (the memo answers the duplicates);
* ``floor``    — unique values, but the 3 columns use ``redact`` (no hashing): the cost of
  rebuilding 3 cells and the event (attrs frozen objects), i.e. the ceiling for any strategy.

Rates are events per second of CPU time (``time.process_time``) so that other processes on a
shared machine distort them less.

Backends: with the optional accelerator ``cdc_masking_native`` installed, every workload is run
with it (``native``) and with the pure-Python fallback (``python``, forced by
``CDC_MASKING_NATIVE=0``), their runs interleaved so both see the same machine load; the last
column is the ratio of the medians. ``--backend`` picks one.

Usage: ``python bench/bench_masking.py [--events N] [--runs R] [--backend both|native|python]``;
prints the median of R runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import statistics
import sys
import time
import uuid

from prometheus_client import CollectorRegistry

from cdc_core.events import Cell, ChangeEvent, ChangeKind, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ColumnKind, ColumnSchema, TableSchema
from cdc_masking import MaskingTransform, strategies, structure_config

SCHEMA = TableSchema(
    keyspace="shop",
    table="customers",
    id=uuid.UUID("00000000-0000-4000-8000-000000000b01"),
    columns=(
        ColumnSchema(name="customer_id", type="text", kind=ColumnKind.PARTITION_KEY),
        ColumnSchema(name="seq", type="int", kind=ColumnKind.CLUSTERING),
        ColumnSchema(name="email", type="text", kind=ColumnKind.REGULAR),
        ColumnSchema(name="ssn", type="text", kind=ColumnKind.REGULAR),
        ColumnSchema(name="phone", type="text", kind=ColumnKind.REGULAR),
        ColumnSchema(name="name", type="text", kind=ColumnKind.REGULAR),
        ColumnSchema(name="city", type="text", kind=ColumnKind.REGULAR),
        ColumnSchema(name="score", type="int", kind=ColumnKind.REGULAR),
        ColumnSchema(name="active", type="boolean", kind=ColumnKind.REGULAR),
        ColumnSchema(name="signup", type="date", kind=ColumnKind.REGULAR),
    ),
)

CONFIG = {
    "policy_version": "bench-1",
    "keys": {"hmac": "bench-hmac-key-0123456789abcdef0123456789", "v1": "bench-token-key-v1-0123456789abcdef012345"},
    "token_key": "v1",
    "rules": [
        {"keyspace": "shop", "table": "customers", "column": "email", "classification": "pii"},
        {"keyspace": "shop", "table": "customers", "column": "ssn", "classification": "pii"},
        {"keyspace": "shop", "table": "customers", "column": "phone", "classification": "phi"},
    ],
}


def make_events(n: int, *, repeated: bool) -> list[ChangeEvent]:
    events = []
    ts = 1_700_000_000_000_000
    for i in range(n):
        p = (i // 3) % 10_000 if repeated else i
        events.append(
            ChangeEvent(
                position=Position(node="bench", segment_id=1, offset=i),
                schema=SCHEMA,
                kind=ChangeKind.ROW,
                key={"customer_id": f"c{p}", "seq": 1},
                liveness=Liveness(timestamp=ts + i),
                cells={
                    "email": Cell(timestamp=ts + i, value=f"person{p}@example.com"),
                    "ssn": Cell(timestamp=ts + i, value=f"{p % 1000:03d}-{p % 100:02d}-{p % 10000:04d}{p}"),
                    "phone": Cell(timestamp=ts + i, value=f"+1-555-{p:07d}"),
                    "name": Cell(timestamp=ts + i, value=f"Person {p}"),
                    "city": Cell(timestamp=ts + i, value="Springfield"),
                    "score": Cell(timestamp=ts + i, value=i % 100),
                    "active": Cell(timestamp=ts + i, value=True),
                    "signup": Cell(timestamp=ts + i, value=dt.date(2020, 1, 1)),
                },
            )
        )
    return events


def run_once(events: list[ChangeEvent], batch: int, strategy: str | None, backend: str) -> float:
    config = {**CONFIG, "rules": [{**rule, "strategy": strategy} if strategy else rule for rule in CONFIG["rules"]]}  # type: ignore[dict-item]
    os.environ["CDC_MASKING_NATIVE"] = "1" if backend == "native" else "0"  # read when the strategies compile
    transform = MaskingTransform(structure_config(config), registry=CollectorRegistry())
    gc.collect()
    start = time.process_time()
    for i in range(0, len(events), batch):
        transform.apply(events[i : i + batch])
    return len(events) / (time.process_time() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--backend", choices=("both", "native", "python"), default="both")
    parser.add_argument("--workloads", default="unique,repeated,floor", help="comma-separated subset of unique,repeated,floor")
    args = parser.parse_args()
    # getattr: the script also measures checkouts of cdc-masking from before the accelerator
    has_native = getattr(strategies, "native_module", lambda: None)() is not None
    if args.backend == "both":
        backends = ["native", "python"] if has_native else ["python"]
    elif args.backend == "native" and not has_native:
        parser.error("--backend native: cdc_masking_native is not installed (or CDC_MASKING_NATIVE=0)")
    else:
        backends = [args.backend]
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    sys.stdout.write(f"python {platform.python_version()} on {machine}; native accelerator: {has_native}\n")
    for workload in args.workloads.split(","):
        events = make_events(args.events, repeated=workload == "repeated")
        # A pipeline holds one batch, not the whole input: keep the input's ~10^6 objects out of the
        # cyclic GC's full collections, which otherwise slow every other run by ~1.5x.
        gc.collect()
        gc.freeze()
        strategy = "redact" if workload == "floor" else None
        rates: dict[str, list[float]] = {b: [] for b in backends}
        for _ in range(args.runs):
            for backend in backends:  # interleaved: both backends see the same load
                rates[backend].append(run_once(events, args.batch, strategy, backend))
        medians = {b: statistics.median(r) for b, r in rates.items()}
        for backend, runs in rates.items():
            sys.stdout.write(
                f"{workload:9s} {backend:6s} median {medians[backend]:>10,.0f} events/s  (runs: {', '.join(f'{r:,.0f}' for r in runs)})\n"
            )
        del events
        gc.unfreeze()
        if len(medians) == 2:
            sys.stdout.write(f"{workload:9s} native/python {medians['native'] / medians['python']:.2f}x\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
