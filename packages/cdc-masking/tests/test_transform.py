"""The transform: every place a value can be, schema retyping, audit, metrics, validation."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import attrs
import pytest
import structlog
from frozendict import frozendict
from helpers import CK, PK, REG, STATIC, TS, config, row, table, transform
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from cdc_core.errors import ConfigError
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
from cdc_core.serialization import event_from_json, event_to_json
from cdc_core.testing.model import latest_state
from cdc_core.transforms import Transform
from cdc_masking import MaskingTransform, identify_token

ADDRESS = "udt<ks.address>{street:text,zip:int,geo:frozen<udt<ks.geo>{lat:double,label:text}>}"


def hmac_of(t: MaskingTransform, value: Any) -> str:
    """What the transform's first hmac rule makes of ``value`` (same key: same output)."""
    rule = next(r for r in t.rules if r.strategy == "hmac")
    return rule.masker.mask(value)  # type: ignore[no-any-return]


def roundtrip(event: ChangeEvent) -> None:
    """The masked event serializes losslessly under its (retyped) schema: a sink can store it."""
    assert event_from_json(event_to_json(event)) == event


def test_is_a_transform() -> None:
    assert isinstance(transform([]), Transform)


def test_unmatched_tables_pass_through_untouched() -> None:
    t = transform([{"keyspace": "other", "column": "*"}])
    schema = table([("id", "text", PK), ("ssn", "text", REG)])
    event = row(schema, {"id": "a"}, {"ssn": "123-45-6789"})
    assert t.apply([event])[0] is event
    assert t.audit() == []


def test_regular_cells_masked_and_not_written_stays_not_written() -> None:
    t = transform([{"column": "ssn"}])
    schema = table([("id", "text", PK), ("ssn", "text", REG), ("other", "text", REG), ("email", "text", REG)])
    event = row(schema, {"id": "a"}, {"ssn": "123-45-6789", "other": "keep"})
    out = t.apply([event])[0]
    assert out.cells["ssn"].value == hmac_of(t, "123-45-6789")  # type: ignore[union-attr]
    assert out.cells["ssn"].timestamp == TS  # type: ignore[union-attr]
    assert out.cells["other"] == event.cells["other"]
    assert "email" not in out.cells  # "not written" is not turned into anything
    assert out.key == {"id": "a"} and out.position == event.position and out.liveness == event.liveness
    roundtrip(out)


def test_tombstones_and_ttl_kept() -> None:
    t = transform([{"column": "ssn"}])
    schema = table([("id", "text", PK), ("ssn", "text", REG)])
    tomb = Cell(timestamp=TS, tombstone=True, local_deletion_time=1)
    expiring = Cell(timestamp=TS, value="123", ttl=60, local_deletion_time=99)
    out = t.apply([row(schema, {"id": "a"}, {"ssn": tomb}), row(schema, {"id": "b"}, {"ssn": expiring})])
    assert out[0].cells["ssn"] == tomb
    masked = out[1].cells["ssn"]
    assert isinstance(masked, Cell) and masked.ttl == 60 and masked.local_deletion_time == 99 and masked.value != "123"


def test_key_columns_masked_deterministically_so_upserts_converge() -> None:
    t = transform([{"column": "email"}, {"column": "phone", "classification": "phi"}])
    schema = table([("email", "text", PK), ("phone", "text", CK), ("v", "int", REG)])
    first = row(schema, {"email": "a@b.c", "phone": "555"}, {"v": 1})
    second = row(schema, {"email": "a@b.c", "phone": "555"}, {"v": 2}, index=1)
    other = row(schema, {"email": "x@b.c", "phone": "555"}, {"v": 3}, index=2)
    out = t.apply([first, second, other])
    assert out[0].key == out[1].key
    assert out[0].key["email"] == hmac_of(t, "a@b.c")
    assert identify_token(out[0].key["phone"]) == "v1"
    assert out[2].key["email"] != out[0].key["email"]
    # a second transform instance (another agent, a restart) gives the same keys
    assert transform([{"column": "email"}, {"column": "phone", "classification": "phi"}]).apply([first])[0].key == out[0].key


