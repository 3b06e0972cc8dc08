"""Fixtures of the end-to-end tests (the servers' fixtures are in the root conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The tests import their helpers from e2e_support next to this file.
sys.path.insert(0, str(Path(__file__).parent))

from e2e_support import NodeUnderTest


def _node(request: pytest.FixtureRequest, version: int) -> NodeUnderTest:
    suffix = "" if version == 7 else "8"
    node = request.getfixturevalue(f"cassandra{suffix}_node")
    return NodeUnderTest(
        label=f"v{version}",
        session=request.getfixturevalue(f"cassandra{suffix}_session"),
        keyspace=request.getfixturevalue(f"cassandra{suffix}_keyspace"),
        cdc_raw=request.getfixturevalue(f"cdc_raw_dir{suffix}"),
        hosts=tuple(node.hosts),
        port=int(node.port),
        commitlog_version=int(node.commitlog_version),
    )


@pytest.fixture(params=[7, 8], ids=["commitlog-v7", "commitlog-v8"])
def any_node(request: pytest.FixtureRequest) -> NodeUnderTest:
    """Each Cassandra test node in turn (commitlog v7, then v8), with a fresh keyspace on it."""
    return _node(request, int(request.param))


@pytest.fixture
def node7(request: pytest.FixtureRequest) -> NodeUnderTest:
    """The commitlog v7 node with a fresh keyspace."""
    return _node(request, 7)


@pytest.fixture
def node8(request: pytest.FixtureRequest) -> NodeUnderTest:
    """The commitlog v8 node with a fresh keyspace."""
    return _node(request, 8)
