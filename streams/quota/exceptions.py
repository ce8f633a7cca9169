"""Errors of the pure quota core.

Bad *input* never raises: it comes back as a ``Rejected`` output so that a worker keeps going.
These exceptions are for programming and deployment errors (e.g. state written by a newer release).
"""

from __future__ import annotations

__all__ = ["QuotaCoreError", "StateVersionError"]


class QuotaCoreError(Exception):
    """Base class of the quota core's exceptions."""


class StateVersionError(QuotaCoreError):
    """Stored state carries a version this release cannot read (written by a newer release)."""
