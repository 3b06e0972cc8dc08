"""The commitlog reader: tails one node's ``cdc_raw`` directory and yields ChangeEvents.

* Segments are read in id order. Of a live segment only what ``_cdc.idx`` declares durable is
  read; COMPLETED means "read to the end of the marker chain, then go on to the next segment".
  A segment without an idx is skipped once a newer segment has one (it holds no CDC data).
* Positions: ``Position(node, segment_id, entry end (logical), index within the mutation)``.
  ``read(start)`` yields strictly after ``start`` (also inside compressed segments).
* Mutations of unselected tables or system keyspaces are skipped from the first table id without
  decoding; the reader then yields :class:`~cdc_core.readers.Progress` so consumers can commit.
* Corruption: ``on_corrupt="fail"`` raises :class:`~cdc_core.errors.CorruptCommitLogError`
  naming the file and offset; ``"skip_section"`` logs, counts (``corrupt_skips``) and goes on.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import shutil
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import structlog

from cdc_core.commitlog.cdc_index import CdcIndex, read_cdc_index
from cdc_core.commitlog.events_builder import build_events
from cdc_core.commitlog.mutation import DecodedUpdate, TableDecoder, UnknownColumnError, UnknownTableError, decode_mutation, first_table_id
from cdc_core.commitlog.primitives import DecodeError
from cdc_core.commitlog.schema_source import (
    SYSTEM_KEYSPACES,
    CassandraSchemaSource,
    SchemaCatalog,
    SchemaSource,
    SnapshotSchemaSource,
)
from cdc_core.commitlog.segment import (
    EntryError,
    HeaderNotReady,
    Section,
    SectionStop,
    SegmentCursor,
    SegmentName,
    UnsupportedSegmentError,
    iter_entries,
    logical_end,
    parse_segment_name,
)
from cdc_core.errors import ConfigError, CorruptCommitLogError
from cdc_core.positions import Position
from cdc_core.readers import Progress, ReaderItem
from cdc_core.secrets import Secret

__all__ = ["CommitLogReader", "CommitLogReaderConfig"]

log = structlog.get_logger()

# What a malformed mutation can raise inside the decoders; turned into CorruptCommitLogError.
_DECODE_ERRORS = (DecodeError, ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, UnicodeDecodeError)
_PROGRESS_EVERY = 1000  # skipped entries between two Progress items


def _globs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen(kw_only=True)
class CommitLogReaderConfig:
    """Configuration of the ``cassandra`` reader (one node's cdc_raw directory)."""

    cdc_raw_dir: Path = attrs.field(converter=Path)
    node: str | None = None  # default: the node's host id (when connected), else this hostname
    keyspaces: tuple[str, ...] = attrs.field(default=(), converter=_globs)  # globs; empty: every non-system keyspace
    tables: tuple[str, ...] = attrs.field(default=(), converter=_globs)  # "keyspace.table" globs; empty: every table
    include_non_cdc_tables: bool = False  # tables with cdc=false appear in segments only by chance
    # schema: a snapshot file, or live from Cassandra
    schema_snapshot: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    contact_points: tuple[str, ...] = attrs.field(default=(), converter=_globs)
    port: int = 9042
    username: str | None = None
    password: Secret | None = None  # from ${ENV} or ${file:…}; never printed
    tls: bool = False
    tls_ca_file: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    tls_cert_file: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    tls_key_file: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    tls_check_hostname: bool = True
    local_dc: str | None = None
    # reading
    poll_interval: float = 0.25
    on_corrupt: Literal["fail", "skip_section"] = "fail"
    schema_refresh_min_interval: float = 1.0
    # cleanup and space alarm
    cleanup: Literal["none", "delete", "archive"] = "none"
    archive_dir: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    cdc_total_space_bytes: int | None = None
    warn_ratio: float = 0.8

    def __attrs_post_init__(self) -> None:
        if self.on_corrupt not in ("fail", "skip_section"):
            raise ConfigError(f"source.on_corrupt: must be fail or skip_section, not {self.on_corrupt!r}")
        if self.cleanup not in ("none", "delete", "archive"):
            raise ConfigError(f"source.cleanup: must be none, delete or archive, not {self.cleanup!r}")
        if self.cleanup == "archive" and self.archive_dir is None:
            raise ConfigError("source.archive_dir: required when source.cleanup is archive")
        if self.poll_interval <= 0:
            raise ConfigError("source.poll_interval: must be positive")
        if not 0 < self.warn_ratio <= 1:
            raise ConfigError("source.warn_ratio: must be in (0, 1]")
        if self.schema_snapshot is None and not self.contact_points:
            raise ConfigError("source: give contact_points (live schema) or schema_snapshot (offline)")

    def cluster_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"contact_points": list(self.contact_points), "port": self.port}
        if self.username is not None:
            from cassandra.auth import PlainTextAuthProvider

            kwargs["auth_provider"] = PlainTextAuthProvider(
                username=self.username, password=self.password.reveal() if self.password else ""
            )
        if self.tls:
            import ssl

            ctx = ssl.create_default_context(cafile=str(self.tls_ca_file) if self.tls_ca_file else None)
            ctx.check_hostname = self.tls_check_hostname
            if self.tls_cert_file is not None:
                ctx.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file) if self.tls_key_file else None)
            kwargs["ssl_context"] = ctx
        if self.local_dc:
            from cassandra.policies import DCAwareRoundRobinPolicy

            kwargs["load_balancing_policy"] = DCAwareRoundRobinPolicy(local_dc=self.local_dc)
        kwargs["protocol_version"] = 5
        return kwargs

    def selects(self, keyspace: str, table: str) -> bool:
        if keyspace in SYSTEM_KEYSPACES:
            return False
        if self.keyspaces and not any(fnmatch.fnmatchcase(keyspace, g) for g in self.keyspaces):
            return False
        if self.tables:
            qualified = f"{keyspace}.{table}"
            return any(fnmatch.fnmatchcase(qualified, g) for g in self.tables)
        return True

    def selects_keyspace(self, keyspace: str) -> bool:
        if keyspace in SYSTEM_KEYSPACES:
            return False
        if self.keyspaces and not any(fnmatch.fnmatchcase(keyspace, g) for g in self.keyspaces):
            return False
        if self.tables:
            return any(fnmatch.fnmatchcase(keyspace, g.split(".", 1)[0]) for g in self.tables)
        return True


