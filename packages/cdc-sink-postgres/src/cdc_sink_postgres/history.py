"""History mode: every change event appended once, keyed by its source position.

Table ``N`` (the destination name): ``cdc_node, cdc_segment_id, cdc_offset, cdc_index`` (the
primary key: a replayed event is ignored by ``ON CONFLICT DO NOTHING``), ``cdc_kind``,
``cdc_write_time`` (the event's newest write timestamp as timestamptz), ``cdc_timestamp`` (the
same in microseconds), the key columns typed as in latest-state mode (clustering columns null
for partition and range deletions), and ``cdc_event``: the whole event in the core's lossless
JSON form. :class:`HistoryTable` can be subclassed (e.g. a different primary key for a
hypertable).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from cdc_core.events import ChangeEvent
from cdc_core.serialization import event_to_dict
from cdc_sink_postgres.idents import quote_ident
from cdc_sink_postgres.layout import TableLayout, pg_name
from cdc_sink_postgres.merge import StagedMerge
from cdc_sink_postgres.typemap import ValueRejected, to_db

__all__ = ["HistoryTable"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
POSITION_COLUMNS = ("cdc_node", "cdc_segment_id", "cdc_offset", "cdc_index")


def q(name: str) -> str:
    return quote_ident(name)


class HistoryTable:
    """DDL, records and the idempotent insert of one history table."""

    meta_columns: tuple[tuple[str, str], ...] = (
        ("cdc_node", "text NOT NULL"),
        ("cdc_segment_id", "bigint NOT NULL"),
        ("cdc_offset", "bigint NOT NULL"),
        ("cdc_index", "integer NOT NULL"),
        ("cdc_kind", "text NOT NULL"),
        ("cdc_write_time", "timestamptz NOT NULL"),
        ("cdc_timestamp", "bigint NOT NULL"),
    )

    def __init__(self, layout: TableLayout) -> None:
        self.layout = layout
        self.keys = layout.primary_key

    def primary_key(self) -> tuple[str, ...]:
        return POSITION_COLUMNS

    def columns(self) -> list[tuple[str, str]]:
        """(name, type) of every column, in table order."""
        cols = list(self.meta_columns)
        cols += [(c.ident, c.pg.sql) for c in self.keys]
        cols.append(("cdc_event", "jsonb NOT NULL"))
        return cols

    def create_statements(self) -> list[str]:
        defs = ", ".join(f"{q(n)} {t}" for n, t in self.columns())
        pk = ", ".join(q(c) for c in self.primary_key())
        return [f"CREATE TABLE IF NOT EXISTS {self.layout.q(self.layout.history_table)} ({defs}, PRIMARY KEY ({pk}))"]

    def staged_insert(self) -> StagedMerge:
        cols = self.columns()
        names = tuple(n for n, _ in cols)
        types = tuple(t.replace(" NOT NULL", "") for _, t in cols)
        staging = pg_name(f"cdc_stage_{self.layout.signature}_hist")
        col_list = ", ".join(q(n) for n in names)
        return StagedMerge(
            staging=staging,
            columns=names,
            column_types=types,
            select_sql=f"INSERT INTO {self.layout.q(self.layout.history_table)} ({col_list}) SELECT {col_list}",
            tail_sql=f"ORDER BY {', '.join(q(c) for c in self.primary_key())} ON CONFLICT DO NOTHING",
        )

    def record(self, event: ChangeEvent) -> tuple[Any, ...]:
        """The row of ``event``; raises :class:`ValueRejected` if it cannot be stored."""
        p = event.position
        ts = event.max_timestamp
        keys = [to_db(event.key[c.name], c.cql) if c.name in event.key else None for c in self.keys]
        doc = orjson.dumps(event_to_dict(event)).decode()
        if "\\u0000" in doc:
            raise ValueRejected("the event contains a NUL character, which PostgreSQL's jsonb cannot store")
        write_time = _EPOCH + dt.timedelta(microseconds=ts)
        return (p.node, p.segment_id, p.offset, p.index, event.kind.value, write_time, ts, *keys, doc)
