"""Test helpers that talk to the real broker with plain aiokafka (no project code)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

__all__ = ["consume_all", "produce_raw"]


async def produce_raw(
    bootstrap: str,
    topic: str,
    records: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]] | None]],
) -> None:
    """Produce (key, value, headers) records exactly as given."""
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        await prod.start()
        futs = [await prod.send(topic, value=v, key=k, headers=h or None) for k, v, h in records]
        await asyncio.gather(*futs)
    finally:
        await prod.stop()


async def consume_all(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    timeout: float = 60.0,
    idle: float = 3.0,
) -> list[Any]:
    """Read a topic from the beginning until ``expect`` records arrived (or ``idle`` seconds of
    silence when ``expect`` is None), without a consumer group."""
    cons = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await cons.start()
    try:
        deadline = time.monotonic() + timeout
        parts: set[int] | None = None
        while parts is None and time.monotonic() < deadline:
            parts = cons.partitions_for_topic(topic)
            if not parts:
                parts = None
                await cons._client.force_metadata_update()
                await asyncio.sleep(0.2)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        cons.assign(tps)
        await cons.seek_to_beginning(*tps)
        out: list[Any] = []
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = await cons.getmany(timeout_ms=200)
            got = [r for recs in batch.values() for r in recs]
            if got:
                out.extend(got)
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last > idle:
                break
        return out
    finally:
        await cons.stop()
