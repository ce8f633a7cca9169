"""The OpenAPI 3.1 document of the HTTP API (``GET /api/v1/openapi.json``, contract section 6).

Request and response bodies of the admission check come from the same pydantic models the
server validates with and the client parses into (``schemas.api``), so the document cannot drift
from what the code accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from schemas.api import (
    BatchCheckRequest,
    BatchCheckResponse,
    CheckRequest,
    CheckResponse,
    GrantView,
)

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _q(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_ENTITY = [
    _q("entity_id", "the entity (for level=tenant: the tenant id)", required=True),
    _q(
        "level",
        "tenant (default), project, user or system",
        enum=["tenant", "project", "user", "system"],
    ),
    _q("tenant_id", "the tenant of a project or user"),
]


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _answers(ok: str | dict[str, Any], *, status: str = "200") -> dict[str, Any]:
    ok_body = (
        _json(ok) if isinstance(ok, str) else {"content": {"application/json": {"schema": ok}}}
    )
    return {
        status: {"description": "OK", **ok_body},
        "400": {"description": "invalid request", **_json("Error")},
        "404": {"description": "no such tenant for this token", **_json("Error")},
        "503": {
            "description": "partitions are moving (rebalance) or the owner did not answer: retry "
            "after Retry-After seconds",
            **_json("Error"),
        },
    }


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    _, defs = models_json_schema(
        [
            (CheckRequest, "validation"),
            (BatchCheckRequest, "validation"),
            (CheckResponse, "serialization"),
            (BatchCheckResponse, "serialization"),
            (GrantView, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = _ERROR
    obj = {"type": "object"}
    paths: dict[str, Any] = {
        "/api/v1/quotas/check": {
            "post": {
                "summary": "May this scope take these resources now? Optionally hold them.",
                "requestBody": {"required": True, **_json("CheckRequest")},
                "responses": _answers("CheckResponse"),
            },
            "get": {
                "summary": "The simple form: one tenant-level check of one resource",
                "parameters": [
                    _q("entity_id", "the tenant", required=True),
                    _q("resource_type", "e.g. cpu", required=True),
                    _q("amount", "in the resource's unit", required=True),
                ],
                "responses": _answers("CheckResponse"),
            },
        },
        "/api/v1/quotas/check:batch": {
            "post": {
                "summary": "Up to 100 checks in one request, answered in order",
                "requestBody": {"required": True, **_json("BatchCheckRequest")},
                "responses": _answers("BatchCheckResponse"),
            }
        },
        "/api/v1/quotas/reservations": {
            "get": {
                "summary": "Scheduled reservations and live admission grants of a tenant",
                "parameters": [_q("tenant_id", "the tenant", required=True)],
                "responses": _answers(obj),
            },
            "post": {
                "summary": "Create a scheduled reservation (publishes reservation.created)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": obj}}},
                "responses": _answers(obj, status="202"),
            },
        },
        "/api/v1/quotas/reservations/{reservation_id}": {
            "delete": {
                "summary": "Release a grant (200) or cancel a scheduled reservation (202)",
                "parameters": [
                    {
                        "name": "reservation_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    _q("tenant_id", "the tenant", required=True),
                ],
                "responses": _answers(obj),
            }
        },
        "/api/v1/quotas": {
            "get": {
                "summary": "Quotas with usage (a tenant's, all levels, or one entity's)",
                "parameters": [
                    *_ENTITY,
                    _q("resource_type", "filter"),
                    _q("status", "filter: active or suspended"),
                    _q("page_size", "1-1000, default 100", type="integer"),
                    _q("page_token", "next_page_token of the previous page"),
                ],
                "responses": _answers(obj),
            }
        },
        "/api/v1/quotas/utilization": {
            "get": {
                "summary": "Per resource: limit, used, reserved, available, utilization %",
                "parameters": _ENTITY,
                "responses": _answers(obj),
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition"}},
            }
        },
        "/healthz": {
            "get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: partitions assigned, tables recovered, broker reachable",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "NovaCron Quota Stream",
            "version": "0.1.0",
            "description": "Admission checks, reservations and quota state of the enforcement "
            "workers. Every worker answers for every tenant. Amounts are JSON numbers in the "
            "resource's unit (requests also accept decimal strings).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
