"""The decoder's fast paths (compiled per-header row decoders, struct clustering, slot constructors)
give exactly what the general code gives, on every kind of cell, and fail the same way."""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_core.commitlog import mutation
from cdc_core.commitlog.events_builder import build_events
from cdc_core.commitlog.mutation import TableDecoder, decode_mutation, first_table_id
from cdc_core.commitlog.reader import _DECODE_ERRORS
from cdc_core.commitlog.schema_source import load_schema_snapshot
from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Deletion, Liveness
from cdc_core.fastobj import (
    new_cell,
    new_complex,
    new_deletion,
    new_event,
    new_liveness,
    new_position,
    new_uuid,
    slot_constructor,
)
from cdc_core.positions import Position
from commitlog.helpers import FIXTURES, TS_EPOCH, uvint

TABLE_ID = uuid.UUID("0b2d9f30-1c1e-11ee-8a6f-0800200c9a66")
# (name, type, encoded size or None for length-prefixed) of the regular columns, in header order
COLUMNS = [
    ("c1", "text", None),
    ("c2", "int", 4),
    ("c3", "bigint", 8),
    ("c4", "double", 8),
    ("c5", "boolean", 1),
    ("c6", "timestamp", 8),
    ("c7", "uuid", 16),
    ("c8", "text", None),
    ("c9", "blob", None),
]
TS = 1_700_000_000_000_000
LDT = 1_700_000_000


def _schema(tmp_path: Path) -> TableDecoder:
    cols = [
        {"name": "id", "type": "bigint", "kind": "partition_key", "position": 0, "clustering_order": "none"},
        {"name": "seq", "type": "int", "kind": "clustering", "position": 0, "clustering_order": "asc"},
        *({"name": n, "type": t, "kind": "regular", "position": -1, "clustering_order": "none"} for n, t, _ in COLUMNS),
    ]
    snap = {
        "format": "cdc-schema-snapshot",
        "version": 1,
        "tables": [{"keyspace": "ks", "table": "w", "id": str(TABLE_ID), "cdc": True, "columns": cols, "dropped": []}],
        "table_names": {str(TABLE_ID): "ks.w"},
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(snap))
    catalog = load_schema_snapshot(path)
    return TableDecoder(catalog.tables[TABLE_ID])


def _value(typ: str, draw_value: Any) -> bytes:
    if typ == "text":
        return str(draw_value).encode()
    if typ == "blob":
        return bytes(draw_value)
    fmt = {"int": ">i", "bigint": ">q", "double": ">d", "boolean": ">B", "timestamp": ">q"}.get(typ)
    if fmt is not None:
        return struct.pack(fmt, draw_value)
    assert typ == "uuid"
    return uuid.UUID(int=draw_value).bytes


# cell kinds: plain (the fast case), explicit timestamp, expiring, tombstone, empty value
KINDS = ["plain", "ts", "ttl", "deleted", "empty"]


def _cell(kind: str, size: int | None, raw: bytes) -> bytes:
    def body(v: bytes) -> bytes:
        return (uvint(len(v)) if size is None else b"") + v

    if kind == "plain":
        return b"\x08" + body(raw)
    if kind == "ts":
        return b"\x00" + uvint(5) + body(raw)
    if kind == "ttl":
        return b"\x02" + uvint(7) + uvint(100) + uvint(3600) + body(raw)
    if kind == "deleted":
        return b"\x05" + uvint(9) + uvint(50)
    assert kind == "empty"
    return b"\x0c"


def _mutation(pk: int, seq: int, cells: list[bytes], clustering_empty: bool = False) -> bytes:
    header = uvint(len(COLUMNS)) + b"".join(uvint(len(n)) + n.encode() for n, _, _ in COLUMNS)
    clustering = b"\x01" if clustering_empty else b"\x00" + struct.pack(">i", seq)
    return (
        uvint(1)
        + TABLE_ID.bytes
        + uvint(8)
        + struct.pack(">q", pk)
        + b"\x10"  # HAS_ROW_ESTIMATE
        + uvint(TS - TS_EPOCH)
        + uvint(LDT - 1442880000)
        + uvint(0)
        + header
        + uvint(1)
        + b"\x24"  # HAS_TIMESTAMP | HAS_ALL_COLUMNS
        + clustering
        + uvint(0)  # row timestamp = min timestamp
        + b"".join(cells)
        + b"\x01"
    )