def test_deletion_events_keys_and_range_bounds_masked() -> None:
    t = transform([{"column": "email"}, {"column": "day"}])
    schema = table([("email", "text", PK), ("day", "date", CK), ("seq", "int", CK), ("v", "int", REG)])
    position = Position(node="n1", segment_id=1, offset=5)
    d = Deletion(timestamp=TS, local_deletion_time=1)
    partition = ChangeEvent(
        position=position, schema=schema, kind=ChangeKind.PARTITION_DELETE, key={"email": "a@b.c"}, partition_deletion=d
    )
    row_del = ChangeEvent(
        position=position, schema=schema, kind=ChangeKind.ROW, key={"email": "a@b.c", "day": dt.date(2020, 1, 1), "seq": 3}, row_deletion=d
    )

    def range_delete(start: RangeBound | None, end: RangeBound | None) -> ChangeEvent:
        return ChangeEvent(
            position=position,
            schema=schema,
            kind=ChangeKind.RANGE_DELETE,
            key={"email": "a@b.c"},
            range_deletion=RangeDeletion(start=start, end=end, deletion=d),
        )

    day = dt.date(2020, 1, 1)
    # day = x AND seq >= 7 AND seq < 9: equal on the masked column, ordered only on the unmasked one
    rng = range_delete(RangeBound(values=(day, 7), inclusive=True), RangeBound(values=(day, 9), inclusive=False))
    point = range_delete(RangeBound(values=(day,), inclusive=True), RangeBound(values=(day,), inclusive=True))  # day = x
    unbounded = range_delete(None, None)  # every row of the partition
    # ordered on the masked column: masked bounds would select unrelated rows, so these are dropped
    wide = range_delete(RangeBound(values=(day, 7), inclusive=True), RangeBound(values=(dt.date(2020, 2, 1),), inclusive=False))
    half = range_delete(None, RangeBound(values=(dt.date(2020, 2, 1),), inclusive=True))
    out = t.apply([partition, row_del, rng, wide, point, half, unbounded])
    assert len(out) == 5
    masked_email = hmac_of(t, "a@b.c")
    assert all(e.key["email"] == masked_email for e in out)
    assert out[0].partition_deletion == d
    assert out[1].key["day"] == hmac_of(t, day) and out[1].key["seq"] == 3
    rd = out[2].range_deletion
    assert rd is not None and rd.start is not None and rd.end is not None
    assert rd.start.values == (hmac_of(t, day), 7) and rd.start.inclusive
    assert rd.end.values == (hmac_of(t, day), 9) and not rd.end.inclusive
    assert rd.deletion == d
    # bounds and keys of one clustering value agree, so exact ranges still cover the masked rows
    assert out[1].key["day"] == rd.start.values[0]
    rd = out[3].range_deletion
    assert rd is not None and rd.start is not None and rd.end is not None
    assert rd.start.values == rd.end.values == (hmac_of(t, day),) and rd.start.inclusive and rd.end.inclusive
    assert out[4].range_deletion is not None and out[4].range_deletion.start is None and out[4].range_deletion.end is None
    for e in out:
        roundtrip(e)


def _range_table_events(schema: Any) -> list[ChangeEvent]:
    return [row(schema, {"pk": 1, "ck": i}, {"v": f"r{i}"}, index=i) for i in range(10)]


def _range(schema: Any, start: RangeBound | None, end: RangeBound | None, offset: int = 100) -> ChangeEvent:
    return ChangeEvent(
        position=Position(node="n1", segment_id=1, offset=offset),
        schema=schema,
        kind=ChangeKind.RANGE_DELETE,
        key={"pk": 1},
        range_deletion=RangeDeletion(start=start, end=end, deletion=Deletion(timestamp=TS + 1, local_deletion_time=0)),
    )


