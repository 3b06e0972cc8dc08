"""Pipeline configuration: YAML → substitutions → env overrides → strict attrs classes.

Order of resolution: the YAML file; ``${VAR}`` / ``${VAR:-default}`` / ``${file:/path}``
substitutions inside its strings; then ``CDC_A__B__C=value`` environment overrides (path
``a.b.c``, the value read as a YAML scalar); then strict structuring (unknown keys are errors).
Every error names the key path, and the file and line where the YAML has one. Values are never
echoed in errors: a bad value may be a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
import yaml
from cattrs.preconf.json import make_converter

from cdc_core.errors import ConfigError
from cdc_core.secrets import Secret

__all__ = [
    "BatchConfig",
    "ComponentConfig",
    "DlqConfig",
    "FanoutConfig",
    "LoadedConfig",
    "LoggingConfig",
    "MetricsConfig",
    "PipelineConfig",
    "RetryConfig",
    "SinkConfig",
    "load_config",
    "structure_component",
]

T = TypeVar("T")

ENV_OVERRIDE_PREFIX = "CDC_"
_SUBST = re.compile(r"\$\{(?P<body>[^}]+)\}")


@attrs.frozen(kw_only=True)
class RetryConfig:
    """Exponential backoff with jitter for transient errors."""

    attempts: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    base_delay: float = attrs.field(default=0.2, validator=attrs.validators.gt(0))
    max_delay: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    multiplier: float = attrs.field(default=2.0, validator=attrs.validators.ge(1))
    jitter: float = attrs.field(default=0.2, validator=[attrs.validators.ge(0), attrs.validators.le(1)])


# Events per batch when neither the configuration nor the sink says (``preferred_batch_events``).
DEFAULT_MAX_EVENTS = 2000


@attrs.frozen(kw_only=True)
class BatchConfig:
    """How a sink's events are grouped: at most ``max_events`` per batch, flushed after
    ``max_wait`` seconds, and at most ``max_in_flight`` batches queued ahead of the writer.
    ``max_events`` left out: the sink's ``preferred_batch_events`` if it declares one, else
    :data:`DEFAULT_MAX_EVENTS` (see :meth:`events_for`)."""

    max_events: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    max_wait: float = attrs.field(default=0.2, validator=attrs.validators.gt(0))
    max_in_flight: int = attrs.field(default=2, validator=attrs.validators.ge(1))

    def events_for(self, sink: object) -> int:
        """The batch size of ``sink``'s lane: ``max_events`` if configured, else what the sink
        prefers (an attribute ``preferred_batch_events``: a sink knows its per-batch cost), else
        :data:`DEFAULT_MAX_EVENTS`."""
        if self.max_events is not None:
            return self.max_events
        return max(1, int(getattr(sink, "preferred_batch_events", DEFAULT_MAX_EVENTS)))


@attrs.frozen(kw_only=True)
class ComponentConfig:
    """A reader, transform or offset store: ``type`` names the plugin component; the other keys
    are that component's own options."""

    type: str
    options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)  # may hold substituted secrets


@attrs.frozen(kw_only=True)
class SinkConfig:
    """A sink: ``type`` plus the engine's ``batch``/``retry``/``enabled`` keys; the other keys
    are the sink's own options."""

    type: str
    enabled: bool = True
    batch: BatchConfig = attrs.field(factory=BatchConfig)
    retry: RetryConfig = attrs.field(factory=RetryConfig)
    on_failure: str = attrs.field(default="restart", validator=attrs.validators.in_(["restart", "stop"]))
    restart_delay: float = 5.0
    options: Mapping[str, Any] = attrs.field(factory=dict, repr=False)  # may hold substituted secrets


@attrs.frozen(kw_only=True)
class FanoutConfig:
    """Decode once for the lanes that keep up: one shared read of the source, transformed once,
    buffered as at most ``buffer_chunks`` chunks of up to ``chunk_size`` items. A lane that falls
    further behind reads the files on its own. ``shared: false`` gives every lane its own read."""

    shared: bool = True
    buffer_chunks: int = attrs.field(default=16, validator=attrs.validators.ge(2))
    chunk_size: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    chunk_wait: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))


@attrs.frozen(kw_only=True)
class DlqConfig:
    directory: str = "dlq"


@attrs.frozen(kw_only=True)
class MetricsConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9108


