"""Tailing a live cdc_raw directory built by the test-side writer: idx limits, COMPLETED, new segments."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cdc_core.commitlog.reader import CommitLogReader, CommitLogReaderConfig
from cdc_core.commitlog.segment import UnsupportedSegmentError
from cdc_core.errors import ConfigError
from cdc_core.events import ChangeEvent
from cdc_core.positions import Position
from cdc_core.readers import ReaderItem
from commitlog.builder import build_segment
from commitlog.helpers import NODE, read_all, simple_mutation, write_simple_snapshot

T = 1_700_000_000_000_000


def _reader(cdc_raw: Path, **kwargs: object) -> CommitLogReader:
    snapshot = cdc_raw.parent / "schema.json"
    write_simple_snapshot(snapshot)
    return CommitLogReader(CommitLogReaderConfig(cdc_raw_dir=cdc_raw, schema_snapshot=snapshot, node=NODE, poll_interval=0.05, **kwargs))  # type: ignore[arg-type]


def _muts(start: int, n: int) -> list[bytes]:
    return [simple_mutation(i, f"c{i}", i * 10, T + i) for i in range(start, start + n)]


async def test_follow_reads_only_durable_data_then_completed_then_next_segment(tmp_path: Path) -> None:
    cdc_raw = tmp_path / "cdc_raw"
    cdc_raw.mkdir()
    seg = build_segment(100, [_muts(0, 2), _muts(2, 2), _muts(4, 1)], zero_tail=1 << 16)  # pre-sized like mmap segments
    (cdc_raw / "CommitLog-7-100.log").write_bytes(seg.data)
    idx = cdc_raw / "CommitLog-7-100_cdc.idx"
    idx.write_text(str(seg.section_ends[0]))
    reader = _reader(cdc_raw)
    await reader.start()
    got: list[ReaderItem] = []
    seen = asyncio.Event()

    async def consume() -> None:
        async for item in reader.read({}, follow=True):
            got.append(item)
            seen.set()

    task = asyncio.create_task(consume())

    async def wait_for(n_events: int) -> float:
        started = time.monotonic()
        while len([i for i in got if isinstance(i, ChangeEvent)]) < n_events:
            await asyncio.wait_for(seen.wait(), timeout=5)
            seen.clear()
        return time.monotonic() - started

    await wait_for(2)
    await asyncio.sleep(0.2)
    assert [i.key["pk"] for i in got if isinstance(i, ChangeEvent)] == [0, 1]  # not past the idx offset
    idx.write_text(str(seg.section_ends[1]))
    assert await wait_for(4) < 1.0
    idx.write_text(f"{seg.section_ends[2]}\nCOMPLETED")
    await wait_for(5)
    seg2 = build_segment(101, [_muts(5, 1)])
    (cdc_raw / "CommitLog-7-101.log").write_bytes(seg2.data)
    (cdc_raw / "CommitLog-7-101_cdc.idx").write_text(str(seg2.section_ends[0]))
    assert await wait_for(6) < 1.0
    task.cancel()
    events = [i for i in got if isinstance(i, ChangeEvent)]
    assert [e.key["pk"] for e in events] == [0, 1, 2, 3, 4, 5]
    assert [(e.position.segment_id, e.position.offset) for e in events] == [(100, o) for o in seg.entry_ends] + [(101, seg2.entry_ends[0])]
    e = events[3]
    assert e.cells["v"].value == 30  # type: ignore[union-attr]
    assert e.liveness is not None
    assert e.liveness.timestamp == T + 3
    positions = [i.position for i in got]
    assert positions == sorted(positions)


async def test_segment_without_index_is_skipped_once_a_newer_one_has_one(tmp_path: Path) -> None:
    cdc_raw = tmp_path / "cdc_raw"
    cdc_raw.mkdir()
    (cdc_raw / "CommitLog-7-5.log").write_bytes(build_segment(5, [_muts(0, 1)]).data)  # no idx: no CDC data
    seg = build_segment(6, [_muts(1, 1)])
    (cdc_raw / "CommitLog-7-6.log").write_bytes(seg.data)
    (cdc_raw / "CommitLog-7-6_cdc.idx").write_text(f"{seg.section_ends[0]}\nCOMPLETED")
    reader = _reader(cdc_raw)
    await reader.start()
    events = [i for i in await read_all(reader) if isinstance(i, ChangeEvent)]
    assert [(e.position.segment_id, e.key["pk"]) for e in events] == [(6, 1)]


async def test_empty_index_file_is_retried_not_misread(tmp_path: Path) -> None:
    cdc_raw = tmp_path / "cdc_raw"
    cdc_raw.mkdir()
    seg = build_segment(7, [_muts(0, 3)])
    (cdc_raw / "CommitLog-7-7.log").write_bytes(seg.data)
    idx = cdc_raw / "CommitLog-7-7_cdc.idx"
    idx.write_text("")
    reader = _reader(cdc_raw)
    await reader.start()
    assert [i for i in await read_all(reader) if isinstance(i, ChangeEvent)] == []
    idx.write_text(f"{seg.section_ends[0]}\nCOMPLETED")
    assert len([i for i in await read_all(reader) if isinstance(i, ChangeEvent)]) == 3


async def test_index_caught_empty_while_a_newer_segment_exists_loses_nothing(tmp_path: Path) -> None:
    # At a segment switch Cassandra rewrites the old segment's idx (truncate, then "offset\nCOMPLETED")
    # while the new segment already has one: a reader that looks in between must wait, not skip the rest.
    cdc_raw = tmp_path / "cdc_raw"
    cdc_raw.mkdir()
    seg = build_segment(10, [_muts(0, 2), _muts(2, 2)], zero_tail=1 << 16)
    (cdc_raw / "CommitLog-7-10.log").write_bytes(seg.data)
    idx = cdc_raw / "CommitLog-7-10_cdc.idx"
    idx.write_text(str(seg.section_ends[0]))
    reader = _reader(cdc_raw)
    await reader.start()
    got: list[int] = []

    async def consume() -> None:
        async for item in reader.read({}, follow=True):
            if isinstance(item, ChangeEvent):
                got.append(item.key["pk"])

    task = asyncio.create_task(consume())
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.02)
    seg2 = build_segment(11, [_muts(4, 1)])
    (cdc_raw / "CommitLog-7-11.log").write_bytes(seg2.data)
    (cdc_raw / "CommitLog-7-11_cdc.idx").write_text(str(seg2.section_ends[0]))
    idx.write_text("")  # caught mid-rewrite
    await asyncio.sleep(0.3)
    idx.write_text(f"{seg.section_ends[1]}\nCOMPLETED")
    for _ in range(100):
        if len(got) == 5:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert got == [0, 1, 2, 3, 4]


async def test_encrypted_segments_are_refused_clearly(tmp_path: Path) -> None:
    cdc_raw = tmp_path / "cdc_raw"
    cdc_raw.mkdir()
    seg = build_segment(8, [_muts(0, 1)])
    from commitlog.builder import header

    plain_header = header(7, 8)
    enc = header(7, 8, {"encCipher": "AES/CBC/PKCS5Padding", "encKeyAlias": "k", "encIV": "AAAA"})
    (cdc_raw / "CommitLog-7-8.log").write_bytes(enc + seg.data[len(plain_header) :])
    (cdc_raw / "CommitLog-7-8_cdc.idx").write_text("100\nCOMPLETED")
    for mode in ("fail", "skip_section"):
        reader = _reader(cdc_raw, on_corrupt=mode)
        await reader.start()
        with pytest.raises(UnsupportedSegmentError, match="encrypted"):
            await read_all(reader)


async def test_resume_inside_a_mutation_skips_its_earlier_events(tmp_path: Path) -> None:
    cdc_raw = tmp_path / "cdc_raw"
    cdc_raw.mkdir()
    seg = build_segment(9, [_muts(0, 3)])
    (cdc_raw / "CommitLog-7-9.log").write_bytes(seg.data)
    (cdc_raw / "CommitLog-7-9_cdc.idx").write_text(f"{seg.section_ends[0]}\nCOMPLETED")
    reader = _reader(cdc_raw)
    await reader.start()
    after = Position(NODE, 9, seg.entry_ends[1], 0)
    events = [i for i in await read_all(reader, after=after) if isinstance(i, ChangeEvent)]
    assert [e.key["pk"] for e in events] == [2]


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="archive_dir"):
        CommitLogReaderConfig(cdc_raw_dir="/x", schema_snapshot="/s.json", cleanup="archive")
    with pytest.raises(ConfigError, match="on_corrupt"):
        CommitLogReaderConfig(cdc_raw_dir="/x", schema_snapshot="/s.json", on_corrupt="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="contact_points"):
        CommitLogReaderConfig(cdc_raw_dir="/x")


def test_plugin_factory() -> None:
    from cdc_core.commitlog.plugin import reader_factory
    from cdc_core.factories import ComponentContext

    factory = reader_factory()
    assert factory.name == "cassandra"
    config = CommitLogReaderConfig(cdc_raw_dir="raw", schema_snapshot="s.json")
    reader = factory.create(config, ComponentContext(instance_name="src", base_dir=Path("/etc/cdc")))
    assert isinstance(reader, CommitLogReader)
    assert reader.config.cdc_raw_dir == Path("/etc/cdc/raw")


def test_sample_dir_is_packaged() -> None:
    from cdc_core.commitlog import load_schema_snapshot, sample_cdc_dir

    sample = sample_cdc_dir()
    assert list(sample.glob("CommitLog-7-*.log"))
    assert load_schema_snapshot(sample / "schema.json").tables
