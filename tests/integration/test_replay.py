"""Replay against a real worker: state as of T equals what the worker held at T."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from novaquota.projections import compliance
from novaquota.projections import replay as replay_mod
from novaquota.projections.replay import ReplayResult, iso, parse_time
from novaquota.schemas.amounts import from_micros
from novaquota.streams import quota as q
from tests.integration.conftest import Stack
from tests.support.events import cloudevent, command, vm_created, vm_deleted

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENANTS = ("acme", "globex", "initech")


def at(base: datetime, seconds: float) -> datetime:
    return base + timedelta(seconds=seconds)


def quota(tenant: str, res: str, limit: Any, base: datetime, t: float, **kw: Any) -> dict:
    data = {
        "level": kw.pop("level", "tenant"),
        "entity_id": kw.pop("entity_id", tenant),
        "tenant_id": tenant,
        "resource_type": res,
        "limit": limit,
        **kw,
    }
    return command("quota.set", data, t=at(base, t))


def worker_view(stack: Stack) -> dict[str, Any]:
    status, body = stack.get("/internal/usage")
    assert status == 200, body
    tenants: dict[str, Any] = body["tenants"]
    return tenants


def replay_view(result: ReplayResult) -> dict[str, Any]:
    """The same shape as the worker's debug endpoint, from the replayed state."""
    out: dict[str, Any] = {}
    for tenant in result.tenant_ids():
        st = result.state(tenant)
        assert isinstance(st, q.TenantState)
        out[tenant] = {
            "usage": {
                ek: {r: str(from_micros(a)) for r, a in per.items()} for ek, per in st.usage.items()
            },
            "open": {
                qk.replace("\x1f", "/"): {k: ep[0] for k, ep in per.items()}
                for qk, per in st.episodes.items()
                if per
            },
            "quotas": sum(len(per) for per in st.quotas.values()),
        }
    return out


def comparable(view: dict[str, Any]) -> dict[str, Any]:
    return {
        t: {
            "usage": {ek: per for ek, per in v["usage"].items() if per},
            "open": v["open"],
            "quotas": v["quotas"],
        }
        for t, v in view.items()
    }


def wait_processed(stack: Stack, expected_wm: dict[str, int], quotas: dict[str, int]) -> None:
    def done() -> bool:
        view = worker_view(stack)
        return all(
            t in view and view[t]["watermark_us"] >= wm and view[t]["quotas"] == quotas.get(t, 0)
            for t, wm in expected_wm.items()
        )

    stack.wait_for(done, timeout=120)


