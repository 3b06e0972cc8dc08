"""Fixtures: a fresh PostgreSQL database per test.

Uses the root conftest's ``postgres_dsn`` fixture when the workspace provides one; otherwise
creates a database itself from ``CDC_TEST_POSTGRES_DSN`` (skipping when that is unset).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

# The tests import their builders from pg_sink_helpers next to this file.
sys.path.insert(0, str(Path(__file__).parent))


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture
async def pg_dsn(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    try:
        dsn = request.getfixturevalue("postgres_dsn")
    except pytest.FixtureLookupError:
        dsn = None
    if dsn is not None:
        yield str(dsn)
        return
    base = os.environ.get("CDC_TEST_POSTGRES_DSN")
    if not base:
        pytest.skip('CDC_TEST_POSTGRES_DSN is not set (eval "$(scripts/services.sh env)")')
    import asyncpg

    name = f"cdc_pg_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(base, name)
    finally:
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
