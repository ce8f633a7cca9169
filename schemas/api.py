"""HTTP API bodies of the admission check (contract section 6), shared by server and client.

Requests are validated with the same amount rules as events (``schemas.amounts``); responses
carry amounts as JSON numbers in contract units and are parsed into exact decimals.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from novaquota.schemas.amounts import Resources

__all__ = [
    "MAX_BATCH",
    "MAX_TTL_SECONDS",
    "BatchCheckRequest",
    "CheckRequest",
    "CheckResponse",
    "GrantView",
    "LevelCheckView",
]

MAX_BATCH = 100
MAX_TTL_SECONDS = 24 * 3600
DEFAULT_TTL_SECONDS = 300
_ID = Field(min_length=1, max_length=200)


class CheckRequest(BaseModel):
    """``POST /api/v1/quotas/check``: may this scope take these resources now?"""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str = _ID
    project_id: str | None = Field(default=None, min_length=1, max_length=200)
    user_id: str | None = Field(default=None, min_length=1, max_length=200)
    resources: Resources
    reserve: bool = False
    ttl_seconds: int = Field(default=DEFAULT_TTL_SECONDS, ge=1, le=MAX_TTL_SECONDS)
    resource_id: str | None = Field(default=None, min_length=1, max_length=200)
    """With ``reserve``: the instance whose allocation event converts the grant into usage."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("resources")
    @classmethod
    def _not_empty(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        if not v:
            raise ValueError("at least one resource is required")
        return v

    @field_validator("tenant_id")
    @classmethod
    def _not_system(cls, v: str) -> str:
        if v == "system":
            raise ValueError("'system' is reserved: check a tenant, system quotas apply to all")
        return v


class BatchCheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    checks: list[CheckRequest] = Field(min_length=1, max_length=MAX_BATCH)


class LevelCheckView(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    level: Literal["system", "tenant", "project", "user"]
    entity_id: str
    resource_type: str
    limit: Decimal
    burst_limit: Decimal | None = None
    used: Decimal
    reserved: Decimal
    requested: Decimal
    available: Decimal
    using_burst: bool = False
    allowed: bool = True
    kind: Literal["quota", "rate_limit"] = "quota"


class CheckResponse(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    allowed: bool
    reason: str
    checks: list[LevelCheckView] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    reservation_id: str | None = None
    expires_at: str | None = None
    repeated: bool = False
    """A repeated ``idempotency_key``: the answer first given (the same grant)."""
    degraded: bool = False
    """Made by the client, not the service: the service was unavailable (circuit breaker)."""
    as_of: dict[str, Any] = Field(default_factory=dict)


class GrantView(BaseModel):
    """An admission grant (``reserve: true``) as listed and released."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reservation_id: str
    tenant_id: str
    project_id: str | None = None
    user_id: str | None = None
    resources: dict[str, Decimal]
    expires_at: str
    resource_id: str | None = None
    idempotency_key: str | None = None
    granted_at: str
