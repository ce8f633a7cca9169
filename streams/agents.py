"""Faust agents: glue only (decode -> route -> load -> decide -> store -> send).

Concurrency stays 1 per agent: with more, Faust can commit an offset past a message still in
flight (faust-streaming #606).

Routing. ``data.tenant_id`` decides who owns a message, whatever key or partitioner its producer
used. A message already on its tenant's home partition (murmur2 of the tenant id, as the Java
client and aiokafka partition a key) is processed where it is; any other is forwarded, unchanged
and with its headers, to the home partition of the internal routed topic, which is
co-partitioned with the inputs, so one worker owns each tenant's whole hierarchy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.partitioner import murmur2

from schemas.codec import DecodeLimits, decode
from schemas.exceptions import DecodeError
from streams.enforce import Emit, Enforcer, Rejection
from streams.ingest import dead_letter_headers
from streams.translate import with_tenant

if TYPE_CHECKING:
    from streams.app import QuotaApp

__all__ = ["home_partition", "register"]

log = logging.getLogger(__name__)

ORIGIN_HEADER = "novaquota-origin"


def home_partition(tenant_id: str, partitions: int) -> int:
    """The partition a key lands on with the Java client's (and aiokafka's) default partitioner."""
    return (murmur2(tenant_id.encode()) & 0x7FFFFFFF) % partitions


def register(qa: QuotaApp) -> None:
    app = qa.app
    settings = qa.settings
    metrics = qa.metrics
    limits = DecodeLimits(
        max_amount=settings.max_amount,
        max_clock_skew_seconds=settings.max_clock_skew_seconds,
    )
    n_parts = settings.partitions
    out_topics = {
        "quota-violations": qa.violations,
        "quota-alerts": qa.alerts,
        "audit": qa.audit,
    }
    short = {
        qa.resource_events.get_topic_name(): "re",
        qa.quota_commands.get_topic_name(): "qc",
        qa.routed.get_topic_name(): "rt",
        qa.ticks.get_topic_name(): "tk",
        qa.system_totals.get_topic_name(): "st",
        qa.admission.get_topic_name(): "ad",
    }

    def scan(prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        from faust.streams import current_event

        event = current_event()
        store: Any = qa.instances.data
        if event is not None and hasattr(store, "_db_for_partition"):
            db = store._db_for_partition(event.message.partition)
            for k, v in db.items(from_key=prefix):
                if not k.startswith(prefix):
                    break
                yield k, v
            return
        for k in sorted(store.keys()):  # the in-memory store
            if k.startswith(prefix):
                yield k, store[k]

    def template_lookup(name: str) -> Any:
        from schemas.commands import TemplateSpec

        raw = qa.templates.get(name)
        return None if raw is None else TemplateSpec.model_validate_json(raw)

    streams_by_short = {v: k for k, v in short.items()}

    def committed(stream: str) -> int:
        from faust.types import TP

        name, partition = stream.split(":")
        offsets: Any = getattr(app.consumer, "_committed_offset", {})
        value = offsets.get(TP(streams_by_short[name], int(partition)))
        return -1 if value is None else int(value)

    enforcer = Enforcer(
        qa.tenants,
        qa.instances,
        scan,
        templates=template_lookup,
        dedup=qa.dedup,
        committed=committed,
        cache_bytes=settings.state_cache_mb * 2**20,
    )
    qa.enforcer = enforcer

    order = asyncio.Lock()

    async def to_dead_letter(
        msg: Any, reason: str, message: str, event_id: str | None = None
    ) -> None:
        headers = [h for h in (msg.headers or ()) if h[0] != ORIGIN_HEADER]
        origin = _origin(msg)
        await qa.dead_letter.send(
            key=msg.key,
            value=msg.value,
            headers=dead_letter_headers(
                reason,
                message,
                topic=origin[0],
                partition=origin[1],
                offset=origin[2],
                original=headers,
            ),
        )
        metrics.dead_letter.labels(reason).inc()
        metrics.events_processed.labels("invalid", reason).inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s: %s",
            *origin,
            reason,
            message,
            extra={
                "reason": reason,
                "topic": origin[0],
                "partition": origin[1],
                "offset": origin[2],
                **({"event_id": event_id} if event_id else {}),
            },
        )

    async def send_all(emits: list[Emit]) -> None:
        for e in emits:
            await out_topics[e.topic].send(key=e.key, value=e.value)
            if e.opened is not None:
                metrics.violations.labels(*e.opened).inc()

    async def handle(event: Any) -> None:
        msg = event.message
        try:
            decoded = decode(
                msg.value,
                list(msg.headers or ()),
                record_timestamp_ms=int(msg.timestamp * 1000),
                limits=limits,
            )
        except DecodeError as exc:
            await to_dead_letter(msg, exc.reason, exc.message)
            return
        topic = msg.topic
        if decoded.type == "template.defined":
            data: Any = decoded.data
            qa.templates[data.name] = data.model_dump_json(
                include={"name", "description", "quotas", "monthly_cost"}
            )
            metrics.events_processed.labels(decoded.type, "accepted").inc()
            return
        tenant = decoded.tenant_id
        if tenant is None and msg.key:
            tenant = msg.key.decode("utf-8", "replace")
        if tenant is None:
            await to_dead_letter(msg, "missing_field", "data.tenant_id: required for routing")
            return
        home = home_partition(tenant, n_parts)
        if short[topic] != "rt" and msg.partition != home:
            await qa.routed.send(
                key=tenant.encode(),
                value=msg.value,
                partition=home,
                headers=[
                    *list(msg.headers or ()),
                    (ORIGIN_HEADER, f"{topic}|{msg.partition}|{msg.offset}".encode()),
                ],
            )
            return
        stream = f"{short[topic]}:{msg.partition}"
        # The agents share one event loop; the lock keeps a tenant's outputs in the order its
        # state changed when two agents (events, commands) interleave at a send.
        async with order:
            try:
                emits = enforcer.process(with_tenant(decoded, tenant), stream, msg.offset)
            except Rejection as exc:
                await to_dead_letter(msg, exc.reason, exc.message, decoded.id)
                return
            qa.ticker.note(msg.partition, tenant, enforcer.last_deadline, enforcer.last_watermark)
            if enforcer.totals_delta:
                qa.add_totals(msg.partition, enforcer.totals_delta)
            await send_all(emits)
        metrics.events_processed.labels(decoded.type, "accepted").inc()
        metrics.event_lag.observe(max(0.0, time.time() - decoded.time_us / 1e6))

    async def consume(stream: Any) -> None:
        async for event in stream.events():
            await handle(event)

    async def consume_ticks(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            tick_us = int(msg.value)
            stream_id = f"tk:{msg.partition}"
            for tenant in qa.ticker.due(msg.partition, tick_us):
                async with order:
                    emits = enforcer.tick(tenant, tick_us, stream_id, msg.offset)
                    qa.ticker.note(msg.partition, tenant, enforcer.last_deadline, tick_us)
                    if enforcer.totals_delta:
                        qa.add_totals(msg.partition, enforcer.totals_delta)
                    await send_all(emits)

    latest_totals: dict[str, tuple[dict[str, int], int]] = {}

    async def consume_system_totals(stream: Any) -> None:
        """On the owner of the tenant "system": sum the partitions' totals, evaluate."""
        async for event in stream.events():
            msg = event.message
            body = orjson.loads(msg.value)
            latest_totals[msg.key.decode()] = (
                {r: int(a) for r, a in body["totals"].items()},
                int(body["watermark_us"]),
            )
            summed: dict[str, int] = {}
            for per, _wm in latest_totals.values():
                for r, a in per.items():
                    summed[r] = summed.get(r, 0) + a
            wm = max(w for _t, w in latest_totals.values())
            async with order:
                emits = enforcer.system_totals(summed, wm, f"st:{msg.partition}", msg.offset)
                await send_all(emits)

    desk = qa.desk

    async def consume_admission(stream: Any) -> None:
        """Check-and-reserve, release and TTL records of the check API, decided in order."""
        async for event in stream.events():
            msg = event.message
            try:
                body = orjson.loads(msg.value)
                stream_id = f"ad:{msg.partition}"
                async with order:
                    result, emits = enforcer.admit(body, stream_id, msg.offset)
                    await send_all(emits)
            except Rejection as exc:
                desk.resolve(body.get("request_id"), exc)
                continue
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                # written only by the check API: a bad record is a bug, not user input
                log.error("skipped a malformed admission record at %d: %r", msg.offset, exc)
                continue
            desk.resolve(body.get("request_id"), result)

    app.agent(qa.resource_events, name="ingest-resource-events", concurrency=1)(consume)
    app.agent(qa.quota_commands, name="ingest-quota-commands", concurrency=1)(consume)
    app.agent(qa.routed, name="ingest-routed", concurrency=1)(consume)
    app.agent(qa.ticks, name="ticks", concurrency=1)(consume_ticks)
    app.agent(qa.system_totals, name="system-totals", concurrency=1)(consume_system_totals)
    app.agent(qa.admission, name="admission", concurrency=1)(consume_admission)


def _origin(msg: Any) -> tuple[str, int, int]:
    for k, v in msg.headers or ():
        if k == ORIGIN_HEADER:
            t, p, o = v.decode().split("|")
            return t, int(p), int(o)
    return msg.topic, msg.partition, msg.offset
