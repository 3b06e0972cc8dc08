"""Unit tests without a server: identifiers, type mapping, pre-merge rules, config, TLS, redaction."""

from __future__ import annotations

import datetime as dt
import math
import ssl
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import cattrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pg_sink_helpers import partition_delete, schema, upsert

from cdc_core.cqltypes import Duration, parse_type
from cdc_core.events import Cell
from cdc_core.secrets import Secret
from cdc_sink_postgres.config import PostgresSinkConfig, SslConfig, TableConfig
from cdc_sink_postgres.ddl import LatestStateDdl
from cdc_sink_postgres.errors import Redactor, is_bisectable, is_data_error, is_transient
from cdc_sink_postgres.idents import qualify, quote_ident
from cdc_sink_postgres.layout import TableLayout, pg_name
from cdc_sink_postgres.merge import latest_state_merges
from cdc_sink_postgres.native import ProjectedRecords
from cdc_sink_postgres.premerge import TableDelta, row_record
from cdc_sink_postgres.tls import build_ssl
from cdc_sink_postgres.typemap import ValueRejected, dumps, from_json, key_string, pg_type_for, to_db, to_json


def test_quote_ident_doubles_quotes() -> None:
    assert quote_ident("plain") == '"plain"'
    assert quote_ident('we"ird') == '"we""ird"'
    assert qualify("s", 'x"; DROP TABLE t; --') == '"s"."x""; DROP TABLE t; --"'
    with pytest.raises(ValueError, match="NUL"):
        quote_ident("a\x00b")


def test_long_names_keep_a_distinguishing_hash() -> None:
    a, b = pg_name("k" * 70 + "_a"), pg_name("k" * 70 + "_b")
    assert len(a.encode()) <= 63
    assert a != b
    assert pg_name("short") == "short"


@pytest.mark.parametrize(
    ("cql", "sql"),
    [
        ("decimal", "numeric"),
        ("varint", "numeric"),
        ("timestamp", "timestamptz"),
        ("timeuuid", "uuid"),
        ("inet", "inet"),
        ("blob", "bytea"),
        ("date", "date"),
        ("time", "bigint"),
        ("duration", "jsonb"),
        ("tinyint", "smallint"),
        ("list<int>", "integer[]"),
        ("set<text>", "text[]"),
        ("frozen<list<frozen<list<int>>>>", "jsonb"),
        ("map<text, int>", "jsonb"),
        ("tuple<int, text>", "jsonb"),
        ("frozen<udt<ks.a>{x:int}>", "jsonb"),
        ("vector<float, 3>", "real[]"),
        ("vector<double, 3>", "double precision[]"),
        ("list<duration>", "jsonb"),
    ],
)
def test_type_mapping(cql: str, sql: str) -> None:
    assert pg_type_for(parse_type(cql)).sql == sql


@pytest.mark.parametrize(
    ("cql", "value", "reason"),
    [
        ("text", "a\x00b", "NUL"),
        ("text", "\ud800", "Unicode"),
        ("int", 2**31, "out of range"),
        ("tinyint", 2**15, "out of range"),
        ("decimal", Decimal("1E-20000"), "range"),
        ("time", 86_400 * 10**9, "time of day"),
        ("map<text, int>", {"k\x00": 1}, "NUL"),
        ("uuid", "not-a-uuid", "UUID"),
    ],
)
def test_values_postgres_cannot_hold_are_rejected(cql: str, value: Any, reason: str) -> None:
    with pytest.raises(ValueRejected, match=reason):
        to_db(value, parse_type(cql))


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))


@given(
    st.one_of(
        st.tuples(st.just("map<int, text>"), st.dictionaries(st.integers(-(2**31), 2**31 - 1), _TEXT)),
        st.tuples(st.just("frozen<list<decimal>>"), st.lists(st.decimals(allow_nan=False, allow_infinity=False)).map(tuple)),
        st.tuples(st.just("tuple<bigint, boolean, blob>"), st.tuples(st.integers(-(2**63), 2**63 - 1), st.booleans(), st.binary())),
        st.tuples(st.just("map<timestamp, double>"), st.dictionaries(st.integers(-(10**11), 10**13), st.floats())),
    )
)
def test_json_form_round_trips(case: tuple[str, Any]) -> None:
    import json

    cql, value = case
    t = parse_type(cql)
    if cql.startswith("map<timestamp"):
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        value = {epoch + dt.timedelta(milliseconds=k): v for k, v in value.items()}
    back = from_json(json.loads(dumps(to_json(value, t)), parse_float=Decimal), t)
    if cql.startswith("map<timestamp"):
        assert set(back) == set(value)
        for k, v in value.items():
            assert back[k] == v or (v != v and back[k] != back[k])
    else:
        assert back == (dict(value) if isinstance(value, dict) else value)


