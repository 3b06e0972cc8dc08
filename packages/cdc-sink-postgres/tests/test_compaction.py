"""Tombstone compaction (cdc_sink_postgres.compaction): the rows a newer tombstone of the same key
makes redundant are removed, out of band, and nothing visible changes."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from frozendict import frozendict
from hypothesis import given
from hypothesis import strategies as st
from pg_sink_helpers import batch, int_range_delete, layout_of, partition_delete, schema, started_sink, upsert

from cdc_core.secrets import Secret
from cdc_core.testing.strategies import NOW
from cdc_sink_postgres import compaction
from cdc_sink_postgres.compaction import TombstoneCompaction, partition_compaction_sql
from cdc_sink_postgres.config import DEFAULT_INLINE_MAX_VALUES, PostgresSinkConfig
from cdc_sink_postgres.layout import TableLayout
from cdc_sink_postgres.merge import latest_state_merges
from cdc_sink_postgres.sink import PostgresSink
from cdc_sink_postgres.testing import PostgresHarness


@pytest.fixture(params=[0, DEFAULT_INLINE_MAX_VALUES], ids=["copy", "inline"])
async def harness(pg_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[PostgresHarness]:
    # No periodic run: these tests compact when they say so.
    h = PostgresHarness(pg_dsn, config_overrides={"inline_max_values": request.param, "tombstone_compaction_interval": 0})
    yield h
    await h.destroy()


async def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


@pytest.mark.integration
async def test_redundant_tombstones_of_the_keys_deleted_are_removed_and_nothing_visible_changes(harness: PostgresHarness) -> None:
    s = schema(f"cmp_{uuid.uuid4().hex[:6]}", {"pk": "int", "ck": "int", "v": "text"}, ck=("ck",))
    sink = await started_sink(harness)
    events = [upsert(s, {"pk": pk, "ck": ck}, 10, v=f"{pk}/{ck}") for pk in range(1, 5) for ck in range(1, 6)]
    events += [partition_delete(s, {"pk": 1}, 30), partition_delete(s, {"pk": 1}, 30), partition_delete(s, {"pk": 1}, 20)]
    events += [partition_delete(s, {"pk": 2}, 40)]
    events += [int_range_delete(s, 3, 2, 4, 20), int_range_delete(s, 3, 2, 4, 20), int_range_delete(s, 3, 1, 5, 15)]
    events += [upsert(s, {"pk": 3, "ck": 1}, 16, v="newer than the wider range")]
    for e in events:  # one batch each: a batch folds its own duplicates away
        assert (await sink.write(batch([e]))).rejected == []
    layout = layout_of(harness, s)
    pdel, rdel = layout.q(layout.partition_deletions), layout.q(layout.range_deletions)
    # Rows of keys this process appended once (pk 2) or never (pk 4), written by hand here (say,
    # by an earlier process): compaction leaves them alone.
    conn = await asyncpg.connect(harness.dsn)
    try:
        await conn.execute(f"INSERT INTO {pdel} (pk, ts) VALUES (4, 5), (4, 5), (2, 35)")
    finally:
        await conn.close()
    before = await harness.read_state(s, NOW)

    assert await sink.compact_tombstones() == 3  # (1, 20), one (1, 30), one of the two [2, 4] at 20

    assert await _rows(harness.dsn, f"SELECT pk, ts FROM {pdel} ORDER BY pk, ts") == [(1, 30), (2, 35), (2, 40), (4, 5), (4, 5)]
    ranges = await _rows(harness.dsn, f'SELECT pk, "start#ck", "end#ck", ts FROM {rdel} ORDER BY ts')
    assert ranges == [(3, 1, 5, 15), (3, 2, 4, 20)]
    after = await harness.read_state(s, NOW)
    assert after.rows == before.rows
    assert (3, 1) in after.rows and (1, 1) not in after.rows and (2, 1) not in after.rows
    assert await sink.compact_tombstones() == 0  # nothing noted since


@pytest.mark.integration
async def test_compaction_and_batches_appending_the_same_tombstones_never_wait_for_each_other(harness: PostgresHarness) -> None:
    """A batch only inserts tombstones; compaction only deletes rows older than one it sees. An
    open batch transaction appending a newer tombstone does not hold compaction up (nor lose its
    row), and an open compaction does not hold up a batch deleting the same partition."""
    s = schema(f"cmp_{uuid.uuid4().hex[:6]}", {"pk": "int", "a": "text"})
    sink = await started_sink(harness)
    for ts in (10, 10, 20):
        await sink.write(batch([partition_delete(s, {"pk": 1}, ts)]))
    layout = layout_of(harness, s)
    pdel = layout.q(layout.partition_deletions)
    other = await asyncpg.connect(harness.dsn)
    try:
        async with other.transaction():  # a batch of another writer, not committed yet
            await other.execute(latest_state_merges(layout).partition_deletions.inline_sql(), [1], [50])
            assert await asyncio.wait_for(sink.compact_tombstones(), 10) == 2
        assert await _rows(harness.dsn, f"SELECT pk, ts FROM {pdel} ORDER BY ts") == [(1, 20), (1, 50)]
        async with other.transaction():  # a compaction, not committed yet
            await other.execute(partition_compaction_sql(layout), [1])
            await asyncio.wait_for(sink.write(batch([partition_delete(s, {"pk": 1}, 60)])), 10)
        assert await _rows(harness.dsn, f"SELECT pk, ts FROM {pdel} ORDER BY ts") == [(1, 50), (1, 60)]
    finally:
        await other.close()


@pytest.mark.integration
async def test_the_sink_compacts_on_its_own_every_interval(pg_dsn: str) -> None:
    h = PostgresHarness(pg_dsn, config_overrides={"tombstone_compaction_interval": 0.05})
    try:
        s = schema(f"cmp_{uuid.uuid4().hex[:6]}", {"pk": "int", "a": "text"})
        sink = await started_sink(h)
        for ts in (10, 10, 20, 15):
            await sink.write(batch([partition_delete(s, {"pk": 1}, ts), partition_delete(s, {"pk": 2}, ts)]))
        layout = layout_of(h, s)
        sql = f"SELECT pk, ts FROM {layout.q(layout.partition_deletions)} ORDER BY pk"
        for _ in range(200):
            if await _rows(pg_dsn, sql) == [(1, 20), (2, 20)]:
                break
            await asyncio.sleep(0.05)
        assert await _rows(pg_dsn, sql) == [(1, 20), (2, 20)]
    finally:
        await h.destroy()


def test_compaction_interval_is_validated() -> None:
    with pytest.raises(ValueError, match="tombstone_compaction_interval"):
        PostgresSinkConfig(dsn=Secret("postgresql://u:p@h/db"), tombstone_compaction_interval=-1)


_LAYOUT = TableLayout.from_schema(schema("t", {"pk": "int", "ck": "int", "v": "text"}, ck=("ck",)), pg_schema="cdc", base="ks_t")


@given(
    partitions=st.lists(st.lists(st.integers(0, 30), max_size=20), max_size=5),
    ranges=st.lists(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["a", "b"])), max_size=10), max_size=5),
    chunk=st.integers(1, 7),
)
def test_every_key_appended_twice_is_compacted_once_in_chunks(
    partitions: list[list[int]], ranges: list[list[tuple[int, str]]], chunk: int
) -> None:
    """Each note is one batch's keys (a batch appends one row per key); keys appended by two or
    more batches are compacted, each once; every key is forgotten by the run."""
    noted = TombstoneCompaction(max_keys=25)
    p_count: collections.Counter[tuple[int]] = collections.Counter()
    r_count: collections.Counter[tuple[int, str]] = collections.Counter()
    for i in range(max(len(partitions), len(ranges))):
        p = set(partitions[i]) if i < len(partitions) else set()
        r = set(ranges[i]) if i < len(ranges) else set()
        noted.note(_LAYOUT, [(k,) for k in p], [((pk,), b) for pk, b in r])
        p_count.update((k,) for k in p)
        r_count.update(r)
    want_p = {k for k, n in p_count.items() if n > 1}
    want_r = {k for k, n in r_count.items() if n > 1}
    assert noted.pending == len(want_p) + len(want_r)
    assert noted.due is (len(p_count) + len(r_count) >= 25)
    old, compaction.CHUNK_KEYS = compaction.CHUNK_KEYS, chunk
    try:
        chunks = noted.take()
    finally:
        compaction.CHUNK_KEYS = old
    assert noted.pending == 0 and not noted.due and noted.take() == []
    # A key compacted is one row now: appended once more, it is compacted again; unless the run
    # forgot every key, at max_keys.
    again = next(iter(want_p), None)
    if again is not None:
        noted.note(_LAYOUT, [again], [])
        assert noted.pending == (0 if len(p_count) + len(r_count) >= 25 else 1)
    got_p = [k for sql, args in chunks if "partition_deletions" in sql for k in zip(*args, strict=True)]
    got_r = [k for sql, args in chunks if "range_deletions" in sql for k in zip(*args, strict=True)]
    assert sorted(got_p) == sorted(want_p) and sorted(got_r) == sorted(want_r)  # each once
    assert all(len(args[0]) <= chunk for _, args in chunks)


def test_the_delete_names_every_key_column() -> None:
    s = schema("t", {"a": "int", "b": "text", "v": "text"}, pk=("a", "b"))
    layout = TableLayout.from_schema(s, pg_schema="cdc", base="ks_t")
    sql = partition_compaction_sql(layout)
    assert sql.startswith('DELETE FROM "cdc"."ks_t__partition_deletions" d WHERE d.ctid = ANY (ARRAY(')
    assert 'unnest($1::integer[], $2::text[]) AS k("a", "b")' in sql
    assert 'n."a" = k."a" AND n."b" = k."b" ORDER BY n.ts DESC, n.ctid DESC LIMIT 1' in sql
    assert 'o."a" = k."a" AND o."b" = k."b" AND o.ctid <> newest.keep OFFSET 0' in sql


def test_tracking_is_bounded_and_a_run_at_the_bound_forgets_every_key() -> None:
    noted = TombstoneCompaction(max_keys=10)
    noted.note(_LAYOUT, [(k,) for k in range(10)], [])
    assert (noted.due, noted.pending) == (True, 0)
    assert (noted.take(), noted.due) == ([], False)
    noted.note(_LAYOUT, [(0,)], [])  # forgotten: as if first appended now
    assert noted.pending == 0
    noted.note(_LAYOUT, [(0,)], [])
    assert noted.pending == 1


async def test_a_sink_at_the_bound_forgets_its_keys_even_with_nothing_to_compact() -> None:
    """Deleting a million partitions once each must not grow the notes without bound (nor wake
    the compaction at every batch)."""
    sink = PostgresSink("bounded", PostgresSinkConfig(dsn=Secret("postgresql://u:p@h/db")))
    noted = sink._compaction
    noted.note(_LAYOUT, [(k,) for k in range(noted.max_keys)], [])
    assert (noted.due, noted.pending) == (True, 0)
    sink._compaction_due.set()
    task = asyncio.create_task(sink._compact_periodically(3600))
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not noted.due:
                break
        assert not noted.due  # (no statement was needed: no connection was asked for)
    finally:
        task.cancel()


@pytest.mark.integration
async def test_a_table_keyed_by_an_array_typed_column_is_left_alone_and_a_jsonb_keyed_one_compacted(harness: PostgresHarness) -> None:
    """Keys go back as unnest()ed array parameters: a frozen list key (integer[]) cannot, and its
    table is not compacted (nothing fails); a frozen map key (jsonb) can, and is."""
    sink = await started_sink(harness)
    for typ, key, removed in (("frozen<list<int>>", (1, 2), 0), ("frozen<map<text, int>>", frozendict({"a": 1}), 1)):
        s = schema(f"cmp_{uuid.uuid4().hex[:6]}", {"pk": typ, "v": "text"})
        for ts in (10, 20):
            assert (await sink.write(batch([partition_delete(s, {"pk": key}, ts)]))).rejected == []
        assert await sink.compact_tombstones() == removed, typ
        layout = layout_of(harness, s)
        assert await _rows(harness.dsn, f"SELECT ts FROM {layout.q(layout.partition_deletions)} ORDER BY ts") == (
            [(10,), (20,)] if removed == 0 else [(20,)]
        )
