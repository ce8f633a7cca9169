"""The pure parts of quota management over HTTP: ``?wait=``, status locations, the tenant-admin
rule and the rejection rows the worker stages for dead-lettered commands."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from novaquota.schemas.codec import decode, encode
from novaquota.schemas.commands import Command, QuotaDeleted, QuotaSet, TemplateApplied
from novaquota.streams.auth import Principal, authorize_limit_change
from novaquota.streams.enforce import Identities
from novaquota.streams.errors import ApiError
from novaquota.streams.manage import Manager, Target, parse_wait
from novaquota.streams.store.memory import MemoryBase
from novaquota.streams.store.records import (
    IDENTITY,
    REJECTION,
    identity_key,
    rejection_key,
    rejection_of,
    rejection_value,
    tenant_of,
)
from novaquota.streams.store.tenant_store import TenantStore
from tests.support.world import StoreWorld

TENANT_ADMIN = Principal("token:ops", "tenant-admin", "acme")
ADMIN = Principal("token:root", "admin")


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(None, 0.0), ("", 0.0), ("5s", 5.0), ("5", 5.0), ("250ms", 0.25), ("30s", 30.0), ("0", 0.0)],
)
def test_wait_accepts_seconds_and_milliseconds(raw: str | None, seconds: float) -> None:
    assert parse_wait(raw) == seconds


@pytest.mark.parametrize("raw", ["31s", "5m", "-1s", "soon", "1e3", "30001ms"])
def test_wait_refuses_bad_or_too_long_values(raw: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_wait(raw)
    assert (err.value.status, err.value.code) == (400, "invalid_wait")


def test_location_carries_what_the_owner_needs() -> None:
    target = Target(tenant_id="acme", level="project", entity_id="web", resource_type="cpu")
    assert target.location("c-1") == (
        "/api/v1/commands/c-1?tenant_id=acme&level=project&entity_id=web&resource_type=cpu"
    )
    assert Target(template="gold").location("c-2") == "/api/v1/commands/c-2?template=gold"
    assert Target.from_query({"tenant_id": "acme", "level": "project", "entity_id": "web"}) == (
        Target(tenant_id="acme", level="project", entity_id="web")
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, (5, 5)),  # a quota where none was in force limits more
        ((10, 12), (8, 12)),  # lower limit
        ((10, 12), (10, 10)),  # lower burst
        ((10, 12), (10, 12)),  # the same
    ],
)
def test_tenant_admin_may_lower_its_tenant_quota(
    before: tuple[int, int] | None, after: tuple[int, int] | None
) -> None:
    authorize_limit_change(TENANT_ADMIN, "tenant", before, after)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ((10, 12), (11, 12)),  # raise the limit
        ((10, 12), (10, 13)),  # raise the burst
        ((10, 10), None),  # delete or suspend
    ],
)
def test_tenant_admin_cannot_raise_its_tenant_quota(
    before: tuple[int, int] | None, after: tuple[int, int] | None
) -> None:
    with pytest.raises(ApiError) as err:
        authorize_limit_change(TENANT_ADMIN, "tenant", before, after)
    assert (err.value.status, err.value.code) == (403, "forbidden")


def test_the_rule_binds_tenant_admins_at_tenant_level_only() -> None:
    authorize_limit_change(TENANT_ADMIN, "project", (10, 10), (100, 100))
    authorize_limit_change(TENANT_ADMIN, "user", (10, 10), None)
    authorize_limit_change(ADMIN, "tenant", (10, 10), (100, 100))


def test_rejection_rows_hold_reason_and_message_and_sweep_like_identities() -> None:
    key = rejection_key("acme", "novaquota/api", "c-1")
    assert key.startswith(REJECTION) and tenant_of(key) == "acme"
    value = rejection_value("invalid_field", "unknown template 'x|y'", 1_000)
    assert rejection_of(value) == ("invalid_field", "unknown template 'x|y'")

    base = MemoryBase()
    store = TenantStore(base, lambda tenant: 0)
    old, fresh = rejection_key("acme", "s", "old"), rejection_key("acme", "s", "new")
    store.put(old, rejection_value("r", "m", 1_000))
    store.put(fresh, rejection_value("r", "m", 9_000))
    store.put(identity_key("acme", "s", "kept"), b"qc:0:1|1000")
    base.apply(store.take())
    ids = Identities(store, retention_us=5_000)
    nxt = ids.sweep(base.scan(0, REJECTION), lambda tenant: 10_000, 100, REJECTION)
    assert nxt is None
    base.apply(store.take())
    assert base.get(0, old) is None and base.get(0, fresh) is not None
    # the identity sweep and the rejection sweep do not touch each other's rows
    assert base.get(0, identity_key("acme", "s", "kept")) is not None
    assert list(base.scan(0, IDENTITY))


def _guarded_world() -> tuple[Manager, Any]:
    """A manager over an in-memory store holding tenant acme's cpu quota: 10, burst 12."""
    world = StoreWorld()
    value = encode(
        "quota.set",
        {"level": "tenant", "entity_id": "acme", "resource_type": "cpu", "limit": 10,
         "burst_limit": 12, "actor": "ops"},
        source="tests", id="q1", time_us=1_700_000_000_000_000,
    )  # fmt: skip
    decoded = decode(value, [], record_timestamp_ms=1_700_000_000_000)
    world.enforcer.process(decoded, "qc:0", 1)
    qa = SimpleNamespace(
        settings=SimpleNamespace(max_amount=10**12, max_clock_skew_seconds=300),
        store=world.store,
        templates={},
    )
    return Manager(qa), world  # type: ignore[arg-type]


