"""Smoke tests: the servers started by scripts/services.sh do what the project's tests rely on."""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import asyncpg
import pytest
from aiochclient import ChClient

from cdc_sink_timescale.edition import detect_timescale_edition

if TYPE_CHECKING:
    from cassandra.cluster import Session
    from conftest import CassandraNode, Toxiproxy

pytestmark = pytest.mark.integration

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll `probe` until it returns something other than None/False; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Cassandra: commitlog versions 7 and 8, CDC files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CdcTarget:
    node: CassandraNode
    session: Session
    keyspace: str


@pytest.fixture(params=["cassandra", "cassandra8"])
def cdc_target(request: pytest.FixtureRequest) -> CdcTarget:
    name = request.param
    return CdcTarget(
        node=request.getfixturevalue(f"{name}_node"),
        session=request.getfixturevalue(f"{name}_session"),
        keyspace=request.getfixturevalue(f"{name}_keyspace"),
    )


def idx_offsets(cdc_raw: Path) -> dict[str, int]:
    """segment file name -> offset recorded in its _cdc.idx (first line)."""
    offsets: dict[str, int] = {}
    for idx in cdc_raw.glob("CommitLog-*_cdc.idx"):
        try:
            first = idx.read_text().split("\n", 1)[0].strip()
        except FileNotFoundError:
            continue
        if first.isdigit():
            offsets[idx.name.removesuffix("_cdc.idx") + ".log"] = int(first)
    return offsets


def grown(before: dict[str, int], cdc_raw: Path) -> tuple[str, int] | None:
    """A segment whose idx offset is larger than in `before` (or new), with its offset."""
    now = idx_offsets(cdc_raw)
    bigger = [(name, off) for name, off in now.items() if off > before.get(name, 0)]
    return max(bigger, key=lambda item: item[1]) if bigger else None


def test_cassandra_cdc_segments(cdc_target: CdcTarget) -> None:
    session, ks, cdc_raw = cdc_target.session, cdc_target.keyspace, cdc_target.node.cdc_raw
    session.execute(f"CREATE TABLE {ks}.events (id int PRIMARY KEY, payload text) WITH cdc = true")
    insert = session.prepare(f"INSERT INTO {ks}.events (id, payload) VALUES (?, ?)")

    before = idx_offsets(cdc_raw)
    for i in range(50):
        session.execute(insert, (i, f"row {i} " + "x" * 100))
    segment, offset = wait_for(lambda: grown(before, cdc_raw), what=f"a _cdc.idx in {cdc_raw} to advance")

    log_file = cdc_raw / segment
    assert log_file.is_file(), f"{segment} missing next to its _cdc.idx"
    assert (cdc_raw / segment.replace(".log", "_cdc.idx")).is_file()
    with log_file.open("rb") as f:
        (version,) = struct.unpack(">i", f.read(4))
    assert version == cdc_target.node.commitlog_version
    assert segment.startswith(f"CommitLog-{version}-")

    # more writes: the same (still active) segment's idx offset grows
    for i in range(50, 150):
        session.execute(insert, (i, f"row {i} " + "y" * 100))

    def grown_offset() -> int | None:
        # Read once per probe: Cassandra rewrites the _cdc.idx in place, so a second read may
        # catch it empty (idx_offsets then leaves the segment out).
        now = idx_offsets(cdc_raw).get(segment, 0)
        return now if now > offset else None

    later = wait_for(grown_offset, what=f"the offset in {segment}'s _cdc.idx to grow after more writes")
    assert later > offset


def test_cassandra_nodes_are_separate(cassandra_node: CassandraNode, cassandra8_node: CassandraNode) -> None:
    assert (cassandra_node.commitlog_version, cassandra8_node.commitlog_version) == (7, 8)
    assert cassandra_node.cdc_raw != cassandra8_node.cdc_raw


