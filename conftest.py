"""Fixtures for tests that need real servers (Cassandra, PostgreSQL/TimescaleDB, ClickHouse, Toxiproxy).

The servers come from ``scripts/services.sh up``; ``eval "$(bash scripts/services.sh env)"`` exports
the ``CDC_TEST_*`` variables these fixtures read. When a variable is missing:

* with ``CI`` set or ``CDC_REQUIRE_SERVICES=1`` the test fails, saying what is missing;
* otherwise, for PostgreSQL/TimescaleDB and ClickHouse, if a Docker engine answers, a container is
  started with testcontainers (same server versions as docker-compose.yml);
* otherwise the test is skipped with the reason.

Isolation: each test gets its own Cassandra keyspace, its own PostgreSQL database (``postgres_dsn``,
``timescale_dsn``: a fresh database created on the server and dropped after the test) and its own
ClickHouse database. The Cassandra cluster/session objects and the ``cdc_raw`` directories are
shared by the whole session (a node has one commitlog), so tests must find their own data there.

Only fixtures live here: no hooks, no options, no markers. Integration tests mark themselves with
``@pytest.mark.integration`` (the marker is declared in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

T = TypeVar("T")

_HOW_TO_START = 'start the servers with `bash scripts/services.sh up` and `eval "$(bash scripts/services.sh env)"`'


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _services_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("CDC_REQUIRE_SERVICES") == "1"


def _missing(var: str, what: str) -> NoReturn:
    message = f"{what}: environment variable {var} is not set; {_HOW_TO_START}"
    if _services_required():
        pytest.fail(message + " (CI or CDC_REQUIRE_SERVICES=1: servers are required)", pytrace=False)
    pytest.skip(message)


def _env(var: str, what: str) -> str:
    value = os.environ.get(var, "").strip()
    return value if value else _missing(var, what)


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion in a private event loop on a worker thread.

    Keeps the synchronous fixtures independent of whatever loop pytest-asyncio runs the test in.
    """

    async def main() -> T:
        return await factory()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


_docker_ok: bool | None = None


def _docker_available() -> bool:
    """True when a Docker engine answers its /_ping (testcontainers can then start servers)."""
    global _docker_ok
    if _docker_ok is None:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        _docker_ok = False
        try:
            if host.startswith("unix://"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(3)
                    sock.connect(host.removeprefix("unix://"))
                    sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                    _docker_ok = sock.recv(64).split(b"\r\n", 1)[0].endswith(b" 200 OK")
            elif host.startswith("tcp://"):
                with urllib.request.urlopen(f"http://{host.removeprefix('tcp://')}/_ping", timeout=3) as response:
                    _docker_ok = response.status == 200
        except OSError:
            _docker_ok = False
    return _docker_ok


def _replace_netloc(url: str, *, port: int | None = None, path: str | None = None) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if port is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        host = hostport.rsplit(":", 1)[0] if ":" in hostport else hostport
        netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path=parts.path if path is None else path))


# --------------------------------------------------------------------------------------------
# Cassandra
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CassandraNode:
    """Where one Cassandra test node is: contact points, CQL port, cdc_raw directory, commitlog version."""

    hosts: tuple[str, ...]
    port: int
    cdc_raw: Path
    commitlog_version: int


def _cassandra_node(prefix: str, default_version: int) -> CassandraNode:
    what = f"Cassandra ({prefix})"
    hosts = tuple(h.strip() for h in _env(f"{prefix}_HOSTS", what).split(",") if h.strip())
    port = int(_env(f"{prefix}_PORT", what))
    cdc_raw = Path(_env(f"{prefix}_CDC_RAW", what))
    version = int(os.environ.get(f"{prefix}_COMMITLOG_VERSION", str(default_version)))
    from cdc_core.testing.segments import release_completed_segments

    release_completed_segments(cdc_raw)  # leftovers of earlier runs (cdc_total_space is small)
    return CassandraNode(hosts=hosts, port=port, cdc_raw=cdc_raw, commitlog_version=version)