@attrs.frozen(kw_only=True)
class LoggingConfig:
    level: str = attrs.field(default="info", validator=attrs.validators.in_(["debug", "info", "warning", "error"]))
    format: str = attrs.field(default="json", validator=attrs.validators.in_(["json", "console"]))


@attrs.frozen(kw_only=True)
class PipelineConfig:
    name: str = "cdc"
    source: ComponentConfig
    transforms: tuple[ComponentConfig, ...] = ()
    sinks: Mapping[str, SinkConfig]
    offsets: ComponentConfig = attrs.field(factory=lambda: ComponentConfig(type="sqlite"))
    dlq: DlqConfig = attrs.field(factory=DlqConfig)
    fanout: FanoutConfig = attrs.field(factory=FanoutConfig)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    follow: bool = True
    stop_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))


@attrs.frozen(kw_only=True)
class LoadedConfig:
    """The validated configuration and where it came from (for relative paths and messages)."""

    pipeline: PipelineConfig
    source_name: str
    base_dir: Path
    lines: Mapping[str, int]


# --- the converter ----------------------------------------------------------------------------

converter = make_converter(forbid_extra_keys=True)
converter.register_structure_hook(Secret, lambda v, _: Secret(str(v)) if not isinstance(v, Secret) else v)
converter.register_unstructure_hook(Secret, lambda s: "***")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _strict_bool(value: Any, _: Any) -> bool:
    # YAML gives real booleans; ${VAR} substitution gives strings: "false" must mean False.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError("expected a boolean (true/false)")


converter.register_structure_hook(bool, _strict_bool)

_COMPONENT_KEYS = {"type"}
_SINK_KEYS = {"type", "enabled", "batch", "retry", "on_failure", "restart_delay"}


def _split_component(raw: Any, path: str, engine_keys: set[str]) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping with a 'type' key")
    if "type" not in raw:
        raise ConfigError(f"{path}.type: required (the plugin component to use; see `cdc plugins`)")
    out = {k: v for k, v in raw.items() if k in engine_keys}
    out["options"] = {k: v for k, v in raw.items() if k not in engine_keys}
    return out


