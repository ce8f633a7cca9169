"""The OpenAPI document: valid OpenAPI 3.1, generated from the models, and complete: every route
of both servers (read from their routers at run time) is documented and every documented
operation is a route."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from novaquota.projections.http import build_app
from novaquota.streams.api_routes import ROUTES, Server
from novaquota.streams.app import create_app
from novaquota.streams.auth import Access, anonymous
from novaquota.streams.openapi import docs_html, openapi_document
from novaquota.streams.settings import Settings
from tests.unit.test_projections_http import worker


def _routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route; HEAD is implied by GET, as HTTP says."""
    return {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }


def _enforcement_app() -> web.Application:
    qa = create_app(Settings(topic_prefix="unit.openapi.", auth_anonymous="admin"))
    qa.app.web.init_server()  # what the worker does at start: applies Faust's blueprints
    return qa.app.web.web_app  # type: ignore[no-any-return]


def _documented(server: Server) -> set[tuple[str, str]]:
    doc = openapi_document()
    return {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if server in op["x-novaquota-server"]
    }


def test_document_is_valid_openapi_31() -> None:
    doc = openapi_document()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"
    check = doc["paths"]["/api/v1/quotas/check"]
    assert set(check) == {"get", "post"}
    assert {"tenant_id", "resources"} <= set(
        doc["components"]["schemas"]["CheckRequest"]["required"]
    )
    assert "503" in check["post"]["responses"]


def test_every_enforcement_route_is_documented_and_back() -> None:
    assert _routes(_enforcement_app()) == _documented("enforcement")


def test_every_projection_route_is_documented_and_back() -> None:
    assert _routes(build_app(worker(), Access(anonymous))) == _documented("projections")


def test_every_json_answer_is_a_typed_model() -> None:
    """No response body is a bare ``object``: each is a $ref to a component with properties."""
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                for media, spec in answer.get("content", {}).items():  # 101: no body
                    if media != "application/json":
                        continue
                    name = spec["schema"]["$ref"].rsplit("/", 1)[-1]
                    assert schemas[name].get("properties"), (method, path, status, name)


def test_operations_name_their_server_and_action() -> None:
    doc = openapi_document()
    history = doc["paths"]["/api/v1/quotas/usage/{entity_id}/history"]["get"]
    assert history["x-novaquota-server"] == ["projections"]
    assert history["servers"][0]["variables"]["port"]["default"] == "6067"
    assert history["x-novaquota-action"] == "read"
    assert {p["name"] for p in history["parameters"]} >= {"entity_id", "start", "end", "step"}
    health = doc["paths"]["/healthz"]["get"]
    assert health["security"] == [] and health["x-novaquota-server"] == [
        "enforcement",
        "projections",
    ]
    assert len(ROUTES) == sum(len(ops) for ops in doc["paths"].values())


def test_docs_page_lists_public_operations_without_scripts() -> None:
    page = docs_html()
    assert "<script" not in page
    assert "/api/v1/quotas/usage/{entity_id}/history" in page
    assert "CheckRequest" in page
    assert "/internal/usage" not in page


async def _ask(requests: list[tuple[str, str]]) -> list[list[tuple[int, str, bytes]]]:
    """The same requests to an enforcement app (Faust's) and a projection app, in process."""
    out = []
    for app in (_enforcement_app(), build_app(worker(), Access(anonymous))):
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            answers = []
            for method, path in requests:
                resp = await client.request(method, path)
                answers.append((resp.status, resp.content_type, await resp.read()))
            out.append(answers)
        finally:
            await client.close()
    return out


def test_both_ports_serve_the_same_document_and_docs() -> None:
    enforcement, projections = asyncio.run(
        _ask([("GET", "/api/v1/openapi.json"), ("GET", "/docs")])
    )
    assert enforcement == projections
    (status, ctype, body), (docs_status, docs_ctype, _) = enforcement
    assert (status, ctype, docs_status, docs_ctype) == (200, "application/json", 200, "text/html")
    assert orjson.loads(body) == openapi_document()


def test_router_errors_have_the_error_shape_on_both_ports() -> None:
    """aiohttp's own 404 and 405 (no view of ours runs) answer like every other error."""
    for answers in asyncio.run(
        _ask([("GET", "/no/such/path"), ("PATCH", "/healthz"), ("POST", "/metrics")])
    ):
        codes = []
        for status, ctype, body in answers:
            assert ctype == "application/json"
            err = orjson.loads(body)["error"]
            assert set(err) == {"code", "message"} and err["message"]
            codes.append((status, err["code"]))
        assert codes == [
            (404, "not_found"),
            (405, "method_not_allowed"),
            (405, "method_not_allowed"),
        ]
