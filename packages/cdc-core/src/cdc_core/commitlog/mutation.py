"""Mutation → PartitionUpdates → rows, range-tombstone markers and cells (format doc §6).

Messaging versions 12 (Cassandra 4.x, and 5.0 in compatibility mode; commitlog v7) and 13
(5.0, commitlog v8) share the byte layout; they differ only in how local deletion times are read
(signed int32 versus uint32, §6.13).

Decoding goes through a :class:`TableDecoder` per table, built once from the schema: it holds the
value decoder of every column and caches the column lists of the serialization headers it has
seen, so the per-row work is a walk over precomputed objects. Cells are decoded straight into
the event model's :class:`~cdc_core.events.Cell` / :class:`~cdc_core.events.ComplexChange`.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cdc_core.commitlog.primitives import MASK32, MASK64, DecodeError, read_uvint
from cdc_core.commitlog.values import Decoder, element_decoder, fixed_length, path_decoder, udt_field_decoders, value_decoder
from cdc_core.cqltypes import parse_type
from cdc_core.events import Cell, ComplexChange, Deletion, ElementChange, Liveness
from cdc_core.fastobj import (
    CELL_FIELDS,
    new_cell,
    new_complex,
    new_deletion,
    new_element,
    new_liveness,
    new_uuid,
    slot_setters,
)
from cdc_core.schema import TableSchema

__all__ = [
    "ColumnDecoder",
    "DecodedMarker",
    "DecodedRow",
    "DecodedUpdate",
    "TableDecoder",
    "UnknownColumnError",
    "UnknownTableError",
    "decode_mutation",
    "first_table_id",
]

TIMESTAMP_EPOCH = 1442880000000000
DELETION_TIME_EPOCH = 1442880000
LONG_MIN = -(1 << 63)
LONG_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1

# PartitionUpdate flags (UnfilteredRowIteratorSerializer)
IS_EMPTY = 0x01
HAS_PARTITION_DELETION = 0x04
HAS_STATIC_ROW = 0x08
HAS_ROW_ESTIMATE = 0x10
# Unfiltered flags
END_OF_PARTITION = 0x01
IS_MARKER = 0x02
HAS_TIMESTAMP = 0x04
HAS_TTL = 0x08
HAS_DELETION = 0x10
HAS_ALL_COLUMNS = 0x20
HAS_COMPLEX_DELETION = 0x40
EXTENSION_FLAG = 0x80
IS_STATIC = 0x01
# Cell flags
CELL_IS_DELETED = 0x01
CELL_IS_EXPIRING = 0x02
CELL_HAS_EMPTY_VALUE = 0x04
CELL_USE_ROW_TIMESTAMP = 0x08
CELL_USE_ROW_TTL = 0x10

# ClusteringPrefix.Kind ordinals
EXCL_END_BOUND = 0
INCL_START_BOUND = 1
EXCL_END_INCL_START_BOUNDARY = 2
CLUSTERING = 4
INCL_END_EXCL_START_BOUNDARY = 5
INCL_END_BOUND = 6
EXCL_START_BOUND = 7

_U16 = struct.Struct(">H")
_PLAIN_ROW = HAS_TIMESTAMP | HAS_ALL_COLUMNS
_ROW_TS_EMPTY = CELL_USE_ROW_TIMESTAMP | CELL_HAS_EMPTY_VALUE
#: the compiled decoders of plain collection elements (tests turn them off to compare with the general code)
FAST_COMPLEX = True


class UnknownTableError(LookupError):
    """A PartitionUpdate names a table id the schema does not know (yet)."""

    def __init__(self, table_id: uuid.UUID) -> None:
        super().__init__(f"unknown table id {table_id}")
        self.table_id = table_id


class UnknownColumnError(LookupError):
    """A serialization header names a column the table's schema does not know (yet)."""

    def __init__(self, schema: TableSchema, name: str) -> None:
        super().__init__(f"table {schema.qualified_name} has no column {name!r} (not even a dropped one)")
        self.schema = schema
        self.name = name


