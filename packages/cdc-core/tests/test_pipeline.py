"""The engine: lanes, batching, retries, DLQ, offsets, fan-out isolation, stop."""

from __future__ import annotations

import asyncio
import itertools
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from core_helpers import (
    DESTINATIONS,
    OVERLAPPING,
    SINKS,
    TEST_PLUGIN,
    CountingReader,
    CountingTransform,
    make_events,
    write_events,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_core.pipeline import Pipeline
from cdc_core.plugins import PluginRegistry
from cdc_core.positions import Position


@pytest.fixture(autouse=True)
def _clean() -> None:
    DESTINATIONS.clear()
    SINKS.clear()
    OVERLAPPING.clear()


def _config(tmp_path: Path, sinks: dict[str, Any], *, follow: bool = False) -> dict[str, Any]:
    return {
        "source": {"type": "jsonl", "path": str(tmp_path / "events.jsonl")},
        "sinks": sinks,
        "offsets": {"type": "sqlite", "path": str(tmp_path / "offsets.sqlite")},
        "dlq": {"directory": str(tmp_path / "dlq")},
        "follow": follow,
    }


def _pipeline(tmp_path: Path, sinks: dict[str, Any], **kw: Any) -> Pipeline:
    return Pipeline.from_config(_config(tmp_path, sinks, **kw), registry=PluginRegistry(autoload=False, plugins=[TEST_PLUGIN]))


async def test_a_lane_batches_by_the_configured_size_else_by_what_its_sink_prefers(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(50))
    sinks = {
        "prefers": {"type": "controlled", "preferred_batch": 20},
        "configured": {"type": "controlled", "preferred_batch": 20, "batch": {"max_events": 7}},
        "default": {"type": "controlled"},
    }
    p = _pipeline(tmp_path, sinks)
    summary = await p.run()
    await p.close()
    assert all(summary.lanes[name].applied_events == 50 for name in sinks)
    assert SINKS["prefers"].max_batch == 20  # 50 events ready at once: batches of 20, 20, 10
    assert SINKS["configured"].max_batch == 7
    assert SINKS["default"].max_batch == 50  # DEFAULT_MAX_EVENTS is larger than the whole file


async def test_every_sink_gets_every_event_and_commits(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(50))
    p = _pipeline(tmp_path, {"a": {"type": "controlled", "batch": {"max_events": 7}}, "b": {"type": "controlled"}})
    summary = await p.run()
    await p.close()
    assert summary.lanes["a"].applied_events == 50
    assert summary.lanes["b"].applied_events == 50
    assert len(DESTINATIONS["a"].all_events()) == 50
    assert SINKS["a"].max_batch <= 7
    last = Position(node="n1", segment_id=1, offset=100 + 49 * 10)
    assert summary.lanes["a"].committed == {"n1": last}


async def test_restart_resumes_after_the_committed_position(tmp_path: Path) -> None:
    events = make_events(30)
    write_events(tmp_path / "events.jsonl", events[:20])
    p = _pipeline(tmp_path, {"out": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}})
    await p.run()
    await p.close()
    write_events(tmp_path / "events.jsonl", events)  # the source grew
    p = _pipeline(tmp_path, {"out": {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}})
    summary = await p.run()
    await p.close()
    assert summary.lanes["out"].applied_events == 10
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["key"]["id"] for line in lines] == list(range(30))


async def test_transient_errors_are_retried(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(5))
    retry = {"attempts": 5, "base_delay": 0.001, "max_delay": 0.01}
    p = _pipeline(tmp_path, {"s": {"type": "controlled", "fail_times": 3, "retry": retry}})
    summary = await p.run()
    await p.close()
    assert summary.lanes["s"].applied_events == 5
    assert p.metrics.registry.get_sample_value("cdc_retries_total", {"destination": "s"}) == 3


async def test_rejected_events_go_to_the_dlq_and_the_rest_commits(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(10))
    p = _pipeline(tmp_path, {"s": {"type": "controlled", "reject_ids": [3, 7]}})
    summary = await p.run()
    await p.close()
    assert summary.lanes["s"].applied_events == 8
    files = p.dlq.files("s")
    assert len(files) == 1
    records = list(p.dlq.records(files[0]))
    assert sorted(r["event"]["key"]["id"] for r in records) == [3, 7]
    assert {r["error"] for r in records} == {"value out of range"}
    assert all(r["destination"] == "s" and r["attempts"] == 1 and r["position"].startswith("n1@1:") for r in records)


