"""Commitlog segment files: names, header, sync sections and entries (format doc §1–§5).

A :class:`SegmentCursor` walks one segment section by section and remembers where it stopped,
so a live (still growing) segment can be read again later from the same place. Sections are
returned whole (decompressed for compressed segments) with their *logical* start and end (§3.4);
:func:`iter_entries` splits a section into mutation entries and checks both entry CRCs.
"""

from __future__ import annotations

import enum
import json
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from cdc_core.errors import CorruptCommitLogError
from cdc_core.fastobj import slot_constructor

__all__ = [
    "EntryError",
    "MutationEntry",
    "Section",
    "SectionStop",
    "SegmentCursor",
    "SegmentHeader",
    "SegmentName",
    "UnsupportedSegmentError",
    "iter_entries",
    "marker_crc",
    "parse_segment_name",
    "read_header",
]

_SEGMENT_RE = re.compile(r"^CommitLog-(\d+)-(\d+)\.log$")
_INDEX_RE = re.compile(r"^CommitLog-(\d+)-(\d+)(?:_cdc|-CDC)\.idx$")
_I32 = struct.Struct(">i")
_I32x2 = struct.Struct(">ii")
_I32x3 = struct.Struct(">iii")
_HEAD = struct.Struct(">iqH")

SUPPORTED_VERSIONS = {7: 12, 8: 13}  # commitlog version → messaging version
MIN_MUTATION_SIZE = 10


class UnsupportedSegmentError(CorruptCommitLogError):
    """A segment this reader cannot decode at all (encrypted, unknown version or compressor).

    Raised whatever ``on_corrupt`` says: skipping it would silently lose the whole segment.
    """


@attrs.frozen(order=True)
class SegmentName:
    """A segment file in cdc_raw: ordered by id."""

    segment_id: int
    version: int = attrs.field(order=False)
    path: Path = attrs.field(order=False)

    @property
    def index_paths(self) -> tuple[Path, Path]:
        base = f"CommitLog-{self.version}-{self.segment_id}"
        return self.path.with_name(base + "_cdc.idx"), self.path.with_name(base + "-CDC.idx")


def parse_segment_name(path: Path) -> SegmentName | None:
    """``CommitLog-<version>-<id>.log`` → SegmentName, else None."""
    m = _SEGMENT_RE.match(path.name)
    if m is None:
        return None
    return SegmentName(segment_id=int(m[2]), version=int(m[1]), path=path)


def parse_index_name(name: str) -> tuple[int, int] | None:
    """``CommitLog-<version>-<id>_cdc.idx`` (or ``-CDC.idx``) → (version, id), else None."""
    m = _INDEX_RE.match(name)
    return None if m is None else (int(m[1]), int(m[2]))


def _crc_ints(*values: int, crc: int = 0) -> int:
    return zlib.crc32(b"".join(_I32.pack(v if v < 1 << 31 else v - (1 << 32)) for v in values), crc)


def marker_crc(segment_id: int, file_offset: int) -> int:
    return _crc_ints(segment_id & 0xFFFFFFFF, (segment_id >> 32) & 0xFFFFFFFF, file_offset)


def _decompressor(name: str, path: str) -> Callable[[bytes, int], bytes]:
    short = name.rsplit(".", 1)[-1]
    if short == "LZ4Compressor":
        import lz4.block

        return lambda blob, _n: bytes(lz4.block.decompress(blob))
    if short == "SnappyCompressor":
        import snappy

        return lambda blob, _n: bytes(snappy.uncompress(blob))
    if short == "DeflateCompressor":
        return lambda blob, _n: zlib.decompress(blob)
    if short == "ZstdCompressor":
        import zstandard

        dctx = zstandard.ZstdDecompressor()
        return lambda blob, n: dctx.decompress(blob, max_output_size=max(n, 1))
    if short == "NoopCompressor":
        return lambda blob, _n: bytes(blob)
    raise UnsupportedSegmentError(f"unsupported commitlog compressor {name!r}", path=path, offset=0)


@attrs.frozen
class SegmentHeader:
    version: int
    segment_id: int
    params: dict[str, Any]
    length: int  # header bytes = file offset of the first sync marker

    @property
    def compression(self) -> str | None:
        value = self.params.get("compressionClass")
        return str(value) if value else None

    @property
    def encrypted(self) -> bool:
        return any(k.startswith("enc") for k in self.params)

    @property
    def messaging_version(self) -> int:
        return SUPPORTED_VERSIONS[self.version]


class HeaderNotReady(Exception):
    """The header is not (completely) written yet: a brand-new segment."""


