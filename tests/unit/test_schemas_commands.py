"""Command rules (defaults, cross-field checks) and the built-in tiers against the contract."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from novaquota.schemas import (
    BUILTIN_TEMPLATES,
    BudgetSet,
    QuotaSet,
    ReservationCancelled,
    TemplateDefined,
    TemplateSpec,
    expand_template,
)
from novaquota.schemas.commands import BUILTIN_TEMPLATE_NAMES, RateLimitSet

BASE: dict[str, Any] = {
    "actor": "ops@acme",
    "level": "project",
    "entity_id": "web",
    "tenant_id": "acme",
    "resource_type": "cpu",
    "limit": 16,
}


def reason_of(model: Any, data: dict[str, Any]) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    first = info.value.errors()[0]
    return first["type"], (first.get("ctx") or {}).get("field")


def test_quota_set_defaults() -> None:
    quota = QuotaSet.model_validate(BASE)
    assert (quota.limit_type, quota.status, quota.enforcement_action) == ("hard", "active", "deny")
    assert quota.burst_limit is None and quota.burst_seconds is None
    assert quota.grace_seconds is None and quota.window is None
    assert quota.quota_key == ("acme", "project", "web", "cpu")


def test_burst_seconds_default_only_with_a_burst_limit() -> None:
    assert QuotaSet.model_validate({**BASE, "burst_limit": 24}).burst_seconds == 3600
    assert (
        QuotaSet.model_validate({**BASE, "burst_limit": 24, "burst_seconds": 60}).burst_seconds
        == 60
    )
    assert QuotaSet.model_validate({**BASE, "burst_limit": 16}).burst_limit == 16  # equal is fine
    assert reason_of(QuotaSet, {**BASE, "burst_limit": 15.999}) == ("invalid_field", "burst_limit")
    assert reason_of(QuotaSet, {**BASE, "burst_seconds": 60}) == ("invalid_field", "burst_seconds")


def test_grace_only_for_soft_limits() -> None:
    soft = QuotaSet.model_validate({**BASE, "limit_type": "soft"})
    assert soft.grace_seconds == 86400
    assert (
        QuotaSet.model_validate({**BASE, "limit_type": "soft", "grace_seconds": 0}).grace_seconds
        == 0
    )
    assert reason_of(QuotaSet, {**BASE, "grace_seconds": 10}) == ("invalid_field", "grace_seconds")


@pytest.mark.parametrize("resource_type", ["api_requests", "cost"])
def test_window_required_for_windowed_resources(resource_type: str) -> None:
    data = {**BASE, "resource_type": resource_type, "limit": 1000}
    assert reason_of(QuotaSet, data) == ("missing_field", "window")
    assert QuotaSet.model_validate({**data, "window": "month"}).window == "month"


@pytest.mark.parametrize("resource_type", ["cpu", "memory", "storage", "instances"])
def test_window_forbidden_for_held_resources(resource_type: str) -> None:
    data = {**BASE, "resource_type": resource_type, "window": "hour"}
    assert reason_of(QuotaSet, data) == ("invalid_field", "window")


def test_levels_and_tenant_scope() -> None:
    system = QuotaSet.model_validate({**BASE, "level": "system", "tenant_id": "acme"})
    assert (system.tenant_id, system.entity_id) == ("system", "system")
    assert QuotaSet.model_validate(
        {k: v for k, v in BASE.items() if k != "tenant_id"}
        | {"level": "system", "entity_id": "anything"}
    ).entity_key == ("system", "system", "system")
    tenant = QuotaSet.model_validate(
        {**BASE, "level": "tenant", "entity_id": "acme", "tenant_id": None}
    )
    assert tenant.entity_key == ("acme", "tenant", "acme")
    by_tenant = {k: v for k, v in BASE.items() if k != "entity_id"} | {"level": "tenant"}
    assert QuotaSet.model_validate(by_tenant).entity_key == ("acme", "tenant", "acme")
    assert reason_of(QuotaSet, {**BASE, "level": "tenant", "entity_id": "other"}) == (
        "invalid_field",
        "tenant_id",
    )
    for level in ("project", "user"):
        data = {k: v for k, v in BASE.items() if k != "tenant_id"} | {"level": level}
        assert reason_of(QuotaSet, data) == ("missing_field", "tenant_id")
    assert reason_of(QuotaSet, {**BASE, "level": "org"})[0] == "literal_error"
    assert reason_of(QuotaSet, {**BASE, "tenant_id": "system"}) == ("invalid_field", "tenant_id")


def test_limits_follow_the_resource_precision() -> None:
    assert QuotaSet.model_validate({**BASE, "limit": "0.5"}).limit == Decimal("0.5")
    assert reason_of(QuotaSet, {**BASE, "limit": "0.0005"}) == ("too_precise", "limit")
    assert reason_of(QuotaSet, {**BASE, "resource_type": "volumes", "limit": 1.5}) == (
        "too_precise",
        "limit",
    )
    assert reason_of(QuotaSet, {**BASE, "limit": -1})[0] == "negative_amount"
    assert QuotaSet.model_validate({**BASE, "limit": 0}).limit == 0


def test_budget_thresholds() -> None:
    data = {"actor": "a", "level": "tenant", "entity_id": "acme", "monthly_usd": "250.50"}
    budget = BudgetSet.model_validate(data)
    assert budget.thresholds == (80, 95, 100)
    assert budget.monthly_usd == Decimal("250.5")
    assert BudgetSet.model_validate({**data, "thresholds": [120, 50, 50]}).thresholds == (50, 120)
    assert BudgetSet.model_validate({**data, "thresholds": [1000]}).thresholds == (1000,)
    for bad in ([0], [1000.5], [-5], []):
        with pytest.raises(ValidationError):
            BudgetSet.model_validate({**data, "thresholds": bad})


def test_rate_limit_bounds() -> None:
    data = {"actor": "a", "level": "user", "entity_id": "u", "tenant_id": "t"}
    assert RateLimitSet.model_validate({**data, "rate_per_second": 0.5, "burst": 1}).burst == 1
    for rate, burst in ((0, 5), (1, 0.9), (-1, 5)):
        with pytest.raises(ValidationError):
            RateLimitSet.model_validate({**data, "rate_per_second": rate, "burst": burst})


def test_reservation_cancelled_tenant_is_optional() -> None:
    cancel = ReservationCancelled.model_validate({"actor": "a", "reservation_id": "r"})
    assert cancel.tenant_id is None


def test_template_defined_rules() -> None:
    data = {"actor": "a", "name": "lab", "quotas": [{"resource_type": "gpu", "limit": 2}]}
    template = TemplateDefined.model_validate(data)
    assert template.monthly_cost == 0 and template.description == ""
    assert reason_of(TemplateDefined, {**data, "quotas": []})[0] == "too_short"
    bad_quota = {**data, "quotas": [{"resource_type": "cost", "limit": 2}]}
    assert reason_of(TemplateDefined, bad_quota) == ("missing_field", "window")


# Contract section 4: tier -> (cpu, memory GiB, storage GiB, instances, gpu, lbs, type, USD)
CONTRACT_TIERS: dict[str, tuple[Any, ...]] = {
    "free": ((2, 4), (4, 6), 10, 3, None, None, "hard", "0"),
    "developer": ((8, 12), (16, 24), 100, 10, None, None, "hard", "29.99"),
    "startup": ((32, 48), (64, 96), 500, 25, 2, None, "hard", "99.99"),
    "growth": ((128, 192), (256, 384), 2 * 1024, 100, 8, 10, "hard", "299.99"),
    "enterprise": ((1000, 1500), (1024, 1536), 10 * 1024, 500, None, None, "soft", "999.99"),
}


@pytest.mark.parametrize("name", list(CONTRACT_TIERS))
def test_builtin_tiers_match_the_contract_table(name: str) -> None:
    cpu, memory_gib, storage, instances, gpu, lbs, limit_type, usd = CONTRACT_TIERS[name]
    tier = BUILTIN_TEMPLATES[name]
    expected: dict[str, tuple[int, int | None]] = {
        "cpu": cpu,
        "memory": (memory_gib[0] * 1024, memory_gib[1] * 1024),
        "storage": (storage, None),
        "instances": (instances, None),
    }
    if gpu is not None:
        expected["gpu"] = (gpu, None)
    if lbs is not None:
        expected["load_balancers"] = (lbs, None)
    actual = {q.resource_type: (q.limit, q.burst_limit) for q in tier.quotas}
    assert actual == expected
    assert {q.limit_type for q in tier.quotas} == {limit_type}
    assert tier.monthly_cost == Decimal(usd)
    for quota in tier.quotas:
        assert quota.burst_seconds == (3600 if quota.burst_limit is not None else None)
        assert quota.grace_seconds == (86400 if limit_type == "soft" else None)
        assert quota.window is None and quota.status == "active"


def test_exactly_five_builtin_tiers() -> None:
    assert tuple(BUILTIN_TEMPLATES) == BUILTIN_TEMPLATE_NAMES == tuple(CONTRACT_TIERS)


def test_expand_template() -> None:
    quotas = expand_template("growth", "project", "web", "acme", "ops@acme")
    assert [q.resource_type for q in quotas] == [
        "cpu",
        "memory",
        "storage",
        "instances",
        "gpu",
        "load_balancers",
    ]
    assert all(
        q.quota_key[:3] == ("acme", "project", "web") and q.actor == "ops@acme" for q in quotas
    )
    assert all(isinstance(q, QuotaSet) for q in quotas)
    tenant = expand_template("free", "tenant", "acme", None, "a")
    assert {q.tenant_id for q in tenant} == {"acme"}
    system = expand_template("enterprise", "system", "system", None, "a")
    assert {q.entity_key for q in system} == {("system", "system", "system")}
    custom = TemplateSpec.model_validate(
        {
            "name": "lab",
            "quotas": [{"resource_type": "api_requests", "limit": 10, "window": "minute"}],
        }
    )
    [only] = expand_template(custom, "user", "alice", "acme", "a")
    assert (only.resource_type, only.window, only.entity_id) == ("api_requests", "minute", "alice")
    with pytest.raises(KeyError, match="unknown built-in template"):
        expand_template("platinum", "tenant", "acme", None, "a")
    with pytest.raises(ValidationError):
        expand_template("free", "project", "web", None, "a")  # project needs its tenant
