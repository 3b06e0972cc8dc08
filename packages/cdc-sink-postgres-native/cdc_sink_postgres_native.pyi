"""Optional accelerator of cdc-sink-postgres: the binary COPY payload of staging records in one call."""

from collections.abc import Iterable, Sequence
from typing import Any

__version__: str

def encode_copy(records: Iterable[Sequence[Any]], codes: bytes) -> bytes | None:
    """The PostgreSQL binary ``COPY`` payload (signature, header, one tuple per record, trailer).

    ``records`` are tuples or lists with one field per type code; codes: 0 smallint, 1 integer,
    2 bigint, 3 real, 4 double precision, 5 boolean, 6 text, 7 bytea, 8 uuid, 9 timestamptz,
    10 date, 11 numeric. The bytes equal what asyncpg's ``copy_records_to_table`` sends. Returns
    None when a value is not encoded here (an unexpected class, an int out of range, a non-finite
    Decimal, a datetime not in ``datetime.timezone.utc`` …): the caller then uses asyncpg.
    """
