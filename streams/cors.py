"""CORS for browsers (the dashboard) on both servers: one aiohttp middleware.

``NOVAQUOTA_CORS_ORIGINS`` lists the allowed origins exactly (``https://dash.example.com``);
empty (the default), no CORS header is ever sent and browsers keep their same-origin rule.

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an
  allowed origin is answered 204 here, before authentication: browsers send preflights without
  credentials. One from any other origin gets the same 204 without CORS headers, so the browser
  refuses the real request (and no route or tenant is revealed either way).
- A real answer to an allowed origin, whatever its status (a 401 or 404 the page must read
  too), carries ``Access-Control-Allow-Origin: <that origin>`` and ``Vary: Origin``.

Never ``*`` and never ``Access-Control-Allow-Credentials``: the API takes a bearer token in
``Authorization``, not cookies, so browsers need no credentials mode.

A middleware rather than aiohttp-cors: aiohttp-cors adds an OPTIONS route per resource, which
the authentication middleware would answer 401 unless it learnt about preflights, and Faust's
aiohttp driver keeps its own aiohttp-cors instance for the routes Faust registers; one
middleware covers every route of both applications, routes added later, and the router's own
404/405 answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

__all__ = ["ALLOW_HEADERS", "ALLOW_METHODS", "MAX_AGE", "cors_middleware", "parse_origins"]

ALLOW_METHODS: Final = "GET, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS: Final = "Authorization, Content-Type"
EXPOSE_HEADERS: Final = "Location, Retry-After, WWW-Authenticate"
MAX_AGE: Final = "600"


def parse_origins(value: str) -> frozenset[str]:
    """The comma-separated origins of the setting; ``ValueError`` on anything that is not a
    ``scheme://host[:port]`` origin (``*`` included: origins are listed, not wildcarded)."""
    origins = set()
    for raw in value.split(","):
        origin = raw.strip()
        if not origin:
            continue
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or "*" in origin
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username is not None
        ):
            raise ValueError(
                f"not an origin (scheme://host[:port], no path, no wildcard): {origin!r}"
            )
        origins.add(origin.lower())
    return frozenset(origins)


def _vary(response: web.StreamResponse) -> None:
    have = response.headers.get("Vary", "")
    if "origin" not in have.lower():
        response.headers["Vary"] = f"{have}, Origin" if have else "Origin"


def cors_middleware(origins: Iterable[str]) -> Any:
    """The middleware of both servers; first in the chain, so error answers are covered."""
    allowed = frozenset(o.lower() for o in origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not allowed or origin is None:
            return await handler(request)
        ok = origin.lower() in allowed
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            preflight = web.Response(status=204)
            if ok:
                preflight.headers["Access-Control-Allow-Origin"] = origin
                preflight.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
                preflight.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
                preflight.headers["Access-Control-Max-Age"] = MAX_AGE
            _vary(preflight)
            return preflight
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised answers (redirects, router errors) too
            if ok:
                exc.headers["Access-Control-Allow-Origin"] = origin
                exc.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            _vary(exc)
            raise
        if not response.prepared:  # a WebSocket's 101 is already sent: nothing to add
            if ok:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            _vary(response)
        return response

    return cors
