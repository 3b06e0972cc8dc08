"""The example third-party sink: found through its entry point, configured, and passing the
core's sink contract suite exactly as an outside author would run it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from cdc_core.plugins import PluginRegistry
from cdc_core.schema import TableSchema
from cdc_core.sinks import Sink
from cdc_core.testing.contract import SinkContract, SinkHarness
from cdc_core.testing.model import TableState
from cdc_sink_example import ExampleSink


@attrs.define
class ExampleHarness:
    path: Path
    sinks: list[ExampleSink] = attrs.field(factory=list)

    async def make_sink(self) -> Sink:
        sink = ExampleSink("example", self.path)
        await sink.start()
        self.sinks.append(sink)
        return sink

    async def read_state(self, schema: TableSchema, now: int) -> TableState:
        reader = ExampleSink("example", self.path)
        await reader.start()
        try:
            return reader.latest_state(schema, now)
        finally:
            await reader.close()

    async def destroy(self) -> None:
        for s in self.sinks:
            await s.close()


class TestExampleSinkContract(SinkContract):
    @pytest.fixture
    async def harness(self, tmp_path: Path) -> AsyncIterator[SinkHarness]:
        h = ExampleHarness(tmp_path / "changes.sqlite")
        yield h
        await h.destroy()


def test_the_entry_point_makes_the_sink_available() -> None:
    registry = PluginRegistry(autoload=True)
    sinks = registry.sinks()
    assert "example" in sinks
    assert sinks["example"].plugin.distribution == "cdc-sink-example"
    assert sinks["example"].plugin.version == "0.1.0"


def test_the_documentation_shows_this_exact_sink() -> None:
    root = Path(__file__).parents[4]
    source = (root / "tests/thirdparty/cdc-sink-example/src/cdc_sink_example/__init__.py").read_text()
    assert f"```python\n{source}```" in (root / "docs/writing-a-sink.md").read_text()
    assert len(source.splitlines()) < 100