def test_range_deletion_over_masked_clustering_column_is_dropped_not_misapplied() -> None:
    # Regression: [hmac(3), hmac(6)] was emitted as the masked range; hex strings do not sort like the
    # numbers, so downstream it deleted arbitrary rows (or none) instead of rows 3..6.
    registry = CollectorRegistry()
    t = MaskingTransform(config([{"table": "t", "column": "ck", "strategy": "hmac", "name": "ck-rule"}]), registry=registry)
    schema = table([("pk", "int", PK), ("ck", "int", CK), ("v", "text", REG)])
    evs = _range_table_events(schema)
    wide = _range(schema, RangeBound(values=(3,), inclusive=True), RangeBound(values=(6,), inclusive=True))
    with structlog.testing.capture_logs() as logs:
        out = t.apply([*evs, wide])
    assert len(out) == len(evs) and all(e.kind is ChangeKind.ROW for e in out)
    masked_rows = latest_state(out, now=0).rows
    assert len(masked_rows) == 10  # no row deleted wrongly (rows 3..6 stay: the documented limitation)
    dropped = [r for r in t.audit() if r.get("action") == "dropped_range_deletion"]
    assert dropped == [
        {
            "keyspace": "ks",
            "table": "t",
            "columns": ["ck"],
            "action": "dropped_range_deletion",
            "reason": "clustering column masked without preserving order",
            "policy_version": "test-1",
            "count": 1,
        }
    ]
    (warning,) = [e for e in logs if e["event"] == "masking.range_deletion_dropped"]
    assert warning["log_level"] == "warning" and warning["table"] == "ks.t" and warning["columns"] == ["ck"]
    assert set(warning) == {"event", "log_level", "transform", "table", "columns", "count", "reason"}  # names, never values
    assert registry.get_sample_value("cdc_masking_dropped_range_deletions_total", {"table": "ks.t"}) == 1
    t.apply([])  # the next batch's audit does not repeat it
    assert not [r for r in t.audit() if r.get("action")]
    assert any("clustering column ks.t.ck" in w and "does not preserve order" in w for w in t.validate([schema]))


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (RangeBound(values=(4,), inclusive=True), RangeBound(values=(4,), inclusive=True)),  # ck = 4
        (None, None),  # the partition's rows
    ],
)
def test_point_range_deletion_over_masked_clustering_column_is_exact(start: RangeBound | None, end: RangeBound | None) -> None:
    t = transform([{"table": "t", "column": "ck", "strategy": "hmac"}])
    schema = table([("pk", "int", PK), ("ck", "int", CK), ("v", "text", REG)])
    evs = [*_range_table_events(schema), _range(schema, start, end)]
    raw = latest_state(evs, now=0).rows
    masked = latest_state(t.apply(evs), now=0).rows
    assert sorted(r["v"] for r in masked.values()) == sorted(r["v"] for r in raw.values())
    assert len(raw) < 10


def test_range_on_unmasked_clustering_suffix_is_exact() -> None:
    t = transform([{"table": "t", "column": "c1", "strategy": "hmac"}])
    schema = table([("pk", "int", PK), ("c1", "text", CK), ("c2", "int", CK), ("v", "text", REG)])
    evs = [row(schema, {"pk": 1, "c1": c1, "c2": i}, {"v": f"{c1}{i}"}, index=i) for c1 in ("a", "b") for i in range(6)]
    evs.append(_range(schema, RangeBound(values=("a", 1), inclusive=False), RangeBound(values=("a", 4), inclusive=True)))
    raw = latest_state(evs, now=0).rows
    masked = latest_state(t.apply(evs), now=0).rows
    assert sorted(r["v"] for r in masked.values()) == sorted(r["v"] for r in raw.values())
    assert len(raw) == 9


