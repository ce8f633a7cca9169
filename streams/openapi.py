"""The OpenAPI 3.1 document of both HTTP servers, generated from ``streams.api_routes``.

Bodies and parameters come from the pydantic models the routes name, so the document cannot
drift from the models; the route-coverage test keeps it from drifting from the routers. Both
ports serve the same document: each operation says which server answers it, with an operation
``servers`` entry (default port, ``port`` variable) and ``x-novaquota-server``.

``/docs`` is rendered here from the document, as plain server-side HTML: the workers run on
machines without internet access, and a page that needs no JavaScript bundle has nothing to
vendor, pin or audit.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

import orjson
from aiohttp import web
from jinja2 import Environment
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from novaquota.schemas.api_views import ErrorBody
from novaquota.streams.api_routes import ROUTES, SERVERS, SWITCHING, Route, Server

__all__ = ["add_document_routes", "docs_html", "openapi_document"]

_REF: Final = "#/components/schemas/{model}"
_PATH_PARAM: Final = re.compile(r"{(\w+)}")
_ERROR_TEXT: Final = {
    400: "invalid request",
    401: "no valid bearer token (WWW-Authenticate: Bearer)",
    403: "the token's role may not do this",
    413: "the body is larger than NOVAQUOTA_MAX_BODY_BYTES",
    404: "not found (or a tenant this token may not see)",
    503: "partitions are moving or the owner did not answer: retry after Retry-After seconds",
}


def _server(name: Server) -> dict[str, Any]:
    port, setting, what = SERVERS[name]
    return {
        "url": "http://{host}:{port}",
        "description": f"{what} ({setting}, default {port})",
        "variables": {"host": {"default": "127.0.0.1"}, "port": {"default": str(port)}},
    }


def _models() -> list[type[BaseModel]]:
    """Every model a route names as a body or a response, once each, in route order."""
    seen: dict[type[BaseModel], None] = {ErrorBody: None}
    for route in ROUTES:
        for m in (route.body, *route.responses.values()):
            if isinstance(m, type):
                seen[m] = None
    return list(seen)


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in _models()], ref_template=_REF)
    return dict(top.get("$defs", {}))


def _ref(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": _REF.format(model=model.__name__)}


def _parameters(route: Route) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(route.path)
    ]
    if route.query is not None:
        schema = route.query.model_json_schema(ref_template=_REF)
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            prop = dict(prop)
            description = prop.pop("description", None)
            prop.pop("title", None)
            param = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if description:
                param["description"] = description
            params.append(param)
    return params


def _content(body: type[BaseModel] | str) -> dict[str, Any]:
    if isinstance(body, str):
        return {body: {"schema": {"type": "string"}}}
    return {"application/json": {"schema": _ref(body)}}


def _operation(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {"description": "OK" if status < 300 else "not ready", "content": _content(m)}
        for status, m in route.responses.items()
        if m != SWITCHING
    }
    if SWITCHING in route.responses.values():
        responses["101"] = {"description": "Switching Protocols: the connection is a WebSocket"}
    errors = set(route.errors)
    if route.action is not None:
        errors.add(401)  # every route with an action needs a bearer token
    if route.body is not None:
        errors.add(413)  # a body above NOVAQUOTA_MAX_BODY_BYTES
    for status in sorted(errors):
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "error"),
            "content": _content(ErrorBody),
        }
    op: dict[str, Any] = {
        "operationId": f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.path)}",
        "summary": route.summary,
        "tags": [route.tag],
        "servers": [_server(s) for s in route.servers],
        "x-novaquota-server": list(route.servers),
        "responses": responses,
    }
    if route.action is None:
        op["security"] = []
    else:
        op["x-novaquota-action"] = route.action
    if route.internal:
        op["x-internal"] = True
    params = _parameters(route)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": _content(route.body)}
    return op


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document (built once per process: it depends on code only)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "NovaCron Quota Stream",
            "version": "0.1.0",
            "description": "Both HTTP servers in one document. Each operation lists the server "
            "that answers it (`servers`, and `x-novaquota-server`: `enforcement` on port 6066, "
            "`projections` on 6067); both serve this document at /api/v1/openapi.json and /docs. "
            'Errors are `{"error": {"code", "message"}}`. Amounts are JSON numbers in the '
            "resource's unit (requests also accept decimal strings).",
        },
        "servers": [_server(name) for name in SERVERS],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


_PAGE = Environment(autoescape=True).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ doc.info.title }} API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}
code,pre{font:13px ui-monospace,monospace}table{border-collapse:collapse;margin:.4rem 0}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}
.m{font-weight:bold}.op{border-top:1px solid #888;padding-top:.5rem;margin-top:1rem}
</style></head><body>
<h1>{{ doc.info.title }} HTTP API</h1>
<p>{{ doc.info.description }} Machine-readable: <a href="/api/v1/openapi.json">openapi.json</a>.
</p>
{% for server in servers %}<h2>{{ server.name }}: {{ server.description }}</h2>
{% for path, method, op in server.ops %}<div class="op" id="{{ op.operationId }}">
<p><span class="m">{{ method | upper }}</span> <code>{{ path }}</code>: {{ op.summary }}
{% if op['x-novaquota-action'] %}(action <code>{{ op['x-novaquota-action'] }}</code>)
{% else %}(no credentials){% endif %}</p>
{% if op.parameters %}<table><tr><th>parameter</th><th>in</th><th>schema</th><th></th></tr>
{% for p in op.parameters %}<tr><td><code>{{ p.name }}</code>{% if p.required %} *{% endif %}
</td><td>{{ p.in }}</td><td><code>{{ p.schema | tojson }}</code></td>
<td>{{ p.description }}</td></tr>{% endfor %}</table>{% endif %}
{% if op.requestBody %}<p>body: {{ ref(op.requestBody) | safe }}</p>{% endif %}
<table><tr><th>status</th><th>body</th></tr>{% for status, r in op.responses.items() %}
<tr><td>{{ status }}</td><td>{{ ref(r) | safe }}</td></tr>{% endfor %}</table></div>
{% endfor %}{% endfor %}
<h2>Schemas</h2>{% for name, s in doc.components.schemas.items() %}
<h3 id="{{ name }}">{{ name }}</h3>{% if s.description %}<p>{{ s.description }}</p>{% endif %}
<pre>{{ s | tojson(indent=2) }}</pre>{% endfor %}
</body></html>
"""
)


