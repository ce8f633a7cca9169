"""CORS on the projection worker's application (the enforcement workers install the same
middleware on Faust's), and the live WebSocket's token offered as a subprotocol."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from novaquota.projections.http import build_app
from novaquota.streams.auth import BearerAuth, bearer_token
from novaquota.streams.cors import parse_origins
from novaquota.streams.errors import ApiError
from novaquota.streams.settings import Settings
from novaquota.streams.tokens import TokenStore, create_token
from tests.unit.test_projections_http import worker

DASH = "https://dash.example.com"


async def _ask(
    origins: str, requests: list[tuple[str, str, dict[str, str]]]
) -> list[tuple[int, dict[str, str]]]:
    from novaquota.streams.auth import Access

    w = worker()
    w.settings = Settings(topic_prefix="unit.", cors_origins=origins)
    client = TestClient(TestServer(build_app(w, Access(BearerAuth(None)))))
    await client.start_server()
    try:
        out = []
        for method, path, headers in requests:
            resp = await client.request(method, path, headers=headers)
            await resp.read()
            out.append((resp.status, dict(resp.headers)))
        return out
    finally:
        await client.close()


def ask(origins: str, *requests: tuple[str, str, dict[str, str]]) -> list[tuple[int, Any]]:
    return asyncio.run(_ask(origins, list(requests)))


PREFLIGHT = {
    "Origin": DASH,
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization",
}


def test_a_preflight_from_an_allowed_origin_is_answered_before_authentication() -> None:
    [(status, h)] = ask(DASH, ("OPTIONS", "/api/v1/tenants", PREFLIGHT))
    assert status == 204
    assert h["Access-Control-Allow-Origin"] == DASH
    assert "GET" in h["Access-Control-Allow-Methods"]
    assert "Authorization" in h["Access-Control-Allow-Headers"]
    assert "Content-Type" in h["Access-Control-Allow-Headers"]
    assert int(h["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in h
    assert "Origin" in h["Vary"]


def test_other_origins_and_no_setting_get_no_cors_headers() -> None:
    other = {**PREFLIGHT, "Origin": "https://evil.example.com"}
    (_s1, h1), (s2, h2) = ask(
        DASH, ("OPTIONS", "/api/v1/pricing", other), ("GET", "/api/v1/pricing", other)
    )
    assert "Access-Control-Allow-Origin" not in h1 and "Access-Control-Allow-Origin" not in h2
    assert s2 == 401  # still authenticated
    (s3, h3), (_s4, h4) = ask(
        "", ("OPTIONS", "/api/v1/pricing", PREFLIGHT), ("GET", "/healthz", {"Origin": DASH})
    )
    assert s3 == 401  # no CORS: a preflight is an unauthenticated OPTIONS like any other
    assert not any(k.startswith("Access-Control") for k in (*h3, *h4))


def test_real_answers_to_an_allowed_origin_carry_the_origin_and_vary() -> None:
    (s1, h1), (s2, h2) = ask(
        DASH, ("GET", "/healthz", {"Origin": DASH}), ("GET", "/api/v1/pricing", {"Origin": DASH})
    )
    assert s1 == 200 and h1["Access-Control-Allow-Origin"] == DASH and h1["Vary"] == "Origin"
    # the 401 is readable by the page too (it must know to ask for a token)
    assert s2 == 401 and h2["Access-Control-Allow-Origin"] == DASH
    assert "WWW-Authenticate" in h2["Access-Control-Expose-Headers"]


def test_the_setting_lists_origins_never_a_wildcard() -> None:
    assert parse_origins(f" {DASH}, http://localhost:5173 ,") == {DASH, "http://localhost:5173"}
    assert Settings(cors_origins=DASH).cors_origin_set == {DASH}
    for bad in ("*", "https://*.example.com", "dash.example.com", f"{DASH}/", "ftp://x"):
        with pytest.raises(ValueError):
            parse_origins(bad)
        with pytest.raises(ValueError):
            Settings(cors_origins=bad)


class Req:
    def __init__(self, path: str, headers: dict[str, str]) -> None:
        self.path = path
        self.headers = headers


LIVE = "/api/v1/quotas/live"


def test_the_live_path_takes_a_token_offered_as_a_subprotocol(tmp_path: Any) -> None:
    token = create_token(tmp_path / "t.json", "dash", "viewer", "acme")
    offer = {"Sec-WebSocket-Protocol": f"novaquota, bearer.{token}"}
    assert bearer_token(Req(LIVE, offer)) == token
    principal = BearerAuth(TokenStore(tmp_path / "t.json"))(Req(LIVE, offer))
    assert (principal.role, principal.tenant) == ("viewer", "acme")
    # only the live path, only with novaquota offered, only without Authorization
    assert bearer_token(Req("/api/v1/quotas", offer)) is None
    assert bearer_token(Req(LIVE, {"Sec-WebSocket-Protocol": f"bearer.{token}"})) is None
    both = {**offer, "Authorization": "Bearer nq_other"}
    assert bearer_token(Req(LIVE, both)) == "nq_other"
    two = {"Sec-WebSocket-Protocol": "novaquota, bearer.a, bearer.b"}
    assert bearer_token(Req(LIVE, two)) is None
    with pytest.raises(ApiError) as err:
        BearerAuth(TokenStore(tmp_path / "t.json"))(Req(LIVE, {}))
    assert err.value.status == 401
