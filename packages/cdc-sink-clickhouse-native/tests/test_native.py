"""The optional compiled encoder (cdc-sink-clickhouse-native) gives exactly the pure-Python bytes.

Every event is encoded twice, by a layout using the compiled encoder and by one forced onto the
Python path; the lines (or the exception, type and message) must be identical. The compiled
encoder may decline an event (None) and leave it to Python, never produce different text.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, Deletion, ElementChange, Liveness
from cdc_core.positions import Position
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema
from cdc_core.testing.strategies import event_histories, table_schemas
from cdc_sink_clickhouse import layout as layout_module
from cdc_sink_clickhouse.layout import TableLayout
from cdc_sink_clickhouse.mapping import Features

FEATURES = [Features.from_version("18.16.1"), Features.from_version("26.9.1")]


# Without the build these comparisons cannot run; test_installed.py fails in CI instead. (They live
# here, not in cdc-sink-clickhouse's tests, which the isolation venv runs without the accelerator.)
pytest.importorskip("cdc_sink_clickhouse_native")


def _pair(schema: TableSchema, features: Features) -> tuple[TableLayout, TableLayout]:
    fast = TableLayout(schema, features, "db", "b", "latest")
    slow = TableLayout(schema, features, "db", "b", "latest")
    slow._native_row = None
    return fast, slow


def _outcome(layout: TableLayout, event: ChangeEvent) -> Any:
    try:
        return layout.encode_latest(event)
    except Exception as exc:
        return (type(exc), str(exc))


def _same(schema: TableSchema, events: list[ChangeEvent]) -> int:
    """Asserts identical outcomes; returns how many events the compiled encoder took itself."""
    taken = 0
    for features in FEATURES:
        fast, slow = _pair(schema, features)
        for event in events:
            assert _outcome(fast, event) == _outcome(slow, event), event
            if fast._native_row is not None and fast._native_row.encode(event) is not None:
                taken += 1
        if fast._native_row is not None:
            _same_chunk(fast._native_row, events)
    return taken


def _same_chunk(native: Any, events: list[ChangeEvent]) -> None:
    """``encode_chunk`` of a list (also repeated and reordered) is ``encode`` of each event, joined."""
    for chunk in (events, events[::-1] + events, []):
        lines = [native.encode(e) for e in chunk]
        data, ends, declined = native.encode_chunk(chunk)
        assert declined == [i for i, line in enumerate(lines) if line is None]
        parts = [(line + "\n").encode("utf-8") for line in lines if line is not None]
        assert data == b"".join(parts)
        assert ends == [sum(len(p) for p in parts[: j + 1]) for j in range(len(parts))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_native_matches_python_on_random_histories(data: st.DataObject) -> None:
    schema = data.draw(table_schemas())
    _same(schema, data.draw(event_histories(schema)))


SIMPLE = ["text", "int", "bigint", "smallint", "tinyint", "boolean", "double", "float", "timestamp", "uuid", "decimal", "varint"]
SIMPLE += ["blob", "date", "time", "inet", "ascii", "frozen<list<text>>", "counter"]
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Values of every kind, right or wrong for the column: the two paths must agree on all of them.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**7, -(2**7) - 1, 2**15, 2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 2**63 - 1, -(2**63), 86_400 * 10**9]),
    st.floats(),
    st.sampled_from([0.0, -0.0, float("nan"), float("inf"), 1e300, 5e-324]),
    st.text(),
    st.text(alphabet="\\\t\n\r\x00\x08\x0c a\u00e9\U0001f600", max_size=8),
    st.binary(max_size=6),
    st.uuids(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.integers(-(10**13), 10**14).map(lambda ms: _EPOCH + dt.timedelta(milliseconds=ms)),
    st.datetimes(),
    st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone.min])),
    st.sampled_from(
        [
            dt.datetime(1900, 1, 1, tzinfo=dt.UTC),
            dt.datetime(1899, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
            dt.datetime(2299, 12, 31, 23, 59, 59, 999999),
            dt.datetime(2300, 1, 1),
            dt.datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=dt.UTC),
            dt.datetime(1, 1, 1),
            dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
            dt.datetime(2000, 2, 29, 12, tzinfo=dt.timezone(dt.timedelta(0))),
        ]
    ),
    st.dates(),
    st.lists(st.text(max_size=3), max_size=2).map(tuple),
)
STAMPS: st.SearchStrategy[Any] = st.one_of(
    st.integers(-(10**17), 10**17), st.sampled_from([2**61 - 1, -(2**61) + 1, 2**61, -(2**61), 2**63 - 1, 2**64]), st.floats(0, 10)
)


@st.composite
def _cell(draw: st.DrawFn) -> Any:
    ts = draw(STAMPS)
    ttl, ldt = draw(st.sampled_from([(None, None), (3600, 1_800_000_000), (None, 5), (3600, None), (3600, 2**64)]))
    if draw(st.integers(0, 5)) == 0:
        return Cell(timestamp=ts, tombstone=True, local_deletion_time=ldt)
    if draw(st.integers(0, 20)) == 0:  # a collection change on a simple column: refused by both
        return ComplexChange(elements=(ElementChange(path=uuid.uuid4(), cell=Cell(timestamp=1, value=1)),))
    return Cell(timestamp=ts, value=draw(ANY_VALUE), ttl=ttl, local_deletion_time=ldt)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_native_matches_python_on_any_values(data: st.DataObject) -> None:
    types = data.draw(st.lists(st.sampled_from(SIMPLE), min_size=1, max_size=6))
    key_types = ["int", "bigint", "text", "timestamp", "uuid", "boolean", "double", "smallint", "blob", "decimal", "time"]
    pk_type, ck_type = data.draw(st.sampled_from(key_types)), data.draw(st.sampled_from(key_types))
    order = data.draw(st.sampled_from([ClusteringOrder.ASC, ClusteringOrder.DESC]))
    cols = [
        ColumnSchema(name="pk", type=pk_type, kind=ColumnKind.PARTITION_KEY, position=0),
        ColumnSchema(name="ck", type=ck_type, kind=ColumnKind.CLUSTERING, position=0, clustering_order=order),
    ]
    cols += [ColumnSchema(name=f"c{i}", type=t, kind=ColumnKind.REGULAR, position=-1) for i, t in enumerate(types)]
    schema = TableSchema(keyspace="ks", table="t", id=uuid.uuid4(), columns=tuple(cols))
    events = []
    for _ in range(data.draw(st.integers(1, 4))):
        names = data.draw(st.lists(st.sampled_from([f"c{i}" for i in range(len(types))] + ["nope", "pk"]), max_size=4, unique=True))
        cells = {n: data.draw(_cell()) for n in names}
        key = {"pk": data.draw(ANY_VALUE), "ck": data.draw(ANY_VALUE)}
        if data.draw(st.integers(0, 9)) == 0:
            del key[data.draw(st.sampled_from(["pk", "ck"]))]
        lv = data.draw(st.sampled_from([None, Liveness(timestamp=5), Liveness(timestamp=5, ttl=10, local_deletion_time=99)]))
        rd = data.draw(st.sampled_from([None, Deletion(timestamp=7, local_deletion_time=1)]))
        events.append(
            ChangeEvent(
                position=Position(node="n", segment_id=1, offset=1),
                schema=schema,
                kind=ChangeKind.ROW,
                key=key,
                liveness=lv,
                row_deletion=rd,
                cells=cells,
            )
        )
    _same(schema, events)


def test_native_takes_the_plain_rows_itself() -> None:
    # The fast path must really be used for ordinary rows (not always declined to Python).
    cols = [
        ColumnSchema(name="pk", type="bigint", kind=ColumnKind.PARTITION_KEY, position=0),
        ColumnSchema(name="ck", type="int", kind=ColumnKind.CLUSTERING, position=0, clustering_order=ClusteringOrder.DESC),
    ]
    types = {"t": "text", "i": "int", "b": "bigint", "d": "double", "f": "float", "o": "boolean", "s": "timestamp", "u": "uuid"}
    cols += [ColumnSchema(name=n, type=t, kind=ColumnKind.REGULAR, position=-1) for n, t in types.items()]
    schema = TableSchema(keyspace="ks", table="t", id=uuid.uuid4(), columns=tuple(cols))
    values = {"t": "a\tb\\c\n", "i": -5, "b": 2**62, "d": -0.0, "f": 1.5, "o": True, "s": _EPOCH, "u": uuid.UUID(int=7)}
    events = [
        ChangeEvent(
            position=Position(node="n", segment_id=1, offset=1),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": -1, "ck": 3},
            liveness=Liveness(timestamp=10),
            cells={n: Cell(timestamp=10, value=v) for n, v in values.items()},
        ),
        ChangeEvent(
            position=Position(node="n", segment_id=1, offset=2),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": 2, "ck": -3},
            cells={"t": Cell(timestamp=11, tombstone=True), "i": Cell(timestamp=11, value=1, ttl=5, local_deletion_time=99)},
            row_deletion=Deletion(timestamp=9, local_deletion_time=1),
        ),
        ChangeEvent(
            position=Position(node="n", segment_id=1, offset=3),
            schema=schema,
            kind=ChangeKind.ROW,
            key={"pk": 2, "ck": 1},
            row_deletion=Deletion(timestamp=12, local_deletion_time=1),
        ),
    ]
    assert _same(schema, events) == len(events) * len(FEATURES)


def test_pure_python_path_is_the_reference_without_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the compiled module a layout has no native encoder and encodes in Python.
    monkeypatch.setattr(layout_module, "_native", None)
    cols = [ColumnSchema(name="pk", type="int", kind=ColumnKind.PARTITION_KEY, position=0)]
    cols.append(ColumnSchema(name="v", type="text", kind=ColumnKind.REGULAR, position=-1))
    schema = TableSchema(keyspace="ks", table="t", id=uuid.uuid4(), columns=tuple(cols))
    layout = TableLayout(schema, FEATURES[0], "db", "b", "latest")
    assert layout._native_row is None
    event = ChangeEvent(
        position=Position(node="n", segment_id=1, offset=1),
        schema=schema,
        kind=ChangeKind.ROW,
        key={"pk": 1},
        cells={"v": Cell(timestamp=3, value="x")},
    )
    rows, parts = layout.encode_latest(event)
    assert rows[0].startswith("1\t\t") and parts == []
