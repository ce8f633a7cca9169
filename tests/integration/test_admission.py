"""Admission checks, atomic reservations and token buckets through real workers (contract §6)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from novaquota.client import AsyncQuotaClient, ClientConfig, QuotaClient
from novaquota.streams.agents import home_partition
from tests.integration.conftest import Stack
from tests.support.events import command, vm_created

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def post(stack: Stack, path: str, body: Any, worker: int = 0) -> tuple[int, Any]:
    w = stack.workers[worker]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return w.request("POST", path, data, token=w.credentials.admin_token, timeout=30)


def delete(stack: Stack, path: str, worker: int = 0) -> tuple[int, Any]:
    w = stack.workers[worker]
    return w.request("DELETE", path, token=w.credentials.admin_token, timeout=30)


def quota(tenant: str, res: str, limit: float, level: str = "tenant", entity: str = "", **kw: Any):
    data = {
        "level": level,
        "entity_id": entity or tenant,
        "tenant_id": tenant,
        "resource_type": res,
        "limit": limit,
        **kw,
    }
    return command("quota.set", data)


def check_until(stack: Stack, body: dict[str, Any], pred: Callable[[Any], bool]) -> Any:
    """POST a check until its answer satisfies ``pred`` (the commands were processed)."""

    def once() -> Any:
        status, answer = post(stack, "/api/v1/quotas/check", body)
        return answer if status == 200 and pred(answer) else None

    return stack.wait_for(once, timeout=60)


def level(answer: dict[str, Any], lvl: str, res: str = "cpu") -> dict[str, Any]:
    [row] = [c for c in answer["checks"] if c["level"] == lvl and c["resource_type"] == res]
    return row


def audit_actions(stack: Stack, tenant: str) -> Counter[str]:
    return Counter(
        ev["data"]["details"]["action"]
        for ev in stack.outputs("audit", idle=2)
        if ev["data"]["tenant_id"] == tenant
    )


def test_check_api_walks_the_hierarchy_with_burst_soft_and_system(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    stack.start_worker()
    stack.produce(
        "quota-commands",
        [
            quota("acme", "cpu", 10, burst_limit=12),
            quota("acme", "cpu", 6, level="project", entity="web"),
            quota("acme", "memory", 8192, level="user", entity="alice", limit_type="soft"),
        ],
    )
    stack.produce(
        "resource-events",
        [vm_created("acme", "vm1", cpu=3, memory=4096, project_id="web", user_id="alice")],
    )
    scoped = {"tenant_id": "acme", "project_id": "web", "user_id": "alice"}
    a = check_until(
        stack,
        {**scoped, "resources": {"cpu": 3}},
        lambda r: any(c["level"] == "project" and c["used"] == 3 for c in r["checks"]),
    )
    assert a["allowed"] is True and a["reason"] == "within quota"
    assert level(a, "project")["available"] == 3 and level(a, "tenant")["available"] == 7
    assert a["as_of"]["event_time"] and a["as_of"]["offsets"]

    # the project's limit denies, with a reason naming it, whichever worker is asked
    for worker in (0, 1):
        status, b = post(stack, "/api/v1/quotas/check", {**scoped, "resources": {"cpu": 4}}, worker)
        assert status == 200 and b["allowed"] is False
        assert "project web: cpu request 4 exceeds available 3" in b["reason"]

    # tenant level: 8 > available 7 but within burst 12 - 3 = 9
    _, c = post(stack, "/api/v1/quotas/check", {"tenant_id": "acme", "resources": {"cpu": 8}})
    assert c["allowed"] is True and level(c, "tenant")["using_burst"] is True
    assert "burst" in c["reason"]

    # the soft user limit admits with a warning while its grace runs
    _, d = post(stack, "/api/v1/quotas/check", {**scoped, "resources": {"memory": 8192}})
    assert d["allowed"] is True and d["warnings"] and "soft" in d["reason"]

    # the seed's GET form: one tenant-level check
    for amount, allowed in (("7", True), ("9", True), ("10", False)):
        status, g = stack.get(
            f"/api/v1/quotas/check?entity_id=acme&resource_type=cpu&amount={amount}", 1
        )
        assert status == 200 and g["allowed"] is allowed, (amount, g)

    # bad input: 400 with a code, nothing else happens
    bad = [
        (b"{not json", "invalid_json"),
        ({"tenant_id": "acme", "resources": {"bogus": 1}}, "invalid_request"),
        ({"tenant_id": "acme", "resources": {"cpu": -1}}, "invalid_request"),
        ({"tenant_id": "acme", "resources": {}}, "invalid_request"),
        ({"resources": {"cpu": 1}}, "invalid_request"),
    ]
    for body, code in bad:
        status, e = post(stack, "/api/v1/quotas/check", body)
        assert status == 400 and e["error"]["code"] == code, (body, e)
    status, e = stack.get("/api/v1/quotas/check?entity_id=acme&resource_type=cpu")
    assert status == 400 and e["error"]["code"] == "missing_parameter"

    # a batch across tenants owned by both workers, answered in order
    tenants = [f"b{i}" for i in range(24)]
    parts = {home_partition(t, 4) for t in tenants}
    assert len(parts) == 4
    stack.produce("quota-commands", [quota(t, "cpu", i + 1) for i, t in enumerate(tenants)])
    batch = [{"tenant_id": t, "resources": {"cpu": i + 1 + (i % 2)}} for i, t in enumerate(tenants)]

    def batch_ok() -> Any:
        status, r = post(stack, "/api/v1/quotas/check:batch", {"checks": batch})
        if status != 200 or any(not x["checks"] for x in r["results"]):
            return None
        return r

    r = stack.wait_for(batch_ok, timeout=60)
    assert [x["allowed"] for x in r["results"]] == [i % 2 == 0 for i in range(24)]
    assert [x["checks"][0]["entity_id"] for x in r["results"]] == tenants
    status, e = post(stack, "/api/v1/quotas/check:batch", {"checks": batch * 5})
    assert status == 400 and e["error"]["code"] == "batch_too_large"

    # a system quota: checks read the system snapshot (at most a few seconds old)
    stack.produce(
        "quota-commands",
        [
            command(
                "quota.set",
                {"level": "system", "entity_id": "system", "resource_type": "cpu", "limit": 4},
            )
        ],
    )
    s = check_until(
        stack,
        {"tenant_id": "b0", "resources": {"cpu": 2}},
        lambda x: any(c["level"] == "system" and c["used"] == 3 for c in x["checks"]),
    )
    assert s["allowed"] is False and "system system: cpu" in s["reason"]
    assert level(s, "system")["used"] == 3
    assert s["as_of"]["system"]["available"] is True
    assert 0 <= s["as_of"]["system"]["age_seconds"] < 30


def _now() -> datetime:
    return datetime.now(UTC)


def test_grant_lifecycle_ttl_conversion_idempotency_and_release(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    stack.produce("quota-commands", [quota("acme", "cpu", 10), quota("acme", "memory", 65536)])
    check_until(stack, {"tenant_id": "acme", "resources": {"cpu": 1}}, lambda r: r["checks"])
    url = stack.workers[0].url
    scheduler = stack.workers[0].credentials.token("scheduler", "service", "acme")
    # the worker reads the changed token file within a second
    mine = "/api/v1/quotas/reservations?tenant_id=acme"
    stack.wait_for(lambda: stack.workers[0].request("GET", mine, token=scheduler)[0] == 200)
    with QuotaClient(url, token=scheduler) as client:
        # converted into usage by the allocation event of its resource_id
        g1 = client.reserve("acme", {"cpu": 4, "memory": 2048}, resource_id="vm-a", ttl_seconds=600)
        assert g1.allowed and g1.reservation_id and g1.expires_at
        again = client.reserve(
            "acme", {"cpu": 4}, resource_id="vm-a", idempotency_key="fixed", ttl_seconds=600
        )
        repeat = client.reserve(
            "acme", {"cpu": 4}, resource_id="vm-a", idempotency_key="fixed", ttl_seconds=600
        )
        assert repeat.repeated and repeat.reservation_id == again.reservation_id
        denied = client.check("acme", {"cpu": 3})  # 10 - 4 - 4 reserved = 2 left
        assert not denied.allowed and denied.checks[0].reserved == 8
        assert client.release("acme", str(again.reservation_id)) is not None
        stack.produce("resource-events", [vm_created("acme", "vm-a", cpu=4, memory=2048)])

        def converted() -> bool:
            listing = client.reservations("acme")
            r = client.check("acme", {"cpu": 6})
            return not listing["grants"] and r.allowed and r.checks[0].used == 4

        stack.wait_for(converted, timeout=60)
        # a short TTL expires on the owner's clock, audited
        g2 = client.reserve("acme", {"cpu": 6}, ttl_seconds=1)
        assert g2.allowed and not client.check("acme", {"cpu": 1}).allowed
        stack.wait_for(lambda: not client.reservations("acme")["grants"], timeout=30)
        assert client.check("acme", {"cpu": 6}).allowed

    actions = stack.wait_for(
        lambda: (c := audit_actions(stack, "acme"))["audit.reservation_expired"] and c
    )
    assert actions["audit.reservation_granted"] == 3
    assert actions["audit.reservation_released"] == 2  # one released, one converted
    assert actions["audit.reservation_expired"] == 1
    events = [e for e in stack.outputs("audit") if e["data"]["tenant_id"] == "acme"]
    granted = [e for e in events if e["type"] == "audit.reservation_granted"]
    assert {e["data"]["actor"] for e in granted} == {"token:scheduler"}
    assert any(e["type"] == "audit.reservation_expired" for e in events)

    # scheduled reservations: create, list, cancel (202: they are commands)
    start, end = _now() - timedelta(minutes=1), _now() + timedelta(hours=1)
    status, made = post(
        stack,
        "/api/v1/quotas/reservations",
        {
            "tenant_id": "acme",
            "level": "project",
            "entity_id": "batch",
            "resource_type": "cpu",
            "amount": 5,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "purpose": "batch window",
        },
    )
    assert status == 202 and made["command_id"] and made["reservation_id"]
    listed = stack.wait_for(
        lambda: stack.get("/api/v1/quotas/reservations?tenant_id=acme")[1]["scheduled"]
    )
    assert listed[0]["reservation_id"] == made["reservation_id"] and listed[0]["amount"] == 5
    # 10 - 4 used - 5 held for project batch (which uses none of it) = 1
    assert not post(stack, "/api/v1/quotas/check", {"tenant_id": "acme", "resources": {"cpu": 2}})[
        1
    ]["allowed"]
    status, _ = delete(
        stack, f"/api/v1/quotas/reservations/{made['reservation_id']}?tenant_id=acme"
    )
    assert status == 202
    stack.wait_for(
        lambda: not stack.get("/api/v1/quotas/reservations?tenant_id=acme")[1]["scheduled"]
    )
    status, missing = delete(stack, "/api/v1/quotas/reservations/nope?tenant_id=acme")
    assert status == 404 and missing["error"]["code"] == "not_found"
    status, _ = post(stack, "/api/v1/quotas/reservations", {"tenant_id": "acme", "amount": -1})
    assert status == 400


def test_token_bucket_through_the_check_api_is_per_tenant(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    stack.produce(
        "quota-commands",
        [
            command(
                "rate_limit.set",
                {
                    "level": "tenant",
                    "entity_id": t,
                    "tenant_id": t,
                    "rate_per_second": 0.01,
                    "burst": 5,
                },
            )
            for t in ("api1", "api2")
        ],
    )
    body = {"tenant_id": "api1", "resources": {"api_requests": 1}}
    first = check_until(stack, body, lambda r: any(c["kind"] == "rate_limit" for c in r["checks"]))
    assert first["allowed"]
    rest = [post(stack, "/api/v1/quotas/check", body)[1]["allowed"] for _ in range(7)]
    assert rest == [True] * 4 + [False] * 3  # capacity 5, refilling 1 per 100 s
    _, last = post(stack, "/api/v1/quotas/check", body)
    assert (
        "rate limit" in last["reason"]
        and level(last, "tenant", "api_requests")["kind"] == "rate_limit"
    )
    # another tenant's bucket is its own
    other = {"tenant_id": "api2", "resources": {"api_requests": 1}}
    assert [post(stack, "/api/v1/quotas/check", other)[1]["allowed"] for _ in range(6)] == [
        True
    ] * 5 + [False]


def test_concurrent_reserves_yield_exactly_k_grants_across_a_rebalance(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    config = ClientConfig(
        retries=60, backoff_seconds=0.2, backoff_max_seconds=1.0, timeout_seconds=30
    )

    async def storm(
        urls: list[str], asks: list[tuple[str, int]], pace: float, during: Callable[[], Any]
    ) -> list[Any]:
        """Reserve 1 cpu per ask, ``pace`` seconds apart, all in flight together, while
        ``during`` runs in a thread."""
        token = stack.workers[0].credentials.admin_token
        clients = [AsyncQuotaClient(u, token=token, config=config) for u in urls]
        try:
            side = asyncio.ensure_future(asyncio.to_thread(during))
            tasks = []
            for n, (t, i) in enumerate(asks):
                call = clients[n % len(clients)].reserve(
                    t, {"cpu": 1}, resource_id=f"{t}-{i}", ttl_seconds=3600
                )
                tasks.append(asyncio.ensure_future(call))
                await asyncio.sleep(pace)
            results = await asyncio.gather(*tasks)
            await side
            return results
        finally:
            for c in clients:
                await c.aclose()

    # 100 concurrent reserves against room for 10: exactly 10 grants
    stack.produce("quota-commands", [quota("burst", "cpu", 10)])
    check_until(stack, {"tenant_id": "burst", "resources": {"cpu": 1}}, lambda r: r["checks"])
    burst = asyncio.run(storm([stack.workers[0].url], [("burst", i) for i in range(100)], 0, dict))
    assert not any(r.degraded for r in burst)
    assert sum(r.allowed for r in burst) == 10
    assert len({r.reservation_id for r in burst if r.allowed}) == 10

    # 240 reserves for 40 tenants (room for 3 each) spread over ~20 s, while a second worker
    # joins and the partitions move: grants keep being decided during the rebalance
    tenants = [f"race-{n}" for n in range(40)]
    capacity, per_tenant = 3, 6
    stack.produce("quota-commands", [quota(t, "cpu", capacity) for t in tenants])
    for t in tenants:
        check_until(stack, {"tenant_id": t, "resources": {"cpu": 1}}, lambda r: r["checks"])
    asks = [(t, i) for i in range(per_tenant) for t in tenants]
    random.Random(5).shuffle(asks)

    def join() -> None:
        time.sleep(1)
        stack.start_worker(wait_ready=True)

    results = asyncio.run(storm([stack.workers[0].url], asks, 0.08, join))
    assert not any(r.degraded for r in results)
    granted = Counter(r.checks[0].entity_id for r in results if r.allowed)
    assert granted == {t: capacity for t in tenants}
    assert len({r.reservation_id for r in results if r.allowed}) == capacity * len(tenants)
    # the second worker owns some of these tenants now
    owned = stack.get("/internal/usage", 1)[1]["partitions"]
    assert owned and any(home_partition(t, 4) in owned for t in tenants)

    # the grants held are exactly those answered, as both workers see them
    def listing(t: str, worker: int) -> Any:
        status, body = stack.get(f"/api/v1/quotas/reservations?tenant_id={t}", worker)
        return body if status == 200 else None

    for worker in (0, 1):
        for t in tenants[:8]:
            held = stack.wait_for(lambda t=t, worker=worker: listing(t, worker))
            assert len(held["grants"]) == capacity
    # more room, and both workers answering: exactly 2 more each
    stack.produce("quota-commands", [quota(t, "cpu", capacity + 2) for t in tenants])
    for t in tenants:
        check_until(stack, {"tenant_id": t, "resources": {"cpu": 2}}, lambda r: r["allowed"])
    more = asyncio.run(storm([w.url for w in stack.workers], asks, 0, dict))
    assert Counter(r.checks[0].entity_id for r in more if r.allowed) == {t: 2 for t in tenants}

    def granted_audits() -> Counter[str] | None:
        # outputs are at least once with deterministic ids: a replay after the rebalance may
        # send a record again, with the same id
        unique = {
            e["id"]: e["data"]["tenant_id"]
            for e in stack.outputs("audit", idle=2)
            if e["type"] == "audit.reservation_granted"
        }
        c = Counter(unique.values())
        return c if sum(c.values()) >= 10 + 5 * len(tenants) else None

    audit = stack.wait_for(granted_audits)
    assert audit == {"burst": 10, **{t: capacity + 2 for t in tenants}}


def test_answers_are_never_older_than_the_last_processed_change(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    stack.produce("quota-commands", [quota("fresh", "cpu", 100)])
    check_until(stack, {"tenant_id": "fresh", "resources": {"cpu": 1}}, lambda r: r["checks"])
    for n in range(1, 9):
        stack.produce("resource-events", [vm_created("fresh", f"v{n}", cpu=1)])

        def processed(n: int = n) -> bool:
            usage = stack.get("/internal/usage")[1]["tenants"].get("fresh", {}).get("usage", {})
            return usage.get("Tfresh", {}).get("cpu") == str(n)

        stack.wait_for(processed, timeout=30, interval=0.05)
        # asked right after the change was processed: the answer includes it
        _, a = post(stack, "/api/v1/quotas/check", {"tenant_id": "fresh", "resources": {"cpu": 1}})
        assert a["checks"][0]["used"] == n
