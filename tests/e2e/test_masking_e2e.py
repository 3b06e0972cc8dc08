"""Masking end to end (design notes §5): canary PII written INTO Cassandra through CQL — in partition
and clustering keys, text, bigint and date cells, set elements, list elements, map keys and values,
frozen and non-frozen UDT fields, row/range/partition deletions — goes through the commitlog reader
and the masking transform into Postgres, ClickHouse, a jsonl file and, for one sink that refuses a
value for good (a Postgres sink whose ``ssn`` column is overridden to ``integer``), the DLQ.
Then everything that left Cassandra is dumped — every Postgres relation, every ClickHouse table,
the jsonl file, the DLQ files, the captured logs (debug level), the metrics exposition — and no
canary may appear in it. The same run without the transform shows the canaries: the check can fail.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from e2e_support import NodeUnderTest, SinkTargets, environ, execute_cdc_write, pipeline_config, wait_until
from prometheus_client import generate_latest

from cdc_core.factories import ComponentContext
from cdc_core.pipeline import Pipeline
from cdc_core.positions import Position
from cdc_core.secrets import Secret
from cdc_masking.testing import (
    CANARIES,
    CANARY_EMAIL,
    CANARY_EMAIL_2,
    CANARY_KEYS,
    CANARY_PHONE,
    CANARY_PHONE_2,
    CANARY_SSN,
    CANARY_STREET,
    assert_no_canaries,
    canary_masking_config,
    find_canaries,
)
from cdc_sink_clickhouse.config import ClickHouseSinkConfig
from cdc_sink_clickhouse.sink import ClickHouseSink

pytestmark = pytest.mark.integration

STRICT_SCHEMA = "cdc_strict"


def _cql(ks: str, table: str) -> list[str]:
    """The canary table (the shape of cdc_masking.testing.CANARY_SCHEMA) and writes of every kind."""
    people = f"{ks}.{table}"
    return [
        f"CREATE TYPE IF NOT EXISTS {ks}.address (street text, zip int, phone text)",
        f"CREATE TABLE {people} (email text, phone text, ssn text, ssn_number bigint, dob date, nickname text, "
        "aliases set<text>, old_phones list<text>, contacts map<text, text>, home frozen<address>, work address, "
        "PRIMARY KEY (email, phone)) WITH cdc = true",
        f"INSERT INTO {people} (email, phone, ssn, ssn_number, dob, nickname, aliases, old_phones, contacts, home, work) "
        f"VALUES ('{CANARY_EMAIL}', '{CANARY_PHONE}', '{CANARY_SSN}', 987654329, '1961-03-27', 'not secret', "
        f"{{'{CANARY_EMAIL}', '{CANARY_EMAIL_2}'}}, ['{CANARY_PHONE_2}', '15550142778'], {{'{CANARY_PHONE}': '{CANARY_EMAIL}'}}, "
        f"{{street: '{CANARY_STREET}', zip: 12345, phone: '{CANARY_PHONE_2}'}}, "
        f"{{street: '{CANARY_STREET}', zip: 54321, phone: '{CANARY_PHONE}'}})",
        f"INSERT INTO {people} (email, phone, nickname) VALUES ('{CANARY_EMAIL_2}', '{CANARY_PHONE_2}', 'second')",
        f"UPDATE {people} SET old_phones = old_phones + ['442079460958'], contacts['{CANARY_EMAIL_2}'] = '{CANARY_PHONE_2}', "
        f"work.street = '{CANARY_STREET}' WHERE email = '{CANARY_EMAIL_2}' AND phone = '{CANARY_PHONE_2}'",
        f"UPDATE {people} SET aliases = aliases - {{'{CANARY_EMAIL_2}'}} WHERE email = '{CANARY_EMAIL}' AND phone = '{CANARY_PHONE}'",
        f"DELETE contacts['{CANARY_PHONE}'] FROM {people} WHERE email = '{CANARY_EMAIL}' AND phone = '{CANARY_PHONE}'",
        f"INSERT INTO {people} (email, phone, ssn) VALUES ('{CANARY_EMAIL}', '15550142778', '{CANARY_SSN}')",
        f"DELETE FROM {people} WHERE email = '{CANARY_EMAIL}' AND phone = '15550142778'",
        f"DELETE FROM {people} WHERE email = '{CANARY_EMAIL}' AND phone > '{CANARY_PHONE_2}' AND phone <= '442079460958'",
        f"DELETE FROM {people} WHERE email = '{CANARY_EMAIL_2}'",
        f"INSERT INTO {people} (email, phone, ssn) VALUES ('{CANARY_EMAIL_2}', '{CANARY_PHONE}', '{CANARY_SSN}')",
        f"INSERT INTO {people} (email, phone, nickname) VALUES ('someone@example.com', '0', 'sentinel-row')",
    ]


def _masking(ks: str, table: str) -> dict[str, Any]:
    """canary_masking_config()'s rules for this table; the keys come from the environment."""
    config = canary_masking_config()
    config["keys"] = {key_id: f"${{E2E_MASKING_{key_id.upper()}}}" for key_id in CANARY_KEYS}
    config["rules"] = [{**rule, "keyspace": ks, "table": table} for rule in config["rules"]]
    return {"type": "masking", **config}


async def _dump_postgres(dsn: str) -> str:
    """``SELECT *`` of every table and view the sinks created, as text."""
    conn = await asyncpg.connect(dsn)
    try:
        relations = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        )
        out = [f"{len(relations)} relations"]
        for r in relations:
            rows = await conn.fetch(f'SELECT * FROM "{r["table_schema"]}"."{r["table_name"]}"')
            out.append(f"-- {r['table_schema']}.{r['table_name']}: {len(rows)} rows")
            out.extend(repr(dict(row)) for row in rows)
        return "\n".join(out)
    finally:
        await conn.close()