class ColumnDecoder:
    """Everything needed to decode one column's cells, computed once."""

    __slots__ = (
        "complex",
        "decode",
        "dropped_time",
        "elem_decode",
        "emit",
        "fast_elements",
        "fixed",
        "is_set",
        "name",
        "path_decode",
        "type_name",
        "udt_decoders",
        "udt_names",
    )

    def __init__(self, name: str, type_string: str, *, emit: bool, dropped_time: int | None) -> None:
        typ = parse_type(type_string)
        self.name = name
        self.type_name = typ.name
        self.emit = emit
        self.dropped_time = dropped_time
        self.complex = typ.is_multicell
        self.fixed = None if self.complex else fixed_length(typ)
        self.decode: Decoder = value_decoder(typ) if not self.complex else _no_decoder
        self.path_decode: Decoder = path_decoder(typ) if self.complex else _no_decoder
        self.is_set = self.complex and typ.name == "set"
        self.udt_names: tuple[str, ...] = typ.field_names if self.complex and typ.name == "udt" else ()
        self.udt_decoders: tuple[Decoder, ...] = udt_field_decoders(typ) if self.udt_names else ()
        self.elem_decode: Decoder | None = None
        if self.complex and not self.udt_names:
            self.elem_decode = element_decoder(typ)
        self.fast_elements: FastElements | None = None
        if self.complex and not self.udt_names and emit and dropped_time is None:
            path_type = "timeuuid" if typ.name == "list" else typ.params[0].name
            value_type = None if typ.name == "set" else typ.params[-1].name
            self.fast_elements = compile_fast_elements(path_type, self.path_decode, value_type, self.elem_decode)


def _no_decoder(b: bytes) -> Any:
    raise DecodeError("no decoder")


class _Header:
    """The columns of one serialization header (static or regular), with a subset cache and the
    compiled fast row decoders (:func:`compile_fast_cells`) of the column lists seen."""

    __slots__ = ("all", "fast", "fast_all", "subsets")

    def __init__(self, columns: tuple[ColumnDecoder, ...]) -> None:
        self.all = columns
        self.fast_all = compile_fast_cells(columns)
        self.subsets: dict[int, tuple[ColumnDecoder, ...]] = {}
        self.fast: dict[int, FastCells | None] = {}

    def subset(self, v: int) -> tuple[ColumnDecoder, ...]:
        got = self.subsets.get(v)
        if got is None:
            got = tuple(c for i, c in enumerate(self.all) if not (v >> i) & 1)
            if len(self.subsets) < 4096:
                self.subsets[v] = got
        return got

    def fast_subset(self, v: int, columns: tuple[ColumnDecoder, ...]) -> FastCells | None:
        try:
            return self.fast[v]
        except KeyError:
            pass
        got = compile_fast_cells(columns)
        if len(self.fast) < 256:
            self.fast[v] = got
        return got


#: ``f(buf, pos, row_ts) -> (cells, new_pos)``, or None when a cell is not a plain one.
FastCells = Callable[[bytes, int, int], "tuple[dict[str, Cell | ComplexChange], int] | None"]
#: ``f(buf, pos) -> (clustering values, new_pos)``, or None when the fast path does not apply.
FastClustering = Callable[[bytes, int], "tuple[tuple[Any, ...], int] | None"]

# Fixed-width CQL types the compiled decoders unpack with struct: (format, conversion or "").
_STRUCT_FORMATS = {
    "int": ("i", ""),
    "bigint": ("q", ""),
    "float": ("f", ""),
    "double": ("d", ""),
    "boolean": ("B", "{} != 0"),
    "timestamp": ("q", "_ms({})"),
    "uuid": ("16s", "_uuid({})"),
    "timeuuid": ("16s", "_uuid({})"),
}