def read_header(data: bytes, path: str, expected_id: int | None = None) -> SegmentHeader:
    """Parse and check the header at the start of ``data`` (§2).

    Raises :class:`HeaderNotReady` if ``data`` is too short or all zeros (not yet written),
    :class:`CorruptCommitLogError` on a CRC or id mismatch, :class:`UnsupportedSegmentError`
    for versions other than 7/8 and for encrypted segments.
    """
    if len(data) < 14 or data[:14] == bytes(14):
        raise HeaderNotReady(path)
    version, segment_id, param_len = _HEAD.unpack_from(data)
    end = 14 + param_len
    if len(data) < end + 4:
        raise HeaderNotReady(path)
    params_raw = bytes(data[14:end])
    crc = _crc_ints(version & 0xFFFFFFFF, segment_id & 0xFFFFFFFF, (segment_id >> 32) & 0xFFFFFFFF, param_len)
    crc = zlib.crc32(params_raw, crc)
    stored = _I32.unpack_from(data, end)[0] & 0xFFFFFFFF
    if crc != stored:
        raise CorruptCommitLogError("segment header CRC mismatch", path=path, offset=0)
    if expected_id is not None and expected_id != segment_id:
        raise CorruptCommitLogError(f"header id {segment_id} differs from the file name's id {expected_id}", path=path, offset=4)
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedSegmentError(f"unsupported commitlog version {version} (this reader reads 7 and 8)", path=path, offset=0)
    try:
        params = json.loads(params_raw.decode("utf-8")) if params_raw else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptCommitLogError(f"segment header parameters are not JSON: {exc}", path=path, offset=14) from None
    if not isinstance(params, dict):
        raise CorruptCommitLogError("segment header parameters are not a JSON object", path=path, offset=14)
    header = SegmentHeader(version=version, segment_id=segment_id, params=params, length=end + 4)
    if header.encrypted:
        raise UnsupportedSegmentError(
            "encrypted commitlog segments (transparent_data_encryption_options) are not supported", path=path, offset=0
        )
    return header


@attrs.frozen
class Section:
    """One sync section: ``data`` (plaintext entries) covers logical [data_start, logical_end)."""

    file_offset: int  # P, where its marker is
    next_file_offset: int
    data_start: int
    logical_end: int
    data: bytes


class SectionStop(enum.Enum):
    END = "end"  # clean end of the marker chain (zero marker, or no room for a marker)
    LIMIT = "limit"  # the next section ends past the durable limit (_cdc.idx offset)
    INCOMPLETE = "incomplete"  # valid marker whose section is not (fully) written yet


class SegmentCursor:
    """Reads one segment's sections from where it last stopped (the file may grow meanwhile)."""

    def __init__(self, name: SegmentName) -> None:
        self.name = name
        self.path = str(name.path)
        self.header: SegmentHeader | None = None
        self._decompress: Callable[[bytes, int], bytes] | None = None
        self.file_pos = 0  # file offset of the next marker
        self.logical = 0  # logical position of the next marker
        self.finished = False

    def _ensure_header(self, f: Any) -> SegmentHeader:
        if self.header is None:
            f.seek(0)
            data = f.read(14 + 65535 + 4)
            self.header = read_header(data, self.path, self.name.segment_id)
            if self.header.compression:
                self._decompress = _decompressor(self.header.compression, self.path)
            self.file_pos = self.logical = self.header.length
        return self.header

    def open_header(self) -> SegmentHeader:
        with open(self.path, "rb") as f:
            return self._ensure_header(f)

    def sections(self, limit: int | None) -> Iterator[Section | SectionStop]:
        """Yield the sections from the cursor on whose logical end is ≤ ``limit`` (None: no limit),
        then one :class:`SectionStop` saying why it stopped. Advances the cursor as it goes.

        Raises :class:`CorruptCommitLogError` on a corrupt marker or undecompressable section; the
        cursor then still points at that marker (see :meth:`skip_rest`).
        """
        with open(self.path, "rb") as f:
            header = self._ensure_header(f)
            size = os.fstat(f.fileno()).st_size
            sid = header.segment_id
            while True:
                if self.finished:
                    yield SectionStop.END
                    return
                p = self.file_pos
                if limit is not None and self.logical >= limit:
                    yield SectionStop.LIMIT
                    return
                if p > size - 8:
                    yield SectionStop.END
                    return
                f.seek(p)
                head = f.read(12)
                if len(head) < 8:
                    yield SectionStop.END
                    return
                nxt, crc = _I32x2.unpack_from(head)
                if (crc & 0xFFFFFFFF) != marker_crc(sid, p):
                    if nxt == 0 and crc == 0:
                        yield SectionStop.END
                        return
                    raise CorruptCommitLogError("sync marker CRC mismatch", path=self.path, offset=p)
                if self._decompress is None:
                    if nxt < p + 8 or nxt > size:
                        if nxt <= p:
                            raise CorruptCommitLogError(f"sync marker points backwards (next={nxt})", path=self.path, offset=p)
                        yield SectionStop.INCOMPLETE
                        return
                    if limit is not None and nxt > limit:
                        yield SectionStop.LIMIT
                        return
                    f.seek(p + 8)
                    data = f.read(nxt - p - 8)
                    if len(data) != nxt - p - 8:
                        yield SectionStop.INCOMPLETE
                        return
                    section = Section(file_offset=p, next_file_offset=nxt, data_start=p + 8, logical_end=nxt, data=data)
                else:
                    if nxt < p + 12 or nxt > size or len(head) < 12:
                        if nxt <= p:
                            raise CorruptCommitLogError(f"sync marker points backwards (next={nxt})", path=self.path, offset=p)
                        yield SectionStop.INCOMPLETE
                        return
                    ulen = _I32.unpack_from(head, 8)[0]
                    if ulen < 0:
                        raise CorruptCommitLogError(f"negative uncompressed section length {ulen}", path=self.path, offset=p + 8)
                    data_start = self.logical + 8
                    logical_end = data_start + ulen
                    if limit is not None and logical_end > limit:
                        yield SectionStop.LIMIT
                        return
                    blob = f.read(nxt - p - 12)
                    if len(blob) != nxt - p - 12:
                        yield SectionStop.INCOMPLETE
                        return
                    try:
                        data = self._decompress(blob, ulen)
                    except Exception as exc:  # each library has its own error types
                        raise CorruptCommitLogError(f"section does not decompress: {exc}", path=self.path, offset=p) from None
                    if len(data) != ulen:
                        raise CorruptCommitLogError(
                            f"section decompressed to {len(data)} bytes, header says {ulen}", path=self.path, offset=p
                        )
                    section = Section(file_offset=p, next_file_offset=nxt, data_start=data_start, logical_end=logical_end, data=data)
                self.file_pos = nxt
                self.logical = section.logical_end
                yield section

    def skip_rest(self) -> None:
        """Give up on the rest of this segment (after a corrupt marker that was chosen to be skipped)."""
        self.finished = True

    def peek_section_end(self) -> int | None:
        """Logical end of the section at the cursor without reading its data (None if none)."""
        with open(self.path, "rb") as f:
            header = self._ensure_header(f)
            size = os.fstat(f.fileno()).st_size
            p = self.file_pos
            if p > size - 12:
                return None
            f.seek(p)
            head = f.read(12)
            nxt, crc = _I32x2.unpack_from(head)
            if (crc & 0xFFFFFFFF) != marker_crc(header.segment_id, p):
                return None
            if self._decompress is None:
                return int(nxt)
            return self.logical + 8 + int(_I32.unpack_from(head, 8)[0])