def test_non_frozen_set_elements_are_paths() -> None:
    t = transform([{"column": "emails"}])
    schema = table([("id", "int", PK), ("emails", "set<text>", REG)])
    change = ComplexChange(
        deletion=Deletion(timestamp=TS - 1, local_deletion_time=1),
        elements=(
            ElementChange(path="a@x.org", cell=Cell(timestamp=TS)),
            ElementChange(path="b@x.org", cell=Cell(timestamp=TS, tombstone=True, local_deletion_time=1)),
        ),
    )
    out = t.apply([row(schema, {"id": 1}, {"emails": change})])[0]
    masked = out.cells["emails"]
    assert isinstance(masked, ComplexChange)
    assert masked.deletion == change.deletion
    assert [e.path for e in masked.elements] == [hmac_of(t, "a@x.org"), hmac_of(t, "b@x.org")]
    assert masked.elements[1].cell.tombstone  # removing an element stays a removal, of the masked element
    roundtrip(out)


def test_non_frozen_map_keys_and_values() -> None:
    schema = table([("id", "int", PK), ("phones", "map<text, int>", REG)])
    change = ComplexChange(
        elements=(
            ElementChange(path="home", cell=Cell(timestamp=TS, value=5551234)),
            ElementChange(path="work", cell=Cell(timestamp=TS, tombstone=True, local_deletion_time=1)),
        )
    )
    event = row(schema, {"id": 1}, {"phones": change})
    for apply_to, key_masked, value_masked in (("both", True, True), ("keys", True, False), ("values", False, True)):
        t = transform([{"column": "phones", "apply_to": apply_to}])
        out = t.apply([event])[0]
        masked = out.cells["phones"]
        assert isinstance(masked, ComplexChange)
        home, work = masked.elements
        assert (home.path == hmac_of(t, "home")) is key_masked and (home.path == "home") is not key_masked
        assert (home.cell.value == hmac_of(t, 5551234)) is value_masked
        assert work.cell.tombstone and work.cell.value is None
        expected_type = {"both": "map<text, text>", "keys": "map<text, int>", "values": "map<text, text>"}[apply_to]
        assert out.schema.by_name["phones"].type == expected_type
        roundtrip(out)


def test_non_frozen_list_values_masked_paths_kept() -> None:
    t = transform([{"column": "ssns"}])
    schema = table([("id", "int", PK), ("ssns", "list<bigint>", REG)])
    path = uuid.uuid1()
    event = row(schema, {"id": 1}, {"ssns": ComplexChange(elements=(ElementChange(path=path, cell=Cell(timestamp=TS, value=123456789)),))})
    out = t.apply([event])[0]
    masked = out.cells["ssns"]
    assert isinstance(masked, ComplexChange)
    assert masked.elements[0].path == path and masked.elements[0].cell.value == hmac_of(t, 123456789)
    assert out.schema.by_name["ssns"].type == "list<text>"
    roundtrip(out)


def test_frozen_collections_masked_element_wise() -> None:
    t = transform([{"column": "tags"}, {"column": "scores"}])
    schema = table([("id", "int", PK), ("tags", "frozen<set<text>>", REG), ("scores", "frozen<map<text, int>>", REG)])
    event = row(schema, {"id": 1}, {"tags": ("a", "b"), "scores": frozendict({"alice": 1})})
    out = t.apply([event])[0]
    assert out.cells["tags"].value == (hmac_of(t, "a"), hmac_of(t, "b"))  # type: ignore[union-attr]
    assert out.cells["scores"].value == frozendict({hmac_of(t, "alice"): hmac_of(t, 1)})  # type: ignore[union-attr]
    assert out.schema.by_name["tags"].type == "frozen<set<text>>"
    assert out.schema.by_name["scores"].type == "frozen<map<text, text>>"
    roundtrip(out)


