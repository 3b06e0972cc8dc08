"""The ``cdc`` command line. Exit codes: 0 success, 1 failure, 2 bad configuration or usage."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from cdc_core.__about__ import __version__
from cdc_core.config import load_config
from cdc_core.errors import CdcError, ConfigError, PluginError
from cdc_core.observability import configure_logging
from cdc_core.pipeline import Pipeline
from cdc_core.plugins import PluginRegistry
from cdc_core.positions import Position, PositionParseError
from cdc_core.retry import with_retry
from cdc_core.serialization import event_to_json

log = structlog.get_logger(__name__)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


# --- commands ---------------------------------------------------------------------------------


async def _cmd_run(args: argparse.Namespace) -> int:
    # Logging first: components bind their loggers while they are built.
    log_cfg = load_config(args.config).pipeline.logging
    configure_logging(args.log_level or log_cfg.level, log_cfg.format)
    pipeline = Pipeline.from_config(args.config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pipeline.stop)
    try:
        if args.until_count is not None:
            summary = await pipeline.run_until(count=args.until_count)
        else:
            summary = await pipeline.run()
    finally:
        await pipeline.close()
    for name, lane in summary.lanes.items():
        log.info(
            "sink summary",
            sink=name,
            state=lane.state,
            applied=lane.applied_events,
            dead_lettered=lane.dlq_events,
            batches=lane.batches,
            committed={n: str(p) for n, p in lane.committed.items()},
        )
    if summary.failed:
        _err(f"failed sinks: {', '.join(summary.failed)}")
        return 1
    return 0


def _schemas_for_validation(pipeline: Pipeline, schema_file: str | None) -> list[Any]:
    """Table schemas to check rules against: ``--schema`` or the source's snapshot (no connection)."""
    from cdc_core.commitlog.reader import CommitLogReader
    from cdc_core.commitlog.schema_source import load_schema_snapshot

    reader = pipeline.reader
    path = Path(schema_file) if schema_file else None
    if path is None and isinstance(reader, CommitLogReader) and reader.config.schema_snapshot is not None:
        path = reader.config.schema_snapshot
    if path is None:
        return []
    catalog = load_schema_snapshot(path)
    tables = list(catalog.tables.values())
    if isinstance(reader, CommitLogReader):
        tables = [t for t in tables if reader.config.selects(t.keyspace, t.table)]
    return tables


def _validators(obj: object) -> list[Any]:
    validate = getattr(obj, "validate", None)  # optional: validate(schemas) -> warnings
    return [validate] if callable(validate) else []


