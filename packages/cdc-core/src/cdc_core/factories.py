"""Factories: what plugins register. Cheap to build; the heavy client is imported in ``create``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

if TYPE_CHECKING:
    from cdc_core.offsets import OffsetStore
    from cdc_core.readers import Reader
    from cdc_core.sinks import Sink
    from cdc_core.transforms import Transform

__all__ = ["ComponentContext", "OffsetStoreFactory", "ReaderFactory", "SinkFactory", "TransformFactory"]

C = TypeVar("C")


@attrs.frozen(kw_only=True)
class ComponentContext:
    """What a component learns about where it runs."""

    instance_name: str  # the name the config gives this component (a sink's key)
    pipeline_name: str = "cdc"
    base_dir: Path = Path(".")  # the config file's directory: relative paths resolve against it


@attrs.frozen(kw_only=True)
class ReaderFactory(Generic[C]):
    name: str
    config_type: type[C]
    create: Callable[[C, ComponentContext], Reader]
    description: str = ""


@attrs.frozen(kw_only=True)
class TransformFactory(Generic[C]):
    name: str
    config_type: type[C]
    create: Callable[[C, ComponentContext], Transform]
    description: str = ""


@attrs.frozen(kw_only=True)
class SinkFactory(Generic[C]):
    name: str
    config_type: type[C]
    create: Callable[[C, ComponentContext], Sink]
    description: str = ""


@attrs.frozen(kw_only=True)
class OffsetStoreFactory(Generic[C]):
    name: str
    config_type: type[C]
    create: Callable[[C, ComponentContext], OffsetStore]
    description: str = ""
