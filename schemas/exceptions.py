"""The one exception of the schemas package.

A rejected message must say *why* in a form that is stable enough to be a header value
(``error.reason`` on the dead-letter topic) and a metric label, and *where* in a form a human can
act on. Hence two parts: a short ``reason`` code and a free-text ``message`` naming the field.
"""

from __future__ import annotations

from typing import Final

__all__ = ["REASONS", "DecodeError"]

#: Every reason code a decode failure can carry (``late`` is decided by the stream, not the codec).
REASONS: Final[frozenset[str]] = frozenset(
    {
        "malformed_json",
        "not_an_object",
        "unknown_type",
        "missing_field",
        "invalid_field",
        "negative_amount",
        "non_finite_amount",
        "amount_over_cap",
        "too_precise",
        "future_time",
        "late",
        "unsupported_version",
    }
)


class DecodeError(ValueError):
    """An input message that cannot take effect; ``reason`` is one of :data:`REASONS`."""

    __slots__ = ("message", "reason")

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown decode error reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str]]:
        return (DecodeError, (self.reason, self.message))
