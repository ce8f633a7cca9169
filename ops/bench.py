"""``novaquota bench``: a suite of benchmark sections against the real broker, in one run.

Each section is a function ``section(settings, *, tenants, seed, partitions, work_dir) -> dict``
on its own topic set (a fresh prefix), so sections can run alone (``--only a,b``) or together.

- ``core``: events/s of the pure domain core alone (no Kafka): where the time goes.
- ``throughput``: the project's producer (acks=all), a bare aiokafka consumer (``raw_consume``),
  a bare Faust agent on the same topic (``faust_bare_agent``: Faust's own ceiling) and one real
  enforcement worker (decode, routing, roll-up, evaluation, RocksDB tables with changelogs,
  outputs), with CPU µs per message (robust on a shared machine) and ratios. The worker first
  loads the quota set-up (``setup_commands``, a figure of its own), is stopped, and is then
  measured on the resource events alone with its state kept.
- ``latency``: event produced -> violation on its topic, p50/p99, at fixed offered loads (a load
  one worker sustains, and the design target of 5,000 events/s, reported as it is).
- ``memory``: worker RSS while N quotas and N live instances are loaded through the topics, the
  per-key slope and its projection to 1,000,000.
- ``restart``: restart to serving with the local state kept, and a cold restore from the
  changelogs (new data dir), for the keys that ``memory`` loaded.
- ``live`` (``ops.bench_live``): 200 WebSocket subscribers of ``/api/v1/quotas/live``, one
  slow, under the simulator's workload: delivery latency, worker RSS, the slow client's fate.
- ``checks`` (``ops.bench_checks``) and ``projections`` (``projections.bench``): run when those
  modules are importable, else recorded as ``{"skipped": reason}``.

``--out`` writes the JSON report, ``--plot`` a PNG, ``--compare OLD.json`` prints new/old ratios
of every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from novaquota.ops.processes import (
    cpu_seconds,
    events_processed,
    free_port,
    get_json,
    rss_mb,
    spawn,
    stop,
    wait_ready,
    worker_env,
)
from novaquota.ops.publish import make_producer
from novaquota.ops.topics import create_topics
from novaquota.ops.workload import Workload, WorkloadSpec, bulk_load, iso_us, tenant_key
from novaquota.streams.settings import Settings, ensure_dir

__all__ = [
    "SECTIONS",
    "BenchOptions",
    "compare",
    "flatten",
    "format_headline",
    "headline",
    "main",
    "plot",
    "run_bench",
]

US = 1_000_000

# The design's targets as (figure, dotted path in ``flatten``, target, "min" or "max", scale):
# a figure is "met" when it is at least (min) or at most (max) the target; ``scale`` names the
# option the target is defined at (the memory and restart targets hold for 1,000,000 keys).
HEADLINE: tuple[tuple[str, str, float, str, str | None], ...] = (
    ("CPU us per resource event", "throughput.enforcement.cpu_us_per_message", 250, "max", None),
    ("÷ bare Faust agent", "throughput.enforcement.ratio_to_faust_bare_agent", 0.5, "min", None),
    ("CPU us per set-up command", "throughput.setup_commands.cpu_us_per_message", 250, "max", None),
    ("two workers ÷ one", "scaling.two_to_one", 1.6, "min", None),
    ("violation p99 ms at 1,000 ev/s", "latency.loads[1000].p99_ms", 250, "max", None),
    ("batch checks/s", "checks.batch.checks_per_s", 20_000, "min", None),
    ("single check p99 ms at 1,000/s", "checks.single.latency.p99_ms", 5, "max", None),
    ("dashboard read p99 ms at 200/s", "checks.reads.latency.p99_ms", 10, "max", None),
    ("worker RSS MB, loaded", "memory.loaded_rss_mb", 250, "max", "keys"),
    ("projection rebuild records/s", "projections.rebuild.per_second", 50_000, "min", None),
    ("projection ÷ raw consume", "projections.ratio_to_raw", 0.3, "min", None),
    ("warm restart to serving, s", "restart.warm.seconds_to_serving", 1, "max", "keys"),
    ("cold restore to serving, s", "restart.cold.seconds_to_serving", 60, "max", "keys"),
)
"""The design's targets of 2026-12-02 (DESIGN.md, performance targets)."""

