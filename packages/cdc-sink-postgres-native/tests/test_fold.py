"""The accelerator's column checks and staged shape equal the pure-Python fold's.

``typemap.bulk_check`` and ``RecordFold._stage`` without the accelerator are the reference: the
same batches are staged with ``CDC_SINK_POSTGRES_NATIVE=0`` and with it, and must give the same
verdict (NeedsEagerFold or not), the same shape and the same records.
"""

from __future__ import annotations

import datetime as dt
import gc
import math
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_core.cqltypes import parse_type
from cdc_core.events import Cell, ChangeEvent, ChangeKind, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_sink_postgres import native
from cdc_sink_postgres.layout import TableLayout
from cdc_sink_postgres.premerge import FoldPlan, NeedsEagerFold, RecordFold, StagingRecords
from cdc_sink_postgres.typemap import bulk_check

if TYPE_CHECKING:
    import cdc_sink_postgres_native
else:  # without the build these comparisons are skipped; test_installed.py fails in CI instead
    cdc_sink_postgres_native = pytest.importorskip("cdc_sink_postgres_native")

UTC = dt.UTC
_odd: list[Any] = [
    None,
    True,
    0,
    -1,
    2**15,
    -(2**15) - 1,
    2**31,
    2**63,
    -(2**63) - 1,
    2**70,
    1.5,
    math.nan,
    "",
    "a\x00b",
    "lone \ud800",
    "äöü",
    b"x",
    uuid.UUID(int=3),
    dt.datetime(2020, 1, 1),
    dt.datetime(2020, 1, 1, tzinfo=UTC),
    dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    dt.date(2020, 1, 1),
    Decimal("1.5"),
    Decimal("NaN"),
    Decimal("-Infinity"),
    Decimal("sNaN"),
    Decimal("1E-16383"),
    Decimal("1E-16382"),
    Decimal("1E+130999"),
    Decimal("1E+131000"),
    Decimal("1E-15999"),
    Decimal("1E-16000"),
    Decimal("0E-16382"),
    Decimal("-0.000"),
    Decimal("123456789012345678901234567890E-16400"),
]
_values = st.one_of(
    st.sampled_from(_odd),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(),
    st.datetimes(timezones=st.none() | st.just(UTC)),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.builds(lambda c, e: Decimal(c).scaleb(e), st.integers(-(10**30), 10**30), st.integers(-17000, 132000)),
)
CQL = {
    "text": "text",
    "ascii": "ascii",
    "tinyint": "tinyint",
    "smallint": "smallint",
    "int": "int",
    "bigint": "bigint",
    "counter": "counter",
    "float": "float",
    "double": "double",
    "boolean": "boolean",
    "uuid": "uuid",
    "timeuuid": "timeuuid",
    "timestamp": "timestamp",
    "decimal": "decimal",
}


@pytest.mark.parametrize("name", sorted(CQL))
@settings(max_examples=150, deadline=None)
@given(values=st.lists(_values, max_size=8))
def test_check_field_equals_bulk_check(name: str, values: list[Any]) -> None:
    check = bulk_check(parse_type(name))
    spec = native.check_spec(name)
    assert check is not None and spec is not None
    records = [[0, v] for v in values]
    assert cdc_sink_postgres_native.check_field(records, 1, *spec) is check(values)


def test_every_bulk_checked_type_has_a_native_check() -> None:
    from cdc_sink_postgres.typemap import SCALAR_SQL

    for name in SCALAR_SQL:
        assert (bulk_check(parse_type(name)) is not None) == (native.check_spec(name) is not None), name


SCHEMA = TableSchema(
    keyspace="ks",
    table="fold",
    id=uuid.UUID(int=77),
    columns=(
        ColumnSchema(name="pk", type="bigint", kind=ColumnKind.PARTITION_KEY),
        *(ColumnSchema(name=f"c_{n}", type=t, kind=ColumnKind.REGULAR, position=-1) for n, t in CQL.items() if n != "counter"),
    ),
)
PLAN = FoldPlan(TableLayout.from_schema(SCHEMA, pg_schema="s", base="fold"))
NAMES = [f"c_{n}" for n in CQL if n != "counter"]

_cell = st.builds(
    lambda ts, v, tomb, ttl: Cell(timestamp=ts, value=None if tomb else v, ttl=ttl, local_deletion_time=100 if ttl else None),
    st.integers(1, 3),
    _values,
    st.booleans(),
    st.sampled_from([None, None, 10]),
)
_event = st.builds(
    lambda key, marker, cells: ChangeEvent(
        position=Position(node="n", segment_id=1, offset=0, index=0),
        schema=SCHEMA,
        kind=ChangeKind.ROW,
        key={"pk": key},
        liveness=Liveness(timestamp=marker) if marker else None,
        cells=cells,
    ),
    st.integers(0, 6) | st.sampled_from(["not an int", 2**64, None]),
    st.sampled_from([None, 1, 2]),
    st.dictionaries(st.sampled_from(NAMES), _cell, max_size=4),
)


