"""The one exception of the analytics package.

Bad input to a pure function (a series that is not hourly, a negative horizon, an unknown resource
type) must fail loudly with a message that names the problem, never produce a silent wrong answer.
It subclasses ``ValueError`` so that callers that only know the standard library can catch it.
"""

from __future__ import annotations

__all__ = ["AnalyticsInputError"]


class AnalyticsInputError(ValueError):
    """An argument that the analytics functions cannot work with; the message says why."""
