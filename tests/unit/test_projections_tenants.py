"""The tenants list: utilization from the cached usage equals the full sum, ordering, keyset
pages, the tenant-scoped view and bad parameters."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from novaquota.projections.cost import load_catalogue
from novaquota.projections.exceptions import QueryError
from novaquota.projections.folds import FoldParams, ProjectionState, fold_batch, fold_violation
from novaquota.projections.http import build_app
from novaquota.projections.tenants import tenant_rows, tenants_page, usage_now
from novaquota.projections.views import _usage_now
from novaquota.streams.auth import Access, Principal
from tests.unit.test_projections_folds import cmd, ev, vm
from tests.unit.test_projections_http import worker

CATALOGUE = load_catalogue(data={"prices": {"cpu": 1.0}})


def quota(tenant: str, rt: str, limit: float, minutes: float = 0, **kw: Any) -> Any:
    data = {"level": "tenant", "entity_id": tenant, "resource_type": rt, "limit": limit, **kw}
    return cmd("quota.set", {"tenant_id": tenant, **data}, minutes)


def api(tenant: str, count: int, minutes: float) -> Any:
    return ev("api.requests", {"tenant_id": tenant, "count": count}, minutes, source="gw")


def state_of(*events: Any) -> ProjectionState:
    st = ProjectionState()
    fold_batch(st, list(events), FoldParams())
    return st


def test_the_cached_usage_follows_every_later_fold_exactly() -> None:
    """Late events before the cached minute, new minutes after it, a new consumption window:
    the cache agrees with the overview's full sum after each batch."""
    rng = random.Random(7)
    st = state_of(quota("t1", "cpu", 100), quota("t1", "api_requests", 1000, window="hour"))
    keys = [("t1", "tenant", "t1", "cpu"), ("t1", "tenant", "t1", "api_requests")]
    minute = 1.0
    for batch in range(30):
        events = []
        for _i in range(5):
            minute += rng.random() * 20
            at = minute - rng.random() * 60 if rng.random() < 0.3 else minute  # some late
            vid = f"v{rng.randrange(8)}"
            kind = rng.choice(["vm.created", "vm.resized", "vm.deleted"])
            events.append(vm(kind, vid, max(at, 0.5), rng.randrange(1, 5)))
            events.append(api("t1", rng.randrange(1, 50), max(at, 0.5)))
        fold_batch(st, events, FoldParams())
        for key in keys:
            assert usage_now(st, key) == pytest.approx(_usage_now(st, key), abs=1e-9), (batch, key)


def test_rows_order_and_pages() -> None:
    events = []
    for i, used in enumerate([1, 7, 3, 9, 5]):  # of 10 cpu: 10 %, 70 %, ...
        t = f"t{i}"
        events += [quota(t, "cpu", 10), vm("vm.created", f"{t}-vm", 1, used, tenant=t)]
    events += [quota("t2", "memory", 1000), vm("vm.created", "t5-vm", 61, 2, tenant="t5")]
    st = state_of(*events)
    fold_violation(st, "quota.violation", {"violation_id": "x1", "tenant_id": "t3"})
    fold_violation(st, "quota.violation", {"violation_id": "x2", "tenant_id": "t3"})
    rows = {r["tenant_id"]: r for r in tenant_rows(st)}
    assert rows["t3"]["utilization"] == 90.0 and rows["t3"]["resource_type"] == "cpu"
    assert rows["t3"]["open_violations"] == 2
    assert rows["t2"]["resources"] == 2  # cpu and memory: memory at 1024 of 1000 MiB
    assert rows["t2"]["utilization"] == 102.4 and rows["t2"]["resource_type"] == "memory"
    assert rows["t5"]["utilization"] is None and rows["t5"]["resources"] == 0

    first = tenants_page(st, CATALOGUE, page_size="2")
    assert [r["tenant_id"] for r in first["tenants"]] == ["t2", "t3"]
    assert first["total"] == 6
    assert first["tenants"][0]["cost_month_to_date"] > 0
    second = tenants_page(st, CATALOGUE, page_size="2", page_token=first["next_page_token"])
    assert [r["tenant_id"] for r in second["tenants"]] == ["t1", "t4"]
    third = tenants_page(st, CATALOGUE, page_size="2", page_token=second["next_page_token"])
    assert [r["tenant_id"] for r in third["tenants"]] == ["t0", "t5"]  # null last
    assert third["next_page_token"] is None
    by_id = tenants_page(st, CATALOGUE, sort="tenant_id", page_size="200")
    assert [r["tenant_id"] for r in by_id["tenants"]] == [f"t{i}" for i in range(6)]
    assert [r["tenant_id"] for r in tenants_page(st, CATALOGUE, q="t4")["tenants"]] == ["t4"]
    assert tenants_page(st, CATALOGUE, only="t1")["total"] == 1
    assert tenants_page(st, CATALOGUE, only="nobody")["tenants"] == []


