"""Configuration of the TimescaleDB sink, and the per-table decision: which mode, which time column.

Example (YAML)::

    sinks:
      metrics_ts:
        type: timescale
        dsn: ${TS_DSN}
        schema: cdc
        time_column: ts              # default for every table; tables without it use the write time
        chunk_interval: 7 days
        tables:
          iot.readings:              # PRIMARY KEY ((sensor), ts): latest state, hypertable on ts
            chunk_interval: 1 day
            space_column: sensor
            space_partitions: 4
            retention: {drop_after: 90 days}
          shop.orders:               # ts is a regular column here: history on the write time
            mode: history

Rules (TimescaleDB requires every unique index of a hypertable to contain its time column):

* ``mode: latest`` is allowed only when the time column is part of the Cassandra primary key (the
  latest-state table is unique on that key). Anything else is a :class:`~cdc_core.errors.ConfigError`
  that names the table and the key.
* ``mode: history`` keys every change event by (write time, source position) in a hypertable on
  the event's write time.
* ``mode: auto`` (the default) picks latest when it is allowed and history otherwise.

Static mistakes are refused when the configuration is loaded (``__attrs_post_init__``, so ``cdc
validate`` reports them); the schema-dependent ones by :meth:`TimescaleSinkConfig.validate` (given
the schemas) and, at the latest, when the sink first sees the table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

from cdc_core.errors import ConfigError
from cdc_core.schema import ColumnKind, TableSchema
from cdc_core.secrets import Secret
from cdc_sink_postgres.config import DEFAULT_INLINE_MAX_VALUES, PostgresSinkConfig, SslConfig, TableConfig

__all__ = [
    "INTEGER_TIME_TYPES",
    "MODES",
    "TIME_TYPES",
    "WRITE_TIME",
    "CompressionConfig",
    "RetentionConfig",
    "TableSpec",
    "TimescaleSinkConfig",
    "TimescaleTableConfig",
    "check_interval",
]

WRITE_TIME = "@write_time"
"""``time_column`` value meaning "the event's write time" (never a Cassandra column name)."""

MODES = ("auto", "latest", "history")
INTEGER_TIME_TYPES = ("int", "bigint")
TIME_TYPES = ("timestamp", "date", "timeuuid", *INTEGER_TIME_TYPES)

_UNITS = r"(microseconds?|milliseconds?|seconds?|secs?|minutes?|mins?|hours?|days?|weeks?|months?|years?)"
_INTERVAL = re.compile(rf"^\s*\d+\s*{_UNITS}(\s+\d+\s*{_UNITS})*\s*$", re.IGNORECASE)


def check_interval(text: str, where: str) -> str:
    """``text`` if it is a plain interval like ``7 days`` or ``1 hour 30 minutes`` (it goes into DDL)."""
    if not _INTERVAL.match(text):
        raise ConfigError(f"{where}: {text!r} is not an interval like '7 days' or '12 hours'")
    return text.strip()


def _check_mode(instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and value not in MODES:
        raise ConfigError(f"{attribute.name} must be one of {', '.join(MODES)}, not {value!r}")


@attrs.frozen(kw_only=True)
class CompressionConfig:
    """Native compression of chunks older than ``after`` (Timescale License builds only)."""

    after: str
    segment_by: tuple[str, ...] = ()  # Cassandra column names (default: none)
    order_by: str | None = None  # e.g. "ts DESC" (default: TimescaleDB's, the time column DESC)


@attrs.frozen(kw_only=True)
class RetentionConfig:
    """Drop chunks whose time range ends more than ``drop_after`` ago (Timescale License builds only)."""

    drop_after: str


@attrs.frozen(kw_only=True)
class TimescaleTableConfig:
    """Per replicated table (key ``keyspace.table``); unset fields inherit the sink's."""

    mode: str | None = attrs.field(default=None, validator=_check_mode)
    table_name: str | None = None
    column_types: dict[str, str] = attrs.field(factory=dict)
    time_column: str | None = None
    chunk_interval: str | None = None
    integer_chunk_interval: int | None = None
    space_column: str | None = None
    space_partitions: int | None = None
    compression: CompressionConfig | None = None
    retention: RetentionConfig | None = None


@attrs.frozen(kw_only=True)
class TableSpec:
    """What the sink does with one table (resolved against its schema)."""

    keyspace: str
    table: str
    mode: str  # "latest" or "history"
    time_column: str | None  # the Cassandra column of the time dimension; None: the write time
    time_type: str  # a TIME_TYPES member, or "write_time"
    chunk_interval: str
    integer_chunk_interval: int
    space_column: str | None
    space_partitions: int | None
    compression: CompressionConfig | None
    retention: RetentionConfig | None
    notes: tuple[str, ...] = ()  # explanations worth a validation warning

    @property
    def integer_time(self) -> bool:
        return self.time_type in INTEGER_TIME_TYPES

    @property
    def wants_policies(self) -> bool:
        return self.compression is not None or self.retention is not None


