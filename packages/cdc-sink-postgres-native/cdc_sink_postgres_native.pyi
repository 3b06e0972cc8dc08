"""Optional accelerator of cdc-sink-postgres: the binary COPY payload of staging records in one call."""

from collections.abc import Iterable, Sequence
from typing import Any

__version__: str
FOLD_API: int

def encode_copy(records: Iterable[Sequence[Any]], codes: bytes, fields: Sequence[int] | None = None) -> bytes | None:
    """The PostgreSQL binary ``COPY`` payload (signature, header, one tuple per record, trailer).

    ``records`` are tuples or lists with one field per type code (with ``fields``: the fields at
    those indexes of each record, one per type code); codes: 0 smallint, 1 integer,
    2 bigint, 3 real, 4 double precision, 5 boolean, 6 text, 7 bytea, 8 uuid, 9 timestamptz,
    10 date, 11 numeric. It mirrors asyncpg's ``copy_records_to_table`` encoders (tested: same staged values). Returns
    None when a value is not encoded here (an unexpected class, an int out of range, a non-finite
    Decimal, a datetime not in ``datetime.timezone.utc`` …): the caller then uses asyncpg.
    """

def check_field(records: Iterable[Sequence[Any]], offset: int, kind: int, bits: int) -> bool:
    """``typemap.bulk_check``'s verdict on field ``offset`` of ``records``: True only if every
    non-None value passes the check of ``kind`` (0 text, 1 int in ``[-(2**bits), 2**bits)``,
    2 float, 3 bool, 4 uuid — exact classes —, 5 datetime with a tzinfo, 6 finite Decimal in
    PostgreSQL numeric's range); see ``cdc_sink_postgres.native.check_spec``."""

def staged_shape(records: list[list[Any]], width: int, key_len: int, ts_fields: list[int]) -> tuple[list[bool], list[tuple[int, int]]]:
    """The staged shape of the fold's records (``RecordFold._stage``): per field whether it is a
    key field or set (not None) in some record, and the (field, anchor) pairs of ``ts_fields``
    equal record by record to the first present one of them."""

def fold_inline(
    events: list[Any],
    start: int,
    target: dict[tuple[Any, ...], list[Any]],
    keys: Sequence[tuple[str, Any, int]],
    fast: dict[str, tuple[int, Any]],
    width: int,
    row_kind: Any,
    cell_type: type,
    rejected_type: type[BaseException],
    rejected: list[tuple[int, Any]],
) -> int:
    """``RecordFold.add_all``'s inline path from event ``start`` on (row events of a new key writing
    only simple cells of ``fast`` columns become staging records in ``target``; a converter raising
    ``rejected_type`` appends (index, error) to ``rejected``; ``keys``: (name, converter, int bits
    or -1) of the key columns, an exact int within ±2**bits used as it is); returns the index of the first event
    left to the general path (``len(events)`` if none)."""
