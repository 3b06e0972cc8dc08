"""One scenario of writes, shared by the integration tests, the recorded fixtures and their tests.

``SCHEMA`` creates the tables (``{ks}`` is the keyspace), ``WRITES`` are the statements in order
and :func:`check_events` asserts, field by field, what the reader must decode from them. Each
write touches its own key, so the checks find its events by (table, key).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from frozendict import frozendict

from cdc_core.cqltypes import Duration
from cdc_core.events import Cell, ChangeEvent, ChangeKind, ComplexChange, RangeBound

SCHEMA = [
    "CREATE TYPE {ks}.addr (street text, zip int)",
    "CREATE TABLE {ks}.all_types (pk int, ck text, a ascii, b bigint, bl blob, bo boolean, d date, dc decimal, db double,"
    " du duration, f float, i inet, it int, si smallint, t text, tm time, ts timestamp, tu timeuuid, ti tinyint, u uuid,"
    " vi varint, vec vector<float, 3>, tup frozen<tuple<int, text>>, fl frozen<list<int>>, fm frozen<map<text, frozen<set<int>>>>,"
    " fu frozen<addr>, PRIMARY KEY (pk, ck)) WITH cdc = true",
    "CREATE TABLE {ks}.coll (pk int PRIMARY KEY, l list<text>, s set<int>, m map<text, int>, u addr) WITH cdc = true",
    "CREATE TABLE {ks}.ev (pk text, ck1 int, ck2 text, s int static, v text, PRIMARY KEY ((pk), ck1, ck2))"
    " WITH CLUSTERING ORDER BY (ck1 DESC, ck2 ASC) AND cdc = true",
    "CREATE TABLE {ks}.comp (a int, b text, c int, v int, PRIMARY KEY ((a, b), c)) WITH cdc = true",
    "CREATE TABLE {ks}.cnt (pk int PRIMARY KEY, c counter) WITH cdc = true",
    "CREATE TABLE {ks}.nocdc (pk int PRIMARY KEY, v int)",
]

TU = uuid.UUID("8a7f0c2e-2d4a-11ef-9a3b-0242ac120002")
U = uuid.UUID("1b4e28ba-2fa1-41d2-883f-0016d3cca427")
T0 = 1_700_000_000_000_000  # µs, for USING TIMESTAMP

WRITES: list[tuple[str, str]] = [
    (
        "all_types",
        "INSERT INTO {ks}.all_types (pk, ck, a, b, bl, bo, d, dc, db, du, f, i, it, si, t, tm, ts, tu, ti, u, vi, vec, tup, fl, fm, fu)"
        " VALUES (1, 'x', 'asc', -9000000000, 0xcafe, true, '2024-02-29', 123.4500, 2.5, 1mo2d3ns, 1.5, '10.0.0.1', -7, 300,"
        " 'héllo', '13:14:15.123456789', '2024-01-02T03:04:05.678Z', " + str(TU) + ", -3, " + str(U) + ", 123456789012345678901234567890,"
        " [1.0, -2.0, 0.5], (4, 'four'), [3, 1, 2], {'k': {2, 1}}, {street: 'Main', zip: 12345}) USING TIMESTAMP " + str(T0),
    ),
    ("all_types_ipv6", "INSERT INTO {ks}.all_types (pk, ck, i, dc, vi) VALUES (1, 'y', '::1', -0.001, -1) USING TIMESTAMP " + str(T0)),
    ("all_types_nulls", "INSERT INTO {ks}.all_types (pk, ck, t, it) VALUES (1, 'z', null, null) USING TIMESTAMP " + str(T0)),
    ("update_some", "UPDATE {ks}.all_types USING TIMESTAMP " + str(T0 + 1) + " SET it = 8, t = 'u' WHERE pk = 2 AND ck = 'a'"),
    ("ttl", "INSERT INTO {ks}.all_types (pk, ck, it) VALUES (3, 'a', 1) USING TTL 1000 AND TIMESTAMP " + str(T0 + 2)),
    ("update_ttl", "UPDATE {ks}.all_types USING TTL 500 AND TIMESTAMP " + str(T0 + 3) + " SET t = 'ttl' WHERE pk = 3 AND ck = 'b'"),
    ("delete_cell", "DELETE t FROM {ks}.all_types USING TIMESTAMP " + str(T0 + 4) + " WHERE pk = 4 AND ck = 'a'"),
    ("delete_row", "DELETE FROM {ks}.all_types USING TIMESTAMP " + str(T0 + 5) + " WHERE pk = 4 AND ck = 'b'"),
    ("delete_range", "DELETE FROM {ks}.all_types USING TIMESTAMP " + str(T0 + 6) + " WHERE pk = 5 AND ck > 'c' AND ck <= 'f'"),
    ("delete_range_open", "DELETE FROM {ks}.all_types USING TIMESTAMP " + str(T0 + 7) + " WHERE pk = 6 AND ck >= 'm'"),
    ("delete_partition", "DELETE FROM {ks}.all_types USING TIMESTAMP " + str(T0 + 8) + " WHERE pk = 7"),
    ("coll_insert", "INSERT INTO {ks}.coll (pk, l, s, m, u) VALUES (1, ['a', 'b'], {3, 1}, {'x': 1, 'a': 2}, {street: 'S', zip: 9})"),
    ("list_append", "UPDATE {ks}.coll SET l = l + ['c'] WHERE pk = 1"),
    ("list_prepend", "UPDATE {ks}.coll SET l = ['z'] + l WHERE pk = 1"),
    ("list_set_index", "UPDATE {ks}.coll SET l[0] = 'zz' WHERE pk = 1"),
    ("list_remove", "UPDATE {ks}.coll SET l = l - ['b'] WHERE pk = 1"),
    ("set_add", "UPDATE {ks}.coll SET s = s + {7} WHERE pk = 1"),
    ("set_remove", "UPDATE {ks}.coll SET s = s - {3} WHERE pk = 1"),
    ("map_put", "UPDATE {ks}.coll SET m['y'] = 5 WHERE pk = 1"),
    ("map_remove", "DELETE m['x'] FROM {ks}.coll WHERE pk = 1"),
    ("udt_field", "UPDATE {ks}.coll SET u.zip = 10 WHERE pk = 1"),
    ("overwrite", "UPDATE {ks}.coll SET s = {42} WHERE pk = 2"),
    ("clear", "UPDATE {ks}.coll SET m = null WHERE pk = 3"),
    ("static", "INSERT INTO {ks}.ev (pk, s) VALUES ('p', 5)"),
    ("static_and_row", "INSERT INTO {ks}.ev (pk, ck1, ck2, s, v) VALUES ('q', 2, 'b', 6, 'vq')"),
    (
        "batch",
        "BEGIN UNLOGGED BATCH INSERT INTO {ks}.ev (pk, ck1, ck2, v) VALUES ('r', 1, 'a', 'r1');"
        " INSERT INTO {ks}.ev (pk, ck1, ck2, v) VALUES ('r', 3, 'c', 'r3'); APPLY BATCH",
    ),
    (
        "logged_batch",
        "BEGIN BATCH INSERT INTO {ks}.ev (pk, ck1, ck2, v) VALUES ('s', 1, 'a', 's1');"
        " UPDATE {ks}.coll SET l = ['lb'] WHERE pk = 4; APPLY BATCH",
    ),
    ("ev_range_prefix", "DELETE FROM {ks}.ev WHERE pk = 'r' AND ck1 = 3"),
    ("composite", "INSERT INTO {ks}.comp (a, b, c, v) VALUES (1, 'two', 3, 4)"),
    ("lwt", "INSERT INTO {ks}.comp (a, b, c, v) VALUES (9, 'lwt', 1, 1) IF NOT EXISTS"),
    ("counter", "UPDATE {ks}.cnt SET c = c + 5 WHERE pk = 1"),
    ("counter2", "UPDATE {ks}.cnt SET c = c - 2 WHERE pk = 1"),
    ("nocdc", "INSERT INTO {ks}.nocdc (pk, v) VALUES (1, 1)"),
    ("sentinel", "INSERT INTO {ks}.comp (a, b, c, v) VALUES (0, 'sentinel', 0, 0)"),
]


def _find(events: Sequence[ChangeEvent], table: str, kind: ChangeKind = ChangeKind.ROW, **key: Any) -> list[ChangeEvent]:
    return [
        e
        for e in events
        if e.table == table and e.kind is kind and all(e.key.get(k) == v for k, v in key.items()) and len(e.key) >= len(key)
    ]


def _one(events: Sequence[ChangeEvent], table: str, kind: ChangeKind = ChangeKind.ROW, *, static: bool = False, **key: Any) -> ChangeEvent:
    got = [e for e in _find(events, table, kind, **key) if e.static is static and (static or len(e.key) == len(key))]
    assert len(got) == 1, f"want one {kind.value} event on {table} {key} (static={static}), got {len(got)}: {got}"
    return got[0]


def _cell(e: ChangeEvent, name: str) -> Cell:
    c = e.cells[name]
    assert isinstance(c, Cell), c
    return c


def _complex(e: ChangeEvent, name: str) -> ComplexChange:
    c = e.cells[name]
    assert isinstance(c, ComplexChange), c
    return c


def check_events(events: Sequence[ChangeEvent]) -> None:
    """Assert the decoded events of the whole scenario (events of other keyspaces must be filtered out)."""
    # positions strictly increase
    positions = [e.position for e in events]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)

    e = _one(events, "all_types", pk=1, ck="x")
    assert e.liveness is not None
    assert e.liveness.timestamp == T0
    assert e.liveness.ttl is None
    assert e.row_deletion is None
    expected = {
        "a": "asc",
        "b": -9000000000,
        "bl": b"\xca\xfe",
        "bo": True,
        "d": dt.date(2024, 2, 29),
        "dc": Decimal("123.4500"),
        "db": 2.5,
        "du": Duration(1, 2, 3),
        "f": 1.5,
        "i": ipaddress.ip_address("10.0.0.1"),
        "it": -7,
        "si": 300,
        "t": "héllo",
        "tm": 13 * 3600 * 10**9 + 14 * 60 * 10**9 + 15 * 10**9 + 123456789,
        "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        "tu": TU,
        "ti": -3,
        "u": U,
        "vi": 123456789012345678901234567890,
        "vec": (1.0, -2.0, 0.5),
        "tup": (4, "four"),
        "fl": (3, 1, 2),
        "fm": frozendict({"k": (1, 2)}),
        "fu": frozendict({"street": "Main", "zip": 12345}),
    }
    assert set(e.cells) == set(expected)
    for name, value in expected.items():
        cell = _cell(e, name)
        assert cell.value == value, (name, cell.value, value)
        assert type(cell.value) is type(value), (name, type(cell.value))
        assert cell.timestamp == T0
        assert not cell.tombstone
        assert cell.ttl is None
    assert str(_cell(e, "dc").value) == "123.4500"

    e = _one(events, "all_types", pk=1, ck="y")
    assert _cell(e, "i").value == ipaddress.ip_address("::1")
    assert _cell(e, "dc").value == Decimal("-0.001")
    assert _cell(e, "vi").value == -1

    e = _one(events, "all_types", pk=1, ck="z")  # explicit nulls are tombstones
    assert set(e.cells) == {"t", "it"}
    assert all(_cell(e, n).tombstone and _cell(e, n).value is None and _cell(e, n).timestamp == T0 for n in ("t", "it"))

    e = _one(events, "all_types", pk=2, ck="a")  # UPDATE: no row marker, only the named cells
    assert e.liveness is None
    assert set(e.cells) == {"it", "t"}
    assert _cell(e, "it").value == 8
    assert _cell(e, "t").value == "u"
    assert _cell(e, "it").timestamp == T0 + 1

    e = _one(events, "all_types", pk=3, ck="a")
    assert e.liveness is not None
    assert e.liveness.ttl == 1000
    assert e.liveness.local_deletion_time is not None
    c = _cell(e, "it")
    assert c.ttl == 1000
    assert c.local_deletion_time == e.liveness.local_deletion_time
    assert c.value == 1
    e = _one(events, "all_types", pk=3, ck="b")
    c = _cell(e, "t")
    assert e.liveness is None
    assert c.ttl == 500
    assert c.expires_at is not None
    assert c.value == "ttl"
    assert c.timestamp == T0 + 3

    e = _one(events, "all_types", pk=4, ck="a")
    assert set(e.cells) == {"t"}
    assert _cell(e, "t").tombstone
    assert _cell(e, "t").timestamp == T0 + 4
    assert _cell(e, "t").local_deletion_time is not None

    e = _one(events, "all_types", pk=4, ck="b")
    assert e.row_deletion is not None
    assert e.row_deletion.timestamp == T0 + 5
    assert not e.cells
    assert e.liveness is None

    e = _one(events, "all_types", ChangeKind.RANGE_DELETE, pk=5)
    assert e.range_deletion is not None
    assert e.range_deletion.start == RangeBound(values=("c",), inclusive=False)
    assert e.range_deletion.end == RangeBound(values=("f",), inclusive=True)
    assert e.range_deletion.deletion.timestamp == T0 + 6
    e = _one(events, "all_types", ChangeKind.RANGE_DELETE, pk=6)
    assert e.range_deletion is not None
    assert e.range_deletion.end is None
    assert e.range_deletion.start == RangeBound(values=("m",), inclusive=True)

    e = _one(events, "all_types", ChangeKind.PARTITION_DELETE, pk=7)
    assert e.partition_deletion is not None
    assert e.partition_deletion.timestamp == T0 + 8
    assert dict(e.key) == {"pk": 7}

    coll = [x for x in events if x.table == "coll" and x.key == {"pk": 1}]
    assert len(coll) == 10, coll
    ins, app, pre, setidx, rem, sadd, srem, mput, mrem, ufield = coll
    ts = ins.liveness.timestamp if ins.liveness else None
    assert ts is not None
    l0 = _complex(ins, "l")
    assert l0.deletion is not None
    assert l0.deletion.timestamp == ts - 1
    assert [x.cell.value for x in l0.elements] == ["a", "b"]
    assert all(isinstance(x.path, uuid.UUID) for x in l0.elements)
    s0 = _complex(ins, "s")
    assert [x.path for x in s0.elements] == [1, 3]
    assert all(x.cell.value is None and not x.cell.tombstone for x in s0.elements)
    m0 = _complex(ins, "m")
    assert [(x.path, x.cell.value) for x in m0.elements] == [("a", 2), ("x", 1)]
    u0 = _complex(ins, "u")
    assert [(x.path, x.cell.value) for x in u0.elements] == [("street", "S"), ("zip", 9)]
    appended = _complex(app, "l")
    assert appended.deletion is None
    assert [x.cell.value for x in appended.elements] == ["c"]
    assert appended.elements[0].path > l0.elements[-1].path or appended.elements[0].path.time > l0.elements[-1].path.time
    prepended = _complex(pre, "l")
    assert [x.cell.value for x in prepended.elements] == ["z"]
    assert prepended.elements[0].path.time < l0.elements[0].path.time
    set0 = _complex(setidx, "l")  # l[0] = 'zz' reuses the path of the first element (the prepended one)
    assert [x.cell.value for x in set0.elements] == ["zz"]
    assert set0.elements[0].path == prepended.elements[0].path
    removed = _complex(rem, "l")
    assert [x.path for x in removed.elements] == [l0.elements[1].path]
    assert removed.elements[0].cell.tombstone
    assert [(x.path, x.cell.tombstone) for x in _complex(sadd, "s").elements] == [(7, False)]
    assert [(x.path, x.cell.tombstone) for x in _complex(srem, "s").elements] == [(3, True)]
    assert [(x.path, x.cell.value) for x in _complex(mput, "m").elements] == [("y", 5)]
    assert [(x.path, x.cell.tombstone) for x in _complex(mrem, "m").elements] == [("x", True)]
    assert [(x.path, x.cell.value) for x in _complex(ufield, "u").elements] == [("zip", 10)]

    e = _one(events, "coll", pk=2)
    ov = _complex(e, "s")
    assert ov.deletion is not None
    assert [x.path for x in ov.elements] == [42]
    assert ov.deletion.timestamp == ov.elements[0].cell.timestamp - 1
    e = _one(events, "coll", pk=3)
    cl = _complex(e, "m")
    assert cl.deletion is not None
    assert cl.elements == ()

    e = _one(events, "ev", static=True, pk="p")
    assert _cell(e, "s").value == 5
    assert set(e.cells) == {"s"}
    st = _one(events, "ev", static=True, pk="q")
    row = _one(events, "ev", pk="q", ck1=2, ck2="b")
    assert _cell(st, "s").value == 6
    assert _cell(row, "v").value == "vq"
    assert st.position.index + 1 == row.position.index
    r1 = _one(events, "ev", pk="r", ck1=1, ck2="a")
    r3 = _one(events, "ev", pk="r", ck1=3, ck2="c")
    # one mutation, clustering order is DESC on ck1: ck1=3 first
    assert r1.position.offset == r3.position.offset
    assert r3.position.index < r1.position.index
    s1 = _one(events, "ev", pk="s", ck1=1, ck2="a")
    assert _cell(s1, "v").value == "s1"
    lb = _one(events, "coll", pk=4)
    assert [x.cell.value for x in _complex(lb, "l").elements] == ["lb"]
    e = _one(events, "ev", ChangeKind.RANGE_DELETE, pk="r")
    assert e.range_deletion is not None
    assert e.range_deletion.start == RangeBound(values=(3,), inclusive=True)
    assert e.range_deletion.end == RangeBound(values=(3,), inclusive=True)

    e = _one(events, "comp", a=1, b="two", c=3)
    assert _cell(e, "v").value == 4
    lwt = _one(events, "comp", a=9, b="lwt", c=1)
    assert lwt.liveness is not None
    assert _cell(lwt, "v").timestamp == lwt.liveness.timestamp

    counters = _find(events, "cnt", pk=1)
    assert [_cell(x, "c").value for x in counters] == [5, 3]  # the node's cumulative shard value
    assert not [x for x in events if x.table == "nocdc"]
    _one(events, "comp", a=0, b="sentinel", c=0)