async def test_permanent_batch_failure_dead_letters_the_batch(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(4))
    p = _pipeline(tmp_path, {"bad": {"type": "controlled", "permanent": True}, "good": {"type": "controlled"}})
    summary = await p.run()
    await p.close()
    assert summary.lanes["good"].applied_events == 4
    assert summary.lanes["bad"].dlq_events == 4
    record = next(p.dlq.records(p.dlq.files("bad")[0]))
    assert record["error_type"] == "PermanentError"
    assert "PermanentError" in record["traceback"]


async def test_a_slow_sink_does_not_hold_back_a_fast_one(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(400))
    batch = {"max_events": 10, "max_in_flight": 2, "max_wait": 0.01}
    p = _pipeline(
        tmp_path,
        {"fast": {"type": "controlled", "batch": batch}, "slow": {"type": "controlled", "delay": 0.05, "batch": batch}},
        follow=True,
    )
    task = asyncio.create_task(p.run_until(count=400))
    try:
        for _ in range(500):
            await asyncio.sleep(0.02)
            if p.lanes["fast"].status.applied_events >= 400:
                break
        fast_done = p.lanes["fast"].status.applied_events
        slow_done = p.lanes["slow"].status.applied_events
        # The slow lane holds at most: the queued batches, the one being written and the one
        # waiting to be queued (the read-item queue is counted apart).
        assert p.lanes["slow"].queued_events <= (batch["max_in_flight"] + 2) * batch["max_events"]
    finally:
        p.stop()
        await asyncio.wait_for(task, 10)
        await p.close()
    assert fast_done == 400
    assert slow_done < 400


async def test_a_failing_sink_keeps_its_place_while_others_go_on(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(20))
    retry = {"attempts": 2, "base_delay": 0.001, "max_delay": 0.001}
    p = _pipeline(
        tmp_path,
        {"ok": {"type": "controlled"}, "down": {"type": "controlled", "fail_times": 1000, "retry": retry, "on_failure": "stop"}},
    )
    summary = await p.run()
    assert summary.lanes["ok"].applied_events == 20
    assert summary.lanes["down"].state == "failed"
    assert summary.lanes["down"].applied_events == 0
    assert summary.failed == ["down"]
    assert await p.committed() == {"ok": {"n1": make_events(20)[-1].position}, "down": {}}  # nothing committed for the failed sink
    await p.close()


async def test_memory_stays_bounded_when_a_sink_stalls(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(5000))
    batch = {"max_events": 50, "max_in_flight": 2, "max_wait": 0.01}
    p = _pipeline(tmp_path, {"stalled": {"type": "controlled", "delay": 3600, "batch": batch}}, follow=True)
    tracemalloc.start()
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.5)
    peak_a = tracemalloc.get_traced_memory()[1]
    await asyncio.sleep(0.5)
    _, peak_b = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The reader is not allowed to run ahead: a few batches are buffered, not the whole file.
    assert p.lanes["stalled"].queued_events <= (2 + 2) * 50
    assert peak_b - peak_a < 2_000_000
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await p.close()


async def test_stop_finishes_in_flight_batches_and_commits(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(100))
    batch = {"max_events": 10, "max_in_flight": 1, "max_wait": 0.01}
    p = _pipeline(tmp_path, {"s": {"type": "controlled", "delay": 0.02, "batch": batch}}, follow=True)
    task = asyncio.create_task(p.run())
    for _ in range(500):  # bounded wait for some progress
        if p.lanes["s"].status.applied_events >= 20:
            break
        await asyncio.sleep(0.01)
    p.stop()
    summary = await asyncio.wait_for(task, 5)
    await p.close()
    lane = summary.lanes["s"]
    assert lane.state == "stopped"
    assert lane.applied_events < 100
    assert DESTINATIONS["s"].offsets == lane.committed  # what was applied is exactly what is committed
    applied_ids = {e.key["id"] for e in DESTINATIONS["s"].all_events()}
    assert applied_ids == set(range(lane.applied_events))


async def test_run_until_without_follow_ends_with_the_source(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(30))
    p = _pipeline(tmp_path, {"s": {"type": "controlled"}}, follow=True)
    summary = await asyncio.wait_for(p.run_until(count=1000, follow=False), 10)
    await p.close()
    assert summary.lanes["s"].applied_events == 30
    assert DESTINATIONS["s"].offsets == {"n1": make_events(30)[-1].position}


