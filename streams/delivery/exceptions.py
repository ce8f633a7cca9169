"""Errors of the delivery worker."""

from __future__ import annotations

__all__ = ["ConfigError", "DeliveryError"]


class ConfigError(ValueError):
    """The delivery configuration is invalid; the message names the field (never a secret)."""


class DeliveryError(Exception):
    """One attempt to send to a channel failed.

    ``retryable`` says whether another attempt may succeed (a 5xx, a timeout, a refused
    connection) or not (a 4xx other than 408/425/429: the receiver refuses this payload). The
    message is built by the channel from status codes and exception types, so it carries no
    secret; the worker still redacts every configured secret from it before it is logged or
    written to a dead-letter header.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