def test_json_form_details() -> None:
    assert dumps(to_json(Decimal("1.50"), parse_type("decimal"))) == "1.50"
    assert to_json(Duration(1, 2, 3), parse_type("duration")) == {"months": 1, "days": 2, "nanoseconds": 3}
    ts = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert to_json(ts, parse_type("timestamp")) == "2026-01-02T03:04:05.678Z"
    assert key_string(5, parse_type("int")) == "5"
    assert key_string(uuid.UUID(int=0), parse_type("uuid")) == "00000000-0000-0000-0000-000000000000"


def _layout(**cols: str) -> TableLayout:
    s = schema("t", {"pk": "int", **cols})
    return TableLayout.from_schema(s, pg_schema="public", base="ks_t")


def test_premerge_is_last_write_wins_with_tombstones_winning_ties() -> None:
    s = schema("t", {"pk": "int", "a": "text", "b": "int"})
    layout = TableLayout.from_schema(s, pg_schema="public", base="ks_t")
    events = [
        upsert(s, {"pk": 1}, 20, a="new"),
        upsert(s, {"pk": 1}, 10, a="old", b=1),
        upsert(s, {"pk": 1}, 20, insert=False, b=Cell(timestamp=10, tombstone=True, local_deletion_time=1)),
    ]
    for order in (events, list(reversed(events))):
        delta = TableDelta(layout)
        for e in order:
            delta.add(e)
        assert list(delta.rows) == [(1,)]
        rec = row_record((1,), delta.rows[(1,)], layout.regular)
        # key, marker ts/exp, deleted ts, a (value, ts, exp), b (value, ts, exp)
        assert rec == (1, 20, None, None, "new", 20, None, None, 10, None)


def test_premerge_rejects_a_whole_event_and_leaves_the_delta_untouched() -> None:
    s = schema("t", {"pk": "int", "a": "text", "b": "text"})
    layout = TableLayout.from_schema(s, pg_schema="public", base="ks_t")
    delta = TableDelta(layout)
    with pytest.raises(ValueRejected):
        delta.add(upsert(s, {"pk": 1}, 10, a="fine", b="bad\x00"))
    assert delta.rows == {}
    delta.add(partition_delete(s, {"pk": 1}, 5))
    delta.add(partition_delete(s, {"pk": 1}, 9))
    assert delta.partition_deletions == {(1,): 9}


def test_generated_sql_quotes_every_identifier() -> None:
    s = schema('we"ird', {"pk": "int", "ck": "text", 'co"l': "list<int>", "s": "int"}, ck=("ck",), s="static")
    layout = TableLayout.from_schema(s, pg_schema='sch"ema', base='ks_we"ird')
    ddl = LatestStateDdl()
    statements = ddl.create_statements(layout) + ddl.view_statements(layout)
    merges = latest_state_merges(layout)
    statements += [merges.rows.merge_sql, merges.partition_deletions.merge_sql]
    for sql in statements:
        assert 'we"ird' not in sql.replace('we""ird', "")
        assert 'co"l' not in sql.replace('co""l', "")
    assert '"sch""ema"."ks_we""ird__state"' in statements[0]


def test_inline_merge_reads_the_same_columns_from_array_parameters() -> None:
    s = schema('we"ird', {"pk": "int", "ck": "text", "v": "decimal", "fl": "frozen<list<int>>"}, ck=("ck",))
    layout = TableLayout.from_schema(s, pg_schema="cdc", base="ks_t")
    merges = latest_state_merges(layout)
    pdel = merges.partition_deletions
    # The staged statement and the inline one differ only in their source.
    assert pdel.merge_sql.replace(' FROM "' + pdel.staging + '" s ', " FROM <src> s ") == pdel.inline_sql(4).replace(
        ' FROM unnest($4::integer[], $5::bigint[]) AS s("pk", "ts") ', " FROM <src> s "
    )
    assert pdel.inlinable and pdel.sends_inline(2048, 4096) and not pdel.sends_inline(2049, 4096) and not pdel.sends_inline(1, 0)
    # A frozen list stages as an array: unnest would flatten it, so those rows go through COPY.
    assert "integer[]" in merges.rows.column_types and not merges.rows.inlinable and not merges.rows.sends_inline(1, 4096)
    assert 'we"ird' not in merges.rows.inline_sql().replace('we""ird', "")


