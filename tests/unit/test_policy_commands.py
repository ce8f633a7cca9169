"""``policy.set`` / ``policy.deleted`` and a command's ``cause`` through the codec and the
enforcement step (no broker): audited, never dead-lettered as unknown, invalid ones refused with a
reason that names the field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from novaquota.schemas.codec import decode, encode
from novaquota.schemas.exceptions import DecodeError
from novaquota.schemas.limits import DEFAULT_LIMITS
from novaquota.streams import step
from novaquota.streams.translate import with_tenant
from tests.support.world import StoreWorld

T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
T0_US = int(T0.timestamp() * 1_000_000)

POLICY: dict[str, Any] = {
    "name": "autogrow",
    "version": 2,
    "rules": [
        {
            "name": "grow",
            "when": {"utilization": {"above": 90, "for": "1h"}},
            "then": [{"adjust_limit": {"factor": 1.5, "ceiling": 64}}],
        }
    ],
}


def _send(w: StoreWorld, raw: bytes, offset: int) -> list[dict[str, Any]]:
    d = decode(raw, [])
    emits = w.enforcer.process(with_tenant(d, d.tenant_id or ""), "qc:0", offset)
    return [orjson.loads(e.value) for e in emits]


def test_policy_set_is_routed_to_system_and_audited() -> None:
    raw = encode(
        "policy.set", {**POLICY, "actor": "ops"}, source="admin/cli", id="p1", time_us=T0_US
    )
    got = step.classify(raw, [], None, timestamp_ms=T0_US // 1000, limits=DEFAULT_LIMITS)
    assert got.kind == "tenant" and got.tenant == "system"
    out = _send(StoreWorld(), raw, 1)
    assert [o["type"] for o in out] == ["audit.command_applied"]
    audit = out[0]["data"]
    assert audit["actor"] == "ops"
    assert audit["tenant_id"] == "system"
    assert audit["details"]["action"] == "audit.policy_set"
    assert audit["details"]["subject"] == "policy/autogrow"
    assert audit["details"]["after"]["version"] == 2
    assert audit["details"]["after"]["rules"][0]["when"]["utilization"]["for"] == 3600


def test_policy_deleted_is_audited_and_a_repeat_is_a_duplicate() -> None:
    w = StoreWorld()
    raw = encode(
        "policy.deleted", {"name": "autogrow", "actor": "ops"}, source="cli", id="d1", time_us=T0_US
    )
    out = _send(w, raw, 1)
    assert out[0]["data"]["details"]["action"] == "audit.policy_deleted"
    assert out[0]["data"]["details"]["before"] is None
    assert _send(w, raw, 2) == []
    assert w.enforcer.last_duplicate


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"version": 0}, "data.version"),
        ({"rules": []}, "data.rules"),
        ({"name": None}, "data.name"),
        (
            {"rules": [{"name": "r", "when": {"utilisation": {}}, "then": ["suspend"]}]},
            "data.rules.0.when",
        ),
        (
            {"rules": [{"name": "r", "when": {"tier": {"in": ["free"]}}, "then": ["explode"]}]},
            "data.rules.0.then.0",
        ),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_field(change: dict[str, Any], where: str) -> None:
    data = {**POLICY, **change, "actor": "ops"}
    raw = orjson.dumps(
        {
            "specversion": "1.0",
            "id": "x",
            "source": "cli",
            "type": "policy.set",
            "time": "2026-11-20T10:00:00Z",
            "data": data,
        }
    )
    with pytest.raises(DecodeError) as err:
        decode(raw, [])
    assert err.value.reason != "unknown_type"
    assert err.value.message.startswith(where)


def test_a_policy_action_carries_its_cause_into_the_audit_record() -> None:
    w = StoreWorld()
    cause = {
        "policy": "autogrow",
        "version": 2,
        "rule": "grow",
        "action": "adjust_limit",
        "action_id": "a-1",
        "figures": {"utilization": "95", "since": "2026-11-20T09:00:00.000000Z"},
        "summary": "autogrow@2 rule grow: utilization 95 %",
    }
    quota = {
        "tenant_id": "t1",
        "level": "tenant",
        "resource_type": "cpu",
        "limit": 15,
        "actor": "policy/autogrow@2",
        "cause": cause,
    }
    raw = encode("quota.set", quota, source="novaquota/policy", id="a-1", time_us=T0_US)
    out = _send(w, raw, 1)
    audit = out[0]["data"]
    assert audit["actor"] == "policy/autogrow@2"
    assert audit["details"]["action"] == "audit.quota_set"
    assert audit["details"]["cause"] == cause
    assert audit["details"]["reason"] == cause["summary"]
    assert audit["details"]["after"]["limit"] == 15


def test_a_command_without_cause_encodes_as_before() -> None:
    raw = encode(
        "quota.set",
        {"tenant_id": "t1", "level": "tenant", "resource_type": "cpu", "limit": 3, "actor": "x"},
        source="cli",
        id="1",
        time_us=T0_US,
    )
    assert b"cause" not in raw
