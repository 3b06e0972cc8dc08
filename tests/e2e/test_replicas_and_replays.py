"""Duplicates are harmless end to end (design notes §1, §3).

* Replicas: with RF=3 three agents (one per node) deliver the same mutations, in any interleaving.
  Here three pipelines read the same cdc_raw under three node names into the same Postgres and
  ClickHouse destinations — two of them concurrently while the history is being written, the
  third after the sinks are already up to date — then one node's offsets are reset and it replays
  everything. After each step every sink equals Cassandra's ``SELECT *``.
* Crash: a ``cdc run`` process is SIGKILLed at a random moment while writes stream in. Right after
  the kill, Postgres holds exactly the events up to its committed offset (data and offsets in one
  transaction); after a restart everything converges and every sink's offset reaches the end.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import (
    HISTORY,
    NodeUnderTest,
    SinkTargets,
    create_items_table,
    decoded_events,
    diff_states,
    divergences,
    environ,
    model_state,
    pipeline_config,
    postgres_offsets,
    postgres_state,
    reset_destination_offsets,
    table_schema,
    wait_until,
    write_history,
)

from cdc_core.pipeline import Pipeline
from cdc_core.positions import Position
from cdc_core.schema import TableSchema

pytestmark = pytest.mark.integration


def _at(p: Position) -> tuple[int, int, int]:
    return (p.segment_id, p.offset, p.index)


async def _caught_up(pipeline: Pipeline, node_name: str, target: tuple[int, int, int]) -> list[str]:
    """What lanes of ``pipeline`` have not yet committed ``target`` (segment, offset, index) for ``node_name``."""
    behind = []
    for name, lane in pipeline.lanes.items():
        pos = lane.status.committed.get(node_name)
        if pos is None or _at(pos) < target:
            behind.append(f"{name}: committed {pos} < {target}")
    return behind


async def test_three_replicas_and_a_replay_converge(
    node7: NodeUnderTest, postgres_dsn: str, clickhouse_url: str, clickhouse_database: str, tmp_path: Path
) -> None:
    node = node7
    create_items_table(node)
    half = len(HISTORY) // 2
    write_history(node, HISTORY[:half])
    schema = table_schema(node)
    env = environ(pg_dsn=postgres_dsn, ch_url=clickhouse_url)
    agents = ("replica-1", "replica-2", "replica-3")
    targets = SinkTargets(
        pg_dsn=postgres_dsn,
        ch_url=clickhouse_url,
        ch_database=clickhouse_database,
        jsonl=tuple(tmp_path / f"events-{a}.jsonl" for a in agents),
    )

    def agent(name: str) -> Pipeline:
        config = pipeline_config(node, tmp_path, clickhouse_database=clickhouse_database, node_name=name, tag=f"-{name}")
        return Pipeline.from_config(config, environ=env)

    running: dict[str, tuple[Pipeline, asyncio.Task[Any]]] = {}

    def start(name: str) -> Pipeline:
        p = agent(name)
        running[name] = (p, asyncio.create_task(p.run()))
        return p

    async def stop(name: str) -> None:
        p, task = running.pop(name)
        p.stop()
        summary = await asyncio.wait_for(task, 30)
        await p.close()
        assert summary.failed == [], {n: lane.last_error for n, lane in summary.lanes.items()}

    timings: dict[str, float] = {}
    try:
        # Two agents read concurrently while the second half of the history is written.
        first = start("replica-1")
        start("replica-2")
        ttl_expired_at = await asyncio.to_thread(write_history, node, HISTORY[half:])
        poll = await wait_until(lambda: divergences(node, schema, targets, not_before=ttl_expired_at))
        assert poll.ok, "two concurrent replicas: sinks differ from Cassandra:\n  " + "\n  ".join(poll.last)
        timings["two replicas"] = poll.seconds

        # The end every lane must reach: what replica-1 committed once the sinks were converged.
        end = max(_at(lane.status.committed["replica-1"]) for lane in first.lanes.values())

        # A third agent arrives late and delivers every mutation again, older than what the sinks hold.
        third = start("replica-3")
        poll = await wait_until(lambda: _caught_up(third, "replica-3", end))
        assert poll.ok, poll.last
        remaining = await divergences(node, schema, targets)
        assert not remaining, "after a late third replica:\n  " + "\n  ".join(remaining)
        timings["third replica"] = poll.seconds

        # Replay: replica-1's offsets are reset everywhere and it reads cdc_raw from the start again.
        await stop("replica-1")
        await reset_destination_offsets("replica-1", pg_dsn=postgres_dsn, ch_url=clickhouse_url, ch_database=clickhouse_database)
        assert ("pg", "replica-1") not in await postgres_offsets(postgres_dsn)
        replay = agent("replica-1")
        await replay.offsets.reset("file", "replica-1")
        running["replica-1"] = (replay, asyncio.create_task(replay.run()))
        poll = await wait_until(lambda: _caught_up(replay, "replica-1", end))
        assert poll.ok, poll.last
        assert all(lane.status.applied_events > 0 for lane in replay.lanes.values()), "the replay re-applied nothing"
        remaining = await divergences(node, schema, targets)
        assert not remaining, "after a replay from reset offsets:\n  " + "\n  ".join(remaining)
        timings["replay"] = poll.seconds
    finally:
        for name in list(running):
            await stop(name)

    # Postgres keeps one committed position per (sink, node), all at the same place in the files.
    offsets = await postgres_offsets(postgres_dsn)
    assert set(offsets) == {("pg", a) for a in agents}, offsets
    assert {_at(p) for p in offsets.values()} == {_at(offsets["pg", "replica-1"])}, offsets
    assert _at(offsets["pg", "replica-1"]) >= end
    remaining = await divergences(node, schema, targets)
    assert not remaining, "after stopping every agent:\n  " + "\n  ".join(remaining)
    print(f"replicas/replay: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")


# --------------------------------------------------------------------------------------------
# crash: SIGKILL a `cdc run` process mid-stream
# --------------------------------------------------------------------------------------------
def _round(history: tuple[tuple[str, str], ...], prefix: str) -> tuple[tuple[str, str], ...]:
    """The history on other partitions (``'p1'`` → ``'<prefix>p1'``), so it can be written again."""
    return tuple((label, stmt.replace("'p", f"'{prefix}p")) for label, stmt in history)


def _cdc_run(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cdc = Path(sys.executable).with_name("cdc")
    with log.open("ab") as err:
        return subprocess.Popen([str(cdc), "run", str(config)], cwd=config.parent, stdout=subprocess.DEVNULL, stderr=err, env=env)


async def test_sigkill_mid_stream_then_restart_converges(
    node7: NodeUnderTest, postgres_dsn: str, clickhouse_url: str, clickhouse_database: str, tmp_path: Path
) -> None:
    node = node7
    create_items_table(node)
    schema = table_schema(node)
    node_name = "crash-node"
    config = pipeline_config(node, tmp_path, clickhouse_database=clickhouse_database, node_name=node_name)
    for sink in config["sinks"].values():  # small batches: many commits, so the kill lands between and inside them
        sink["batch"] = {"max_events": 16, "max_wait": 0.02, "max_in_flight": 2}
    config["logging"] = {"level": "info", "format": "json"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **environ(pg_dsn=postgres_dsn, ch_url=clickhouse_url)}
    log = tmp_path / "cdc-run.log"
    targets = SinkTargets(pg_dsn=postgres_dsn, ch_url=clickhouse_url, ch_database=clickhouse_database, jsonl=(tmp_path / "events.jsonl",))
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)

    proc = _cdc_run(path, env, log)
    writer: threading.Thread | None = None
    try:
        written: list[float] = []
        failed: list[BaseException] = []
        stop_writing = threading.Event()
        rounds: list[int] = []

        def write_rounds() -> None:
            # The history again and again on fresh partitions, until told to stop (at least two rounds).
            try:
                while not (stop_writing.is_set() and len(rounds) >= 2):
                    for label, stmt in _round(HISTORY, f"r{len(rounds)}-"):
                        write_history(node, ((label, stmt),))
                        time.sleep(0.03)  # pace the writes so the agent reads while they come in
                    rounds.append(len(rounds))
            except BaseException as exc:  # re-raised by the test
                failed.append(exc)
            finally:
                written.append(time.time())

        writer = threading.Thread(target=write_rounds, daemon=True)
        writer.start()
        kills: list[str] = []
        committed: Position | None = None
        for _ in range(2):
            # Kill at a random moment once the (re)started agent has committed something new.
            moved = functools.partial(_pg_offset_moved, postgres_dsn, node_name, committed, schema, failed)
            poll = await wait_until(moved, within=60, interval=0.05)
            if failed:
                raise failed[0]
            assert poll.ok, f"cdc run commits nothing: {poll.last}\n{log.read_text()[-3000:]}"
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            if failed:
                raise failed[0]
            assert writer.is_alive(), "the writes ended before the kill: not mid-stream"
            proc.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(proc.wait, 30) == -signal.SIGKILL

            # Right after the kill: Postgres holds exactly the events up to its committed offset
            # (data and offsets commit in one transaction), whatever the moment of the kill.
            committed = (await postgres_offsets(postgres_dsn)).get(("pg", node_name))
            now = int(time.time()) + 3600 * 24 * 365  # far ahead: no TTL boundary falls between the reads
            pg_now = await postgres_state(postgres_dsn, schema, now=now)
            decoded = await decoded_events(node, node_name)
            upto = [e for e in decoded if committed is not None and e.position <= committed]
            mismatch = diff_states(model_state(upto, now), pg_now)
            assert not mismatch, (
                f"seed {seed}: after a SIGKILL Postgres differs from the {len(upto)} decoded events up to its "
                f"committed offset {committed}:\n  " + "\n  ".join(mismatch)
            )
            kills.append(f"offset {committed} ({len(upto)}/{len(decoded)} events)")
            proc = _cdc_run(path, env, log)
        stop_writing.set()

        # The writer finishes while the restarted agent runs; everything converges.
        await asyncio.to_thread(writer.join, 120)
        if failed:
            raise failed[0]
        ttl_expired_at = written[0] + 2 + 1.5 if written else time.time()
        poll = await wait_until(lambda: divergences(node, schema, targets, not_before=ttl_expired_at))
        assert poll.ok, f"seed {seed}: after the restarts:\n  " + "\n  ".join(poll.last)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if writer is not None:
            writer.join(60)
    assert proc.returncode == 0, f"cdc run after SIGTERM: exit {proc.returncode}\n{log.read_text()[-3000:]}"

    # Offsets: the Postgres row of this node is at or past the last event of the table, and it is
    # the position of a real entry (the end of the last mutation read).
    events = await decoded_events(node, node_name)
    final = (await postgres_offsets(postgres_dsn))[("pg", node_name)]
    assert final >= max(e.position for e in events), (final, max(e.position for e in events))
    print(
        f"crash: seed {seed}, {len(rounds)} rounds of {len(HISTORY)} statements, SIGKILL at {'; '.join(kills)}; "
        f"final offset {final}; converged {poll.seconds:.1f}s after the writes"
    )


async def _pg_offset_moved(
    dsn: str, node_name: str, before: Position | None, schema: TableSchema, failed: list[BaseException]
) -> list[str]:
    """Empty once Postgres committed past ``before`` and holds rows of the table (or the writer failed)."""
    if failed:
        return []
    now = (await postgres_offsets(dsn)).get(("pg", node_name))
    if now is None or (before is not None and now <= before):
        return [f"Postgres offset still {now}"]
    return [] if (await postgres_state(dsn, schema)).rows else ["no row in Postgres yet"]
