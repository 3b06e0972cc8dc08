"""Where the accelerator is built (``make venv``, CI) it must be importable and used: no silent fallback."""

from __future__ import annotations

import importlib
import os

import pytest

from cdc_sink_postgres.native import native_module


def _required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("CDC_REQUIRE_SERVICES") == "1"


def test_native_module_is_importable_and_used() -> None:
    try:
        module = importlib.import_module("cdc_sink_postgres_native")
    except ImportError as exc:
        if _required():
            pytest.fail(
                f"cdc_sink_postgres_native is not importable ({exc}); CI or CDC_REQUIRE_SERVICES=1: `make venv` must build it",
                pytrace=False,
            )
        pytest.skip(f"cdc_sink_postgres_native is not installed ({exc}): optional outside CI, where this test fails instead")
    if os.environ.get("CDC_SINK_POSTGRES_NATIVE", "").strip().lower() in ("0", "false", "no", "off"):
        assert native_module() is None
    else:
        assert native_module() is module
