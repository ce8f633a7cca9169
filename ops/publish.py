"""``novaquota publish``: validate JSON-lines CloudEvents and produce them to the right topic.

Each line is decoded with the same codec the worker uses, so what the publisher accepts the worker
accepts. Valid lines are produced in structured mode, unchanged, keyed by ``tenant_id``; invalid
lines are reported with their line number and reason and are not sent.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from aiokafka import AIOKafkaProducer

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


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    stream: IO[bytes]
    if path == "-":
        stream = sys.stdin.buffer
        yield from ((i, ln) for i, ln in enumerate(stream, start=1))
        return
    with open(path, "rb") as stream:
        yield from ((i, ln) for i, ln in enumerate(stream, start=1))


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0
        self.started = time.monotonic()

    def update(self, done: int, rejected: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < 0.25:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        end = "\n" if final else ""
        sys.stderr.write(f"\r{done:>10,} sent  {rejected:>6,} rejected  {rate:>10,.0f}/s{end}")
        sys.stderr.flush()


async def publish_lines(
    lines: Iterable[tuple[int, bytes]],
    settings: Settings,
    *,
    progress: bool = False,
    producer: AIOKafkaProducer | None = None,
) -> PublishResult:
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
    bar = _Progress(progress)
    pending: list[asyncio.Future[object]] = []
    try:
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
            bar.update(result.sent, len(result.errors))
        if pending:
            await asyncio.gather(*pending)
        bar.update(result.sent, len(result.errors), final=True)
    finally:
        if own:
            await prod.stop()
    return result


async def publish_file(path: str, settings: Settings, *, progress: bool = True) -> PublishResult:
    return await publish_lines(_lines(path), settings, progress=progress)