def _ms_to_timestamp(ms: int) -> Any:
    try:
        return _EPOCH + _timedelta(0, ms // 1000, (ms % 1000) * 1000)
    except OverflowError:
        return ms  # same rule as values._timestamp


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_timedelta = dt.timedelta


def compile_fast_cells(columns: tuple[ColumnDecoder, ...]) -> FastCells | None:
    """A decoder specialised to one column list for its most common row: every cell flagged
    exactly ``USE_ROW_TIMESTAMP`` (an INSERT/UPDATE value with the row's timestamp, no TTL, not
    empty, not deleted). Consecutive fixed-width cells are read with one precompiled ``Struct``.
    It returns None as soon as a cell differs (or the bytes run short), and the caller then
    decodes the row with the general code from the same position, so the result is the same as
    the general path's. None (no fast path) for lists with complex, dropped or hidden columns."""
    if not columns or any(c.complex or not c.emit or c.dropped_time is not None for c in columns):
        return None
    ns: dict[str, Any] = {
        "_new": object.__new__,
        "_Cell": Cell,
        "_ms": _ms_to_timestamp,
        "_uuid": new_uuid,
        "_uvint": read_uvint,
        "_StructError": struct.error,
    }
    body: list[str] = []
    values: list[str] = []
    run: list[int] = []

    def flush_run() -> None:
        if not run:
            return
        fmt = ">" + "".join("B" + _STRUCT_FORMATS[columns[i].type_name][0] for i in run)
        k = len(ns)
        ns[f"_s{k}"] = struct.Struct(fmt).unpack_from
        names = ", ".join(f"f{i}, r{i}" for i in run)
        body.append(f"{names} = _s{k}(buf, pos)")
        body.append("if " + " or ".join(f"f{i} != 8" for i in run) + ": return None")
        body.append(f"pos += {struct.calcsize(fmt)}")
        run.clear()

    for i, col in enumerate(columns):
        ns[f"_n{i}"] = col.name
        ns[f"_d{i}"] = col.decode
        if col.type_name in _STRUCT_FORMATS:
            run.append(i)
            conv = _STRUCT_FORMATS[col.type_name][1]
            values.append(conv.format(f"r{i}") if conv else f"r{i}")
            continue
        flush_run()
        body.append("if buf[pos] != 8: return None")
        if col.fixed is None:
            body += [
                "n = buf[pos + 1]",
                "if n < 128: pos += 2",
                "else: n, pos = _uvint(buf, pos + 1)",
            ]
        else:
            body += [f"n = {col.fixed}", "pos += 1"]
        body += ["e = pos + n", "if e > size: return None", f"r{i} = buf[pos:e]", "pos = e"]
        values.append(f"r{i}.decode('utf-8')" if col.type_name in ("text", "varchar") else f"_d{i}(r{i})")
    flush_run()
    # the Cells, built inline as fastobj.new_cell(ts, value, False, None, None) does
    for k, setter in enumerate(slot_setters(Cell, CELL_FIELDS)):
        ns[f"_c{k}"] = setter
    lines = ["def fast(buf, pos, ts):", "    size = len(buf)", "    try:"]
    lines += [f"        {line}" for line in body]
    lines += ["    except (IndexError, _StructError):", "        return None"]
    for i, v in enumerate(values):
        lines.append(f"    o{i} = _new(_Cell); _c0(o{i}, ts); _c1(o{i}, {v}); _c2(o{i}, False); _c3(o{i}, None); _c4(o{i}, None)")
    cells = ", ".join(f"_n{i}: o{i}" for i in range(len(values)))
    lines.append(f"    return {{{cells}}}, pos")
    exec(compile("\n".join(lines), "<compiled row decoder>", "exec"), ns)  # the text is built from fixed pieces
    fast: FastCells = ns["fast"]
    return fast


#: ``f(buf, pos, count, row_ts, out) -> (new_pos, done)``: appends up to ``count`` plain elements
FastElements = Callable[[bytes, int, int, int, "list[ElementChange]"], tuple[int, int]]

# how the compiled element decoder reads a path or value of a type: (template, needs exact size)
_INLINE_DECODE = {
    "text": ("{raw}.decode('utf-8')", None),
    "varchar": ("{raw}.decode('utf-8')", None),
    "int": ("_i32({raw})[0]", 4),
    "bigint": ("_i64({raw})[0]", 8),
    "double": ("_f64({raw})[0]", 8),
    "uuid": ("_uuid({raw})", 16),
    "timeuuid": ("_uuid({raw})", 16),
}


def compile_fast_elements(path_type: str, path_decode: Decoder, value_type: str | None, value_decode: Decoder | None) -> FastElements:
    """A decoder of the plain elements of one non-frozen list/set/map column: flags exactly
    ``USE_ROW_TIMESTAMP`` (with ``HAS_EMPTY_VALUE`` for sets), one-byte path and value lengths.
    It stops at the first other element and says how many it decoded; the caller decodes the rest
    with the general code. Values are decoded as the column's decoders do (inline for common types,
    through the decoder itself when the size is not the type's exact size)."""
    ns: dict[str, Any] = {
        "_new": object.__new__,
        "_Cell": Cell,
        "_Elem": ElementChange,
        "_pd": path_decode,
        "_vd": value_decode,
        "_i32": struct.Struct(">i").unpack,
        "_i64": struct.Struct(">q").unpack,
        "_f64": struct.Struct(">d").unpack,
        "_uuid": new_uuid,
    }
    for k, setter in enumerate(slot_setters(Cell, CELL_FIELDS)):
        ns[f"_c{k}"] = setter
    for k, setter in enumerate(slot_setters(ElementChange, ("path", "cell"))):
        ns[f"_e{k}"] = setter

    def inline(type_name: str | None, raw: str, size: str, fallback: str) -> list[str]:
        template, exact = _INLINE_DECODE.get(type_name or "", (None, None))
        if template is None:
            return [f"{fallback}({raw})"]
        if exact is None:
            return [template.format(raw=raw)]
        return [f"{template.format(raw=raw)} if {size} == {exact} else {fallback}({raw})"]

    path_expr = inline(path_type, "buf[ps:pe]", "n", "_pd")[0]
    value_expr = "None" if value_type is None or value_decode is None else inline(value_type, "buf[vs:end]", "m", "_vd")[0]
    lines = [
        "def fast(buf, pos, count, ts, out):",
        "    size = len(buf)",
        "    done = 0",
        "    while done < count and pos + 2 < size:",
        "        cf = buf[pos]",
        "        n = buf[pos + 1]",
        "        if n >= 128: break",
        "        ps = pos + 2",
        "        pe = ps + n",
        f"        if cf == {CELL_USE_ROW_TIMESTAMP}:",
        "            if pe >= size: break",
        "            m = buf[pe]",
        "            if m >= 128: break",
        "            vs = pe + 1",
        "            end = vs + m",
        "            if end > size: break",
        f"            value = {value_expr}",
        f"        elif cf == {_ROW_TS_EMPTY}:",
        "            end = pe",
        "            if end > size: break",
        "            m = 0",
        "            vs = end",
        f"            value = {value_expr}",
        "        else:",
        "            break",
        f"        path = {path_expr}",
        "        c = _new(_Cell); _c0(c, ts); _c1(c, value); _c2(c, False); _c3(c, None); _c4(c, None)",
        "        e = _new(_Elem); _e0(e, path); _e1(e, c)",
        "        out.append(e)",
        "        pos = end",
        "        done += 1",
        "    return pos, done",
    ]
    exec(compile("\n".join(lines), "<compiled element decoder>", "exec"), ns)  # the text is built from fixed pieces
    fast: FastElements = ns["fast"]
    return fast


def compile_fast_clustering(specs: tuple[tuple[int | None, Decoder], ...], type_names: tuple[str, ...]) -> FastClustering | None:
    """For tables whose clustering columns are all struct-readable fixed-width types: read a full
    clustering prefix without null/empty values (header vint 0) with one ``Struct``; None when the
    header is not 0 (the caller then uses the general code)."""
    if not type_names or len(type_names) > 32 or any(t not in _STRUCT_FORMATS for t in type_names):
        return None
    fmt = ">" + "".join(_STRUCT_FORMATS[t][0] for t in type_names)
    ns: dict[str, Any] = {"_s": struct.Struct(fmt).unpack_from, "_ms": _ms_to_timestamp, "_uuid": new_uuid, "_StructError": struct.error}
    names = ", ".join(f"r{i}" for i in range(len(type_names)))
    convs = ", ".join((_STRUCT_FORMATS[t][1] or "{}").format(f"r{i}") for i, t in enumerate(type_names))
    lines = [
        "def fast(buf, pos):",
        "    try:",
        "        if buf[pos] != 0: return None",
        f"        {names}, = _s(buf, pos + 1)",
        "    except (IndexError, _StructError):",
        "        return None",
        f"    return ({convs},), pos + {1 + struct.calcsize(fmt)}",
    ]
    exec(compile("\n".join(lines), "<compiled clustering decoder>", "exec"), ns)  # the text is built from fixed pieces
    fast: FastClustering = ns["fast"]
    return fast


class TableDecoder:
    """Per-table decoding state: key and clustering decoders, column decoders, header cache."""

    def __init__(self, schema: TableSchema, dropped_types: Mapping[str, str] | None = None, *, selected: bool = True) -> None:
        self.schema = schema
        self.selected = selected
        self.dropped_types = dict(dropped_types or {})
        self._dropped_times = dict(schema.dropped)
        pk = schema.partition_key
        self.pk_names = tuple(c.name for c in pk)
        self.pk_decoders = tuple(value_decoder(c.cql_type) for c in pk)
        clus = schema.clustering
        self.clustering_names = tuple(c.name for c in clus)
        self.clustering: tuple[tuple[int | None, Decoder], ...] = tuple((fixed_length(c.cql_type), value_decoder(c.cql_type)) for c in clus)
        self.fast_clustering = compile_fast_clustering(self.clustering, tuple(c.cql_type.name for c in clus))
        self._columns: dict[str, ColumnDecoder] = {}
        self._headers: dict[bytes, _Header] = {}
        self._recent: list[tuple[bytes, _Header]] = []

    def column(self, name: str) -> ColumnDecoder:
        col = self._columns.get(name)
        if col is None:
            dropped_time = self._dropped_times.get(name)
            schema_col = self.schema.by_name.get(name)
            if schema_col is not None:
                col = ColumnDecoder(name, schema_col.type, emit=True, dropped_time=dropped_time)
            elif name in self.dropped_types:
                col = ColumnDecoder(name, self.dropped_types[name], emit=False, dropped_time=dropped_time)
            else:
                raise UnknownColumnError(self.schema, name)
            self._columns[name] = col
        return col

    def header(self, buf: bytes, pos: int) -> tuple[_Header, int]:
        """Read a Columns block (uvint count, names) at ``pos``; cached by its raw bytes."""
        for raw, known in self._recent:
            if buf.startswith(raw, pos):
                return known, pos + len(raw)
        start = pos
        count, pos = read_uvint(buf, pos)
        for _ in range(count):
            n, pos = read_uvint(buf, pos)
            pos += n
        if pos > len(buf):
            raise DecodeError("columns block runs past the mutation")
        raw = buf[start:pos]
        got = self._headers.get(raw)
        if got is None:
            names = []
            p = start
            _, p = read_uvint(buf, p)
            for _ in range(count):
                n, p = read_uvint(buf, p)
                names.append(buf[p : p + n].decode("utf-8"))
                p += n
            got = _Header(tuple(self.column(n) for n in names))
            self._headers[raw] = got
        self._recent = [(raw, got), *self._recent[:3]]
        return got, pos

    def decode_key(self, key: bytes) -> dict[str, Any]:
        if len(self.pk_names) == 1:
            return {self.pk_names[0]: self.pk_decoders[0](key)}
        out: dict[str, Any] = {}
        pos = 0
        for name, dec in zip(self.pk_names, self.pk_decoders, strict=True):
            if pos + 2 > len(key):
                raise DecodeError("truncated composite partition key")
            n = _U16.unpack_from(key, pos)[0]
            pos += 2
            if pos + n + 1 > len(key):
                raise DecodeError("composite partition key component runs past the key")
            out[name] = dec(key[pos : pos + n])
            pos += n + 1  # end-of-component byte
        if pos != len(key):
            raise DecodeError("trailing bytes in a composite partition key")
        return out


class DecodedRow:
    __slots__ = ("cells", "clustering", "deletion", "liveness", "static")

    def __init__(
        self,
        clustering: tuple[Any, ...],
        static: bool,
        liveness: Liveness | None,
        deletion: Deletion | None,
        cells: dict[str, Cell | ComplexChange],
    ) -> None:
        self.clustering = clustering
        self.static = static
        self.liveness = liveness
        self.deletion = deletion
        self.cells = cells


class DecodedMarker:
    """A range-tombstone bound or boundary. For a boundary, ``deletion`` is the closed range's and
    ``open_deletion`` the opened one's; for a start bound, ``deletion`` is the opened range's."""

    __slots__ = ("deletion", "kind", "open_deletion", "values")

    def __init__(self, kind: int, values: tuple[Any, ...], deletion: Deletion | None, open_deletion: Deletion | None) -> None:
        self.kind = kind
        self.values = values
        self.deletion = deletion
        self.open_deletion = open_deletion


class DecodedUpdate:
    __slots__ = ("key", "partition_deletion", "static_row", "table", "unfiltered")

    def __init__(
        self,
        table: TableDecoder,
        key: dict[str, Any],
        partition_deletion: Deletion | None,
        static_row: DecodedRow | None,
        unfiltered: list[DecodedRow | DecodedMarker],
    ) -> None:
        self.table = table
        self.key = key
        self.partition_deletion = partition_deletion
        self.static_row = static_row
        self.unfiltered = unfiltered


Resolver = Callable[[bytes], TableDecoder]


def first_table_id(data: bytes) -> bytes:
    """Raw 16 bytes of the table id of a mutation's first PartitionUpdate (to skip it cheaply)."""
    _, pos = read_uvint(data, 0)
    if pos + 16 > len(data):
        raise DecodeError("mutation too short for a table id")
    return data[pos : pos + 16]


class _Times:
    """A partition's EncodingStats minimums and how to read deltas against them."""

    __slots__ = ("min_ldt", "min_ts", "min_ttl", "unsigned_ldt")

    def __init__(self, min_ts: int, min_ldt: int, min_ttl: int, unsigned_ldt: bool) -> None:
        self.min_ts = min_ts
        self.min_ldt = min_ldt
        self.min_ttl = min_ttl
        self.unsigned_ldt = unsigned_ldt

    def ts(self, delta: int) -> int:
        t = delta + self.min_ts
        if t > LONG_MAX or t < LONG_MIN:
            t &= MASK64
            if t > LONG_MAX:
                t -= 1 << 64
        return t

    def ldt(self, delta: int) -> int | None:
        raw = (delta + self.min_ldt) & MASK32
        if self.unsigned_ldt:
            return None if raw == MASK32 else raw
        if raw > INT_MAX:
            return raw - (1 << 32)
        return None if raw == INT_MAX else raw

    def ttl(self, delta: int) -> int:
        raw = (delta + self.min_ttl) & MASK32
        return raw - (1 << 32) if raw > INT_MAX else raw

    def deletion(self, buf: bytes, pos: int) -> tuple[Deletion | None, int]:
        d, pos = read_uvint(buf, pos)
        ldt_delta, pos = read_uvint(buf, pos)
        ts = self.ts(d)
        if ts == LONG_MIN:
            return None, pos
        ldt = self.ldt(ldt_delta)
        return new_deletion(ts, INT_MAX if ldt is None else ldt), pos


def decode_mutation(data: bytes, resolve: Resolver, messaging_version: int) -> list[DecodedUpdate]:
    """All PartitionUpdates of a mutation whose table is selected (unselected ones are decoded
    only to find where the next one starts). Raises DecodeError, UnknownTableError, UnknownColumnError."""
    count, pos = read_uvint(data, 0)
    if count == 0:
        raise DecodeError("mutation without partition updates")
    unsigned_ldt = messaging_version >= 13
    out: list[DecodedUpdate] = []
    for _ in range(count):
        update, pos = _partition_update(data, pos, resolve, unsigned_ldt)
        if update.table.selected:
            out.append(update)
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} trailing bytes after the last partition update")
    return out