def _staged(events: list[ChangeEvent], monkeypatch: pytest.MonkeyPatch, switch: str, eager: bool, plan: FoldPlan = PLAN) -> Any:
    monkeypatch.setenv("CDC_SINK_POSTGRES_NATIVE", switch)
    fold = RecordFold(plan, eager=eager)
    try:
        rejected = [(i, type(exc), str(exc)) for i, exc in fold.add_all(events)]
        out: StagingRecords | None = fold.staged_rows() if fold.rows else None
        statics = fold.staged_statics() if fold.statics else None
    except NeedsEagerFold:
        return "eager"
    shape = None if out is None else (out.present, out.aliases, list(out.records))
    return rejected, shape, None if statics is None else list(statics.records), sorted(fold.partition_deletions.items())


@pytest.mark.parametrize("eager", [False, True])
@settings(max_examples=300, deadline=None)
@given(events=st.lists(_event, min_size=1, max_size=10))
def test_staged_rows_equal_the_python_fold(eager: bool, events: list[ChangeEvent]) -> None:
    assert PLAN.rows.native_checks is not None  # the accelerated path is taken
    with pytest.MonkeyPatch.context() as mp:
        reference = _staged(events, mp, "0", eager)
        accelerated = _staged(events, mp, "1", eager)
    if reference != "eager" and accelerated != "eager":
        # NaN fields compare unequal to themselves: compare their repr.
        assert repr(accelerated) == repr(reference)
    assert (accelerated == "eager") is (reference == "eager")


def test_records_folded_natively_are_not_tracked_by_the_cyclic_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    """They hold only the events' values (no cycle can run through them): untracked, the
    collector never walks them; the fold's result is the same either way (above)."""
    monkeypatch.setenv("CDC_SINK_POSTGRES_NATIVE", "1")
    events = [
        ChangeEvent(
            position=Position(node="n", segment_id=1, offset=i, index=0),
            schema=SCHEMA,
            kind=ChangeKind.ROW,
            key={"pk": i},
            liveness=Liveness(timestamp=1),
            cells={"c_text": Cell(timestamp=1, value=f"v{i}")},
        )
        for i in range(3)
    ]
    fold = RecordFold(PLAN)
    assert fold.add_all(events) == []
    assert len(fold.rows) == 3
    for key, record in fold.rows.items():
        assert not gc.is_tracked(record) and not gc.is_tracked(key)
    assert gc.is_tracked([object()])  # (a list is tracked by default)


# A smallint partition key and an int clustering column: the accelerator checks integer keys
# against the range of their converter (typemap.int_converter_bits) instead of calling it.
SMALL_KEYS = TableSchema(
    keyspace="ks",
    table="small_keys",
    id=uuid.UUID(int=78),
    columns=(
        ColumnSchema(name="pk", type="smallint", kind=ColumnKind.PARTITION_KEY),
        ColumnSchema(name="ck", type="int", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.ASC),
        ColumnSchema(name="v", type="text", kind=ColumnKind.REGULAR, position=-1),
    ),
)
SMALL_PLAN = FoldPlan(TableLayout.from_schema(SMALL_KEYS, pg_schema="s", base="small_keys"))
_KEY_EDGES: list[Any] = [0, -1, 2**15 - 1, -(2**15), 2**15, -(2**15) - 1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1]
_KEY_EDGES += [2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, True, 1.0, "1", None]
_key = st.sampled_from(_KEY_EDGES) | st.integers(-(2**65), 2**65)


@pytest.mark.parametrize("eager", [False, True])
@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.tuples(_key, _key), min_size=1, max_size=10))
def test_integer_keys_are_checked_natively_as_their_converters_check_them(eager: bool, keys: list[tuple[Any, Any]]) -> None:
    assert [bits for _, _, bits in SMALL_PLAN.native_keys] == [15, 31]
    assert [bits for _, _, bits in PLAN.native_keys] == [63]
    events = [
        ChangeEvent(
            position=Position(node="n", segment_id=1, offset=i, index=0),
            schema=SMALL_KEYS,
            kind=ChangeKind.ROW,
            key={"pk": pk, "ck": ck},
            cells={"v": Cell(timestamp=1, value="x")},
        )
        for i, (pk, ck) in enumerate(keys)
    ]
    with pytest.MonkeyPatch.context() as mp:
        reference = _staged(events, mp, "0", eager, SMALL_PLAN)
        accelerated = _staged(events, mp, "1", eager, SMALL_PLAN)
    assert accelerated == reference


class _KeyShadowed(ChangeEvent):
    """A subclass reading ``key`` through a property where ChangeEvent has a slot."""

    __slots__ = ()

    @property
    def key(self) -> dict[str, Any]:
        return {"pk": 99}


@pytest.mark.parametrize("shadowed_first", [False, True])
def test_an_attribute_a_subclass_shadows_is_read_through_it(monkeypatch: pytest.MonkeyPatch, shadowed_first: bool) -> None:
    """The accelerator reads the slots of the class it met first directly, and any other class's
    attributes as Python does."""
    events = [
        ChangeEvent(
            position=Position(node="n", segment_id=1, offset=i, index=0),
            schema=SCHEMA,
            kind=ChangeKind.ROW,
            key={"pk": i},
            cells={"c_text": Cell(timestamp=1, value=f"v{i}")},
        )
        for i in range(2)
    ]
    object.__setattr__(events[0 if shadowed_first else 1], "__class__", _KeyShadowed)
    reference = _staged(events, monkeypatch, "0", False)
    accelerated = _staged(events, monkeypatch, "1", False)
    assert accelerated == reference
    _, (_, _, records), _, _ = accelerated
    assert sorted(r[0] for r in records) == sorted([99, 1 if shadowed_first else 0])
