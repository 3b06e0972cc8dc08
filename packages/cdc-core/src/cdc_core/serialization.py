"""The JSON form of events (versioned, documented in docs/events.md) through one cattrs converter.

Values are written with the JSON form of their CQL type (see :mod:`cdc_core.cqltypes`); the
event's schema travels with it, so reading a line back needs nothing else.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import cattrs
import orjson
from cattrs.preconf.json import make_converter

from cdc_core.cqltypes import CqlType, value_from_json, value_to_json
from cdc_core.events import (
    Cell,
    ChangeEvent,
    ChangeKind,
    ComplexChange,
    Deletion,
    ElementChange,
    Liveness,
    RangeBound,
    RangeDeletion,
)
from cdc_core.positions import Position
from cdc_core.schema import ColumnSchema, TableSchema

__all__ = [
    "EVENT_FORMAT_VERSION",
    "EventDecodeError",
    "converter",
    "event_from_dict",
    "event_from_json",
    "event_to_dict",
    "event_to_json",
    "events_from_jsonl",
]

EVENT_FORMAT_VERSION = 1


class EventDecodeError(ValueError):
    """A JSON document is not a valid event of a known format version."""


converter = make_converter(forbid_extra_keys=True)
converter.register_unstructure_hook(uuid.UUID, str)
converter.register_structure_hook(uuid.UUID, lambda v, _: uuid.UUID(v))


def _path_type(col_type: CqlType) -> CqlType:
    if col_type.name == "list":
        return CqlType("timeuuid")
    if col_type.name in ("set", "map"):
        return col_type.params[0]
    return CqlType("text")  # udt field name


def _element_type(col_type: CqlType, path: Any) -> CqlType | None:
    if col_type.name == "list":
        return col_type.params[0]
    if col_type.name == "map":
        return col_type.params[1]
    if col_type.name == "udt":
        return col_type.params[col_type.field_names.index(path)]
    return None  # set elements carry no value


def _cell_to_json(cell: Cell, typ: CqlType | None) -> dict[str, Any]:
    out: dict[str, Any] = {"ts": cell.timestamp}
    if cell.tombstone:
        out["tombstone"] = True
    elif typ is not None:
        out["value"] = value_to_json(cell.value, typ)
    if cell.ttl is not None:
        out["ttl"] = cell.ttl
    if cell.local_deletion_time is not None:
        out["ldt"] = cell.local_deletion_time
    return out


def _cell_from_json(obj: Mapping[str, Any], typ: CqlType | None) -> Cell:
    tombstone = bool(obj.get("tombstone", False))
    value = None if tombstone or typ is None else value_from_json(obj.get("value"), typ)
    return Cell(timestamp=int(obj["ts"]), value=value, tombstone=tombstone, ttl=obj.get("ttl"), local_deletion_time=obj.get("ldt"))


def _schema_column(schema: TableSchema, name: str) -> ColumnSchema:
    try:
        return schema.by_name[name]
    except KeyError:
        raise EventDecodeError(f"column {name!r} is not in the event's schema of {schema.qualified_name}") from None


def _key_to_json(schema: TableSchema, key: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value_to_json(v, _schema_column(schema, name).cql_type) for name, v in key.items()}


def _bound_values(schema: TableSchema, values: tuple[Any, ...], to_json: bool) -> list[Any]:
    conv = value_to_json if to_json else value_from_json
    return [conv(v, col.cql_type) for v, col in zip(values, schema.clustering, strict=False)]


def event_to_dict(event: ChangeEvent) -> dict[str, Any]:
    """The JSON-able dict of one event (format version :data:`EVENT_FORMAT_VERSION`)."""
    schema = event.schema
    out: dict[str, Any] = {
        "v": EVENT_FORMAT_VERSION,
        "position": converter.unstructure(event.position),
        "schema": converter.unstructure(schema),
        "kind": event.kind.value,
        "key": _key_to_json(schema, event.key),
    }
    if event.static:
        out["static"] = True
    for name in ("liveness", "row_deletion", "partition_deletion"):
        value = getattr(event, name)
        if value is not None:
            out[name] = converter.unstructure(value)
    if event.range_deletion is not None:
        rd = event.range_deletion
        out["range_deletion"] = {
            "start": None
            if rd.start is None
            else {"values": _bound_values(schema, rd.start.values, True), "inclusive": rd.start.inclusive},
            "end": None if rd.end is None else {"values": _bound_values(schema, rd.end.values, True), "inclusive": rd.end.inclusive},
            "deletion": converter.unstructure(rd.deletion),
        }
    cells: dict[str, Any] = {}
    for name, change in event.cells.items():
        typ = _schema_column(schema, name).cql_type
        if isinstance(change, Cell):
            cells[name] = _cell_to_json(change, typ)
        else:
            path_t = _path_type(typ)
            cells[name] = {
                "deletion": None if change.deletion is None else converter.unstructure(change.deletion),
                "elements": [
                    {"path": value_to_json(e.path, path_t), **_cell_to_json(e.cell, _element_type(typ, e.path))} for e in change.elements
                ],
            }
    if cells:
        out["cells"] = cells
    return out


def event_from_dict(obj: Mapping[str, Any]) -> ChangeEvent:
    """Inverse of :func:`event_to_dict`; errors name what is wrong."""
    try:
        version = obj.get("v")
        if version != EVENT_FORMAT_VERSION:
            raise EventDecodeError(f"unsupported event format version {version!r} (this build reads {EVENT_FORMAT_VERSION})")
        schema = converter.structure(obj["schema"], TableSchema)
        key = {name: value_from_json(v, _schema_column(schema, name).cql_type) for name, v in obj["key"].items()}
        cells: dict[str, Cell | ComplexChange] = {}
        for name, c in obj.get("cells", {}).items():
            typ = _schema_column(schema, name).cql_type
            if "elements" in c:
                path_t = _path_type(typ)
                elements = []
                for e in c["elements"]:
                    path = value_from_json(e["path"], path_t)
                    elements.append(ElementChange(path=path, cell=_cell_from_json(e, _element_type(typ, path))))
                deletion = None if c.get("deletion") is None else converter.structure(c["deletion"], Deletion)
                cells[name] = ComplexChange(deletion=deletion, elements=tuple(elements))
            else:
                cells[name] = _cell_from_json(c, typ)
        rd = obj.get("range_deletion")
        range_deletion = None
        if rd is not None:
            range_deletion = RangeDeletion(
                start=None
                if rd["start"] is None
                else RangeBound(
                    values=tuple(_bound_values(schema, tuple(rd["start"]["values"]), False)), inclusive=rd["start"]["inclusive"]
                ),
                end=None
                if rd["end"] is None
                else RangeBound(values=tuple(_bound_values(schema, tuple(rd["end"]["values"]), False)), inclusive=rd["end"]["inclusive"]),
                deletion=converter.structure(rd["deletion"], Deletion),
            )
        return ChangeEvent(
            position=converter.structure(obj["position"], Position),
            schema=schema,
            kind=ChangeKind(obj["kind"]),
            key=key,
            static=bool(obj.get("static", False)),
            liveness=None if obj.get("liveness") is None else converter.structure(obj["liveness"], Liveness),
            row_deletion=None if obj.get("row_deletion") is None else converter.structure(obj["row_deletion"], Deletion),
            partition_deletion=None if obj.get("partition_deletion") is None else converter.structure(obj["partition_deletion"], Deletion),
            range_deletion=range_deletion,
            cells=cells,
        )
    except EventDecodeError:
        raise
    except KeyError as exc:
        raise EventDecodeError(f"not a valid event: missing field {exc}") from None
    except (TypeError, ValueError, IndexError, cattrs.BaseValidationError) as exc:
        # The message of a value error may quote the value (unmasked PII): name only its kind.
        raise EventDecodeError(f"not a valid event: a field has the wrong form ({type(exc).__name__})") from None


def event_to_json(event: ChangeEvent) -> bytes:
    """One event as one line of compact JSON (no trailing newline)."""
    return orjson.dumps(event_to_dict(event))


def event_from_json(data: bytes | str) -> ChangeEvent:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise EventDecodeError("an event must be a JSON object")
    return event_from_dict(obj)


def events_from_jsonl(lines: bytes) -> list[ChangeEvent]:
    return [event_from_json(line) for line in lines.splitlines() if line.strip()]
