"""Configuration: strict structuring, rules files, and a clear error for each misconfiguration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import KEYS, config, transform
from prometheus_client import CollectorRegistry

from cdc_core.errors import ConfigError
from cdc_masking import MaskingConfig, MaskingRule, MaskingTransform, load_rules_file, structure_config


def test_defaults() -> None:
    cfg = structure_config({"policy_version": "1", "rules": [{"column": "ssn"}]})
    assert cfg.rules == [MaskingRule(column="ssn")]
    rule = cfg.rules[0]
    assert (rule.keyspace, rule.table, rule.classification, rule.strategy, rule.low_entropy, rule.apply_to) == (
        "*",
        "*",
        "pii",
        None,
        False,
        "both",
    )
    assert cfg.default_strategies == {"pii": "hmac", "phi": "tokenize"}
    assert MaskingConfig().keys == {}


def test_unknown_keys_are_errors_with_paths() -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\]"):
        structure_config({"policy_version": "1", "rules": [{"column": "ssn", "stratgy": "hmac"}]})
    with pytest.raises(ConfigError, match="extra fields"):
        structure_config({"policy_version": "1", "colour": "red"})


def test_keys_are_secrets_never_printed() -> None:
    cfg = config([])
    assert KEYS["hmac"] not in repr(cfg)
    assert cfg.keys["hmac"].reveal() == KEYS["hmac"]


@pytest.mark.parametrize(
    ("rules", "extra", "message"),
    [
        (
            [{"column": "ssn", "strategy": "rot13"}],
            {},
            "masking rule '\\*\\.\\*\\.ssn' \\(rules\\[0\\]\\): unknown strategy 'rot13' \\(known: email, hmac",
        ),
        ([{"column": "ssn", "name": "ssn-rule"}], {"keys": {}}, "'ssn-rule'.*needs HMAC key 'hmac', which masking.keys does not define"),
        ([{"column": "ssn"}], {"keys": {"hmac": "too-short"}}, "'\\*\\.\\*\\.ssn'.*key 'hmac' is 9 bytes; at least 32"),
        ([{"column": "ssn"}], {"keys": {"hmac": ""}}, "key 'hmac' is empty \\(is its environment variable or secret file unset"),
        ([{"column": "dx", "classification": "phi"}], {"token_key": None}, "set masking.token_key"),
        ([{"column": "dx", "classification": "phi"}], {"token_key": "v9"}, "needs token key 'v9'"),
        ([{"column": "ssn[0-9", "name": "g"}], {}, "'g'.*column: bad glob 'ssn\\[0-9': unclosed"),
        ([{"column": "re:ssn(", "name": "rx"}], {}, "'rx'.*column: bad regular expression"),
        ([{"column": "", "name": "e"}], {}, "'e'.*empty pattern"),
        ([{"column": "x", "classification": "secret-sauce"}], {}, "classification 'secret-sauce' has no default strategy"),
        ([{"column": "x", "apply_to": "entries"}], {}, "apply_to must be both, keys or values"),
        ([{"column": "x", "strategy": "hmac", "options": {"lenght": 8}}], {}, "unknown option\\(s\\) lenght"),
        ([], {"policy_version": ""}, "policy_version is required"),
        ([], {"keys": {"bad_id": "x" * 40}}, "key id 'bad_id'"),
    ],
)
def test_misconfigurations(rules: list[dict[str, Any]], extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        transform(rules, **extra)


def test_error_never_shows_key_material() -> None:
    with pytest.raises(ConfigError) as info:
        transform([{"column": "ssn"}], keys={"hmac": "my-short-secret"})
    assert "my-short-secret" not in str(info.value)


def test_custom_classification_with_configured_default() -> None:
    t = transform([{"column": "x", "classification": "pci"}], default_strategies={"pci": "keep_last"})
    assert t.rules[0].strategy == "keep_last"


def test_rules_file(tmp_path: Path) -> None:
    (tmp_path / "masking-rules.yaml").write_text(
        "policy_version: '2024-06'\nrules:\n  - keyspace: crm\n    table: customers\n    column: ssn\n    classification: pii\n"
        "    low_entropy: true\n  - column: diagnosis\n    classification: phi\n",
        encoding="utf-8",
    )
    cfg = structure_config({"rules_file": "masking-rules.yaml", "keys": dict(KEYS), "token_key": "v1", "rules": [{"column": "inline"}]})
    t = MaskingTransform(cfg, base_dir=tmp_path, registry=CollectorRegistry())
    assert t.policy_version == "2024-06"
    assert [r.rule.column for r in t.rules] == ["inline", "ssn", "diagnosis"]  # inline rules first
    assert [r.strategy for r in t.rules] == ["hmac", "hmac", "tokenize"]
    assert t.rules[1].rule.low_entropy


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules:\n  - column: ssn\n    strategy: hmac\n    bogus: 1\n", r"rules_file .*masking-rules.yaml: .*rules\[0\]"),
        ("rules: [\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("policy_version: other\n", "disagrees with policy_version 'other'"),
    ],
)
def test_rules_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "masking-rules.yaml"
    path.write_text(text, encoding="utf-8")
    cfg = structure_config({"policy_version": "mine", "rules_file": str(path), "keys": dict(KEYS)})
    with pytest.raises(ConfigError, match=message):
        MaskingTransform(cfg, registry=CollectorRegistry())


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_rules_file(tmp_path / "absent.yaml")