# --------------------------------------------------------------------------------------------
# PostgreSQL / TimescaleDB
# --------------------------------------------------------------------------------------------
async def test_postgres_connects(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("SHOW server_version_num") >= "150000"
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        await conn.executemany("INSERT INTO t VALUES ($1, $2)", [(1, "a"), (2, "b")])
        assert await conn.fetchval("SELECT count(*) FROM t") == 2
    finally:
        await conn.close()


async def test_postgres_tls_verify_full(postgres_dsn: str, postgres_ca_file: Path) -> None:
    # sslmode/sslrootcert in the DSN, as a user would configure it
    sep = "&" if "?" in postgres_dsn else "?"
    dsn = f"{postgres_dsn}{sep}sslmode=verify-full&sslrootcert={urllib.parse.quote(str(postgres_ca_file))}"
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    finally:
        await conn.close()
    # and an explicit SSLContext that checks the hostname against the certificate
    context = ssl.create_default_context(cafile=str(postgres_ca_file))
    conn = await asyncpg.connect(postgres_dsn, ssl=context)
    try:
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
    finally:
        await conn.close()
    # a client that trusts another CA is refused
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncpg.connect(postgres_dsn, ssl=ssl.create_default_context())


async def test_timescale_hypertable(timescale_dsn: str) -> None:
    conn = await asyncpg.connect(timescale_dsn)
    try:
        await conn.execute("CREATE TABLE m (ts timestamptz NOT NULL, id int NOT NULL, v double precision, UNIQUE (id, ts))")
        await conn.execute("SELECT create_hypertable('m', by_range('ts', INTERVAL '1 day'))")
        await conn.execute(
            "INSERT INTO m SELECT now() - make_interval(hours => g), g % 3, g FROM generate_series(0, 99) g"
            " ON CONFLICT (id, ts) DO UPDATE SET v = excluded.v"
        )
        assert await conn.fetchval("SELECT count(*) FROM m") == 100
        assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'm'") == 1
        assert await conn.fetchval("SELECT count(DISTINCT time_bucket(INTERVAL '1 day', ts)) FROM m") >= 4
    finally:
        await conn.close()


async def test_timescale_edition_detection(timescale_dsn: str) -> None:
    conn = await asyncpg.connect(timescale_dsn)
    try:
        edition = await detect_timescale_edition(conn)
        # the probe leaves nothing behind
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE '_cdc_probe_%'") == 0
    finally:
        await conn.close()
    assert edition.installed
    assert edition.version is not None
    assert edition.version.startswith("2.")
    # scripts/services.sh builds the Apache-2 edition (Debian's source has no tsl/); so does the -oss image
    assert edition.license == "apache"
    assert edition.apache_only
    assert edition.compression is False
    assert edition.continuous_aggregates is False
    assert edition.policies is False
    assert sorted(edition.unavailable()) == ["compression", "continuous_aggregates", "policies"]
    assert "license" in edition.reasons["compression"]


async def test_timescale_edition_without_extension(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        edition = await detect_timescale_edition(conn)
    finally:
        await conn.close()
    assert not edition.installed
    assert not edition.apache_only


# --------------------------------------------------------------------------------------------
# ClickHouse
# --------------------------------------------------------------------------------------------
def _client(session: aiohttp.ClientSession, url: str, database: str) -> ChClient:
    parts = urllib.parse.urlsplit(url)
    base = f"{parts.scheme}://{parts.hostname}:{parts.port}/"
    return ChClient(
        session,
        url=base,
        user=urllib.parse.unquote(parts.username or "default"),
        password=urllib.parse.unquote(parts.password or ""),
        database=database,
    )


async def _replacing_merge_tree_roundtrip(client: ChClient) -> None:
    await client.execute("CREATE TABLE kv (id UInt32, v String, ver UInt64) ENGINE = ReplacingMergeTree(ver) ORDER BY id")
    await client.execute("INSERT INTO kv (id, v, ver) VALUES", (1, "old", 1), (2, "two", 1))
    await client.execute("INSERT INTO kv (id, v, ver) VALUES", (1, "new", 2))
    rows = await client.fetch("SELECT id, v, ver FROM kv FINAL ORDER BY id")
    assert [(r["id"], r["v"], r["ver"]) for r in rows] == [(1, "new", 2), (2, "two", 1)]
    assert await client.fetchval("SELECT count() FROM kv") == 3  # not merged yet without FINAL


async def test_clickhouse_replacing_merge_tree(clickhouse_url: str, clickhouse_database: str) -> None:
    async with aiohttp.ClientSession() as session:
        client = _client(session, clickhouse_url, clickhouse_database)
        assert await client.is_alive()
        await _replacing_merge_tree_roundtrip(client)


async def test_clickhouse_https(clickhouse_https_url: str, clickhouse_ca_file: Path, clickhouse_database: str) -> None:
    context = ssl.create_default_context(cafile=str(clickhouse_ca_file))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        client = _client(session, clickhouse_https_url, clickhouse_database)
        assert await client.fetchval("SELECT version()")
        await _replacing_merge_tree_roundtrip(client)


# --------------------------------------------------------------------------------------------
# Toxiproxy
# --------------------------------------------------------------------------------------------
async def test_toxiproxy_postgres_disable_enable(toxiproxy: Toxiproxy, postgres_proxy_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_proxy_dsn, timeout=10)
    assert await conn.fetchval("SELECT 1") == 1

    toxiproxy.disable("postgres")
    # the open connection is cut, and new ones fail
    with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError)):
        await conn.fetchval("SELECT 1", timeout=5)
    conn.terminate()
    with pytest.raises((OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)):
        await asyncpg.connect(postgres_proxy_dsn, timeout=3)

    toxiproxy.enable("postgres")
    conn = await asyncpg.connect(postgres_proxy_dsn, timeout=10)
    try:
        assert await conn.fetchval("SELECT 2") == 2
    finally:
        await conn.close()


async def test_toxiproxy_latency_toxic(toxiproxy: Toxiproxy, postgres_proxy_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_proxy_dsn, timeout=10)
    try:
        toxic = toxiproxy.add_toxic("postgres", "latency", {"latency": 300})
        start = time.monotonic()
        assert await conn.fetchval("SELECT 1") == 1
        assert time.monotonic() - start >= 0.25
        toxiproxy.remove_toxic("postgres", toxic)
        assert toxiproxy.toxics("postgres") == []
    finally:
        await conn.close()
