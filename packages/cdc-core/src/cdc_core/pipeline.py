"""The engine: one reader, transforms, and a lane per sink.

Each sink has its own lane: its own read cursor (starting at the sink's committed position),
a bounded queue of read items, a batcher that applies the transforms, a bounded queue of at most
``max_in_flight`` batches, and a writer that retries, dead-letters and commits. A sink declaring
``overlapping_writes`` > 1 is handed the next batch while the previous one is still being
written (up to that many, and at most ``max_in_flight``); it moves their positions in order by
awaiting ``Batch.wait_turn``, and the writer records them in order. A lane that
lags or fails never blocks another: the commitlog on disk is the buffer, and each lane reads it
at its own pace, so memory stays bounded by the queue sizes whatever a sink does.

Ordering guarantee: transforms run in the batcher, before a batch exists — so sinks, the DLQ,
logs, spans and metric labels only ever see transformed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import traceback
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import structlog

from cdc_core.config import LoadedConfig, SinkConfig, load_config, structure_component
from cdc_core.dlq import DeadLetterQueue
from cdc_core.errors import ConfigError, PermanentError
from cdc_core.events import ChangeEvent
from cdc_core.factories import ComponentContext
from cdc_core.fanout import Detached, SharedSource, chunked, get_by
from cdc_core.observability import Metrics, tracer
from cdc_core.offsets import OffsetStore
from cdc_core.plugins import PluginRegistry
from cdc_core.positions import Position
from cdc_core.readers import Progress, Reader, ReaderItem
from cdc_core.retry import with_retry
from cdc_core.sinks import Batch, Rejected, Sink
from cdc_core.transforms import Transform
from cdc_core.turns import write_overlapping

__all__ = ["LaneStatus", "Pipeline", "RunSummary"]

log = structlog.get_logger(__name__)

_END = object()


@attrs.frozen
class _Failure:
    """Travels down a lane's queues in place of the end marker when reading failed."""

    error: Exception


@attrs.define(kw_only=True)
class LaneStatus:
    """What one sink's lane has done (``cdc status``, run summaries, tests)."""

    sink: str
    sink_type: str
    committed: dict[str, Position] = attrs.field(factory=dict)
    applied_events: int = 0
    dlq_events: int = 0
    batches: int = 0
    failures: int = 0
    state: str = "idle"  # idle | running | done | failed | stopped
    last_error: str | None = None
    newest_write_time: float | None = None


@attrs.frozen(kw_only=True)
class RunSummary:
    lanes: Mapping[str, LaneStatus]

    @property
    def failed(self) -> list[str]:
        return [name for name, lane in self.lanes.items() if lane.state == "failed"]


@attrs.define(kw_only=True)
class _Lane:
    name: str
    sink: Sink
    config: SinkConfig
    status: LaneStatus
    queued_events: int = 0
    rate_window: list[tuple[float, int]] = attrs.field(factory=list)


