"""Where table schemas come from: ``system_schema`` through cassandra-driver, or a JSON snapshot.

A :class:`SchemaCatalog` maps table ids to :class:`~cdc_core.schema.TableSchema` (plus the types
of dropped columns, which decoding needs and the event model does not carry) and knows the names
of every table, system ones included, so mutations of unselected tables are skipped without
loading their columns.

Type strings are converted from CQL as ``system_schema`` writes it (``frozen<address>``) into the
self-contained form of :mod:`cdc_core.cqltypes` (``frozen<udt<ks.address>{street:text}>``).

The snapshot file (written by ``cdc schema dump``) is JSON::

    {"format": "cdc-schema-snapshot", "version": 1,
     "tables": [{"keyspace": ..., "table": ..., "id": "<uuid>",
                 "cdc": true, "columns": [{"name", "type", "kind", "position", "clustering_order"}],
                 "dropped": [{"name", "type", "dropped_time"}]}],        # dropped_time in µs
     "table_names": {"<uuid>": "keyspace.table", ...}}                   # every table, system ones too
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import structlog

from cdc_core.errors import ConfigError
from cdc_core.schema import ClusteringOrder, ColumnKind, ColumnSchema, TableSchema

__all__ = [
    "SYSTEM_KEYSPACES",
    "CassandraSchemaSource",
    "SchemaCatalog",
    "SchemaSource",
    "SnapshotSchemaSource",
    "catalog_from_snapshot",
    "catalog_to_snapshot",
    "cql_type_to_type_string",
    "dump_schema",
    "load_schema_snapshot",
]

log = structlog.get_logger()

SNAPSHOT_FORMAT = "cdc-schema-snapshot"
SNAPSHOT_VERSION = 1
SYSTEM_KEYSPACES = frozenset(
    {
        "system",
        "system_schema",
        "system_auth",
        "system_distributed",
        "system_traces",
        "system_views",
        "system_virtual_schema",
        "system_cluster_metadata",
    }
)


@attrs.frozen
class SchemaCatalog:
    """An immutable view of the schema: replaced as a whole on refresh."""

    tables: Mapping[uuid.UUID, TableSchema] = attrs.field(factory=dict)
    dropped_types: Mapping[uuid.UUID, Mapping[str, str]] = attrs.field(factory=dict)
    table_names: Mapping[uuid.UUID, tuple[str, str]] = attrs.field(factory=dict)
    non_cdc: frozenset[uuid.UUID] = frozenset()  # tables known to have ``cdc = false``

    def name_of(self, table_id: uuid.UUID) -> tuple[str, str] | None:
        schema = self.tables.get(table_id)
        if schema is not None:
            return schema.keyspace, schema.table
        return self.table_names.get(table_id)


class SchemaSource(Protocol):
    """Gives the current catalog; ``refresh`` re-reads it (blocking; call it from a thread)."""

    def catalog(self) -> SchemaCatalog: ...

    def refresh(self) -> SchemaCatalog: ...

    def close(self) -> None: ...


# --- CQL type strings -------------------------------------------------------------------------


class _CqlTokens:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self._ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"expected {char!r} at {self.pos} in CQL type {self.text!r}")
        self.pos += 1

    def name(self) -> str:
        self._ws()
        if self.pos < len(self.text) and self.text[self.pos] in "\"'":
            quote = self.text[self.pos]
            end = self.text.index(quote, self.pos + 1)
            out = self.text[self.pos : end + 1]
            self.pos = end + 1
            return out
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "_."):
            self.pos += 1
        if start == self.pos:
            raise ValueError(f"expected a name at {self.pos} in CQL type {self.text!r}")
        return self.text[start : self.pos]


def cql_type_to_type_string(cql: str, keyspace: str, udts: Mapping[tuple[str, str], tuple[list[str], list[str]]]) -> str:
    """Convert a ``system_schema`` CQL type into the self-contained type string of cqltypes.

    ``udts`` maps (keyspace, type name) to (field names, field CQL types). Custom (quoted
    class-name) types become ``blob``.
    """
    tokens = _CqlTokens(cql)

    def parse(frozen: bool) -> str:
        raw = tokens.name()
        name = raw.lower()
        if raw.startswith("'"):
            return "blob"
        if name == "frozen" and tokens.peek() == "<":
            tokens.take("<")
            inner = parse(True)
            tokens.take(">")
            return inner
        if name in ("list", "set", "map", "tuple") and tokens.peek() == "<":
            tokens.take("<")
            params = [parse(True)]
            while tokens.peek() == ",":
                tokens.take(",")
                params.append(parse(True))
            tokens.take(">")
            text = f"{name}<{', '.join(params)}>"
            return f"frozen<{text}>" if frozen and name != "tuple" else text
        if name == "vector" and tokens.peek() == "<":
            tokens.take("<")
            elem = parse(True)
            tokens.take(",")
            dim = tokens.name()
            tokens.take(">")
            return f"vector<{elem}, {dim}>"
        if raw.startswith('"'):
            udt_ks, udt_name = keyspace, raw[1:-1]
        elif "." in raw:
            udt_ks, udt_name = raw.split(".", 1)
        else:
            udt_ks, udt_name = keyspace, raw
        fields = udts.get((udt_ks, udt_name))
        if fields is None:
            if "." not in raw and not raw.startswith('"'):
                return name  # a scalar type name; parse_type validates it
            raise ValueError(f"unknown user type {udt_ks}.{udt_name} in CQL type {cql!r}")
        names, types = fields
        body = ",".join(f"{n}:{cql_type_to_type_string(t, udt_ks, udts)}" for n, t in zip(names, types, strict=True))
        text = f"udt<{udt_ks}.{udt_name}>{{{body}}}"
        return f"frozen<{text}>" if frozen else text

    result = parse(False)
    if tokens.peek():
        raise ValueError(f"trailing text in CQL type {cql!r}")
    return result


# --- reading system_schema ----------------------------------------------------------------------


def _rows(session: Any, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
    return list(session.execute(query, params) if params else session.execute(query))


def _read_catalog(session: Any, keyspaces: Iterable[str] | None) -> tuple[SchemaCatalog, list[dict[str, Any]]]:
    """Read system_schema; returns the catalog and the snapshot's table list (full detail for
    ``keyspaces``, None meaning every non-system keyspace)."""
    wanted = None if keyspaces is None else set(keyspaces)

    def selected(ks: str) -> bool:
        return ks not in SYSTEM_KEYSPACES if wanted is None else ks in wanted

    names: dict[uuid.UUID, tuple[str, str]] = {}
    cdc: dict[uuid.UUID, bool] = {}
    for row in _rows(session, "SELECT keyspace_name, table_name, id, cdc FROM system_schema.tables"):
        names[row.id] = (row.keyspace_name, row.table_name)
        cdc[row.id] = bool(row.cdc)
    for row in _rows(session, "SELECT keyspace_name, view_name, id FROM system_schema.views"):
        names[row.id] = (row.keyspace_name, row.view_name)
        cdc[row.id] = False
    udts: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for row in _rows(session, "SELECT keyspace_name, type_name, field_names, field_types FROM system_schema.types"):
        udts[(row.keyspace_name, row.type_name)] = (list(row.field_names or ()), list(row.field_types or ()))
    columns: dict[tuple[str, str], list[dict[str, Any]]] = {}
    query = "SELECT keyspace_name, table_name, column_name, kind, position, type, clustering_order FROM system_schema.columns"
    for row in _rows(session, query):
        if not selected(row.keyspace_name):
            continue
        columns.setdefault((row.keyspace_name, row.table_name), []).append(
            {
                "name": row.column_name,
                "type": cql_type_to_type_string(row.type, row.keyspace_name, udts),
                "kind": row.kind,
                "position": max(int(row.position), 0),
                "clustering_order": (row.clustering_order or "none").lower(),
            }
        )
    dropped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in _rows(
        session,
        (
            # as milliseconds: some system tables carry drop times the driver cannot turn into datetimes
            "SELECT keyspace_name, table_name, column_name, type, blobAsBigint(timestampAsBlob(dropped_time)) AS dropped_ms"
            " FROM system_schema.dropped_columns"
        ),
    ):
        if not selected(row.keyspace_name):
            continue
        try:
            type_string = cql_type_to_type_string(row.type, row.keyspace_name, udts)
        except ValueError:
            type_string = "blob"  # a dropped UDT column whose type is gone: decoded as bytes, never emitted
        dropped.setdefault((row.keyspace_name, row.table_name), []).append(
            {"name": row.column_name, "type": type_string, "dropped_time": int(row.dropped_ms) * 1000}
        )
    tables: list[dict[str, Any]] = []
    for table_id, (ks, table) in sorted(names.items(), key=lambda kv: kv[1]):
        if not selected(ks) or (ks, table) not in columns:
            continue
        tables.append(
            {
                "keyspace": ks,
                "table": table,
                "id": str(table_id),
                "cdc": cdc.get(table_id, False),
                "columns": sorted(columns[(ks, table)], key=lambda c: (c["kind"], c["position"], c["name"])),
                "dropped": sorted(dropped.get((ks, table), []), key=lambda d: d["name"]),
            }
        )
    snapshot = {"tables": tables, "table_names": {str(k): f"{ks}.{t}" for k, (ks, t) in names.items()}}
    return catalog_from_snapshot(snapshot), tables


def dump_schema(session: Any, keyspaces: Iterable[str] | None) -> dict[str, Any]:
    """The JSON snapshot (a dict) of ``keyspaces`` (None: every non-system keyspace) for offline use."""
    catalog, tables = _read_catalog(session, keyspaces)
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "tables": tables,
        "table_names": {str(k): f"{ks}.{t}" for k, (ks, t) in sorted(catalog.table_names.items(), key=lambda kv: kv[1])},
    }


def catalog_from_snapshot(snapshot: Mapping[str, Any]) -> SchemaCatalog:
    tables: dict[uuid.UUID, TableSchema] = {}
    dropped_types: dict[uuid.UUID, dict[str, str]] = {}
    names: dict[uuid.UUID, tuple[str, str]] = {}
    non_cdc: set[uuid.UUID] = set()
    for key, qualified in snapshot.get("table_names", {}).items():
        ks, _, table = str(qualified).partition(".")
        names[uuid.UUID(key)] = (ks, table)
    for t in snapshot.get("tables", []):
        table_id = uuid.UUID(t["id"])
        cols = tuple(
            ColumnSchema(
                name=c["name"],
                type=c["type"],
                kind=ColumnKind(c["kind"]),
                position=int(c.get("position", 0)),
                clustering_order=ClusteringOrder(c.get("clustering_order", "none")),
            )
            for c in t["columns"]
        )
        dropped = tuple((d["name"], int(d["dropped_time"])) for d in t.get("dropped", []))
        tables[table_id] = TableSchema(keyspace=t["keyspace"], table=t["table"], id=table_id, columns=cols, dropped=dropped)
        dropped_types[table_id] = {d["name"]: d["type"] for d in t.get("dropped", [])}
        names[table_id] = (t["keyspace"], t["table"])
        if not t.get("cdc", True):
            non_cdc.add(table_id)
    return SchemaCatalog(tables=tables, dropped_types=dropped_types, table_names=names, non_cdc=frozenset(non_cdc))


def catalog_to_snapshot(catalog: SchemaCatalog) -> dict[str, Any]:
    tables = []
    for table_id, schema in sorted(catalog.tables.items(), key=lambda kv: (kv[1].keyspace, kv[1].table)):
        types = catalog.dropped_types.get(table_id, {})
        tables.append(
            {
                "keyspace": schema.keyspace,
                "table": schema.table,
                "id": str(table_id),
                "cdc": table_id not in catalog.non_cdc,
                "columns": [
                    {
                        "name": c.name,
                        "type": c.type,
                        "kind": c.kind.value,
                        "position": c.position,
                        "clustering_order": c.clustering_order.value,
                    }
                    for c in schema.columns
                ],
                "dropped": [{"name": n, "type": types.get(n, "blob"), "dropped_time": t} for n, t in schema.dropped],
            }
        )
    return {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "tables": tables,
        "table_names": {str(k): f"{ks}.{t}" for k, (ks, t) in catalog.table_names.items()},
    }


def load_schema_snapshot(path: str | Path) -> SchemaCatalog:
    """Read a snapshot file written from :func:`dump_schema`; errors name the file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read schema snapshot {p}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
        raise ConfigError(f'{p} is not a cdc schema snapshot (no "format": "{SNAPSHOT_FORMAT}")')
    if data.get("version") != SNAPSHOT_VERSION:
        raise ConfigError(f"{p}: unsupported schema snapshot version {data.get('version')!r} (this build reads {SNAPSHOT_VERSION})")
    try:
        return catalog_from_snapshot(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{p}: invalid schema snapshot: {type(exc).__name__}: {exc}") from exc


class SnapshotSchemaSource:
    """Schema from a snapshot file; ``refresh`` re-reads the file (it may have been re-dumped)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._catalog = load_schema_snapshot(self.path)

    def catalog(self) -> SchemaCatalog:
        return self._catalog

    def refresh(self) -> SchemaCatalog:
        self._catalog = load_schema_snapshot(self.path)
        return self._catalog

    def close(self) -> None:
        return None


class CassandraSchemaSource:
    """Schema read live from ``system_schema`` through cassandra-driver.

    Either give it a connected ``session`` (not closed here) or ``cluster_kwargs`` for
    ``cassandra.cluster.Cluster`` (connected lazily, closed by :meth:`close`).
    """

    def __init__(
        self, *, session: Any = None, cluster_kwargs: Mapping[str, Any] | None = None, keyspaces: Iterable[str] | None = None
    ) -> None:
        if session is None and cluster_kwargs is None:
            raise ValueError("CassandraSchemaSource needs a session or cluster_kwargs")
        self._session = session
        self._own_cluster: Any = None
        self._cluster_kwargs = dict(cluster_kwargs or {})
        self._keyspaces = None if keyspaces is None else list(keyspaces)
        self._catalog: SchemaCatalog | None = None
        self._lock = threading.Lock()
        self.refreshes = 0

    def session(self) -> Any:
        if self._session is None:
            from cassandra.cluster import Cluster

            self._own_cluster = Cluster(**self._cluster_kwargs)
            self._session = self._own_cluster.connect()
        return self._session

    def catalog(self) -> SchemaCatalog:
        if self._catalog is None:
            return self.refresh()
        return self._catalog

    def refresh(self) -> SchemaCatalog:
        with self._lock:
            started = time.monotonic()
            self._catalog, _ = _read_catalog(self.session(), self._keyspaces)
            self.refreshes += 1
            log.debug("commitlog.schema_refreshed", tables=len(self._catalog.tables), seconds=round(time.monotonic() - started, 3))
            return self._catalog

    def host_id(self) -> str | None:
        rows = _rows(self.session(), "SELECT host_id FROM system.local")
        return str(rows[0].host_id) if rows and rows[0].host_id else None

    def close(self) -> None:
        if self._own_cluster is not None:
            self._own_cluster.shutdown()
            self._own_cluster = None
            self._session = None