def _prepare(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Move each component's own keys under ``options`` so the engine's classes stay strict."""
    data = dict(raw)
    if "source" in data:
        data["source"] = _split_component(data["source"], "source", _COMPONENT_KEYS)
    if "offsets" in data:
        data["offsets"] = _split_component(data["offsets"], "offsets", _COMPONENT_KEYS)
    if "transforms" in data:
        if not isinstance(data["transforms"], list):
            raise ConfigError("transforms: expected a list")
        data["transforms"] = [_split_component(t, f"transforms[{i}]", _COMPONENT_KEYS) for i, t in enumerate(data["transforms"])]
    if "sinks" in data:
        if not isinstance(data["sinks"], Mapping) or not data["sinks"]:
            raise ConfigError("sinks: expected a mapping of sink names to sink settings, with at least one sink")
        data["sinks"] = {name: _split_component(s, f"sinks.{name}", _SINK_KEYS) for name, s in data["sinks"].items()}
    return data


_ATTR_MARK = "\x00attr="
_QUOTED_NAME = re.compile(r"^'(?P<name>\w+)' (?P<reason>.*)$")


def _format_exception(exc: BaseException, type_: Any) -> str:
    """cattrs' messages, plus the attribute name of attrs validator errors, without the value."""
    if isinstance(exc, ValueError) and exc.args:
        name: str | None = None
        reason = str(exc.args[0])
        if len(exc.args) > 1 and isinstance(exc.args[1], attrs.Attribute):
            name = exc.args[1].name
        match = _QUOTED_NAME.match(reason)
        if match:
            name = name or match["name"]
            reason = match["reason"]
        if name:
            reason = re.sub(r"\s*\(got .*\)$", "", reason)
            reason = re.sub(r"(must be [<>=]+ [^:]+): .*$", r"\1", reason)
            return f"{_ATTR_MARK}{name}\x00{reason}"
    return cattrs.v.format_exception(exc, type_)


def _cattrs_errors(exc: BaseException, root: str) -> list[str]:
    if isinstance(exc, cattrs.BaseValidationError):
        return cattrs.transform_error(exc, path=root, format_exception=_format_exception)
    return [f"{root}: {exc}"]


def _locate(message: str, lines: Mapping[str, int], source_name: str, options_map: Mapping[str, str]) -> str:
    """Rewrite ``... @ $.a.b`` into ``a.b: ...`` with file:line where known."""
    text, _, where = message.rpartition(" @ ")
    if not text:
        return message
    path = where.removeprefix("$").lstrip(".")
    path = re.sub(r"\['([^']*)'\]", r".\1", path).lstrip(".")
    for internal, public in options_map.items():
        path = path.replace(internal, public)
    if text.startswith(_ATTR_MARK):
        name, _, text = text[len(_ATTR_MARK) :].partition("\x00")
        path = f"{path}.{name}" if path else name
    extra = re.fullmatch(r"extra fields found \((.+)\)", text)
    if extra:
        # Name the unknown key itself, at its own line.
        names = [n.strip() for n in extra.group(1).split(",")]
        key_path = ".".join(p for p in (path, names[0]) if p)
        line = _line_of(key_path, lines)
        loc = f" ({source_name}:{line})" if line else ""
        return f"{key_path}: unknown key{'s ' + ', '.join(names) if len(names) > 1 else ''}{loc}"
    line = _line_of(path, lines)
    loc = f" ({source_name}:{line})" if line else ""
    return f"{path}: {text}{loc}"


def _line_of(path: str, lines: Mapping[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition(".")[0]
    return None


def structure_component(options: Mapping[str, Any], cls: type[T], path: str, loaded: LoadedConfig | None = None) -> T:
    """Structure a component's own options into its config class; errors name ``path``."""
    try:
        return converter.structure(dict(options), cls)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        lines = loaded.lines if loaded else {}
        source_name = loaded.source_name if loaded else "<config>"
        messages = [_locate(m, lines, source_name, {}) for m in _cattrs_errors(exc, f"$.{path}")]
        raise ConfigError("; ".join(messages)) from None


# --- YAML with line numbers ---------------------------------------------------------------------


def _line_map(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[path] = key_node.start_mark.line + 1
            _line_map(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            out[path] = item.start_mark.line + 1
            _line_map(item, path, out)


def _substitute(value: Any, path: str, base_dir: Path, environ: Mapping[str, str]) -> Any:
    if isinstance(value, Mapping):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), base_dir, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", base_dir, environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        body = match["body"]
        if body.startswith("file:"):
            file_path = Path(body[5:]).expanduser()
            if not file_path.is_absolute():
                file_path = base_dir / file_path
            try:
                return file_path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read secret file {file_path}: {exc.strerror}") from None
        name, sep, default = body.partition(":-")
        if name in environ:
            return environ[name]
        if sep:
            return default
        raise ConfigError(f"{path}: environment variable {name} is not set")

    return _SUBST.sub(replace, value)


def _apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, raw in sorted(environ.items()):
        if not key.startswith(ENV_OVERRIDE_PREFIX) or "__" not in key:
            continue
        parts = [p.lower() for p in key[len(ENV_OVERRIDE_PREFIX) :].split("__")]
        target: Any = data
        for part in parts[:-1]:
            if not isinstance(target, dict):
                raise ConfigError(f"{key}: cannot override {'.'.join(parts)}: {part} is not a mapping")
            target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{key}: cannot override {'.'.join(parts)}")
        try:
            target[parts[-1]] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            target[parts[-1]] = raw


def load_config(source: str | Path | Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read and validate a pipeline configuration (a YAML file path or an already-parsed mapping)."""
    environ = os.environ if environ is None else environ
    lines: dict[str, int] = {}
    if isinstance(source, Mapping):
        raw: Any = dict(source)
        source_name = "<mapping>"
        base_dir = Path.cwd()
    else:
        path = Path(source)
        source_name = str(path)
        base_dir = path.resolve().parent
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if node is not None:
            _line_map(node, "", lines)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source_name}: the configuration must be a mapping at the top level")
    data = _substitute(raw, "", base_dir, environ)
    _apply_env_overrides(data, environ)
    prepared = _prepare(data)
    try:
        pipeline = converter.structure(prepared, PipelineConfig)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        messages = [_locate(m, lines, source_name, {".options": ""}) for m in _cattrs_errors(exc, "$")]
        raise ConfigError("; ".join(messages)) from None
    return LoadedConfig(pipeline=pipeline, source_name=source_name, base_dir=base_dir, lines=lines)
