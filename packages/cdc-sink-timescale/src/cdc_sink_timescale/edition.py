"""Which TimescaleDB features a server offers: the Apache-2 edition lacks the Timescale-License (TSL) ones.

Debian's source build (scripts/services.sh) and the
``-oss`` images are Apache-only: hypertables, ``time_bucket``, upserts work there; compression,
continuous aggregates, retention/compression policies and user jobs do not. Code that would use
them calls :func:`detect_timescale_edition` once per connection target and degrades or says why.

Detection reads ``timescaledb.license`` and then *probes* each feature inside a transaction that
is always rolled back (a throw-away schema with a one-column hypertable), so the answer reflects
what the server really does, not only what the setting claims. Probing needs the right to create
a schema in the database; without it the features are reported as unknown (``None``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

__all__ = ["TimescaleEdition", "detect_timescale_edition"]

# SQLSTATE 0A000 feature_not_supported: what TimescaleDB raises for TSL features under "apache".
_FEATURE_NOT_SUPPORTED = "0A000"


class _Connection(Protocol):  # the part of asyncpg.Connection used here
    async def fetchval(self, query: str, *args: object) -> object: ...
    async def execute(self, query: str, *args: object) -> str: ...
    def transaction(self) -> AbstractAsyncContextManager[object]: ...


@dataclass(frozen=True)
class TimescaleEdition:
    """What a TimescaleDB installation supports. ``None`` for a feature means it could not be probed."""

    installed: bool
    version: str | None = None
    license: str | None = None  # "apache" or "timescale" (timescaledb.license)
    compression: bool | None = None
    continuous_aggregates: bool | None = None
    policies: bool | None = None  # add_retention_policy / add_compression_policy (background jobs)
    reasons: dict[str, str] = field(default_factory=dict)  # feature -> why it is unavailable

    @property
    def apache_only(self) -> bool:
        """True when the TSL features are unavailable (Apache-2 edition or license 'apache')."""
        return self.installed and self.license == "apache"

    def unavailable(self) -> list[str]:
        """Names of the TSL features this server does not offer (or that could not be probed)."""
        features = {
            "compression": self.compression,
            "continuous_aggregates": self.continuous_aggregates,
            "policies": self.policies,
        }
        return [name for name, available in features.items() if not available]


async def _probe(conn: _Connection, statement: str) -> tuple[bool, str]:
    """Run one statement in a savepoint; (True, "") if it works, (False, why) if the license forbids it."""
    import asyncpg

    try:
        async with conn.transaction():  # nested: a savepoint, rolled back on error
            await conn.execute(statement)
    except asyncpg.PostgresError as exc:
        sqlstate = getattr(exc, "sqlstate", None)
        message = str(exc)
        if sqlstate == _FEATURE_NOT_SUPPORTED or "license" in message:
            return False, message
        raise
    return True, ""


async def detect_timescale_edition(conn: _Connection) -> TimescaleEdition:
    """Inspect the database ``conn`` is connected to. Leaves no trace (everything is rolled back)."""
    import asyncpg

    version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    if version is None:
        return TimescaleEdition(installed=False)
    license_ = await conn.fetchval("SELECT current_setting('timescaledb.license', true)")
    schema = f"_cdc_probe_{uuid.uuid4().hex[:12]}"
    results: dict[str, bool | None] = {"compression": None, "continuous_aggregates": None, "policies": None}
    reasons: dict[str, str] = {}

    class _Rollback(Exception):
        pass

    try:
        async with conn.transaction():
            try:
                await conn.execute(f"CREATE SCHEMA {schema}")
            except asyncpg.InsufficientPrivilegeError as exc:
                reasons = dict.fromkeys(results, f"not probed: {exc}")
                raise _Rollback from exc
            await conn.execute(f"CREATE TABLE {schema}.probe (ts timestamptz NOT NULL, v int)")
            await conn.execute(f"SELECT create_hypertable('{schema}.probe', by_range('ts'))")
            probes = {
                "compression": f"ALTER TABLE {schema}.probe SET (timescaledb.compress)",
                "continuous_aggregates": (
                    f"CREATE MATERIALIZED VIEW {schema}.cagg WITH (timescaledb.continuous) AS "
                    f"SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket, count(*) AS n FROM {schema}.probe GROUP BY 1 WITH NO DATA"
                ),
                "policies": f"SELECT add_retention_policy('{schema}.probe', INTERVAL '1 day')",
            }
            for feature, statement in probes.items():
                ok, why = await _probe(conn, statement)
                results[feature] = ok
                if not ok:
                    reasons[feature] = why
            raise _Rollback
    except _Rollback:
        pass
    return TimescaleEdition(
        installed=True,
        version=str(version),
        license=None if license_ is None else str(license_),
        compression=results["compression"],
        continuous_aggregates=results["continuous_aggregates"],
        policies=results["policies"],
        reasons=reasons,
    )
