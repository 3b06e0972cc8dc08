"""Plugin discovery: built-ins, entry points, allowlist, broken and conflicting plugins."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from core_helpers import TEST_PLUGIN

from cdc_core import hookimpl
from cdc_core.builtins.jsonl import JsonlSinkConfig
from cdc_core.errors import PluginError
from cdc_core.factories import SinkFactory
from cdc_core.plugins import PluginInfo, PluginRegistry


def _fake_distribution(root: Path, dist: str, version: str, module: str, body: str, entry: str | None = None) -> None:
    """A real installed distribution (dist-info + module) that importlib.metadata finds."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[cdc]\n{entry or dist} = {module}\n")
    (root / f"{module}.py").write_text(body)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fake_cdc_")]:
        del sys.modules[name]


def test_builtins_are_registered_as_plugins() -> None:
    registry = PluginRegistry(autoload=False)
    assert {"jsonl", "cassandra"} <= set(registry.readers())
    assert {"jsonl", "memory"} <= set(registry.sinks())
    assert {"sqlite", "memory"} <= set(registry.offset_stores())
    assert registry.sinks()["jsonl"].plugin.distribution == "cdc-core"


def test_an_installed_distribution_appears_without_code_changes(site: Path) -> None:
    _fake_distribution(
        site,
        "fake-cdc-sink",
        "2.0.1",
        "fake_cdc_sink",
        "from cdc_core import hookimpl\n"
        "from cdc_core.factories import SinkFactory\n"
        "from cdc_core.builtins.jsonl import JsonlSink, JsonlSinkConfig\n"
        "@hookimpl\n"
        "def cdc_register_sinks():\n"
        "    return [SinkFactory(name='fake', config_type=JsonlSinkConfig, create=lambda c, ctx: JsonlSink('x', c, ctx.base_dir))]\n",
    )
    sinks = PluginRegistry(autoload=True).sinks()
    assert sinks["fake"].plugin == PluginInfo(name="fake-cdc-sink", distribution="fake-cdc-sink", version="2.0.1")


def test_a_plugin_that_fails_to_import_names_its_distribution(site: Path) -> None:
    _fake_distribution(site, "fake-cdc-broken", "0.3.0", "fake_cdc_broken", "import does_not_exist_anywhere\n")
    with pytest.raises(PluginError, match=r"'fake-cdc-broken' from distribution fake-cdc-broken 0\.3\.0 failed to load.*does_not_exist"):
        PluginRegistry(autoload=True)


def test_the_allowlist_skips_other_plugins(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(site, "fake-cdc-broken", "0.3.0", "fake_cdc_broken", "import does_not_exist_anywhere\n")
    monkeypatch.setenv("CDC_PLUGINS", "masking")
    registry = PluginRegistry()
    assert "fake-cdc-broken" not in registry.infos
    assert "builtins" in registry.infos


def test_autoload_can_be_disabled_by_env(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(site, "fake-cdc-broken", "0.3.0", "fake_cdc_broken", "import does_not_exist_anywhere\n")
    monkeypatch.setenv("CDC_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert set(PluginRegistry().infos) == {"builtins"}


class _Clash:
    @hookimpl
    def cdc_register_sinks(self) -> list[SinkFactory[Any]]:
        return [SinkFactory(name="controlled", config_type=JsonlSinkConfig, create=lambda c, ctx: None)]  # type: ignore[arg-type,return-value]


def test_two_plugins_claiming_one_name_is_an_error_naming_both() -> None:
    clash = (_Clash(), PluginInfo(name="clash", distribution="other-dist", version="9.9"))
    registry = PluginRegistry(autoload=False, plugins=[TEST_PLUGIN, clash])
    with pytest.raises(PluginError) as err:
        registry.sinks()
    assert "test-plugin (tests 0)" in str(err.value)
    assert "clash (other-dist 9.9)" in str(err.value)


class _Typo:
    @hookimpl
    def cdc_register_sinkz(self) -> list[object]:
        return []


def test_a_misspelt_hook_is_caught_at_load() -> None:
    with pytest.raises(Exception, match="cdc_register_sinkz"):
        PluginRegistry(autoload=False, plugins=[(_Typo(), PluginInfo(name="typo", distribution="t", version="1"))])


def test_every_hookspec_is_documented() -> None:
    from cdc_core import hookspecs

    doc = (Path(__file__).parents[3] / "docs" / "plugins.md").read_text()
    names = [n for n in dir(hookspecs) if n.startswith("cdc_")]
    assert names
    for name in names:
        assert f"`{name}(" in doc, f"docs/plugins.md does not document {name}"
