"""Projection workers against the real broker: views equal an independent recomputation, rebuilds
are identical, and what is emitted is emitted once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from novaquota.ops.workload import Workload, WorkloadSpec
from novaquota.projections.config import ProjectionSettings
from novaquota.projections.cost import load_catalogue
from novaquota.projections.store import RocksStore
from novaquota.projections.views import entity_key, history, overview
from novaquota.projections.worker import ProjectionWorker
from tests.integration.conftest import Stack
from tests.support import reference
from tests.support.events import command, vm_created
from tests.support.worker import free_port, provision

pytestmark = pytest.mark.integration

ALLOCATED = {"cpu", "memory", "gpu", "instances", "storage", "volumes", "snapshots"}


async def _fold(
    stack: Stack,
    data_dir: Path,
    *,
    rebuild: bool = False,
    emit: bool = False,
    pricing: dict[str, Any] | None = None,
) -> ProjectionWorker:
    store = RocksStore(data_dir / "views")
    if rebuild:
        store.drop_views()
    worker = ProjectionWorker(
        stack.settings,
        ProjectionSettings(data_dir=data_dir, emit=emit, web_port=0),
        store=store,
        catalogue=load_catalogue(data=pricing) if pricing else None,
    )
    await worker.start()
    try:
        await worker.run(asyncio.Event(), until_caught_up=True)
    finally:
        await worker.stop()
    return worker


def fold(stack: Stack, data_dir: Path, **kw: Any) -> ProjectionWorker:
    return asyncio.run(_fold(stack, data_dir, **kw))


def final_levels(worker: ProjectionWorker) -> dict[tuple[str, str, str, str], Decimal]:
    out = {}
    for key, minutes in worker.state.series.items():
        if key[1] == "system" or key[3] not in ALLOCATED:
            continue
        total = sum(row[0] for row in minutes.values())
        if total:
            out[key] = Decimal(total) / 1_000_000
    return out


def expected_minute_cpu(
    events: list[dict[str, Any] | bytes], tenant: str, start_us: int, minutes: int
) -> list[float]:
    """Mean cpu per minute of one tenant, from the raw events (the workload is in time order)."""
    rows = [
        (
            reference.parse_time_us(e["time"]),
            e["data"]["vm_id"],
            0.0 if e["type"] == "vm.deleted" else float(e["data"]["cpu"]),
        )
        for e in events
        if isinstance(e, dict)
        and e["type"].startswith("vm.")
        and e["data"]["tenant_id"] == tenant
        and float(e["data"].get("cpu", 0)) >= 0
    ]
    df = pd.DataFrame(rows, columns=["t", "vm", "cpu"]).sort_values("t", kind="stable")
    df["delta"] = df["cpu"] - df.groupby("vm")["cpu"].shift(fill_value=0.0)
    out = []
    for m in range(minutes):
        m0, m1 = start_us + m * 60_000_000, start_us + (m + 1) * 60_000_000
        held = (m1 - df["t"].clip(lower=m0)).clip(lower=0, upper=60_000_000)
        out.append(float((df["delta"] * held).sum() / 60_000_000))
    return out


def views_json(worker: ProjectionWorker, tenants: list[str]) -> bytes:
    cat = load_catalogue()
    body = {
        t: {
            "history": history(
                worker.state,
                entity_key(t, None, None),
                resource_type=None,
                start=None,
                end=None,
                step="minute",
            ),
            "overview": overview(worker.state, entity_key(t, None, None), cat),
        }
        for t in tenants
    }
    return json.dumps(body, sort_keys=True).encode()


def test_views_equal_reference_and_rebuild_is_identical(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stack_factory(3)
    wl = Workload(WorkloadSpec(tenants=12, seed=11, events_per_second=1.0))  # ~25 min
    stack.produce("quota-commands", list(wl.setup_commands()))
    events: list[dict[str, Any] | bytes] = list(wl.events(1500))
    events.insert(100, b"{not json")  # rejected by the codec: never counts
    bad = vm_created("tenant-000001", "vm-bad", cpu=-1, t=0)
    events.insert(200, bad)
    stack.produce("resource-events", events)

    worker = fold(stack, tmp_path / "a")
    assert worker.status.rejected == 2
    consumed = stack.consume("resource-events", expect=len(events))
    df = reference.parse_records(reference.from_consumer_records(consumed))
    expected = {
        k: v
        for k, v in reference.usage(df, include_gauges=False).items()
        if k[3] in ALLOCATED and v
    }
    assert final_levels(worker) == expected

    tenants = sorted({k[0] for k in expected})[:4]
    for tenant in tenants:  # time-weighted minute means equal a pandas recomputation
        start = reference.parse_time_us(events[0]["time"]) // 60_000_000 * 60_000_000  # type: ignore[index]
        want = expected_minute_cpu(events, tenant, start, 30)
        got = history(
            worker.state,
            entity_key(tenant, None, None),
            resource_type="cpu",
            start=str(start / 1e6),
            end=str(start / 1e6 + 30 * 60),
            step="minute",
        )
        used = [p["used"] for p in got["series"][0]["points"]]
        assert used == pytest.approx(want, abs=1e-5)

    first = views_json(worker, tenants)
    again = fold(stack, tmp_path / "a", rebuild=True)
    assert views_json(again, tenants) == first
    other = fold(stack, tmp_path / "b")  # a fresh directory: same views too
    assert views_json(other, tenants) == first
    a, b = RocksStore(tmp_path / "a" / "views"), RocksStore(tmp_path / "b" / "views")
    try:
        assert a.dump() == b.dump()
    finally:
        a.close()
        b.close()


def test_budget_crossing_alerts_once_and_rebuild_does_not_reemit(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stack_factory(2)
    stack.produce(
        "quota-commands",
        [command("budget.set", {"level": "tenant", "entity_id": "acme", "monthly_usd": 10}, t=0)],
    )
    # 1 core at 1 USD/h from 00:00; a later event moves the watermark to 12:00 (12 USD)
    stack.produce(
        "resource-events",
        [
            vm_created("acme", "v1", cpu=1, memory=1, t=0),
            vm_created("acme", "v2", cpu=0.001, memory=1, t=12 * 3600),
        ],
    )
    pricing = {"prices": {"cpu": 1.0, "memory": 0}}
    worker = fold(stack, tmp_path, emit=True, pricing=pricing)
    assert worker.status.emitted == 4
    alerts = stack.outputs("quota-alerts", expect=3, idle=2.0)
    cost = [a for a in alerts if a["data"]["kind"] == "cost"]
    assert sorted(float(a["data"]["threshold"]) for a in cost) == [80, 95, 100]
    violations = stack.outputs("quota-violations", expect=1, idle=2.0)
    assert [v["data"]["kind"] for v in violations] == ["budget_exceeded"]
    assert violations[0]["data"]["entity_id"] == "acme"

    again = fold(stack, tmp_path, rebuild=True, emit=True, pricing=pricing)
    assert again.status.emitted == 0
    assert len(stack.outputs("quota-alerts", idle=2.0)) == 3
    assert len(stack.outputs("quota-violations", idle=2.0)) == 1
    # the overview reads the violations topic: the episode is open
    ov = overview(again.state, entity_key("acme", None, None), again.catalogue)
    assert ov["open_violations"]["count"] == 1


def test_restart_resumes_from_the_stored_position(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stack_factory(2)
    stack.produce("resource-events", [vm_created("t9", f"v{i}", cpu=1, t=i) for i in range(5)])
    first = fold(stack, tmp_path)
    assert first.status.folded == 5
    stack.produce("resource-events", [vm_created("t9", "v9", cpu=2, t=60)])
    second = fold(stack, tmp_path)
    assert second.status.folded == 1  # only the new record
    assert final_levels(second)[("t9", "tenant", "t9", "cpu")] == 7


@pytest.mark.slow
def test_cli_run_serves_views_and_metrics_then_stops_cleanly(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stack_factory(2)
    stack.produce(
        "quota-commands",
        [
            command(
                "quota.set",
                {"level": "tenant", "entity_id": "t5", "resource_type": "cpu", "limit": 8},
                t=0,
            )
        ],
    )
    stack.produce("resource-events", [vm_created("t5", "v1", cpu=2, t=60)])
    port = free_port()
    creds = provision(tmp_path / "credentials")
    env = {
        **os.environ,
        **creds.env(),
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "NOVAQUOTA_TOPIC_PREFIX": stack.prefix,
        "NOVAQUOTA_APP_ID": f"{stack.prefix}enforcement",
        "NOVAQUOTA_PARTITIONS": "2",
    }
    argv = [
        sys.executable,
        "-m",
        "novaquota.ops.cli",
        "projections",
        "run",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path),
        "--no-emit",
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        stack.wait_for(lambda: _get(f"{base}/readyz")[0] == 200, timeout=60)
        status, body = _get(f"{base}/api/v1/quotas/overview?entity_id=t5", creds.admin_token)
        assert status == 200
        assert body["quotas"][0]["used"] == 2.0 and body["quotas"][0]["utilization"] == 25.0
        status, text = _get(f"{base}/metrics")
        assert 'projection_events_total{projection="usage"} 2.0' in text
        assert "projection_lag_seconds" in text and "projection_position" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    except OSError:
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()
