"""cdc sink for TimescaleDB: hypertables in history mode (on the write time) or latest-state mode
(on a time column of the primary key). Importing this package does not import asyncpg."""

from __future__ import annotations

from cdc_sink_timescale.__about__ import __version__
from cdc_sink_timescale.config import (
    WRITE_TIME,
    CompressionConfig,
    RetentionConfig,
    TableSpec,
    TimescaleSinkConfig,
    TimescaleTableConfig,
)

__all__ = [
    "WRITE_TIME",
    "CompressionConfig",
    "RetentionConfig",
    "TableSpec",
    "TimescaleSinkConfig",
    "TimescaleTableConfig",
    "__version__",
]
