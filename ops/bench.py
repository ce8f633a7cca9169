"""``novaquota bench``: throughput figures against the real broker, side by side in one run.

Figures (JSON; ratios are against baselines measured in the same run, on the same topic):

- ``produce``: events/s of the project's idempotent producer (acks=all).
- ``raw_consume``: events/s of a bare aiokafka consumer reading the resource-events topic.
- ``enforcement``: events/s through one real worker process (decode, routing, hierarchy
  roll-up, quota evaluation, RocksDB tables with changelogs, outputs), and its ratio to
  ``raw_consume``.
- ``core``: events/s of the pure domain core alone (no Kafka), to show where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from ops.processes import events_processed, spawn, stop
from ops.publish import make_producer
from ops.topics import create_topics
from ops.workload import Workload, WorkloadSpec
from streams.settings import Settings

__all__ = ["run_bench"]


async def _produce(settings: Settings, topic: str, events: list[dict[str, Any]]) -> float:
    prod = make_producer(settings, linger_ms=20)
    await prod.start()
    try:
        started = time.perf_counter()
        futs = []
        for ev in events:
            key = str(ev["data"].get("tenant_id", "system")).encode()
            futs.append(await prod.send(topic, orjson.dumps(ev), key=key))
            if len(futs) >= 20_000:
                await asyncio.gather(*futs)
                futs.clear()
        await asyncio.gather(*futs)
        return len(events) / (time.perf_counter() - started)
    finally:
        await prod.stop()


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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_rate(
    settings: Settings,
    expect: int,
    workdir: Path,
    timeout: float,
    module: str = "ops.cli",
    argv: tuple[str, ...] = ("worker",),
) -> dict[str, Any]:
    port = _free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "NOVAQUOTA_TOPIC_PREFIX": settings.topic_prefix,
        "NOVAQUOTA_PARTITIONS": str(settings.partitions),
        "NOVAQUOTA_APP_ID": f"{settings.topic_prefix}{module}",
        "NOVAQUOTA_WEB_PORT": str(port),
        "NOVAQUOTA_DATA_DIR": str(workdir / "state"),
        "NOVAQUOTA_LOG_LEVEL": "WARNING",
    }
    proc = spawn(module, argv, env, workdir / "worker.log")
    url = f"http://127.0.0.1:{port}"
    samples: list[tuple[float, float]] = []
    cpu: list[float] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (workdir / "worker.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker died:\n{tail}")
            try:
                n = events_processed(url)
            except OSError:
                time.sleep(0.5)
                continue
            now = time.monotonic()
            if n > 0:
                samples.append((now, n))
                cpu.append(_cpu_seconds(proc.pid))
            if n >= expect:
                break
            time.sleep(0.25)
        if not samples or samples[-1][1] < expect:
            raise RuntimeError(
                f"worker processed {samples[-1][1] if samples else 0} of {expect} "
                f"in {timeout}s; see {workdir / 'worker.log'}"
            )
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        rss = _rss_mb(proc.pid)
        busy = cpu[-1] - cpu[0]
        return {
            "events_per_second": round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else None,
            # CPU time per message: robust on a shared machine, where wall time is not
            "cpu_us_per_message": round(busy / (n1 - n0) * 1e6, 1) if n1 > n0 else None,
            "events_per_cpu_second": round((n1 - n0) / busy, 1) if busy > 0 else None,
            "seconds": round(t1 - t0, 2),
            "messages": int(n1),
            "worker_rss_mb": rss,
        }
    finally:
        stop(proc)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def run_bench(
    settings: Settings,
    *,
    events: int = 100_000,
    tenants: int = 10_000,
    partitions: int = 12,
    seed: int = 7,
    timeout: float = 900.0,
) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    s = settings.model_copy(
        update={
            "topic_prefix": prefix,
            "partitions": partitions,
            "app_id": f"{prefix}ops.cli",  # the bench worker's group (see _worker_rate)
        }
    )
    s.__dict__.pop("topics", None)  # cached property of the copied settings
    asyncio.run(create_topics(s))
    wl = Workload(WorkloadSpec(tenants=tenants, seed=seed))
    commands = list(wl.setup_commands())
    evs = list(wl.events(events))

    from streams.quota.bench import bench_apply

    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "workload": {
            "tenants": tenants,
            "quotas_set_commands": len(commands),
            "resource_events": events,
            "partitions": partitions,
            "seed": seed,
        },
        "core": {"events_per_second": round(bench_apply(20_000), 1)},
    }
    t = s.topics
    report["produce"] = {
        "events_per_second": round(asyncio.run(_produce(s, t.resource_events, evs)), 1)
    }
    asyncio.run(_produce(s, t.quota_commands, commands))
    raw = asyncio.run(_raw_consume(s, t.resource_events, events))
    report["raw_consume"] = {"events_per_second": round(raw, 1)}
    workdir = Path(tempfile.mkdtemp(prefix="novaquota-bench-"))
    # Faust's own ceiling: a bare agent counting the same topic (no decode, state or output)
    base = _worker_rate(s, events, workdir / "baseline", timeout, "ops.bench_baseline", ())
    report["faust_bare_agent"] = base
    enf = _worker_rate(s, events + len(commands), workdir / "worker", timeout)
    enf["log"] = str(workdir / "worker" / "worker.log")
    report["enforcement"] = enf
    if enf["events_per_second"]:
        report["enforcement"]["ratio_to_raw_consume"] = round(enf["events_per_second"] / raw, 4)
        if base["events_per_second"]:
            report["enforcement"]["ratio_to_faust_bare_agent"] = round(
                enf["events_per_second"] / base["events_per_second"], 4
            )
    report["targets"] = {"enforcement_events_per_second": 20_000, "ratio_to_raw_consume": 0.25}
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="novaquota bench", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000, help="resource events to process")
    p.add_argument("--tenants", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", help="also write the JSON report to this file")
    return p


def main(argv: list[str], settings: Settings) -> int:
    args = build_parser().parse_args(argv)
    report = run_bench(
        settings,
        events=args.events,
        tenants=args.tenants,
        partitions=args.partitions,
        seed=args.seed,
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
