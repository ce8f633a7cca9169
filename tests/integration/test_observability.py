"""What /metrics, /healthz, /readyz and the logs of a real worker say matches what happened:
violation episodes on the violation topic, dead letters, processed events, top-N entities."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from novaquota.streams.metrics import Metrics
from novaquota.streams.observe import ObserveConfig, Observer
from novaquota.streams.settings import Settings
from tests.integration.conftest import Stack
from tests.support.events import command, vm_created, vm_deleted
from tests.support.worker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# cpu limit 4 for each tenant; cpu used at the end
LIMIT = 4
USED = {"obs-a": 6, "obs-b": 5, "obs-c": 3, "obs-d": 2, "obs-e": 1, "obs-f": 0.5}
BAD = [b"not json {", b"[1, 2]", b'{"specversion":"1.0","id":"x","source":"s","type":"vm.nope",'
       b'"time":"2026-11-01T00:00:00Z","data":{"tenant_id":"obs-a"}}']  # fmt: skip


def scrape(stack: Stack) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(stack.workers[0].url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(3) or ""))
        samples.append((m.group(1), labels, float(m.group(4))))
    return samples


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **want: str) -> float:
    return sum(
        v
        for n, labels, v in samples
        if n == name and all(labels.get(k) == x for k, x in want.items())
    )


def by(
    samples: list[tuple[str, dict[str, str], float]], name: str, *keys: str
) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for n, labels, v in samples:
        if n == name:
            k = tuple(labels.get(key, "") for key in keys)
            out[k] = out.get(k, 0.0) + v
    return out


def test_metrics_health_and_logs_match_what_happened(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(4)
    worker = stack.start_worker(NOVAQUOTA_METRICS_TOP_N="3", NOVAQUOTA_LOG_FORMAT="json")

    status, body = stack.get("/readyz")
    assert status == 200 and body["ready"] is True
    assert body["broker"]["reachable"] is True and body["tables_recovered"] is True
    status, body = stack.get("/healthz")
    assert status == 200 and body["status"] == "ok"

    commands = [
        command(
            "quota.set",
            {
                "level": "tenant",
                "entity_id": t,
                "tenant_id": t,
                "resource_type": "cpu",
                "limit": LIMIT,
            },
            t=0,
        )
        for t in USED
    ]
    stack.produce("quota-commands", commands)
    stack.wait_for(
        lambda: all(stack.get(f"/api/v1/quotas?entity_id={t}")[1].get("quotas") for t in USED)
    )
    events = []
    for i, (tenant, cpu) in enumerate(USED.items()):
        events.append(vm_created(tenant, "vm-1", cpu=cpu, memory=1024, t=10 + i))
    # obs-b goes over and comes back: one episode opened and resolved; it ends at 5 (over again)
    events += [
        vm_created("obs-c", "vm-2", cpu=2, t=30),  # 5 > 4: an episode opens
        vm_deleted("obs-c", "vm-2", t=40),  # 3: resolved
    ]
    stack.produce("resource-events", events)
    stack.produce("resource-events", list(BAD))

    violations = stack.wait_for(
        lambda: (
            out
            if len(out := stack.outputs("quota-violations", idle=1)) >= 4  # 3 opened, 1 resolved
            else None
        )
    )
    dead = stack.wait_for(
        lambda: d if len(d := stack.consume("dead-letter", expect=len(BAD))) >= len(BAD) else None
    )
    opened = Counter(
        (e["data"]["resource_type"], e["data"]["kind"])
        for e in violations
        if e["type"] == "quota.violation"
    )
    assert sum(opened.values()) == 3  # obs-a, obs-b, and obs-c's passing episode
    reasons = Counter(dict(r.headers)["error.reason"].decode() for r in dead)

    accepted_types = Counter(e["type"] for e in commands + events)

    def settled() -> list[tuple[str, dict[str, str], float]] | None:
        s = scrape(stack)
        done = total(s, "quota_events_processed_total", outcome="accepted")
        top = by(s, "quota_utilization", "entity_id")
        lag = total(s, "quota_consumer_lag_messages")
        if done == sum(accepted_types.values()) and len(top) == 3 and lag == 0:
            return s
        return None

    samples = stack.wait_for(settled, timeout=90)

    # violations: the counter equals the episodes opened on the violation topic
    assert {
        k: int(v) for k, v in by(samples, "quota_violations_total", "resource_type", "kind").items()
    } == dict(opened)
    # dead letters: by reason, and as invalid input
    assert {k[0]: int(v) for k, v in by(samples, "quota_dead_letter_total", "reason").items()} == (
        dict(reasons)
    )
    assert {
        k[0]: int(v)
        for k, v in by(samples, "quota_events_processed_total", "outcome", "type").items()
        if k[1] == "invalid"
    } == dict(reasons)
    # processed events by type
    assert {
        k[0]: int(v)
        for k, v in by(samples, "quota_events_processed_total", "type", "outcome").items()
        if k[1] == "accepted"
    } == dict(accepted_types)
    assert total(samples, "quota_event_lag_seconds_count") == sum(accepted_types.values())

    # per-entity series: only the top 3 by utilization, with exact values
    util = by(samples, "quota_utilization", "entity_id", "resource_type", "level")
    assert set(util) == {
        ("obs-a", "cpu", "tenant"),
        ("obs-b", "cpu", "tenant"),
        ("obs-c", "cpu", "tenant"),
    }
    assert util[("obs-a", "cpu", "tenant")] == pytest.approx(150.0)
    assert util[("obs-c", "cpu", "tenant")] == pytest.approx(75.0)
    usage = by(samples, "quota_usage", "entity_id")
    limit = by(samples, "quota_limit", "entity_id")
    assert usage == {("obs-a",): 6.0, ("obs-b",): 5.0, ("obs-c",): 3.0}
    assert limit == {("obs-a",): 4.0, ("obs-b",): 4.0, ("obs-c",): 4.0}
    assert total(samples, "quota_top_entities") == 3

    # worker state
    assert total(samples, "quota_broker_up") == 1
    assert total(samples, "quota_worker_ready") == 1
    assert total(samples, "quota_assigned_partitions") == 4
    lag_topics = {k[0] for k in by(samples, "quota_consumer_lag_messages", "topic")}
    assert stack.topic("resource-events") in lag_topics
    assert stack.topic("quota-commands") in lag_topics
    assert total(samples, "quota_table_keys", table="state", role="active") >= len(USED)

    # logs: one JSON object per line, dead letters logged as warnings
    lines = [ln for ln in worker.log_path.read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    dead_logs = [r for r in records if r["message"].startswith("dead-lettered")]
    assert len(dead_logs) == len(BAD)
    assert all(
        r["level"] == "WARNING" and r["logger"] == "novaquota.streams.agents" for r in dead_logs
    )

    # a restarted worker (new state dir, tables restored from the changelogs) exports the same
    # top entities without any new event: it scans the partitions it is assigned
    worker.stop()
    stack.start_worker(NOVAQUOTA_METRICS_TOP_N="3")
    stack.workers.pop(0)

    def restored() -> dict[tuple[str, ...], float] | None:
        u = by(scrape(stack), "quota_usage", "entity_id")
        return u if len(u) == 3 else None

    assert stack.wait_for(restored, timeout=90) == usage


class _ProbeHost:
    """What the broker probe reads of a ``QuotaApp``."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


async def _probe(bootstrap: str, until: Callable[[Observer], bool]) -> Observer:
    qa: object = _ProbeHost(
        settings=Settings(bootstrap_servers=bootstrap, app_id="probe-test"),
        metrics=Metrics(CollectorRegistry()),
    )
    obs = Observer(qa, ObserveConfig(metrics_top_n=0))  # type: ignore[arg-type]
    task = asyncio.create_task(obs.run_probe())
    try:
        deadline = time.monotonic() + 30
        while not until(obs) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return obs


def test_broker_probe_tells_reachable_from_unreachable(kafka_bootstrap: str) -> None:
    up = asyncio.run(_probe(kafka_bootstrap, lambda o: o.probe.reachable))
    assert up.probe.reachable and up.probe.error is None
    assert up.qa.metrics.registry.get_sample_value("quota_broker_up") == 1

    down = asyncio.run(_probe(f"127.0.0.1:{free_port()}", lambda o: o.probe.error is not None))
    assert not down.probe.reachable and down.probe.last_ok is None
    assert down.probe.error
    assert down.qa.metrics.registry.get_sample_value("quota_broker_up") == 0
