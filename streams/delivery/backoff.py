"""Exponential backoff with a cap, a maximum number of attempts and a maximum age."""

from __future__ import annotations

import random

from novaquota.streams.delivery.config import RetryPolicy

__all__ = ["delay_after", "gives_up"]


def delay_after(
    policy: RetryPolicy,
    attempt: int,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first):
    ``min(cap, base * factor**(attempt-1))`` spread by ± ``jitter`` of itself; a receiver's
    ``Retry-After`` is honoured up to the cap."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    exponent = min(attempt - 1, 1000)
    try:
        raw = policy.base_seconds * policy.factor**exponent
    except OverflowError:
        raw = policy.cap_seconds
    delay = min(policy.cap_seconds, raw)
    if policy.jitter:
        spread = delay * policy.jitter
        delay += (rng or random).uniform(-spread, spread)
        delay = min(policy.cap_seconds, max(0.0, delay))
    if retry_after is not None and retry_after > delay:
        delay = min(policy.cap_seconds, retry_after)
    return delay


def gives_up(policy: RetryPolicy, attempts: int, age_seconds: float, next_delay: float) -> bool:
    """True when no further attempt is allowed: ``attempts`` made already reach
    ``max_attempts``, or the next one would start past ``max_age_seconds`` after the first."""
    return attempts >= policy.max_attempts or age_seconds + next_delay > policy.max_age_seconds
