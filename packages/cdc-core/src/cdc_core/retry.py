"""Retrying transient failures with exponential backoff and jitter."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cdc_core.config import RetryConfig
from cdc_core.errors import PermanentError, TransientError

__all__ = ["is_transient", "retry_delays", "with_retry"]

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Transient: our TransientError, and the OS/network failures drivers raise as themselves."""
    if isinstance(exc, PermanentError):
        return False
    return isinstance(exc, TransientError | ConnectionError | TimeoutError | OSError)


def retry_delays(config: RetryConfig, rng: random.Random | None = None) -> list[float]:
    """The sleeps between the ``attempts`` tries: base·multiplier^n, capped, ± jitter."""
    rng = rng or random.Random()
    delays = []
    for n in range(config.attempts - 1):
        delay = min(config.max_delay, config.base_delay * config.multiplier**n)
        delays.append(max(0.0, delay * (1 + rng.uniform(-config.jitter, config.jitter))))
    return delays


async def with_retry(
    call: Callable[[], Awaitable[T]],
    config: RetryConfig,
    *,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> tuple[T, int]:
    """Run ``call`` until it succeeds or fails permanently; returns (result, attempts used).

    Non-transient exceptions propagate at once; the last transient one propagates when the
    attempts are used up.
    """
    delays = retry_delays(config)
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call(), attempt
        except Exception as exc:
            if not is_transient(exc) or attempt > len(delays):
                raise
            delay = delays[attempt - 1]
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await asyncio.sleep(delay)