def _partition_update(buf: bytes, pos: int, resolve: Resolver, unsigned_ldt: bool) -> tuple[DecodedUpdate, int]:
    if pos + 16 > len(buf):
        raise DecodeError("truncated table id")
    table = resolve(buf[pos : pos + 16])
    pos += 16
    klen = buf[pos] if pos < len(buf) else 0x80
    if klen < 0x80:
        pos += 1
    else:
        klen, pos = read_uvint(buf, pos)
    key_bytes = buf[pos : pos + klen]
    pos += klen
    if pos >= len(buf):
        raise DecodeError("truncated partition update")
    key = table.decode_key(key_bytes)
    flags = buf[pos]
    pos += 1
    if flags & IS_EMPTY:
        return DecodedUpdate(table, key, None, None, []), pos
    u, pos = read_uvint(buf, pos)
    min_ts = (u + TIMESTAMP_EPOCH) & MASK64
    if min_ts > LONG_MAX:
        min_ts -= 1 << 64
    u, pos = read_uvint(buf, pos)
    min_ldt = (u + DELETION_TIME_EPOCH) & MASK32
    u = buf[pos] if pos < len(buf) else 0x80
    if u < 0x80:
        pos += 1
    else:
        u, pos = read_uvint(buf, pos)
    times = _Times(min_ts, min_ldt, u & MASK32, unsigned_ldt)
    statics = None
    if flags & HAS_STATIC_ROW:
        statics, pos = table.header(buf, pos)
    regulars, pos = table.header(buf, pos)
    partition_deletion = None
    if flags & HAS_PARTITION_DELETION:
        partition_deletion, pos = times.deletion(buf, pos)
    static_row = None
    if flags & HAS_STATIC_ROW:
        if statics is None:  # pragma: no cover - set above
            raise DecodeError("static row without static columns")
        rflags = buf[pos]
        static_row, pos = _row(buf, pos + 1, rflags, table, statics, statics, times)
        if not static_row.static:
            raise DecodeError("the static row is not flagged static")
    if flags & HAS_ROW_ESTIMATE:
        _, pos = read_uvint(buf, pos)
    unfiltered: list[DecodedRow | DecodedMarker] = []
    size = len(buf)
    fast_cells = regulars.fast_all
    fast_clustering = table.fast_clustering
    no_clustering = not table.clustering
    while True:
        if pos >= size:
            raise DecodeError("partition update without its end-of-partition byte")
        rflags = buf[pos]
        pos += 1
        if rflags == END_OF_PARTITION:
            break
        if rflags == _PLAIN_ROW and fast_cells is not None and (fast_clustering is not None or no_clustering):
            # the common INSERT row (row timestamp, all columns, plain cells): the same as _row
            # gives, without its general branches; falls through to _row when a part differs
            clustering: tuple[Any, ...] = ()
            p = pos
            if fast_clustering is not None:
                got_clustering = fast_clustering(buf, pos)
                if got_clustering is None:
                    p = size  # not plain: the general code below
                else:
                    clustering, p = got_clustering
            if p < size and buf[p] < 0x80:
                row_ts = times.ts(buf[p])
                got = fast_cells(buf, p + 1, row_ts)
                if got is not None:
                    unfiltered.append(DecodedRow(clustering, False, new_liveness(row_ts, None, None), None, got[0]))
                    pos = got[1]
                    continue
        if rflags & IS_MARKER:
            marker, pos = _marker(buf, pos, table, times)
            unfiltered.append(marker)
        else:
            row, pos = _row(buf, pos, rflags, table, statics, regulars, times)
            if row.static:
                raise DecodeError("a static row among the clustered rows")
            unfiltered.append(row)
    return DecodedUpdate(table, key, partition_deletion, static_row, unfiltered), pos