async def _dump_clickhouse(url: str, database: str) -> str:
    """``SELECT *`` of every table and view in the database (aggregate states as their bytes)."""
    sink = ClickHouseSink(ClickHouseSinkConfig(url=Secret(url), database=database), ComponentContext(instance_name="dump"))
    await sink.start()
    try:
        names = (await sink.transport.select(f"SELECT name FROM system.tables WHERE database = '{database}' ORDER BY name")).decode()
        out = [f"tables: {names!r}"]
        for name in names.split():
            data = await sink.transport.select(f"SELECT * FROM `{database}`.`{name}`")
            out.append(f"-- {name}: {len(data)} bytes\n" + data.decode("utf-8", errors="replace"))
        return "\n".join(out)
    finally:
        await sink.close()


@pytest.mark.parametrize("masking", [True, False], ids=["masked", "unmasked-control"])
async def test_canary_pii_leaves_cassandra_only_masked(
    masking: bool, node8: NodeUnderTest, postgres_dsn: str, clickhouse_url: str, clickhouse_database: str, tmp_path: Path
) -> None:
    node = node8
    ks = node.keyspace
    for stmt in _cql(ks, node.table):
        execute_cdc_write(node.session, stmt, cdc_raw=node.cdc_raw)

    strict = {
        "type": "postgres",
        "dsn": "${E2E_PG_DSN}",
        "schema": STRICT_SCHEMA,
        # An integer column cannot hold the (masked or not) SSN text: those events are refused for good.
        "tables": {f"{ks}.{node.table}": {"column_types": {"ssn": "integer"}}},
        "batch": {"max_events": 50, "max_wait": 0.05},
    }
    config = pipeline_config(
        node,
        tmp_path,
        clickhouse_database=clickhouse_database,
        transforms=[_masking(ks, node.table)] if masking else [],
        extra_sinks={"pg_strict": strict},
    )
    env = environ(pg_dsn=postgres_dsn, ch_url=clickhouse_url, **{f"E2E_MASKING_{k.upper()}": v for k, v in CANARY_KEYS.items()})
    targets = SinkTargets(jsonl=(tmp_path / "events.jsonl",))

    async def sentinel_written() -> list[str]:
        text = targets.jsonl[0].read_text() if targets.jsonl[0].exists() else ""
        return [] if "sentinel-row" in text else ["the sentinel row (the last write) is not in the jsonl file yet"]

    with structlog.testing.capture_logs() as logs:
        pipeline = Pipeline.from_config(config, environ=env)
        structlog.get_logger("e2e").debug("pipeline built", config=str(pipeline.config))
        task = asyncio.create_task(pipeline.run())
        try:
            poll = await wait_until(sentinel_written, within=90)
            assert poll.ok, f"{poll.last}; lanes: {_lanes(pipeline)}"
            # Then every lane (the one that dead-letters included) commits past the sentinel.
            end = max(pipeline.lanes["file"].status.committed.values())
            poll = await wait_until(lambda: _all_committed(pipeline, end), within=60)
            assert poll.ok, f"{poll.last}; lanes: {_lanes(pipeline)}"
        finally:
            pipeline.stop()
            summary = await asyncio.wait_for(task, 30)
            await pipeline.close()
    assert summary.failed == [], {n: lane.last_error for n, lane in summary.lanes.items()}
    assert summary.lanes["pg_strict"].dlq_events > 0, "the strict sink refused nothing: no DLQ to check"
    dlq_files = pipeline.dlq.files()
    assert dlq_files

    outputs = {
        "postgres": await _dump_postgres(postgres_dsn),
        "clickhouse": await _dump_clickhouse(clickhouse_url, clickhouse_database),
        "jsonl": targets.jsonl[0].read_text(),
        "dlq": "\n".join(f.read_text() for f in dlq_files),
        "logs": repr(logs),
        "metrics": generate_latest(pipeline.metrics.registry).decode(),
    }
    for where, text in outputs.items():
        assert len(text) > 200, f"{where}: nothing was dumped ({text!r})"
    assert "sentinel-row" in outputs["postgres"] and "sentinel-row" in outputs["clickhouse"], "the dumps do not hold the data"
    if masking:
        for where, text in outputs.items():
            assert_no_canaries(text, where=f"{where} (masked pipeline)")
    else:
        # The control: the same outputs carry the canaries when nothing masks them.
        found = find_canaries("\n".join(outputs.values()))
        planted = {CANARY_SSN, "987654329", CANARY_EMAIL, CANARY_EMAIL_2, CANARY_PHONE, CANARY_PHONE_2, "1961-03-27", CANARY_STREET}
        assert planted <= set(found), f"unmasked run: canaries not found: {planted - set(found)}"
        assert find_canaries(outputs["dlq"]), "unmasked run: the DLQ should carry the canaries"
        assert set(found) <= set(CANARIES)


def _lanes(pipeline: Pipeline) -> dict[str, tuple[str, int, int, str | None]]:
    return {
        n: (lane.status.state, lane.status.applied_events, lane.status.dlq_events, lane.status.last_error)
        for n, lane in pipeline.lanes.items()
    }


async def _all_committed(pipeline: Pipeline, end: Position) -> list[str]:
    behind = []
    for name, lane in pipeline.lanes.items():
        newest = max(lane.status.committed.values(), default=None)
        if newest is None or newest < end:
            behind.append(f"{name}: committed {newest}, not yet {end}")
    return behind
