"""The ``masking`` transform: applies the compiled rules to every value of every event."""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from cdc_core.errors import ConfigError
from cdc_core.events import ChangeEvent
from cdc_core.schema import TableSchema
from cdc_masking.config import MaskingConfig, MaskingRule, resolve_rules
from cdc_masking.plan import CompiledRule, TablePlan, addressable_names, build_plan, compile_pattern
from cdc_masking.strategies import BUILTIN_STRATEGIES, MaskingStrategy, StrategyContext, identify_token, make_token, native_module

__all__ = ["MaskingTransform", "dropped_ranges_counter", "looks_low_entropy", "masked_values_counter"]

log = structlog.get_logger(__name__)

_LOW_ENTROPY = re.compile(
    r"ssn|social_?sec|phone|mobile|cell_?no|fax|e_?mail|dob|birth|zip|postal|postcode|passport|licen[cs]e|tax_?id|iban|card_?(no|num)|nino",
    re.IGNORECASE,
)
_MAX_PLANS = 4096

_counters: dict[tuple[int, str], tuple[CollectorRegistry, Counter]] = {}


def _counter(registry: CollectorRegistry | None, name: str, documentation: str, labels: tuple[str, ...]) -> Counter:
    reg = REGISTRY if registry is None else registry
    entry = _counters.get((id(reg), name))
    if entry is not None and entry[0] is reg:
        return entry[1]
    try:
        counter = Counter(name, documentation, labels, registry=reg)
    except ValueError:  # registered by an earlier import of this module (reloads in tests)
        existing = getattr(reg, "_names_to_collectors", {}).get(f"{name}_total")
        if not isinstance(existing, Counter):
            raise
        counter = existing
    _counters[(id(reg), name)] = (reg, counter)
    return counter


def masked_values_counter(registry: CollectorRegistry | None = None) -> Counter:
    """``cdc_masked_values_total{table, column, strategy}`` on ``registry`` (default: the global one), created once."""
    return _counter(registry, "cdc_masked_values", "Values masked by table, column, strategy", ("table", "column", "strategy"))


def dropped_ranges_counter(registry: CollectorRegistry | None = None) -> Counter:
    """``cdc_masking_dropped_range_deletions_total{table}``: range deletions over a clustering column masked
    without preserving order, which masking cannot express and therefore drops."""
    return _counter(
        registry,
        "cdc_masking_dropped_range_deletions",
        "Range deletions dropped because they span a clustering column masked without preserving order",
        ("table",),
    )


def looks_low_entropy(name: str) -> bool:
    """True for column/field names of identifiers with few possible values (SSN, phone, email, birth date…)."""
    return _LOW_ENTROPY.search(name) is not None


def _rule_name(index: int, rule: MaskingRule) -> str:
    return rule.name or f"{rule.keyspace}.{rule.table}.{rule.column}"