TARGETS = {path: target for _name, path, target, _kind, _scale in HEADLINE}


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The design's figures of a report against their targets (those the report has)."""
    figures = flatten(report)
    keys = report.get("options", {}).get("keys")
    rows = []
    for name, path, target, kind, scale in HEADLINE:
        if path not in figures:
            continue
        value = figures[path]
        met = value >= target if kind == "min" else value <= target
        row: dict[str, Any] = {"figure": name, "path": path, "value": value}
        if math.isfinite(target):
            row.update(target=target, kind=kind, met=met)
        if scale == "keys":
            row["keys"] = keys
            if keys != 1_000_000 and math.isfinite(target):
                row["met"] = None  # the target is defined at 1,000,000 keys
        rows.append(row)
    return rows


def format_headline(rows: list[dict[str, Any]]) -> str:
    width = max((len(r["figure"]) for r in rows), default=10)
    lines = [f"{'figure':<{width}}  {'value':>12}  {'target':>10}  met"]
    for r in rows:
        target = r.get("target")
        t = "-" if target is None else f"{'≥' if r['kind'] == 'min' else '≤'}{target:g}"
        met = {True: "yes", False: "no", None: "n/a"}[r.get("met")]
        note = f"  (at {r['keys']:,} keys)" if r.get("keys") else ""
        lines.append(f"{r['figure']:<{width}}  {r['value']:>12,.4g}  {t:>10}  {met}{note}")
    return "\n".join(lines)


@dataclass(frozen=True)
class BenchOptions:
    """Sizes of the sections (``novaquota bench --help``)."""

    events: int = 100_000
    keys: int = 100_000
    latency_rates: tuple[float, ...] = (1000.0, 5000.0)
    latency_seconds: float = 15.0
    latency_tenants: int = 1000
    identities: int = 7_000_000
    drain_timeout: float = 300.0
    timeout: float = 1800.0


DEFAULT_OPTIONS = BenchOptions()


class Section(Protocol):
    def __call__(
        self,
        settings: Settings,
        *,
        tenants: int,
        seed: int,
        partitions: int,
        work_dir: Path,
        opts: BenchOptions = ...,
    ) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _isolated(settings: Settings, name: str, partitions: int) -> Settings:
    """A copy of ``settings`` on a fresh topic prefix (its topics created) and consumer group."""
    prefix = f"{settings.topic_prefix}{name}-{uuid.uuid4().hex[:6]}."
    s = settings.model_copy(
        update={"topic_prefix": prefix, "partitions": partitions, "app_id": f"{prefix}worker"}
    )
    s.__dict__.pop("topics", None)  # cached property of the copied settings
    asyncio.run(create_topics(s))
    return s


@dataclass
class _Worker:
    """One worker process (the enforcement worker, or the bare-Faust baseline)."""

    settings: Settings
    dir: Path
    state_dir: Path | None = None
    module: str = "novaquota.ops.cli"
    argv: tuple[str, ...] = ("worker",)
    port: int = field(default_factory=free_port)
    proc: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "worker.log"

    def start(self) -> _Worker:
        ensure_dir(self.state_dir or self.dir / "state")
        env = worker_env(
            bootstrap=self.settings.bootstrap_servers,
            topic_prefix=self.settings.topic_prefix,
            partitions=self.settings.partitions,
            app_id=self.settings.app_id,
            web_port=self.port,
            data_dir=self.state_dir or self.dir / "state",
        )
        self.proc = spawn(self.module, self.argv, env, self.log)
        return self

    def ready(self, timeout: float) -> float:
        return wait_ready(self.url, self.proc, timeout, self.log)

    def processed(self) -> float:
        try:
            return events_processed(self.url)
        except OSError:
            return -1.0

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


async def _produce(
    settings: Settings, topic: str, events: Iterable[dict[str, Any]]
) -> tuple[int, float]:
    """Produce as fast as the producer goes; (messages, messages/s)."""
    prod = make_producer(settings, linger_ms=20)
    await prod.start()
    n = 0
    try:
        started = time.perf_counter()
        futs = []
        for ev in events:
            futs.append(await prod.send(topic, orjson.dumps(ev), key=tenant_key(ev)))
            n += 1
            if len(futs) >= 20_000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
        return n, n / max(time.perf_counter() - started, 1e-9)
    finally:
        await prod.stop()


def _produce_sync(settings: Settings, topic: str, events: Iterable[dict[str, Any]]) -> float:
    return asyncio.run(_produce(settings, topic, events))[1]


