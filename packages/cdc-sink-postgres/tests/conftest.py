"""Fixtures: a fresh PostgreSQL database per test, from the workspace's root conftest.

The root fixture ``postgres_dsn`` creates and drops the database, fails the run in CI when the
server is missing, and otherwise skips with the reason; this package only renames it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The tests import their builders from pg_sink_helpers next to this file.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def pg_dsn(postgres_dsn: str) -> str:
    return str(postgres_dsn)
