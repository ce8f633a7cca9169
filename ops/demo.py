"""``novaquota demo``: the main job. A local broker, the topics, an enforcement worker and a
live workload, with a terminal view of what happens; Ctrl-C (or ``--duration``) stops it all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from ops import kafka_local
from ops.processes import events_processed, spawn, stop
from ops.publish import make_producer
from ops.topics import create_topics
from ops.workload import Workload, WorkloadSpec
from streams.settings import Settings

__all__ = ["run_demo"]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _processed(url: str) -> int:
    try:
        return int(events_processed(url, timeout=2))
    except OSError:
        return -1


async def _drive(
    settings: Settings, url: str, rate: float, tenants: int, duration: float | None
) -> None:
    now = datetime.now(UTC)
    wl = Workload(WorkloadSpec(tenants=tenants, seed=11, start=now, events_per_second=rate))
    prod = make_producer(settings)
    t = settings.topics
    cons = AIOKafkaConsumer(
        t.quota_violations,
        t.quota_alerts,
        **settings.kafka_client_config(),
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    await prod.start()
    await cons.start()
    kinds: Counter[str] = Counter()
    recent: list[str] = []

    async def watch() -> None:
        async for rec in cons:
            ev = orjson.loads(rec.value)
            d = ev["data"]
            label = f"{ev['type'].removeprefix('quota.')}:{d.get('kind')}"
            kinds[label] += 1
            recent.append(
                f"{ev['type']:<26} {d.get('kind', ''):<15} {d['tenant_id']:<14} "
                f"{d.get('level', '')}/{d.get('entity_id', '')} {d.get('resource_type', '')}"
            )
            del recent[:-6]

    watcher = asyncio.create_task(watch())
    try:
        for ev in wl.setup_commands():
            await prod.send(t.quota_commands, orjson.dumps(ev), key=_key(ev))
        started = time.monotonic()
        sent = 0
        last_print = 0.0
        events = wl.events(10**12)
        while duration is None or time.monotonic() - started < duration:
            due = int((time.monotonic() - started) * rate)
            while sent < due:
                ev = next(events)
                ev["time"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                await prod.send(t.resource_events, orjson.dumps(ev), key=_key(ev))
                sent += 1
            if time.monotonic() - last_print >= 2:
                last_print = time.monotonic()
                _view(sent, _processed(url), kinds, recent, time.monotonic() - started, url)
            await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await prod.stop()
        await cons.stop()


def _key(ev: dict[str, Any]) -> bytes:
    return str(ev["data"].get("tenant_id", "system")).encode()


def _view(
    sent: int, processed: int, kinds: Counter[str], recent: list[str], secs: float, url: str
) -> None:
    lines = [
        f"--- novaquota demo  {secs:6.0f}s  published {sent:,}  processed {processed:,}  "
        f"({sent / max(secs, 1e-9):,.0f}/s offered)",
        "    outputs: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "-",
        *("    " + r for r in recent),
        f"    API {url}/api/v1/quotas/utilization?entity_id=tenant-000000   metrics {url}/metrics",
    ]
    print("\n".join(lines), flush=True)


def run_demo(settings: Settings, *, rate: float, tenants: int, duration: float | None) -> int:
    started_broker = False
    if not kafka_local.is_reachable(settings.bootstrap_servers):
        print(f"starting the local Kafka broker on {settings.bootstrap_servers} ...")
        kafka_local.start(settings)
        started_broker = True
    asyncio.run(create_topics(settings))
    url = f"http://{settings.web_host}:{settings.web_port}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers}
    worker = spawn("ops.cli", ("worker",), env, Path("var/demo/worker.log"))
    print(f"worker starting (log: var/demo/worker.log), API and metrics on {url}")
    try:
        deadline = time.monotonic() + 120
        while not _ready(url):
            if worker.poll() is not None or time.monotonic() > deadline:
                print("the worker did not become ready; see var/demo/worker.log")
                return 1
            time.sleep(0.5)
        asyncio.run(_drive(settings, url, rate, tenants, duration))
    except KeyboardInterrupt:
        print("\nstopping ...")
    finally:
        stop(worker)
        if started_broker:
            kafka_local.stop(settings)
    print("demo stopped; nothing left running")
    return 0


def main(argv: list[str], settings: Settings) -> int:
    p = argparse.ArgumentParser(prog="novaquota demo", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="resource events per second")
    p.add_argument("--tenants", type=int, default=200)
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    args = p.parse_args(argv)
    return run_demo(settings, rate=args.rate, tenants=args.tenants, duration=args.duration)