async def test_an_abandoned_batch_unwinds_before_the_sink_closes(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(10))
    config = _config(tmp_path, {"s": {"type": "controlled", "delay": 3600, "batch": {"max_events": 5, "max_wait": 0.01}}}, follow=True)
    p = Pipeline.from_config({**config, "stop_timeout": 0.2}, registry=PluginRegistry(autoload=False, plugins=[TEST_PLUGIN]))
    task = asyncio.create_task(p.run())
    await asyncio.sleep(0.2)
    p.stop()
    summary = await asyncio.wait_for(task, 5)
    await p.close()
    assert summary.lanes["s"].applied_events == 0
    assert SINKS["s"].lifecycle == ["write unwound", "closed"]  # the sink is never closed under a batch
    assert await p.committed() == {"s": {}}


def _counting_config(tmp_path: Path, sinks: dict[str, Any], **fanout: Any) -> dict[str, Any]:
    cfg = _config(tmp_path, sinks)
    cfg["source"]["type"] = "counting"
    cfg["transforms"] = [{"type": "counting"}]
    cfg["fanout"] = fanout
    return cfg


async def test_the_source_is_read_and_transformed_once_for_all_sinks(tmp_path: Path) -> None:
    CountingReader.reads = CountingReader.items = CountingTransform.seen = 0
    write_events(tmp_path / "events.jsonl", make_events(300))
    sinks = {name: {"type": "controlled"} for name in ("a", "b", "c")}
    p = Pipeline.from_config(_counting_config(tmp_path, sinks), registry=PluginRegistry(autoload=False, plugins=[TEST_PLUGIN]))
    summary = await p.run()
    await p.close()
    assert all(lane.applied_events == 300 for lane in summary.lanes.values())
    assert CountingReader.reads == 1
    assert CountingReader.items == 300
    assert CountingTransform.seen == 300


async def test_a_lane_that_falls_behind_reads_on_its_own(tmp_path: Path) -> None:
    CountingReader.reads = CountingReader.items = 0
    write_events(tmp_path / "events.jsonl", make_events(600))
    batch = {"max_events": 10, "max_wait": 0.01, "max_in_flight": 1}
    sinks = {"fast": {"type": "controlled", "batch": batch}, "slow": {"type": "controlled", "delay": 0.02, "batch": batch}}
    cfg = _counting_config(tmp_path, sinks, buffer_chunks=2, chunk_size=20, chunk_wait=0.01)
    p = Pipeline.from_config(cfg, registry=PluginRegistry(autoload=False, plugins=[TEST_PLUGIN]))
    summary = await asyncio.wait_for(p.run(), 60)
    await p.close()
    assert p._hub is not None
    assert p._hub.detached == {"slow"}
    assert CountingReader.reads == 2  # the shared read, and the slow lane's own
    for name in ("fast", "slow"):
        assert summary.lanes[name].applied_events == 600
        assert sorted(e.key["id"] for e in DESTINATIONS[name].all_events()) == list(range(600))


async def test_a_lane_that_catches_up_rejoins_the_shared_read(tmp_path: Path) -> None:
    CountingReader.reads = CountingReader.items = 0
    write_events(tmp_path / "events.jsonl", make_events(3000))
    batch = {"max_events": 20, "max_wait": 0.01, "max_in_flight": 1}
    sinks = {
        "fast": {"type": "controlled", "batch": batch},
        "hiccup": {"type": "controlled", "delay": 0.1, "slow_writes": 3, "batch": batch},
    }
    cfg = _counting_config(tmp_path, sinks, buffer_chunks=4, chunk_size=20, chunk_wait=0.01)
    cfg["follow"] = cfg["source"]["follow"] = True  # the shared read waits at the end of the file, as on a live node
    p = Pipeline.from_config(cfg, registry=PluginRegistry(autoload=False, plugins=[TEST_PLUGIN]))
    summary = await asyncio.wait_for(p.run_until(count=3000), 60)
    await p.close()
    assert p._hub is not None
    assert p._hub.rejoins == 1
    assert p._hub.detached == set()
    assert CountingReader.reads == 2  # the shared read, and the lane's own while it was behind
    for name in ("fast", "hiccup"):
        assert summary.lanes[name].applied_events == 3000
        assert [e.key["id"] for e in DESTINATIONS[name].all_events()] == list(range(3000))  # each once, in order
        assert DESTINATIONS[name].offsets == {"n1": make_events(3000)[-1].position}


