"""A token bucket per channel, so that a burst of records never overruns a receiver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up; starts full.

    ``try_take(now)`` is the pure decision (it returns how long to wait when no token is
    there); ``take()`` waits for a token. The clock is injectable for tests."""

    def __init__(
        self,
        rate: float,
        capacity: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("rate must be > 0 and capacity >= 1")
        self.rate = rate
        self.capacity = float(capacity)
        self._clock = clock
        self._tokens = float(capacity)
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now

    def try_take(self, now: float | None = None) -> float:
        """Take a token and return 0.0, or take nothing and return the seconds until one is
        there."""
        self._refill(self._clock() if now is None else now)
        if self._tokens >= 1.0 - 1e-9:  # float sums of refills must not starve a taker
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def take(self) -> float:
        """Wait for a token; returns the seconds waited. Waiters are served in turn."""
        waited = 0.0
        async with self._lock:
            while True:
                wait = self.try_take()
                if wait == 0.0:
                    return waited
                await asyncio.sleep(wait)
                waited += wait
