"""Which overlapping writes may merge before their turn (cdc_sink_postgres.overlap), without a server."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdc_core.turns import Turns
from cdc_sink_postgres.overlap import Flights, disjoint, footprint

keys = st.sets(st.tuples(st.integers(0, 20), st.sampled_from(["a", "b"])), max_size=12)
footprints = st.dictionaries(st.sampled_from(["r1", "r2", "r3"]), keys, max_size=3)


@given(a=footprints, b=footprints)
def test_disjoint_is_no_shared_key_in_any_relation(a: dict[str, set[tuple[int, str]]], b: dict[str, set[tuple[int, str]]]) -> None:
    shared = any(a[r] & b[r] for r in a.keys() & b.keys())
    assert disjoint(a, b) is not shared
    assert disjoint(a, b) == disjoint(b, a)


def test_footprint_merges_a_relation_named_twice_and_drops_empty_ones() -> None:
    fp = footprint([("r", {1}), ("s", set()), ("r", {2}.union({3}))])
    assert {k: set(v) for k, v in fp.items()} == {"r": {1, 2, 3}}


async def test_early_merge_needs_every_pending_write_locked_known_and_disjoint() -> None:
    flights = Flights()
    turns = Turns()
    t0, t1, t2 = turns.take(), turns.take(), turns.take()
    f0, f1, f2 = flights.start(t0), flights.start(t1), flights.start(t2)
    f2.footprint = {"r": {5}}
    assert flights.early_locks(t2, f2) is None  # earlier ones have not folded yet
    f0.footprint, f1.footprint = {"r": {1}}, {"r": {2}, "s": {5}}
    assert flights.early_locks(t2, f2) is None  # nor taken their lock
    f0.locked = f1.locked = True
    assert flights.early_locks(t2, f2) == [f1.lock, f0.lock]
    f1.footprint = {"r": {5}}
    assert flights.early_locks(t2, f2) is None  # a shared row
    f1.footprint = {"r": {2}}
    flights.end(t1, f1)
    assert flights.early_locks(t2, f2) is None  # a pending write between retries: unknown
    assert flights.early_locks(t0, f0) is None  # nothing pending before the first one
    f2.footprint = None
    f1 = flights.start(t1)
    assert flights.early_locks(t2, f2) is None  # history-mode tables never merge early
