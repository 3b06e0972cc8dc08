"""Configuration of the ClickHouse sink (structured strictly by the core's converter)."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from cdc_core.secrets import Secret

__all__ = ["ClickHouseSinkConfig"]

MODES = ("latest", "history")


def _to_secret(value: Secret | str) -> Secret:
    return value if isinstance(value, Secret) else Secret(str(value))


def _check_modes(_inst: object, _attr: attrs.Attribute[Mapping[str, str]], value: Mapping[str, str]) -> None:
    for table, mode in value.items():
        if mode not in MODES:
            raise ValueError(f"modes.{table}: {mode!r} is not one of {', '.join(MODES)}")


_HOURLY: float | None = 3600.0


def _positive_or_none(_inst: object, attr: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attr.name}: must be > 0 or null, got {value!r}")


@attrs.frozen(kw_only=True)
class ClickHouseSinkConfig:
    """Where and how to write.

    ``url``: ``http(s)://host:port`` of a ClickHouse server (credentials may be embedded, the URL
    is a secret either way) or ``chdb:///absolute/path`` / ``chdb://relative/path`` for embedded
    ClickHouse (relative paths resolve against the config file's directory).
    ``table_name``: template with ``{keyspace}`` and ``{table}``.
    ``mode``: ``latest`` (default) or ``history``; ``modes`` overrides it per ``keyspace.table``.
    """

    url: Secret = attrs.field(default=Secret("chdb://clickhouse-data"), converter=_to_secret)
    user: Secret | None = None
    password: Secret | None = None
    database: str = "cdc"
    table_name: str = "{keyspace}_{table}"
    mode: str = attrs.field(default="latest", validator=attrs.validators.in_(MODES))
    modes: Mapping[str, str] = attrs.field(factory=dict, validator=_check_modes)
    ssl_ca_file: str | None = None
    ssl_verify: bool = True
    max_in_flight: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    request_timeout_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    connect_timeout_s: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    max_rows_per_insert: int = attrs.field(default=200_000, validator=attrs.validators.ge(1))
    encode_chunk_events: int = attrs.field(default=20_000, validator=attrs.validators.ge(1))
    """Events encoded per INSERT; the next chunk is encoded while this one's INSERT runs."""
    compact_interval_s: float | None = attrs.field(default=_HOURLY, validator=_positive_or_none)
    """Latest mode: every this many seconds (after a batch is committed) the log rows older than
    ``compact_margin_s`` are folded into the state tables, so reads stay bounded. None: never."""
    compact_margin_s: float = attrs.field(default=900.0, validator=attrs.validators.ge(0))
    """Only log rows inserted this long ago are compacted: far above ``request_timeout_s``, so no
    INSERT still in flight can have rows older than the cut-off (docs/sinks/clickhouse.md)."""
    partition_by: str | None = None
    """Optional PARTITION BY expression for history tables (e.g. ``toYYYYMM(toDateTime(intDiv(_ts, 1000000)))``)."""
    create_database: bool = True

    def mode_of(self, keyspace: str, table: str) -> str:
        return self.modes.get(f"{keyspace}.{table}", self.mode)
