"""Admission-check benchmark: one real worker holding >= 10,000 tenants with quotas at all four
levels (system, tenant, project, user), loaded through the topics.

Figures (JSON):

- ``batch``: checks/s through ``POST /api/v1/quotas/check:batch`` (100 checks a request, a few
  connections in parallel, closed loop);
- ``single``: latency of ``POST /api/v1/quotas/check`` at a fixed offered load (open loop:
  requests are sent on a schedule whatever the answers do, and latency is measured from the
  scheduled moment, so queueing is counted), p50/p90/p99/max, and the rate achieved;
- ``reserve``: the same for ``reserve: true`` (a record through the tenant's agent) at a lower
  load;
- ``reads``: the same for dashboard reads, ``GET /api/v1/quotas/utilization`` and
  ``GET /api/v1/quotas`` of random tenants in turn (the design's 200 requests/s).

The load generator runs on the same machine as the worker and takes CPU from it; the figures
say what one worker answers under that condition.

    python -m ops.bench_checks --tenants 10000 --out checks.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from novaquota.ops.processes import free_port, harness_auth, spawn, stop, wait_ready, worker_env
from novaquota.ops.publish import make_producer
from novaquota.ops.topics import create_topics
from novaquota.schemas.templates import BUILTIN_TEMPLATES
from novaquota.streams.settings import Settings, ensure_dir

__all__ = ["checks_section", "main"]

TIERS = sorted(BUILTIN_TEMPLATES)


def _command(type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "novaquota/bench",
        "type": type_,
        "time": "2026-11-01T00:00:00Z",
        "data": {"actor": "bench", **data},
    }


def setup_commands(tenants: int) -> Iterator[dict[str, Any]]:
    """A system quota, then per tenant: a tier (tenant level), a project and a user quota."""
    yield _command(
        "quota.set",
        {
            "level": "system",
            "entity_id": "system",
            "resource_type": "cpu",
            "limit": 10_000_000,
        },
    )
    for i in range(tenants):
        t = f"bt-{i:06d}"
        yield _command(
            "template.applied",
            {"template": TIERS[i % len(TIERS)], "level": "tenant", "entity_id": t, "tenant_id": t},
        )
        yield _command(
            "quota.set",
            {
                "level": "project",
                "entity_id": "p0",
                "tenant_id": t,
                "resource_type": "cpu",
                "limit": 4,
            },
        )
        yield _command(
            "quota.set",
            {
                "level": "user",
                "entity_id": "u0",
                "tenant_id": t,
                "resource_type": "memory",
                "limit": 8192,
            },
        )


async def _publish(settings: Settings, commands: Iterator[dict[str, Any]]) -> int:
    prod = make_producer(settings, linger_ms=20)
    await prod.start()
    n = 0
    try:
        futs = []
        for ev in commands:
            key = str(ev["data"].get("tenant_id", "system")).encode()
            futs.append(await prod.send(settings.topics.quota_commands, orjson.dumps(ev), key=key))
            n += 1
        await asyncio.gather(*futs)
    finally:
        await prod.stop()
    return n


def _request(rng: random.Random, tenants: int, *, reserve: bool = False) -> dict[str, Any]:
    t = f"bt-{rng.randrange(tenants):06d}"
    body: dict[str, Any] = {
        "tenant_id": t,
        "project_id": "p0",
        "user_id": "u0",
        "resources": {"cpu": rng.choice([1, 2, 4, 8]), "memory": rng.choice([1024, 4096])},
    }
    if reserve:
        body.update(reserve=True, ttl_seconds=60, idempotency_key=str(uuid.uuid4()))
    return body


def _percentiles(samples: list[float]) -> dict[str, float | int]:
    if not samples:
        return {"count": 0}
    s = sorted(samples)

    def pct(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 3)

    return {
        "count": len(s),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(s[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(s) * 1000, 3),
    }


async def _wait_loaded(session: aiohttp.ClientSession, url: str, tenants: int) -> float:
    """Until the last tenant's user quota answers (commands are processed in order per
    partition, so sample a spread of tenants)."""
    started = time.monotonic()
    probes = [f"bt-{i:06d}" for i in range(tenants - 1, -1, -max(1, tenants // 50))]
    pending = set(probes)
    while pending and time.monotonic() - started < 1800:
        for t in list(pending):
            body = {"tenant_id": t, "user_id": "u0", "resources": {"memory": 1}}
            async with session.post(f"{url}/api/v1/quotas/check", json=body) as resp:
                if resp.status == 200:
                    answer = await resp.json()
                    if any(c["level"] == "user" for c in answer["checks"]):
                        pending.discard(t)
        if pending:
            await asyncio.sleep(1)
    if pending:
        raise RuntimeError(f"{len(pending)} tenants not loaded")
    return time.monotonic() - started


async def _batch_rate(
    session: aiohttp.ClientSession, url: str, tenants: int, seconds: float, connections: int
) -> dict[str, Any]:
    rng = random.Random(11)
    bodies = [
        orjson.dumps({"checks": [_request(rng, tenants) for _ in range(100)]}) for _ in range(50)
    ]
    done = 0
    errors = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop(k: int) -> None:
        nonlocal done, errors
        i = k
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.post(
                f"{url}/api/v1/quotas/check:batch",
                data=bodies[i % len(bodies)],
                headers={"content-type": "application/json"},
            ) as resp:
                await resp.read()
                if resp.status == 200:
                    done += 100
                else:
                    errors += 1
            latencies.append(time.perf_counter() - t0)
            i += connections

    started = time.perf_counter()
    await asyncio.gather(*(loop(k) for k in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "checks_per_s": round(done / elapsed, 1),
        "requests": len(latencies),
        "errors": errors,
        "connections": connections,
        "checks_per_request": 100,
        "request_latency": _percentiles(latencies),
    }


Request = tuple[str, str, bytes | None]  # method, path and query, JSON body


def _check_requests(rng: random.Random, tenants: int, n: int, *, reserve: bool) -> list[Request]:
    return [
        ("POST", "/api/v1/quotas/check", orjson.dumps(_request(rng, tenants, reserve=reserve)))
        for _ in range(n)
    ]


def _read_requests(rng: random.Random, tenants: int, n: int) -> list[Request]:
    paths = ("/api/v1/quotas/utilization", "/api/v1/quotas")
    return [
        ("GET", f"{paths[i % 2]}?entity_id=bt-{rng.randrange(tenants):06d}", None) for i in range(n)
    ]


async def _fixed_load(
    session: aiohttp.ClientSession, url: str, rate: float, requests: list[Request]
) -> dict[str, Any]:
    """Send ``requests`` on a fixed schedule of ``rate`` a second (open loop)."""
    latencies: list[float] = []
    errors = 0

    async def one(method: str, path: str, body: bytes | None, scheduled: float) -> None:
        nonlocal errors
        headers = {"content-type": "application/json"} if body is not None else None
        async with session.request(method, url + path, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                errors += 1
        latencies.append(time.perf_counter() - scheduled)

    start = time.perf_counter() + 0.1
    tasks = []
    for i, (method, path, body) in enumerate(requests):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(method, path, body, at)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return {
        "offered_per_s": rate,
        "achieved_per_s": round(len(latencies) / elapsed, 1),
        "errors": errors,
        "latency": _percentiles(latencies),
    }


async def _measure(
    url: str,
    tenants: int,
    *,
    seconds: float,
    single_rate: float,
    reserve_rate: float,
    read_rate: float,
) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=256)
    rng = random.Random(12)
    headers = harness_auth().headers()
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
        loaded = await _wait_loaded(session, url, tenants)
        await _batch_rate(session, url, tenants, 2, 4)  # warm-up
        batch = await _batch_rate(session, url, tenants, seconds, 4)
        n = int(single_rate * seconds)
        single = await _fixed_load(
            session, url, single_rate, _check_requests(rng, tenants, n, reserve=False)
        )
        n = int(reserve_rate * seconds)
        reserve = await _fixed_load(
            session, url, reserve_rate, _check_requests(rng, tenants, n, reserve=True)
        )
        n = int(read_rate * seconds)
        reads = await _fixed_load(session, url, read_rate, _read_requests(rng, tenants, n))
    return {
        "load_wait_s": round(loaded, 1),
        "batch": batch,
        "single": single,
        "reserve": reserve,
        "reads": reads,
    }


def checks_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    seconds: float = 10.0,
    single_rate: float = 1000.0,
    reserve_rate: float = 100.0,
    read_rate: float = 200.0,
) -> dict[str, Any]:
    """Load ``tenants`` tenants' quotas into one fresh worker, then measure checks."""
    prefix = f"bench-checks-{uuid.uuid4().hex[:8]}."
    s = settings.model_copy(
        update={
            "topic_prefix": prefix,
            "partitions": partitions,
            "app_id": f"{prefix}enforcement",
        }
    )
    asyncio.run(create_topics(s))
    t0 = time.perf_counter()
    commands = asyncio.run(_publish(s, setup_commands(tenants)))
    port = free_port()
    env = worker_env(
        bootstrap=s.bootstrap_servers,
        topic_prefix=prefix,
        partitions=partitions,
        app_id=s.app_id,
        web_port=port,
        data_dir=work_dir / "checks-worker",
    )
    log = work_dir / "checks-worker.log"
    proc = spawn("novaquota.ops.cli", ("worker",), env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 180, log)
        measured = asyncio.run(
            _measure(
                url,
                tenants,
                seconds=seconds,
                single_rate=single_rate,
                reserve_rate=reserve_rate,
                read_rate=read_rate,
            )
        )
    finally:
        stop(proc)
    return {
        "tenants": tenants,
        "quotas": {"system": 1, "per_tenant": "tier template (4-6) + 1 project + 1 user"},
        "setup_commands": commands,
        "setup_s": round(time.perf_counter() - t0, 1),
        **measured,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.bench_checks", description=__doc__)
    p.add_argument("--tenants", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--single-rate", type=float, default=1000.0)
    p.add_argument("--reserve-rate", type=float, default=100.0)
    p.add_argument("--read-rate", type=float, default=200.0, help="dashboard reads/s")
    p.add_argument("--out")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="novaquota-bench-checks-") as tmp:
        report = checks_section(
            Settings(),
            tenants=args.tenants,
            seed=7,
            partitions=args.partitions,
            work_dir=Path(tmp),
            seconds=args.seconds,
            single_rate=args.single_rate,
            reserve_rate=args.reserve_rate,
            read_rate=args.read_rate,
        )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        ensure_dir(Path(args.out).parent)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
