"""Optional accelerator of cdc-sink-clickhouse: the TabSeparated ``__rows_in`` line of a plain row write."""

from collections.abc import Callable, Sequence, Set
from typing import Any, final

__version__: str

KIND_CALL: int
KIND_INT: int
KIND_TEXT: int
KIND_DOUBLE: int
KIND_BOOL: int
KIND_TS: int
HEX_CALL: int
HEX_INT_ASC: int
HEX_INT_DESC: int

@final
class RowEncoder:
    """What ``TableLayout.encode_latest`` writes for a plain row write (not static, no partition or
    range deletion) of a table whose regular columns are all simple.

    ``pk``/``ck``: per key column ``(name, kind, encode, lo, hi, hex, hex_mode)``; ``cells``: per
    regular column ``(name, kind, encode, default, absent, lo, hi)``. ``kind`` picks a native value
    encoder (``KIND_*``; ``encode``, the Python encoder, handles ``KIND_CALL`` and any value outside
    the native fast path), ``lo``/``hi`` bound ``KIND_INT`` values, ``hex`` is the clustering
    column's order-key hex function (``HEX_CALL``) unless ``hex_mode`` does integers natively.
    ``known``: every column name of the table. ``row_kind``: ``ChangeKind.ROW``; ``types``:
    ``(ChangeEvent, Cell, Liveness, Deletion)``, attrs classes with ``__slots__`` whose fields are
    read straight from the instance (an object of any other class, subclasses included, is
    declined; a class without those slot fields raises ``TypeError``); write timestamps must lie
    strictly inside ``±version_limit``; ``no_elem``: the empty element fields that end the line
    (after a tab), or ``""`` when the table has none.
    """

    def __init__(
        self,
        pk: Sequence[tuple[str, int, Callable[[Any], str], int, int, Callable[[Any], str] | None, int]],
        ck: Sequence[tuple[str, int, Callable[[Any], str], int, int, Callable[[Any], str] | None, int]],
        cells: Sequence[tuple[str, int, Callable[[Any], str], str, str, int, int]],
        known: Set[str],
        row_kind: object,
        types: tuple[type, type, type, type],
        version_limit: int,
        no_elem: str,
    ) -> None: ...
    def encode(self, event: Any) -> str | None:
        """The line, or ``None`` when the Python encoder must handle the event (it may reject it)."""
    def encode_chunk(self, events: list[Any]) -> tuple[bytes, list[int], list[int]]:
        """``(payload, ends, declined)``: the UTF-8 of every line ``encode`` gives, each followed by a
        newline, in list order; ``ends[j]`` is the byte offset just after the j-th taken event's
        line; ``declined``: the indexes of the events ``encode`` declines (not in the payload)."""