@attrs.frozen(kw_only=True)
class TimescaleSinkConfig:
    """The ``timescale`` sink: the ``postgres`` sink's connection settings plus the time dimension."""

    dsn: Secret
    schema: str = "public"
    table_name: str = "{keyspace}_{table}"
    mode: str = attrs.field(default="auto", validator=_check_mode)
    tables: dict[str, TimescaleTableConfig] = attrs.field(factory=dict)
    time_column: str = WRITE_TIME
    chunk_interval: str = "7 days"
    integer_chunk_interval: int = 86_400_000  # in the column's unit: one day of epoch milliseconds
    space_column: str | None = None
    space_partitions: int | None = None
    compression: CompressionConfig | None = None
    retention: RetentionConfig | None = None
    offsets_table: str = "cdc_offsets"
    pool_min_size: int = 1
    pool_max_size: int = 4
    connect_timeout: float = 10.0
    command_timeout: float = 120.0
    statement_cache_size: int = 256
    ssl: SslConfig = attrs.field(factory=SslConfig)
    create_tables: bool = True
    application_name: str = "cdc"
    overlapping_writes: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    early_merge: bool = True
    inline_max_values: int = attrs.field(default=DEFAULT_INLINE_MAX_VALUES, validator=attrs.validators.ge(0))
    server_settings: dict[str, str] = attrs.field(factory=dict)
    tombstone_compaction_interval: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))

    def __attrs_post_init__(self) -> None:
        self._check_static("", self.mode, self.time_column, self.chunk_interval, self.integer_chunk_interval)
        self._check_space("", self.space_column, self.space_partitions)
        self._check_policies("", self.compression, self.retention)
        for key, t in self.tables.items():
            where = f"tables.{key}"
            if key.count(".") != 1 or not all(key.split(".")):
                raise ConfigError(f"{where}: table keys are 'keyspace.table'")
            self._check_static(
                f"{where}.",
                t.mode or self.mode,
                t.time_column or self.time_column,
                t.chunk_interval or self.chunk_interval,
                t.integer_chunk_interval or self.integer_chunk_interval,
                table=key,
                mode_is_own=t.mode is not None,
            )
            if t.space_column is not None or t.space_partitions is not None:
                self._check_space(where + ".", t.space_column, t.space_partitions)
            self._check_policies(where + ".", t.compression, t.retention)

    @staticmethod
    def _check_static(
        prefix: str, mode: str, time_column: str, chunk: str, int_chunk: int, *, table: str | None = None, mode_is_own: bool = True
    ) -> None:
        check_interval(chunk, f"{prefix}chunk_interval")
        if int_chunk <= 0:
            raise ConfigError(f"{prefix}integer_chunk_interval: must be positive, not {int_chunk}")
        if mode == "latest" and time_column == WRITE_TIME:
            what = f"table {table}" if table else "every table"
            raise ConfigError(
                f"{prefix}mode: latest-state mode is refused for {what}: its time column is the write time, which is never "
                "part of a Cassandra primary key, and TimescaleDB requires every unique index of a hypertable (the "
                "latest-state table is unique on the primary key) to include the time column. Set time_column to a "
                "timestamp/date/timeuuid/int/bigint column of the primary key, or use mode: history (or auto)"
                + ("" if mode_is_own else " (the mode is inherited from the sink)")
            )

    @staticmethod
    def _check_space(prefix: str, column: str | None, partitions: int | None) -> None:
        if (column is None) != (partitions is None):
            raise ConfigError(f"{prefix}space_column and {prefix}space_partitions go together")
        if partitions is not None and partitions < 1:
            raise ConfigError(f"{prefix}space_partitions: must be at least 1, not {partitions}")

    @staticmethod
    def _check_policies(prefix: str, compression: CompressionConfig | None, retention: RetentionConfig | None) -> None:
        if compression is not None:
            check_interval(compression.after, f"{prefix}compression.after")
        if retention is not None:
            check_interval(retention.drop_after, f"{prefix}retention.drop_after")

    # --- per table --------------------------------------------------------------------------------

    def table_config(self, keyspace: str, table: str) -> TimescaleTableConfig:
        return self.tables.get(f"{keyspace}.{table}", _DEFAULT_TABLE)

    def spec_for(self, schema: TableSchema) -> TableSpec:
        """Resolve the table's mode and time dimension; :class:`ConfigError` (naming the table and
        the key) when the configuration cannot work for this schema."""
        key = f"{schema.keyspace}.{schema.table}"
        t = self.table_config(schema.keyspace, schema.table)
        own = key in self.tables
        where = f"tables.{key}." if own and t.time_column is not None else ""
        notes: list[str] = []
        column = t.time_column or self.time_column
        if column != WRITE_TIME and column not in schema.by_name:
            if t.time_column is not None:
                raise ConfigError(f"{where}time_column: table {key} has no column {column!r}")
            notes.append(f"{key} has no column {column!r} (the sink's time_column): the write time is its time dimension")
            column = WRITE_TIME
        time_type = "write_time"
        in_key = False
        if column != WRITE_TIME:
            col = schema.column(column)
            time_type = col.cql_type.name
            if time_type not in TIME_TYPES:
                raise ConfigError(
                    f"{where}time_column: column {column!r} of {key} is {col.type}; a time column must be one of {', '.join(TIME_TYPES)}"
                )
            in_key = col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING)
        mode = t.mode or self.mode
        mode_key = f"tables.{key}.mode" if t.mode is not None else "mode"
        pk = ", ".join(c.name for c in schema.primary_key)
        if mode == "latest" and not in_key:
            what = "the write time" if column == WRITE_TIME else f"its time column {column!r}"
            raise ConfigError(
                f"{mode_key}: latest-state mode is refused for table {key}: {what} is not part of its primary key ({pk}). "
                "TimescaleDB requires every unique index of a hypertable to include the time column, and the latest-state "
                "table is unique on the Cassandra primary key. Use mode: history (or auto) for this table"
            )
        if mode == "auto":
            mode = "latest" if in_key else "history"
        if mode == "history" and column != WRITE_TIME:
            notes.append(f"{key} is in history mode: its hypertable is on the write time (cdc_write_time), not on {column!r}")
        space_column = t.space_column if t.space_column is not None else self.space_column
        space_partitions = t.space_partitions if t.space_column is not None else self.space_partitions
        if space_column is not None:
            space_key = f"tables.{key}.space_column" if t.space_column is not None else "space_column"
            sc = schema.by_name.get(space_column)
            if sc is None or sc.kind is not ColumnKind.PARTITION_KEY:
                raise ConfigError(
                    f"{space_key}: {space_column!r} is not a partition-key column of {key} (partition key: "
                    f"{', '.join(c.name for c in schema.partition_key)}); space partitioning needs a column every row and "
                    "every deletion carries, and that every unique index can include"
                )
        compression = t.compression if t.compression is not None else self.compression
        retention = t.retention if t.retention is not None else self.retention
        integer = mode == "latest" and time_type in INTEGER_TIME_TYPES
        if integer and (compression is not None or retention is not None):
            raise ConfigError(
                f"tables.{key}: compression/retention policies on an integer time column ({column!r}) need an integer_now "
                "function, which this sink does not create; remove them for this table"
            )
        if mode == "history":
            time_column: str | None = None
            time_type = "write_time"
        else:
            time_column = column
        return TableSpec(
            keyspace=schema.keyspace,
            table=schema.table,
            mode=mode,
            time_column=time_column,
            time_type=time_type,
            chunk_interval=t.chunk_interval or self.chunk_interval,
            integer_chunk_interval=t.integer_chunk_interval or self.integer_chunk_interval,
            space_column=space_column,
            space_partitions=space_partitions,
            compression=compression,
            retention=retention,
            notes=tuple(notes),
        )

    def validate(self, schemas: Iterable[TableSchema] = ()) -> list[str]:
        """Check the configuration against ``schemas`` (e.g. from the source's schema); raises
        :class:`ConfigError` for the first table that cannot work, returns warnings otherwise."""
        warnings: list[str] = []
        for schema in schemas:
            warnings.extend(self.spec_for(schema).notes)
        return warnings

    def postgres_config(self) -> PostgresSinkConfig:
        """The settings the underlying PostgreSQL sink runs with (modes are decided per schema)."""
        return PostgresSinkConfig(
            dsn=self.dsn,
            schema=self.schema,
            table_name=self.table_name,
            mode="latest",
            tables={
                key: TableConfig(mode=None, table_name=t.table_name, column_types=dict(t.column_types)) for key, t in self.tables.items()
            },
            offsets_table=self.offsets_table,
            pool_min_size=self.pool_min_size,
            pool_max_size=self.pool_max_size,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            statement_cache_size=self.statement_cache_size,
            ssl=self.ssl,
            create_tables=self.create_tables,
            application_name=self.application_name,
            overlapping_writes=self.overlapping_writes,
            early_merge=self.early_merge,
            inline_max_values=self.inline_max_values,
            server_settings=dict(self.server_settings),
            tombstone_compaction_interval=self.tombstone_compaction_interval,
        )


_DEFAULT_TABLE = TimescaleTableConfig()
