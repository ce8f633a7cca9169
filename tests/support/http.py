"""One HTTP call for the integration tests, as a client of the API sees it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["call"]


def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any, Any]:
    """(status, JSON body or raw bytes, response headers); ``token`` as bearer if given."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    hdrs = {"content-type": "application/json", **(headers or {})}
    if token is not None:
        hdrs["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, rh = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        status, raw, rh = err.code, err.read(), err.headers
    try:
        return status, json.loads(raw), rh
    except ValueError:
        return status, raw, rh