class MaskingTransform:
    """Masks keys, cells, collection elements, map keys, set elements, UDT fields and range bounds.

    Construction compiles every rule and checks every key it needs: a misconfiguration raises
    :class:`~cdc_core.errors.ConfigError` before the pipeline reads anything.
    """

    name = "masking"

    def __init__(
        self,
        config: MaskingConfig,
        *,
        base_dir: Path = Path("."),
        strategies: Mapping[str, MaskingStrategy] | None = None,
        registry: CollectorRegistry | None = None,
        instance_name: str = "masking",
    ) -> None:
        self.config = config
        self.instance_name = instance_name
        self.policy_version, rules = resolve_rules(config, base_dir)
        self._strategies: dict[str, MaskingStrategy] = dict(BUILTIN_STRATEGIES)
        for name, strategy in (strategies or {}).items():
            if name in BUILTIN_STRATEGIES:
                raise ConfigError(f"masking strategy {name!r} is built in and cannot be replaced by a plugin")
            self._strategies[name] = strategy
        self.accelerator = "python" if native_module() is None else "native"  # cdc_masking_native in use (the strategies compile below)
        self.rules: tuple[CompiledRule, ...] = tuple(self._compile(i, r) for i, r in enumerate(rules))
        # batches are masked table by table, column by column only where that pays: with the accelerator
        # (native rebuild) or a strategy with a list form (Masker.batch)
        self._column_wise = self.accelerator == "native" or any(r.masker.batch is not None for r in self.rules)
        self._counter = masked_values_counter(registry)
        self._dropped_counter = dropped_ranges_counter(registry)
        self._plans: dict[int, TablePlan] = {}
        self._plans_by_schema: dict[TableSchema, TablePlan] = {}
        self._audit: list[dict[str, object]] = []

    # --- configuration ----------------------------------------------------------------------

    def _compile(self, index: int, rule: MaskingRule) -> CompiledRule:
        name = _rule_name(index, rule)
        where = f"masking rule {name!r} (rules[{index}])"
        strategy_name = rule.strategy
        if strategy_name is None:
            strategy_name = self.config.default_strategies.get(rule.classification)
            if strategy_name is None:
                raise ConfigError(f"{where}: classification {rule.classification!r} has no default strategy; set 'strategy'")
        strategy = self._strategies.get(strategy_name)
        if strategy is None:
            known = ", ".join(sorted(self._strategies))
            raise ConfigError(f"{where}: unknown strategy {strategy_name!r} (known: {known})")
        if rule.apply_to not in ("both", "keys", "values"):
            raise ConfigError(f"{where}: apply_to must be both, keys or values, not {rule.apply_to!r}")
        if not isinstance(rule.options, Mapping):
            raise ConfigError(f"{where}: options must be a mapping")
        context = StrategyContext(
            rule_name=name,
            strategy=strategy_name,
            keys=self.config.keys,
            hmac_key=self.config.hmac_key,
            token_key=self.config.token_key,
            salt_key=self.config.salt_key,
        )
        masker = strategy.compile(rule.options, context)
        cs = self.config.case_sensitive
        return CompiledRule(
            index=index,
            rule=rule,
            name=name,
            strategy=strategy_name,
            masker=masker,
            keyspace=compile_pattern(rule.keyspace, case_sensitive=cs, what=f"{where} keyspace"),
            table=compile_pattern(rule.table, case_sensitive=cs, what=f"{where} table"),
            column=compile_pattern(rule.column, case_sensitive=cs, what=f"{where} column"),
        )

    # --- the transform contract ----------------------------------------------------------------

    async def start(self) -> None:
        log.info(
            "masking.started",
            transform=self.instance_name,
            policy_version=self.policy_version,
            rules=len(self.rules),
            strategies=sorted({r.strategy for r in self.rules}),
            accelerator=self.accelerator,
        )

    def apply(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
        if not self._column_wise:
            return self._apply_by_event(events)
        plans = self._plans
        # the events of each table are masked together (column by column, see TablePlan.mask_batch),
        # then put back in their original order
        groups: dict[int, tuple[TablePlan, list[int]]] = {}
        for i, event in enumerate(events):
            schema = event.schema
            plan = plans.get(id(schema))
            if plan is None or plan.source is not schema:
                plan = self.plan_for(schema)
            group = groups.get(id(plan))
            if group is None:
                groups[id(plan)] = (plan, [i])
            else:
                group[1].append(i)
        masked: list[ChangeEvent | None]
        if len(groups) == 1:
            plan = next(iter(groups.values()))[0]
            masked = list(events) if plan.empty else plan.mask_batch(events)
        else:
            masked = list(events)
            for plan, indexes in groups.values():
                if not plan.empty:
                    for i, result in zip(indexes, plan.mask_batch([events[i] for i in indexes]), strict=True):
                        masked[i] = result
        self._finish_batch()
        # None: a range deletion that cannot be masked faithfully (reported by _finish_batch)
        return [event for event in masked if event is not None]

    def _apply_by_event(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
        """``apply`` without the accelerator: event by event (a Python loop per column would cost more)."""
        plans = self._plans
        out: list[ChangeEvent] = []
        append = out.append
        for event in events:
            schema = event.schema
            plan = plans.get(id(schema))
            if plan is None or plan.source is not schema:
                plan = self.plan_for(schema)
            if plan.empty:
                append(event)
                continue
            masked = plan.mask_event(event)
            if masked is not None:  # None: a range deletion that cannot be masked faithfully (see _finish_batch)
                append(masked)
        self._finish_batch()
        return out

    def audit(self) -> list[dict[str, object]]:
        """What the last ``apply`` masked: per table and rule, the columns and how many values — never a value."""
        return list(self._audit)

    async def close(self) -> None:
        self._plans.clear()
        self._plans_by_schema.clear()

    # --- plans, audit ----------------------------------------------------------------------------

    def plan_for(self, schema: TableSchema) -> TablePlan:
        """The compiled plan of ``schema`` (cached per schema)."""
        plan = self._plans_by_schema.get(schema)
        if plan is None:
            plan = build_plan(schema, self.rules, self.config.cache_size)
            if len(self._plans_by_schema) >= _MAX_PLANS:
                self._plans_by_schema.clear()
            self._plans_by_schema[schema] = plan
            for warning in plan.warnings:
                log.warning("masking.rule_warning", transform=self.instance_name, table=schema.qualified_name, warning=warning)
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[id(schema)] = plan
        if plan.source is not schema:  # an equal schema object: key the id cache by this one
            plan = _rebind(plan, schema)
            self._plans[id(schema)] = plan
        return plan

    def masked_schema(self, schema: TableSchema) -> TableSchema:
        """The schema masked events of ``schema`` carry (masked non-text columns become ``text``)."""
        return self.plan_for(schema).schema

    def _finish_batch(self) -> None:
        records: dict[tuple[str, str, int], dict[str, Any]] = {}
        seen: set[int] = set()
        seen_dropped: set[int] = set()
        for plan in self._plans.values():
            if plan.empty or id(plan) in seen:
                continue
            seen.add(id(plan))
            counts = plan.counts
            for col in plan.columns:
                count = counts[col.index]
                if not count:
                    continue
                counts[col.index] = 0
                table = plan.source.qualified_name
                for rule in col.rules:
                    self._counter.labels(table=table, column=col.name, strategy=rule.strategy).inc(count)
                    record = records.get((plan.source.keyspace, plan.source.table, rule.index))
                    if record is None:
                        record = records[(plan.source.keyspace, plan.source.table, rule.index)] = {
                            "keyspace": plan.source.keyspace,
                            "table": plan.source.table,
                            "columns": [],
                            "rule": rule.name,
                            "strategy": rule.strategy,
                            "classification": rule.rule.classification,
                            "policy_version": self.policy_version,
                            "count": 0,
                        }
                    record["columns"].append(col.name)
                    record["count"] += count
        for record in records.values():
            record["columns"] = sorted(set(record["columns"]))
        audit = list(records.values())
        dropped: dict[tuple[str, str], tuple[TablePlan, int]] = {}
        for plan in self._plans.values():
            if plan.dropped_ranges and id(plan) not in seen_dropped:
                seen_dropped.add(id(plan))
                key = (plan.source.keyspace, plan.source.table)
                previous = dropped.get(key)
                dropped[key] = (plan, plan.dropped_ranges + (previous[1] if previous else 0))
                plan.dropped_ranges = 0
        for (keyspace, table), (plan, count) in dropped.items():
            qualified = f"{keyspace}.{table}"
            self._dropped_counter.labels(table=qualified).inc(count)
            columns = list(plan.unordered_columns)
            log.warning(
                "masking.range_deletion_dropped",
                transform=self.instance_name,
                table=qualified,
                columns=columns,
                count=count,
                reason="range over a clustering column masked without preserving order; masked bounds would delete other rows",
            )
            audit.append(
                {
                    "keyspace": keyspace,
                    "table": table,
                    "columns": columns,
                    "action": "dropped_range_deletion",
                    "reason": "clustering column masked without preserving order",
                    "policy_version": self.policy_version,
                    "count": count,
                }
            )
        self._audit = audit

    # --- tokens ----------------------------------------------------------------------------------

    def _key_bytes(self, key_id: str) -> bytes:
        context = StrategyContext(rule_name="(token verification)", strategy="tokenize", keys=self.config.keys)
        return context.key(key_id, "token")

    def verify_token(self, token: str, value: Any) -> bool:
        """True if ``token`` is ``value``'s token under the key its id names (that key must still be configured)."""
        key_id = identify_token(token)
        if key_id is None or key_id not in self.config.keys:
            return False
        payload = token[len(key_id) + 5 :]
        return hmac.compare_digest(make_token(self._key_bytes(key_id), key_id, value, len(payload) * 6 // 8), token)

    # --- validation -----------------------------------------------------------------------------

    def validate_config(self) -> list[str]:
        """Warnings that need no table schemas (what ``cdc validate`` calls): plain SHA-256 on rules marked
        ``low_entropy`` or whose column pattern names a low-entropy identifier."""
        warnings = []
        for rule in self.rules:
            if rule.strategy == "sha256" and (rule.rule.low_entropy or looks_low_entropy(rule.rule.column)):
                warnings.append(
                    f"masking rule {rule.name!r} uses plain salted SHA-256 on low-entropy column(s) matching {rule.rule.column!r}: "
                    "anyone with the salt can recover the values by enumerating them; use hmac (keyed) or tokenize"
                )
        return warnings

    def validate(self, schemas: Sequence[TableSchema]) -> list[str]:
        """Warnings for these tables: rules that match nothing or are shadowed, low-entropy columns under
        plain SHA-256, key columns masked non-injectively. Errors (null on a key column) raise ConfigError."""
        warnings: list[str] = []
        matched: dict[int, list[str]] = {r.index: [] for r in self.rules}
        won: set[int] = set()
        tables_matched: dict[int, int] = {r.index: 0 for r in self.rules}
        for schema in schemas:
            applicable = [r for r in self.rules if r.keyspace(schema.keyspace) and r.table(schema.table)]
            for rule in applicable:
                tables_matched[rule.index] += 1
            if not applicable:
                continue
            for name in addressable_names(schema):
                first: CompiledRule | None = None
                for rule in applicable:
                    if rule.column(name):
                        matched[rule.index].append(f"{schema.qualified_name}.{name}")
                        if first is None:
                            first = rule
                if first is not None:
                    won.add(first.index)
            plan = build_plan(schema, self.rules, 0)
            warnings.extend(plan.warnings)
        for rule in self.rules:
            where = f"masking rule {rule.name!r}"
            names = matched[rule.index]
            if not tables_matched[rule.index]:
                warnings.append(f"{where} matches no known table (keyspace {rule.rule.keyspace!r}, table {rule.rule.table!r})")
                continue
            if not names:
                warnings.append(f"{where} matches no column of the tables it applies to (column {rule.rule.column!r})")
                continue
            if rule.index not in won:
                warnings.append(f"{where} is shadowed: every column it matches is taken by an earlier rule")
            if rule.strategy == "sha256":
                weak = [n for n in names if rule.rule.low_entropy or looks_low_entropy(n.rsplit(".", 1)[-1])]
                if weak:
                    warnings.append(
                        f"{where} uses plain salted SHA-256 on low-entropy column(s) {', '.join(sorted(set(weak)))}: "
                        "anyone with the salt can recover the values by enumerating them; use hmac (keyed) or tokenize"
                    )
        return warnings


def _rebind(plan: TablePlan, schema: TableSchema) -> TablePlan:
    """A plan equal to ``plan`` but whose ``source`` is ``schema`` (an equal schema object), sharing counters."""
    clone = TablePlan.__new__(TablePlan)
    clone.__dict__.update(plan.__dict__)
    clone.source = schema
    return clone
