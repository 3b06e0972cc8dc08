"""Registers the ``timescale`` sink (entry point group ``cdc``). Does not import asyncpg."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cdc_core
from cdc_core.factories import ComponentContext, SinkFactory
from cdc_core.sinks import Sink
from cdc_sink_timescale.config import TimescaleSinkConfig


def _create(config: TimescaleSinkConfig, context: ComponentContext) -> Sink:
    from cdc_sink_timescale.sink import TimescaleSink

    return TimescaleSink(context.instance_name, config, context)


@cdc_core.hookimpl
def cdc_register_sinks() -> Sequence[SinkFactory[Any]]:
    return [
        SinkFactory(
            name="timescale",
            config_type=TimescaleSinkConfig,
            create=_create,
            description="TimescaleDB: hypertables, history on the write time or latest state on a time-keyed primary key",
        )
    ]
