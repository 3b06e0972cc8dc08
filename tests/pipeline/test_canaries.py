"""Masking happens before anything else sees a value: with the masking transform on, canary PII
planted in events appears zero times in sink data, DLQ files, logs (debug level), span attributes
and the metrics exposition — also when a sink fails and everything goes to the DLQ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from core_helpers import DESTINATIONS, TEST_PLUGIN, write_events
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY, generate_latest

from cdc_core.pipeline import Pipeline
from cdc_core.plugins import PluginRegistry
from cdc_masking.testing import CANARIES, assert_no_canaries, canary_masking_config, find_canaries, make_canary_events

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)  # once per process: OpenTelemetry refuses a second one
    return


@pytest.fixture(autouse=True)
def _fresh_destinations() -> None:
    DESTINATIONS.clear()  # the controlled sinks keep their data and offsets per name


def _config(tmp_path: Path, *, masking: bool) -> dict[str, Any]:
    return {
        "source": {"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
        "transforms": [{"type": "masking", **canary_masking_config()}] if masking else [],
        "sinks": {
            "file": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
            "broken": {"type": "controlled", "permanent": True},
            "picky": {"type": "controlled", "reject_ids": []},
        },
        "offsets": {"type": "sqlite", "path": str(tmp_path / "offsets.sqlite")},
        "dlq": {"directory": str(tmp_path / "dlq")},
        "follow": False,
    }


async def _run(tmp_path: Path, *, masking: bool) -> str:
    write_events(tmp_path / "events.jsonl", make_canary_events())
    registry = PluginRegistry(autoload=True, plugins=[TEST_PLUGIN])
    _EXPORTER.clear()
    with structlog.testing.capture_logs() as logs:
        p = Pipeline.from_config(_config(tmp_path, masking=masking), registry=registry)
        structlog.get_logger("test").debug("pipeline built", config=str(p.config))
        summary = await p.run()
        await p.close()
    assert summary.lanes["broken"].dlq_events == len(make_canary_events())
    outputs = [
        (tmp_path / "out.jsonl").read_text(),
        *(f.read_text() for f in p.dlq.files()),
        repr(logs),
        repr([(s.name, dict(s.attributes or {})) for s in _EXPORTER.get_finished_spans()]),
        generate_latest(p.metrics.registry).decode(),
        generate_latest(REGISTRY).decode(),
    ]
    expected_spans = {"cdc.read_event", "cdc.write_jsonl"} | ({"cdc.mask_event"} if masking else set())
    assert {s.name for s in _EXPORTER.get_finished_spans()} >= expected_spans
    return "\n".join(outputs)


async def test_no_canary_leaves_the_pipeline(tmp_path: Path) -> None:
    everything = await _run(tmp_path, masking=True)
    assert len(everything) > 1000  # the outputs were really read
    assert_no_canaries(everything, where="sink data, DLQ, logs, spans and metrics")


async def test_without_masking_the_canaries_do_show(tmp_path: Path) -> None:
    # The check above can fail: without the transform the same outputs carry every canary.
    found = find_canaries(await _run(tmp_path, masking=False))
    assert set(found) == set(CANARIES)
