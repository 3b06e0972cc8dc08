"""Registers the ``postgres`` sink (entry point group ``cdc``). Does not import asyncpg."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cdc_core
from cdc_core.factories import ComponentContext, SinkFactory
from cdc_core.sinks import Sink
from cdc_sink_postgres.config import PostgresSinkConfig


def _create(config: PostgresSinkConfig, context: ComponentContext) -> Sink:
    from cdc_sink_postgres.sink import PostgresSink

    return PostgresSink(context.instance_name, config, context)


@cdc_core.hookimpl
def cdc_register_sinks() -> Sequence[SinkFactory[Any]]:
    return [
        SinkFactory(
            name="postgres",
            config_type=PostgresSinkConfig,
            create=_create,
            description="PostgreSQL: latest-state tables converging to Cassandra's state, or append-only history",
        )
    ]
