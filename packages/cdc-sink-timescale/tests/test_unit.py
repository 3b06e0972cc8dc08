"""Configuration rules and DDL of the TimescaleDB sink (no server needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from ts_helpers import table

from cdc_core.config import structure_component
from cdc_core.errors import ConfigError
from cdc_core.secrets import Secret
from cdc_sink_postgres.config import PostgresSinkConfig
from cdc_sink_postgres.layout import TableLayout
from cdc_sink_timescale.config import WRITE_TIME, CompressionConfig, RetentionConfig, TimescaleSinkConfig, TimescaleTableConfig
from cdc_sink_timescale.ddl import TimescaleDdl, TimescaleHistoryTable
from cdc_sink_timescale.edition import TimescaleEdition

READINGS = table("readings", {"sensor": "text", "ts": "timestamp", "value": "double", "note": "text"}, pk=("sensor",), ck=("ts",))
ORDERS = table("orders", {"id": "uuid", "created": "timestamp", "total": "decimal"}, pk=("id",))
DAILY = table("daily", {"day": "date", "site": "int", "n": "bigint"}, pk=("day",), ck=("site",))
EVENTS = table("events", {"pk": "int", "tid": "timeuuid", "v": "text"}, pk=("pk",), ck=("tid",))
COUNTS = table("counts", {"pk": "int", "ms": "bigint", "v": "text"}, pk=("pk",), ck=("ms",))


def cfg(**kw: object) -> TimescaleSinkConfig:
    return TimescaleSinkConfig(dsn=Secret("postgresql://x@h/db"), **kw)  # type: ignore[arg-type]


# --- mode resolution ---------------------------------------------------------------------------


def test_auto_mode_is_latest_when_the_time_column_is_in_the_primary_key() -> None:
    c = cfg(time_column="ts")
    spec = c.spec_for(READINGS)
    assert (spec.mode, spec.time_column, spec.time_type) == ("latest", "ts", "timestamp")
    assert spec.chunk_interval == "7 days"


def test_auto_mode_is_history_on_the_write_time_otherwise() -> None:
    c = cfg(tables={"ks.orders": TimescaleTableConfig(time_column="created")})
    spec = c.spec_for(ORDERS)
    assert (spec.mode, spec.time_column, spec.time_type) == ("history", None, "write_time")
    assert c.validate([ORDERS]) == ["ks.orders is in history mode: its hypertable is on the write time (cdc_write_time), not on 'created'"]
    # the default: every table on the write time, in history mode
    assert cfg().spec_for(READINGS).mode == "history"


def test_sink_wide_time_column_missing_from_a_table_falls_back_to_the_write_time() -> None:
    c = cfg(time_column="ts")
    spec = c.spec_for(ORDERS)
    assert spec.mode == "history"
    assert any("has no column 'ts'" in n for n in spec.notes)


def test_latest_mode_without_the_time_column_in_the_key_is_refused_naming_table_and_key() -> None:
    c = cfg(tables={"ks.orders": TimescaleTableConfig(mode="latest", time_column="created")})
    with pytest.raises(ConfigError) as err:
        c.validate([ORDERS])
    message = str(err.value)
    assert message.startswith("tables.ks.orders.mode: latest-state mode is refused for table ks.orders")
    assert "'created' is not part of its primary key (id)" in message
    assert "unique index" in message


def test_latest_mode_on_the_write_time_is_refused_when_the_config_is_loaded() -> None:
    with pytest.raises(ConfigError, match=r"^tables\.ks\.orders\.mode: latest-state mode is refused for table ks\.orders"):
        cfg(tables={"ks.orders": TimescaleTableConfig(mode="latest")})
    with pytest.raises(ConfigError, match=r"^mode: latest-state mode is refused for every table"):
        cfg(mode="latest")


def test_config_errors_surface_through_the_core_loader() -> None:
    options = {"dsn": "postgresql://x@h/db", "mode": "latest", "tables": {"ks.t": {"chunk_interval": "1 day"}}}
    with pytest.raises(ConfigError, match="latest-state mode is refused"):
        structure_component(options, TimescaleSinkConfig, "sinks.ts")
    loaded = structure_component(
        {"dsn": "postgresql://x@h/db", "time_column": "ts", "tables": {"ks.readings": {"space_column": "sensor", "space_partitions": 4}}},
        TimescaleSinkConfig,
        "sinks.ts",
    )
    assert loaded.spec_for(READINGS).space_partitions == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_interval": "7 days; DROP TABLE x"}, "chunk_interval: '7 days; DROP TABLE x' is not an interval"),
        ({"integer_chunk_interval": 0}, "integer_chunk_interval: must be positive"),
        ({"space_column": "pk"}, "space_column and space_partitions go together"),
        ({"space_column": "pk", "space_partitions": 0}, "space_partitions: must be at least 1"),
        ({"retention": RetentionConfig(drop_after="soon")}, "retention.drop_after: 'soon' is not an interval"),
        ({"tables": {"orders": TimescaleTableConfig()}}, "tables.orders: table keys are 'keyspace.table'"),
        ({"mode": "newest"}, "mode must be one of auto, latest, history"),
    ],
)
def test_static_mistakes_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg(**kwargs)


def test_schema_dependent_mistakes_name_the_table() -> None:
    with pytest.raises(ConfigError, match=r"tables\.ks\.orders\.time_column: table ks\.orders has no column 'when'"):
        cfg(tables={"ks.orders": TimescaleTableConfig(time_column="when")}).spec_for(ORDERS)
    with pytest.raises(ConfigError, match=r"column 'note' of ks\.readings is text; a time column must be one of"):
        cfg(tables={"ks.readings": TimescaleTableConfig(time_column="note")}).spec_for(READINGS)
    with pytest.raises(ConfigError, match=r"space_column: 'ts' is not a partition-key column of ks\.readings"):
        cfg(time_column="ts", space_column="ts", space_partitions=2).spec_for(READINGS)
    with pytest.raises(ConfigError, match="integer_now"):
        cfg(time_column="ms", retention=RetentionConfig(drop_after="1 day")).spec_for(COUNTS)


def test_every_time_type_is_accepted() -> None:
    assert cfg(time_column="day").spec_for(DAILY).time_type == "date"
    assert cfg(time_column="tid").spec_for(EVENTS).time_type == "timeuuid"
    spec = cfg(time_column="ms", integer_chunk_interval=3_600_000).spec_for(COUNTS)
    assert (spec.mode, spec.integer_time, spec.integer_chunk_interval) == ("latest", True, 3_600_000)


def test_postgres_config_carries_connection_and_names() -> None:
    c = cfg(schema="m", table_name="{table}", pool_max_size=2, tables={"ks.readings": TimescaleTableConfig(table_name="r")})
    pg = c.postgres_config()
    assert (pg.schema, pg.pool_max_size, pg.destination_name("ks", "readings"), pg.destination_name("ks", "x")) == ("m", 2, "r", "x")
    assert pg.dsn.reveal() == "postgresql://x@h/db"
    tuned = cfg(
        overlapping_writes=3, early_merge=False, inline_max_values=0, server_settings={"work_mem": "256MB"}, tombstone_compaction_interval=0
    ).postgres_config()
    assert (tuned.overlapping_writes, tuned.early_merge, tuned.inline_max_values, tuned.tombstone_compaction_interval) == (3, False, 0, 0)
    assert c.postgres_config().tombstone_compaction_interval == PostgresSinkConfig(dsn=c.dsn).tombstone_compaction_interval > 0
    assert c.postgres_config().inline_max_values == PostgresSinkConfig(dsn=c.dsn).inline_max_values > 0
    assert tuned.session_settings() == {"work_mem": "256MB", "temp_buffers": "64MB"}


# --- DDL ---------------------------------------------------------------------------------------

APACHE = TimescaleEdition(
    installed=True, version="2.19.3", license="apache", compression=False, continuous_aggregates=False, policies=False
)
TSL = TimescaleEdition(installed=True, version="2.19.3", license="timescale", compression=True, continuous_aggregates=True, policies=True)


def _ddl(c: TimescaleSinkConfig, edition: TimescaleEdition) -> list[str]:
    ddl = TimescaleDdl(c)
    ddl.edition = edition
    spec = c.spec_for(READINGS)
    ddl.specs[("ks", "readings")] = spec
    layout = TableLayout.from_schema(READINGS, pg_schema="cdc", base="ks_readings")
    return ddl.state_table_statements(layout)


def test_latest_state_table_becomes_a_hypertable_on_the_time_column() -> None:
    c = cfg(time_column="ts", chunk_interval="1 day", space_column="sensor", space_partitions=4)
    stmts = _ddl(c, APACHE)
    assert stmts[1] == (
        "SELECT create_hypertable('\"cdc\".\"ks_readings__state\"'::regclass, by_range('ts', INTERVAL '1 day'), "
        "create_default_indexes => true, if_not_exists => true)"
    )
    assert stmts[2] == "SELECT add_dimension('\"cdc\".\"ks_readings__state\"'::regclass, by_hash('sensor', 4), if_not_exists => true)"
    assert len(stmts) == 3


def test_policies_only_where_the_server_has_them() -> None:
    c = cfg(
        time_column="ts",
        compression=CompressionConfig(after="7 days", segment_by=("sensor",)),
        retention=RetentionConfig(drop_after="90 days"),
    )
    assert not any("compress" in s or "retention" in s for s in _ddl(c, APACHE))
    tsl = _ddl(c, TSL)
    assert 'ALTER TABLE "cdc"."ks_readings__state" SET (timescaledb.compress, timescaledb.compress_segmentby = \'"sensor"\')' in tsl
    assert any(s.startswith("SELECT add_compression_policy(") and "INTERVAL '7 days'" in s for s in tsl)
    assert any(s.startswith("SELECT add_retention_policy(") and "INTERVAL '90 days'" in s for s in tsl)


def test_history_table_is_unique_on_write_time_and_position() -> None:
    c = cfg(space_column="id", space_partitions=2, chunk_interval="12 hours")
    spec = c.spec_for(ORDERS)
    layout = TableLayout.from_schema(ORDERS, pg_schema="cdc", base="ks_orders")
    h = TimescaleHistoryTable(layout, spec, APACHE)
    assert h.primary_key() == ("cdc_write_time", "cdc_node", "cdc_segment_id", "cdc_offset", "cdc_index", "id")
    create, hyper, space = h.create_statements()
    assert 'PRIMARY KEY ("cdc_write_time", "cdc_node", "cdc_segment_id", "cdc_offset", "cdc_index", "id")' in create
    assert "by_range('cdc_write_time', INTERVAL '12 hours')" in hyper
    assert "create_default_indexes => false" in hyper
    assert "by_hash('id', 2)" in space


def test_plugin_registers_without_importing_asyncpg() -> None:
    code = (
        "import sys; from cdc_sink_timescale import plugin; fs = plugin.cdc_register_sinks(); "
        "assert [f.name for f in fs] == ['timescale'], fs; assert 'asyncpg' not in sys.modules, 'asyncpg imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_entry_point_is_declared() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="cdc") if e.name == "timescale"]
    assert ep.value == "cdc_sink_timescale.plugin"
    assert WRITE_TIME == "@write_time"