def test_udt_fields_addressable_frozen_nonfrozen_nested_and_in_collections() -> None:
    t = transform(
        [
            {"column": "home.street", "strategy": "redact"},
            {"column": "*.geo.label"},
            {"column": "work.zip"},
            {"column": "past.street", "strategy": "null"},
        ]
    )
    schema = table(
        [("id", "int", PK), ("home", f"frozen<{ADDRESS}>", REG), ("work", ADDRESS, REG), ("past", f"list<frozen<{ADDRESS}>>", REG)]
    )
    geo = frozendict({"lat": 1.5, "label": "secret place"})
    home = frozendict({"street": "1 Main St", "zip": 12345, "geo": geo})
    work = ComplexChange(
        elements=(
            ElementChange(path="street", cell=Cell(timestamp=TS, value="2 Side St")),
            ElementChange(path="zip", cell=Cell(timestamp=TS, value=54321)),
            ElementChange(path="geo", cell=Cell(timestamp=TS, value=geo)),
        )
    )
    past = ComplexChange(elements=(ElementChange(path=uuid.uuid1(), cell=Cell(timestamp=TS, value=home)),))
    out = t.apply([row(schema, {"id": 1}, {"home": home, "work": work, "past": past})])[0]
    masked_geo = frozendict({"lat": 1.5, "label": hmac_of(t, "secret place")})
    assert out.cells["home"].value == frozendict({"street": "REDACTED", "zip": 12345, "geo": masked_geo})  # type: ignore[union-attr]
    work_out = out.cells["work"]
    assert isinstance(work_out, ComplexChange)
    street, zip_, geo_out = work_out.elements
    assert street.cell.value == "2 Side St"  # no rule for work.street
    assert zip_.cell.value == hmac_of(t, 54321)
    assert geo_out.cell.value == masked_geo
    past_out = out.cells["past"]
    assert isinstance(past_out, ComplexChange)
    assert past_out.elements[0].cell.value == frozendict({"street": None, "zip": 12345, "geo": masked_geo})
    # types: zip became text only in 'work'; geo.label stays text; schema round-trips
    assert "zip:text" in out.schema.by_name["work"].type and "zip:int" in out.schema.by_name["home"].type
    roundtrip(out)


def test_non_frozen_udt_field_nulled_is_a_field_tombstone() -> None:
    t = transform([{"column": "work.street", "strategy": "null"}])
    schema = table([("id", "int", PK), ("work", ADDRESS, REG)])
    change = ComplexChange(
        elements=(ElementChange(path="street", cell=Cell(timestamp=TS, value="2 Side St", ttl=5, local_deletion_time=9)),)
    )
    masked = t.apply([row(schema, {"id": 1}, {"work": change})])[0].cells["work"]
    assert isinstance(masked, ComplexChange)
    cell = masked.elements[0].cell
    assert cell.tombstone and cell.value is None and cell.timestamp == TS


def test_null_strategy_columns() -> None:
    t = transform([{"column": "ssn", "strategy": "null"}, {"column": "aliases", "strategy": "null"}])
    schema = table([("id", "int", PK), ("ssn", "bigint", REG), ("aliases", "set<text>", REG)])
    aliases = ComplexChange(
        deletion=Deletion(timestamp=TS - 1, local_deletion_time=1), elements=(ElementChange(path="x", cell=Cell(timestamp=TS)),)
    )
    out = t.apply([row(schema, {"id": 1}, {"ssn": 123, "aliases": aliases})])[0]
    ssn = out.cells["ssn"]
    assert isinstance(ssn, Cell) and ssn.value is None and ssn.tombstone and ssn.timestamp == TS
    assert out.cells["aliases"] == ComplexChange(deletion=aliases.deletion, elements=())
    assert out.schema.by_name["ssn"].type == "bigint"  # null keeps the type
    roundtrip(out)