def _clustering(buf: bytes, pos: int, table: TableDecoder, size: int) -> tuple[tuple[Any, ...], int]:
    if size > len(table.clustering):
        raise DecodeError(f"clustering prefix of {size} values for {len(table.clustering)} clustering columns")
    values: list[Any] = []
    specs = table.clustering
    for block in range(0, size, 32):
        header, pos = read_uvint(buf, pos)
        for i in range(block, min(size, block + 32)):
            fixed, dec = specs[i]
            if header:
                j = (i - block) * 2
                if (header >> j) & 2:
                    values.append(None)
                    continue
                if (header >> j) & 1:
                    values.append(dec(b""))
                    continue
            if fixed is None:
                n, pos = read_uvint(buf, pos)
            else:
                n = fixed
            end = pos + n
            if end > len(buf):
                raise DecodeError("clustering value runs past the mutation")
            values.append(dec(buf[pos:end]))
            pos = end
    return tuple(values), pos


def _marker(buf: bytes, pos: int, table: TableDecoder, times: _Times) -> tuple[DecodedMarker, int]:
    if pos + 3 > len(buf):
        raise DecodeError("truncated range tombstone marker")
    kind = buf[pos]
    size = _U16.unpack_from(buf, pos + 1)[0]
    pos += 3
    if kind not in (0, 1, 2, 5, 6, 7):
        raise DecodeError(f"invalid range tombstone bound kind {kind}")
    values: tuple[Any, ...] = ()
    if size:
        values, pos = _clustering(buf, pos, table, size)
    deletion, pos = times.deletion(buf, pos)
    open_deletion = None
    if kind in (EXCL_END_INCL_START_BOUNDARY, INCL_END_EXCL_START_BOUNDARY):
        open_deletion, pos = times.deletion(buf, pos)
    return DecodedMarker(kind, values, deletion, open_deletion), pos


