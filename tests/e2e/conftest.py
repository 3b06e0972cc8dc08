"""Fixtures of the end-to-end tests (the servers' fixtures are in the root conftest.py).

The e2e tests share ONE keyspace per Cassandra node for the whole session, each test on a table of
its own (``NodeUnderTest.table``), and drop it at the end of the session. A dropped keyspace or
table makes the node close its commitlog segment, and each closed segment with CDC data holds one
of the few slots of the test nodes' small ``cdc_total_space`` until it is cleaned up: a keyspace
per test would use seven slots per run instead of two.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The tests import their helpers from e2e_support next to this file.
sys.path.insert(0, str(Path(__file__).parent))

from e2e_support import NodeUnderTest


def _session_keyspace(session: Any) -> Iterator[str]:
    name = f"e2e_{uuid.uuid4().hex[:12]}"
    session.execute(f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}", timeout=60)
    try:
        yield name
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)


@pytest.fixture(scope="session")
def e2e_keyspace7(cassandra_session: Any) -> Iterator[str]:
    """The e2e tests' keyspace on the v7 node (one per session)."""
    yield from _session_keyspace(cassandra_session)


@pytest.fixture(scope="session")
def e2e_keyspace8(cassandra8_session: Any) -> Iterator[str]:
    """The e2e tests' keyspace on the v8 node (one per session)."""
    yield from _session_keyspace(cassandra8_session)


def _node(request: pytest.FixtureRequest, version: int) -> NodeUnderTest:
    suffix = "" if version == 7 else "8"
    node = request.getfixturevalue(f"cassandra{suffix}_node")
    return NodeUnderTest(
        label=f"v{version}",
        session=request.getfixturevalue(f"cassandra{suffix}_session"),
        keyspace=request.getfixturevalue(f"e2e_keyspace{version}"),
        table=f"t_{uuid.uuid4().hex[:12]}",
        cdc_raw=request.getfixturevalue(f"cdc_raw_dir{suffix}"),
        hosts=tuple(node.hosts),
        port=int(node.port),
        commitlog_version=int(node.commitlog_version),
    )


@pytest.fixture(params=[7, 8], ids=["commitlog-v7", "commitlog-v8"])
def any_node(request: pytest.FixtureRequest) -> NodeUnderTest:
    """Each Cassandra test node in turn (commitlog v7, then v8), with a table name of this test's own."""
    return _node(request, int(request.param))


@pytest.fixture
def node7(request: pytest.FixtureRequest) -> NodeUnderTest:
    """The commitlog v7 node, with a table name of this test's own."""
    return _node(request, 7)


@pytest.fixture
def node8(request: pytest.FixtureRequest) -> NodeUnderTest:
    """The commitlog v8 node, with a table name of this test's own."""
    return _node(request, 8)
