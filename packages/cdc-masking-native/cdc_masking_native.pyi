"""Optional accelerator of cdc-masking: keyed HMAC-SHA256 masking of whole columns in one call."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, final

__version__: str

@final
class KeyedHmac:
    """``prefix + encode(HMAC-SHA256(key, domain + canonical(value))[:digest_bytes])[:length]``.

    ``str`` values are hashed as UTF-8 and ``bytes`` raw (exact classes only); any other value as
    ``canonical(value)``, which must return ``bytes`` (a ``TypeError`` without ``canonical``).
    """

    def __init__(
        self,
        key: bytes,
        *,
        domain: bytes = b"",
        output: Literal["hex", "base64url"] = "hex",
        digest_bytes: int = 32,
        length: int | None = None,
        prefix: str = "",
        canonical: Callable[[Any], bytes] | None = None,
    ) -> None: ...
    def mask(self, value: Any) -> str: ...
    def mask_many(self, values: list[Any]) -> list[str]: ...
    def mask_many_memo(self, values: list[Any], cache: dict[Any, Any], size: int) -> list[str]:
        """``mask_many`` through ``cache`` with the semantics of ``cdc_masking.strategies.memoise``."""
    def digest(self, data: bytes) -> bytes: ...

@final
class SlotClass:
    """Copies of instances of one slotted class with some slots replaced, for whole lists.

    ``descriptors`` are the member descriptors of *every* slot of ``cls`` (the caller checks that
    filling all of them is equivalent to ``__init__``, e.g. with ``cdc_core.fastobj.slot_setters``).
    """

    def __init__(self, cls: type, descriptors: list[Any]) -> None: ...
    def evolve_many(self, objs: list[Any], consts: dict[int, Any], columns: dict[int, list[Any]]) -> list[Any]:
        """For each object (or None, kept), a copy with slot ``i`` set to ``consts[i]`` or to the next value of
        ``columns[i]`` (one value per non-None object, in order); other slots copied."""

def dicts_with(bases: list[Mapping[str, Any]], names: Sequence[str], columns: Sequence[list[Any]]) -> list[Mapping[str, Any]]:
    """Per mapping: itself if every ``columns[k][i]`` is None, else ``dict(base)`` with ``names[k]`` set to the
    non-None ``columns[k][i]``."""

def live_cells(bases: list[Mapping[str, Any]], name: str, cls: type) -> tuple[list[Any], list[Any]] | None:
    """Per mapping, its entry ``name`` if that is a live ``cls`` (exact class, ``value`` not None, not a
    ``tombstone``) else None, and those cells' values; None if an entry is neither None nor exactly ``cls``."""
