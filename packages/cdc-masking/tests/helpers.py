"""Shared builders for the masking tests."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ColumnKind, ColumnSchema, TableSchema
from cdc_masking import MaskingConfig, MaskingTransform, structure_config

KEYS: dict[str, str] = {
    "hmac": "test-hmac-key-0123456789abcdef0123456789",
    "other": "other-hmac-key-0123456789abcdef012345678",
    "v1": "token-key-version-1-0123456789abcdef0123",
    "v2": "token-key-version-2-0123456789abcdef0123",
    "salt": "salt-for-sha256-0123456789abcdef01234567",
}
TS = 1_700_000_000_000_000

PK = ColumnKind.PARTITION_KEY
CK = ColumnKind.CLUSTERING
REG = ColumnKind.REGULAR
STATIC = ColumnKind.STATIC


def config(rules: Sequence[Mapping[str, Any]], **extra: Any) -> MaskingConfig:
    obj: dict[str, Any] = {"policy_version": "test-1", "keys": dict(KEYS), "token_key": "v1", "rules": [dict(r) for r in rules]}
    obj.update(extra)
    return structure_config(obj)


def transform(rules: Sequence[Mapping[str, Any]], **extra: Any) -> MaskingTransform:
    return MaskingTransform(config(rules, **extra), registry=CollectorRegistry())


def table(columns: Sequence[tuple[str, str, ColumnKind]], keyspace: str = "ks", name: str = "t") -> TableSchema:
    cols = []
    positions: dict[ColumnKind, int] = {}
    for col_name, typ, kind in columns:
        pos = positions.get(kind, 0)
        positions[kind] = pos + 1
        cols.append(ColumnSchema(name=col_name, type=typ, kind=kind, position=pos if kind in (PK, CK) else 0))
    return TableSchema(keyspace=keyspace, table=name, id=uuid.uuid5(uuid.NAMESPACE_DNS, f"{keyspace}.{name}"), columns=tuple(cols))


def row(schema: TableSchema, key: Mapping[str, Any], cells: Mapping[str, Any], *, index: int = 0) -> ChangeEvent:
    """A row event; plain values in ``cells`` become live Cells, Cell/ComplexChange are kept."""
    built: dict[str, Cell | ComplexChange] = {}
    for name, value in cells.items():
        built[name] = value if isinstance(value, Cell | ComplexChange) else Cell(timestamp=TS, value=value)
    return ChangeEvent(
        position=Position(node="n1", segment_id=1, offset=10 + index, index=0),
        schema=schema,
        kind=ChangeKind.ROW,
        key=dict(key),
        liveness=Liveness(timestamp=TS),
        cells=built,
    )