def test_null_strategy_keeps_rows_created_by_update_visible() -> None:
    # Regression: nulling the only cell an UPDATE wrote (no row marker) left a tombstone and no live
    # cell, so the row vanished downstream although Cassandra shows it (with ssn = null).
    t = transform([{"table": "t", "column": "ssn", "strategy": "null"}, {"table": "t", "column": "tags", "strategy": "null"}])
    schema = table([("id", "int", PK), ("ssn", "text", REG), ("note", "text", REG), ("tags", "set<text>", REG)])

    def update(key: int, cells: dict[str, Any], index: int) -> ChangeEvent:
        return attrs.evolve(row(schema, {"id": key}, cells, index=index), liveness=None)

    ttl_cell = Cell(timestamp=TS, value="x", ttl=60, local_deletion_time=1_000)
    tags = ComplexChange(elements=(ElementChange(path="a", cell=Cell(timestamp=TS + 5)),))
    events = [
        update(1, {"ssn": "123-45-6789"}, 0),
        update(2, {"ssn": ttl_cell}, 1),
        update(3, {"tags": tags}, 2),
        row(schema, {"id": 4}, {"ssn": "987-65-4329"}, index=3),  # an INSERT keeps its own marker
        update(5, {"ssn": Cell(timestamp=TS, tombstone=True, local_deletion_time=1)}, 4),  # a real null: no marker
    ]
    raw = latest_state(events, now=0).rows
    out = t.apply(events)
    masked = latest_state(out, now=0).rows
    assert set(masked) == set(raw) == {(1,), (2,), (3,), (4,)}
    assert all(r["ssn"] is None and r["tags"] is None for r in masked.values())
    assert out[0].liveness == Liveness(timestamp=TS)
    assert out[1].liveness == Liveness(timestamp=TS, ttl=60, local_deletion_time=1_000)
    assert out[2].liveness == Liveness(timestamp=TS + 5)
    assert out[3].liveness == events[3].liveness and out[4].liveness is None
    # the marker expires with the cell it stands for, and a later row deletion still removes the row
    assert set(latest_state(out, now=1_000).rows) == set(latest_state(events, now=1_000).rows) == {(1,), (3,), (4,)}
    delete = attrs.evolve(events[0], cells={}, row_deletion=Deletion(timestamp=TS + 10, local_deletion_time=1))
    assert (1,) not in latest_state([*out, *t.apply([delete])], now=0).rows
    for e in out:
        roundtrip(e)


def test_null_on_key_column_refused() -> None:
    t = transform([{"column": "email", "strategy": "null", "name": "drop-email"}])
    schema = table([("email", "text", PK), ("v", "int", REG)])
    with pytest.raises(ConfigError, match=r"'drop-email'.*primary-key column ks\.t\.email"):
        t.apply([row(schema, {"email": "a"}, {"v": 1})])
    with pytest.raises(ConfigError, match="drop-email"):
        t.validate([schema])


# --- type handling -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cql", "value"),
    [
        ("int", 123456789),
        ("bigint", 987654329),
        ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("timeuuid", uuid.uuid1()),
        ("date", dt.date(1990, 5, 17)),
        ("timestamp", dt.datetime(2020, 1, 1, tzinfo=dt.UTC)),
        ("blob", b"\x01\x02"),
        ("text", "abc"),
    ],
)
@pytest.mark.parametrize(
    ("strategy", "keeps"), [("hmac", False), ("tokenize", False), ("keep_last", False), ("redact", None), ("null", True)]
)
def test_masked_schema_says_text(cql: str, value: Any, strategy: str, keeps: bool | None) -> None:
    t = transform([{"column": "secret", "strategy": strategy}])
    schema = table([("id", "int", PK), ("secret", cql, REG), ("plain", cql, REG)])
    out = t.apply([row(schema, {"id": 1}, {"secret": value, "plain": value})])[0]
    expected = cql if keeps or (keeps is None and cql == "text") else "text"
    assert out.schema.by_name["secret"].type == expected
    assert out.schema.by_name["plain"].type == cql
    assert out.schema.id == schema.id and out.schema.table == schema.table
    roundtrip(out)


def test_masked_schema_cached_per_table() -> None:
    t = transform([{"column": "ssn"}])
    schema = table([("id", "int", PK), ("ssn", "int", REG)])
    out = t.apply([row(schema, {"id": i}, {"ssn": i}, index=i) for i in range(3)])
    assert out[0].schema is out[1].schema is out[2].schema is t.masked_schema(schema)
    equal_copy = table([("id", "int", PK), ("ssn", "int", REG)])
    assert equal_copy is not schema
    assert t.apply([row(equal_copy, {"id": 1}, {"ssn": 1})])[0].schema is out[0].schema


