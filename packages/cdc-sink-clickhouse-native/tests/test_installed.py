"""Where the compiled encoder is built (``make venv``, CI) it must be importable and used: no silent fallback.

It lives here, not in cdc-sink-clickhouse's tests, because the isolation check installs that
package alone — without the accelerator, on purpose — and runs its tests with CI set.
"""

from __future__ import annotations

import os

from cdc_sink_clickhouse.layout import NATIVE


def _required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("CDC_REQUIRE_SERVICES") == "1"


def test_native_encoder_is_installed_where_required() -> None:
    if _required():
        assert NATIVE, "cdc_sink_clickhouse_native is not importable: install packages/cdc-sink-clickhouse-native (make venv)"
    else:
        import importlib.util

        assert (importlib.util.find_spec("cdc_sink_clickhouse_native") is not None) == bool(NATIVE)
