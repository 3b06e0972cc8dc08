"""The transform contract: event in, event (or nothing) out — synchronous and cheap.

Transforms run in the engine before any sink, the DLQ, a log line, a span or a metric label sees
an event; sinks only ever receive transformed events (design-notes §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cdc_core.events import ChangeEvent

__all__ = ["Transform"]


@runtime_checkable
class Transform(Protocol):
    name: str

    async def start(self) -> None: ...

    def apply(self, events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
        """Return the transformed events (an event may be dropped, never reordered)."""

    def audit(self) -> list[dict[str, object]]:
        """Structured records of what the last ``apply`` did (no values), for the audit log."""

    async def close(self) -> None: ...