def test_static_columns() -> None:
    t = transform([{"column": "owner"}])
    schema = table([("id", "int", PK), ("c", "int", CK), ("owner", "text", STATIC)])
    event = attrs_evolve_static(row(schema, {"id": 1}, {"owner": "Jane"}))
    out = t.apply([event])[0]
    assert out.static and out.cells["owner"].value == hmac_of(t, "Jane")  # type: ignore[union-attr]


def attrs_evolve_static(event: ChangeEvent) -> ChangeEvent:
    import attrs

    return attrs.evolve(event, static=True)


# --- rule matching -------------------------------------------------------------------------------------


def test_globs_regex_case_and_first_match_wins() -> None:
    t = transform(
        [
            {"keyspace": "crm*", "table": "cust?mers", "column": "re:(ssn|tax_id)", "strategy": "redact"},
            {"column": "*_email", "strategy": "email"},
            {"column": "*", "keyspace": "crm_eu", "strategy": "truncate"},
        ]
    )
    schema = table(
        [("id", "int", PK), ("SSN", "text", REG), ("tax_id", "text", REG), ("work_email", "text", REG), ("n", "text", REG)],
        "crm_eu",
        "customers",
    )
    out = t.apply([row(schema, {"id": 1}, {"SSN": "1", "tax_id": "2", "work_email": "a@b.de", "n": "abcdef"})])[0]
    assert out.cells["SSN"].value == "REDACTED"  # type: ignore[union-attr]
    assert out.cells["tax_id"].value == "REDACTED"  # type: ignore[union-attr]
    assert out.cells["work_email"].value.endswith("@b.de")  # type: ignore[union-attr]
    assert out.cells["n"].value == "abc"  # type: ignore[union-attr]
    other_table = table([("id", "int", PK), ("ssn", "text", REG)], "crm_eu", "orders")
    assert t.apply([row(other_table, {"id": 1}, {"ssn": "123456"})])[0].cells["ssn"].value == "123"  # type: ignore[union-attr]


def test_case_sensitive_option() -> None:
    t = transform([{"column": "ssn"}], case_sensitive=True)
    schema = table([("id", "int", PK), ("SSN", "text", REG)])
    event = row(schema, {"id": 1}, {"SSN": "x"})
    assert t.apply([event])[0] is event


# --- audit and metrics ---------------------------------------------------------------------------------


def test_audit_records_per_batch_without_values() -> None:
    registry = CollectorRegistry()
    t = MaskingTransform(config([{"column": "ssn", "name": "ssn-rule"}, {"column": "diag*", "classification": "phi"}]), registry=registry)
    schema = table([("id", "int", PK), ("ssn", "text", REG), ("diagnosis", "text", REG), ("diag_code", "text", REG)])
    t.apply([row(schema, {"id": i}, {"ssn": f"123-45-{i:04d}", "diagnosis": "J45"}, index=i) for i in range(3)])
    records = sorted(t.audit(), key=lambda r: str(r["rule"]))
    assert records == [
        {
            "keyspace": "ks",
            "table": "t",
            "columns": ["diagnosis"],
            "rule": "*.*.diag*",
            "strategy": "tokenize",
            "classification": "phi",
            "policy_version": "test-1",
            "count": 3,
        },
        {
            "keyspace": "ks",
            "table": "t",
            "columns": ["ssn"],
            "rule": "ssn-rule",
            "strategy": "hmac",
            "classification": "pii",
            "policy_version": "test-1",
            "count": 3,
        },
    ]
    assert "123-45" not in repr(t.audit()) and "J45" not in repr(t.audit())
    value = registry.get_sample_value("cdc_masked_values_total", {"table": "ks.t", "column": "ssn", "strategy": "hmac"})
    assert value == 3
    t.apply([row(schema, {"id": 9}, {"diag_code": "X"})])  # the next batch: its own records only
    assert [(r["columns"], r["count"]) for r in t.audit()] == [(["diag_code"], 1)]
    assert registry.get_sample_value("cdc_masked_values_total", {"table": "ks.t", "column": "ssn", "strategy": "hmac"}) == 3
    t.apply([])
    assert t.audit() == []