def test_tombstones_are_appended_under_non_unique_indexes() -> None:
    layout = TableLayout.from_schema(schema("t", {"pk": "int", "ck": "int", "v": "text"}, ck=("ck",)), pg_schema="cdc", base="ks_t")
    table, index, ranges, range_index = LatestStateDdl().deletion_table_statements(layout)
    assert table.startswith('CREATE TABLE IF NOT EXISTS "cdc"."ks_t__partition_deletions"') and "PRIMARY KEY" not in table
    assert index == 'CREATE INDEX IF NOT EXISTS "ks_t__partition_deletions_key_ts" ON "cdc"."ks_t__partition_deletions" ("pk", ts)'
    assert ranges.startswith('CREATE TABLE IF NOT EXISTS "cdc"."ks_t__range_deletions"') and "PRIMARY KEY" not in ranges
    assert range_index == 'CREATE INDEX IF NOT EXISTS "ks_t__range_deletions_key" ON "cdc"."ks_t__range_deletions" ("pk")'
    merges = latest_state_merges(layout)
    assert merges.range_deletions is not None
    for merge in (merges.partition_deletions, merges.range_deletions):
        assert "ON CONFLICT" not in merge.merge_sql and "ON CONFLICT" not in merge.inline_sql()
    # The views take each partition's newest tombstone, not every row of it.
    view = LatestStateDdl().row_view(layout)
    assert '(SELECT "pk", max(ts) AS ts FROM "cdc"."ks_t__partition_deletions" GROUP BY "pk") p' in view


@given(st.lists(st.tuples(st.none() | st.text(), st.none() | st.integers()), min_size=1))
def test_inline_args_are_the_records_column_by_column(records: list[tuple[Any, ...]]) -> None:
    s = schema("t", {"pk": "text", "ck": "bigint", "v": "text"}, ck=("ck",))
    merge = latest_state_merges(TableLayout.from_schema(s, pg_schema="cdc", base="ks_t")).partition_deletions
    columns = merge.inline_args(records)
    assert len(columns) == len(merge.columns) and [tuple(r) for r in zip(*columns, strict=True)] == records


@given(
    st.lists(st.lists(st.none() | st.integers(), min_size=5, max_size=5), min_size=1),
    st.lists(st.integers(0, 4), min_size=2, max_size=5),
)
def test_inline_args_of_projected_records_are_their_kept_fields_column_by_column(source: list[list[Any]], keep: list[int]) -> None:
    s = schema("t", {"pk": "text", "ck": "bigint", "v": "text"}, ck=("ck",))
    merge = latest_state_merges(TableLayout.from_schema(s, pg_schema="cdc", base="ks_t")).partition_deletions
    projected = ProjectedRecords(source, keep)
    assert merge.inline_args(projected) == [list(column) for column in zip(*projected, strict=True)]
    assert merge.inline_args(projected) == [[record[k] for record in source] for k in keep]


def test_config_is_strict_and_secret_stays_hidden() -> None:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(Secret, lambda v, _: Secret(v))
    cfg = conv.structure(
        {
            "dsn": "postgresql://u:hunter2pw@h/db",
            "schema": "cdc",
            "tables": {"ks.t": {"mode": "history", "column_types": {"v": "text"}}},
            "ssl": {"mode": "verify-full", "ca_file": "ca.crt"},
        },
        PostgresSinkConfig,
    )
    assert cfg.mode_for("ks", "t") == "history"
    assert cfg.mode_for("ks", "other") == "latest"
    assert cfg.destination_name("ks", "t") == "ks_t"
    assert cfg.tables["ks.t"] == TableConfig(mode="history", column_types={"v": "text"})
    assert "hunter2pw" not in repr(cfg)
    with pytest.raises(cattrs.errors.ClassValidationError):
        conv.structure({"dsn": "x", "unknown_key": 1}, PostgresSinkConfig)
    with pytest.raises(ValueError, match="mode"):
        PostgresSinkConfig(dsn=Secret("x"), mode="sometimes")


def test_redactor_hides_dsn_and_password() -> None:
    r = Redactor(["postgresql://user:s3cr%40t@host/db", "host=h password='kw pass' user=u"])
    text = r("failed: postgresql://user:s3cr%40t@host/db and s3cr@t and s3cr%40t and kw pass")
    assert "s3cr" not in text
    assert "kw pass" not in text


