"""Errors of the projection workers."""

from __future__ import annotations

__all__ = ["PricingError", "ProjectionError", "QueryError"]


class ProjectionError(Exception):
    """Base of the projection workers' errors."""


class PricingError(ProjectionError, ValueError):
    """The pricing catalogue is invalid."""


class QueryError(ProjectionError, ValueError):
    """A view query with bad parameters (the HTTP layer answers 400 with ``code``)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
