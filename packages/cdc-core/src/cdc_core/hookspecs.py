"""The hooks of cdc: discovery of components, and lifecycle announcements.

Plugins implement them with ``@cdc_core.hookimpl``. An implementation may accept any subset of
a hook's documented arguments. The data path never goes through hooks: it calls the typed
objects the factories create.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from cdc_core.factories import OffsetStoreFactory, ReaderFactory, SinkFactory, TransformFactory
    from cdc_core.positions import Position

hookspec = pluggy.HookspecMarker("cdc")


@hookspec(historic=True)
def cdc_add_hookspecs(plugin_manager: pluggy.PluginManager) -> None:
    """Let a plugin add hook specifications of its own (e.g. masking strategies)."""


@hookspec
def cdc_register_readers() -> Sequence[ReaderFactory[Any]]:
    """Return the reader factories this plugin provides."""


@hookspec
def cdc_register_transforms() -> Sequence[TransformFactory[Any]]:
    """Return the transform factories this plugin provides."""


@hookspec
def cdc_register_sinks() -> Sequence[SinkFactory[Any]]:
    """Return the sink factories this plugin provides."""


@hookspec
def cdc_register_offset_stores() -> Sequence[OffsetStoreFactory[Any]]:
    """Return the offset store factories this plugin provides."""


@hookspec
def cdc_pipeline_started(pipeline_name: str, sinks: Sequence[str]) -> None:
    """A pipeline has started all its components and begins reading."""


@hookspec
def cdc_pipeline_stopped(pipeline_name: str, reason: str) -> None:
    """A pipeline has stopped (``reason``: completed, stopped, failed)."""


@hookspec
def cdc_batch_committed(sink: str, batch_id: str, event_count: int, positions: Mapping[str, Position]) -> None:
    """A sink durably applied a batch and its positions are committed."""
