"""Optional accelerator of cdc-masking: keyed HMAC-SHA256 masking of whole columns in one call."""

from collections.abc import Callable
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
