"""cdc: change data capture from Apache Cassandra."""

from __future__ import annotations

import pluggy

from cdc_core.__about__ import __version__

hookimpl = pluggy.HookimplMarker("cdc")
"""Marker for plugin hook implementations: ``@cdc_core.hookimpl``."""

__all__ = ["__version__", "hookimpl"]
