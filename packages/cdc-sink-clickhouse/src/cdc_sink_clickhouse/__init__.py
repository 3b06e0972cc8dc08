"""cdc sink for ClickHouse. Importing this package never imports aiochclient, aiohttp or chdb."""

from __future__ import annotations

from cdc_sink_clickhouse.__about__ import __version__
from cdc_sink_clickhouse.config import ClickHouseSinkConfig

__all__ = ["ClickHouseSinkConfig", "__version__"]
