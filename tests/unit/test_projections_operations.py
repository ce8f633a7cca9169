"""The operations overview's parts without a broker: the dead-letter window, the group's
members and their lag and rate, and the route's admin-only rule."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from novaquota.projections.folds import fold_violation
from novaquota.projections.http import build_app
from novaquota.projections.operations import (
    RECENT,
    WINDOW_MS,
    DeadLetters,
    GroupSample,
    Member,
    _members,
    open_violations_by_kind,
    workers_view,
)
from novaquota.streams.auth import Access, Principal
from tests.unit.test_projections_http import worker

NOW = 1_800_000_000_000


def headers(reason: str, message: str = "bad") -> list[tuple[str, bytes]]:
    return [
        ("error.reason", reason.encode()),
        ("error.message", message.encode()),
        ("error.topic", b"p.resource-events"),
    ]


def structured(tenant: str) -> bytes:
    return json.dumps(
        {"type": "vm.created", "source": "nova/host-1", "data": {"tenant_id": tenant}}
    ).encode()


def test_dead_letters_of_the_last_hour_bounded() -> None:
    dl = DeadLetters()
    dl.add(NOW - WINDOW_MS - 1, b"x", headers("invalid_json"), NOW)  # too old: not counted
    for i in range(100):
        dl.add(NOW - 50 * 60_000 + i * 1000, structured(f"t{i}"), headers("invalid_field"), NOW)
    dl.add(NOW - 1000, b"{not json", headers("invalid_json", "line 1"), NOW)
    binary = [("ce_type", b"vm.deleted"), ("ce_source", b"nova/x"), *headers("unknown_type")]
    dl.add(NOW - 500, json.dumps({"tenant_id": "tb"}).encode(), binary, NOW)
    view = dl.view(NOW)
    assert view["total"] == 102
    assert view["by_reason"] == {"invalid_field": 100, "invalid_json": 1, "unknown_type": 1}
    recent = view["recent"]
    assert len(recent) == RECENT
    first, second, third = recent[:3]
    assert (first["reason"], first["type"], first["source"], first["tenant_id"]) == (
        "unknown_type",
        "vm.deleted",
        "nova/x",
        "tb",
    )
    assert second["reason"] == "invalid_json" and second["type"] is None
    assert second["message"] == "line 1"
    assert third["tenant_id"] == "t99" and third["type"] == "vm.created"
    assert third["time"].endswith("Z")
    assert len(dl.recent) == RECENT
    later = dl.view(NOW + 55 * 60_000)  # the first hundred have left the hour
    assert later["by_reason"] == {"invalid_json": 1, "unknown_type": 1}
    assert [r["reason"] for r in later["recent"]] == ["unknown_type", "invalid_json"]
    assert len(dl.buckets) <= 61


def test_workers_lag_and_rate_over_their_input_partitions() -> None:
    inputs = ("p.resource-events", "p.quota-commands")
    a = Member(
        "m-a",
        "faust-a",
        "/10.0.0.1",
        (
            ("p.resource-events", 0),
            ("p.quota-commands", 0),
            ("p.internal-ticks", 0),
            ("p.resource-events", 2),
        ),
    )
    b = Member("m-b", "faust-b", "/10.0.0.2", (("p.resource-events", 1),))
    ends = {
        ("p.resource-events", 0): 100,
        ("p.quota-commands", 0): 10,
        ("p.resource-events", 2): 50,
        ("p.resource-events", 1): 7,
        ("p.internal-ticks", 0): 999,
    }
    before = GroupSample(
        100.0, (a, b), {("p.resource-events", 0): 40, ("p.resource-events", 1): 7}, ends
    )
    after = GroupSample(
        110.0,
        (a, b),
        {("p.resource-events", 0): 90, ("p.quota-commands", 0): 10, ("p.resource-events", 1): 7},
        ends,
    )
    assert workers_view(None, None, inputs) == []
    first = workers_view(before, None, inputs)
    assert first[0]["events_per_second"] is None
    assert first[0]["lag"] == 60 + 10 + 50  # nothing committed on two of them yet
    rows = workers_view(after, before, inputs)
    assert [r["member_id"] for r in rows] == ["m-a", "m-b"]
    assert rows[0]["partitions"] == [0, 2]
    assert rows[0]["lag"] == 10 + 0 + 50  # the ticks topic is not an input
    assert rows[0]["events_per_second"] == 6.0  # (50 + 10) in 10 s
    assert rows[1] == {
        "member_id": "m-b",
        "client_id": "faust-b",
        "host": "/10.0.0.2",
        "partitions": [1],
        "lag": 0,
        "events_per_second": 0.0,
    }


def test_members_are_read_from_a_describe_groups_answer() -> None:
    assignment = ConsumerProtocolMemberAssignment(
        0, [("p.resource-events", [3, 1]), ("p.internal-ticks", [1])], b"{}"
    ).encode()
    group = (
        0,
        "g",
        "Stable",
        "consumer",
        "faust",
        [("m1", "c1", "/127.0.0.1", b"", assignment), ("m2", "c2", "/h", b"", b"junk")],
    )
    other = (0, "other", "Stable", "consumer", "range", [("x", "y", "z", b"", assignment)])
    members = _members([SimpleNamespace(groups=[group, other])], "g")
    assert [m.member_id for m in members] == ["m1", "m2"]
    assert set(members[0].assigned) == {
        ("p.resource-events", 3),
        ("p.resource-events", 1),
        ("p.internal-ticks", 1),
    }
    assert members[1].assigned == ()


def test_open_violations_by_kind() -> None:
    w = worker()
    for i, kind in enumerate(["over_limit", "over_limit", "window_exceeded"]):
        fold_violation(
            w.state, "quota.violation", {"violation_id": f"v{i}", "tenant_id": "t", "kind": kind}
        )
    fold_violation(w.state, "quota.violation_resolved", {"violation_id": "v2"})
    assert open_violations_by_kind(w.state) == {"over_limit": 2}


async def _get(principal: Principal) -> tuple[int, Any]:
    client = TestClient(TestServer(build_app(worker(), Access(lambda request: principal))))
    await client.start_server()
    try:
        resp = await client.get("/api/v1/operations/overview")
        return resp.status, await resp.json()
    finally:
        await client.close()


def test_the_overview_is_for_admins_only_404_for_any_tenant_role() -> None:
    status, body = asyncio.run(_get(Principal("a", "admin")))
    assert status == 200
    assert set(body) >= {"open_violations_by_kind", "dead_letters", "workers", "as_of"}
    assert body["dead_letters"] == {"total": 0, "by_reason": {}, "recent": []}
    assert body["workers"] == []
    for role in ("tenant-admin", "viewer", "service"):
        status, body = asyncio.run(_get(Principal("t", role, "t1")))  # type: ignore[arg-type]
        assert status == 404 and body["error"]["code"] == "not_found", role
