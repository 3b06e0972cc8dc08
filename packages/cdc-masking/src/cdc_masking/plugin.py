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

_plugin_manager: pluggy.PluginManager | None = None


@cdc_core.hookimpl
def cdc_add_hookspecs(plugin_manager: pluggy.PluginManager) -> None:
    """Add ``cdc_masking_register_strategies`` (idempotent: the core replays this historic hook per plugin)."""
    global _plugin_manager
    caller = getattr(plugin_manager.hook, "cdc_masking_register_strategies", None)
    if caller is None or caller.spec is None:
        plugin_manager.add_hookspecs(hookspecs)
    _plugin_manager = plugin_manager


def registered_strategies(plugin_manager: pluggy.PluginManager | None = None) -> dict[str, MaskingStrategy]:
    """The strategies other plugins registered, by name; a name claimed twice is a PluginError naming both."""
    pm = plugin_manager or _plugin_manager
    if pm is None:
        return {}
    caller = getattr(pm.hook, "cdc_masking_register_strategies", None)
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


def create_transform(config: MaskingConfig, context: ComponentContext) -> MaskingTransform:
    return MaskingTransform(config, base_dir=context.base_dir, strategies=registered_strategies(), instance_name=context.instance_name)


@cdc_core.hookimpl
def cdc_register_transforms() -> Sequence[TransformFactory[Any]]:
    return [
        TransformFactory(
            name="masking",
            config_type=MaskingConfig,
            create=create_transform,
            description="Mask PII/PHI (HMAC, key-id tokens, redact, null, keep-last, email, truncate, salted SHA-256)",
        )
    ]
