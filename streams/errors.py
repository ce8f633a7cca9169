"""The HTTP API's error: a status, a machine-readable code and a message for people.

Every answer that is not a success is ``{"error": {"code", "message"}}`` (contract §6)."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}

    def headers(self) -> dict[str, str] | None:
        """What the status asks of the client: a bearer token (401), a retry (503)."""
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        if self.status == 503:
            return {"Retry-After": "1"}
        return None
