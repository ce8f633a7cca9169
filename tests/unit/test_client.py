"""The Python client's retry, backoff and circuit-breaker behaviour (HTTP mocked: pure unit)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from novaquota.client import (
    AsyncQuotaClient,
    CircuitOpenError,
    ClientConfig,
    QuotaApiError,
    QuotaClient,
)
from novaquota.schemas.api import CheckResponse

FAST = ClientConfig(retries=3, backoff_seconds=0.001, backoff_max_seconds=0.002)

ALLOWED = {
    "allowed": True,
    "reason": "within quota",
    "checks": [
        {
            "level": "tenant",
            "entity_id": "acme",
            "resource_type": "cpu",
            "limit": 10,
            "burst_limit": None,
            "used": 4,
            "reserved": 0,
            "requested": 2.5,
            "available": 6,
            "using_burst": False,
            "allowed": True,
            "kind": "quota",
        }
    ],
    "as_of": {"event_time": None, "offsets": {}},
}


def script(*answers: int | dict[str, Any]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering in turn: an int is a bare status, a dict a 200 JSON body."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, int):
            body = {"error": {"code": "rebalancing", "message": "moving"}}
            return httpx.Response(answer, json=body, headers={"retry-after": "0"})
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handle), seen


def test_check_parses_typed_exact_result_and_sends_the_body() -> None:
    transport, seen = script(ALLOWED)
    with QuotaClient("http://w:6066", token="tok", config=FAST, transport=transport) as c:
        r = c.check("acme", {"cpu": Decimal("2.5")}, project_id="web")
    assert r.allowed and r.checks[0].requested == Decimal("2.5")
    assert r.checks[0].available == Decimal(6)
    body = json.loads(seen[0].content)
    assert body == {"tenant_id": "acme", "resources": {"cpu": "2.5"}, "project_id": "web"}
    assert seen[0].headers["authorization"] == "Bearer tok"


def test_503_during_a_rebalance_is_retried_until_it_answers() -> None:
    transport, seen = script(503, 503, ALLOWED)
    with QuotaClient(config=FAST, transport=transport) as c:
        assert c.check("acme", {"cpu": 1}).allowed
    assert len(seen) == 3


def test_reserve_always_carries_one_idempotency_key_across_retries() -> None:
    transport, seen = script(503, {**ALLOWED, "reservation_id": "g1"})
    with QuotaClient(config=FAST, transport=transport) as c:
        r = c.reserve("acme", {"cpu": 1}, resource_id="vm-1", ttl_seconds=60)
    assert r.reservation_id == "g1"
    keys = {json.loads(req.content)["idempotency_key"] for req in seen}
    assert len(seen) == 2 and len(keys) == 1
    assert json.loads(seen[0].content)["reserve"] is True


def test_client_errors_are_not_retried() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "invalid_request", "message": "resources: unknown"}}
        return httpx.Response(400, json=body)

    calls: list[int] = []
    transport = httpx.MockTransport(lambda r: (calls.append(1), handle(r))[1])
    with QuotaClient(config=FAST, transport=transport) as c, pytest.raises(QuotaApiError) as err:
        c.check("acme", {"bogus": 1})
    assert err.value.status == 400 and err.value.code == "invalid_request" and calls == [1]


@pytest.mark.parametrize("fail_open", [True, False])
def test_breaker_opens_after_failures_and_answers_by_policy(fail_open: bool) -> None:
    cfg = ClientConfig(
        retries=1,
        backoff_seconds=0.001,
        breaker_threshold=2,
        breaker_reset_seconds=60,
        fail_open=fail_open,
    )
    transport, seen = script(503)
    with QuotaClient(config=cfg, transport=transport) as c:
        first = c.check("acme", {"cpu": 1})
        second = c.check("acme", {"cpu": 1})
        assert c.breaker_state == "open"
        third = c.check("acme", {"cpu": 1})
        with pytest.raises(CircuitOpenError):
            c.reservations("acme")
    assert len(seen) == 4  # two calls with one retry each; nothing once open
    for r in (first, second, third):
        assert r.degraded and r.allowed is fail_open and r.reservation_id is None


def test_half_open_trial_success_closes_the_breaker() -> None:
    cfg = ClientConfig(retries=0, breaker_threshold=1, breaker_reset_seconds=0.05)
    transport, _ = script(503, ALLOWED)
    with QuotaClient(config=cfg, transport=transport) as c:
        assert c.check("acme", {"cpu": 1}).degraded
        assert c.breaker_state == "open"
        time.sleep(0.06)
        assert c.breaker_state == "half-open"
        assert c.check("acme", {"cpu": 1}).allowed
        assert c.breaker_state == "closed"


def test_connection_errors_count_as_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with QuotaClient(config=FAST, transport=httpx.MockTransport(refuse)) as c:
        r = c.check("acme", {"cpu": 1})
    assert r.degraded and not r.allowed and "ConnectError" in r.reason


def test_async_client_batch_and_release() -> None:
    answers: list[Callable[[httpx.Request], httpx.Response]] = [
        lambda r: httpx.Response(
            200,
            json={
                "results": [
                    ALLOWED,
                    {**ALLOWED, "allowed": False},
                    {"error": {"code": "invalid_amount", "message": "cpu: must be >= 0"}},
                ]
            },
        ),
        lambda r: httpx.Response(
            200,
            json={
                "released": {
                    "reservation_id": "g1",
                    "tenant_id": "acme",
                    "resources": {"cpu": 2},
                    "expires_at": "2026-01-01T00:00:00Z",
                    "granted_at": "2026-01-01T00:00:00Z",
                }
            },
        ),
    ]
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)(request)

    async def run() -> None:
        async with AsyncQuotaClient(config=FAST, transport=httpx.MockTransport(handle)) as c:
            results = await c.check_batch(
                [
                    {"tenant_id": "a", "resources": {"cpu": 1}},
                    {"tenant_id": "b", "resources": {"cpu": 1}, "reserve": True},
                    {"tenant_id": "c", "resources": {"cpu": 1}},
                ]
            )
            first, second, third = results
            assert isinstance(first, CheckResponse) and isinstance(second, CheckResponse)
            assert (first.allowed, second.allowed) == (True, False)
            assert isinstance(third, QuotaApiError) and third.code == "invalid_amount"
            released = await c.release("acme", "g1")
            assert released is not None and released.resources == {"cpu": Decimal(2)}

    asyncio.run(run())
    batch = json.loads(seen[0].content)["checks"]
    assert "idempotency_key" not in batch[0] and batch[1]["idempotency_key"]
    assert seen[1].method == "DELETE" and seen[1].url.params["tenant_id"] == "acme"


def test_publish_rejects_invalid_events_before_sending() -> None:
    with pytest.raises(QuotaApiError) as err:
        QuotaClient.publish([{"specversion": "1.0", "type": "vm.created"}])
    assert err.value.status == 400 and "event 1" in err.value.message
