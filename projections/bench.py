"""Projection rebuild benchmark: events/s from offset 0, and its ratio to a raw consume.

    python -m projections.bench [--events N] [--tenants N] [--seed S] [--partitions P]

produces the seeded workload (``ops/workload.py``) to fresh topics, reads them once with a bare
aiokafka consumer (the raw rate: fetch and iterate, nothing else) and once with the projection
worker (decode with the real codec, fold, write the views and positions to RocksDB), and prints
the JSON section.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from novaquota.ops.topics import create_topics
from novaquota.ops.workload import Workload, WorkloadSpec
from novaquota.projections.config import ProjectionSettings
from novaquota.projections.store import RocksStore
from novaquota.projections.tenants import tenants_page
from novaquota.projections.worker import ProjectionWorker
from novaquota.streams.settings import Settings, ensure_dir

__all__ = ["main", "rebuild_section"]


async def _produce(settings: Settings, events: int, tenants: int, seed: int) -> dict[str, int]:
    wl = Workload(WorkloadSpec(tenants=tenants, seed=seed))
    prod = AIOKafkaProducer(
        **settings.kafka_client_config(),
        acks="all",
        linger_ms=20,
        max_batch_size=1 << 20,
        compression_type=settings.compression_type,
    )
    await prod.start()
    counts = {"commands": 0, "events": 0}
    try:
        pending = []
        topics = settings.topics
        for ev in wl.setup_commands():
            key = str(ev["data"].get("tenant_id", "system")).encode()
            pending.append(await prod.send(topics.quota_commands, orjson.dumps(ev), key=key))
            counts["commands"] += 1
        for ev in wl.events(events):
            key = str(ev["data"]["tenant_id"]).encode()
            pending.append(await prod.send(topics.resource_events, orjson.dumps(ev), key=key))
            counts["events"] += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await prod.stop()
    return counts


async def _raw_consume(settings: Settings, topics: tuple[str, ...]) -> tuple[int, float]:
    cons = AIOKafkaConsumer(
        **settings.kafka_client_config(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await cons.start()
    try:
        await cons._client.force_metadata_update()
        tps = [
            TopicPartition(t, p) for t in topics for p in sorted(cons.partitions_for_topic(t) or ())
        ]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        ends = await cons.end_offsets(tps)
        total = sum(ends.values())
        n = 0
        start = time.perf_counter()
        while n < total:
            batch = await cons.getmany(timeout_ms=1000, max_records=20_000)
            for recs in batch.values():
                for r in recs:
                    if r.value is not None:
                        n += 1
        return n, time.perf_counter() - start
    finally:
        await cons.stop()


async def _rebuild(settings: Settings, data_dir: Path) -> tuple[int, float, dict[str, Any]]:
    psettings = ProjectionSettings(data_dir=data_dir, emit=False, web_port=0)
    worker = ProjectionWorker(settings, psettings, store=RocksStore(data_dir / "views"))
    await worker.start()
    try:
        start = time.perf_counter()
        stop = asyncio.Event()
        await worker.run(stop, until_caught_up=True)
        elapsed = time.perf_counter() - start
        records = sum(worker.positions.values())
        info = {
            "folded": worker.status.folded,
            "rejected": worker.status.rejected,
            "batches": worker.status.batches,
            "series": len(worker.state.series),
            "tenants_list": _tenants_list(worker),
        }
        return records, elapsed, info
    finally:
        await worker.stop()


def _tenants_list(worker: ProjectionWorker) -> dict[str, Any]:
    """``GET /api/v1/tenants``' work on the rebuilt views: a first page of 50 by utilization
    (cold: each listed series summed once into the usage cache), then the same page again."""
    timings = []
    for _ in range(2):
        t0 = time.perf_counter()
        page = tenants_page(worker.state, worker.catalogue, page_size="50")
        timings.append((time.perf_counter() - t0) * 1000)
    return {
        "tenants": page["total"],
        "cold_ms": round(timings[0], 1),
        "warm_ms": round(timings[1], 1),
    }


async def _delete_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_config())
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def _section(
    settings: Settings, *, events: int, tenants: int, seed: int, partitions: int
) -> dict[str, Any]:
    prefix = f"bench-proj-{uuid.uuid4().hex[:8]}."
    s = settings.model_copy(
        update={"topic_prefix": prefix, "partitions": partitions, "app_id": f"{prefix}bench"}
    )
    s.__dict__.pop("topics", None)  # the cached topic names of the original prefix
    await create_topics(s)
    try:
        t0 = time.perf_counter()
        counts = await _produce(s, events, tenants, seed)
        produce_s = time.perf_counter() - t0
        raw_n, raw_s = await _raw_consume(s, s.topics.inputs())
        with tempfile.TemporaryDirectory(prefix="novaquota-proj-bench-") as tmp:
            n, rebuild_s, info = await _rebuild(s, Path(tmp))
    finally:
        await _delete_topics(s)
    raw_rate = raw_n / raw_s if raw_s else 0.0
    rate = n / rebuild_s if rebuild_s else 0.0
    return {
        "name": "projection_rebuild",
        "topic_prefix": prefix,
        "partitions": partitions,
        "tenants": tenants,
        "seed": seed,
        "records": {**counts, "total": n},
        "produce_seconds": round(produce_s, 3),
        "raw_consume": {
            "records": raw_n,
            "seconds": round(raw_s, 3),
            "per_second": round(raw_rate),
        },
        "rebuild": {
            "records": n,
            "seconds": round(rebuild_s, 3),
            "per_second": round(rate),
            **info,
        },
        "ratio_to_raw": round(rate / raw_rate, 3) if raw_rate else None,
        "targets": {"per_second": 50_000, "ratio_to_raw": 0.3},
    }


def rebuild_section(
    settings: Settings, *, events: int, tenants: int, seed: int, partitions: int
) -> dict[str, Any]:
    """Produce the workload to fresh topics and measure a rebuild against a raw consume."""
    return asyncio.run(
        _section(settings, events=events, tenants=tenants, seed=seed, partitions=partitions)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m projections.bench", description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--tenants", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--output", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    section = rebuild_section(
        Settings(),
        events=args.events,
        tenants=args.tenants,
        seed=args.seed,
        partitions=args.partitions,
    )
    body = orjson.dumps(section, option=orjson.OPT_INDENT_2)
    if args.output:
        ensure_dir(args.output.parent)
        args.output.write_bytes(body)
    print(body.decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
