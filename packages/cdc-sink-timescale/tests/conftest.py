"""The tests use the root conftest's ``timescale_dsn`` (a fresh database with the timescaledb
extension per test) and import their builders from ts_helpers next to this file."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
