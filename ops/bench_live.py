"""``novaquota bench --only live``: the live WebSocket under the demo workload.

One enforcement worker runs the simulator's workload (event times stamped with the wall clock
as they are produced) while ``subscribers`` WebSocket clients watch its tenants, round robin,
one of them deliberately slow (it reads one message a second). Figures: delivery latency
(receipt minus the cause's event time: ``as_of`` of ``usage_updated``, ``detected_at`` of
violations and alerts), the worker's RSS before the clients connect and after the run, and what
the slow client received, missed and was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from novaquota.ops.processes import harness_auth, rss_mb
from novaquota.ops.publish import make_producer
from novaquota.ops.workload import US, Workload, WorkloadSpec, iso_us, tenant_key
from novaquota.schemas.common import parse_time_us
from novaquota.streams.settings import Settings

__all__ = ["live_section"]


def _event_time(text: str | None) -> float | None:
    if not text:
        return None
    return parse_time_us(text) / 1_000_000


class _Client:
    def __init__(self, url: str, *, slow: bool = False) -> None:
        self.url = url
        self.slow = slow
        self.latencies: list[float] = []
        self.received = 0
        self.by_type: dict[str, int] = {}
        self.lagging: dict[str, Any] | None = None
        self.close_code: int | None = None

    def note(self, raw: str) -> None:
        now = time.time()
        msg = orjson.loads(raw)
        self.received += 1
        self.by_type[msg["type"]] = self.by_type.get(msg["type"], 0) + 1
        data = msg["data"]
        if msg["type"] == "lagging":
            self.lagging = data
            return
        cause = _event_time(data.get("as_of") or data.get("detected_at"))
        if msg["type"] == "violation_resolved":
            cause = _event_time(data.get("resolved_at")) or cause
        if cause is not None:
            self.latencies.append((now - cause) * 1000)

    async def run(self, session: aiohttp.ClientSession, connected: asyncio.Event) -> None:
        async with session.ws_connect(
            self.url, heartbeat=30, headers=harness_auth().headers()
        ) as ws:
            connected.set()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.note(msg.data)
                    if self.slow:
                        await asyncio.sleep(1.0)
            self.close_code = ws.close_code


async def _run(
    s: Settings, url: str, tenants: list[str], subscribers: int, rate: float, seconds: float
) -> tuple[list[_Client], int]:
    clients = [
        _Client(f"{url}/api/v1/quotas/live?entity_id={tenants[i % len(tenants)]}", slow=i == 0)
        for i in range(subscribers)
    ]
    wl = Workload(
        WorkloadSpec(tenants=len(tenants), seed=11, start=datetime.now(UTC), events_per_second=rate)
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        events = [asyncio.Event() for _ in clients]
        tasks = [
            asyncio.create_task(c.run(session, e)) for c, e in zip(clients, events, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
        prod = make_producer(s, linger_ms=2)
        await prod.start()
        sent = 0
        try:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                while sent < int(elapsed * rate):
                    ev = wl.next_event()
                    ev["time"] = iso_us(int(time.time() * US))
                    await prod.send(s.topics.resource_events, orjson.dumps(ev), key=tenant_key(ev))
                    sent += 1
                await asyncio.sleep(0.005)
            await prod.flush()
        finally:
            await prod.stop()
        await asyncio.sleep(3.0)  # what is in flight arrives
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    return clients, sent


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def live_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: Any,
    subscribers: int = 200,
    rate: float = 200.0,
    seconds: float = 30.0,
) -> dict[str, Any]:
    from novaquota.ops.bench import _drain, _isolated, _produce_sync, _Worker

    s = _isolated(settings, "live", partitions)
    n_tenants = min(tenants, 200)
    wl = Workload(WorkloadSpec(tenants=n_tenants, seed=seed, start=datetime.now(UTC)))
    commands = list(wl.setup_commands())
    names = sorted(
        {
            c["data"]["tenant_id"]
            for c in commands
            if c["data"].get("tenant_id") and c["data"]["tenant_id"] != "system"
        }
    )
    _produce_sync(s, s.topics.quota_commands, commands)
    w = _Worker(s, work_dir / "live").start()
    try:
        w.ready(opts.timeout)
        _drain(w, len(commands), opts.timeout)
        time.sleep(2.0)  # the live tail is positioned once the worker is ready; let it settle
        rss_before = rss_mb(w.proc.pid)
        clients, sent = asyncio.run(_run(s, w.url, names, subscribers, rate, seconds))
        rss_after = rss_mb(w.proc.pid)
    finally:
        w.stop()
    fast = clients[1:]
    slow = clients[0]
    latencies = [x for c in fast for x in c.latencies]
    types: dict[str, int] = {}
    for c in fast:
        for k, v in c.by_type.items():
            types[k] = types.get(k, 0) + v
    return {
        "subscribers": subscribers,
        "tenants": len(names),
        "offered_events_per_second": rate,
        "seconds": seconds,
        "events": sent,
        "messages_received": sum(c.received for c in fast),
        "messages_by_type": types,
        "delivery_p50_ms": _pct(latencies, 0.50),
        "delivery_p99_ms": _pct(latencies, 0.99),
        "delivery_max_ms": round(max(latencies), 1) if latencies else None,
        "delivery_mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "fast_clients_closed": sum(1 for c in fast if c.close_code is not None),
        "worker_rss_mb_before": rss_before,
        "worker_rss_mb_after": rss_after,
        "slow_client": {
            "received": slow.received,
            "lagging_notice": slow.lagging is not None,
            "missed": (slow.lagging or {}).get("missed", 0),
            "close_code": slow.close_code,
        },
        "method": (
            "simulator workload with event times stamped at production; delivery = receipt "
            "wall time minus the cause's event time (usage_updated as_of: the newest event "
            "in the snapshot; violations and alerts: detected_at / resolved_at), so it "
            "includes the up-to-1 s coalescing of usage snapshots; the slow client reads one "
            "message a second"
        ),
    }
