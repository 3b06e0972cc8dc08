"""Test-side writer of commitlog segments (independent of the reader's code): header, sync
sections (plain or compressed) and entries, laid out as format doc §2–§4 describe."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence

import attrs


def crc_ints(*values: int, crc: int = 0) -> int:
    return zlib.crc32(b"".join(struct.pack(">I", v & 0xFFFFFFFF) for v in values), crc)


def header(version: int, segment_id: int, params: dict[str, object] | None = None) -> bytes:
    raw = json.dumps(params or {}, separators=(",", ":"), sort_keys=True).encode()
    crc = crc_ints(version, segment_id & 0xFFFFFFFF, segment_id >> 32, len(raw))
    crc = zlib.crc32(raw, crc)
    return struct.pack(">iqH", version, segment_id, len(raw)) + raw + struct.pack(">I", crc)


def entry(mutation: bytes) -> bytes:
    size = struct.pack(">i", len(mutation))
    crc1 = zlib.crc32(size)
    return size + struct.pack(">I", crc1) + mutation + struct.pack(">I", zlib.crc32(mutation, crc1))


def marker(segment_id: int, position: int, nxt: int) -> bytes:
    return struct.pack(">iI", nxt, crc_ints(segment_id & 0xFFFFFFFF, segment_id >> 32, position))


def compress(name: str, data: bytes) -> bytes:
    if name == "LZ4Compressor":
        import lz4.block

        return bytes(lz4.block.compress(data, store_size=True))
    if name == "SnappyCompressor":
        import snappy

        return bytes(snappy.compress(data))
    if name == "DeflateCompressor":
        return zlib.compress(data)
    if name == "ZstdCompressor":
        import zstandard

        return bytes(zstandard.ZstdCompressor().compress(data))
    raise ValueError(name)


@attrs.frozen
class Built:
    data: bytes
    entry_ends: list[int]  # logical entry end positions, in order
    section_ends: list[int]  # logical section ends


def build_segment(
    segment_id: int,
    sections: Sequence[Sequence[bytes]],
    *,
    version: int = 7,
    compression: str | None = None,
    zero_tail: int = 8,
) -> Built:
    """A segment whose sync sections hold the given mutations (one entry each)."""
    params: dict[str, object] = {}
    if compression:
        params = {"compressionClass": compression, "compressionParameters": {}}
    out = bytearray(header(version, segment_id, params))
    logical = len(out)
    ends: list[int] = []
    section_ends: list[int] = []
    for mutations in sections:
        plain = bytearray()
        data_start = logical + 8
        for m in mutations:
            plain += entry(m)
            ends.append(data_start + len(plain))
        p = len(out)
        if compression is None:
            nxt = p + 8 + len(plain)
            out += marker(segment_id, p, nxt) + plain
            logical = nxt
        else:
            blob = compress(compression, bytes(plain))
            nxt = p + 12 + len(blob)
            out += marker(segment_id, p, nxt) + struct.pack(">i", len(plain)) + blob
            logical = data_start + len(plain)
        section_ends.append(logical)
    if compression is None:
        out += bytes(zero_tail)
    return Built(bytes(out), ends, section_ends)