def _connect_cassandra(node: CassandraNode) -> tuple[Cluster, Session]:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(local_dc="datacenter1"), request_timeout=30)
    cluster = Cluster(
        contact_points=list(node.hosts),
        port=node.port,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=10,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            return cluster, cluster.connect()
        except Exception as exc:  # NoHostAvailable while a node finishes starting
            if time.monotonic() > deadline:
                cluster.shutdown()
                message = f"cannot connect to Cassandra at {node.hosts}:{node.port}: {exc}"
                if _services_required():
                    pytest.fail(message, pytrace=False)
                pytest.skip(message)
            time.sleep(1)


@pytest.fixture(scope="session")
def cassandra_node() -> CassandraNode:
    """The default node: commitlog version 7 (storage_compatibility_mode CASSANDRA_4)."""
    return _cassandra_node("CDC_TEST_CASSANDRA", 7)


@pytest.fixture(scope="session")
def cassandra8_node() -> CassandraNode:
    """The second node: commitlog version 8 (storage_compatibility_mode NONE)."""
    return _cassandra_node("CDC_TEST_CASSANDRA8", 8)


@pytest.fixture(scope="session")
def cassandra_cluster(cassandra_node: CassandraNode) -> Iterator[Cluster]:
    cluster, _ = _connect_cassandra(cassandra_node)
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="session")
def cassandra_session(cassandra_cluster: Cluster) -> Session:
    """A cassandra-driver Session on the v7 node, shared by the test session (no keyspace set)."""
    return cassandra_cluster.connect()


@pytest.fixture(scope="session")
def cassandra8_cluster(cassandra8_node: CassandraNode) -> Iterator[Cluster]:
    cluster, _ = _connect_cassandra(cassandra8_node)
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="session")
def cassandra8_session(cassandra8_cluster: Cluster) -> Session:
    """A cassandra-driver Session on the v8 node, shared by the test session (no keyspace set)."""
    return cassandra8_cluster.connect()


def _keyspace(session: Session) -> Iterator[str]:
    name = _unique("t")
    session.execute(f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}")
    try:
        yield name
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {name}")


@pytest.fixture
def cassandra_keyspace(cassandra_session: Session) -> Iterator[str]:
    """A fresh keyspace (SimpleStrategy, RF 1) on the v7 node, dropped after the test. Yields its name."""
    yield from _keyspace(cassandra_session)


@pytest.fixture
def cassandra8_keyspace(cassandra8_session: Session) -> Iterator[str]:
    """A fresh keyspace (SimpleStrategy, RF 1) on the v8 node, dropped after the test. Yields its name."""
    yield from _keyspace(cassandra8_session)


@pytest.fixture(scope="session")
def cdc_raw_dir(cassandra_node: CassandraNode) -> Path:
    """The v7 node's cdc_raw directory (shared by all tests; segments of all keyspaces land here)."""
    return cassandra_node.cdc_raw


@pytest.fixture(scope="session")
def cdc_raw_dir8(cassandra8_node: CassandraNode) -> Path:
    """The v8 node's cdc_raw directory."""
    return cassandra8_node.cdc_raw


# --------------------------------------------------------------------------------------------
# PostgreSQL / TimescaleDB
# --------------------------------------------------------------------------------------------
TIMESCALE_IMAGE = "timescale/timescaledb:2.19.3-pg15-oss"  # Apache-2 edition, like scripts/services.sh
CLICKHOUSE_IMAGE = "yandex/clickhouse-server:18.16.1"  # Debian bookworm's clickhouse-server version


@dataclass(frozen=True)
class PostgresServer:
    """Server-level DSNs (databases cdc_pg and cdc_ts); tests get fresh databases from them."""

    dsn: str
    timescale_dsn: str
    proxy_dsn: str | None
    ca_file: Path | None


