"""Classifying database errors (design-notes §7) and keeping credentials out of messages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["Redactor", "is_bisectable", "is_data_error", "is_transient"]

# SQLSTATE classes worth retrying: connection exceptions, transaction rollback (serialization
# failures, deadlocks), insufficient resources, operator intervention (shutdown, statement
# timeout), system errors; plus lock_not_available.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_STATES = frozenset({"55P03", "55006"})
# Data exceptions and integrity violations: one event's value, not the batch, is at fault.
_DATA_CLASSES = frozenset({"22", "23"})


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def is_transient(exc: BaseException) -> bool:
    """Connection loss, timeouts, serialization failures, deadlocks, overload."""
    state = _sqlstate(exc)
    if state is not None:
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionError | OSError):
        return True
    # asyncpg's InterfaceError family (connection closed, another operation in progress …).
    return type(exc).__module__.startswith("asyncpg") and "Interface" in "".join(t.__name__ for t in type(exc).__mro__)


def is_data_error(exc: BaseException) -> bool:
    state = _sqlstate(exc)
    return state is not None and state[:2] in _DATA_CLASSES


def is_bisectable(exc: BaseException) -> bool:
    """A non-transient error the server raised (it has a SQLSTATE): possibly one event's fault
    (a value, an integrity violation, an over-long key — class 54 …), so the batch is bisected
    to the culprits before anything is declared permanent."""
    return _sqlstate(exc) is not None and not is_transient(exc)


class Redactor:
    """Replaces every known secret (the DSN, its password) with ``***`` in text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        found: set[str] = set()
        for s in secrets:
            if not s:
                continue
            found.add(s)
            try:
                parts = urlsplit(s)
                if parts.password:
                    found.add(parts.password)
                    found.add(unquote(parts.password))
            except ValueError:
                pass
            for m in re.finditer(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", s):
                value = m.group(1).strip("'")
                found.add(value)
        # Longest first, so a DSN is replaced whole before its password is.
        self._secrets = sorted((s for s in found if len(s) >= 3), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text