def logical_end(name: SegmentName) -> int:
    """Logical end of the readable marker chain of a segment (no decompression)."""
    cursor = SegmentCursor(name)
    with open(cursor.path, "rb") as f:
        header = cursor._ensure_header(f)
        size = os.fstat(f.fileno()).st_size
        while cursor.file_pos <= size - 8:
            p = cursor.file_pos
            f.seek(p)
            head = f.read(12)
            nxt, crc = _I32x2.unpack_from(head)
            if (crc & 0xFFFFFFFF) != marker_crc(header.segment_id, p) or nxt <= p or nxt > size:
                break
            cursor.logical = nxt if cursor._decompress is None else cursor.logical + 8 + _I32.unpack_from(head, 8)[0]
            cursor.file_pos = nxt
    return cursor.logical


@attrs.frozen
class MutationEntry:
    end: int  # logical position just after crc2 (Cassandra's entryLocation; the event offset)
    start: int  # logical position of the entry's size field
    data: bytes


@attrs.frozen
class EntryError:
    offset: int  # logical position of the entry
    message: str
    rest_of_section: bool  # True: the length could not be trusted, the rest of the section is lost


new_entry: Callable[[int, int, bytes], MutationEntry] = slot_constructor(MutationEntry, ("end", "start", "data"))


def iter_entries(section: Section, skip_until: int = -1) -> Iterator[MutationEntry | EntryError]:
    """Entries of a section (§4). Entries ending at or before ``skip_until`` are not CRC-checked or
    copied (resume); their end is still reported as a position only through later entries."""
    data = section.data
    base = section.data_start
    size = len(data)
    pos = 0
    crc32 = zlib.crc32
    unpack = _I32x2.unpack_from
    while pos < size:
        if size - pos < 4:
            return
        if size - pos < 8:
            if _I32.unpack_from(data, pos)[0] == 0:
                return
            yield EntryError(base + pos, "truncated entry header", True)
            return
        length, crc1 = unpack(data, pos)
        if length == 0:
            return  # zero padding: the rest of the section is unused
        end = pos + 12 + length
        if skip_until >= 0 and base + end <= skip_until and length >= MIN_MUTATION_SIZE and end <= size:
            pos = end
            continue
        if length < MIN_MUTATION_SIZE:
            yield EntryError(base + pos, f"invalid mutation size {length}", True)
            return
        c1 = crc32(data[pos : pos + 4])
        if c1 != crc1 & 0xFFFFFFFF:
            yield EntryError(base + pos, "entry size CRC mismatch", True)
            return
        if end > size:
            yield EntryError(base + pos, f"entry of {length} bytes runs past its section", True)
            return
        body = data[pos + 8 : pos + 8 + length]
        if crc32(body, c1) != _I32.unpack_from(data, end - 4)[0] & 0xFFFFFFFF:
            yield EntryError(base + pos, "mutation CRC mismatch", False)
            pos = end
            continue
        yield new_entry(base + end, base + pos, body)
        pos = end