async def test_a_stalled_lane_does_not_grow_the_shared_buffer(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(3000))
    batch = {"max_events": 50, "max_in_flight": 2, "max_wait": 0.01}
    sinks = {"ok": {"type": "controlled", "batch": batch}, "stalled": {"type": "controlled", "delay": 3600, "batch": batch}}
    cfg = _counting_config(tmp_path, sinks, buffer_chunks=4, chunk_size=50)
    cfg["follow"] = True
    p = Pipeline.from_config(cfg, registry=PluginRegistry(autoload=False, plugins=[TEST_PLUGIN]))
    task = asyncio.create_task(p.run())
    try:
        for _ in range(1000):
            if p.lanes["ok"].status.applied_events >= 3000:
                break
            await asyncio.sleep(0.01)
        assert p.lanes["ok"].status.applied_events == 3000
        assert p._hub is not None
        assert len(p._hub._chunks) <= 4
        assert p.lanes["stalled"].queued_events <= (2 + 2) * 50
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await p.close()


async def test_metrics_are_served_with_the_documented_names(tmp_path: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_events(tmp_path / "events.jsonl", make_events(30))
    cfg = _config(tmp_path, {"pg": {"type": "controlled"}}, follow=True)
    cfg["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    cfg["source"]["follow"] = True  # keep the pipeline (and its metrics server) up
    p = Pipeline.from_config(cfg, registry=PluginRegistry(autoload=False, plugins=[TEST_PLUGIN]))
    task = asyncio.create_task(p.run())
    try:
        for _ in range(500):
            if p.lanes["pg"].status.applied_events >= 30:
                break
            await asyncio.sleep(0.01)
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
    finally:
        p.stop()
        await asyncio.wait_for(task, 10)
        await p.close()
    assert 'cdc_events_processed_total{destination="pg",table="shop.orders"} 30.0' in body
    for name in ("cdc_replication_lag_seconds", "cdc_events_per_second", "cdc_backlog_depth", "cdc_batches_committed_total"):
        assert f'{name}{{destination="pg"}}' in body
    assert "# TYPE cdc_errors_total counter" in body


@pytest.mark.parametrize("sinks", [1, 2])
async def test_a_read_error_fails_the_lane_after_writing_what_came_before(tmp_path: Path, sinks: int) -> None:
    path = write_events(tmp_path / "events.jsonl", make_events(5))
    with path.open("ab") as fh:
        fh.write(b'{"v": 1, "broken": true}\n')
    names = [f"s{i}" for i in range(sinks)]
    p = _pipeline(tmp_path, {n: {"type": "controlled"} for n in names})
    summary = await asyncio.wait_for(p.run(), 10)  # never hangs
    await p.close()
    for n in names:
        lane = summary.lanes[n]
        assert lane.state == "failed"
        assert lane.last_error is not None
        assert "EventDecodeError" in lane.last_error
        assert lane.applied_events == 5  # everything before the bad line is applied and committed
        assert lane.committed == {"n1": make_events(5)[-1].position}


async def test_the_jsonl_sink_drops_a_half_written_last_line_after_a_crash(tmp_path: Path) -> None:
    events = make_events(6)
    write_events(tmp_path / "events.jsonl", events)
    out = write_events(tmp_path / "out.jsonl", events[:2])
    with out.open("ab") as fh:
        fh.write(b'{"v": 1, "posit')  # the crash: never committed, so it will be replayed
    cfg = _config(tmp_path, {"out": {"type": "jsonl", "path": str(out)}})
    p = Pipeline.from_config(cfg, registry=PluginRegistry(autoload=False, plugins=[TEST_PLUGIN]))
    await p.offsets.commit("out", {"n1": events[1].position})
    await p.run()
    await p.close()
    assert [orjson.loads(line)["key"]["id"] for line in out.read_bytes().splitlines()] == list(range(6))


# --- overlapping writes (sinks declaring overlapping_writes > 1) ------------------------------------


def _assert_commits_in_order(commits: list[Any]) -> None:
    for before, after in itertools.pairwise(commits):
        assert all(before[n] < after[n] for n in before.keys() & after.keys()), (before, after)


async def test_overlapping_writes_run_together_and_commit_in_order(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(60))
    # Every other write finishes its private work at once, the one before it takes 30 ms: without
    # the turn, the later batch of each pair would commit first.
    batch = {"max_events": 10, "max_in_flight": 2, "max_wait": 0.01}
    p = _pipeline(tmp_path, {"s": {"type": "overlapping", "overlap": 2, "delays": [0.03, 0.0], "batch": batch}})
    summary = await p.run()
    await p.close()
    sink = OVERLAPPING["s"]
    assert sink.most_writing == 2  # the writes really overlapped
    assert len(sink.commits) == 6
    _assert_commits_in_order(sink.commits)
    assert summary.lanes["s"].applied_events == 60
    assert sorted(e.key["id"] for e in DESTINATIONS["s"].all_events()) == list(range(60))
    assert summary.lanes["s"].committed == DESTINATIONS["s"].offsets == {"n1": make_events(60)[-1].position}


async def test_overlap_is_bounded_by_max_in_flight(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(40))
    batch = {"max_events": 5, "max_in_flight": 1, "max_wait": 0.01}
    p = _pipeline(tmp_path, {"s": {"type": "overlapping", "overlap": 4, "delays": [0.01], "batch": batch}})
    await p.run()
    await p.close()
    assert OVERLAPPING["s"].most_writing == 1
    assert len(DESTINATIONS["s"].all_events()) == 40


async def test_a_failed_write_is_retried_in_its_place(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(40))
    batch = {"max_events": 10, "max_in_flight": 3, "max_wait": 0.01}
    retry = {"attempts": 5, "base_delay": 0.001, "max_delay": 0.01}
    sinks = {
        "s": {
            "type": "overlapping",
            "overlap": 3,
            "delays": [0.02, 0.0, 0.0],
            "fail_calls": [0, 1],
            "fail_after_turn": True,
            "retry": retry,
        }
    }
    p = _pipeline(tmp_path, {k: {**v, "batch": batch} for k, v in sinks.items()})
    summary = await p.run()
    await p.close()
    sink = OVERLAPPING["s"]
    _assert_commits_in_order(sink.commits)
    assert len(sink.commits) == 4  # each batch committed exactly once
    assert summary.lanes["s"].applied_events == 40
    assert DESTINATIONS["s"].offsets == {"n1": make_events(40)[-1].position}


async def test_a_failed_lane_cancels_the_writes_waiting_for_their_turn(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", make_events(30))
    batch = {"max_events": 10, "max_in_flight": 2, "max_wait": 0.01}
    retry = {"attempts": 1, "base_delay": 0.001, "max_delay": 0.001}
    # The first write fails for good after the second one is waiting for its turn.
    sink = {"type": "overlapping", "overlap": 2, "delays": [0.05, 0.0], "fail_calls": [0], "fail_after_turn": True}
    p = _pipeline(tmp_path, {"s": {**sink, "retry": retry, "batch": batch, "on_failure": "stop"}})
    summary = await p.run()
    await p.close()
    assert summary.lanes["s"].state == "failed"
    assert OVERLAPPING["s"].cancelled == 1  # the second write, before it committed anything
    assert OVERLAPPING["s"].commits == []
    assert DESTINATIONS["s"].offsets == {}
    assert await p.committed() == {"s": {}}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    overlap=st.integers(1, 4),
    max_events=st.integers(1, 12),
    delays=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.005]), min_size=1, max_size=6),
    fail_calls=st.lists(st.integers(0, 15), max_size=4),
    fail_after_turn=st.booleans(),
)
def test_overlapping_writes_lose_nothing_and_commit_in_order(
    tmp_path_factory: pytest.TempPathFactory,
    overlap: int,
    max_events: int,
    delays: list[float],
    fail_calls: list[int],
    fail_after_turn: bool,
) -> None:
    DESTINATIONS.clear()
    OVERLAPPING.clear()
    tmp_path = tmp_path_factory.mktemp("overlap")
    events = make_events(40)
    write_events(tmp_path / "events.jsonl", events)
    retry = {"attempts": 20, "base_delay": 0.0001, "max_delay": 0.0001}
    batch = {"max_events": max_events, "max_in_flight": 4, "max_wait": 0.001}
    sink = {"type": "overlapping", "overlap": overlap, "delays": delays, "fail_calls": fail_calls, "fail_after_turn": fail_after_turn}

    async def run() -> None:
        p = _pipeline(tmp_path, {"s": {**sink, "retry": retry, "batch": batch}})
        summary = await asyncio.wait_for(p.run(), 30)
        await p.close()
        assert summary.lanes["s"].applied_events == 40
        _assert_commits_in_order(OVERLAPPING["s"].commits)
        assert OVERLAPPING["s"].most_writing <= overlap
        assert sorted(e.key["id"] for e in DESTINATIONS["s"].all_events()) == list(range(40))
        assert DESTINATIONS["s"].offsets == summary.lanes["s"].committed == {"n1": events[-1].position}

    asyncio.run(run())