def _row(
    buf: bytes,
    pos: int,
    flags: int,
    table: TableDecoder,
    statics: _Header | None,
    regulars: _Header,
    times: _Times,
) -> tuple[DecodedRow, int]:
    static = False
    if flags & EXTENSION_FLAG:
        static = bool(buf[pos] & IS_STATIC)
        pos += 1
    clustering: tuple[Any, ...] = ()
    if not static and table.clustering:
        got_clustering = None
        if table.fast_clustering is not None:
            got_clustering = table.fast_clustering(buf, pos)
        if got_clustering is None:
            clustering, pos = _clustering(buf, pos, table, len(table.clustering))
        else:
            clustering, pos = got_clustering
    liveness = None
    row_ts = LONG_MIN
    row_ttl: int | None = None
    row_ldt: int | None = None
    if flags & HAS_TIMESTAMP:
        d, pos = read_uvint(buf, pos)
        row_ts = times.ts(d)
        if flags & HAS_TTL:
            d, pos = read_uvint(buf, pos)
            row_ttl = times.ttl(d)
            d, pos = read_uvint(buf, pos)
            row_ldt = times.ldt(d)
        liveness = new_liveness(row_ts, row_ttl, row_ldt)
    deletion = None
    if flags & HAS_DELETION:
        deletion, pos = times.deletion(buf, pos)
    header = statics if static else regulars
    if header is None:
        raise DecodeError("static row in a partition without static columns")
    if flags & HAS_ALL_COLUMNS:
        columns = header.all
        fast = header.fast_all
    else:
        v, pos = read_uvint(buf, pos)
        if v == 0:
            columns = header.all
            fast = header.fast_all
        elif len(header.all) < 64:
            columns = header.subset(v)
            fast = header.fast_subset(v, columns)
        else:
            columns, pos = _large_subset(buf, pos, header.all, v)
            fast = None
    if fast is not None:
        got = fast(buf, pos, row_ts)
        if got is not None:
            return DecodedRow(clustering, static, liveness, deletion, got[0]), got[1]
    cells: dict[str, Cell | ComplexChange] = {}
    has_complex_deletion = flags & HAS_COMPLEX_DELETION
    size = len(buf)
    ts_of = times.ts
    for col in columns:
        if not col.complex:
            cflags = buf[pos]
            pos += 1
            if cflags == CELL_USE_ROW_TIMESTAMP:  # the common INSERT cell: row timestamp, a value, no TTL
                n = col.fixed
                if n is None:
                    n = buf[pos]
                    if n < 0x80:
                        pos += 1
                    else:
                        n, pos = read_uvint(buf, pos)
                end = pos + n
                if end > size:
                    raise DecodeError(f"value of column {col.name} runs past the mutation")
                if col.emit and (col.dropped_time is None or row_ts > col.dropped_time):
                    cells[col.name] = new_cell(row_ts, col.decode(buf[pos:end]), False, None, None)
                pos = end
                continue
            if cflags & CELL_USE_ROW_TIMESTAMP:
                ts = row_ts
            else:
                d, pos = read_uvint(buf, pos)
                ts = ts_of(d)
            ttl = ldt = None
            if cflags & CELL_USE_ROW_TTL:
                ttl, ldt = row_ttl, row_ldt
            elif cflags & 3:
                d, pos = read_uvint(buf, pos)
                ldt = times.ldt(d)
                if cflags & CELL_IS_EXPIRING:
                    d, pos = read_uvint(buf, pos)
                    ttl = times.ttl(d)
            if cflags & CELL_HAS_EMPTY_VALUE:
                raw = b""
            else:
                n = col.fixed
                if n is None:
                    n, pos = read_uvint(buf, pos)
                end = pos + n
                if end > size:
                    raise DecodeError(f"value of column {col.name} runs past the mutation")
                raw = buf[pos:end]
                pos = end
            if not col.emit or (col.dropped_time is not None and ts <= col.dropped_time):
                continue
            if cflags & CELL_IS_DELETED:
                cells[col.name] = new_cell(ts, None, True, ttl, ldt)
            else:
                cells[col.name] = new_cell(ts, col.decode(raw), False, ttl, ldt)
        else:
            cdel = None
            if has_complex_deletion:
                cdel, pos = times.deletion(buf, pos)
            count, pos = read_uvint(buf, pos)
            if count > size:
                raise DecodeError(f"cell count {count} of column {col.name} larger than the mutation")
            elements: list[ElementChange] = []
            done = 0
            if FAST_COMPLEX and col.fast_elements is not None:
                pos, done = col.fast_elements(buf, pos, count, row_ts, elements)
            for _ in range(count - done):
                element, pos = _complex_cell(buf, pos, col, times, row_ts, row_ttl, row_ldt)
                if element is not None:
                    elements.append(element)
            if not col.emit:
                continue
            if col.dropped_time is not None and cdel is not None and cdel.timestamp <= col.dropped_time:
                cdel = None
            if cdel is None and not elements:
                continue
            cells[col.name] = new_complex(cdel, tuple(elements))
    return DecodedRow(clustering, static, liveness, deletion, cells), pos


