"""A string that never prints: for passwords, keys and DSNs with credentials."""

from __future__ import annotations

import attrs

__all__ = ["Secret"]


@attrs.frozen(repr=False)
class Secret:
    """Holds a secret value. ``str()``/``repr()`` show ``'***'``; call :meth:`reveal` to use it."""

    _value: str = attrs.field(alias="value")

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)
