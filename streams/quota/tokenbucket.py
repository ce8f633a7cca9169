"""Token bucket with exact fractional refill, one bucket per entity.

Tokens are micro-tokens (ints). Refill adds ``rate x elapsed_us / 10^6`` micro-tokens; the part
that does not make a whole micro-token is carried in ``remainder`` (numerator over 10^6), so that a
bucket polled every microsecond under steady load refills exactly as fast as one polled hourly
(the seed truncated the fraction away and stopped refilling). Capacity is never exceeded; when the
bucket is full the carried fraction is dropped, as a full bucket cannot hold more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .units import SEC_US

__all__ = ["Bucket", "new_bucket", "refill", "try_take"]


@dataclass(frozen=True, slots=True)
class Bucket:
    rate_micros_per_s: int
    """Refill rate in micro-tokens per second (1.5 tokens/s is 1_500_000)."""
    capacity_micros: int
    tokens_micros: int
    last_us: int
    remainder: int = 0
    """Carried fraction of a micro-token, in units of 10^-6 micro-token (0 ≤ remainder < 10^6)."""

    def to_list(self) -> list[int]:
        return [
            self.rate_micros_per_s,
            self.capacity_micros,
            self.tokens_micros,
            self.last_us,
            self.remainder,
        ]

    @classmethod
    def from_list(cls, raw: list[int]) -> Bucket:
        return cls(raw[0], raw[1], raw[2], raw[3], raw[4])


def new_bucket(rate_micros_per_s: int, capacity_micros: int, now_us: int) -> Bucket:
    """A full bucket."""
    if rate_micros_per_s < 0 or capacity_micros < 0:
        raise ValueError("rate and capacity must be non-negative")
    return Bucket(rate_micros_per_s, capacity_micros, capacity_micros, now_us, 0)


def refill(bucket: Bucket, now_us: int) -> Bucket:
    """The bucket as of ``now_us`` (a clock that goes backwards refills nothing)."""
    elapsed = now_us - bucket.last_us
    if elapsed <= 0:
        return bucket
    if bucket.tokens_micros >= bucket.capacity_micros:
        return replace(bucket, tokens_micros=bucket.capacity_micros, last_us=now_us, remainder=0)
    added, remainder = divmod(bucket.rate_micros_per_s * elapsed + bucket.remainder, SEC_US)
    tokens = bucket.tokens_micros + added
    if tokens >= bucket.capacity_micros:
        tokens, remainder = bucket.capacity_micros, 0
    return Bucket(bucket.rate_micros_per_s, bucket.capacity_micros, tokens, now_us, remainder)


def try_take(bucket: Bucket, amount_micros: int, now_us: int) -> tuple[bool, Bucket]:
    """Refill to ``now_us``, then take ``amount_micros`` if there are enough tokens.

    Returns (allowed, bucket after the call); a refused take still keeps the refill.
    """
    if amount_micros < 0:
        raise ValueError("amount must be non-negative")
    b = refill(bucket, now_us)
    if b.tokens_micros < amount_micros:
        return False, b
    return True, replace(b, tokens_micros=b.tokens_micros - amount_micros)