def test_a_deleted_tenant_leaves_the_list() -> None:
    st = state_of(quota("t1", "cpu", 10), quota("t2", "cpu", 10))
    fold_batch(st, [cmd("tenant.deleted", {"tenant_id": "t1"}, 5)], FoldParams())
    assert [r["tenant_id"] for r in tenant_rows(st)] == ["t2"]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"page_size": "0"}, "invalid_page_size"),
        ({"page_size": "201"}, "invalid_page_size"),
        ({"page_size": "x"}, "invalid_page_size"),
        ({"sort": "cost"}, "invalid_sort"),
        ({"page_token": "garbage!"}, "invalid_page_token"),
        ({"q": "x" * 300}, "invalid_query"),
    ],
)
def test_bad_parameters_are_400s(params: dict[str, str], code: str) -> None:
    with pytest.raises(QueryError) as err:
        tenants_page(state_of(quota("t1", "cpu", 1)), CATALOGUE, **params)  # type: ignore[arg-type]
    assert err.value.code == code and err.value.status == 400


def test_a_token_of_another_sort_or_filter_is_refused() -> None:
    st = state_of(*[quota(f"t{i}", "cpu", 1) for i in range(3)])
    token = tenants_page(st, CATALOGUE, page_size="1")["next_page_token"]
    for params in ({"sort": "tenant_id"}, {"q": "t"}):
        with pytest.raises(QueryError):
            tenants_page(st, CATALOGUE, page_token=token, **params)


async def _as(principal: Principal, path: str) -> tuple[int, Any]:
    w = worker()
    fold_batch(w.state, [quota("t2", "cpu", 4)], FoldParams())
    client = TestClient(TestServer(build_app(w, Access(lambda request: principal))))
    await client.start_server()
    try:
        resp = await client.get(path)
        return resp.status, await resp.json()
    finally:
        await client.close()


def test_over_http_an_admin_sees_all_a_tenant_only_itself() -> None:
    status, body = asyncio.run(_as(Principal("a", "admin"), "/api/v1/tenants"))
    assert status == 200 and {r["tenant_id"] for r in body["tenants"]} == {"t1", "t2"}
    assert body["as_of"]["event_time"] is not None
    status, body = asyncio.run(
        _as(Principal("v", "viewer", "t2"), "/api/v1/tenants?sort=tenant_id")
    )
    assert status == 200 and [r["tenant_id"] for r in body["tenants"]] == ["t2"]
    assert body["total"] == 1
    status, body = asyncio.run(_as(Principal("v", "viewer", "t9"), "/api/v1/tenants"))
    assert status == 200 and body["tenants"] == [] and body["total"] == 0
    status, body = asyncio.run(_as(Principal("a", "admin"), "/api/v1/tenants?page_size=500"))
    assert status == 400 and body["error"]["code"] == "invalid_page_size"
