"""The sink's committed positions, stored in the destination in the same transaction as the data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cdc_core.positions import Position
from cdc_sink_postgres.idents import qualify

__all__ = ["OffsetTable"]


class OffsetTable:
    """``<schema>.cdc_offsets(sink, node, segment_id, offset, idx)``, one row per sink and node."""

    def __init__(self, pg_schema: str, table: str = "cdc_offsets") -> None:
        self.name = qualify(pg_schema, table)

    @property
    def create_sql(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} ("
            'sink text NOT NULL, node text NOT NULL, segment_id bigint NOT NULL, "offset" bigint NOT NULL, '
            "idx integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (sink, node))"
        )

    @property
    def upsert_sql(self) -> str:
        return (
            f'INSERT INTO {self.name} (sink, node, segment_id, "offset", idx) '
            "SELECT $1, u.node, u.segment_id, u.off, u.idx FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::integer[]) "
            "AS u(node, segment_id, off, idx) "
            'ON CONFLICT (sink, node) DO UPDATE SET segment_id = excluded.segment_id, "offset" = excluded."offset", '
            "idx = excluded.idx, updated_at = now()"
        )

    @staticmethod
    def upsert_args(sink: str, positions: Mapping[str, Position]) -> list[Any]:
        """The arguments of :attr:`upsert_sql` ($1 … $5) for ``positions``."""
        nodes = sorted(positions)
        return [
            sink,
            nodes,
            [positions[n].segment_id for n in nodes],
            [positions[n].offset for n in nodes],
            [positions[n].index for n in nodes],
        ]

    async def store(self, conn: Any, sink: str, positions: Mapping[str, Position]) -> None:
        """Upsert ``positions`` (call inside the batch's transaction)."""
        if positions:
            await conn.execute(self.upsert_sql, *self.upsert_args(sink, positions))

    async def load(self, conn: Any, sink: str) -> dict[str, Position]:
        rows = await conn.fetch(f'SELECT node, segment_id, "offset", idx FROM {self.name} WHERE sink = $1', sink)
        return {r["node"]: Position(node=r["node"], segment_id=r["segment_id"], offset=r["offset"], index=r["idx"]) for r in rows}