async def _raw_consume(settings: Settings, topic: str, expect: int) -> float:
    cons = AIOKafkaConsumer(
        **settings.kafka_client_config(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await cons.start()
    try:
        parts = cons.partitions_for_topic(topic) or set()
        while not parts:
            await cons._client.force_metadata_update()
            parts = cons.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        got = 0
        started = time.perf_counter()
        while got < expect:
            batch = await cons.getmany(timeout_ms=1000, max_records=10_000)
            got += sum(len(v) for v in batch.values())
        return got / (time.perf_counter() - started)
    finally:
        await cons.stop()


def _drain(
    w: _Worker, expect: int, timeout: float, on_sample: Callable[[float, float], None] | None = None
) -> dict[str, Any]:
    """Poll a worker until it has processed ``expect`` messages: rate, CPU per message, RSS."""
    samples: list[tuple[float, float, float]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w.check_alive()
        n = w.processed()
        if n > 0:
            samples.append((time.monotonic(), n, cpu_seconds(w.proc.pid)))
            if on_sample:
                on_sample(time.monotonic(), n)
        if n >= expect:
            break
        time.sleep(0.25)
    if not samples or samples[-1][1] < expect:
        got = samples[-1][1] if samples else 0
        raise RuntimeError(f"worker processed {got:.0f} of {expect} in {timeout:.0f}s ({w.log})")
    (t0, n0, c0), (t1, n1, c1) = samples[0], samples[-1]
    busy = c1 - c0
    return {
        "events_per_second": round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None,
        "cpu_us_per_message": round(busy / (n1 - n0) * 1e6, 1) if n1 > n0 else None,
        "events_per_cpu_second": round((n1 - n0) / busy, 1) if busy > 0 else None,
        "seconds": round(t1 - t0, 2),
        "messages": int(n1),
        "worker_rss_mb": rss_mb(w.proc.pid),
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))], 1)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def core_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    from novaquota.streams.quota.bench import bench_apply

    return {"events_per_second": round(bench_apply(20_000), 1)}


def throughput_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    s = _isolated(settings, "throughput", partitions)
    wl = Workload(WorkloadSpec(tenants=tenants, seed=seed))
    commands = list(wl.setup_commands())
    evs = list(wl.events(opts.events))
    t = s.topics
    out: dict[str, Any] = {
        "workload": {
            "tenants": tenants,
            "setup_commands": len(commands),
            "quotas": wl.quota_count(),
            "resource_events": len(evs),
            "partitions": partitions,
        }
    }
    # Phase 1: the quota set-up alone (commands rewrite whole tenant records: a rate of its own).
    _produce_sync(s, t.quota_commands, commands)
    w = _Worker(s, work_dir / "worker").start()
    try:
        setup = _drain(w, len(commands), opts.timeout)
    finally:
        w.stop()
    out["setup_commands"] = setup
    # Phase 2: the resource events, with the baselines read from the same topic.
    out["produce"] = {"events_per_second": round(_produce_sync(s, t.resource_events, evs), 1)}
    raw = asyncio.run(_raw_consume(s, t.resource_events, len(evs)))
    out["raw_consume"] = {"events_per_second": round(raw, 1)}
    base = _Worker(s, work_dir / "baseline", module="novaquota.ops.bench_baseline", argv=()).start()
    try:  # (the bare agent has no /readyz: its first metrics answer is enough)
        out["faust_bare_agent"] = _drain(base, len(evs), opts.timeout)
    finally:
        base.stop()
    # Phase 3: the same worker (its state kept) processes the resource events.
    w = _Worker(s, work_dir / "worker").start()
    try:
        enf = _drain(w, len(evs), opts.timeout)
    finally:
        w.stop()
    enf["log"] = str(w.log)
    if enf["events_per_second"]:
        enf["ratio_to_raw_consume"] = round(enf["events_per_second"] / raw, 4)
        if out["faust_bare_agent"]["events_per_second"]:
            enf["ratio_to_faust_bare_agent"] = round(
                enf["events_per_second"] / out["faust_bare_agent"]["events_per_second"], 4
            )
    out["enforcement"] = enf
    return out


