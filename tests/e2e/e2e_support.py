"""Shared helpers of the end-to-end tests: Cassandra's own state as the reference model's values,
pipeline configs over the real servers, reading every sink back, and bounded polling.

Imported by the test modules as ``e2e_support`` (tests/e2e/conftest.py puts this directory on
``sys.path``, as the package test suites do for their helpers).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from cdc_core.cqltypes import Duration
from cdc_core.events import ChangeEvent
from cdc_core.factories import ComponentContext
from cdc_core.positions import Position
from cdc_core.schema import TableSchema
from cdc_core.secrets import Secret
from cdc_core.serialization import events_from_jsonl
from cdc_core.testing.model import TableState, latest_state
from cdc_core.testing.segments import release_completed_segments
from cdc_sink_clickhouse.config import ClickHouseSinkConfig
from cdc_sink_clickhouse.sink import ClickHouseSink
from cdc_sink_postgres.testing import PostgresHarness

__all__ = [
    "HISTORY",
    "PG_SCHEMA",
    "NodeUnderTest",
    "Poll",
    "SinkTargets",
    "cassandra_state",
    "clickhouse_state",
    "create_items_table",
    "decoded_events",
    "diff_states",
    "divergences",
    "driver_value",
    "environ",
    "execute_cdc_write",
    "jsonl_events",
    "model_state",
    "pipeline_config",
    "postgres_offsets",
    "postgres_state",
    "reset_destination_offsets",
    "same_value",
    "sink_states",
    "table_schema",
    "wait_until",
    "write_history",
]

PG_SCHEMA = "cdc"
"""PostgreSQL schema the e2e pipelines write into (sink key ``schema``)."""


@dataclass(frozen=True)
class NodeUnderTest:
    """One Cassandra test node as a pipeline sees it: a driver session, the e2e keyspace and this
    test's own table in it, the node's cdc_raw directory and its CQL port (for the reader's schema)."""

    label: str
    session: Any
    keyspace: str
    table: str
    cdc_raw: Path
    hosts: tuple[str, ...]
    port: int
    commitlog_version: int

    def cql(self, stmt: str) -> str:
        """``stmt`` with ``{ks}.items`` → this test's table and ``{ks}`` → the keyspace."""
        return stmt.replace("{ks}.items", f"{self.keyspace}.{self.table}").replace("{ks}", self.keyspace)

    def source(self, *, node: str = "node-a", poll_interval: float = 0.1) -> dict[str, Any]:
        """The ``source`` section: the commitlog reader on this node's cdc_raw, this keyspace only."""
        return {
            "type": "cassandra",
            "cdc_raw_dir": str(self.cdc_raw),
            "contact_points": list(self.hosts),
            "port": self.port,
            "keyspaces": [self.keyspace],
            "tables": [f"{self.keyspace}.{self.table}"],
            "node": node,
            "poll_interval": poll_interval,
            # cdc_raw is shared with every other test: each dropped table's id costs the reader one
            # schema refresh, and the default rate limit (1 s) would make reading take minutes.
            "schema_refresh_min_interval": 0.05,
        }


# --------------------------------------------------------------------------------------------
# Cassandra's state, as the reference model's values
# --------------------------------------------------------------------------------------------
def driver_value(value: Any) -> Any:
    """A cassandra-driver result value as the event model's Python value (cdc_core.cqltypes).

    Non-frozen collections come back from the model as tuple (list), frozenset (set) and dict
    (map); empty collections are null (the driver already returns None for them, this makes sure).
    """
    from cassandra import util

    if value is None:
        return None
    if isinstance(value, bool | int | float | str | bytes | Decimal | uuid.UUID):
        return value
    if isinstance(value, dt.datetime):
        # The driver returns naive UTC datetimes with millisecond precision.
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        return aware.astimezone(dt.UTC).replace(microsecond=aware.microsecond // 1000 * 1000)
    if isinstance(value, util.Date):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, util.Time):
        return int(value.nanosecond_time)
    if isinstance(value, util.Duration):
        return Duration(int(value.months), int(value.days), int(value.nanoseconds))
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if isinstance(value, util.SortedSet | set | frozenset):
        return frozenset(driver_value(v) for v in value) or None
    if isinstance(value, util.OrderedMapSerializedKey | util.OrderedMap | dict):
        return {driver_value(k): driver_value(v) for k, v in value.items()} or None
    if isinstance(value, list):
        return tuple(driver_value(v) for v in value) or None
    if isinstance(value, tuple):
        return tuple(driver_value(v) for v in value)
    raise TypeError(f"no model form for driver value {value!r} ({type(value).__name__})")


def cassandra_state(session: Any, keyspace: str, table: str) -> TableState:
    """``SELECT *`` in Cassandra, split like the model: rows keyed by the primary-key tuple with
    every key and regular column; static columns per partition key (only partitions with a live
    static value)."""
    from cassandra.query import SimpleStatement

    meta = session.cluster.metadata.keyspaces[keyspace].tables[table]
    pk = [c.name for c in meta.partition_key]
    ck = [c.name for c in meta.clustering_key]
    static = [name for name, c in meta.columns.items() if c.is_static]
    regular = [name for name in meta.columns if name not in pk and name not in ck and name not in static]
    stmt = SimpleStatement(f'SELECT * FROM "{keyspace}"."{table}"', fetch_size=1000)
    result_set = session.execute(stmt, timeout=30)
    names = list(result_set.column_names)
    result = [dict(zip(names, row, strict=True)) for row in result_set]
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    statics: dict[tuple[Any, ...], dict[str, Any]] = {}
    for raw in result:
        values = {name: driver_value(v) for name, v in raw.items()}
        pk_values = tuple(values[n] for n in pk)
        static_values = {n: values[n] for n in static}
        if any(v is not None for v in static_values.values()):
            statics[pk_values] = static_values
        if ck and all(values[n] is None for n in ck):
            continue  # a partition with only static values: one result row without clustering values
        rows[pk_values + tuple(values[n] for n in ck)] = {n: values[n] for n in pk + ck + regular}
    return TableState(rows=rows, statics=statics)


# --------------------------------------------------------------------------------------------
# comparing states
# --------------------------------------------------------------------------------------------
def same_value(a: Any, b: Any) -> bool:
    """Equality that also sees what ``==`` forgives: a decimal's scale (``1.50`` vs ``1.5``), a bool
    against an int, a timestamp's timezone, a float's sign of zero, the value's kind."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, frozenset) and isinstance(b, frozenset):
        return a == b and all(same_value(x, next(y for y in b if y == x)) for x in a)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    if isinstance(a, Decimal):
        return bool(a.as_tuple() == b.as_tuple())
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, dt.datetime):
        return bool(a == b and a.utcoffset() == b.utcoffset())
    return bool(a == b)


def _diff_maps(
    kind: str, expected: Mapping[tuple[Any, ...], Mapping[str, Any]], actual: Mapping[tuple[Any, ...], Mapping[str, Any]]
) -> list[str]:
    out: list[str] = []
    for key in sorted(set(expected) - set(actual), key=repr):
        out.append(f"{kind} {key!r}: missing (Cassandra has {dict(expected[key])!r})")
    for key in sorted(set(actual) - set(expected), key=repr):
        out.append(f"{kind} {key!r}: unexpected (Cassandra has no such {kind}; got {dict(actual[key])!r})")
    for key in sorted(set(expected) & set(actual), key=repr):
        e, a = expected[key], actual[key]
        for col in sorted(set(e) | set(a)):
            ev, av = e.get(col, "<absent>"), a.get(col, "<absent>")
            if not same_value(ev, av):
                out.append(f"{kind} {key!r} column {col!r}: Cassandra {ev!r} != {av!r}")
    return out


def diff_states(expected: TableState, actual: TableState) -> list[str]:
    """Every difference, one line each: missing/unexpected rows and statics, then field by field."""
    return _diff_maps("row", expected.rows, actual.rows) + _diff_maps("static", expected.statics, actual.statics)


# --------------------------------------------------------------------------------------------
# reading the sinks back
# --------------------------------------------------------------------------------------------
async def postgres_state(dsn: str, schema: TableSchema, *, now: int | None = None, pg_schema: str = PG_SCHEMA) -> TableState:
    """The Postgres sink's documented views (TTLs judged at ``now``), as model values (cdc_sink_postgres.testing)."""
    harness = PostgresHarness(dsn=dsn, schema=pg_schema)
    return await harness.read_state(schema, int(time.time()) if now is None else now)


async def clickhouse_state(url: str, database: str, schema: TableSchema, *, now: int | None = None) -> TableState:
    """The ClickHouse sink's latest-state view, as model values (ClickHouseSink.read_state)."""
    sink = ClickHouseSink(ClickHouseSinkConfig(url=Secret(url), database=database), ComponentContext(instance_name="e2e-reader"))
    await sink.start()
    try:
        return await sink.read_state(schema, int(time.time()) if now is None else now)
    finally:
        await sink.close()


def jsonl_events(path: Path, keyspace: str | None = None, table: str | None = None) -> list[ChangeEvent]:
    """The events a jsonl sink wrote (only complete lines), optionally of one table."""
    if not path.exists():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    events = events_from_jsonl(data) if data else []
    return [e for e in events if (keyspace is None or e.keyspace == keyspace) and (table is None or e.table == table)]


def model_state(events: Iterable[ChangeEvent], now: int | None = None) -> TableState:
    """The reference model's fold of ``events`` (TTLs judged at ``now``, default the current time)."""
    return latest_state(events, now=int(time.time()) if now is None else now)


# --------------------------------------------------------------------------------------------
# polling
# --------------------------------------------------------------------------------------------
@dataclass
class Poll:
    """The outcome of :func:`wait_until`: whether the condition held, after how long, the last details."""

    ok: bool
    seconds: float
    attempts: int
    last: list[str] = field(default_factory=list)


async def wait_until(check: Callable[[], Awaitable[list[str]]], *, within: float = 90.0, interval: float = 0.5) -> Poll:
    """Call ``check`` (it returns what is still wrong; empty: done) until it returns nothing or
    ``within`` seconds passed. Exceptions count as "not yet" (a table not created yet)."""
    start = time.monotonic()
    attempts = 0
    last: list[str] = []
    while True:
        attempts += 1
        try:
            last = await check()
        except Exception as exc:  # reported if it persists until the deadline
            last = [f"{type(exc).__name__}: {exc}"]
        if not last:
            return Poll(ok=True, seconds=time.monotonic() - start, attempts=attempts)
        if time.monotonic() - start > within:
            return Poll(ok=False, seconds=time.monotonic() - start, attempts=attempts, last=last)
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------
# the table and the write history every convergence test replays
# --------------------------------------------------------------------------------------------
ITEMS_DDL = """
CREATE TABLE {ks}.items (
    pk text, ck int,
    st text static, sn int static,
    t text, i int, b bigint, d decimal, ts timestamp, u uuid, f boolean, x double, bl blob, dt date, du duration,
    l list<int>, s set<text>, m map<text, int>,
    PRIMARY KEY (pk, ck)
) WITH CLUSTERING ORDER BY (ck DESC) AND cdc = true
"""

SHORT_TTL = 2
"""Seconds: cells and rows written with this TTL must have expired when the states are compared."""

_FULL_COLUMNS = "pk, ck, t, i, b, d, ts, u, f, x, bl, dt, du, l, s, m"

# (label, CQL); {ks} is the keyspace. Labels name what each statement exercises.
HISTORY: tuple[tuple[str, str], ...] = (
    # p1: full inserts, then partial updates, nulls, cell/row deletes, element-level collection changes
    (
        "insert full row",
        "INSERT INTO {ks}.items (" + _FULL_COLUMNS + ") VALUES ('p1', 1, 'one', 1, -9000000000, 1.50, "
        "'2024-02-29 12:34:56.789+0000', 6f1c7d4e-0a5b-4c39-9a53-3f8e9d1e2b7a, true, 3.25, 0xcafe, '2024-02-29', 1mo2d3ns, "
        "[1, 2, 3], {'a', 'b'}, {'k1': 1, 'k2': 2})",
    ),
    (
        "insert full row",
        "INSERT INTO {ks}.items (" + _FULL_COLUMNS + ") VALUES ('p1', 2, '', -2, 9223372036854775807, -0.000001, "
        "'1969-12-31 23:59:59.999+0000', 00000000-0000-4000-8000-000000000000, false, 1e300, 0x, '1900-01-01', 3h, "
        "[5], {'only'}, {'x': -1})",
    ),
    (
        "insert full row",
        "INSERT INTO {ks}.items (" + _FULL_COLUMNS + ") VALUES ('p1', 3, 'three', 3, 3, "
        "123456789012345678901234567890.123456789, "
        "'2262-04-11 23:47:16.854+0000', 11111111-2222-4333-8444-555555555555, true, -0.5, 0x00ff00, '9999-12-31', -2d, "
        "[3, 3], {'c'}, {'only': 1})",
    ),
    (
        "insert full row",
        "INSERT INTO {ks}.items (" + _FULL_COLUMNS + ") VALUES ('p1', 4, 'four', 4, 4, 4, "
        "'2001-01-01 00:00:00.000+0000', 44444444-4444-4444-8444-444444444444, false, 4.0, 0x04, '2001-01-01', 4us, [4], {'d'}, {'k': 4})",
    ),
    ("partial update", "UPDATE {ks}.items SET t = 'one-b', i = 11 WHERE pk = 'p1' AND ck = 1"),
    ("set to null", "UPDATE {ks}.items SET d = null, du = null WHERE pk = 'p1' AND ck = 2"),
    ("cell delete", "DELETE t, bl FROM {ks}.items WHERE pk = 'p1' AND ck = 3"),
    ("row delete", "DELETE FROM {ks}.items WHERE pk = 'p1' AND ck = 4"),
    ("list append", "UPDATE {ks}.items SET l = l + [4] WHERE pk = 'p1' AND ck = 1"),
    ("list prepend", "UPDATE {ks}.items SET l = [0] + l WHERE pk = 'p1' AND ck = 1"),
    ("list set by index", "UPDATE {ks}.items SET l[1] = 9 WHERE pk = 'p1' AND ck = 1"),
    ("list remove", "UPDATE {ks}.items SET l = l - [2] WHERE pk = 'p1' AND ck = 1"),
    ("set add", "UPDATE {ks}.items SET s = s + {'c', 'd'} WHERE pk = 'p1' AND ck = 1"),
    ("set remove", "UPDATE {ks}.items SET s = s - {'a'} WHERE pk = 'p1' AND ck = 1"),
    ("map put", "UPDATE {ks}.items SET m['k3'] = 3, m['k2'] = 22 WHERE pk = 'p1' AND ck = 1"),
    ("map remove", "DELETE m['k1'] FROM {ks}.items WHERE pk = 'p1' AND ck = 1"),
    ("whole-collection overwrite", "UPDATE {ks}.items SET l = [7, 8], s = {'z'}, m = {'q': 1} WHERE pk = 'p1' AND ck = 2"),
    ("collection set to null", "UPDATE {ks}.items SET s = null WHERE pk = 'p1' AND ck = 3"),
    ("map emptied by removal", "UPDATE {ks}.items SET m = m - {'only'} WHERE pk = 'p1' AND ck = 3"),
    ("static write", "UPDATE {ks}.items SET st = 's1', sn = 1 WHERE pk = 'p1'"),
    ("static overwrite", "UPDATE {ks}.items SET st = 's1b' WHERE pk = 'p1'"),
    # p2: range deletions (closed and open-ended), a row re-inserted inside a deleted range
    *(("insert", f"INSERT INTO {{ks}}.items (pk, ck, t, i) VALUES ('p2', {n}, 'p2-{n}', {n})") for n in range(1, 7)),
    ("range delete", "DELETE FROM {ks}.items WHERE pk = 'p2' AND ck >= 2 AND ck < 5"),
    ("open range delete", "DELETE FROM {ks}.items WHERE pk = 'p2' AND ck > 5"),
    ("static insert", "INSERT INTO {ks}.items (pk, st) VALUES ('p2', 'p2-static')"),
    ("insert after range delete", "INSERT INTO {ks}.items (pk, ck, t) VALUES ('p2', 3, 'back')"),
    # p3: partition deletion, then a newer row
    ("insert", "INSERT INTO {ks}.items (pk, ck, t, st) VALUES ('p3', 1, 'p3-1', 'p3-static')"),
    ("insert", "INSERT INTO {ks}.items (pk, ck, t, l) VALUES ('p3', 2, 'p3-2', [1, 2])"),
    ("partition delete", "DELETE FROM {ks}.items WHERE pk = 'p3'"),
    ("insert after partition delete", "INSERT INTO {ks}.items (pk, ck, i) VALUES ('p3', 5, 5)"),
    # p4: TTLs, short (expired at the check) and long
    ("short TTL row", "INSERT INTO {ks}.items (pk, ck, t, s) VALUES ('p4', 1, 'expires', {'e'}) USING TTL " + str(SHORT_TTL)),
    ("long TTL row", "INSERT INTO {ks}.items (pk, ck, t, m) VALUES ('p4', 2, 'stays', {'k': 2}) USING TTL 86400"),
    ("insert", "INSERT INTO {ks}.items (pk, ck, t, i, l) VALUES ('p4', 3, 'keep', 3, [1])"),
    ("short TTL cell over a value", "UPDATE {ks}.items USING TTL " + str(SHORT_TTL) + " SET t = 'gone' WHERE pk = 'p4' AND ck = 3"),
    ("short TTL list element", "UPDATE {ks}.items USING TTL " + str(SHORT_TTL) + " SET l = l + [2] WHERE pk = 'p4' AND ck = 3"),
    ("long TTL static", "UPDATE {ks}.items USING TTL 86400 SET st = 'p4-static' WHERE pk = 'p4'"),
    # p5: client timestamps out of order, deletions older writes cannot undo, tombstone wins a tie
    ("newer insert first", "INSERT INTO {ks}.items (pk, ck, t, i) VALUES ('p5', 1, 'new', 2) USING TIMESTAMP 2000"),
    ("older update after it", "UPDATE {ks}.items USING TIMESTAMP 1000 SET t = 'old', i = 1, b = 5 WHERE pk = 'p5' AND ck = 1"),
    ("old partition delete", "DELETE FROM {ks}.items USING TIMESTAMP 1500 WHERE pk = 'p5'"),
    ("insert", "INSERT INTO {ks}.items (pk, ck, t) VALUES ('p5', 2, 'doomed') USING TIMESTAMP 4000"),
    ("row delete", "DELETE FROM {ks}.items USING TIMESTAMP 5000 WHERE pk = 'p5' AND ck = 2"),
    ("older insert after a delete", "INSERT INTO {ks}.items (pk, ck, t) VALUES ('p5', 2, 'zombie') USING TIMESTAMP 3000"),
    ("insert", "INSERT INTO {ks}.items (pk, ck, t, i) VALUES ('p5', 3, 'a', 1) USING TIMESTAMP 4000"),
    ("row delete", "DELETE FROM {ks}.items USING TIMESTAMP 5000 WHERE pk = 'p5' AND ck = 3"),
    ("newer update after a delete", "UPDATE {ks}.items USING TIMESTAMP 6000 SET t = 'reborn' WHERE pk = 'p5' AND ck = 3"),
    ("insert", "INSERT INTO {ks}.items (pk, ck, i) VALUES ('p5', 4, 44) USING TIMESTAMP 6500"),
    ("value at ts T", "UPDATE {ks}.items USING TIMESTAMP 7000 SET t = 'tie' WHERE pk = 'p5' AND ck = 4"),
    ("tombstone at the same ts", "DELETE t FROM {ks}.items USING TIMESTAMP 7000 WHERE pk = 'p5' AND ck = 4"),
    ("newer set add", "UPDATE {ks}.items USING TIMESTAMP 8000 SET s = s + {'late'} WHERE pk = 'p5' AND ck = 1"),
    ("older set overwrite", "UPDATE {ks}.items USING TIMESTAMP 7500 SET s = {'early'} WHERE pk = 'p5' AND ck = 1"),
    ("older range delete", "DELETE FROM {ks}.items USING TIMESTAMP 2500 WHERE pk = 'p5' AND ck >= 1 AND ck <= 2"),
    # p6: a partition with only static values; p7: a row kept alive by its marker only
    ("static only", "INSERT INTO {ks}.items (pk, st, sn) VALUES ('p6', 'static only', 6)"),
    ("marker only", "INSERT INTO {ks}.items (pk, ck) VALUES ('p7', 1)"),
    ("update without marker", "UPDATE {ks}.items SET t = 'x' WHERE pk = 'p7' AND ck = 2"),
    ("its only cell nulled", "UPDATE {ks}.items SET t = null WHERE pk = 'p7' AND ck = 2"),
    # a logged batch over several partitions
    (
        "logged batch",
        "BEGIN BATCH "
        "INSERT INTO {ks}.items (pk, ck, t) VALUES ('p8', 1, 'batched'); "
        "UPDATE {ks}.items SET b = 77 WHERE pk = 'p1' AND ck = 1; "
        "DELETE FROM {ks}.items WHERE pk = 'p2' AND ck = 1; "
        "UPDATE {ks}.items SET st = 'batch-static' WHERE pk = 'p8'; "
        "APPLY BATCH",
    ),
)


def create_items_table(node: NodeUnderTest) -> None:
    """This test's table (named ``node.table``) with the columns of ``ITEMS_DDL``."""
    node.session.execute(node.cql(ITEMS_DDL), timeout=60)


def execute_cdc_write(session: Any, stmt: str, label: str = "write", *, cdc_raw: Path | None = None, within: float = 20.0) -> None:
    """Execute one write to a CDC table. A node rejects such writes while cdc_raw is at
    cdc_total_space (the test nodes' cdc_raw is small and shared by every test: each dropped
    keyspace closes a segment). The node re-measures the space at most every
    ``cdc_free_space_check_interval``, so a rejected write is retried for a bounded time, after
    releasing old COMPLETED segments of ``cdc_raw`` as the root conftest does at session start
    (rejected writes were not applied: retrying even a list append is safe)."""
    deadline = time.monotonic() + within
    while True:
        try:
            session.execute(stmt, timeout=30)
            return
        except Exception as exc:
            rejected = "failed to execute write" in str(exc)
            if rejected and time.monotonic() < deadline:
                if cdc_raw is not None:
                    release_completed_segments(cdc_raw)
                time.sleep(0.5)
                continue
            hint = "\n(the node rejects writes to CDC tables while cdc_raw is at cdc_total_space: see its system.log)" if rejected else ""
            raise AssertionError(f"CQL for {label!r} failed: {exc}\n{stmt}{hint}") from exc


def write_history(node: NodeUnderTest, history: Iterable[tuple[str, str]] = HISTORY) -> float:
    """Run the statements on this test's table in order (one at a time, so client timestamps follow
    statement order); returns the wall-clock time after which every short TTL has expired."""
    last_ttl_write = time.time()
    for label, stmt in history:
        execute_cdc_write(node.session, node.cql(stmt), label, cdc_raw=node.cdc_raw)
        if "USING TTL" in stmt:
            last_ttl_write = time.time()
    return last_ttl_write + SHORT_TTL + 1.5


# --------------------------------------------------------------------------------------------
# pipeline configuration over the real servers
# --------------------------------------------------------------------------------------------
FAST_BATCH: dict[str, Any] = {"max_events": 200, "max_wait": 0.05, "max_in_flight": 2}
FAST_RETRY: dict[str, Any] = {"attempts": 4, "base_delay": 0.05, "max_delay": 0.5}


def pipeline_config(
    node: NodeUnderTest,
    tmp_path: Path,
    *,
    postgres: bool = True,
    clickhouse_database: str | None = None,
    jsonl: bool = True,
    node_name: str = "node-a",
    tag: str = "",
    transforms: list[dict[str, Any]] | None = None,
    extra_sinks: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pipeline mapping: the commitlog reader on ``node`` (this test's keyspace only) into
    Postgres (``${E2E_PG_DSN}``, schema ``cdc``), ClickHouse (``${E2E_CH_URL}``, the given database)
    and a jsonl file ``events{tag}.jsonl``, offsets in ``offsets{tag}.sqlite``, the DLQ under
    ``dlq{tag}/`` — all in ``tmp_path`` (``tag`` tells apart agents that share the destinations).
    Secrets come from the ``environ`` passed to ``Pipeline.from_config`` (see :func:`environ`)."""
    sinks: dict[str, Any] = {}
    if postgres:
        sinks["pg"] = {"type": "postgres", "dsn": "${E2E_PG_DSN}", "schema": PG_SCHEMA, "batch": FAST_BATCH, "retry": FAST_RETRY}
    if clickhouse_database is not None:
        sinks["ch"] = {
            "type": "clickhouse",
            "url": "${E2E_CH_URL}",
            "database": clickhouse_database,
            "batch": FAST_BATCH,
            "retry": FAST_RETRY,
        }
    if jsonl:
        sinks["file"] = {"type": "jsonl", "path": str(tmp_path / f"events{tag}.jsonl"), "batch": FAST_BATCH}
    sinks.update(extra_sinks or {})
    return {
        "name": f"e2e-{node.label}{tag}",
        "follow": True,
        "stop_timeout": 20,
        "source": node.source(node=node_name),
        "transforms": transforms or [],
        "sinks": sinks,
        "offsets": {"type": "sqlite", "path": str(tmp_path / f"offsets{tag}.sqlite")},
        "dlq": {"directory": str(tmp_path / f"dlq{tag}")},
    }


def environ(*, pg_dsn: str | None = None, ch_url: str | None = None, **more: str) -> dict[str, str]:
    """The environment ``${VAR}`` substitutions read (nothing else: no stray CDC_* overrides)."""
    env = dict(more)
    if pg_dsn is not None:
        env["E2E_PG_DSN"] = pg_dsn
    if ch_url is not None:
        env["E2E_CH_URL"] = ch_url
    return env


def table_schema(node: NodeUnderTest, table: str | None = None) -> TableSchema:
    """The table's schema (default: this test's) as the reader builds it (live from system_schema)."""
    table = node.table if table is None else table
    from cdc_core.commitlog.schema_source import CassandraSchemaSource

    catalog = CassandraSchemaSource(session=node.session, keyspaces=[node.keyspace]).catalog()
    for schema in catalog.tables.values():
        if schema.keyspace == node.keyspace and schema.table == table:
            return schema
    raise LookupError(f"{node.keyspace}.{table} is not in system_schema")


@dataclass(frozen=True)
class SinkTargets:
    """Where a pipeline's sinks write, to read them back (None: that sink is not compared)."""

    pg_dsn: str | None = None
    ch_url: str | None = None
    ch_database: str | None = None
    jsonl: tuple[Path, ...] = ()
    """jsonl files whose events, together, are folded by the reference model."""


async def sink_states(targets: SinkTargets, schema: TableSchema, now: int | None = None) -> dict[str, TableState]:
    """Every sink's latest state as of ``now`` (epoch seconds; default: the current time), and the
    reference fold of the jsonl files' events."""
    now = int(time.time()) if now is None else now
    out: dict[str, TableState] = {}
    if targets.pg_dsn is not None:
        out["postgres"] = await postgres_state(targets.pg_dsn, schema, now=now)
    if targets.ch_url is not None and targets.ch_database is not None:
        out["clickhouse"] = await clickhouse_state(targets.ch_url, targets.ch_database, schema, now=now)
    if targets.jsonl:
        events = [e for path in targets.jsonl for e in jsonl_events(path, schema.keyspace, schema.table)]
        out["latest_state(jsonl events)"] = model_state(events, now)
    return out


async def divergences(node: NodeUnderTest, schema: TableSchema, targets: SinkTargets, *, not_before: float = 0.0) -> list[str]:
    """What differs between Cassandra's ``SELECT *`` and each sink, one line per difference
    (empty: every sink equals Cassandra). Before ``not_before`` (short TTLs not expired yet) it
    reports that instead of comparing."""
    wait = not_before - time.time()
    if wait > 0:
        return [f"waiting {wait:.1f}s more for the short TTLs to expire"]
    expected = await asyncio.to_thread(cassandra_state, node.session, node.keyspace, schema.table)
    if not expected.rows:
        return ["Cassandra's table is empty: the history did not run?"]
    out: list[str] = []
    for name, state in (await sink_states(targets, schema)).items():
        out.extend(f"{name}: {line}" for line in diff_states(expected, state))
    return out


# --------------------------------------------------------------------------------------------
# offsets and the decoded stream
# --------------------------------------------------------------------------------------------
async def postgres_offsets(dsn: str, *, pg_schema: str = PG_SCHEMA) -> dict[tuple[str, str], Position]:
    """The Postgres sink's committed positions, ``(sink, node) -> Position``."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass($1)", f"{pg_schema}.cdc_offsets") is None:
            return {}
        rows = await conn.fetch(f'SELECT sink, node, segment_id, "offset", idx FROM "{pg_schema}".cdc_offsets')
    finally:
        await conn.close()
    return {(r["sink"], r["node"]): Position(node=r["node"], segment_id=r["segment_id"], offset=r["offset"], index=r["idx"]) for r in rows}


async def reset_destination_offsets(node_name: str, *, pg_dsn: str, ch_url: str, ch_database: str, pg_schema: str = PG_SCHEMA) -> None:
    """Forget ``node_name``'s committed positions where Postgres and ClickHouse keep them (what an
    operator does to replay a node; ``cdc offsets reset`` covers only the core offset store)."""
    import asyncpg

    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DELETE FROM "{pg_schema}".cdc_offsets WHERE node = $1', node_name)
    finally:
        await conn.close()
    sink = ClickHouseSink(ClickHouseSinkConfig(url=Secret(ch_url), database=ch_database), ComponentContext(instance_name="ch"))
    await sink.start()
    try:
        literal = "'" + node_name.replace("\\", "\\\\").replace("'", "\\'") + "'"
        await sink.transport.execute(f"ALTER TABLE `{ch_database}`.cdc_offsets DELETE WHERE node = {literal}")
        for _ in range(200):  # ALTER … DELETE is an asynchronous mutation on 18.16
            if node_name not in await sink.committed_positions():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"ClickHouse still holds offsets of {node_name}")
    finally:
        await sink.close()


async def decoded_events(node: NodeUnderTest, node_name: str) -> list[ChangeEvent]:
    """Every event of this test's table that cdc_raw holds now, decoded by a standalone commitlog
    reader with positions of ``node_name`` (the same positions a pipeline with that node name commits)."""
    from cdc_core.commitlog.reader import CommitLogReader, CommitLogReaderConfig
    from cdc_core.commitlog.schema_source import CassandraSchemaSource

    config = CommitLogReaderConfig(
        cdc_raw_dir=node.cdc_raw,
        contact_points=list(node.hosts),
        keyspaces=[node.keyspace],
        tables=[f"{node.keyspace}.{node.table}"],
        schema_refresh_min_interval=0.05,
    )
    reader = CommitLogReader(config, schema_source=CassandraSchemaSource(session=node.session), node=node_name)
    await reader.start()
    try:
        return [item async for item in reader.read({}, follow=False) if isinstance(item, ChangeEvent) and item.table == node.table]
    finally:
        await reader.close()