_EMPTY_INDEX_RETRIES = 20
"""Reads of an existing but empty idx (50 ms apart) before ``follow=False`` gives up on its segment."""


class _Skip(Exception):
    """An entry that yields nothing (unselected or unknown table)."""


class CommitLogReader:
    """Reader of one node's cdc_raw directory (implements :class:`cdc_core.readers.Reader`)."""

    name = "cassandra"

    def __init__(self, config: CommitLogReaderConfig, *, schema_source: SchemaSource | None = None, node: str | None = None) -> None:
        self.config = config
        self._source = schema_source
        self._own_source = schema_source is None
        self.node = node or config.node or ""
        self._catalog: SchemaCatalog | None = None
        self._decoders: dict[bytes, TableDecoder | None] = {}
        self._keyspace_selected: dict[str, bool] = {}  # config.selects_keyspace, memoized (the config is frozen)
        self._refreshed_for: set[Any] = set()
        self._last_refresh = 0.0
        self._ends: dict[int, int] = {}
        self._last_space_check = 0.0
        self._last_space_warning = 0.0
        # counters (metrics read them)
        self.corrupt_skips = 0
        self.unknown_table_skips = 0
        self.entries_read = 0
        self.cdc_raw_bytes = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._source is None:
            if self.config.schema_snapshot is not None:
                self._source = SnapshotSchemaSource(self.config.schema_snapshot)
            else:
                self._source = CassandraSchemaSource(cluster_kwargs=self.config.cluster_kwargs())
        source = self._source
        self._catalog = await asyncio.to_thread(source.catalog)
        if not self.node:
            host_id = None
            if isinstance(source, CassandraSchemaSource):
                try:
                    host_id = await asyncio.to_thread(source.host_id)
                except Exception as exc:  # the node name is only a default; say why it fell back
                    log.warning("commitlog.host_id_unavailable", error=str(exc))
            self.node = host_id or socket.gethostname()
        if not self.config.cdc_raw_dir.is_dir():
            raise ConfigError(f"source.cdc_raw_dir: {self.config.cdc_raw_dir} is not a directory")

    async def close(self) -> None:
        if self._own_source and self._source is not None:
            await asyncio.to_thread(self._source.close)

    # --- schema --------------------------------------------------------------------------------

    def _catalog_now(self) -> SchemaCatalog:
        if self._catalog is None:
            if self._source is None:
                raise RuntimeError("CommitLogReader.start() was not awaited")
            self._catalog = self._source.catalog()
        return self._catalog

    def _resolve(self, raw_id: bytes) -> TableDecoder:
        try:
            got = self._decoders[raw_id]
        except KeyError:
            got = self._make_decoder(raw_id)
        if got is None:
            raise UnknownTableError(uuid.UUID(bytes=bytes(raw_id)))
        return got

    def _make_decoder(self, raw_id: bytes) -> TableDecoder | None:
        catalog = self._catalog_now()
        table_id = uuid.UUID(bytes=bytes(raw_id))
        schema = catalog.tables.get(table_id)
        if schema is None:
            return None
        selected = self.config.selects(schema.keyspace, schema.table) and (
            self.config.include_non_cdc_tables or table_id not in catalog.non_cdc
        )
        dec = TableDecoder(schema, catalog.dropped_types.get(table_id), selected=selected)
        self._decoders[bytes(raw_id)] = dec
        return dec

    def _keyspace_wanted(self, raw_id: bytes) -> bool | None:
        """Whether a mutation whose first update is on ``raw_id`` may hold selected data (None: unknown id)."""
        dec = self._decoders.get(raw_id)
        if dec is not None:
            keyspace = dec.schema.keyspace
        else:
            name = self._catalog_now().name_of(uuid.UUID(bytes=bytes(raw_id)))
            if name is None:
                return None
            keyspace = name[0]
        wanted = self._keyspace_selected.get(keyspace)
        if wanted is None:
            wanted = self._keyspace_selected[keyspace] = self.config.selects_keyspace(keyspace)
        return wanted

    async def _refresh(self, reason: Any) -> bool:
        """Refresh the schema once per reason (and not more often than the configured interval)."""
        if reason in self._refreshed_for or self._source is None:
            return False
        wait = self.config.schema_refresh_min_interval - (time.monotonic() - self._last_refresh)
        if wait > 0:
            await asyncio.sleep(wait)
        self._refreshed_for.add(reason)
        self._catalog = await asyncio.to_thread(self._source.refresh)
        self._last_refresh = time.monotonic()
        self._decoders.clear()
        log.info("commitlog.schema_refreshed", reason=str(reason), tables=len(self._catalog.tables))
        return True

    # --- segments ------------------------------------------------------------------------------

    async def backlog(self, committed: Mapping[str, Position]) -> dict[str, int]:
        """For ``cdc status``: bytes and segments of cdc_raw at or after ``committed`` (this node)."""
        after = committed.get(self.node) if self.node else None
        total = 0
        count = 0
        for seg in self._segments():
            if after is not None and seg.segment_id < after.segment_id:
                continue
            try:
                size = seg.path.stat().st_size
            except OSError:
                continue
            if after is not None and seg.segment_id == after.segment_id:
                size = max(0, size - after.offset)
            total += size
            count += 1
        return {"bytes": total, "segments": count}

    def _segments(self) -> list[SegmentName]:
        out = []
        try:
            entries = list(os.scandir(self.config.cdc_raw_dir))
        except FileNotFoundError:
            return []
        for entry in entries:
            name = parse_segment_name(Path(entry.path))
            if name is not None:
                out.append(name)
        out.sort()
        return out

    @staticmethod
    def _index(seg: SegmentName) -> CdcIndex | None:
        for path in seg.index_paths:
            got = read_cdc_index(path)
            if got is not None:
                return got
        return None

    def _corrupt(self, path: str, offset: int, message: str) -> None:
        if self.config.on_corrupt == "fail":
            raise CorruptCommitLogError(message, path=path, offset=offset)
        self.corrupt_skips += 1
        log.warning("commitlog.corrupt_skipped", path=path, offset=offset, error=message, skipped_total=self.corrupt_skips)

    def _check_space(self) -> None:
        now = time.monotonic()
        if now - self._last_space_check < 1.0:
            return
        self._last_space_check = now
        total = 0
        try:
            for entry in os.scandir(self.config.cdc_raw_dir):
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    continue
        except FileNotFoundError:
            return
        self.cdc_raw_bytes = total
        limit = self.config.cdc_total_space_bytes
        if limit and total >= limit * self.config.warn_ratio and now - self._last_space_warning > 60:
            self._last_space_warning = now
            log.warning(
                "commitlog.cdc_raw_space_alarm",
                cdc_raw_bytes=total,
                cdc_total_space_bytes=limit,
                ratio=round(total / limit, 3),
                hint="Cassandra rejects writes to CDC tables when cdc_raw reaches cdc_total_space; the slowest consumer holds segments",
            )

    # --- reading -------------------------------------------------------------------------------

    def read(self, start: Mapping[str, Position], *, follow: bool) -> AsyncIterator[ReaderItem]:
        return self._read(start.get(self.node), follow)

    async def _read(self, after: Position | None, follow: bool) -> AsyncIterator[ReaderItem]:
        node = self.node
        done: set[int] = set()
        cursors: dict[int, SegmentCursor] = {}
        last: Position | None = after  # newest position yielded (or the start)
        pending: Position | None = None  # newest position passed without an event
        skipped_since_progress = 0
        empty_reads: dict[int, int] = {}  # segment id -> consecutive reads of an existing but empty idx
        while True:
            self._check_space()
            segs = [s for s in self._segments() if s.segment_id not in done and (after is None or s.segment_id >= after.segment_id)]
            if not segs:
                if pending is not None and (last is None or pending > last):
                    last = pending
                    yield Progress(position=pending, bytes_behind=0)
                pending = None
                if not follow:
                    return
                await asyncio.sleep(self.config.poll_interval)
                continue
            seg = segs[0]
            idx = self._index(seg)
            if idx is None and any(p.exists() for p in seg.index_paths):
                # The idx exists but reads empty: Cassandra truncates it before writing it again
                # (at every sync, and with COMPLETED when it switches to a newer segment). That is
                # not a segment without CDC data: read it again shortly instead of passing it over
                # (which lost the rest of the segment). Bounded when not following.
                empty_reads[seg.segment_id] = empty_reads.get(seg.segment_id, 0) + 1
                if follow or empty_reads[seg.segment_id] <= _EMPTY_INDEX_RETRIES:
                    await asyncio.sleep(min(self.config.poll_interval, 0.05))
                    continue
            else:
                empty_reads.pop(seg.segment_id, None)
            if idx is None:
                if not follow or any(self._index(s) is not None for s in segs[1:]):
                    done.add(seg.segment_id)  # no CDC data in it (or not yet and never will be)
                    continue
                if pending is not None and (last is None or pending > last):
                    last = pending
                    yield Progress(position=pending, bytes_behind=0)
                    pending = None
                await asyncio.sleep(self.config.poll_interval)
                continue
            cursor = cursors.get(seg.segment_id)
            if cursor is None:
                cursor = cursors[seg.segment_id] = SegmentCursor(seg)
            limit = None if idx.completed else idx.offset
            skip_before = after.offset if after is not None and after.segment_id == seg.segment_id else -1
            stop: SectionStop | None = None
            try:
                for section in cursor.sections(limit):
                    if isinstance(section, SectionStop):
                        stop = section
                        break
                    if section.logical_end < skip_before:
                        continue
                    for item in self._section_items(section, seg, cursor, after):
                        if isinstance(item, _Skipped):
                            pending = item.position
                            skipped_since_progress += 1
                            if skipped_since_progress >= _PROGRESS_EVERY:
                                skipped_since_progress = 0
                                if last is None or pending > last:
                                    last = pending
                                    yield Progress(position=pending)
                            continue
                        if isinstance(item, _NeedRefresh):
                            # rare: schema changed; refresh and decode this entry again
                            refreshed = await self._refresh(item.reason)
                            for again in self._entry_items(item.entry_data, item.entry_end, seg, cursor, after, retry=not refreshed):
                                if isinstance(again, (_Skipped, _NeedRefresh)):
                                    pending = Position(node, seg.segment_id, item.entry_end, 0)
                                    continue
                                last = again.position
                                yield again
                            continue
                        last = item.position
                        pending = None
                        yield item
                    await asyncio.sleep(0)
            except HeaderNotReady:
                stop = SectionStop.INCOMPLETE
            except UnsupportedSegmentError:
                raise
            except CorruptCommitLogError as exc:
                if self.config.on_corrupt == "fail":
                    raise
                self._corrupt(exc.path, exc.offset, f"{exc}; rest of the segment skipped")
                cursor.skip_rest()
                stop = SectionStop.END
            if idx.completed and stop is SectionStop.INCOMPLETE:
                # a closed segment whose chain points past its end: truncated
                self._corrupt(cursor.path, cursor.file_pos, "segment is COMPLETED but its last section is truncated")
                cursor.skip_rest()
                stop = SectionStop.END
            if idx.completed:
                done.add(seg.segment_id)
                cursors.pop(seg.segment_id, None)
                end = Position(node, seg.segment_id, cursor.logical, 0)
                self._ends[seg.segment_id] = cursor.logical
                if (last is None or end > last) and (pending is None or end >= pending):
                    last = end
                    pending = None
                    yield Progress(position=end)
                continue
            if not follow:
                newer = any(s.segment_id > seg.segment_id for s in segs[1:])
                done.add(seg.segment_id)
                cursors.pop(seg.segment_id, None)
                if newer:
                    continue
                if pending is not None and (last is None or pending > last):
                    last = pending
                    yield Progress(position=pending, bytes_behind=0)
                return
            if pending is not None and (last is None or pending > last):
                last = pending
                yield Progress(position=pending, bytes_behind=0)
                pending = None
            await asyncio.sleep(self.config.poll_interval)

    def _section_items(self, section: Section, seg: SegmentName, cursor: SegmentCursor, after: Position | None) -> Any:
        skip_until = after.offset if after is not None and after.segment_id == seg.segment_id else -1
        for entry in iter_entries(section, skip_until - 1 if skip_until >= 0 else -1):
            if isinstance(entry, EntryError):
                self._corrupt(cursor.path, entry.offset, entry.message + ("; rest of the section skipped" if entry.rest_of_section else ""))
                continue
            if entry.end < skip_until:
                continue
            yield from self._entry_items(entry.data, entry.end, seg, cursor, after, retry=True)

    def _entry_items(self, data: bytes, end: int, seg: SegmentName, cursor: SegmentCursor, after: Position | None, *, retry: bool) -> Any:
        node = self.node
        self.entries_read += 1
        try:
            raw_id = first_table_id(data)
            wanted = self._keyspace_wanted(raw_id)
            if wanted is None:
                raise UnknownTableError(uuid.UUID(bytes=bytes(raw_id)))
            if not wanted:
                yield _Skipped(Position(node, seg.segment_id, end, 0))
                return
            header = cursor.header
            mv = header.messaging_version if header is not None else 12
            updates: list[DecodedUpdate] = decode_mutation(data, self._resolve, mv)
            if not updates:
                yield _Skipped(Position(node, seg.segment_id, end, 0))
                return
            events = build_events(updates, node, seg.segment_id, end)
        except UnknownTableError as exc:
            if retry:
                yield _NeedRefresh(("table", exc.table_id), data, end)
                return
            self.unknown_table_skips += 1
            log.warning(
                "commitlog.unknown_table_skipped",
                table_id=str(exc.table_id),
                path=cursor.path,
                offset=end,
                skipped_total=self.unknown_table_skips,
                hint="the table is not in the schema (dropped, or missing from the snapshot)",
            )
            yield _Skipped(Position(node, seg.segment_id, end, 0))
            return
        except UnknownColumnError as exc:
            if retry:
                yield _NeedRefresh(("column", exc.schema.id, exc.name), data, end)
                return
            self._corrupt(cursor.path, end, f"mutation does not decode: {exc}")
            yield _Skipped(Position(node, seg.segment_id, end, 0))
            return
        except _DECODE_ERRORS as exc:
            self._corrupt(cursor.path, end, f"mutation does not decode: {type(exc).__name__}: {exc}")
            yield _Skipped(Position(node, seg.segment_id, end, 0))
            return
        if not events:
            yield _Skipped(Position(node, seg.segment_id, end, 0))
            return
        if after is not None and after.segment_id == seg.segment_id and end == after.offset:
            events = [e for e in events if e.position.index > after.index]
            if not events:
                return
        yield from events

    # --- cleanup -------------------------------------------------------------------------------

    async def release(self, committed: Mapping[str, Position]) -> None:
        if self.config.cleanup == "none":
            return
        pos = committed.get(self.node)
        if pos is None:
            return
        await asyncio.to_thread(self._release, pos)

    def _release(self, pos: Position) -> None:
        for seg in self._segments():
            if seg.segment_id > pos.segment_id:
                break
            idx = self._index(seg)
            if idx is None or not idx.completed:
                continue
            if seg.segment_id == pos.segment_id:
                end = self._ends.get(seg.segment_id)
                if end is None:
                    try:
                        end = logical_end(seg)
                    except (CorruptCommitLogError, HeaderNotReady, OSError):
                        continue
                    self._ends[seg.segment_id] = end
                if pos.offset < end:
                    continue
            self._dispose(seg)

    def _dispose(self, seg: SegmentName) -> None:
        paths = [seg.path, *seg.index_paths]
        if self.config.cleanup == "archive":
            archive = self.config.archive_dir
            assert archive is not None
            archive.mkdir(parents=True, exist_ok=True)
            for p in paths:
                if p.exists():
                    shutil.move(str(p), str(archive / p.name))
        else:
            for p in paths:
                p.unlink(missing_ok=True)
        self._ends.pop(seg.segment_id, None)
        log.info("commitlog.segment_released", segment=seg.path.name, action=self.config.cleanup)


@attrs.frozen
class _Skipped:
    position: Position


@attrs.frozen
class _NeedRefresh:
    reason: Any
    entry_data: bytes
    entry_end: int
