"""Registers the ClickHouse sink. Importing this module imports no client library."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdc_core import hookimpl
from cdc_core.factories import ComponentContext, SinkFactory
from cdc_core.sinks import Sink
from cdc_sink_clickhouse.config import ClickHouseSinkConfig


def create(config: ClickHouseSinkConfig, context: ComponentContext) -> Sink:
    from cdc_sink_clickhouse.sink import ClickHouseSink

    return ClickHouseSink(config, context)


@hookimpl
def cdc_register_sinks() -> Sequence[SinkFactory[Any]]:
    return [
        SinkFactory(
            name="clickhouse",
            config_type=ClickHouseSinkConfig,
            create=create,
            description="ClickHouse server (HTTP/HTTPS) or embedded chdb: latest-state views or history tables, exactly-once",
        )
    ]
