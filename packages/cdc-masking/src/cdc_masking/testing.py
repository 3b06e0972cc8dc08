"""Canary helpers: plant recognisable PII in events, then prove it appears nowhere downstream.

Usage (transform level, and reusable for pipeline-level tests that scan DLQ files, logs, spans and
metrics)::

    from cdc_masking.testing import CANARY_SCHEMA, assert_no_canaries, canary_masking_config, make_canary_events

    transform = MaskingTransform(structure_config(canary_masking_config()))
    out = transform.apply(make_canary_events())
    assert_no_canaries(b"\\n".join(event_to_json(e) for e in out))

The canaries are planted in every place a value can be: partition and clustering keys, simple
cells of text, bigint and date type, set elements, list elements, map keys and map values, UDT
fields (frozen and non-frozen), range-deletion bounds, and the keys of deletion events.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from frozendict import frozendict

from cdc_core.events import (
    Cell,
    ChangeEvent,
    ChangeKind,
    ComplexChange,
    Deletion,
    ElementChange,
    Liveness,
    RangeBound,
    RangeDeletion,
)
from cdc_core.positions import Position
from cdc_core.schema import ColumnKind, ColumnSchema, TableSchema

__all__ = [
    "CANARIES",
    "CANARY_KEYS",
    "CANARY_SCHEMA",
    "assert_no_canaries",
    "canary_masking_config",
    "find_canaries",
    "make_canary_events",
    "make_canary_range_deletion",
]

# Distinctive values that occur nowhere by chance. Each has the textual forms a leak could take.
CANARY_SSN = "987-65-4329"
CANARY_SSN_NUMBER = 987654329
CANARY_EMAIL = "canary.q7x2@example.org"
CANARY_EMAIL_2 = "second.canary.z9k4@example.net"
CANARY_PHONE = "+1-555-0142-7781"
CANARY_PHONE_2 = "+44-20-7946-0958"
CANARY_DOB = dt.date(1961, 3, 27)
CANARY_STREET = "742 Canarywood Terrace"

CANARIES: tuple[str, ...] = (
    CANARY_SSN,
    "987654329",
    CANARY_EMAIL,
    "canary.q7x2",
    CANARY_EMAIL_2,
    "second.canary.z9k4",
    CANARY_PHONE,
    "15550142778",
    CANARY_PHONE_2,
    "442079460958",
    "1961-03-27",
    CANARY_STREET,
    "Canarywood",
)
"""Every string whose presence anywhere downstream is a leak (including digit-only and local-part forms)."""

CANARY_KEYS: dict[str, str] = {
    "hmac": "canary-test-hmac-key-0123456789abcdef",
    "v1": "canary-test-token-key-v1-0123456789ab",
    "v2": "canary-test-token-key-v2-0123456789ab",
}
"""Test-only keys (≥ 32 bytes) matching :func:`canary_masking_config`."""

_ADDRESS = "udt<canary.address>{street:text,zip:int,phone:text}"

CANARY_SCHEMA = TableSchema(
    keyspace="canary",
    table="people",
    id=uuid.UUID("00000000-0000-4000-8000-00000000ca7a"),
    columns=(
        ColumnSchema(name="email", type="text", kind=ColumnKind.PARTITION_KEY, position=0),
        ColumnSchema(name="phone", type="text", kind=ColumnKind.CLUSTERING, position=0),
        ColumnSchema(name="ssn", type="text", kind=ColumnKind.REGULAR),
        ColumnSchema(name="ssn_number", type="bigint", kind=ColumnKind.REGULAR),
        ColumnSchema(name="dob", type="date", kind=ColumnKind.REGULAR),
        ColumnSchema(name="nickname", type="text", kind=ColumnKind.REGULAR),
        ColumnSchema(name="aliases", type="set<text>", kind=ColumnKind.REGULAR),
        ColumnSchema(name="old_phones", type="list<text>", kind=ColumnKind.REGULAR),
        ColumnSchema(name="contacts", type="map<text, text>", kind=ColumnKind.REGULAR),
        ColumnSchema(name="home", type=f"frozen<{_ADDRESS}>", kind=ColumnKind.REGULAR),
        ColumnSchema(name="work", type=_ADDRESS, kind=ColumnKind.REGULAR),
    ),
)


def canary_masking_config(keys: dict[str, str] | None = None) -> dict[str, Any]:
    """A masking config (unstructured, as in YAML) whose rules cover every canary column."""
    return {
        "policy_version": "canary-1",
        "keys": dict(CANARY_KEYS if keys is None else keys),
        "token_key": "v2",
        "rules": [
            {"keyspace": "canary", "table": "people", "column": "email", "strategy": "email", "options": {"domain": "hmac"}},
            {"keyspace": "canary", "table": "people", "column": "*phone*", "classification": "phi"},
            {"keyspace": "canary", "table": "people", "column": "ssn*", "classification": "pii"},
            {"keyspace": "canary", "table": "people", "column": "dob", "classification": "phi"},
            {"keyspace": "canary", "table": "people", "column": "aliases"},
            {"keyspace": "canary", "table": "people", "column": "contacts"},
            {"keyspace": "canary", "table": "people", "column": "home.street", "strategy": "redact"},
            {"keyspace": "canary", "table": "people", "column": "work.street", "strategy": "null"},
        ],
    }


def _position(i: int) -> Position:
    return Position(node="canary-node", segment_id=1, offset=100 + i, index=0)


def make_canary_events() -> list[ChangeEvent]:
    """Events carrying the canaries in every position a value can take."""
    ts = 1_700_000_000_000_000
    key = {"email": CANARY_EMAIL, "phone": CANARY_PHONE}
    address = frozendict({"street": CANARY_STREET, "zip": 12345, "phone": CANARY_PHONE_2})
    full_row = ChangeEvent(
        position=_position(0),
        schema=CANARY_SCHEMA,
        kind=ChangeKind.ROW,
        key=key,
        liveness=Liveness(timestamp=ts),
        cells={
            "ssn": Cell(timestamp=ts, value=CANARY_SSN),
            "ssn_number": Cell(timestamp=ts, value=CANARY_SSN_NUMBER, ttl=3600, local_deletion_time=1_700_003_600),
            "dob": Cell(timestamp=ts, value=CANARY_DOB),
            "nickname": Cell(timestamp=ts, value="not secret"),
            "aliases": ComplexChange(
                deletion=Deletion(timestamp=ts - 1, local_deletion_time=1_700_000_000),
                elements=(
                    ElementChange(path=CANARY_EMAIL, cell=Cell(timestamp=ts)),
                    ElementChange(path=CANARY_EMAIL_2, cell=Cell(timestamp=ts)),
                ),
            ),
            "old_phones": ComplexChange(
                elements=(
                    ElementChange(path=uuid.UUID("5a0b1c00-0000-1000-8000-000000000001"), cell=Cell(timestamp=ts, value=CANARY_PHONE_2)),
                    ElementChange(path=uuid.UUID("5a0b1c00-0000-1000-8000-000000000002"), cell=Cell(timestamp=ts, value="15550142778")),
                    ElementChange(path=uuid.UUID("5a0b1c00-0000-1000-8000-000000000003"), cell=Cell(timestamp=ts, value="442079460958")),
                )
            ),
            "contacts": ComplexChange(
                elements=(
                    ElementChange(path=CANARY_PHONE, cell=Cell(timestamp=ts, value=CANARY_EMAIL)),
                    ElementChange(path=CANARY_EMAIL_2, cell=Cell(timestamp=ts, tombstone=True, local_deletion_time=1_700_000_000)),
                )
            ),
            "home": Cell(timestamp=ts, value=address),
            "work": ComplexChange(
                elements=(
                    ElementChange(path="street", cell=Cell(timestamp=ts, value=CANARY_STREET)),
                    ElementChange(path="zip", cell=Cell(timestamp=ts, value=54321)),
                    ElementChange(path="phone", cell=Cell(timestamp=ts, value=CANARY_PHONE)),
                )
            ),
        },
    )
    row_delete = ChangeEvent(
        position=_position(1),
        schema=CANARY_SCHEMA,
        kind=ChangeKind.ROW,
        key=key,
        row_deletion=Deletion(timestamp=ts + 1, local_deletion_time=1_700_000_001),
    )
    partition_delete = ChangeEvent(
        position=_position(2),
        schema=CANARY_SCHEMA,
        kind=ChangeKind.PARTITION_DELETE,
        key={"email": CANARY_EMAIL_2},
        partition_deletion=Deletion(timestamp=ts + 2, local_deletion_time=1_700_000_002),
    )
    range_delete = ChangeEvent(
        position=_position(3),
        schema=CANARY_SCHEMA,
        kind=ChangeKind.RANGE_DELETE,
        key={"email": CANARY_EMAIL},
        # a point range (phone = …): the only kind a masked clustering column can carry faithfully;
        # wider ranges over it are dropped (see make_canary_range_deletion)
        range_deletion=RangeDeletion(
            start=RangeBound(values=(CANARY_PHONE_2,), inclusive=True),
            end=RangeBound(values=(CANARY_PHONE_2,), inclusive=True),
            deletion=Deletion(timestamp=ts + 3, local_deletion_time=1_700_000_003),
        ),
    )
    return [full_row, row_delete, partition_delete, range_delete]


def make_canary_range_deletion() -> ChangeEvent:
    """A range deletion (``phone > … AND phone <= …``) over the masked clustering column: the transform drops it."""
    return ChangeEvent(
        position=_position(4),
        schema=CANARY_SCHEMA,
        kind=ChangeKind.RANGE_DELETE,
        key={"email": CANARY_EMAIL},
        range_deletion=RangeDeletion(
            start=RangeBound(values=(CANARY_PHONE,), inclusive=False),
            end=RangeBound(values=(CANARY_PHONE_2,), inclusive=True),
            deletion=Deletion(timestamp=1_700_000_000_000_004, local_deletion_time=1_700_000_004),
        ),
    )


def find_canaries(text: str | bytes, canaries: Iterable[str] = CANARIES) -> dict[str, int]:
    """How often each canary occurs in ``text`` (case-insensitive); only canaries found are listed."""
    haystack = (text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text).lower()
    found = {}
    for canary in canaries:
        count = haystack.count(canary.lower())
        if count:
            found[canary] = count
    return found


def assert_no_canaries(text: str | bytes, canaries: Iterable[str] = CANARIES, where: str = "output") -> None:
    """Fail (AssertionError) if any canary occurs in ``text``; the message lists canaries and counts, not the text."""
    found = find_canaries(text, canaries)
    if found:
        listing = ", ".join(f"{c!r} x{n}" for c, n in sorted(found.items()))
        raise AssertionError(f"canary values leaked into {where}: {listing}")
