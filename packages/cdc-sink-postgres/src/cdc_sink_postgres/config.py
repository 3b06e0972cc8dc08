"""Configuration of the PostgreSQL sink (structured strictly by the core: unknown keys are errors).

Example (YAML)::

    sinks:
      warehouse_pg:
        type: postgres
        dsn: ${PG_DSN}                 # a Secret: never logged
        schema: cdc
        table_name: "{keyspace}_{table}"
        mode: latest                   # or: history
        pool_min_size: 1
        pool_max_size: 4
        overlapping_writes: 2          # batches written at once, committed in order
        early_merge: true              # (see docs/sinks/postgres.md, Overlapping writes)
        inline_max_values: 4096        # small merges as array parameters, not COPY (0: always COPY)
        server_settings: {work_mem: 64MB}   # session settings, over the defaults
        tombstone_compaction_interval: 60  # seconds; 0: never (docs/sinks/postgres.md, Tombstones)
        ssl: {mode: verify-full, ca_file: /etc/ssl/pg-ca.crt}
        tables:
          shop.orders:
            mode: history
          shop.users:
            table_name: users
            column_types: {created: timestamp}
"""

from __future__ import annotations

from typing import Any

import attrs

from cdc_core.secrets import Secret

__all__ = ["DEFAULT_INLINE_MAX_VALUES", "DEFAULT_SESSION_SETTINGS", "MODES", "SSL_MODES", "PostgresSinkConfig", "SslConfig", "TableConfig"]

MODES = ("latest", "history")
# The merge sorts a batch's staged rows (≈ 250 bytes each at 10 columns): at PostgreSQL's default
# work_mem of 4MB a 20,000-row batch spills to disk (measured: 128 → 103 ms per merge); the TEMP
# staging tables live in temp_buffers (default 8MB), which a 100,000-row batch outgrows.
DEFAULT_SESSION_SETTINGS = {"work_mem": "64MB", "temp_buffers": "64MB"}
# A merge step of at most this many values (records × staged columns) is sent inline: one array
# parameter per column, read with ``unnest``, instead of COPY into a staging table. That saves the
# staging table's TRUNCATE, the COPY's two round trips and the server's wait for its data (≈ 3
# round trips, 1–2 ms per batch); asyncpg's array encoding costs more per value than the
# accelerator's COPY encoding (≈ 0.2–1 µs against ≈ 0.05–0.1), so large steps still go through
# COPY. Measured with 1,000-row batches (docs/benchmarks.md).
DEFAULT_INLINE_MAX_VALUES = 4096
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _check_mode(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and value not in MODES:
        raise ValueError(f"{attribute.name} must be one of {', '.join(MODES)}, not {value!r}")


def _check_ssl_mode(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and value not in SSL_MODES:
        raise ValueError(f"{attribute.name} must be one of {', '.join(SSL_MODES)}, not {value!r}")


@attrs.frozen(kw_only=True)
class SslConfig:
    """TLS to the server, as libpq's ``sslmode``; ``None`` leaves it to the DSN (``?sslmode=``)."""

    mode: str | None = attrs.field(default=None, validator=_check_ssl_mode)
    ca_file: str | None = None  # PEM bundle to verify the server with (verify-ca / verify-full)
    cert_file: str | None = None  # client certificate (PEM), for certificate authentication
    key_file: str | None = None
    key_password: Secret | None = None


@attrs.frozen(kw_only=True)
class TableConfig:
    """Per replicated table (key ``keyspace.table``) overrides."""

    mode: str | None = attrs.field(default=None, validator=_check_mode)
    table_name: str | None = None  # the destination name (a template like the sink's)
    column_types: dict[str, str] = attrs.field(factory=dict)  # column → PostgreSQL type (cast from the default mapping)


@attrs.frozen(kw_only=True)
class PostgresSinkConfig:
    """The ``postgres`` sink. ``table_name`` may use ``{keyspace}`` and ``{table}``."""

    dsn: Secret
    schema: str = "public"
    table_name: str = "{keyspace}_{table}"
    mode: str = attrs.field(default="latest", validator=_check_mode)
    tables: dict[str, TableConfig] = attrs.field(factory=dict)
    offsets_table: str = "cdc_offsets"
    pool_min_size: int = 1
    pool_max_size: int = 4
    connect_timeout: float = 10.0
    command_timeout: float = 120.0  # seconds for one statement; exceeding it is a transient error
    statement_cache_size: int = 256
    ssl: SslConfig = attrs.field(factory=SslConfig)
    create_tables: bool = True  # False: only verify that the tables exist and fail otherwise
    application_name: str = "cdc"
    # Batches being written at once (each on its own connection, offsets moved in order); 1: one at a time.
    overlapping_writes: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    # An overlapping write of latest-state tables only commits its rows before its turn, its
    # offsets after it (else it merges in its turn).
    early_merge: bool = True
    # Merge steps of at most this many values go inline, not through COPY (0: always COPY).
    inline_max_values: int = attrs.field(default=DEFAULT_INLINE_MAX_VALUES, validator=attrs.validators.ge(0))
    # Session settings of every connection, over DEFAULT_SESSION_SETTINGS.
    server_settings: dict[str, str] = attrs.field(factory=dict)
    # Seconds between removals of the tombstone rows a newer one of the same key makes redundant
    # (of the keys deleted since the last one; 0: never).
    tombstone_compaction_interval: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))

    def session_settings(self) -> dict[str, str]:
        return {**DEFAULT_SESSION_SETTINGS, **self.server_settings}

    def table_config(self, keyspace: str, table: str) -> TableConfig:
        return self.tables.get(f"{keyspace}.{table}", _DEFAULT_TABLE)

    def mode_for(self, keyspace: str, table: str) -> str:
        return self.table_config(keyspace, table).mode or self.mode

    def destination_name(self, keyspace: str, table: str) -> str:
        template = self.table_config(keyspace, table).table_name or self.table_name
        return template.format(keyspace=keyspace, table=table)


_DEFAULT_TABLE = TableConfig()
