"""Cassandra's variable-length integers and fixed-width helpers (format doc §6.1).

Every reader takes ``(buf, pos)`` and returns ``(value, new_pos)``; they never copy the buffer.
Truncated input raises :class:`DecodeError` (a ``ValueError``), never ``IndexError``.
"""

from __future__ import annotations

import struct

__all__ = [
    "MASK32",
    "MASK64",
    "DecodeError",
    "read_svint",
    "read_uvint",
    "read_uvint_bytes",
    "to_int32",
    "to_int64",
    "write_svint",
    "write_uvint",
]

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class DecodeError(ValueError):
    """Bytes that do not follow the format (truncated, out of range, unknown flag)."""


def to_int64(u: int) -> int:
    u &= MASK64
    return u - (1 << 64) if u >= 1 << 63 else u


def to_int32(u: int) -> int:
    u &= MASK32
    return u - (1 << 32) if u >= 1 << 31 else u


def _extra_bytes(first: int) -> int:
    # number of leading one bits of the first byte = number of extra bytes
    return 8 - (~first & 0xFF).bit_length() if first != 0xFF else 8


# Precomputed per first byte: (extra byte count, mask for the value bits of the first byte).
_EXTRA = [_extra_bytes(b) for b in range(256)]
_FIRST_MASK = [0xFF >> _EXTRA[b] if _EXTRA[b] < 8 else 0 for b in range(256)]


def read_uvint(buf: bytes, pos: int) -> tuple[int, int]:
    """An unsigned vint (0 … 2^64-1) at ``pos``."""
    try:
        first = buf[pos]
    except IndexError:
        raise DecodeError(f"truncated vint at {pos}") from None
    if first < 0x80:
        return first, pos + 1
    n = _EXTRA[first]
    end = pos + 1 + n
    if end > len(buf):
        raise DecodeError(f"truncated vint at {pos}")
    value = first & _FIRST_MASK[first]
    return (value << (8 * n)) | int.from_bytes(buf[pos + 1 : end], "big"), end


def read_svint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag-encoded signed vint (64-bit)."""
    u, pos = read_uvint(buf, pos)
    return (u >> 1) ^ -(u & 1), pos


def read_uvint_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    """uvint length, then that many bytes."""
    n, pos = read_uvint(buf, pos)
    end = pos + n
    if end > len(buf):
        raise DecodeError(f"value of {n} bytes at {pos} runs past the end ({len(buf)})")
    return buf[pos:end], end


def write_uvint(value: int) -> bytes:
    """Encode an unsigned vint (negative Python ints are taken as 64-bit two's complement)."""
    value &= MASK64
    if value < 0x80:
        return bytes((value,))
    size = (639 - 9 * (64 - (value | 1).bit_length())) >> 6  # 1..9 bytes
    extra = size - 1
    if extra == 8:
        return b"\xff" + value.to_bytes(8, "big")
    raw = value.to_bytes(size, "big")
    first = raw[0] | (~(0xFF >> extra) & 0xFF)
    return bytes((first,)) + raw[1:]


def write_svint(value: int) -> bytes:
    return write_uvint(((value << 1) ^ (value >> 63)) & MASK64)


def read_u16(buf: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(buf):
        raise DecodeError(f"truncated short at {pos}")
    return _U16.unpack_from(buf, pos)[0], pos + 2