@contextmanager
def _no_fast_paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as m:
        m.setattr(mutation, "compile_fast_cells", lambda columns: None)
        m.setattr(mutation, "compile_fast_clustering", lambda specs, names: None)
        m.setattr(mutation, "FAST_COMPLEX", False)
        yield


def _events(table: TableDecoder, data: bytes) -> list[ChangeEvent]:
    return build_events(decode_mutation(data, lambda raw: table, 12), "n", 1, 100)


def _outcome(table: TableDecoder, data: bytes) -> list[ChangeEvent] | str:
    """The events, or "corrupt" for any exception the reader treats as a corrupt mutation."""
    try:
        return _events(table, data)
    except _DECODE_ERRORS:
        return "corrupt"


value_strategies: dict[str, st.SearchStrategy[Any]] = {
    "text": st.text(max_size=200),
    "int": st.integers(-(1 << 31), (1 << 31) - 1),
    "bigint": st.integers(-(1 << 63), (1 << 63) - 1),
    "double": st.floats(allow_nan=False),
    "boolean": st.integers(0, 255),
    "timestamp": st.one_of(st.integers(-(10**12), 10**13), st.integers(-(1 << 63), (1 << 63) - 1)),
    "uuid": st.integers(0, (1 << 128) - 1),
    "blob": st.binary(max_size=150),
}


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fast_row_equals_general_path(data: st.DataObject, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("fast")
    kinds = [data.draw(st.sampled_from(KINDS) if data.draw(st.booleans()) else st.just("plain")) for _ in COLUMNS]
    cells = [_cell(k, size, _value(t, data.draw(value_strategies[t]))) for k, (_, t, size) in zip(kinds, COLUMNS, strict=True)]
    raw = _mutation(data.draw(st.integers(-(1 << 63), (1 << 63) - 1)), data.draw(value_strategies["int"]), cells, data.draw(st.booleans()))
    fast_table = _schema(tmp)
    with pytest.MonkeyPatch.context() as mp, _no_fast_paths(mp):
        slow_table = _schema(tmp)
        assert slow_table.fast_clustering is None
    assert fast_table.fast_clustering is not None
    assert _outcome(fast_table, raw) == _outcome(slow_table, raw)


def test_plain_insert_takes_the_fast_path_and_decodes(tmp_path: Path) -> None:
    table = _schema(tmp_path)
    values: list[Any] = ["x" * 300, -5, 1 << 40, 2.5, 1, 1_700_000_000_000, 42, "", b"\x00\x01"]
    raws = [_value(t, v) for (_, t, _), v in zip(COLUMNS, values, strict=True)]
    raw = _mutation(7, 3, [_cell("plain", size, r) for (_, _, size), r in zip(COLUMNS, raws, strict=True)])
    calls: list[bool] = []
    (event,) = _events(table, raw)
    (cached,) = table._headers.values()
    assert cached.fast_all is not None
    original = cached.fast_all

    def spy(buf: bytes, pos: int, ts: int) -> Any:
        got = original(buf, pos, ts)
        calls.append(got is not None)
        return got

    cached.fast_all = spy
    assert _events(table, raw) == [event]
    assert calls == [True]
    assert event.kind is ChangeKind.ROW
    assert dict(event.key) == {"id": 7, "seq": 3}
    assert event.liveness == Liveness(timestamp=TS)
    got = {name: cell.value for name, cell in event.cells.items() if isinstance(cell, Cell)}
    assert got["c1"] == "x" * 300
    assert (got["c2"], got["c3"], got["c4"], got["c5"]) == (-5, 1 << 40, 2.5, True)
    assert got["c6"].year == 2023
    assert (got["c7"], got["c8"], got["c9"]) == (uuid.UUID(int=42), "", b"\x00\x01")
    assert all(isinstance(c, Cell) and c == Cell(timestamp=TS, value=c.value) for c in event.cells.values())


def test_truncated_and_padded_rows_fail_like_the_general_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_table = _schema(tmp_path)
    with _no_fast_paths(monkeypatch):
        slow_table = _schema(tmp_path)
    values: list[Any] = ["abc", 1, 2, 3.0, 0, 5, 6, "def", b"g"]
    raw = _mutation(1, 2, [_cell("plain", s, _value(t, v)) for (_, t, s), v in zip(COLUMNS, values, strict=True)])
    for cut in range(1, len(raw)):
        assert _outcome(fast_table, raw[:cut]) == _outcome(slow_table, raw[:cut]) == "corrupt", cut
    assert _outcome(fast_table, raw + b"\x00") == _outcome(slow_table, raw + b"\x00") == "corrupt"


@pytest.mark.parametrize("version", [7, 8])
def test_recorded_segments_decode_the_same_without_fast_paths(version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdc_core.commitlog.segment import MutationEntry, Section, SegmentCursor, iter_entries, parse_segment_name

    directory = FIXTURES / f"v{version}"
    catalog = load_schema_snapshot(directory / "schema.json")

    def decode_all() -> list[ChangeEvent]:
        decoders = {t.bytes: TableDecoder(s, catalog.dropped_types.get(t)) for t, s in catalog.tables.items()}
        out: list[ChangeEvent] = []
        for path in sorted(directory.glob("*.log")):
            name = parse_segment_name(path)
            assert name is not None
            for section in SegmentCursor(name).sections(None):
                if not isinstance(section, Section):
                    break
                for entry in iter_entries(section):
                    assert isinstance(entry, MutationEntry)
                    if first_table_id(entry.data) not in decoders:
                        continue
                    updates = decode_mutation(entry.data, decoders.__getitem__, 12 if version == 7 else 13)
                    out += build_events(updates, "n", name.segment_id, entry.end)
        return out

    fast = decode_all()
    with _no_fast_paths(monkeypatch):
        slow = decode_all()
    assert len(fast) >= 36
    assert fast == slow


def test_slot_constructors_equal_attrs_init() -> None:
    assert new_cell(1, "v", False, None, None) == Cell(timestamp=1, value="v")
    assert new_cell(1, None, True, 5, 6) == Cell(timestamp=1, tombstone=True, ttl=5, local_deletion_time=6)
    assert new_liveness(3, None, None) == Liveness(timestamp=3)
    assert new_deletion(5, 6) == Deletion(timestamp=5, local_deletion_time=6)
    assert new_complex(None, ()) == ComplexChange()
    assert new_position("n", 1, 2, 3) == Position("n", 1, 2, 3)
    assert hash(new_cell(1, "v", False, None, None)) == hash(Cell(timestamp=1, value="v"))
    assert repr(new_liveness(3, 4, 5)) == repr(Liveness(timestamp=3, ttl=4, local_deletion_time=5))
    u = uuid.uuid4()
    assert new_uuid(u.bytes) == u
    assert new_uuid(u.bytes).is_safe == uuid.UUID(bytes=u.bytes).is_safe
    assert str(new_uuid(u.bytes)) == str(u)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        new_cell(1, "v", False, None, None).value = 2  # type: ignore[misc]
    assert new_event is not None


def test_slot_constructor_refuses_classes_it_would_change() -> None:
    @attrs.frozen
    class Validated:
        x: int = attrs.field(validator=attrs.validators.instance_of(int))

    @attrs.frozen
    class PostInit:
        x: int

        def __attrs_post_init__(self) -> None:
            pass

    @attrs.define(slots=False)
    class NoSlots:
        x: int

    @attrs.frozen
    class Two:
        x: int
        y: int

    for cls in (Validated, PostInit, NoSlots):
        with pytest.raises(TypeError):
            slot_constructor(cls, ("x",))
    with pytest.raises(TypeError):
        slot_constructor(Two, ("x",))  # a slot would stay unset
    assert slot_constructor(Two, ("y", "x"))(1, 2) == Two(x=2, y=1)
