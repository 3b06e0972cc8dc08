"""Configuration: each kind of mistake gives one clear error naming the key (and file:line)."""

from __future__ import annotations

from pathlib import Path

import pytest
from core_helpers import TEST_PLUGIN

from cdc_core.config import load_config
from cdc_core.errors import ConfigError
from cdc_core.pipeline import Pipeline
from cdc_core.plugins import PluginRegistry

GOOD = """\
name: demo
source:
  type: jsonl
  path: events.jsonl
sinks:
  out:
    type: jsonl
    path: out.jsonl
    batch:
      max_events: 100
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "events.jsonl").write_text("")
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def _build(path: Path, environ: dict[str, str] | None = None) -> Pipeline:
    return Pipeline.from_config(path, registry=PluginRegistry(autoload=False, plugins=[TEST_PLUGIN]), environ=environ or {})


def test_a_good_config_builds(tmp_path: Path) -> None:
    p = _build(_write(tmp_path, GOOD))
    assert p.config.name == "demo"
    assert p.lanes["out"].config.batch.max_events == 100


def test_unknown_engine_key_names_path_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("      max_events: 100", "      max_events: 100\n      max_evnets: 5"))
    with pytest.raises(ConfigError) as err:
        _build(path)
    assert "sinks.out.batch" in str(err.value)
    assert "max_evnets" in str(err.value)
    assert f"{path}:11" in str(err.value)


def test_unknown_component_key_names_the_component_path(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("    path: out.jsonl", "    path: out.jsonl\n    colour: red"))
    with pytest.raises(ConfigError, match=r"sinks\.out.*colour"):
        _build(path)


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("max_events: 100", "max_events: lots"))
    with pytest.raises(ConfigError) as err:
        _build(path)
    assert "sinks.out.batch.max_events" in str(err.value)
    assert f"{path}:10" in str(err.value)


def test_missing_env_var_names_key_and_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("path: out.jsonl", "path: ${OUT_FILE}"))
    with pytest.raises(ConfigError, match=r"sinks\.out\.path: environment variable OUT_FILE is not set"):
        _build(path)


def test_env_var_and_default_substitution(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("path: out.jsonl", "path: ${OUT_FILE}").replace("name: demo", "name: ${NAME:-fallback}"))
    p = _build(path, {"OUT_FILE": "elsewhere.jsonl"})
    assert p.config.name == "fallback"
    assert p.config.sinks["out"].options["path"] == "elsewhere.jsonl"


def test_secret_file_substitution_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("s3cr3t-value\n")
    loaded = load_config(_write(tmp_path, GOOD.replace("name: demo", "name: ${file:secret.txt}")), environ={})
    assert loaded.pipeline.name == "s3cr3t-value"
    with pytest.raises(ConfigError, match=r"name: cannot read secret file .*nope\.txt"):
        load_config(_write(tmp_path, GOOD.replace("name: demo", "name: ${file:nope.txt}")), environ={})


def test_unknown_plugin_name_lists_what_exists(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("    type: jsonl\n    path: out.jsonl", "    type: snowflake"))
    with pytest.raises(ConfigError, match=r"sinks\.out\.type: unknown sink 'snowflake' \(available: .*jsonl"):
        _build(path)


def test_env_overrides_apply_by_key_path(tmp_path: Path) -> None:
    p = _build(_write(tmp_path, GOOD), {"CDC_SINKS__OUT__BATCH__MAX_EVENTS": "7", "CDC_TEST_POSTGRES_DSN": "ignored"})
    assert p.lanes["out"].config.batch.max_events == 7


def test_errors_never_echo_values(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("max_events: 100", "max_events: hunter2-password"))
    with pytest.raises(ConfigError) as err:
        _build(path)
    assert "hunter2" not in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + "  - : :\n bad")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        _build(path)


def test_missing_required_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sinks"):
        _build(_write(tmp_path, "source:\n  type: jsonl\n  path: events.jsonl\n"))
    with pytest.raises(ConfigError, match=r"source\.type: required"):
        _build(_write(tmp_path, "source:\n  path: x\nsinks:\n  a: {type: jsonl}\n"))


def test_substituted_secrets_never_appear_in_the_config_repr(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("path: out.jsonl", "path: ${SECRET_PATH}"))
    p = _build(path, {"SECRET_PATH": "hunter2-secret-value"})
    assert "hunter2" not in repr(p.config)
    assert "hunter2" not in repr(p.loaded)


@pytest.mark.parametrize(("text", "expected"), [("false", False), ("no", False), ("true", True), ("YES", True)])
def test_booleans_from_env_substitution_mean_what_they_say(tmp_path: Path, text: str, expected: bool) -> None:
    path = _write(tmp_path, "follow: ${FOLLOW}\n" + GOOD)
    assert _build(path, {"FOLLOW": text}).config.follow is expected


def test_a_non_boolean_is_refused_with_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^follow: .*bool"):
        _build(_write(tmp_path, "follow: maybe\n" + GOOD))


@pytest.mark.parametrize(
    ("extra", "message"),
    [("stop_timeout: -5\n", r"^stop_timeout: must be > 0"), ("fanout: {buffer_chunks: 1}\n", r"^fanout\.buffer_chunks: must be >= 2")],
)
def test_validator_errors_name_the_key_not_the_value(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _build(_write(tmp_path, extra + GOOD))
    assert "-5" not in str(err.value)
