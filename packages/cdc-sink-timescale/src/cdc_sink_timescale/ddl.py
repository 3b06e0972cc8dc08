"""Hypertable DDL: the PostgreSQL sink's tables, turned into hypertables with the configured time
dimension, chunk interval, space partitioning and (where the server allows) policies.

Latest-state mode: ``N__state`` (unique on the Cassandra primary key, which holds the time column)
becomes the hypertable; the deletion bookkeeping and static tables stay plain tables (small, keyed
by the partition key, which need not hold the time column). History mode: the history table is a
hypertable on ``cdc_write_time`` keyed by (``cdc_write_time``, source position[, space column]).
"""

from __future__ import annotations

from cdc_sink_postgres.ddl import LatestStateDdl, quote_literal
from cdc_sink_postgres.history import HistoryTable
from cdc_sink_postgres.idents import qualify, quote_ident
from cdc_sink_postgres.layout import TableLayout, pg_name
from cdc_sink_timescale.config import TableSpec, TimescaleSinkConfig
from cdc_sink_timescale.edition import TimescaleEdition

__all__ = ["TIMEUUID_FUNCTION", "WRITE_TIME_COLUMN", "TimescaleDdl", "TimescaleHistoryTable", "hypertable_statements"]

TIMEUUID_FUNCTION = "cdc_timeuuid_time"
WRITE_TIME_COLUMN = "cdc_write_time"
_GREGORIAN_OFFSET = 122_192_928_000_000_000  # 100 ns intervals from 1582-10-15 to 1970-01-01


def timeuuid_function_sql(pg_schema: str) -> str:
    """``cdc_timeuuid_time(uuid) → timestamptz``: the time of a version-1 UUID (microseconds), the
    partitioning function of a timeuuid time column (also handy in ``time_bucket`` queries)."""
    return (
        f"CREATE OR REPLACE FUNCTION {qualify(pg_schema, TIMEUUID_FUNCTION)}(u uuid) RETURNS timestamptz "
        "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ "
        "SELECT timestamptz 'epoch' + ((('x' || lpad(substr(h, 16, 3) || substr(h, 10, 4) || substr(h, 1, 8), 16, '0'))"
        f"::bit(64)::bigint - {_GREGORIAN_OFFSET}) / 10) * interval '1 microsecond' FROM (SELECT u::text AS h) s $$"
    )


def hypertable_statements(
    table: str,
    time_column: str,
    spec: TableSpec,
    edition: TimescaleEdition | None,
    *,
    pg_schema: str,
    default_indexes: bool,
) -> list[str]:
    """Make the (empty or existing) ``table`` (quoted, qualified) a hypertable; idempotent."""
    rel = f"{quote_literal(table)}::regclass"
    col = quote_literal(time_column)
    if spec.integer_time:
        dimension = f"by_range({col}, {int(spec.integer_chunk_interval)}::bigint)"
    elif spec.time_type == "timeuuid":
        func = quote_literal(qualify(pg_schema, TIMEUUID_FUNCTION))
        dimension = f"by_range({col}, INTERVAL {quote_literal(spec.chunk_interval)}, {func}::regproc)"
    else:
        dimension = f"by_range({col}, INTERVAL {quote_literal(spec.chunk_interval)})"
    out = [
        f"SELECT create_hypertable({rel}, {dimension}, create_default_indexes => {'true' if default_indexes else 'false'}, "
        "if_not_exists => true)"
    ]
    if spec.space_column is not None and spec.space_partitions is not None:
        space = quote_literal(pg_name(spec.space_column))
        out.append(f"SELECT add_dimension({rel}, by_hash({space}, {int(spec.space_partitions)}), if_not_exists => true)")
    if edition is not None and spec.compression is not None and edition.compression and edition.policies:
        c = spec.compression
        options = ["timescaledb.compress"]
        if c.segment_by:
            options.append(f"timescaledb.compress_segmentby = {quote_literal(', '.join(quote_ident(pg_name(n)) for n in c.segment_by))}")
        if c.order_by:
            options.append(f"timescaledb.compress_orderby = {quote_literal(c.order_by)}")
        out.append(f"ALTER TABLE {table} SET ({', '.join(options)})")
        out.append(f"SELECT add_compression_policy({rel}, INTERVAL {quote_literal(c.after)}, if_not_exists => true)")
    if edition is not None and spec.retention is not None and edition.policies:
        out.append(f"SELECT add_retention_policy({rel}, INTERVAL {quote_literal(spec.retention.drop_after)}, if_not_exists => true)")
    return out


class TimescaleDdl(LatestStateDdl):
    """The PostgreSQL sink's latest-state DDL plus the hypertable of the state table.

    ``specs`` (keyspace, table) → :class:`TableSpec` is filled by the sink before it creates a
    table; ``edition`` after it detected the server's features."""

    def __init__(self, config: TimescaleSinkConfig) -> None:
        self.config = config
        self.specs: dict[tuple[str, str], TableSpec] = {}
        self.edition: TimescaleEdition | None = None

    def schema_statements(self, pg_schema: str) -> list[str]:
        return [*super().schema_statements(pg_schema), timeuuid_function_sql(pg_schema)]

    def state_table_statements(self, layout: TableLayout) -> list[str]:
        out = super().state_table_statements(layout)
        spec = self.specs[(layout.keyspace, layout.table)]
        assert spec.time_column is not None, "latest-state tables have a time column of the primary key"
        out += hypertable_statements(
            layout.q(layout.state_table),
            pg_name(spec.time_column),
            spec,
            self.edition,
            pg_schema=layout.pg_schema,
            default_indexes=True,  # an index on the time column: the primary key does not start with it
        )
        return out


class TimescaleHistoryTable(HistoryTable):
    """A history table as a hypertable on the write time; unique on (write time, position[, space])."""

    def __init__(self, layout: TableLayout, spec: TableSpec, edition: TimescaleEdition | None) -> None:
        super().__init__(layout)
        self.spec = spec
        self.edition = edition

    def primary_key(self) -> tuple[str, ...]:
        space = (pg_name(self.spec.space_column),) if self.spec.space_column is not None else ()
        return (WRITE_TIME_COLUMN, *super().primary_key(), *space)

    def create_statements(self) -> list[str]:
        return super().create_statements() + hypertable_statements(
            self.layout.q(self.layout.history_table),
            WRITE_TIME_COLUMN,
            self.spec,
            self.edition,
            pg_schema=self.layout.pg_schema,
            default_indexes=False,  # the primary key starts with the time column already
        )
