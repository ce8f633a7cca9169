"""The live feed's pure parts: filters, coalescing, the lagging rule, snapshot diffs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from novaquota.streams.errors import ApiError
from novaquota.streams.live import (
    Filters,
    Subscriber,
    UsageDiff,
    alert_message,
    parse_filters,
    usage_messages,
    violation_message,
)


def test_filters_from_the_contract_parameters() -> None:
    assert parse_filters({"entity_id": "t1"}) == Filters("t1")
    assert parse_filters({"tenant_id": "t1"}) == Filters("t1")
    assert parse_filters({"entity_id": "t1", "level": "tenant"}) == Filters("t1", "tenant", "t1")
    assert parse_filters(
        {"tenant_id": "t1", "level": "user", "entity_id": "u1", "resource_type": "cpu"}
    ) == Filters("t1", "user", "u1", "cpu")
    assert parse_filters({"tenant_id": "t1", "level": "project"}) == Filters("t1", "project")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({}, "missing_entity_id"),
        ({"entity_id": "t1", "level": "galaxy"}, "invalid_level"),
        ({"entity_id": "t1", "level": "system"}, "invalid_level"),
        ({"entity_id": "t1", "resource_type": "unicorns"}, "invalid_resource_type"),
        ({"level": "user", "entity_id": "u1"}, "missing_tenant_id"),
        ({"level": "tenant", "tenant_id": "t1", "entity_id": "t2"}, "invalid_entity"),
        ({"entity_id": "system"}, "invalid_entity"),
        ({"scope": "galaxy"}, "invalid_scope"),
        ({"scope": "all", "entity_id": "t1"}, "invalid_scope"),
        ({"scope": "all", "tenant_id": "t1"}, "invalid_scope"),
        ({"scope": "all", "types": "usage_updated"}, "invalid_types"),
        ({"scope": "all", "types": "alert,usage_updated"}, "invalid_types"),
        ({"entity_id": "t1", "types": "alert,lagging"}, "invalid_types"),
        ({"entity_id": "t1", "types": "unicorns"}, "invalid_types"),
    ],
)
def test_bad_parameters_are_400(query: dict[str, str], code: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_filters(query)
    assert (err.value.status, err.value.code) == (400, code)


def test_all_tenants_offers_violations_and_alerts_of_every_tenant() -> None:
    every = parse_filters({"scope": "all"})
    assert every == Filters(None) and every.all_tenants
    exceeded = {"type": "quota_exceeded", "data": {"tenant_id": "t9", "level": "tenant",
                "entity_id": "t9", "resource_type": "cpu"}}  # fmt: skip
    alert = {"type": "alert", "data": {**exceeded["data"], "tenant_id": "t2", "entity_id": "t2"}}
    assert every.accepts(exceeded) and every.accepts(alert)
    assert not every.wants("usage_updated")
    body = {"tenant_id": "t1", "as_of_us": 0, "rows": [["tenant", "t1", "cpu", 1, None, 0]]}
    assert list(usage_messages(body, every)) == []
    only = parse_filters({"scope": "all", "types": "alert, cost_alert", "resource_type": "cpu"})
    assert only.types == frozenset({"alert", "cost_alert"})
    assert only.accepts(alert) and not only.accepts(exceeded)
    assert not only.accepts({**alert, "data": {**alert["data"], "resource_type": "memory"}})
    # types narrows one tenant's subscription too; its tenant is still checked
    one = parse_filters({"entity_id": "t1", "types": "usage_updated,quota_exceeded"})
    assert list(usage_messages(body, one)) and not one.accepts(exceeded)
    assert one.accepts({**exceeded, "data": {**exceeded["data"], "tenant_id": "t1"}})
    assert not one.accepts({**alert, "data": {**alert["data"], "tenant_id": "t1"}})


def usage(entity: str, used: int) -> dict[str, Any]:
    body = {"tenant_id": "t1", "as_of_us": 0, "rows": [["user", entity, "cpu", used, None, 0]]}
    return next(usage_messages(body, Filters("t1")))


def test_usage_of_one_entity_is_coalesced_and_keeps_the_newest() -> None:
    sub = Subscriber(Filters("t1"), max_pending=10)
    for used in (1_000_000, 2_000_000, 3_000_000):
        sub.offer(usage("u1", used))
    sub.offer(usage("u2", 5_000_000))
    got = sub.take()
    assert [(m["data"]["entity_id"], m["data"]["used"]) for m in got] == [("u1", 3), ("u2", 5)]
    assert sub.coalesced == 2 and not sub.lagging


def test_a_full_queue_marks_the_client_lagging_and_drops_what_waited() -> None:
    calls: list[int] = []
    sub = Subscriber(Filters("t1"), max_pending=3, on_lagging=lambda: calls.append(1))
    for i in range(3):
        sub.offer(usage(f"u{i}", 1))
    sub.offer(usage("u9", 1))
    assert sub.lagging and calls == [1] and sub.pending == {} and sub.missed == 4
    sub.offer(usage("u10", 1))
    assert sub.missed == 5 and calls == [1]


def test_usage_messages_compute_utilization_and_apply_filters() -> None:
    body = {
        "tenant_id": "t1",
        "as_of_us": 1_793_491_200_000_000,
        "rows": [
            ["tenant", "t1", "cpu", 3_000_000, 4_000_000, 500_000],
            ["user", "u1", "memory", 1024_000_000, None, 0],
            ["tenant", "t1", "gpu", 1_000_000, 0, 0],
        ],
    }
    everything = list(usage_messages(body, Filters("t1")))
    assert everything[0] == {
        "type": "usage_updated",
        "data": {
            "tenant_id": "t1",
            "level": "tenant",
            "entity_id": "t1",
            "resource_type": "cpu",
            "used": 3,
            "limit": 4,
            "reserved": 0.5,
            "utilization": 75.0,
            "as_of": "2026-11-01T00:00:00.000000Z",
        },
    }
    assert everything[2]["data"]["utilization"] is None  # a zero limit
    only = list(usage_messages(body, Filters("t1", "user", "u1", "memory")))
    assert [m["data"]["used"] for m in only] == [1024]


def test_violations_and_alerts_keep_their_data() -> None:
    data = {"tenant_id": "t1", "kind": "over_limit"}
    assert violation_message({"type": "quota.violation", "data": data}) == {
        "type": "quota_exceeded",
        "data": data,
    }
    assert violation_message({"type": "quota.violation_resolved", "data": data}) == {
        "type": "violation_resolved",
        "data": data,
    }
    assert alert_message({"type": "quota.alert", "data": {"kind": "cost"}})["type"] == "cost_alert"  # type: ignore[index]
    assert alert_message({"type": "quota.alert", "data": {"kind": "burst"}})["type"] == "alert"  # type: ignore[index]
    assert alert_message({"type": "audit.x", "data": {}}) is None


def test_the_diff_sends_changed_rows_and_zeroes_what_disappeared() -> None:
    diff = UsageDiff(max_tenants=1)
    a, b = ("user", "u1", "cpu", 1, None, 0), ("user", "u2", "cpu", 2, None, 0)
    assert diff.changed("t1", iter([a, b])) == [a, b]
    assert diff.changed("t1", iter([a, b])) == []
    assert diff.changed("t1", iter([a])) == [("user", "u2", "cpu", 0, None, 0)]
    diff.changed("t2", iter([a]))  # t1 is forgotten: it sends everything again
    assert diff.changed("t1", iter([a])) == [a]


def test_the_hub_hands_every_tenant_s_violations_to_all_tenants_subscribers_only() -> None:
    import orjson

    from novaquota.streams.live_web import LiveHub

    topics = SimpleNamespace(live="live", quota_violations="violations", quota_alerts="alerts")
    gauge = SimpleNamespace(set=lambda n: None)
    qa = SimpleNamespace(
        settings=SimpleNamespace(topics=topics), metrics=SimpleNamespace(live_clients=gauge)
    )
    hub = LiveHub(qa)  # type: ignore[arg-type]
    every = Subscriber(parse_filters({"scope": "all"}), max_pending=10)
    t1 = Subscriber(Filters("t1"), max_pending=10)
    hub.subscribe(every)
    hub.subscribe(t1)
    assert hub.clients == 2

    def violation(tenant: str) -> bytes:
        data = {"tenant_id": tenant, "level": "tenant", "entity_id": tenant}
        data.update(resource_type="cpu", kind="over_limit", violation_id=f"v-{tenant}")
        return orjson.dumps({"type": "quota.violation", "data": data})

    snapshot = {"tenant_id": "t2", "as_of_us": 0, "rows": [["tenant", "t2", "cpu", 1, None, 0]]}
    assert not hub.dispatch("live", b"t2", orjson.dumps(snapshot))  # usage: never decoded
    assert hub.dispatch("violations", b"t2", violation("t2"))
    assert hub.dispatch("violations", b"t1", violation("t1"))
    assert [m["data"]["tenant_id"] for m in every.take()] == ["t2", "t1"]
    assert [m["data"]["tenant_id"] for m in t1.take()] == ["t1"]
    hub.unsubscribe(every)
    assert not hub.dispatch("violations", b"t2", violation("t2"))  # nobody wants t2 any more
    assert hub.clients == 1