def _start_postgres_container() -> Iterator[PostgresServer]:
    from testcontainers.core.container import DockerContainer

    password = "cdc_test_password"
    container = (
        DockerContainer(TIMESCALE_IMAGE)
        .with_env("POSTGRES_USER", "cdc")
        .with_env("POSTGRES_PASSWORD", password)
        .with_env("POSTGRES_DB", "cdc_pg")
        .with_exposed_ports(5432)
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(5432))
        base = f"postgresql://cdc:{password}@{host}:{port}"

        async def prepare() -> None:
            import asyncpg

            deadline = time.monotonic() + 60
            while True:
                try:
                    conn = await asyncpg.connect(f"{base}/cdc_pg", timeout=5)
                    break
                except (OSError, asyncpg.PostgresError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'cdc_ts'"):
                    await conn.execute("CREATE DATABASE cdc_ts")
            finally:
                await conn.close()
            conn = await asyncpg.connect(f"{base}/cdc_ts")
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            finally:
                await conn.close()

        _run(prepare)
        yield PostgresServer(dsn=f"{base}/cdc_pg", timescale_dsn=f"{base}/cdc_ts", proxy_dsn=None, ca_file=None)
    finally:
        container.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """PostgreSQL 15 + TimescaleDB: from CDC_TEST_POSTGRES_DSN/CDC_TEST_TIMESCALE_DSN, else a container."""
    dsn = os.environ.get("CDC_TEST_POSTGRES_DSN", "").strip()
    if dsn:
        ca = os.environ.get("CDC_TEST_POSTGRES_CA_FILE", "").strip()
        yield PostgresServer(
            dsn=dsn,
            timescale_dsn=os.environ.get("CDC_TEST_TIMESCALE_DSN", "").strip() or dsn,
            proxy_dsn=os.environ.get("CDC_TEST_POSTGRES_PROXY_DSN", "").strip() or None,
            ca_file=Path(ca) if ca else None,
        )
    elif not _services_required() and _docker_available():
        yield from _start_postgres_container()
    else:
        _missing("CDC_TEST_POSTGRES_DSN", "PostgreSQL (and no Docker engine for testcontainers)")


def _fresh_database(server_dsn: str, *, extension: str | None = None) -> Iterator[str]:
    import asyncpg

    name = _unique("t")

    async def create() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        if extension:
            conn = await asyncpg.connect(_replace_netloc(server_dsn, path=f"/{name}"))
            try:
                await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {extension}")
            finally:
                await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run(create)
    try:
        yield _replace_netloc(server_dsn, path=f"/{name}")
    finally:
        _run(drop)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """DSN of a fresh, empty database (created for this test, dropped WITH (FORCE) after it)."""
    yield from _fresh_database(postgres_server.dsn)


@pytest.fixture
def timescale_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """DSN of a fresh database with `CREATE EXTENSION timescaledb` done (dropped after the test)."""
    yield from _fresh_database(postgres_server.timescale_dsn, extension="timescaledb")


@pytest.fixture
def postgres_proxy_dsn(postgres_server: PostgresServer, postgres_dsn: str) -> str:
    """The same fresh database as `postgres_dsn`, reached through the Toxiproxy proxy `postgres`."""
    if postgres_server.proxy_dsn is None:
        return _missing("CDC_TEST_POSTGRES_PROXY_DSN", "PostgreSQL through Toxiproxy")
    proxy_port = urllib.parse.urlsplit(postgres_server.proxy_dsn).port
    return _replace_netloc(postgres_dsn, port=proxy_port)


@pytest.fixture(scope="session")
def postgres_ca_file(postgres_server: PostgresServer) -> Path:
    """CA certificate that signed the server's certificate (for sslmode=verify-full)."""
    if postgres_server.ca_file is None:
        return _missing("CDC_TEST_POSTGRES_CA_FILE", "PostgreSQL TLS")
    return postgres_server.ca_file


# --------------------------------------------------------------------------------------------
# ClickHouse
# --------------------------------------------------------------------------------------------
def clickhouse_query(url: str, query: str, *, ca_file: Path | None = None, timeout: float = 30) -> str:
    """POST one statement to ClickHouse's HTTP interface (credentials from the URL); raises on HTTP errors."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    plain = urllib.parse.urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host, path="/"))
    request = urllib.request.Request(plain, data=query.encode(), method="POST")
    if parts.username is not None:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"ClickHouse HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc


@dataclass(frozen=True)
class ClickHouseServer:
    url: str
    https_url: str | None
    ca_file: Path | None
    proxy_url: str | None


def _start_clickhouse_container() -> Iterator[ClickHouseServer]:
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(CLICKHOUSE_IMAGE).with_exposed_ports(8123)
    container.start()
    try:
        url = f"http://default:@{container.get_container_host_ip()}:{container.get_exposed_port(8123)}"
        deadline = time.monotonic() + 60
        while True:
            try:
                clickhouse_query(url, "SELECT 1", timeout=5)
                break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield ClickHouseServer(url=url, https_url=None, ca_file=None, proxy_url=None)
    finally:
        container.stop()


@pytest.fixture(scope="session")
def clickhouse_server() -> Iterator[ClickHouseServer]:
    """ClickHouse from CDC_TEST_CLICKHOUSE_URL (and _HTTPS_URL, _CA_FILE, _PROXY_URL), else a container."""
    url = os.environ.get("CDC_TEST_CLICKHOUSE_URL", "").strip()
    if url:
        ca = os.environ.get("CDC_TEST_CLICKHOUSE_CA_FILE", "").strip() or os.environ.get("CDC_TEST_POSTGRES_CA_FILE", "").strip()
        yield ClickHouseServer(
            url=url,
            https_url=os.environ.get("CDC_TEST_CLICKHOUSE_HTTPS_URL", "").strip() or None,
            ca_file=Path(ca) if ca else None,
            proxy_url=os.environ.get("CDC_TEST_CLICKHOUSE_PROXY_URL", "").strip() or None,
        )
    elif not _services_required() and _docker_available():
        yield from _start_clickhouse_container()
    else:
        _missing("CDC_TEST_CLICKHOUSE_URL", "ClickHouse (and no Docker engine for testcontainers)")


@pytest.fixture(scope="session")
def clickhouse_url(clickhouse_server: ClickHouseServer) -> str:
    """http://user:password@host:port of the ClickHouse server."""
    return clickhouse_server.url


@pytest.fixture(scope="session")
def clickhouse_https_url(clickhouse_server: ClickHouseServer) -> str:
    """https://user:password@host:port (certificate signed by `clickhouse_ca_file`)."""
    if clickhouse_server.https_url is None:
        return _missing("CDC_TEST_CLICKHOUSE_HTTPS_URL", "ClickHouse over HTTPS")
    return clickhouse_server.https_url


@pytest.fixture(scope="session")
def clickhouse_ca_file(clickhouse_server: ClickHouseServer) -> Path:
    if clickhouse_server.ca_file is None:
        return _missing("CDC_TEST_CLICKHOUSE_CA_FILE", "ClickHouse TLS")
    return clickhouse_server.ca_file


@pytest.fixture(scope="session")
def clickhouse_proxy_url(clickhouse_server: ClickHouseServer) -> str:
    """ClickHouse HTTP through the Toxiproxy proxy `clickhouse`."""
    if clickhouse_server.proxy_url is None:
        return _missing("CDC_TEST_CLICKHOUSE_PROXY_URL", "ClickHouse through Toxiproxy")
    return clickhouse_server.proxy_url


@pytest.fixture
def clickhouse_database(clickhouse_url: str) -> Iterator[str]:
    """A fresh ClickHouse database (on the server behind `clickhouse_url`), dropped after the test. Yields its name."""
    name = _unique("t")
    clickhouse_query(clickhouse_url, f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        clickhouse_query(clickhouse_url, f"DROP DATABASE IF EXISTS {name}")


# --------------------------------------------------------------------------------------------
# Toxiproxy
# --------------------------------------------------------------------------------------------
class Toxiproxy:
    """A small client for Toxiproxy's HTTP API (https://github.com/Shopify/toxiproxy#http-api).

    Proxies made by scripts/services.sh: ``postgres``, ``clickhouse`` (HTTP), ``cassandra``, ``cassandra8`` (CQL).
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: object | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"toxiproxy {method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from exc
        return json.loads(raw) if raw.strip() else None

    def proxies(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = self._call("GET", "/proxies")
        return result

    def proxy(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/proxies/{name}")
        return result

    def listen_port(self, name: str) -> int:
        return int(str(self.proxy(name)["listen"]).rsplit(":", 1)[1])

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disabled: the proxy closes its connections and refuses new ones."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def disable(self, name: str) -> None:
        self.set_enabled(name, False)

    def enable(self, name: str) -> None:
        self.set_enabled(name, True)

    def add_toxic(
        self,
        proxy: str,
        type: str,
        attributes: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        stream: str = "downstream",
        toxicity: float = 1.0,
    ) -> str:
        """Add a toxic (latency, bandwidth, slow_close, timeout, reset_peer, slicer, limit_data); returns its name."""
        toxic_name = name or f"{type}_{stream}_{uuid.uuid4().hex[:6]}"
        body = {"name": toxic_name, "type": type, "stream": stream, "toxicity": toxicity, "attributes": attributes or {}}
        self._call("POST", f"/proxies/{proxy}/toxics", body)
        return toxic_name

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", f"/proxies/{proxy}/toxics")
        return result

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset")


@pytest.fixture
def toxiproxy() -> Iterator[Toxiproxy]:
    """The Toxiproxy client; every proxy is re-enabled and every toxic removed after the test."""
    client = Toxiproxy(_env("CDC_TEST_TOXIPROXY_URL", "Toxiproxy"))
    try:
        client.proxies()
    except (OSError, RuntimeError) as exc:
        message = f"Toxiproxy at {client.url} does not answer: {exc}"
        if _services_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    client.reset()
    yield client
    client.reset()