def test_error_classification() -> None:
    class Fake(Exception):
        def __init__(self, state: str) -> None:
            self.sqlstate = state

    assert is_transient(Fake("40001"))  # serialization failure
    assert is_transient(Fake("40P01"))  # deadlock
    assert is_transient(Fake("08006"))  # connection failure
    assert is_transient(Fake("57014"))  # statement timeout
    assert is_transient(TimeoutError())
    assert not is_transient(Fake("22003"))
    assert is_data_error(Fake("22P05"))
    assert is_data_error(Fake("23505"))
    assert not is_data_error(Fake("42P01"))
    # Any non-transient server error is bisected (an over-long key is class 54) …
    assert is_bisectable(Fake("54000"))
    assert is_bisectable(Fake("22P05"))
    assert is_bisectable(Fake("23505"))
    # … transient ones are retried, and errors without a SQLSTATE are not the server's.
    assert not is_bisectable(Fake("40001"))
    assert not is_bisectable(Fake("08006"))
    assert not is_bisectable(ValueError("x"))


def test_build_ssl(tmp_path: Path) -> None:
    assert build_ssl(SslConfig()) is None
    assert build_ssl(SslConfig(mode="disable")) == "disable"
    req = build_ssl(SslConfig(mode="require"))
    assert isinstance(req, ssl.SSLContext)
    assert req.verify_mode == ssl.CERT_NONE
    full = build_ssl(SslConfig(mode="verify-full"))
    assert isinstance(full, ssl.SSLContext)
    assert full.check_hostname
    assert full.verify_mode == ssl.CERT_REQUIRED
    ca = build_ssl(SslConfig(mode="verify-ca"))
    assert isinstance(ca, ssl.SSLContext)
    assert not ca.check_hostname
    with pytest.raises(FileNotFoundError):
        build_ssl(SslConfig(mode="verify-full", ca_file="missing.crt"), tmp_path)