async def _cmd_validate(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_config(args.config)
    warnings: list[str] = []
    for t in pipeline.transforms:
        validate_config = getattr(t, "validate_config", None)
        if callable(validate_config):
            warnings.extend(validate_config())
    schemas = _schemas_for_validation(pipeline, args.schema)
    if schemas:
        components: list[object] = [*pipeline.transforms, *(lane.sink for lane in pipeline.lanes.values())]
        for component in components:
            for validate in _validators(component):
                warnings.extend(validate(schemas))
    for w in warnings:
        _out(f"warning: {w}")
    checked = f", checked against {len(schemas)} table schemas" if schemas else ""
    _out(f"{args.config}: valid (source {pipeline.config.source.type}, sinks {', '.join(pipeline.lanes)}{checked})")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    registry = PluginRegistry()
    rows = registry.components()
    _out(f"{'KIND':<13} {'NAME':<12} {'DISTRIBUTION':<22} {'VERSION':<9} DESCRIPTION")
    for kind, name, info, description in rows:
        _out(f"{kind:<13} {name:<12} {info.distribution:<22} {info.version:<9} {description}")
    return 0


async def _cmd_offsets(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_config(args.config)
    try:
        await pipeline.start()
        if args.action == "show":
            for sink, positions in (await pipeline.committed()).items():
                where = "destination" if pipeline.lanes[sink].sink.stores_offsets else "offset store"
                if not positions:
                    _out(f"{sink}: nothing committed ({where})")
                for node, pos in sorted(positions.items()):
                    _out(f"{sink}: {node} {pos} ({where})")
            return 0
        if args.sink not in pipeline.lanes:
            raise ConfigError(f"--sink: no sink named {args.sink!r} (have: {', '.join(pipeline.lanes)})")
        if pipeline.lanes[args.sink].sink.stores_offsets:
            _err(f"{args.sink} keeps its offsets in its destination (table cdc_offsets); reset them there")
            return 1
        if not args.yes:
            _err("resetting offsets replays everything from the start of cdc_raw; add --yes to confirm")
            return 2
        await pipeline.offsets.reset(args.sink, args.node)
        _out(f"{args.sink}: offsets reset" + (f" for node {args.node}" if args.node else ""))
        return 0
    finally:
        await pipeline.close()


async def _cmd_status(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_config(args.config)
    try:
        await pipeline.start()
        committed = await pipeline.committed()
        backlog = getattr(pipeline.reader, "backlog", None)
        for sink, positions in committed.items():
            extra = ""
            if callable(backlog):
                info = await backlog(positions)
                extra = f" backlog_bytes={info.get('bytes', '?')} segments={info.get('segments', '?')}"
            pos_text = ", ".join(str(p) for p in positions.values()) or "nothing committed"
            _out(f"{sink} ({pipeline.lanes[sink].status.sink_type}): {pos_text}{extra}")
        pending = pipeline.dlq.files()
        _out(f"dead-letter files pending: {len(pending)}")
        return 0
    finally:
        await pipeline.close()


async def _cmd_dlq(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_config(args.config)
    dlq = pipeline.dlq
    if args.action == "list":
        files = dlq.files(args.sink)
        if not files:
            _out("the dead-letter queue is empty")
        for f in files:
            records = list(dlq.records(f))
            kinds = sorted({str(r.get("error_type")) for r in records})
            _out(f"{f}: {len(records)} events ({', '.join(kinds)})")
        return 0
    try:
        await pipeline.start()
        total = 0
        refused = 0
        for f in dlq.files(args.sink):
            sink_name = f.parent.name
            if sink_name not in pipeline.lanes:
                _err(f"{f}: no sink named {sink_name!r} in {args.config}; skipped")
                continue
            lane = pipeline.lanes[sink_name]
            events = [dlq.event_of(r) for r in dlq.records(f)]
            from cdc_core.sinks import Batch

            batch = Batch(batch_id=f"dlq-replay-{f.stem}-{uuid.uuid4().hex[:12]}", events=events, positions={})
            result, _ = await with_retry(functools.partial(lane.sink.write, batch), lane.config.retry)
            if result.rejected:
                _err(f"{f}: {len(result.rejected)} of {len(events)} events refused again; the file stays")
                refused += 1
                continue
            dlq.mark_replayed(f)
            total += len(events)
            _out(f"{f}: {len(events)} events replayed into {sink_name}")
        _out(f"replayed {total} events")
        return 1 if refused else 0
    finally:
        await pipeline.close()


async def _cmd_tail(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_config(args.config)
    start: dict[str, Position] = {}
    if args.from_position:
        pos = Position.parse(args.from_position)
        start[pos.node] = pos
    printed = 0
    try:
        await pipeline.reader.start()
        for t in pipeline.transforms:
            await t.start()
        stream = pipeline.reader.read(start, follow=args.follow)
        async for item in stream:
            if not hasattr(item, "schema"):
                continue
            events: list[Any] = [item]
            for t in pipeline.transforms:  # tail shows masked values only
                events = t.apply(events)
            for e in events:
                sys.stdout.buffer.write(event_to_json(e) + b"\n")
                printed += 1
            if args.limit is not None and printed >= args.limit:
                break
        sys.stdout.flush()
        return 0
    finally:
        await pipeline.close()


async def _cmd_schema_dump(args: argparse.Namespace) -> int:
    import orjson

    from cdc_core.commitlog.reader import CommitLogReader
    from cdc_core.commitlog.schema_source import CassandraSchemaSource, dump_schema

    pipeline = Pipeline.from_config(args.config)
    reader = pipeline.reader
    if not isinstance(reader, CommitLogReader) or not reader.config.contact_points:
        raise ConfigError("source: `cdc schema dump` needs the cassandra reader with source.contact_points")
    source = CassandraSchemaSource(cluster_kwargs=reader.config.cluster_kwargs())
    try:
        keyspaces = [k for k in reader.config.keyspaces if not any(ch in k for ch in "*?[")] or None
        snapshot = await asyncio.to_thread(dump_schema, source.session(), keyspaces)
    finally:
        source.close()
    await asyncio.to_thread(Path(args.output).write_bytes, orjson.dumps(snapshot, option=orjson.OPT_INDENT_2))
    _out(f"wrote the schema of {len(snapshot['tables'])} tables to {args.output}")
    return 0


# --- argument parsing -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdc", description="Change data capture from Apache Cassandra's CDC commitlogs.")
    parser.add_argument("--version", action="version", version=f"cdc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a pipeline until stopped (SIGTERM/SIGINT stop it cleanly)")
    p.add_argument("config", help="pipeline YAML file")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override logging.level")
    p.add_argument("--until-count", type=int, metavar="N", help="stop once every sink applied N events")
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("validate", help="check a configuration: keys, types, plugins, secrets (connects to nothing)")
    p.add_argument("config")
    p.add_argument("--schema", metavar="SNAPSHOT", help="also check rules against this schema snapshot (cdc schema dump)")
    p.set_defaults(handler=_cmd_validate)

    p = sub.add_parser("plugins", help="list the installed readers, transforms, sinks and offset stores")
    p.set_defaults(handler=_cmd_plugins)

    p = sub.add_parser("offsets", help="show or reset committed positions")
    osub = p.add_subparsers(dest="action", required=True)
    o = osub.add_parser("show", help="per sink and node, the committed position")
    o.add_argument("config")
    o = osub.add_parser("reset", help="forget a sink's positions in the offset store (replays from the start)")
    o.add_argument("config")
    o.add_argument("--sink", required=True)
    o.add_argument("--node", help="only this source node")
    o.add_argument("--yes", action="store_true", help="confirm")
    p.set_defaults(handler=_cmd_offsets)

    p = sub.add_parser("dlq", help="list or replay the dead-letter queue")
    dsub = p.add_subparsers(dest="action", required=True)
    for action, text in (("list", "files and counts per sink"), ("replay", "send dead-lettered events to their sink again")):
        d = dsub.add_parser(action, help=text)
        d.add_argument("config")
        d.add_argument("--sink", help="only this sink")
    p.set_defaults(handler=_cmd_dlq)

    p = sub.add_parser("status", help="per sink: committed positions and backlog")
    p.add_argument("config")
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser("tail", help="print decoded (and masked) events as JSON lines")
    p.add_argument("config")
    p.add_argument("--from", dest="from_position", metavar="POSITION", help="start after node@segment:offset:index")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N events")
    p.add_argument("--follow", action="store_true", help="keep waiting for new events")
    p.set_defaults(handler=_cmd_tail)

    p = sub.add_parser("schema", help="schema snapshots for offline decoding")
    ssub = p.add_subparsers(dest="action", required=True)
    s = ssub.add_parser("dump", help="write the source's table schemas to a snapshot file")
    s.add_argument("config")
    s.add_argument("--output", "-o", required=True)
    p.set_defaults(handler=_cmd_schema_dump)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    # Until a command configures its own: warnings and errors only, on stderr (stdout is data).
    configure_logging("warning", "console")
    try:
        if asyncio.iscoroutinefunction(handler):
            with contextlib.suppress(KeyboardInterrupt):
                return int(asyncio.run(handler(args)))
            return 130
        return int(handler(args))
    except (ConfigError, PositionParseError) as exc:
        _err(f"configuration error: {exc}")
        return 2
    except PluginError as exc:
        _err(f"plugin error: {exc}")
        return 2
    except CdcError as exc:
        _err(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
