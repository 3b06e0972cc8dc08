"""Plugin discovery: one pluggy manager per pipeline, plugins found through the ``cdc`` entry points.

* Entry-point group :data:`ENTRY_POINT_GROUP` (``cdc``): ``name = "package.module"``; the module
  holds ``@cdc_core.hookimpl`` functions. The name is also how users allowlist it.
* ``CDC_DISABLE_PLUGIN_AUTOLOAD=1``: load only the built-ins (and plugins passed explicitly).
* ``CDC_PLUGINS=a,b``: load only these entry points (built-ins always load).
* ``CDC_TRACE_HOOKS=1``: log every hook call (pluggy's tracing) at debug level.

A plugin that fails to import is an error naming its distribution and version; two plugins
registering one component name is an error naming both.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

import attrs
import pluggy
import structlog

from cdc_core import hookspecs
from cdc_core.errors import PluginError
from cdc_core.factories import OffsetStoreFactory, ReaderFactory, SinkFactory, TransformFactory

__all__ = ["ENTRY_POINT_GROUP", "PluginInfo", "PluginRegistry", "Registered"]

ENTRY_POINT_GROUP = "cdc"
BUILTIN_MODULE = "cdc_core.builtins.plugin"
ENV_DISABLE_AUTOLOAD = "CDC_DISABLE_PLUGIN_AUTOLOAD"
ENV_ALLOWLIST = "CDC_PLUGINS"
ENV_TRACE = "CDC_TRACE_HOOKS"

log = structlog.get_logger(__name__)

F = TypeVar("F", ReaderFactory[Any], TransformFactory[Any], SinkFactory[Any], OffsetStoreFactory[Any])


@attrs.frozen(kw_only=True)
class PluginInfo:
    """Where a plugin came from."""

    name: str
    distribution: str
    version: str


@attrs.frozen(kw_only=True)
class Registered(Generic[F]):
    """A component factory and the plugin that registered it."""

    factory: F
    plugin: PluginInfo


def _describe(ep: EntryPoint) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(name=ep.name, distribution=dist.name if dist else "unknown", version=dist.version if dist else "unknown")


class PluginRegistry:
    """The plugin manager of one pipeline, and the components its plugins register."""

    def __init__(self, *, autoload: bool | None = None, plugins: Iterable[tuple[object, PluginInfo]] = ()) -> None:
        self.manager = pluggy.PluginManager("cdc")
        self.manager.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        if os.environ.get(ENV_TRACE):
            self.manager.trace.root.setwriter(lambda msg: log.debug("hook", trace=msg))
            self.manager.enable_tracing()
        if autoload is None:
            autoload = os.environ.get(ENV_DISABLE_AUTOLOAD, "") in ("", "0", "false")
        loaded_builtins = False
        if autoload:
            loaded_builtins = self._load_entry_points()
        if not loaded_builtins:
            module = importlib.import_module(BUILTIN_MODULE)
            self.register(module, PluginInfo(name="builtins", distribution="cdc-core", version=_core_version()))
        for plugin, info in plugins:
            self.register(plugin, info)
        self.manager.check_pending()

    def _load_entry_points(self) -> bool:
        allow = {n.strip() for n in os.environ.get(ENV_ALLOWLIST, "").split(",") if n.strip()}
        loaded_builtins = False
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            info = _describe(ep)
            is_builtin = ep.value == BUILTIN_MODULE
            if allow and not is_builtin and ep.name not in allow:
                continue
            if is_builtin and loaded_builtins:
                continue  # two installs of cdc-core on the path
            try:
                module = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {info.distribution} {info.version} failed to load ({ep.value}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self.register(module, info)
            loaded_builtins = loaded_builtins or is_builtin
        return loaded_builtins

    def register(self, plugin: object, info: PluginInfo) -> None:
        """Register a plugin object (a module or an instance with hook implementations)."""
        if self.manager.is_registered(plugin):
            return
        if info.name in self.infos:
            other = self.infos[info.name]
            raise PluginError(
                f"two plugins are named {info.name!r}: from {other.distribution} {other.version} "
                f"and from {info.distribution} {info.version}"
            )
        self.manager.register(plugin, name=info.name)
        self.infos[info.name] = info
        self.manager.hook.cdc_add_hookspecs.call_historic(kwargs={"plugin_manager": self.manager})

    def unregister(self, name: str) -> None:
        self.manager.unregister(name=name)
        self.infos.pop(name, None)

    def _collect(self, hook_name: str, kind: type[F], label: str) -> dict[str, Registered[F]]:
        found: dict[str, Registered[F]] = {}
        caller = getattr(self.manager.hook, hook_name)
        for impl in caller.get_hookimpls():
            info = self.infos.get(impl.plugin_name, PluginInfo(name=impl.plugin_name, distribution="unknown", version="unknown"))
            function: Callable[[], Sequence[object] | None] = impl.function
            try:
                factories = function() or ()
            except Exception as exc:
                raise PluginError(f"plugin {info.name!r} ({info.distribution} {info.version}) failed in {hook_name}: {exc}") from exc
            for factory in factories:
                if not isinstance(factory, kind):
                    raise PluginError(
                        f"plugin {info.name!r} ({info.distribution} {info.version}) returned {type(factory).__name__} from {hook_name}, "
                        f"expected {kind.__name__}"
                    )
                if factory.name in found:
                    other = found[factory.name].plugin
                    raise PluginError(
                        f"two plugins register the {label} {factory.name!r}: {other.name} ({other.distribution} {other.version}) and "
                        f"{info.name} ({info.distribution} {info.version})"
                    )
                found[factory.name] = Registered(factory=factory, plugin=info)
        return found

    def readers(self) -> dict[str, Registered[ReaderFactory[Any]]]:
        return self._collect("cdc_register_readers", ReaderFactory, "reader")

    def transforms(self) -> dict[str, Registered[TransformFactory[Any]]]:
        return self._collect("cdc_register_transforms", TransformFactory, "transform")

    def sinks(self) -> dict[str, Registered[SinkFactory[Any]]]:
        return self._collect("cdc_register_sinks", SinkFactory, "sink")

    def offset_stores(self) -> dict[str, Registered[OffsetStoreFactory[Any]]]:
        return self._collect("cdc_register_offset_stores", OffsetStoreFactory, "offset store")

    def components(self) -> list[tuple[str, str, PluginInfo, str]]:
        """(kind, name, plugin, description) of every registered component, for ``cdc plugins``."""
        rows: list[tuple[str, str, PluginInfo, str]] = []
        rows += [("reader", n, r.plugin, r.factory.description) for n, r in sorted(self.readers().items())]
        rows += [("transform", n, r.plugin, r.factory.description) for n, r in sorted(self.transforms().items())]
        rows += [("sink", n, r.plugin, r.factory.description) for n, r in sorted(self.sinks().items())]
        rows += [("offset-store", n, r.plugin, r.factory.description) for n, r in sorted(self.offset_stores().items())]
        return rows

    @property
    def hook(self) -> Any:
        return self.manager.hook


def _core_version() -> str:
    from cdc_core.__about__ import __version__

    return __version__