def _body_link(part: dict[str, Any]) -> str:
    """The schema of a request or response body, as a link to its definition."""
    from markupsafe import escape

    links = []
    for media, spec in part.get("content", {}).items():
        ref = spec.get("schema", {}).get("$ref", "")
        name = ref.rsplit("/", 1)[-1]
        links.append(f'<a href="#{escape(name)}">{escape(name)}</a>' if name else escape(media))
    return ", ".join(str(x) for x in links) or "(none)"


@functools.cache
def docs_html() -> str:
    """``/docs``: every public operation by server, then every schema."""
    doc = openapi_document()
    servers = []
    for name, (port, setting, what) in SERVERS.items():
        ops = [
            (path, method, op)
            for path, methods in doc["paths"].items()
            for method, op in methods.items()
            if name in op["x-novaquota-server"] and not op.get("x-internal")
        ]
        servers.append({"name": name, "description": f"{what}, port {port} ({setting})",
                        "ops": ops})  # fmt: skip
    return _PAGE.render(doc=doc, servers=servers, ref=_body_link)


async def _document(request: web.Request) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")


async def _docs(request: web.Request) -> web.Response:
    return web.Response(text=docs_html(), content_type="text/html")


@functools.cache
def _document_bytes() -> bytes:
    return orjson.dumps(openapi_document())


def add_document_routes(router: web.UrlDispatcher) -> None:
    """``/api/v1/openapi.json`` and ``/docs`` on an aiohttp router: both servers call this
    (Faust's on its aiohttp application), so the two ports answer byte for byte the same."""
    router.add_get("/api/v1/openapi.json", _document)
    router.add_get("/docs", _docs)
