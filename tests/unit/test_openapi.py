"""The OpenAPI document is valid OpenAPI 3.1 and describes the check API from the same models."""

from __future__ import annotations

from openapi_spec_validator import validate

from streams.openapi import openapi_document


def test_document_is_valid_openapi() -> None:
    doc = openapi_document("http://localhost:6066")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    check = doc["paths"]["/api/v1/quotas/check"]
    assert set(check) == {"get", "post"}
    body = doc["components"]["schemas"]["CheckRequest"]
    assert {"tenant_id", "resources"} <= set(body["required"])
    assert "reservation_id" in doc["components"]["schemas"]["CheckResponse"]["properties"]
    assert "503" in check["post"]["responses"]
