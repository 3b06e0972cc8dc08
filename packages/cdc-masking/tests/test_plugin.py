"""Plugin wiring: the entry point, the transform factory, and custom strategies through the added hookspec."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy
import pytest
from helpers import PK, REG, config, row, table

import cdc_core
from cdc_core import hookspecs as core_hookspecs
from cdc_core.errors import ConfigError, PluginError
from cdc_core.factories import ComponentContext
from cdc_core.plugins import PluginInfo
from cdc_masking import Masker, MaskingConfig, MaskingTransform, StrategyContext, plugin


class Reverse:
    """A toy custom strategy (reverses text) to prove the hook works."""

    def compile(self, options: Mapping[str, Any], context: StrategyContext) -> Masker:
        return Masker(mask=lambda v: str(v)[::-1] + "!", injective=True)


class GoodPlugin:
    @cdc_core.hookimpl
    def cdc_masking_register_strategies(self) -> Mapping[str, Any]:
        return {"reverse": Reverse()}


class ClashingPlugin:
    @cdc_core.hookimpl
    def cdc_masking_register_strategies(self) -> Mapping[str, Any]:
        return {"reverse": Reverse()}


class BuiltinClash:
    @cdc_core.hookimpl
    def cdc_masking_register_strategies(self) -> Mapping[str, Any]:
        return {"hmac": Reverse()}


def make_pm(*plugins: object) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("cdc")
    pm.add_hookspecs(core_hookspecs)
    for p in plugins:
        pm.register(p, name=type(p).__name__)
    pm.register(plugin, name="cdc-masking")
    pm.hook.cdc_add_hookspecs.call_historic(kwargs={"plugin_manager": pm})
    return pm


def test_loads_through_the_core_registry() -> None:
    from cdc_core.plugins import PluginRegistry

    registry = PluginRegistry(plugins=[(GoodPlugin(), PluginInfo(name="good", distribution="good-dist", version="1"))])
    assert "masking" in registry.transforms()
    assert set(plugin.registered_strategies(registry.manager)) == {"reverse"}


def test_add_hookspecs_is_idempotent() -> None:
    pm = make_pm()
    pm.hook.cdc_add_hookspecs.call_historic(kwargs={"plugin_manager": pm})  # the core replays it per plugin
    assert plugin.registered_strategies(pm) == {}


def test_entry_point_declared() -> None:
    eps = [ep for ep in entry_points(group="cdc") if ep.name == "masking"]
    assert eps and eps[0].value == "cdc_masking.plugin"
    assert eps[0].load() is plugin


def test_factory_creates_transform(tmp_path: Path) -> None:
    pm = make_pm()
    factories = [f for group in pm.hook.cdc_register_transforms() for f in group]
    (factory,) = [f for f in factories if f.name == "masking"]
    assert factory.config_type is MaskingConfig
    t = factory.create(config([{"column": "ssn"}]), ComponentContext(instance_name="mask", base_dir=tmp_path))
    assert isinstance(t, MaskingTransform) and t.instance_name == "mask"


def test_custom_strategy_through_hook() -> None:
    pm = make_pm(GoodPlugin())
    strategies = plugin.registered_strategies(pm)
    assert set(strategies) == {"reverse"}
    t = MaskingTransform(config([{"column": "ssn", "strategy": "reverse"}]), strategies=strategies)
    schema = table([("id", "int", PK), ("ssn", "text", REG)])
    assert t.apply([row(schema, {"id": 1}, {"ssn": "abc"})])[0].cells["ssn"].value == "cba!"  # type: ignore[union-attr]


def test_two_plugins_claiming_a_strategy_name() -> None:
    pm = make_pm(GoodPlugin(), ClashingPlugin())
    with pytest.raises(
        PluginError, match=r"'reverse' is registered by two plugins: .*GoodPlugin.*ClashingPlugin|ClashingPlugin.*GoodPlugin"
    ):
        plugin.registered_strategies(pm)


def test_plugin_cannot_replace_builtin() -> None:
    pm = make_pm(BuiltinClash())
    with pytest.raises(PluginError, match="'BuiltinClash' registers masking strategy 'hmac', which is built in"):
        plugin.registered_strategies(pm)


def masking_factory(pm: pluggy.PluginManager) -> Any:
    (factory,) = [f for group in pm.hook.cdc_register_transforms() for f in group if f.name == "masking"]
    return factory


def test_each_registry_sees_its_own_strategies(tmp_path: Path) -> None:
    # Regression: the plugin kept the last plugin manager in a module global, so the registry created
    # last decided which custom strategies every pipeline of the process could use.
    from cdc_core.plugins import PluginRegistry

    good = PluginRegistry(
        autoload=False,
        plugins=[
            (plugin, PluginInfo(name="masking", distribution="cdc-masking", version="1")),
            (GoodPlugin(), PluginInfo(name="good", distribution="good-dist", version="1")),
        ],
    )
    plain = PluginRegistry(autoload=False, plugins=[(plugin, PluginInfo(name="masking", distribution="cdc-masking", version="1"))])
    reverse = config([{"column": "ssn", "strategy": "reverse"}])
    context = ComponentContext(instance_name="mask", base_dir=tmp_path)
    schema = table([("id", "int", PK), ("ssn", "text", REG)])
    # the registry WITH the plugin was created first: its pipeline still gets the strategy...
    t = good.transforms()["masking"].factory.create(reverse, context)
    assert t.apply([row(schema, {"id": 1}, {"ssn": "abc"})])[0].cells["ssn"].value == "cba!"  # type: ignore[union-attr]
    # ...and the one without it does not, whichever registry was created last
    with pytest.raises(ConfigError, match="unknown strategy 'reverse'"):
        plain.transforms()["masking"].factory.create(reverse, context)
    third = make_pm()  # a later plugin manager changes neither
    assert plugin.registered_strategies(third) == {}
    assert isinstance(good.transforms()["masking"].factory.create(reverse, context), MaskingTransform)
    with pytest.raises(ConfigError, match="unknown strategy 'reverse'"):
        masking_factory(plain.manager).create(reverse, context)


def test_unbound_factory_has_builtins_only(tmp_path: Path) -> None:
    (factory,) = plugin.cdc_register_transforms()
    context = ComponentContext(instance_name="mask", base_dir=tmp_path)
    assert isinstance(factory.create(config([{"column": "ssn"}]), context), MaskingTransform)
    with pytest.raises(ConfigError, match="unknown strategy 'reverse'"):
        factory.create(config([{"column": "ssn", "strategy": "reverse"}]), context)
