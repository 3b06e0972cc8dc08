"""The plugin module behind the ``cdc`` entry point ``masking``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pluggy

import cdc_core
from cdc_core.errors import PluginError
from cdc_core.factories import ComponentContext, TransformFactory
from cdc_masking import hookspecs
from cdc_masking.config import MaskingConfig
from cdc_masking.strategies import BUILTIN_STRATEGIES, MaskingStrategy
from cdc_masking.transform import MaskingTransform

__all__ = ["cdc_add_hookspecs", "cdc_register_transforms", "create_transform", "registered_strategies"]


@cdc_core.hookimpl
def cdc_add_hookspecs(plugin_manager: pluggy.PluginManager) -> None:
    """Add ``cdc_masking_register_strategies`` and bind this plugin's transform factory to ``plugin_manager``.

    Idempotent: the core replays this historic hook per registered plugin. The hook
    ``cdc_register_transforms`` takes no arguments, so the factory cannot learn which plugin manager
    (which pipeline's registry) asked for it; this module is one object registered in every
    registry of the process. So the hook implementation *of this registry* is bound here to a
    function that closes over ``plugin_manager``: each registry's ``masking`` transforms see the
    strategies of that registry's plugins, never those of a registry created later.
    """
    caller = getattr(plugin_manager.hook, "cdc_masking_register_strategies", None)
    if caller is None or caller.spec is None:
        plugin_manager.add_hookspecs(hookspecs)
    transforms = getattr(plugin_manager.hook, "cdc_register_transforms", None)
    if transforms is None:
        return
    for impl in transforms.get_hookimpls():
        if impl.function is cdc_register_transforms:  # this module's, not yet bound

            def bound(pm: pluggy.PluginManager = plugin_manager) -> Sequence[TransformFactory[Any]]:
                return _factories(pm)

            setattr(impl, "function", bound)  # noqa: B010 (HookImpl.function is typed Final; rebinding is deliberate)


def registered_strategies(plugin_manager: pluggy.PluginManager) -> dict[str, MaskingStrategy]:
    """The strategies the plugins of ``plugin_manager`` registered, by name; a name claimed twice is a PluginError naming both."""
    caller = getattr(plugin_manager.hook, "cdc_masking_register_strategies", None)
    if caller is None:
        return {}
    found: dict[str, MaskingStrategy] = {}
    owners: dict[str, str] = {}
    for impl in caller.get_hookimpls():
        result = impl.function()
        if not result:
            continue
        for name, strategy in dict(result).items():
            if name in BUILTIN_STRATEGIES:
                raise PluginError(f"plugin {impl.plugin_name!r} registers masking strategy {name!r}, which is built in")
            if name in owners:
                raise PluginError(f"masking strategy {name!r} is registered by two plugins: {owners[name]!r} and {impl.plugin_name!r}")
            if not callable(getattr(strategy, "compile", None)):
                raise PluginError(f"plugin {impl.plugin_name!r}: masking strategy {name!r} has no compile(options, context) method")
            owners[name] = impl.plugin_name
            found[name] = strategy
    return found


def create_transform(
    config: MaskingConfig, context: ComponentContext, plugin_manager: pluggy.PluginManager | None = None
) -> MaskingTransform:
    """The transform, with the custom strategies of ``plugin_manager``'s plugins (None: built-ins only)."""
    strategies = registered_strategies(plugin_manager) if plugin_manager is not None else {}
    return MaskingTransform(config, base_dir=context.base_dir, strategies=strategies, instance_name=context.instance_name)


def _factories(plugin_manager: pluggy.PluginManager | None) -> Sequence[TransformFactory[Any]]:
    def create(config: MaskingConfig, context: ComponentContext) -> MaskingTransform:
        return create_transform(config, context, plugin_manager)

    return [
        TransformFactory(
            name="masking",
            config_type=MaskingConfig,
            create=create,
            description="Mask PII/PHI (HMAC, key-id tokens, redact, null, keep-last, email, truncate, salted SHA-256)",
        )
    ]


@cdc_core.hookimpl
def cdc_register_transforms() -> Sequence[TransformFactory[Any]]:
    """Unbound (called outside a plugin manager that ran ``cdc_add_hookspecs``): built-in strategies only."""
    return _factories(None)
