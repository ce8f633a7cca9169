"""``novaquota publish``: validate JSON-lines CloudEvents and produce them to the right topic.

Each line is decoded with the same codec the worker uses, so what the publisher accepts the worker
accepts. Valid lines are produced in structured mode, unchanged, keyed by ``tenant_id``; invalid
lines are reported with their line number and reason and are not sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from aiokafka import AIOKafkaProducer

from novaquota.ops.console import Bar
from novaquota.schemas.codec import decode
from novaquota.schemas.exceptions import DecodeError
from novaquota.streams.settings import Settings

__all__ = ["LineError", "PublishResult", "make_producer", "publish_file", "publish_lines"]

STRUCTURED = [("content-type", b"application/cloudevents+json")]


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str
    message: str


@dataclass
class PublishResult:
    sent: int = 0
    resource_events: int = 0
    commands: int = 0
    errors: list[LineError] = field(default_factory=list)


def make_producer(settings: Settings, **overrides: object) -> AIOKafkaProducer:
    """The project's producer: idempotent, acks=all, batched and compressed."""
    cfg: dict[str, object] = {
        **settings.kafka_client_config(),
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": settings.compression_type,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
    }
    cfg.update(overrides)
    return AIOKafkaProducer(**cfg)


def _lines(path: str, seen: list[int] | None = None) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of ``path`` (``-``: standard input); ``seen[0]`` counts the bytes read."""
    stream: IO[bytes]
    with contextlib.ExitStack() as stack:
        stream = sys.stdin.buffer if path == "-" else stack.enter_context(open(path, "rb"))
        for i, ln in enumerate(stream, start=1):
            if seen is not None:
                seen[0] += len(ln)
            yield i, ln


async def publish_lines(
    lines: Iterable[tuple[int, bytes]],
    settings: Settings,
    *,
    progress: bool = False,
    producer: AIOKafkaProducer | None = None,
    size: tuple[list[int], int] | None = None,
) -> PublishResult:
    """Validate and produce ``lines``; a progress bar on standard error when ``progress``
    (in bytes when ``size`` gives a running byte count and the total, else in lines)."""
    result = PublishResult()
    topics = settings.topics
    own = producer is None
    prod = producer or make_producer(settings)
    if own:
        try:
            await prod.start()
        except Exception:
            await prod.stop()
            raise
    pending: list[asyncio.Future[object]] = []
    bar = Bar("publish", enabled=progress, unit="bytes" if size else "lines")
    last = 0.0

    def show(final: bool = False) -> None:
        nonlocal last
        now = time.monotonic()
        if not final and now - last < 0.1:
            return
        last = now
        note = f"publish: {result.sent:,} sent, {len(result.errors):,} rejected"
        if size is not None:
            bar.update(size[0][0], size[1], description=note)
        else:
            bar.update(result.sent + len(result.errors), description=note)

    try:
        with bar:
            for lineno, raw in lines:
                line = raw.strip()
                if not line:
                    continue
                try:
                    decoded = decode(line, None, record_timestamp_ms=int(time.time() * 1000))
                except DecodeError as exc:
                    result.errors.append(LineError(lineno, exc.reason, exc.message))
                    continue
                tenant = getattr(decoded.data, "tenant_id", None) or "system"
                if decoded.kind == "command":
                    topic = topics.quota_commands
                    result.commands += 1
                else:
                    topic = topics.resource_events
                    result.resource_events += 1
                fut = await prod.send(topic, value=line, key=tenant.encode(), headers=STRUCTURED)
                pending.append(fut)
                result.sent += 1
                if len(pending) >= 10_000:
                    await asyncio.gather(*pending)
                    pending.clear()
                show()
            if pending:
                await asyncio.gather(*pending)
            show(final=True)
    finally:
        if own:
            await prod.stop()
    return result


async def publish_file(path: str, settings: Settings, *, progress: bool = True) -> PublishResult:
    """Publish the lines of ``path`` (``-``: standard input)."""
    if path == "-":
        return await publish_lines(_lines(path), settings, progress=progress)
    seen = [0]
    total = os.path.getsize(path)
    return await publish_lines(_lines(path, seen), settings, progress=progress, size=(seen, total))