def _cmd(model: type[Command], **data: Any) -> Any:
    return model.model_validate({"actor": "token:ops", "tenant_id": "acme", **data})


@pytest.mark.parametrize(
    ("model", "data", "allowed"),
    [
        (QuotaSet, {"level": "tenant", "resource_type": "cpu", "limit": 8}, True),
        (
            QuotaSet,
            {"level": "tenant", "resource_type": "cpu", "limit": 10, "burst_limit": 12},
            True,
        ),
        (QuotaSet, {"level": "tenant", "resource_type": "gpu", "limit": 100}, True),
        (
            QuotaSet,
            {"level": "project", "entity_id": "web", "resource_type": "cpu", "limit": 99},
            True,
        ),
        (QuotaSet, {"level": "tenant", "resource_type": "cpu", "limit": 11}, False),
        (
            QuotaSet,
            {"level": "tenant", "resource_type": "cpu", "limit": 10, "burst_limit": 20},
            False,
        ),
        (
            QuotaSet,
            {"level": "tenant", "resource_type": "cpu", "limit": 5, "status": "suspended"},
            False,
        ),
        (QuotaDeleted, {"level": "tenant", "resource_type": "cpu"}, False),
        (QuotaDeleted, {"level": "user", "entity_id": "al", "resource_type": "cpu"}, True),
        (TemplateApplied, {"level": "tenant", "template": "free"}, True),
        (TemplateApplied, {"level": "tenant", "template": "enterprise"}, False),
        (TemplateApplied, {"level": "tenant", "template": "unknown"}, True),
    ],
)
def test_a_tenant_admin_is_held_to_its_committed_tenant_quota(
    model: type[Command], data: dict[str, Any], allowed: bool
) -> None:
    manager, _world = _guarded_world()
    cmd = _cmd(model, **data)
    manager.guard(ADMIN, cmd)  # an admin may do anything
    if allowed:
        manager.guard(TENANT_ADMIN, cmd)
        return
    with pytest.raises(ApiError) as err:
        manager.guard(TENANT_ADMIN, cmd)
    assert (err.value.status, err.value.code) == (403, "forbidden")
