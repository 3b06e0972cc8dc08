"""Print what the quickstart replicated: the latest state of each table, read from the embedded
ClickHouse through the views the sink documents (docs/sinks/clickhouse.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from chdb import session as chdb_session

data = Path(__file__).resolve().parents[2] / ".quickstart" / "clickhouse"
s = chdb_session.Session(str(data))
views = s.query("SELECT name FROM system.tables WHERE database = 'quickstart' AND engine = 'View' ORDER BY name", "CSV")
for name in str(views).split():
    name = name.strip('"')
    result = s.query(f"SELECT * FROM quickstart.`{name}` LIMIT 3", "Vertical").bytes().decode("utf-8", "replace")
    sys.stdout.write(f"\n== quickstart.{name} (first rows; masked columns show HMAC values)\n{result}")
