"""The reader on segments recorded from real Cassandra 5.0 nodes (commitlog v7 and v8)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import attrs
import pytest

from cdc_core.commitlog.segment import MutationEntry, Section, SegmentCursor, SegmentName, iter_entries, parse_segment_name
from cdc_core.errors import CorruptCommitLogError
from cdc_core.events import ChangeEvent
from cdc_core.positions import Position
from cdc_core.readers import Progress
from commitlog.builder import build_segment
from commitlog.helpers import NODE, copy_fixture, events_of, make_reader, read_all
from commitlog.scenario import check_events

VERSIONS = [7, 8]


def _segment(cdc_raw: Path) -> SegmentName:
    (name,) = [n for p in cdc_raw.iterdir() if (n := parse_segment_name(p)) is not None]
    return name


@pytest.mark.parametrize("version", VERSIONS)
async def test_recorded_scenario_decodes(version: int, tmp_path: Path) -> None:
    reader = make_reader(copy_fixture(version, tmp_path))
    await reader.start()
    items = await read_all(reader)
    events = events_of(items)
    assert {e.keyspace for e in events} == {"cdcfix"}
    assert len(events) == 36
    check_events(events)
    assert reader.corrupt_skips == 0
    # the last item says the whole (COMPLETED) segment is done
    assert isinstance(items[-1], Progress)
    assert (
        items[-1].position.offset
        == (tmp_path / f"cdc_raw_v{version}" / _segment(tmp_path / f"cdc_raw_v{version}").path.name).stat().st_size
    )
    positions = [i.position for i in items]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)


@pytest.mark.parametrize("version", VERSIONS)
async def test_table_selection(version: int, tmp_path: Path) -> None:
    cdc_raw = copy_fixture(version, tmp_path)
    reader = make_reader(cdc_raw, tables=["cdcfix.co*"])
    await reader.start()
    events = events_of(await read_all(reader))
    assert {e.table for e in events} == {"coll", "comp"}
    reader = make_reader(cdc_raw, include_non_cdc_tables=True)
    await reader.start()
    events = events_of(await read_all(reader))
    assert [dict(e.key) for e in events if e.table == "nocdc"] == [{"pk": 1}]


def _recompressed(cdc_raw: Path, compression: str, dest: Path) -> Path:
    """The same real entries and section boundaries, framed as a compressed segment."""
    name = _segment(cdc_raw)
    cursor = SegmentCursor(name)
    sections: list[list[bytes]] = []
    for section in cursor.sections(None):
        if isinstance(section, Section):
            sections.append([e.data for e in iter_entries(section) if isinstance(e, MutationEntry)])
    assert cursor.header is not None
    built = build_segment(name.segment_id, sections, version=name.version, compression=compression)
    dest.mkdir()
    (dest / name.path.name).write_bytes(built.data)
    (dest / f"CommitLog-{name.version}-{name.segment_id}_cdc.idx").write_text(f"{built.section_ends[-1]}\nCOMPLETED")
    (dest / "schema.json").write_bytes((cdc_raw / "schema.json").read_bytes())
    return dest


def _strip(events: list[ChangeEvent]) -> list[ChangeEvent]:
    return [attrs.evolve(e, position=Position("x", 0, 0, e.position.index)) for e in events]


@pytest.mark.parametrize("compression", ["LZ4Compressor", "SnappyCompressor", "DeflateCompressor", "ZstdCompressor"])
@pytest.mark.parametrize("version", VERSIONS)
async def test_compressed_segments_and_resume_inside_them(version: int, compression: str, tmp_path: Path) -> None:
    plain_dir = copy_fixture(version, tmp_path)
    reader = make_reader(plain_dir)
    await reader.start()
    plain = events_of(await read_all(reader))
    comp_dir = _recompressed(plain_dir, compression, tmp_path / "compressed")
    reader = make_reader(comp_dir)
    await reader.start()
    items = await read_all(reader)
    compressed = events_of(items)
    assert _strip(compressed) == _strip(plain)
    # logical offsets do not depend on compression except for the longer header
    shift = compressed[0].position.offset - plain[0].position.offset
    assert [e.position.offset - shift for e in compressed] == [e.position.offset for e in plain]
    rng = random.Random(version)
    for start in rng.sample([i.position for i in items], 6):
        again = await read_all(reader, after=start)
        assert events_of(again) == [e for e in compressed if e.position > start]


@pytest.mark.parametrize("version", VERSIONS)
async def test_resume_from_any_position_equals_uninterrupted_read(version: int, tmp_path: Path) -> None:
    reader = make_reader(copy_fixture(version, tmp_path))
    await reader.start()
    items = await read_all(reader)
    events = events_of(items)
    rng = random.Random(1000 + version)
    starts = [i.position for i in items]
    starts = rng.sample(starts, min(25, len(starts)))
    starts.append(Position(NODE, events[0].position.segment_id, 0, 0))
    for start in starts:
        again = await read_all(reader, after=start)
        assert events_of(again) == [e for e in events if e.position > start], start
        assert all(i.position > start for i in again)
    # a position past the segment yields nothing
    assert events_of(await read_all(reader, after=Position(NODE, events[-1].position.segment_id + 1, 0, 0))) == []


@pytest.mark.parametrize("version", VERSIONS)
async def test_corrupted_segments_raise_documented_errors_or_skip_counted(version: int, tmp_path: Path) -> None:
    source = copy_fixture(version, tmp_path)
    name = _segment(source)
    original = name.path.read_bytes()
    rng = random.Random(version)
    outcomes = {"ok": 0, "error": 0, "skipped": 0}
    for i in range(60):
        data = bytearray(original)
        for _ in range(rng.choice([1, 1, 2, 8])):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        name.path.write_bytes(bytes(data))
        for mode in ("fail", "skip_section"):
            reader = make_reader(source, on_corrupt=mode)
            await reader.start()
            error: CorruptCommitLogError | None = None
            try:
                await asyncio.wait_for(read_all(reader), timeout=20)
            except CorruptCommitLogError as exc:
                error = exc
            if error is not None:
                assert mode == "fail" or "unsupported" in str(error), error
                assert str(name.path) in str(error)
                assert error.offset >= 0
                outcomes["error"] += 1
                continue
            if reader.corrupt_skips:
                assert mode == "skip_section"
                outcomes["skipped"] += 1
            else:
                outcomes["ok"] += 1
        if i % 10 == 0:
            await asyncio.sleep(0)
    assert outcomes["error"] > 0
    assert outcomes["skipped"] > 0


async def test_header_crc_mismatch_names_file_and_offset(tmp_path: Path) -> None:
    source = copy_fixture(7, tmp_path)
    name = _segment(source)
    data = bytearray(name.path.read_bytes())
    data[15] ^= 0xFF
    name.path.write_bytes(bytes(data))
    reader = make_reader(source)
    await reader.start()
    with pytest.raises(CorruptCommitLogError, match="header CRC") as info:
        await read_all(reader)
    assert info.value.path == str(name.path)
    assert info.value.offset == 0


async def test_entry_crc_mismatch_is_skipped_only_when_asked(tmp_path: Path) -> None:
    source = copy_fixture(7, tmp_path)
    name = _segment(source)
    reader = make_reader(source)
    await reader.start()
    events = events_of(await read_all(reader))
    target = events[5].position.offset - 6  # inside the mutation bytes of the 6th event's entry
    data = bytearray(name.path.read_bytes())
    data[target] ^= 0x55
    name.path.write_bytes(bytes(data))
    failing = make_reader(source)
    await failing.start()
    with pytest.raises(CorruptCommitLogError, match="mutation CRC mismatch"):
        await read_all(failing)
    skipper = make_reader(source, on_corrupt="skip_section")
    await skipper.start()
    got = events_of(await read_all(skipper))
    assert skipper.corrupt_skips == 1
    lost = [e for e in events if e.position.offset == events[5].position.offset]
    assert got == [e for e in events if e not in lost]


@pytest.mark.parametrize("cleanup", ["delete", "archive"])
async def test_release_removes_completed_segments_consumers_passed(cleanup: str, tmp_path: Path) -> None:
    source = copy_fixture(7, tmp_path)
    name = _segment(source)
    original = name.path.read_bytes()
    archive = tmp_path / "archive"
    reader = make_reader(source, cleanup=cleanup, archive_dir=archive if cleanup == "archive" else None)
    await reader.start()
    items = await read_all(reader)
    events = events_of(items)
    await reader.release({NODE: events[-1].position})
    assert name.path.exists()  # the end of the segment is not committed yet
    await reader.release({"other-node": Position("other-node", 1 << 62, 0, 0)})
    assert name.path.exists()
    await reader.release({NODE: items[-1].position})
    assert not name.path.exists()
    assert not name.index_paths[0].exists()
    if cleanup == "archive":
        assert (archive / name.path.name).read_bytes() == original
        assert (archive / name.index_paths[0].name).exists()


async def test_release_with_cleanup_none_keeps_everything(tmp_path: Path) -> None:
    source = copy_fixture(8, tmp_path)
    reader = make_reader(source)
    await reader.start()
    await reader.release({NODE: Position(NODE, 1 << 62, 0, 0)})
    assert _segment(source).path.exists()