def test_plugin_registers_without_importing_asyncpg() -> None:
    code = (
        "import sys, cdc_sink_postgres.plugin as p; fs = p.cdc_register_sinks(); "
        "assert [f.name for f in fs] == ['postgres']; assert 'asyncpg' not in sys.modules, 'asyncpg imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_entry_point_is_declared() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="cdc")}
    assert eps.get("postgres") == "cdc_sink_postgres.plugin"


# --- the fast fold (RecordFold, column-wise checks, shaped records) matches the reference fold ---

_FOLD_SCHEMA = schema("fold", {"pk": "int", "a": "text", "b": "int", "c": "decimal", "d": "timestamp", "st": "int"}, st="static")
_GOOD = {
    "a": st.sampled_from(["x", "é", ""]),
    "b": st.integers(-(2**31), 2**31 - 1),
    "c": st.sampled_from([Decimal("1.50"), Decimal("-3"), Decimal("1e-3")]),
    "d": st.just(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
    "st": st.integers(0, 9),
}
_BAD = {"a": "nul\x00", "b": 2**40, "c": Decimal("NaN"), "d": dt.datetime(2026, 1, 1), "st": "not an int"}


@st.composite
def _fold_events(draw: st.DrawFn) -> list[Any]:
    events = []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.integers(0, 3)) == 0:  # runs of partition deletions too, some of a bad key
            pk = draw(st.sampled_from([0, 1, 2, 3, 2**40]))
            events.append(partition_delete(_FOLD_SCHEMA, {"pk": pk}, draw(st.integers(1, 4))))
            continue
        cells: dict[str, Any] = {}
        for name in draw(st.sets(st.sampled_from(sorted(_GOOD)))):
            ts = draw(st.integers(1, 4))
            choice = draw(st.sampled_from(["good", "good", "tombstone", "ttl", "bad"]))
            if choice == "tombstone":
                cells[name] = Cell(timestamp=ts, tombstone=True, local_deletion_time=1)
            elif choice == "ttl":
                cells[name] = Cell(timestamp=ts, value=draw(_GOOD[name]), ttl=10, local_deletion_time=100 + ts)
            else:
                cells[name] = Cell(timestamp=ts, value=_BAD[name] if choice == "bad" else draw(_GOOD[name]))
        e = upsert(_FOLD_SCHEMA, {"pk": draw(st.integers(0, 3))}, draw(st.integers(1, 4)), insert=draw(st.booleans()), **cells)
        if draw(st.booleans()) and "st" in cells:
            e = attrs_evolve(e, static=True)
        events.append(e)
    return events


def attrs_evolve(obj: Any, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(obj, **changes)


@given(_fold_events())
def test_fast_fold_matches_the_reference_fold(events: list[Any]) -> None:
    from cdc_sink_postgres.premerge import FoldPlan, NeedsEagerFold, RecordFold

    layout = TableLayout.from_schema(_FOLD_SCHEMA, pg_schema="public", base="ks_fold")
    ref = TableDelta(layout)
    ref_rejected = set()
    for i, e in enumerate(events):
        try:
            ref.add(e)
        except ValueRejected:
            ref_rejected.add(i)
    expected_rows = {k: row_record(k, d, layout.regular) for k, d in ref.rows.items()}
    expected_statics = {k: row_record(k, d, layout.static) for k, d in ref.statics.items()}
    plan = FoldPlan(layout)

    def fold_with(eager: bool, batch: bool) -> tuple[set[int], list[Any]] | None:
        """Event by event (``add``) or all at once (``add_all``, the sink's path); None when
        the optimistic fold asks for an eager one."""
        fold = RecordFold(plan, eager=eager)
        rejected = set()
        try:
            if batch:
                rejected = {i for i, _ in fold.add_all(events)}
            else:
                for i, e in enumerate(events):
                    try:
                        fold.add(e)
                    except ValueRejected:
                        rejected.add(i)
            return rejected, [
                fold.staged_rows() if fold.rows else None,
                fold.staged_statics() if fold.statics else None,
                dict(fold.partition_deletions),
            ]
        except NeedsEagerFold:
            return None

    for eager in (False, True):
        one, every = fold_with(eager, batch=False), fold_with(eager, batch=True)
        assert (one is None) == (every is None)
        if one is None or every is None:
            assert not eager
            continue
        rejected, (*staged, deletions) = one
        assert every[0] == rejected
        assert [None if s is None else (s.present, s.aliases, s.records) for s in every[1][:2]] == [
            None if s is None else (s.present, s.aliases, s.records) for s in staged
        ]
        assert every[1][2] == deletions == ref.partition_deletions
        assert rejected == ref_rejected
        for got, expected in zip(staged, (expected_rows, expected_statics), strict=True):
            if got is None:
                assert not expected
                continue
            # Shaped records: only present, not aliased fields; absent ones are NULL in every
            # expected record, aliased ones equal their anchor in every expected record.
            aliased = {f for f, _ in got.aliases}
            staged_fields = [i for i, p in enumerate(got.present) if p and i not in aliased]
            full = [[rec[i] for i in staged_fields] for rec in expected.values()]
            assert [list(r) for r in got.records] == full
            assert all(rec[i] is None for rec in expected.values() for i, p in enumerate(got.present) if not p)
            assert all(got.present[f] and got.present[a] and f not in {a for _, a in got.aliases} for f, a in got.aliases)
            assert all(rec[f] == rec[a] for rec in expected.values() for f, a in got.aliases)
            assert got.full_records() == [tuple(rec) for rec in expected.values()]


def test_session_settings_and_overlap_defaults() -> None:
    from cdc_core.secrets import Secret
    from cdc_sink_postgres.config import PostgresSinkConfig
    from cdc_sink_postgres.sink import PostgresSink

    dsn = Secret("postgresql://x@h/db")
    cfg = PostgresSinkConfig(dsn=dsn)
    assert cfg.session_settings() == {"work_mem": "64MB", "temp_buffers": "64MB"}
    assert PostgresSinkConfig(dsn=dsn, server_settings={"work_mem": "1GB"}).session_settings()["work_mem"] == "1GB"
    assert PostgresSink("pg", cfg).overlapping_writes == 2
    # More writes in flight than connections: the extra ones fold and encode ahead, then wait for
    # a connection (cdc_sink_postgres.overlap.EarlySlots), so the setting is not capped.
    assert PostgresSink("pg", PostgresSinkConfig(dsn=dsn, overlapping_writes=8, pool_max_size=3)).overlapping_writes == 8


@given(
    st.frozensets(st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))),
    st.frozensets(st.integers(-(2**31), 2**31 - 1)),
    st.frozensets(st.floats(width=64)),
)
def test_a_set_stored_as_an_array_is_in_one_order(texts: frozenset[str], ints: frozenset[int], floats: frozenset[float]) -> None:
    """Python iterates a set in an order that depends on its elements' hashes (for str: on the
    process); the array is sorted, so the same set is the same array, also as a key."""
    for values, cql in ((texts, "set<text>"), (ints, "set<int>")):
        stored = to_db(values, parse_type(f"frozen<{cql}>"))
        assert stored == sorted(values)
    stored = to_db(floats, parse_type("frozen<set<double>>"))
    numbers = [v for v in stored if not math.isnan(v)]
    assert numbers == sorted(v for v in floats if not math.isnan(v))
    assert stored[len(numbers) :] == [v for v in stored if math.isnan(v)]  # NaN last