def _batch_id(sink: str, positions: Mapping[str, Position], first: Mapping[str, Position], count: int) -> str:
    # Deterministic for the batch's content: a re-sent batch gets the same id.
    text = f"{sink}|{sorted(map(str, first.values()))}|{sorted(map(str, positions.values()))}|{count}"
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class Pipeline:
    """A configured pipeline. Use :meth:`from_config`, then ``await run()`` (or ``run_until``)."""

    def __init__(
        self,
        loaded: LoadedConfig,
        registry: PluginRegistry,
        *,
        reader: Reader,
        transforms: Sequence[Transform],
        sinks: Mapping[str, tuple[Sink, SinkConfig]],
        offsets: OffsetStore,
        metrics: Metrics | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.pipeline
        self.registry = registry
        self.reader = reader
        self.transforms = list(transforms)
        self.offsets = offsets
        self.metrics = metrics or Metrics()
        self.dlq = DeadLetterQueue(self._path(self.config.dlq.directory))
        self.lanes = {
            name: _Lane(name=name, sink=sink, config=cfg, status=LaneStatus(sink=name, sink_type=cfg.type))
            for name, (sink, cfg) in sinks.items()
        }
        self._stopping = asyncio.Event()
        self._started = False
        self._metrics_server: Any = None
        self._hub: SharedSource | None = None
        self._warned_disabled = False

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        source: str | Path | Mapping[str, Any],
        *,
        registry: PluginRegistry | None = None,
        environ: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
    ) -> Pipeline:
        """Load, validate and build every component (no connection is made until ``run``)."""
        loaded = load_config(source, environ=environ)
        registry = registry or PluginRegistry()
        cfg = loaded.pipeline
        ctx = ComponentContext(instance_name="source", pipeline_name=cfg.name, base_dir=loaded.base_dir)

        readers = registry.readers()
        if cfg.source.type not in readers:
            raise ConfigError(f"source.type: unknown reader {cfg.source.type!r} (available: {', '.join(sorted(readers)) or 'none'})")
        rfac = readers[cfg.source.type].factory
        reader = rfac.create(structure_component(cfg.source.options, rfac.config_type, "source", loaded), ctx)

        available_t = registry.transforms()
        transforms: list[Transform] = []
        for i, t in enumerate(cfg.transforms):
            if t.type not in available_t:
                raise ConfigError(
                    f"transforms[{i}].type: unknown transform {t.type!r} (available: {', '.join(sorted(available_t)) or 'none'})"
                )
            tfac = available_t[t.type].factory
            t_ctx = attrs.evolve(ctx, instance_name=f"{t.type}{i}")
            transforms.append(tfac.create(structure_component(t.options, tfac.config_type, f"transforms[{i}]", loaded), t_ctx))

        available_s = registry.sinks()
        sinks: dict[str, tuple[Sink, SinkConfig]] = {}
        for name, s in cfg.sinks.items():
            if not s.enabled:
                continue
            if s.type not in available_s:
                raise ConfigError(f"sinks.{name}.type: unknown sink {s.type!r} (available: {', '.join(sorted(available_s)) or 'none'})")
            sfac = available_s[s.type].factory
            s_ctx = attrs.evolve(ctx, instance_name=name)
            sinks[name] = (sfac.create(structure_component(s.options, sfac.config_type, f"sinks.{name}", loaded), s_ctx), s)
        if not sinks:
            raise ConfigError("sinks: every sink is disabled")

        stores = registry.offset_stores()
        if cfg.offsets.type not in stores:
            raise ConfigError(f"offsets.type: unknown offset store {cfg.offsets.type!r} (available: {', '.join(sorted(stores))})")
        ofac = stores[cfg.offsets.type].factory
        offsets = ofac.create(structure_component(cfg.offsets.options, ofac.config_type, "offsets", loaded), ctx)
        return cls(loaded, registry, reader=reader, transforms=transforms, sinks=sinks, offsets=offsets, metrics=metrics)

    def _path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.loaded.base_dir / p

    # --- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop reading; in-flight batches are finished and committed; ``run`` then returns."""
        self._stopping.set()

    async def run(self) -> RunSummary:
        """Run until stopped (tailing), or until the source ends when ``follow`` is false."""
        return await self._run(follow=self.config.follow, count=None, until=None)

    async def run_until(
        self, *, count: int | None = None, positions: Mapping[str, Position] | None = None, follow: bool = True
    ) -> RunSummary:
        """Run until every sink applied ``count`` events or committed ``positions``.

        With ``follow`` (the default) the source is tailed until then, as for a live node; without
        it, the run also ends when the source has nothing more to read.
        """
        if count is None and positions is None:
            raise ValueError("run_until needs a count or positions")
        return await self._run(follow=follow, count=count, until=dict(positions or {}))

    async def committed(self) -> dict[str, dict[str, Position]]:
        """Per sink, per node, the committed position (asks sinks that store their own)."""
        out: dict[str, dict[str, Position]] = {}
        for name, lane in self.lanes.items():
            if lane.sink.stores_offsets:
                out[name] = dict(await lane.sink.committed_positions())
            else:
                out[name] = await self.offsets.load(name)
        return out

    async def start(self) -> None:
        """Start every component (``run`` does this; call it yourself for ``committed``/status)."""
        if self._started:
            return
        await self.reader.start()
        for t in self.transforms:
            await t.start()
        for lane in self.lanes.values():
            await lane.sink.start()
        for name, positions in (await self.committed()).items():
            self.lanes[name].status.committed = positions
        self._started = True

    async def close(self) -> None:
        for lane in self.lanes.values():
            with contextlib.suppress(Exception):
                await lane.sink.close()
        for t in self.transforms:
            with contextlib.suppress(Exception):
                await t.close()
        with contextlib.suppress(Exception):
            await self.reader.close()
        with contextlib.suppress(Exception):
            await self.offsets.close()
        self._started = False

    async def _run(self, *, follow: bool, count: int | None, until: dict[str, Position] | None) -> RunSummary:
        self._stopping.clear()
        await self.start()
        if self.config.metrics.enabled and self._metrics_server is None:
            from prometheus_client import start_http_server

            self._metrics_server, _ = start_http_server(
                self.config.metrics.port, addr=self.config.metrics.host, registry=self.metrics.registry
            )
        self.registry.hook.cdc_pipeline_started(pipeline_name=self.config.name, sinks=list(self.lanes))
        reason = "completed"
        fan = self.config.fanout
        hub_task: asyncio.Task[None] | None = None
        self._hub = None
        if fan.shared and len(self.lanes) > 1:
            self._hub = SharedSource(
                lambda start: self.reader.read(start, follow=follow),
                self._transform_chunk,
                self.lanes,
                SharedSource.common_start(lane.status.committed for lane in self.lanes.values()),
                capacity=fan.buffer_chunks,
                chunk_size=fan.chunk_size,
                chunk_wait=fan.chunk_wait,
            )
            hub_task = asyncio.create_task(self._hub.run(), name="shared-source")
        tasks = {asyncio.create_task(self._lane_loop(lane, follow, count, until), name=f"lane-{lane.name}") for lane in self.lanes.values()}
        lag_task = asyncio.create_task(self._refresh_lag(), name="lag")
        try:
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            reason = "cancelled"
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            lag_task.cancel()
            await asyncio.gather(lag_task, return_exceptions=True)
            if hub_task is not None:
                hub_task.cancel()
                await asyncio.gather(hub_task, return_exceptions=True)
            if self._stopping.is_set():
                reason = "stopped"
            if any(lane.status.state == "failed" for lane in self.lanes.values()):
                reason = "failed"
            self.registry.hook.cdc_pipeline_stopped(pipeline_name=self.config.name, reason=reason)
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
                self._metrics_server = None
        return RunSummary(lanes={name: lane.status for name, lane in self.lanes.items()})

    # --- one lane -------------------------------------------------------------------------------

    async def _lane_loop(self, lane: _Lane, follow: bool, count: int | None, until: dict[str, Position] | None) -> None:
        try:
            await self._lane_attempts(lane, follow, count, until)
        finally:
            if self._hub is not None:
                await self._hub.leave(lane.name)

    async def _lane_attempts(self, lane: _Lane, follow: bool, count: int | None, until: dict[str, Position] | None) -> None:
        while True:
            lane.status.state = "running"
            try:
                await self._lane_once(lane, follow, count, until)
            except Exception as exc:
                lane.status.failures += 1
                lane.status.state = "failed"
                lane.status.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.errors.labels(lane.name, type(exc).__name__).inc()
                log.error("sink lane failed", sink=lane.name, error_type=type(exc).__name__, error=str(exc), exc_info=True)
                if not follow or lane.config.on_failure == "stop" or self._stopping.is_set() or count is not None:
                    return
                # The commitlog keeps this lane's place: resume from its committed position.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(lane.config.restart_delay):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    lane.status.state = "stopped"  # stopped while waiting to restart: a clean stop
                    return
                if self._hub is not None:
                    await self._hub.leave(lane.name)  # a restarted lane reads on its own
                continue
            lane.status.state = "stopped" if self._stopping.is_set() else "done"
            return

    def _lane_reached(self, lane: _Lane, count: int | None, until: dict[str, Position] | None) -> bool:
        if count is not None and lane.status.applied_events >= count:
            return True
        if until:
            return all(node in lane.status.committed and not until[node] > lane.status.committed[node] for node in until)
        return False

    async def _lane_once(self, lane: _Lane, follow: bool, count: int | None, until: dict[str, Position] | None) -> None:
        bc = lane.config.batch
        max_events = bc.events_for(lane.sink)
        items: asyncio.Queue[Any] = asyncio.Queue(maxsize=max_events)
        batches: asyncio.Queue[Any] = asyncio.Queue(maxsize=bc.max_in_flight)
        done = asyncio.Event()  # the writer reached the run_until target

        draining = False  # stop requested: finish what was read, read nothing more

        async def produce() -> None:
            resume = dict(lane.status.committed)
            hub = self._hub
            try:
                while True:
                    if hub is not None and hub.attached(lane.name):
                        try:
                            while not done.is_set():
                                chunk = await hub.next(lane.name)
                                if chunk is None:
                                    break
                                for item in chunk:
                                    last = resume.get(item.position.node)
                                    if last is None or item.position > last:
                                        await items.put(item)
                                        resume[item.position.node] = item.position
                        except Detached:
                            log.info("sink lane fell behind the shared read: reading the files on its own", sink=lane.name)
                        else:
                            break
                    fan = self.config.fanout
                    rejoined = False
                    async with contextlib.aclosing(chunked(self.reader.read(resume, follow=follow), fan.chunk_size, fan.chunk_wait)) as own:
                        async for chunk in own:
                            for item in self._transform_chunk(chunk):
                                last = resume.get(item.position.node)
                                if last is None or item.position > last:
                                    await items.put(item)
                                    resume[item.position.node] = item.position
                            if done.is_set():
                                break
                            if hub is not None and await hub.rejoin(lane.name, resume):
                                log.info("sink lane caught up: back on the shared read", sink=lane.name)
                                rejoined = True
                                break
                    if not rejoined:
                        break
            except asyncio.CancelledError:
                if not draining:
                    raise
            except Exception as exc:
                # A read or transform error: what was read before it is still written, then the
                # lane fails with it (and restarts from its committed position).
                await items.put(_Failure(exc))
                return
            await items.put(_END)

        async def batch_up() -> None:
            ended = False
            end_marker: object = _END
            while not ended:
                first = await items.get()
                if first is _END or isinstance(first, _Failure):
                    end_marker = first
                    break
                pending: list[ReaderItem] = [first]
                deadline = asyncio.get_running_loop().time() + bc.max_wait
                while len(pending) < max_events:
                    try:
                        item = await get_by(items, deadline)
                    except TimeoutError:
                        break
                    if item is _END or isinstance(item, _Failure):
                        end_marker = item
                        ended = True
                        break
                    pending.append(item)
                batch = self._make_batch(lane, pending)
                if batch is not None:
                    lane.queued_events += len(batch.events)
                    self.metrics.backlog_depth.labels(lane.name).set(lane.queued_events + items.qsize())
                    await batches.put(batch)
            await batches.put(end_marker)  # only on a normal end or a failure: a cancelled lane needs none

        async def committed(batch: Batch, rejected: list[Rejected]) -> bool:
            """Bookkeeping of a written batch, in lane order; True once the run's target is reached."""
            await self._record(lane, batch, rejected)
            lane.queued_events -= len(batch.events)
            self.metrics.backlog_depth.labels(lane.name).set(lane.queued_events + items.qsize())
            return self._lane_reached(lane, count, until)

        async def lane_batches() -> AsyncIterator[Batch]:
            while True:
                batch = await batches.get()
                if batch is _END:
                    return
                if isinstance(batch, _Failure):
                    raise batch.error
                yield batch

        async def written(batch: Batch, rejected: list[Rejected]) -> bool:
            if await committed(batch, rejected):
                done.set()
                return True
            return False

        async def write() -> None:
            # Up to ``overlap`` writes at once (1 unless the sink declares more); each commits
            # after the one before it (Batch.wait_turn), and the bookkeeping runs in lane order.
            overlap = min(max(1, int(getattr(lane.sink, "overlapping_writes", 1))), bc.max_in_flight)
            await write_overlapping(lambda b: self._write(lane, b), lane_batches(), overlap, written)

        producer = asyncio.create_task(produce())
        batcher = asyncio.create_task(batch_up())
        writer = asyncio.create_task(write())
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            # On stop: stop reading now; what was already read is batched and written, unless
            # that takes longer than stop_timeout — then it is abandoned (and not committed).
            await asyncio.wait({writer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done():
                draining = True
                producer.cancel()
                try:
                    async with asyncio.timeout(self.config.stop_timeout):
                        await asyncio.shield(writer)
                except TimeoutError:
                    log.warning("stop timeout: abandoning in-flight batches", sink=lane.name, queued_events=lane.queued_events)
            if writer.done() and not writer.cancelled():
                writer.result()  # raise a writer failure
        finally:
            for task in (producer, batcher, writer, stopper):
                task.cancel()
            results = await asyncio.gather(producer, batcher, return_exceptions=True)
            # An abandoned writer is awaited too, so the sink is not closed under a batch still
            # unwinding; bounded, since a sink call may be slow to honour the cancellation.
            _, pending = await asyncio.wait({writer, stopper}, timeout=self.config.stop_timeout)
            if pending:
                log.warning("stop timeout: a cancelled writer has not finished", sink=lane.name)
            elif not writer.cancelled() and writer.exception() is not None and draining:
                log.warning("abandoned batch failed while cancelled", sink=lane.name, error=type(writer.exception()).__name__)
            for r in results:
                if isinstance(r, Exception):
                    raise r

    def _transform_chunk(self, chunk: Sequence[ReaderItem]) -> list[ReaderItem]:
        """Run the transforms over a chunk read from the source (once, whatever the lane count).

        Events a transform drops still advance the positions: a Progress item per node closes
        the chunk at its last read position.
        """
        raw = [i for i in chunk if not isinstance(i, Progress)]
        # One span per chunk read from the source (per event would cost more than the decoding).
        with tracer.start_as_current_span("cdc.read_event", attributes={"cdc.events": len(raw), "cdc.items": len(chunk)}):
            if not self.transforms or not raw:
                return list(chunk)
            events: list[ChangeEvent] = raw
            with tracer.start_as_current_span("cdc.mask_event", attributes={"cdc.events": len(raw)}):
                for t in self.transforms:
                    events = t.apply(events)
                    for record in t.audit():
                        log.info("transform audit", transform=t.name, **record)
            last: dict[str, Position] = {}
            for item in chunk:
                last[item.position.node] = item.position
            return [*events, *(Progress(position=p) for p in last.values())]

    def _make_batch(self, lane: _Lane, items: Sequence[ReaderItem]) -> Batch | None:
        positions: dict[str, Position] = {}
        first: dict[str, Position] = {}
        events: list[ChangeEvent] = []
        for item in items:
            pos = item.position
            first.setdefault(pos.node, pos)
            positions[pos.node] = pos
            if not isinstance(item, Progress):
                events.append(item)
        if not positions:
            return None
        return Batch(batch_id=_batch_id(lane.name, positions, first, len(events)), events=events, positions=positions)

    async def _write(self, lane: _Lane, batch: Batch) -> list[Rejected]:
        """Write ``batch`` with retries, dead-lettering what the sink refuses; returns the
        events that went to the DLQ."""
        blog = log.bind(sink=lane.name, batch_id=batch.batch_id)
        attempts = 1
        dead: dict[int, Rejected] = {}  # id(event) -> what is durably in the DLQ already

        def dead_letter_now(refused: Sequence[Rejected], tb: str | None) -> None:
            fresh = [r for r in refused if id(r.event) not in dead]
            if not fresh:
                return
            self.dlq.write(lane.name, [(r.event, r.error_type, r.error, tb, attempts) for r in fresh])
            dead.update((id(r.event), r) for r in fresh)
            lane.status.dlq_events += len(fresh)
            self.metrics.dlq_events.labels(lane.name).inc(len(fresh))
            blog.warning("events sent to the dead-letter queue", count=len(fresh), error_type=fresh[0].error_type)

        async def dead_letter(refused: Sequence[Rejected]) -> None:
            # Called by sinks that commit offsets themselves, before they commit (see Batch).
            await asyncio.to_thread(dead_letter_now, refused, None)

        batch = attrs.evolve(batch, dead_letter=dead_letter)
        if batch.events:

            def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
                self.metrics.retries.labels(lane.name).inc()
                self.metrics.errors.labels(lane.name, type(exc).__name__).inc()
                blog.warning(
                    "transient write error, retrying", attempt=attempt, delay=round(delay, 3), error_type=type(exc).__name__, error=str(exc)
                )

            try:
                with tracer.start_as_current_span(
                    f"cdc.write_{lane.config.type}", attributes={"cdc.sink": lane.name, "cdc.events": len(batch.events)}
                ):
                    result, attempts = await with_retry(lambda: lane.sink.write(batch), lane.config.retry, on_retry=on_retry)
                dead_letter_now(result.rejected, None)
            except PermanentError as exc:
                self.metrics.errors.labels(lane.name, "PermanentError").inc()
                # The whole batch cannot apply: dead-letter it durably first, then move the
                # offsets past it (sinks that keep offsets with their data: an empty write).
                dead_letter_now(
                    [Rejected(event=e, error=str(exc), error_type=type(exc).__name__) for e in batch.events], traceback.format_exc()
                )
                if lane.sink.stores_offsets:
                    empty = attrs.evolve(batch, events=())
                    await with_retry(lambda: lane.sink.write(empty), lane.config.retry)
        elif lane.sink.stores_offsets:
            # Nothing to write but positions moved (skipped tables, filtered events): sinks that
            # keep offsets with their data commit them through an empty write.
            await with_retry(lambda: lane.sink.write(batch), lane.config.retry)
        return list(dead.values())

    async def _record(self, lane: _Lane, batch: Batch, rejected: list[Rejected]) -> None:
        """After a batch is written: the core offsets (sinks not storing their own), status,
        metrics, the committed hook and the reader's cleanup."""
        blog = log.bind(sink=lane.name, batch_id=batch.batch_id)
        if not lane.sink.stores_offsets:
            await self.offsets.commit(lane.name, batch.positions)
        lane.status.committed.update(batch.positions)
        applied = len(batch.events) - len(rejected)
        lane.status.applied_events += applied
        lane.status.batches += 1
        self.metrics.batches.labels(lane.name).inc()
        per_table: dict[str, int] = {}
        newest = 0
        for e in batch.events:
            per_table[e.schema.qualified_name] = per_table.get(e.schema.qualified_name, 0) + 1
            newest = max(newest, e.max_timestamp)
        for table, n in per_table.items():
            self.metrics.events_processed.labels(lane.name, table).inc(n)
        now = time.time()
        if newest:
            lane.status.newest_write_time = newest / 1e6
            self.metrics.replication_lag.labels(lane.name).set(max(0.0, now - newest / 1e6))
        lane.rate_window.append((now, applied))
        lane.rate_window = [(t, n) for t, n in lane.rate_window if now - t <= 10.0]
        span = max(1e-3, now - lane.rate_window[0][0]) if len(lane.rate_window) > 1 else 1.0
        self.metrics.events_per_second.labels(lane.name).set(sum(n for _, n in lane.rate_window) / span)
        self.registry.hook.cdc_batch_committed(
            sink=lane.name, batch_id=batch.batch_id, event_count=applied, positions=dict(batch.positions)
        )
        blog.debug("batch committed", events=applied, positions=[str(p) for p in batch.positions.values()])
        await self._release()

    async def _refresh_lag(self) -> None:
        """Keep replication lag honest between batches: a stalled lane's lag keeps growing while
        it has work queued; a lane with nothing queued is caught up (lag 0)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for lane in self.lanes.values():
                if lane.queued_events > 0 and lane.status.newest_write_time is not None:
                    self.metrics.replication_lag.labels(lane.name).set(max(0.0, now - lane.status.newest_write_time))
                elif lane.queued_events == 0 and lane.status.state == "running":
                    self.metrics.replication_lag.labels(lane.name).set(0.0)

    async def _release(self) -> None:
        """Tell the reader what every lane has committed, so it may clean up behind them."""
        disabled = [name for name, s in self.config.sinks.items() if not s.enabled]
        if disabled:
            # A disabled sink has a place in cdc_raw too: nothing is released until it is back.
            if not self._warned_disabled:
                log.warning("cdc_raw cleanup paused: some sinks are disabled", sinks=disabled)
                self._warned_disabled = True
            return
        common: dict[str, Position] | None = None
        for lane in self.lanes.values():
            c = lane.status.committed
            common = dict(c) if common is None else {n: min(p, c[n]) for n, p in common.items() if n in c}
        if common:
            await self.reader.release(common)