def scaling_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    """The same input (quota set-up, then resource events) processed from scratch by one worker
    process, then by two in one consumer group; events/s counted from when every worker of
    the group is ready to when all the input is processed."""
    s = _isolated(settings, "scaling", partitions)
    wl = Workload(WorkloadSpec(tenants=tenants, seed=seed))
    commands = list(wl.setup_commands())
    evs = list(wl.events(opts.events))
    _produce_sync(s, s.topics.quota_commands, commands)
    _produce_sync(s, s.topics.resource_events, evs)
    total = len(commands) + len(evs)
    out: dict[str, Any] = {"messages": total, "partitions": partitions}
    for n in (1, 2):
        group = s.model_copy(update={"app_id": f"{s.topic_prefix}group-{n}"})
        group.__dict__.pop("topics", None)
        workers = [_Worker(group, work_dir / f"scaling-{n}-{i}").start() for i in range(n)]
        try:
            for w in workers:
                w.ready(opts.timeout)
            out[f"workers_{n}"] = _drain_group(workers, total, opts.timeout)
        finally:
            for w in workers:
                w.stop()
    one, two = out["workers_1"]["events_per_second"], out["workers_2"]["events_per_second"]
    if one and two:
        out["two_to_one"] = round(two / one, 3)
    return out


def _drain_group(workers: list[_Worker], expect: int, timeout: float) -> dict[str, Any]:
    """Poll a group's workers until together they have processed ``expect`` messages."""
    deadline = time.monotonic() + timeout
    first: tuple[float, float, float] | None = None
    while time.monotonic() < deadline:
        for w in workers:
            w.check_alive()
        n = sum(max(0.0, w.processed()) for w in workers)
        sample = (time.monotonic(), n, sum(cpu_seconds(w.proc.pid) for w in workers))
        first = first or sample
        if n >= expect:
            break
        time.sleep(0.25)
    else:
        raise RuntimeError(f"{len(workers)} worker(s) did not process {expect} in {timeout:.0f}s")
    (t0, n0, c0), (t1, n1, c1) = first, sample
    return {
        "events_per_second": round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None,
        "cpu_us_per_message": round((c1 - c0) / (n1 - n0) * 1e6, 1) if n1 > n0 else None,
        "seconds": round(t1 - t0, 2),
        "messages_before_all_ready": int(n0),
    }


@dataclass
class _Probe:
    """A tenant with ``instances`` limit 1 and one VM: each probe event opens or resolves."""

    tenant: str
    open: bool = False
    n: int = 0


