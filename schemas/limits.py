"""Sanity limits applied while decoding.

They are configuration (the worker builds them from its settings), so they travel with each
decode call, and reach the amount validators through pydantic's validation ``context``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["DEFAULT_LIMITS", "DecodeLimits"]


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """``max_amount`` caps any single amount; ``max_decimals`` bounds the scale of amounts
    (micro-units need at most 6); ``max_clock_skew_seconds`` is how far an event's time may be
    ahead of its Kafka record's timestamp."""

    max_amount: Decimal | float | int = field(default=Decimal(10**12))
    max_clock_skew_seconds: float = 300.0
    max_decimals: int = 6

    def __post_init__(self) -> None:
        cap = self.max_amount
        if not isinstance(cap, Decimal):
            # A float setting (1e12) becomes its exact shortest decimal, not a binary fraction.
            cap = Decimal(repr(cap)) if isinstance(cap, float) else Decimal(cap)
            object.__setattr__(self, "max_amount", cap)
        if not cap.is_finite() or cap < 0:
            raise ValueError(f"max_amount must be a finite number >= 0, got {cap}")
        if not 0 <= self.max_decimals <= 6:
            raise ValueError(f"max_decimals must be in 0..6, got {self.max_decimals}")
        if self.max_clock_skew_seconds < 0:
            raise ValueError("max_clock_skew_seconds must be >= 0")

    @property
    def max_clock_skew_us(self) -> int:
        return int(self.max_clock_skew_seconds * 1_000_000)


DEFAULT_LIMITS = DecodeLimits()
