"""``data`` of the quota commands (contract section 4), one frozen model per type.

Commands are validated as strictly as the contract allows (a bad quota must be rejected with a
clear reason before it reaches the stream's state), yet read tolerantly: unknown fields are
ignored. Defaults the contract states (burst window, grace period, budget thresholds, the
``system`` tenant of system-level commands) are filled in here, so every consumer sees them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar, Final, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from novaquota.schemas.amounts import Amount, AtLeastOne, Percent, PositiveAmount, resource_amount
from novaquota.schemas.common import (
    SYSTEM_TENANT,
    WINDOWED_RESOURCES,
    EnforcementAction,
    Id,
    Level,
    LimitType,
    ResourceType,
    Status,
    TenantId,
    Timestamp,
    Window,
    fail,
)
from novaquota.schemas.limits import DEFAULT_LIMITS, DecodeLimits

__all__ = [
    "BUILTIN_TEMPLATE_NAMES",
    "COMMAND_MODELS",
    "DEFAULT_BUDGET_THRESHOLDS",
    "DEFAULT_BURST_SECONDS",
    "DEFAULT_GRACE_SECONDS",
    "BudgetSet",
    "Command",
    "QuotaDeleted",
    "QuotaSet",
    "QuotaSpec",
    "RateLimitSet",
    "ReservationCancelled",
    "ReservationCreated",
    "ScopedCommand",
    "TemplateApplied",
    "TemplateDefined",
    "TemplateSpec",
    "TenantDeleted",
]

DEFAULT_BURST_SECONDS: Final = 3600
DEFAULT_GRACE_SECONDS: Final = 86400
DEFAULT_BUDGET_THRESHOLDS: Final = (Decimal(80), Decimal(95), Decimal(100))
BUILTIN_TEMPLATE_NAMES: Final = ("free", "developer", "startup", "growth", "enterprise")


def _limits(info: ValidationInfo) -> DecodeLimits:
    return info.context if isinstance(info.context, DecodeLimits) else DEFAULT_LIMITS


class Command(BaseModel):
    """Base of every command's data: who asked (recorded on the audit topic)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    TYPE: ClassVar[str] = ""

    actor: Id


