"""The built-in components, registered through the same hooks third-party plugins use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from cdc_core import hookimpl
from cdc_core.builtins.jsonl import JsonlReader, JsonlReaderConfig, JsonlSink, JsonlSinkConfig
from cdc_core.builtins.memory import MemorySink, MemorySinkConfig, destination_named
from cdc_core.factories import ComponentContext, OffsetStoreFactory, ReaderFactory, SinkFactory
from cdc_core.offsets import MemoryOffsetStore, OffsetStore, SqliteOffsetStore


@attrs.frozen(kw_only=True)
class SqliteOffsetStoreConfig:
    path: str = "cdc-offsets.sqlite"


@attrs.frozen(kw_only=True)
class MemoryOffsetStoreConfig:
    pass


def _resolve(base: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


@hookimpl
def cdc_register_readers() -> Sequence[ReaderFactory[Any]]:
    factories: list[ReaderFactory[Any]] = [
        ReaderFactory(
            name="jsonl",
            config_type=JsonlReaderConfig,
            create=lambda c, ctx: JsonlReader(ctx.instance_name, c, ctx.base_dir),
            description="change events from JSON-lines files (the documented event form)",
        ),
    ]
    from cdc_core.commitlog.plugin import reader_factory  # cheap: the driver is imported on start

    return [*factories, reader_factory()]


@hookimpl
def cdc_register_sinks() -> Sequence[SinkFactory[Any]]:
    return [
        SinkFactory(
            name="jsonl",
            config_type=JsonlSinkConfig,
            create=lambda c, ctx: JsonlSink(ctx.instance_name, c, ctx.base_dir),
            description="append events as JSON lines to a file or stdout (at-least-once)",
        ),
        SinkFactory(
            name="memory",
            config_type=MemorySinkConfig,
            create=lambda c, ctx: MemorySink(ctx.instance_name, destination_named(ctx.instance_name)),
            description="the reference in-memory sink (tests, embedding)",
        ),
    ]


def _sqlite(config: SqliteOffsetStoreConfig, ctx: ComponentContext) -> OffsetStore:
    return SqliteOffsetStore(_resolve(ctx.base_dir, config.path))


def _memory(config: MemoryOffsetStoreConfig, ctx: ComponentContext) -> OffsetStore:
    return MemoryOffsetStore()


@hookimpl
def cdc_register_offset_stores() -> Sequence[OffsetStoreFactory[Any]]:
    return [
        OffsetStoreFactory(
            name="sqlite", config_type=SqliteOffsetStoreConfig, create=_sqlite, description="embedded SQLite file (default)"
        ),
        OffsetStoreFactory(name="memory", config_type=MemoryOffsetStoreConfig, create=_memory, description="in-process, lost on exit"),
    ]
