"""Configuration of the masking transform: plain attrs classes, structured strictly by cattrs.

In a pipeline file the transform's ``config`` mapping is structured into :class:`MaskingConfig`
by the core's converter (unknown keys are errors). Rules may also live in a separate
``masking-rules.yaml`` (:class:`RulesFile`) referenced by ``rules_file``; that file holds rules and
the policy version only — never keys, which belong in the pipeline file where ``${ENV}`` and
``${file:/path}`` are substituted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
import yaml

from cdc_core.errors import ConfigError
from cdc_core.secrets import Secret

__all__ = [
    "DEFAULT_STRATEGIES",
    "MaskingConfig",
    "MaskingRule",
    "RulesFile",
    "load_rules_file",
    "resolve_rules",
    "structure_config",
]

DEFAULT_STRATEGIES: dict[str, str] = {"pii": "hmac", "phi": "tokenize"}


@attrs.frozen(kw_only=True)
class MaskingRule:
    """One rule: which columns (glob patterns, or ``re:<regex>``) and how to mask them.

    ``column`` may address a UDT field as ``column.field`` (nested: ``a.b.c``). Rules are tried in
    order; the first rule that matches a column (or field) wins.
    """

    column: str
    keyspace: str = "*"
    table: str = "*"
    classification: str = "pii"
    strategy: str | None = None  # None: the classification's default (pii → hmac, phi → tokenize)
    options: dict[str, Any] = attrs.field(factory=dict)
    low_entropy: bool = False
    apply_to: str = "both"  # for maps: "keys", "values" or "both"
    name: str | None = None  # shown in audit records and errors; default keyspace.table.column


@attrs.frozen(kw_only=True)
class MaskingConfig:
    """The ``masking`` transform's config.

    ``keys`` maps a key id to its secret (at least 32 bytes; ``hex:``/``base64:`` prefixes decode
    binary keys). ``hmac_key`` names the default key of ``hmac``/``email`` rules, ``token_key``
    the *active* key of ``tokenize`` rules, ``salt_key`` the salt of ``sha256`` rules.
    """

    policy_version: str | None = None
    rules: list[MaskingRule] = attrs.field(factory=list)
    rules_file: str | None = None
    keys: dict[str, Secret] = attrs.field(factory=dict)
    hmac_key: str = "hmac"
    token_key: str | None = None
    salt_key: str = "salt"
    default_strategies: dict[str, str] = attrs.field(factory=lambda: dict(DEFAULT_STRATEGIES))
    case_sensitive: bool = False
    cache_size: int = 65536  # masked values memoised per strategy instance (0 disables)


@attrs.frozen(kw_only=True)
class RulesFile:
    """A separate ``masking-rules.yaml``."""

    policy_version: str | None = None
    rules: list[MaskingRule] = attrs.field(factory=list)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def structure_secret(value: Any, _: type) -> Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise TypeError("a key must be a string (use ${ENV} or ${file:/path})")
        return Secret(value)

    conv.register_structure_hook(Secret, structure_secret)
    return conv


_converter = _make_converter()


def _format_error(exc: Exception, where: str) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path=where))
    return f"{where}: {exc}"


def structure_config(obj: Mapping[str, Any], where: str = "masking") -> MaskingConfig:
    """Structure a config mapping strictly (for tests and tools; the engine uses the core's converter)."""
    try:
        return _converter.structure(dict(obj), MaskingConfig)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid masking config: {_format_error(exc, where)}") from exc


def load_rules_file(path: Path) -> RulesFile:
    """Read and strictly structure a rules file; errors name the file and the key path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"masking rules_file {path}: cannot read: {exc.strerror or exc}") from exc
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"masking rules_file {path}: not valid YAML: {exc}") from exc
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ConfigError(f"masking rules_file {path}: must be a mapping with 'policy_version' and 'rules'")
    try:
        return _converter.structure(obj, RulesFile)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        raise ConfigError(f"masking rules_file {path}: {_format_error(exc, '$')}") from exc


_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$")


def resolve_rules(config: MaskingConfig, base_dir: Path) -> tuple[str, list[MaskingRule]]:
    """The policy version and the full rule list: inline rules first, then the rules file's."""
    rules = list(config.rules)
    version = config.policy_version
    if config.rules_file is not None:
        path = Path(config.rules_file)
        if not path.is_absolute():
            path = base_dir / path
        loaded = load_rules_file(path)
        if loaded.policy_version is not None:
            if version is not None and version != loaded.policy_version:
                raise ConfigError(f"masking.policy_version {version!r} disagrees with policy_version {loaded.policy_version!r} of {path}")
            version = loaded.policy_version
        rules.extend(loaded.rules)
    if not version:
        raise ConfigError("masking.policy_version is required (in the transform config or the rules file): audit records carry it")
    for key_id in config.keys:
        if not _KEY_ID.match(key_id):
            raise ConfigError(f"masking.keys: key id {key_id!r} must be 1-32 letters, digits or '-', starting with a letter or digit")
    return version, rules