def _complex_cell(
    buf: bytes, pos: int, col: ColumnDecoder, times: _Times, row_ts: int, row_ttl: int | None, row_ldt: int | None
) -> tuple[ElementChange | None, int]:
    cflags = buf[pos]
    pos += 1
    if cflags & CELL_USE_ROW_TIMESTAMP:
        ts = row_ts
    else:
        d, pos = read_uvint(buf, pos)
        ts = times.ts(d)
    ttl = ldt = None
    if cflags & CELL_USE_ROW_TTL:
        ttl, ldt = row_ttl, row_ldt
    elif cflags & 3:
        d, pos = read_uvint(buf, pos)
        ldt = times.ldt(d)
        if cflags & CELL_IS_EXPIRING:
            d, pos = read_uvint(buf, pos)
            ttl = times.ttl(d)
    n, pos = read_uvint(buf, pos)
    end = pos + n
    if end > len(buf):
        raise DecodeError(f"cell path of column {col.name} runs past the mutation")
    raw_path = buf[pos:end]
    pos = end
    raw = b""
    if not cflags & CELL_HAS_EMPTY_VALUE:
        n, pos = read_uvint(buf, pos)
        end = pos + n
        if end > len(buf):
            raise DecodeError(f"element value of column {col.name} runs past the mutation")
        raw = buf[pos:end]
        pos = end
    if not col.emit or (col.dropped_time is not None and ts <= col.dropped_time):
        return None, pos
    if col.udt_names:
        if len(raw_path) != 2:
            raise DecodeError(f"UDT cell path of {len(raw_path)} bytes in column {col.name}")
        idx = (raw_path[0] << 8) | raw_path[1]
        if idx >= len(col.udt_names):
            raise DecodeError(f"UDT field position {idx} beyond the known fields of column {col.name}")
        path: Any = col.udt_names[idx]
        dec: Decoder | None = col.udt_decoders[idx]
    else:
        path = col.path_decode(raw_path)
        dec = col.elem_decode
    if cflags & CELL_IS_DELETED:
        cell = new_cell(ts, None, True, ttl, ldt)
    else:
        cell = new_cell(ts, None if dec is None else dec(raw), False, ttl, ldt)
    return new_element(path, cell), pos


def _large_subset(buf: bytes, pos: int, superset: tuple[ColumnDecoder, ...], missing: int) -> tuple[tuple[ColumnDecoder, ...], int]:
    n = len(superset)
    present = n - missing
    if present < 0:
        raise DecodeError(f"column subset misses {missing} of {n} columns")
    if present < n // 2:
        idx = []
        for _ in range(present):
            i, pos = read_uvint(buf, pos)
            if i >= n:
                raise DecodeError(f"column index {i} beyond {n} columns")
            idx.append(i)
        return tuple(superset[i] for i in idx), pos
    gone = set()
    for _ in range(missing):
        i, pos = read_uvint(buf, pos)
        if i >= n:
            raise DecodeError(f"column index {i} beyond {n} columns")
        gone.add(i)
    return tuple(c for i, c in enumerate(superset) if i not in gone), pos
