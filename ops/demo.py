"""``novaquota demo``: the main job. A local broker, the topics, an enforcement worker, the
projection worker and a live simulated workload (every tier, daily seasonality compressed into
``--day-seconds``, a few misbehaving tenants), with a terminal view of what happens.

Ctrl-C (or ``--duration``) stops it all: the workload, the projection worker, the enforcement
worker and, if the demo started it, the broker. Nothing is left running.

The API needs a token: the demo makes an admin token named ``demo`` in the token file (replacing
the previous run's) and prints how to call the API with it, and the dashboard's URL (served by
the projection worker at ``/ui/``; log in with that token). No browser is opened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from novaquota.ops import kafka_local
from novaquota.ops.processes import events_processed, http_status, spawn, stop
from novaquota.ops.publish import make_producer
from novaquota.ops.topics import create_topics
from novaquota.ops.workload import US, Workload, WorkloadSpec, iso_us, tenant_key
from novaquota.schemas.common import parse_time_us
from novaquota.streams.settings import Settings

__all__ = ["DemoOptions", "main", "run_demo"]

STRUCTURED = [("content-type", b"application/cloudevents+json")]
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class DemoOptions:
    """What ``novaquota demo`` was asked for (see ``--help``)."""

    def __init__(
        self,
        *,
        rate: float = 200.0,
        tenants: int = 200,
        duration: float | None = None,
        seed: int | None = None,
        day_seconds: float = 600.0,
        misbehaving: float = 0.05,
        projections_port: int = 6067,
        log_dir: Path = Path("var/demo"),
    ) -> None:
        self.rate = rate
        self.tenants = tenants
        self.duration = duration
        # a fresh seed per run by default: the same ids again would be deduplicated
        self.seed = seed if seed is not None else int(time.time())
        self.day_seconds = day_seconds
        self.misbehaving = misbehaving
        self.projections_port = projections_port
        self.log_dir = log_dir


def _processed(url: str) -> int:
    try:
        return int(events_processed(url, timeout=2))
    except OSError:
        return -1


def _top_utilization(url: str, tenant_prefix: str, n: int = 3) -> list[str]:
    """The most utilized entities of this run's tenants, from the worker's bounded top-N
    ``quota_utilization`` series."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        if not line.startswith("quota_utilization{"):
            continue
        labels, _, value = line.rpartition(" ")
        fields = dict(_LABEL.findall(labels))
        # the series carry no tenant label: tenant-level rows name the tenant
        if fields.get("level") == "tenant" and fields.get("entity_id", "").startswith(
            tenant_prefix
        ):
            rows.append((float(value), fields))
    rows.sort(key=lambda r: -r[0])
    return [f"{f.get('entity_id', '')} {f.get('resource_type', '')} {v:.0f}%" for v, f in rows[:n]]


class _Checks:
    """Admission checks the demo asks while the workload runs (the check API, batched)."""

    def __init__(self) -> None:
        self.allowed = 0
        self.denied = 0
        self.last_denial = ""
        self.latency_ms = 0.0

    async def run(
        self, url: str, token: str, wl: Workload, tenants: int, rng: random.Random
    ) -> None:
        from novaquota.client import AsyncQuotaClient, ClientConfig, QuotaClientError

        config = ClientConfig(timeout_seconds=5, retries=2)
        async with AsyncQuotaClient(url, token=token, config=config) as client:
            while True:
                batch = [
                    {
                        "tenant_id": wl.tenant(rng.randrange(tenants)),
                        "resources": {"cpu": rng.choice([1, 2, 4, 8, 16]), "memory": 4096},
                    }
                    for _ in range(20)
                ]
                t0 = time.perf_counter()
                try:
                    answers = await client.check_batch(batch)
                except QuotaClientError:  # the demo keeps going while the API recovers
                    answers = []
                self.latency_ms = (time.perf_counter() - t0) * 1000
                for a in answers:
                    if isinstance(a, QuotaClientError) or a.degraded:
                        continue
                    if a.allowed:
                        self.allowed += 1
                    else:
                        self.denied += 1
                        self.last_denial = a.reason
                await asyncio.sleep(2)

    def line(self) -> str:
        text = (
            f"    checks: {self.allowed:,} allowed, {self.denied:,} denied "
            f"(batch of 20 in {self.latency_ms:.0f} ms)"
        )
        if self.last_denial:
            text += f"; last denial: {self.last_denial[:90]}"
        return text


def _paced(wl: Workload, wall0: float, ev0_us: int) -> Iterator[tuple[float, dict[str, Any]]]:
    """(wall-clock due time, event): event time runs with the wall clock."""
    while True:
        ev = wl.next_event()
        yield wall0 + (wl.time_us - ev0_us) / US, ev


async def _drive(
    settings: Settings, url: str, token: str, opts: DemoOptions, urls: list[str]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    wl = Workload(
        WorkloadSpec(
            tenants=opts.tenants,
            seed=opts.seed,
            start=now,
            events_per_second=opts.rate,
            day_seconds=opts.day_seconds,
            misbehaving=opts.misbehaving,
            # tenants of this run only: a broker kept from an earlier demo still holds its VMs
            tenant_prefix=f"demo{opts.seed % 100_000:05d}-",
        )
    )
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
    checks = _Checks()
    asker = asyncio.create_task(checks.run(url, token, wl, opts.tenants, random.Random(opts.seed)))
    try:
        for ev in wl.setup_commands():
            await prod.send(
                t.quota_commands, orjson.dumps(ev), key=tenant_key(ev), headers=STRUCTURED
            )
        bad = ", ".join(wl.tenant(i) for i in sorted(wl.misbehaving)) or "none"
        tiers = Counter(wl.tier_of(i) for i in range(opts.tenants))
        mix = ", ".join(f"{k} {v}" for k, v in tiers.items())
        print(f"quotas applied for {opts.tenants} tenants ({mix}); misbehaving: {bad}", flush=True)
        started = time.monotonic()
        sent = 0
        last_print = 0.0
        events = _paced(wl, started, wl.time_us)
        due, ev = next(events)
        while opts.duration is None or time.monotonic() - started < opts.duration:
            while due <= time.monotonic():
                ev["time"] = iso_us(min(_event_us(ev), int(time.time() * US)))
                await prod.send(
                    t.resource_events, orjson.dumps(ev), key=tenant_key(ev), headers=STRUCTURED
                )
                sent += 1
                due, ev = next(events)
            if time.monotonic() - last_print >= 2:
                last_print = time.monotonic()
                secs = time.monotonic() - started
                phase = wl.phase(wl.time_us)
                top = await asyncio.to_thread(_top_utilization, url, wl.tenant(0)[:-6])
                _view(
                    sent,
                    _processed(url),
                    kinds,
                    recent,
                    secs,
                    phase,
                    wl.rate_at(wl.time_us),
                    urls,
                    extra=[checks.line(), "    top tenant utilization: " + ("; ".join(top) or "-")],
                )
            await asyncio.sleep(min(0.05, max(0.0, due - time.monotonic())))
    finally:
        for task in (watcher, asker):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await prod.stop()
        await cons.stop()


def _event_us(ev: dict[str, Any]) -> int:
    return parse_time_us(ev["time"])


def _view(
    sent: int,
    processed: int,
    kinds: Counter[str],
    recent: list[str],
    secs: float,
    phase: float,
    rate: float,
    urls: list[str],
    extra: list[str] | None = None,
) -> None:
    hour = (phase + 1) / 2
    bar = "#" * int(hour * 20)
    lines = [
        f"--- novaquota demo  {secs:6.0f}s  published {sent:,}  processed {processed:,}  "
        f"offered now {rate:,.0f}/s  day [{bar:<20}]",
        "    outputs: " + (", ".join(f"{k}={v}" for k, v in sorted(kinds.items())) or "-"),
        *(extra or []),
        *("    " + r for r in recent),
        *("    " + u for u in urls),
    ]
    print("\n".join(lines), flush=True)


def _start_projections(
    env: dict[str, str], opts: DemoOptions
) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Start ``novaquota projections run``; if it exits at once, go on without it."""
    log = opts.log_dir / "projections.log"
    proc = spawn(
        "novaquota.ops.cli", ("projections", "run", "--port", str(opts.projections_port)), env, log
    )
    url = f"http://127.0.0.1:{opts.projections_port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop(proc)
            return None, (
                f"projections: not running (exited with {proc.returncode}, see {log}); "
                "the demo continues without them"
            )
        if http_status(url + "/healthz") is not None:
            break
        time.sleep(0.5)
    return proc, f"projections: {url}  (log: {log})"


def demo_token(settings: Settings) -> str:
    """A fresh admin token named ``demo`` (the previous run's secret is not kept anywhere)."""
    from novaquota.streams.tokens import create_token, revoke_token

    revoke_token(settings.tokens_file, "demo")
    return create_token(settings.tokens_file, "demo", "admin")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(settings: Settings, opts: DemoOptions) -> int:
    previous = signal.signal(signal.SIGTERM, _on_sigterm)  # stop like Ctrl-C
    started_broker = False
    worker: subprocess.Popen[bytes] | None = None
    projections: subprocess.Popen[bytes] | None = None
    rc = 0
    try:
        if not kafka_local.is_reachable(settings.bootstrap_servers):
            print(f"starting the local Kafka broker on {settings.bootstrap_servers} ...")
            kafka_local.start(settings)
            started_broker = True
        asyncio.run(create_topics(settings))
        url = f"http://{settings.web_host}:{settings.web_port}"
        dashboard = f"http://127.0.0.1:{opts.projections_port}"
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            # the dashboard (on the projection worker) reads the enforcement API from its page
            "NOVAQUOTA_CORS_ORIGINS": os.environ.get(
                "NOVAQUOTA_CORS_ORIGINS",
                f"{dashboard},http://localhost:{opts.projections_port}",
            ),
            "NOVAQUOTA_UI_API_URL": os.environ.get("NOVAQUOTA_UI_API_URL", url),
        }
        worker_log = opts.log_dir / "worker.log"
        worker = spawn("novaquota.ops.cli", ("worker",), env, worker_log)
        print(f"worker starting (log: {worker_log}) ...", flush=True)
        deadline = time.monotonic() + 180
        while http_status(url + "/readyz") != 200:
            if worker.poll() is not None or time.monotonic() > deadline:
                print(f"the worker did not become ready; see {worker_log}", flush=True)
                return 1
            time.sleep(0.5)
        projections, note = _start_projections(env, opts)
        token = demo_token(settings)
        example = "tenant-000000"
        urls = [
            f"token:       export NOVAQUOTA_TOKEN={token}   (admin, in {settings.tokens_file})",
            f'API:         curl -H "Authorization: Bearer $NOVAQUOTA_TOKEN" '
            f"'{url}/api/v1/quotas/utilization?entity_id={example}'",
            f"             {url}/api/v1/quotas?tenant_id={example}   {url}/api/v1/openapi.json",
            f"metrics:     {url}/metrics",
            note,
        ]
        if projections:
            urls.append(
                f"dashboard:   {dashboard}/ui/   (log in with the token above; "
                "no browser is opened)"
            )
        print("\n".join(urls), flush=True)
        where = f"API {url}/api/v1/...   metrics {url}/metrics   " + (
            f"dashboard {dashboard}/ui/" if projections else ""
        )
        asyncio.run(_drive(settings, url, token, opts, [where.rstrip()]))
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    except Exception as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", flush=True)
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        for proc in (projections, worker):
            if proc is not None:
                stop(proc)
        if started_broker:
            kafka_local.stop(settings)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)
    print("demo stopped; nothing left running", flush=True)
    return rc


def main(argv: list[str], settings: Settings) -> int:
    p = argparse.ArgumentParser(
        prog="novaquota demo", description=" ".join((__doc__ or "").split("\n\n")[0].split())
    )
    p.add_argument("--rate", type=float, default=200.0, help="mean resource events per second")
    p.add_argument("--tenants", type=int, default=200)
    p.add_argument("--duration", type=float, default=None, help="seconds (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=None, help="default: a fresh one per run")
    p.add_argument(
        "--day-seconds", type=float, default=600.0, help="one simulated day lasts this long"
    )
    p.add_argument("--misbehaving", type=float, default=0.05, help="share of tenants over limit")
    p.add_argument("--projections-port", type=int, default=6067)
    p.add_argument("--log-dir", type=Path, default=Path("var/demo"))
    args = p.parse_args(argv)
    if args.rate <= 0 or args.tenants < 1 or args.day_seconds <= 0:
        p.error("--rate, --tenants and --day-seconds must be positive")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be > 0")
    if not 0 <= args.misbehaving <= 1:
        p.error("--misbehaving must be between 0 and 1")
    opts = DemoOptions(
        rate=args.rate,
        tenants=args.tenants,
        duration=args.duration,
        seed=args.seed,
        day_seconds=args.day_seconds,
        misbehaving=args.misbehaving,
        projections_port=args.projections_port,
        log_dir=args.log_dir,
    )
    return run_demo(settings, opts)