async def _latency_run(
    s: Settings,
    w: _Worker,
    rate: float,
    seconds: float,
    tenants: int,
    seed: int,
    probes: list[_Probe],
    drain_timeout: float,
) -> dict[str, Any]:
    t = s.topics
    wl = Workload(
        WorkloadSpec(
            tenants=tenants,
            seed=seed + int(rate),
            start=datetime.now(UTC),
            events_per_second=rate,
            seasonality=0.0,
        )
    )
    prod = make_producer(s, linger_ms=2)
    cons = AIOKafkaConsumer(
        t.quota_violations,
        **s.kafka_client_config(),
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    await prod.start()
    await cons.start()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    outputs = 0

    async def watch() -> None:
        nonlocal outputs
        async for rec in cons:
            d = orjson.loads(rec.value)["data"]
            cause = d.get("resolved_cause_event_id") or d.get("cause_event_id")
            t0 = sent_at.pop(cause, None)
            outputs += 1
            if t0 is not None:
                latencies.append(rec.timestamp - t0 * 1000)

    # the consumer must be positioned before the first probe is sent
    while not cons.assignment():
        await asyncio.sleep(0.1)
    for tp in cons.assignment():
        await cons.position(tp)
    watcher = asyncio.create_task(watch())
    sent = 0
    probes_sent = 0
    before = w.processed()
    try:
        started = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        next_probe = 0.0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                now_us = int(time.time() * US)
                if elapsed >= next_probe:  # ten probes a second, round robin
                    next_probe += 0.1
                    p = probes[probes_sent % len(probes)]
                    p.n += 1
                    ev: dict[str, Any] = {
                        "specversion": "1.0",
                        "id": f"probe-{p.tenant}-{p.n}",
                        "source": "bench/latency",
                        "type": "vm.deleted" if p.open else "vm.created",
                        "time": iso_us(now_us),
                        "data": {"tenant_id": p.tenant, "vm_id": "extra"}
                        | ({} if p.open else {"cpu": 1, "memory": 512}),
                    }
                    p.open = not p.open
                    sent_at[ev["id"]] = time.time()
                    probes_sent += 1
                else:
                    ev = wl.next_event()
                    ev["time"] = iso_us(now_us)
                key = tenant_key(ev)
                pending.append(await prod.send(t.resource_events, orjson.dumps(ev), key=key))
                sent += 1
            if len(pending) > 1000:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
        produced_for = time.monotonic() - started
        backlog = sent - (w.processed() - before)
        deadline = time.monotonic() + drain_timeout
        while sent_at and time.monotonic() < deadline:
            w.check_alive()
            await asyncio.sleep(0.5)
        drained_after = time.monotonic() - started - produced_for
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await prod.stop()
        await cons.stop()
    return {
        "offered_events_per_second": rate,
        "achieved_events_per_second": round(sent / produced_for, 1),
        "seconds": round(produced_for, 1),
        "events": sent,
        "probes": probes_sent,
        "probes_observed": len(latencies),
        "p50_ms": _pct(latencies, 0.50),
        "p99_ms": _pct(latencies, 0.99),
        "max_ms": round(max(latencies), 1) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "backlog_at_end_of_load": int(backlog),
        "seconds_to_drain_probes": round(drained_after, 1),
        "sustained": bool(latencies) and len(latencies) == probes_sent and backlog < rate,
    }


def latency_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    s = _isolated(settings, "latency", partitions)
    t = s.topics
    n_tenants = min(tenants, opts.latency_tenants)
    wl = Workload(WorkloadSpec(tenants=n_tenants, seed=seed, start=datetime.now(UTC)))
    commands = list(wl.setup_commands())
    probes = [_Probe(f"probe-{i:02d}") for i in range(20)]
    now = iso_us(int(time.time() * US) - 60 * US)
    for i, p in enumerate(probes):
        commands.append(
            {
                "specversion": "1.0",
                "id": f"probe-quota-{i}",
                "source": "bench/latency",
                "type": "quota.set",
                "time": now,
                "data": {
                    "actor": "bench",
                    "level": "tenant",
                    "entity_id": p.tenant,
                    "tenant_id": p.tenant,
                    "resource_type": "instances",
                    "limit": 1,
                },
            }
        )
    base_vms = [
        {
            "specversion": "1.0",
            "id": f"probe-base-{p.tenant}",
            "source": "bench/latency",
            "type": "vm.created",
            "time": now,
            "data": {"tenant_id": p.tenant, "vm_id": "base", "cpu": 1, "memory": 512},
        }
        for p in probes
    ]
    _produce_sync(s, t.quota_commands, commands)
    _produce_sync(s, t.resource_events, base_vms)
    w = _Worker(s, work_dir / "latency").start()
    out: dict[str, Any] = {"tenants": n_tenants, "setup_commands": len(commands), "loads": []}
    try:
        w.ready(opts.timeout)
        _drain(w, len(commands) + len(base_vms), opts.timeout)
        for rate in opts.latency_rates:
            run = asyncio.run(
                _latency_run(
                    s,
                    w,
                    rate,
                    opts.latency_seconds,
                    n_tenants,
                    seed,
                    probes,
                    opts.drain_timeout,
                )
            )
            out["loads"].append(run)
    finally:
        w.stop()
    out["method"] = (
        "probe events (10/s, each opening or resolving an instances over_limit episode) mixed "
        "into simulator traffic at the offered rate; latency = the violation record's "
        "timestamp (set by the worker's producer) minus the wall time at which the probe was "
        "handed to the producer"
    )
    return out


def _load(
    settings: Settings, keys: int, partitions: int, seed: int, work_dir: Path, opts: BenchOptions
) -> dict[str, Any]:
    """Load ``keys`` quotas and ``keys`` live instances through the topics into one worker,
    sampling its RSS; the worker is stopped cleanly afterwards and its state kept on disk."""
    s = _isolated(settings, "memory", partitions)
    t = s.topics
    commands, events = bulk_load(keys, keys, start=datetime(2026, 11, 1, tzinfo=UTC), seed=seed)
    state_dir = work_dir / "memory" / "state"
    w = _Worker(s, work_dir / "memory", state_dir=state_dir).start()
    samples: list[tuple[float, float | None]] = []
    try:
        w.ready(opts.timeout)
        time.sleep(2)
        idle = rss_mb(w.proc.pid)
        _produce_sync(s, t.quota_commands, commands)
        _produce_sync(s, t.resource_events, events)
        last = [0.0]

        def sample(now: float, n: float) -> None:
            if now - last[0] >= 2:
                last[0] = now
                samples.append((n, rss_mb(w.proc.pid)))

        load = _drain(w, 2 * keys, opts.timeout, sample)
        time.sleep(3)  # let the last writes settle
        loaded = rss_mb(w.proc.pid)
        samples.append((2 * keys, loaded))
    finally:
        w.stop()
    disk = sum(f.stat().st_size for f in state_dir.rglob("*") if f.is_file())
    pts = [(n, r) for n, r in samples if r is not None and n >= keys // 2]
    slope = _slope(pts) if len(pts) >= 3 else None  # MiB per message (one quota or instance)
    info = {
        "keys": keys,
        "quotas": keys,
        "instances": keys,
        "tenants": math.ceil(keys / 10),
        "idle_rss_mb": idle,
        "loaded_rss_mb": loaded,
        "load_events_per_second": load["events_per_second"],
        "load_cpu_us_per_message": load["cpu_us_per_message"],
        "state_on_disk_mb": round(disk / 2**20, 1),
        "rss_samples": [[int(n), r] for n, r in samples],
        "slope_bytes_per_key": round(slope * 2**20, 1) if slope is not None else None,
        "projected_rss_mb_at_1m": (
            round(loaded + slope * 2 * (1_000_000 - keys), 1)
            if slope is not None and loaded is not None
            else None
        ),
        "prefix": s.topic_prefix,
        "state_dir": str(state_dir),
    }
    (work_dir / "loaded.json").write_text(json.dumps(info))
    return info


def _slope(points: Sequence[tuple[float, float | None]]) -> float:
    xs = [p[0] for p in points]
    ys = [float(p[1] or 0) for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def memory_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    info = _load(settings, opts.keys, partitions, seed, work_dir, opts)
    return {k: v for k, v in info.items() if k not in ("prefix", "state_dir")}


def _serving_seconds(w: _Worker, tenant: str, timeout: float) -> tuple[float, float]:
    """(seconds to /readyz 200, seconds until a tenant's utilization is answered)."""
    started = time.monotonic()
    ready = w.ready(timeout)
    path = f"{w.url}/api/v1/quotas/utilization?entity_id={tenant}"
    while time.monotonic() - started < timeout:
        w.check_alive()
        try:
            status, body = get_json(path)
            if status == 200 and body.get("resources"):
                return ready, time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{tenant} not served within {timeout:.0f}s ({w.log})")


def _served_quotas(w: _Worker) -> int:
    _, body = get_json(w.url + "/internal/usage", timeout=120)
    return int(sum(b["quotas"] for b in body["tenants"].values()))


def restart_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    marker = work_dir / "loaded.json"
    info = json.loads(marker.read_text()) if marker.exists() else None
    if info is None or info["keys"] != opts.keys:
        info = _load(settings, opts.keys, partitions, seed, work_dir, opts)
    s = settings.model_copy(
        update={
            "topic_prefix": info["prefix"],
            "partitions": partitions,
            "app_id": f"{info['prefix']}worker",
        }
    )
    s.__dict__.pop("topics", None)
    tenant = f"load-{seed}-{0:07d}"
    out: dict[str, Any] = {"keys": info["keys"]}
    for mode, state_dir in (
        ("warm", Path(info["state_dir"])),
        ("cold", work_dir / "restore" / "state"),
    ):
        w = _Worker(s, work_dir / f"restart-{mode}", state_dir=state_dir).start()
        try:
            ready, serving = _serving_seconds(w, tenant, opts.timeout)
            out[mode] = {
                "seconds_to_ready": round(ready, 2),
                "seconds_to_serving": round(serving, 2),
                "quotas_served": _served_quotas(w),
                "rss_mb": rss_mb(w.proc.pid),
            }
        finally:
            w.stop()
    out["warm"]["meaning"] = "same data dir: RocksDB state kept, changelogs read from its offsets"
    out["cold"]["meaning"] = "new, empty data dir: every table restored from its changelog"
    return out


def _optional(module: str, func: str, **kwargs: Any) -> dict[str, Any]:
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        return {"skipped": f"{module}.{func} is not available: {exc}"}
    result: dict[str, Any] = fn(**kwargs)
    return result


def checks_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    return _optional(
        "novaquota.ops.bench_checks",
        "checks_section",
        settings=settings,
        tenants=tenants,
        seed=seed,
        partitions=partitions,
        work_dir=work_dir,
    )


def projections_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    return _optional(
        "novaquota.projections.bench",
        "rebuild_section",
        settings=settings,
        events=opts.events,
        tenants=tenants,
        seed=seed,
        partitions=partitions,
    )


def identities_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    return _optional(
        "novaquota.ops.bench_identities",
        "identities_section",
        settings=settings,
        count=opts.identities,
        tenants=tenants,
        seed=seed,
        work_dir=work_dir,
    )


def live_section(
    settings: Settings,
    *,
    tenants: int,
    seed: int,
    partitions: int,
    work_dir: Path,
    opts: BenchOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    return _optional(
        "novaquota.ops.bench_live",
        "live_section",
        settings=settings,
        tenants=tenants,
        seed=seed,
        partitions=partitions,
        work_dir=work_dir,
        opts=opts,
    )


SECTIONS: dict[str, Section] = {
    "core": core_section,
    "throughput": throughput_section,
    "scaling": scaling_section,
    "latency": latency_section,
    "memory": memory_section,
    "restart": restart_section,
    "checks": checks_section,
    "projections": projections_section,
    "identities": identities_section,
    "live": live_section,
}


def run_bench(
    settings: Settings,
    *,
    only: Iterable[str] | None = None,
    tenants: int = 10_000,
    partitions: int = 12,
    seed: int = 7,
    work_dir: Path | None = None,
    opts: BenchOptions = DEFAULT_OPTIONS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    names = list(only) if only is not None else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; one of {', '.join(SECTIONS)}")
    base = settings.model_copy(
        update={"topic_prefix": f"bench-{uuid.uuid4().hex[:8]}.", "partitions": partitions}
    )
    base.__dict__.pop("topics", None)
    wd = work_dir or Path(tempfile.mkdtemp(prefix="novaquota-bench-"))
    ensure_dir(wd)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        "options": {
            "tenants": tenants,
            "partitions": partitions,
            "seed": seed,
            "sections": names,
            "events": opts.events,
            "keys": opts.keys,
            "latency_rates": list(opts.latency_rates),
            "latency_seconds": opts.latency_seconds,
            "work_dir": str(wd),
        },
        "targets": TARGETS,
    }
    for name in names:
        if progress:
            progress(f"bench: {name} ...")
        started = time.monotonic()
        try:
            result = SECTIONS[name](
                base, tenants=tenants, seed=seed, partitions=partitions, work_dir=wd, opts=opts
            )
        except Exception as exc:  # one failing section must not lose the others' figures
            result = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
        result["section_seconds"] = round(time.monotonic() - started, 1)
        report[name] = result
        if progress:
            progress(f"bench: {name} done in {result['section_seconds']} s")
    report["headline"] = headline(report)
    return report


# ---------------------------------------------------------------------------------------------
# Reporting: flatten, compare, plot
# ---------------------------------------------------------------------------------------------


def flatten(report: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric figure of a report by its dotted path (lists of loads by rate)."""
    out: dict[str, float] = {}
    for k, v in report.items():
        if k in ("options", "targets", "machine", "rss_samples", "headline"):
            continue
        path = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[path] = float(v)
        elif isinstance(v, dict):
            out.update(flatten(v, path + "."))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, dict):
                    tag = item.get("offered_events_per_second", i)
                    out.update(flatten(item, f"{path}[{tag:g}]."))
    return out


def compare(new: dict[str, Any], old: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """(figure, old, new, new/old) for every figure present in both reports."""
    a, b = flatten(old), flatten(new)
    rows = []
    for k in sorted(set(a) & set(b)):
        if k.endswith("section_seconds"):
            continue
        ratio = b[k] / a[k] if a[k] else math.inf if b[k] else 1.0
        rows.append((k, a[k], b[k], ratio))
    return rows


def format_compare(rows: list[tuple[str, float, float, float]]) -> str:
    width = max((len(r[0]) for r in rows), default=10)
    lines = [f"{'figure':<{width}}  {'old':>14}  {'new':>14}  {'new/old':>8}"]
    for k, o, n, r in rows:
        lines.append(f"{k:<{width}}  {o:>14,.2f}  {n:>14,.2f}  {r:>8.3f}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """One PNG: throughput bars, latency per load, RSS while loading, restart times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    tp = report.get("throughput", {})
    bars = {
        "core": report.get("core", {}).get("events_per_second"),
        "produce": tp.get("produce", {}).get("events_per_second"),
        "raw consume": tp.get("raw_consume", {}).get("events_per_second"),
        "faust bare": tp.get("faust_bare_agent", {}).get("events_per_second"),
        "enforcement": tp.get("enforcement", {}).get("events_per_second"),
    }
    bars = {k: v for k, v in bars.items() if v}
    ax.bar(list(bars), list(bars.values()), color="tab:blue")
    ax.set_yscale("log")
    ax.set_ylabel("events/s")
    ax.set_title("throughput")

    ax = axes[0][1]
    loads = report.get("latency", {}).get("loads", [])
    if loads:
        labels = [f"{x['offered_events_per_second']:g}/s" for x in loads]
        xs = range(len(loads))
        ax.bar([x - 0.2 for x in xs], [x["p50_ms"] or 0 for x in loads], 0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [x["p99_ms"] or 0 for x in loads], 0.4, label="p99")
        ax.set_xticks(list(xs), labels)
        ax.set_yscale("log")
        ax.axhline(100, color="tab:red", ls="--", label="p99 target")
        ax.legend()
    ax.set_ylabel("ms, event produced -> violation")
    ax.set_title("latency at offered load")

    ax = axes[1][0]
    mem = report.get("memory", {})
    pts = mem.get("rss_samples", [])
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_xlabel("messages loaded (quotas + instances)")
    ax.set_ylabel("worker RSS MiB")
    slope = mem.get("slope_bytes_per_key")
    ax.set_title(f"memory ({slope} bytes/key)" if slope else "memory")

    ax = axes[1][1]
    rs = report.get("restart", {})
    modes = [m for m in ("warm", "cold") if isinstance(rs.get(m), dict)]
    if modes:
        ax.bar(modes, [rs[m]["seconds_to_serving"] for m in modes], color="tab:green")
    ax.set_ylabel("seconds to serving")
    ax.set_title(f"restart ({rs.get('keys', '?')} keys)")
    for ax, name in zip(
        (a for row in axes for a in row),
        ("throughput", "latency", "memory", "restart"),
        strict=True,
    ):
        if not isinstance(report.get(name), dict) or "error" in report[name]:
            note = "not run" if name not in report else "failed: see the JSON report"
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"novaquota bench {report.get('when', '')}")
    fig.tight_layout()
    ensure_dir(path.parent)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _csv_floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"rates must be > 0: {text}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="novaquota bench", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--only", help=f"comma-separated sections (default all): {','.join(SECTIONS)}")
    p.add_argument("--events", type=int, default=100_000, help="resource events (throughput)")
    p.add_argument("--tenants", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keys", type=int, default=100_000, help="quotas = instances (memory)")
    p.add_argument(
        "--latency-rates", type=_csv_floats, default=(300.0, 5000.0), help="events/s, e.g. 300,5000"
    )
    p.add_argument("--latency-seconds", type=float, default=15.0, help="seconds per load level")
    p.add_argument("--latency-tenants", type=int, default=1000)
    p.add_argument(
        "--identities", type=int, default=7_000_000, help="(source, id) identities (identities)"
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="per worker wait, seconds")
    p.add_argument("--work-dir", type=Path, help="worker logs and state (default: a temp dir)")
    p.add_argument("--out", type=Path, help="also write the JSON report to this file")
    p.add_argument("--plot", type=Path, help="write a PNG plot of the figures")
    p.add_argument("--compare", type=Path, help="print new/old ratios against this JSON report")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, state)")
    return p


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str], settings: Settings) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    unknown = [x for x in only or () if x not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; one of {', '.join(SECTIONS)}")
    for name in ("events", "tenants", "partitions", "keys", "latency_tenants", "identities"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    old = None
    if args.compare:
        try:
            old = json.loads(args.compare.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--compare {args.compare}: {exc}")
    opts = BenchOptions(
        events=args.events,
        keys=args.keys,
        latency_rates=args.latency_rates,
        latency_seconds=args.latency_seconds,
        latency_tenants=args.latency_tenants,
        identities=args.identities,
        timeout=args.timeout,
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # stop the workers on the way out
    tmp = args.work_dir is None
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="novaquota-bench-"))
    try:
        report = run_bench(
            settings,
            only=only,
            tenants=args.tenants,
            partitions=args.partitions,
            seed=args.seed,
            work_dir=work_dir,
            opts=opts,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
        if tmp and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    print(format_headline(report["headline"]), file=sys.stderr)
    if args.out:
        ensure_dir(args.out.parent)
        args.out.write_text(text + "\n")
    if args.plot:
        plot(report, args.plot)
    if old is not None:
        print(format_compare(compare(report, old)))
    return 1 if any(isinstance(v, dict) and "error" in v for v in report.values()) else 0
