"""One error shape on both ports, also for answers no view of ours wrote.

aiohttp's router answers an unknown path (404) or method (405) with a text body, Faust's views
with ``{"error": "..."}``, and an exception escaping a handler becomes a text 500. The
middleware here rewrites each of them to ``{"error": {"code", "message"}}`` (contract section 6):
the enforcement workers install it on Faust's aiohttp application
(``web_application_options``), the projection workers on theirs.
"""

from __future__ import annotations

import logging
from typing import Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from novaquota.streams.errors import ApiError

__all__ = ["api_error_response", "error_middleware", "error_response"]

log = logging.getLogger("novaquota.http")

_CODES: Final[dict[int, str]] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "unavailable",
}


def error_response(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code or _CODES.get(status, "error"), "message": message}}
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def api_error_response(exc: ApiError) -> web.Response:
    return error_response(exc.status, exc.message, exc.code, exc.headers())


def _foreign(response: web.Response) -> bool:
    """Whether an error answer was written by aiohttp or Faust rather than by one of our views:
    a body that is not JSON, or Faust's ``{"error": "<text>"}``. Our views' JSON bodies stay as
    they are (``/readyz`` answers 503 with its own report)."""
    if response.content_type != "application/json":
        return True
    try:
        body = orjson.loads(response.body or b"")  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):
        return True
    return isinstance(body, dict) and isinstance(body.get("error"), str)


def _reshaped(response: web.Response) -> web.Response:
    message = response.reason or "error"
    if response.content_type == "application/json":
        try:
            body = orjson.loads(response.body or b"")  # type: ignore[arg-type]
            message = body["error"]  # Faust's View.error()
        except (orjson.JSONDecodeError, TypeError, KeyError):
            pass
    keep = {k: v for k, v in response.headers.items() if k in ("Allow", "Retry-After")}
    return error_response(response.status, message, headers=keep)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(exc.status, exc.reason, headers=keep)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error (a bug): see the worker's log")
    if response.status >= 400 and isinstance(response, web.Response) and _foreign(response):
        return _reshaped(response)
    return response