def max_times(events: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for ev in events:
        t = ev["data"]["tenant_id"]
        out[t] = max(out.get(t, 0), parse_time(ev["time"]))
    return out


def test_replay_as_of_t_agrees_with_the_worker_and_is_byte_identical(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)

    # --- phase 1: quotas first (so the worker's two input agents cannot race), then usage
    commands1 = [
        quota("acme", "cpu", 8, base, 0),
        quota("acme", "memory", 4096, base, 0.1, level="project", entity_id="web"),
        quota("globex", "cpu", 2, base, 0.2),
        quota("initech", "instances", 3, base, 0.3),
    ]
    stack.produce("quota-commands", commands1)
    wait_processed(stack, max_times(commands1), {"acme": 2, "globex": 1, "initech": 1})

    events1 = [
        vm_created("acme", "a1", cpu=2.5, memory=1024, t=at(base, 1), project_id="web"),
        vm_created("acme", "a2", cpu=4, memory=4000, t=at(base, 2), project_id="web"),  # over
        vm_created("acme", "a3", cpu=0.125, memory=64, t=at(base, 3), user_id="ann"),
        cloudevent(
            "vm.resized",
            {"tenant_id": "acme", "vm_id": "a1", "cpu": 1.75, "memory": 512, "project_id": "web"},
            t=at(base, 4),
        ),
        vm_created("globex", "g1", cpu=1, t=at(base, 1)),
        vm_created("globex", "g2", cpu=1.5, t=at(base, 2)),  # over 2
        vm_deleted("globex", "g0", t=at(base, 3)),  # an unknown instance: a tombstone
        cloudevent(
            "volume.created",
            {"tenant_id": "initech", "volume_id": "v1", "size_gb": 50},
            t=at(base, 1),
        ),
        vm_created("initech", "i1", cpu=1, t=at(base, 2)),
        vm_created("initech", "i2", cpu=1, t=at(base, 3)),
        vm_deleted("initech", "i1", t=at(base, 5)),
    ]
    # some producers key by something else: the worker routes by data.tenant_id
    stack.produce("resource-events", events1[:6])
    stack.produce("resource-events", events1[6:], key=lambda ev: b"not-the-tenant")
    stack.produce("resource-events", [b'{"specversion": "1.0", "broken'])
    wait_processed(stack, max_times(commands1 + events1), {"acme": 2, "globex": 1, "initech": 1})
    at_t = worker_view(stack)

    def two_opened() -> list[dict[str, Any]] | None:
        out = stack.outputs("quota-violations", idle=1.0)
        return out if sum(e["type"] == "quota.violation" for e in out) >= 2 else None

    worker_outputs = stack.wait_for(two_opened)
    until_us = int(time.time() * 1000) * 1000
    time.sleep(1.2)  # everything produced from here on is stamped after T

    # --- phase 2: more changes after T
    commands2 = [quota("acme", "cpu", 16, base, 10)]
    stack.produce("quota-commands", commands2)
    events2 = [
        vm_deleted("acme", "a2", t=at(base, 11)),
        vm_created("globex", "g3", cpu=7, t=at(base, 11)),
        vm_created("initech", "i3", cpu=1, t=at(base, 12)),
        vm_created("hooli", "h1", cpu=1, t=at(base, 12)),
    ]
    stack.produce("resource-events", events2)
    wait_processed(
        stack,
        max_times(commands1 + events1 + commands2 + events2),
        {"acme": 2, "globex": 1, "initech": 1},
    )
    after_t = worker_view(stack)
    assert comparable(after_t) != comparable(at_t)  # phase 2 changed the worker's state

    settings = stack.settings
    result = asyncio.run(replay_mod.replay(settings, until_us))
    replayed = comparable(replay_view(result))
    assert replayed == comparable({t: at_t[t] for t in at_t})
    assert replayed["acme"]["usage"]["Tacme"]["cpu"] == "5.875"
    assert set(replayed["acme"]["open"]) == {"Pweb/memory"}
    assert set(replayed["globex"]["open"]) == {"Tglobex/cpu"}
    assert "hooli" not in replayed
    assert result.counts["dead_lettered"] == 1

    # the episodes the worker emitted by T are the ones the replay re-derived, ids included
    opened_by_worker = sorted(
        e["data"]["violation_id"] for e in worker_outputs if e["type"] == "quota.violation"
    )
    opened_by_replay = sorted(
        o.event["data"]["violation_id"]
        for o in result.outputs
        if o.event["type"] == "quota.violation"
    )
    assert opened_by_replay == opened_by_worker and len(opened_by_worker) == 2

    # the replay up to now agrees with the worker's current state too
    now = asyncio.run(replay_mod.replay(settings, int(time.time() * 1000) * 1000))
    assert comparable(replay_view(now)) == comparable(after_t)

    # the report: the same log replayed twice gives byte-identical output in every format
    until = iso(until_us)
    assert until is not None
    for fmt in ("json", "csv", "html"):
        files = [tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"]
        for f in files:
            argv = ["--until", until, "--format", fmt, "--out", str(f)]
            assert replay_mod.main(argv, settings) == 0
        assert files[0].read_bytes() == files[1].read_bytes()
        assert len(files[0].read_bytes()) > 500
    doc = orjson.loads((tmp_path / "a.json").read_bytes())
    [acme] = [t for t in doc["tenants"] if t["tenant_id"] == "acme"]
    [cpu] = [u for u in acme["usage"] if (u["level"], u["resource_type"]) == ("tenant", "cpu")]
    assert cpu["used"] == "5.875"
    cited = {(c["key"], c["event"]["topic"]) for c in cpu["contributions"]}
    assert cited == {
        ("vm:a1", stack.topic("resource-events")),
        ("vm:a2", stack.topic("resource-events")),
        ("vm:a3", stack.topic("resource-events")),
    }
    assert cpu["quota"]["limit"] == "8"  # the raise to 16 came after T
    assert doc["dead_letters"][0]["reason"] == "malformed_json"

    # the compliance report over the log as it stood at T counts the same episodes
    start = iso(parse_time(base.isoformat()) - 60_000_000)
    assert start is not None
    out = tmp_path / "compliance.json"
    argv = ["report", "--start", start, "--end", until, "--as-of", until, "--out", str(out)]
    assert compliance.main(argv, settings) == 0
    rep = orjson.loads(out.read_bytes())
    assert sorted(v["violation_id"] for v in rep["violations"]) == opened_by_worker
    assert rep["summary"]["opened_by_kind"]["over_limit"] == 2
    assert {c["type"] for c in rep["changes"]} == {"audit.quota_set"}
    assert len(rep["changes"]) == 4
    # the whole log as it stands now also holds the raise made after T (its event time is
    # inside the period), with its actor
    assert compliance.main(["--start", start, "--end", until, "--out", str(out)], settings) == 0
    now_rep = orjson.loads(out.read_bytes())
    assert len(now_rep["changes"]) == 5
    assert now_rep["changes"][-1]["after"]["limit"] == "16"
    assert now_rep["changes"][-1]["actor"] == "tests"


def test_replay_applies_the_workers_tick_records(
    stack_factory: Callable[..., Stack],
) -> None:
    """A burst expiry fired by a worker tick (no input after it) is re-derived from that
    same tick record, with the same violation id."""
    stack = stack_factory(2)
    stack.start_worker()
    base = datetime.now(UTC) - timedelta(seconds=1)
    cmd = quota("acme", "cpu", 4, base, 0, burst_limit=8, burst_seconds=2)
    stack.produce("quota-commands", [cmd])
    wait_processed(stack, max_times([cmd]), {"acme": 1})
    stack.produce("resource-events", [vm_created("acme", "a1", cpu=6, t=at(base, 0.5))])

    def expired() -> list[dict[str, Any]] | None:
        out = stack.outputs("quota-violations", idle=0.5)
        hits = [e for e in out if e["data"]["kind"] == "burst_expired"]
        return hits or None

    [worker_ep] = stack.wait_for(expired, timeout=90)
    until_us = int(time.time() * 1000) * 1000
    result = asyncio.run(replay_mod.replay(stack.settings, until_us))
    [opened] = [
        o
        for o in result.outputs
        if o.event["type"] == "quota.violation" and o.event["data"]["kind"] == "burst_expired"
    ]
    assert opened.event["data"]["violation_id"] == worker_ep["data"]["violation_id"]
    assert opened.event["data"]["detected_at"] == worker_ep["data"]["detected_at"]
    cause = opened.cause.position
    assert cause is not None and cause.topic == stack.topic("internal-ticks")
    assert result.counts["tenant_ticks"] >= 1 and result.counts["final_ticks"] == 0
    assert replay_view(result)["acme"]["open"] == worker_view(stack)["acme"]["open"]


def test_replay_of_a_missing_topic_set_is_a_clear_error(
    kafka_bootstrap: str, topic_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from novaquota.streams.settings import Settings

    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    assert replay_mod.main(["--until", "2026-11-01T00:00:00Z"], settings) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and f"{topic_prefix}quota-commands" in err