def test_counter_safe_to_create_twice() -> None:
    from cdc_masking import masked_values_counter

    assert masked_values_counter() is masked_values_counter()
    registry = CollectorRegistry()
    assert masked_values_counter(registry) is masked_values_counter(registry)
    MaskingTransform(config([]))
    MaskingTransform(config([]))  # default registry twice: no duplicate-metric error


# --- validate ------------------------------------------------------------------------------------------


def test_validate_warnings() -> None:
    t = transform(
        [
            {"column": "ssn", "strategy": "sha256", "name": "weak"},
            {"column": "notes", "strategy": "sha256", "low_entropy": True, "name": "marked"},
            {"column": "nope", "name": "typo"},
            {"keyspace": "ghost", "column": "*", "name": "ghost"},
            {"column": "ss*", "name": "shadowed"},
            {"column": "code", "strategy": "redact", "name": "collapse"},
            {"column": "addr.zip", "name": "field"},
        ]
    )
    schema = table([("code", "text", PK), ("ssn", "text", REG), ("notes", "text", REG), ("addr", ADDRESS, REG)])
    warnings = t.validate([schema])
    joined = "\n".join(warnings)
    assert "'weak' uses plain salted SHA-256 on low-entropy column(s) ks.t.ssn" in joined
    assert "'marked' uses plain salted SHA-256" in joined
    assert "'typo' matches no column" in joined
    assert "'ghost' matches no known table" in joined
    assert "'shadowed' is shadowed" in joined
    assert "'collapse' masks primary-key column ks.t.code" in joined
    assert "'field'" not in joined  # a UDT field rule that matches is fine
    assert len(warnings) == 6


def test_validate_config_without_schemas() -> None:
    t = transform(
        [
            {"column": "phone_number", "strategy": "sha256", "name": "by-name"},
            {"column": "notes", "strategy": "sha256", "low_entropy": True, "name": "by-marker"},
            {"column": "notes", "strategy": "sha256", "name": "fine"},
            {"column": "ssn", "name": "hmac-is-fine"},
        ]
    )
    warnings = t.validate_config()
    assert len(warnings) == 2
    assert "'by-name'" in warnings[0] and "'by-marker'" in warnings[1]


def test_validate_clean_config_has_no_warnings() -> None:
    t = transform([{"column": "ssn"}])
    assert t.validate([table([("id", "int", PK), ("ssn", "text", REG)])]) == []


# --- properties ----------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.text(min_size=1), min_size=1, max_size=20))
def test_masking_is_deterministic_and_injective_on_keys(values: list[str]) -> None:
    t = transform([{"column": "k"}])
    schema = table([("k", "text", PK), ("v", "int", REG)])
    events = [row(schema, {"k": v}, {"v": 1}, index=i) for i, v in enumerate(values)]
    out = t.apply(events)
    again = t.apply(events)
    assert [e.key for e in out] == [e.key for e in again]
    mapping = {v: e.key["k"] for v, e in zip(values, out, strict=True)}
    assert len(set(mapping.values())) == len(mapping)  # distinct rows stay distinct
    assert not set(mapping) & set(mapping.values())


@settings(max_examples=50, deadline=None)
@given(value=st.integers(min_value=0, max_value=10**12))
def test_int_columns_masked_are_storable_text(value: int) -> None:
    t = transform([{"column": "ssn"}])
    schema = table([("id", "int", PK), ("ssn", "bigint", REG)])
    out = t.apply([row(schema, {"id": 1}, {"ssn": value})])[0]
    assert isinstance(out.cells["ssn"].value, str)  # type: ignore[union-attr]
    roundtrip(out)


@pytest.mark.asyncio
async def test_lifecycle() -> None:
    t = transform([{"column": "ssn"}])
    await t.start()
    await t.close()
