"""The optional compiled accelerator ``cdc_sink_postgres_native`` (packages/cdc-sink-postgres-native).

When it is importable (and ``CDC_SINK_POSTGRES_NATIVE`` is not ``0``/``false``/``no``/``off``), it
computes the optimistic fold's column checks and the staged shape (premerge), and encodes staging
records whose columns all have a type it knows into the binary ``COPY`` payload in one call
instead of asyncpg's per-value encoders; its encoding mirrors asyncpg's (tests compare the staged values). A value it
cannot vouch for makes it decline (``None``) and the records go through asyncpg as before — the
pure-Python path is the reference and the fallback.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from operator import itemgetter
from types import ModuleType
from typing import Any, overload

__all__ = [
    "TYPE_CODES",
    "Payload",
    "ProjectedRecords",
    "check_spec",
    "copy_codes",
    "encode_copy",
    "encode_copy_sliced",
    "fold_module",
    "native_module",
    "pieces",
]

# PostgreSQL type (as the staging tables are declared) → the accelerator's type code.
TYPE_CODES: dict[str, int] = {
    "smallint": 0,
    "integer": 1,
    "bigint": 2,
    "real": 3,
    "double precision": 4,
    "boolean": 5,
    "text": 6,
    "bytea": 7,
    "uuid": 8,
    "timestamptz": 9,
    "date": 10,
    "numeric": 11,
}

# CQL type name → (kind, bits) of the accelerator's check_field, the same verdict as
# typemap.bulk_check for that type (kinds: 0 text, 1 int in [-(2**bits), 2**bits), 2 float,
# 3 bool, 4 uuid (exact classes), 5 datetime with a tzinfo, 6 finite Decimal in numeric's range).
_CHECKS: dict[str, tuple[int, int]] = {
    "ascii": (0, 0),
    "text": (0, 0),
    "varchar": (0, 0),
    "tinyint": (1, 15),
    "smallint": (1, 15),
    "int": (1, 31),
    "bigint": (1, 63),
    "counter": (1, 63),
    "float": (2, 0),
    "double": (2, 0),
    "boolean": (3, 0),
    "uuid": (4, 0),
    "timeuuid": (4, 0),
    "timestamp": (5, 0),
    "decimal": (6, 0),
}

_OFF = ("0", "false", "no", "off")


def _import_native() -> ModuleType | None:
    try:
        return importlib.import_module("cdc_sink_postgres_native")
    except ImportError:
        return None


_native = _import_native()


def native_module() -> ModuleType | None:
    """The accelerator if it is installed and not disabled by ``CDC_SINK_POSTGRES_NATIVE=0``
    (read on every call)."""
    if _native is None or os.environ.get("CDC_SINK_POSTGRES_NATIVE", "").strip().lower() in _OFF:
        return None
    return _native


def fold_module() -> ModuleType | None:
    """The accelerator if its ``fold_inline`` takes this package's arguments (``FOLD_API`` 2);
    an older build of it still encodes and checks, while the fold runs in Python."""
    module = native_module()
    return module if module is not None and getattr(module, "FOLD_API", 1) == 2 else None


def check_spec(cql_name: str) -> tuple[int, int] | None:
    """The accelerator's column check for a CQL type with a ``typemap.bulk_check`` (None: none)."""
    return _CHECKS.get(cql_name)


@functools.lru_cache(maxsize=4096)
def copy_codes(column_types: tuple[str, ...]) -> bytes | None:
    """The type codes of a staging table's columns, or None if one has a type not encoded natively."""
    codes = [TYPE_CODES.get(t) for t in column_types]
    if any(c is None for c in codes):
        return None
    return bytes(c for c in codes if c is not None)


class ProjectedRecords(Sequence[tuple[Any, ...]]):
    """The fields ``keep`` (at least two) of each record of ``source``, as tuples made on demand:
    the accelerator encodes them straight from ``source``, without the tuples."""

    __slots__ = ("_get", "keep", "source")

    def __init__(self, source: Sequence[Sequence[Any]], keep: Sequence[int]) -> None:
        if len(keep) < 2:
            raise ValueError("ProjectedRecords needs at least two fields")
        self.source = source
        self.keep = list(keep)
        self._get = itemgetter(*keep)

    def __len__(self) -> int:
        return len(self.source)

    def rows(self, start: int, stop: int) -> ProjectedRecords:
        """The records ``start:stop``, still a projection of ``source`` (a slice of them would
        be the tuples)."""
        return ProjectedRecords(self.source[start:stop], self.keep)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return map(self._get, self.source)

    def columns(self) -> list[list[Any]]:
        """The kept fields column by column (one list per field), read straight from ``source``:
        no tuple per record (three times faster than transposing the tuples)."""
        return [list(map(itemgetter(k), self.source)) for k in self.keep]

    @overload
    def __getitem__(self, index: int) -> tuple[Any, ...]: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple[Any, ...]]: ...
    def __getitem__(self, index: int | slice) -> tuple[Any, ...] | list[tuple[Any, ...]]:
        if isinstance(index, slice):
            return list(map(self._get, self.source[index]))
        got: tuple[Any, ...] = self._get(self.source[index])
        return got

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))


def encode_copy(records: Sequence[Sequence[Any]], column_types: tuple[str, ...]) -> bytes | None:
    """The binary COPY payload of ``records``, or None (no accelerator, a column type it does not
    encode, or a value it declines): then use asyncpg's ``copy_records_to_table``."""
    module = native_module()
    if module is None:
        return None
    codes = copy_codes(column_types)
    if codes is None:
        return None
    payload: bytes | None
    if isinstance(records, ProjectedRecords):
        payload = module.encode_copy(records.source, codes, records.keep)
    else:
        payload = module.encode_copy(records, codes)
    return payload


# The binary COPY framing around the tuples: signature, flags and extension length; int16 -1.
_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_TRAILER = b"\xff\xff"

# A binary COPY payload in pieces, sent in order.
Payload = Sequence[bytes | memoryview]

# Records encoded between two returns to the event loop (≈ 1–2 ms of encoding).
ENCODE_SLICE = 1000


async def encode_copy_sliced(
    records: Sequence[Sequence[Any]], column_types: tuple[str, ...], slice_rows: int = ENCODE_SLICE
) -> Payload | None:
    """:func:`encode_copy` in slices of ``slice_rows`` records, returning to the event loop
    between them: encoding 20,000 records holds the loop ≈ 13 ms, and with it the statements of
    the writes overlapping this one. The pieces, sent in order, are the one payload (the slices'
    framing trimmed); None as for :func:`encode_copy`."""
    n = len(records)
    if n <= slice_rows:
        payload = encode_copy(records, column_types)
        return None if payload is None else [payload]
    out: list[bytes | memoryview] = []
    for start in range(0, n, slice_rows):
        if start:
            await asyncio.sleep(0)
        stop = min(start + slice_rows, n)
        payload = encode_copy(records.rows(start, stop) if isinstance(records, ProjectedRecords) else records[start:stop], column_types)
        if payload is None:
            return None
        if not (payload.startswith(_HEADER) and payload.endswith(_TRAILER)):
            raise AssertionError("cdc_sink_postgres_native.encode_copy framed a payload unexpectedly")
        view = memoryview(payload)
        out.append(view[0 if start == 0 else len(_HEADER) : len(view) if stop == n else len(view) - len(_TRAILER)])
    return out


async def pieces(payload: Payload) -> AsyncIterator[bytes | memoryview]:
    """The pieces of a payload as the async iterable ``copy_to_table`` sends piece by piece
    (bytes alone would be taken for a file path)."""
    for piece in payload:
        yield piece
