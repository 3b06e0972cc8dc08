"""cdc sink for PostgreSQL: latest-state tables with views, or append-only history tables.

Importing this package does not import asyncpg; the sink imports it when it starts.
"""

from __future__ import annotations

from cdc_sink_postgres.__about__ import __version__
from cdc_sink_postgres.config import PostgresSinkConfig, SslConfig, TableConfig

__all__ = ["PostgresSinkConfig", "SslConfig", "TableConfig", "__version__"]