class ScopedCommand(Command):
    """A command about one entity (tenant_id, level, entity_id).

    ``level: system`` forces tenant and entity to ``system``; at ``level: tenant`` either of
    ``tenant_id`` and ``entity_id`` defaults to the other (they name the same tenant, and must
    agree when both are given); project and user levels need ``tenant_id``.
    """

    level: Level
    entity_id: Id
    tenant_id: Id

    @model_validator(mode="before")
    @classmethod
    def _fill_scope(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        level = data.get("level")
        tenant = data.get("tenant_id")
        entity = data.get("entity_id")
        if level == "system":
            return {**data, "tenant_id": SYSTEM_TENANT, "entity_id": SYSTEM_TENANT}
        if level == "tenant":
            if tenant is None and entity is not None:
                return {**data, "tenant_id": entity}
            if entity is None and tenant is not None:
                return {**data, "entity_id": tenant}
            if tenant is not None and entity is not None and tenant != entity:
                fail(
                    "invalid_field",
                    "must equal entity_id for level tenant, got {tenant} and {entity}",
                    field="tenant_id",
                    tenant=repr(tenant),
                    entity=repr(entity),
                )
        elif level in ("project", "user") and tenant is None:
            fail("missing_field", "required when level is {level}", field="tenant_id", level=level)
        return data

    @model_validator(mode="after")
    def _system_is_reserved(self) -> Self:
        if self.level != "system" and self.tenant_id == SYSTEM_TENANT:
            fail("invalid_field", "'system' is a reserved tenant id", field="tenant_id")
        return self

    @property
    def entity_key(self) -> tuple[str, str, str]:
        """(tenant_id, level, entity_id): how the stream identifies the entity."""
        return (self.tenant_id, self.level, self.entity_id)


class QuotaSpec(BaseModel):
    """The fields of a quota besides its entity (also one entry of a template)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    resource_type: ResourceType
    limit: Amount
    limit_type: LimitType = "hard"
    burst_limit: Amount | None = None
    burst_seconds: NonNegativeInt | None = None  # 0: the burst clock expires at once
    grace_seconds: NonNegativeInt | None = None
    window: Window | None = None
    status: Status = "active"
    enforcement_action: EnforcementAction = "deny"

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        filled: dict[str, Any] | None = None
        if data.get("burst_limit") is not None and data.get("burst_seconds") is None:
            filled = {**data, "burst_seconds": DEFAULT_BURST_SECONDS}
        if data.get("limit_type") == "soft" and data.get("grace_seconds") is None:
            filled = {**(filled or data), "grace_seconds": DEFAULT_GRACE_SECONDS}
        return data if filled is None else filled

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> Self:
        limits = _limits(info)
        rt = self.resource_type
        resource_amount(rt, self.limit, limits, field="limit")
        if self.burst_limit is not None:
            resource_amount(rt, self.burst_limit, limits, field="burst_limit")
            if self.burst_limit < self.limit:
                fail(
                    "invalid_field",
                    "must be >= limit ({limit}), got {burst}",
                    field="burst_limit",
                    limit=str(self.limit),
                    burst=str(self.burst_limit),
                )
        elif self.burst_seconds is not None:
            fail("invalid_field", "only allowed with a burst_limit", field="burst_seconds")
        if self.limit_type == "hard" and self.grace_seconds is not None:
            fail("invalid_field", "only allowed for soft limits", field="grace_seconds")
        if rt in WINDOWED_RESOURCES:
            if self.window is None:
                fail("missing_field", "required for resource type {rt}", field="window", rt=rt)
        elif self.window is not None:
            fail(
                "invalid_field",
                "only allowed for api_requests and cost, not {rt}",
                field="window",
                rt=rt,
            )
        return self


class QuotaSet(QuotaSpec, ScopedCommand):
    """Create or replace the quota of (tenant_id, level, entity_id, resource_type)."""

    TYPE: ClassVar[str] = "quota.set"

    @property
    def quota_key(self) -> tuple[str, str, str, str]:
        return (self.tenant_id, self.level, self.entity_id, self.resource_type)


class QuotaDeleted(ScopedCommand):
    TYPE: ClassVar[str] = "quota.deleted"
    resource_type: ResourceType

    @property
    def quota_key(self) -> tuple[str, str, str, str]:
        return (self.tenant_id, self.level, self.entity_id, self.resource_type)


class TemplateSpec(BaseModel):
    """A named set of quotas; the built-in tiers are instances of it (``schemas.templates``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: Id
    description: str = ""
    quotas: tuple[QuotaSpec, ...] = Field(min_length=1)
    monthly_cost: Amount = Decimal(0)

    @field_validator("quotas")
    @classmethod
    def _one_quota_per_resource(cls, quotas: tuple[QuotaSpec, ...]) -> tuple[QuotaSpec, ...]:
        seen: set[str] = set()
        for quota in quotas:
            if quota.resource_type in seen:
                fail(
                    "invalid_field",
                    "resource type {rt} appears more than once",
                    rt=quota.resource_type,
                )
            seen.add(quota.resource_type)
        return quotas


class TemplateDefined(TemplateSpec, Command):
    """A custom template; the built-in tier names cannot be redefined."""

    TYPE: ClassVar[str] = "template.defined"

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, name: str) -> str:
        if name in BUILTIN_TEMPLATE_NAMES:
            fail("invalid_field", "{name} is a built-in tier and cannot be redefined", name=name)
        return name


class TemplateApplied(ScopedCommand):
    """Expands into one ``quota.set`` per entry of the template (``expand_template``)."""

    TYPE: ClassVar[str] = "template.applied"
    template: Id


class ReservationCreated(ScopedCommand):
    """Capacity held for the entity during [start, end)."""

    TYPE: ClassVar[str] = "reservation.created"
    reservation_id: Id
    resource_type: ResourceType
    amount: Amount
    start: Timestamp
    end: Timestamp
    purpose: str = ""

    @model_validator(mode="after")
    def _check_window(self, info: ValidationInfo) -> Self:
        resource_amount(self.resource_type, self.amount, _limits(info), field="amount")
        if self.start >= self.end:
            fail(
                "invalid_field",
                "must be after start ({start}), got {end}",
                field="end",
                start=self.start.isoformat(),
                end=self.end.isoformat(),
            )
        return self


class ReservationCancelled(Command):
    """Releases a reservation. ``tenant_id`` (optional) lets the stream route it; without it the
    stream falls back to the message key."""

    TYPE: ClassVar[str] = "reservation.cancelled"
    reservation_id: Id
    tenant_id: Id | None = None


class BudgetSet(ScopedCommand):
    """A monthly cost budget; alerts at each threshold (percent of ``monthly_usd``)."""

    TYPE: ClassVar[str] = "budget.set"
    monthly_usd: Amount
    thresholds: tuple[Percent, ...] = Field(default=DEFAULT_BUDGET_THRESHOLDS, min_length=1)

    @field_validator("thresholds")
    @classmethod
    def _sorted_unique(cls, thresholds: tuple[Decimal, ...]) -> tuple[Decimal, ...]:
        return tuple(sorted(set(thresholds)))


class RateLimitSet(ScopedCommand):
    """A token bucket (``rate_per_second`` refill, ``burst`` capacity) for API admission."""

    TYPE: ClassVar[str] = "rate_limit.set"
    rate_per_second: PositiveAmount
    burst: AtLeastOne


class TenantDeleted(Command):
    """Offboarding: release everything, close open episodes, purge state after the audit."""

    TYPE: ClassVar[str] = "tenant.deleted"
    tenant_id: TenantId


COMMAND_MODELS: Final[dict[str, type[Command]]] = {
    model.TYPE: model
    for model in (
        QuotaSet,
        QuotaDeleted,
        TemplateDefined,
        TemplateApplied,
        ReservationCreated,
        ReservationCancelled,
        BudgetSet,
        RateLimitSet,
        TenantDeleted,
    )
}
