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
from streams.enforce import Emit, Enforcer, Identities, Rejection
from streams.faust_compat import committed_offset, partition_db, table_rows
from streams.ingest import dead_letter_headers
from streams.translate import with_tenant

if TYPE_CHECKING:
    from streams.app import QuotaApp

__all__ = ["home_partition", "register"]

log = logging.getLogger(__name__)

ORIGIN_HEADER = "novaquota-origin"
TEMPLATE_IDENTITY = b"\x00identity"
"""Key prefix of template.defined identities in the templates table (no template name has it)."""
SWEEP_EVERY = 256
SWEEP_BUDGET = 2048
"""Expired identities are looked for among 2,048 stored ones every 256 messages of a partition:
8 reads a message, so the store is read through in about an eighth of its size in messages."""


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
        db = None if event is None else partition_db(qa.instances, event.message.partition)
        if db is not None:
            for k, v in db.items(from_key=prefix):
                if not k.startswith(prefix):
                    break
                yield k, v
            return
        store: Any = qa.instances.data
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
        value = committed_offset(app, TP(streams_by_short[name], int(partition)))
        return -1 if value is None else value

    enforcer = Enforcer(
        qa.tenants,
        qa.instances,
        scan,
        templates=template_lookup,
        dedup=qa.dedup,
        committed=committed,
        cache_bytes=settings.state_cache_mb * 2**20,
    )
    enforcer.fault_ids = frozenset(i for i in settings.fault_event_ids.split(",") if i)
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

    async def internal_error(
        msg: Any, stage: str, exc: BaseException, event_id: str | None
    ) -> None:
        """An unexpected exception while applying one message: the enforcer left state as it
        was; the message goes to the dead-letter topic and the partition goes on."""
        metrics.internal_errors.labels(stage).inc()
        log.error(
            "internal error in %s at %s[%d]@%d (event %s)",
            stage,
            msg.topic,
            msg.partition,
            msg.offset,
            event_id,
            exc_info=exc,
            extra={"stage": stage, **({"event_id": event_id} if event_id else {})},
        )
        await to_dead_letter(msg, "internal_error", f"{type(exc).__name__}: {exc}", event_id)

    sweeps: dict[int, tuple[int, bytes | None]] = {}

    def sweep_identities(partition: int) -> None:
        """Every ``SWEEP_EVERY`` messages of a partition, look at the next ``SWEEP_BUDGET``
        stored identities of that partition and delete the expired ones (local RocksDB only:
        the changelog's retention drops them there, and a restored expired identity is
        ignored by lookups until the sweep comes by again)."""
        count, cursor = sweeps.get(partition, (0, b""))
        count += 1
        if count < SWEEP_EVERY:
            sweeps[partition] = (count, cursor)
            return
        db = partition_db(qa.dedup, partition)
        if db is None:
            return
        identities = enforcer.identities
        assert identities is not None
        nxt = identities.sweep(
            table_rows(qa.dedup, partition, cursor or b""),
            db.delete,
            lambda tenant: watermark_of(tenant, partition),
            SWEEP_BUDGET,
        )
        sweeps[partition] = (0, nxt)

    def watermark_of(tenant: str, partition: int) -> int:
        """The tenant's watermark; the partition's for a tenant gone (offboarded)."""
        rec, raw = enforcer.load(tenant)
        return rec.state.watermark_us if raw is not None else qa.ticker.watermark.get(partition, 0)

    async def send_all(emits: list[Emit]) -> None:
        for e in emits:
            await out_topics[e.topic].send(key=e.key, value=e.value)
            if e.opened is not None:
                metrics.violations.labels(*e.opened).inc()

    async def handle(event: Any) -> None:
        msg = event.message
        try:
            await apply(msg)
        except Exception as exc:  # no input may stop a partition
            await internal_error(msg, "apply", exc, _peek_id(msg))

    async def apply(msg: Any) -> None:
        """Decode, route and apply one input message."""
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
            define_template(decoded, f"{short[topic]}:{msg.partition}:{msg.offset}")
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
            except Exception as exc:
                await internal_error(msg, "apply", exc, decoded.id)
                return
            if enforcer.last_duplicate:
                count_duplicate(decoded.type)
                return
            qa.ticker.note(msg.partition, tenant, enforcer.last_deadline, enforcer.last_watermark)
            if enforcer.totals_delta:
                qa.add_totals(msg.partition, enforcer.totals_delta)
            await send_all(emits)
        sweep_identities(msg.partition)
        metrics.events_processed.labels(decoded.type, "accepted").inc()
        metrics.event_lag.observe(max(0.0, time.time() - decoded.time_us / 1e6))

    def count_duplicate(type_: str) -> None:
        metrics.duplicates.labels(type_).inc()
        metrics.events_processed.labels(type_, "duplicate").inc()

    def define_template(decoded: Any, marker: str) -> None:
        """A custom template, kept in a global table; its identity is kept beside it, so a
        second message with the same (source, id) is ignored as for every other input."""
        identity = TEMPLATE_IDENTITY + Identities.key("", decoded.source, decoded.id)
        held = qa.templates.get(identity)
        if held is not None and held != marker.encode():
            count_duplicate(decoded.type)
            return
        data: Any = decoded.data
        qa.templates[data.name] = data.model_dump_json(
            include={"name", "description", "quotas", "monthly_cost"}
        )
        qa.templates[identity] = marker.encode()
        metrics.events_processed.labels(decoded.type, "accepted").inc()

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
                    try:
                        emits = enforcer.tick(tenant, tick_us, stream_id, msg.offset)
                    except Exception as exc:  # the tenant's state is as it was; go on
                        await internal_error(msg, "tick", exc, f"tick:{tenant}")
                        continue
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
                try:
                    emits = enforcer.system_totals(summed, wm, f"st:{msg.partition}", msg.offset)
                except Exception as exc:
                    await internal_error(msg, "system_totals", exc, None)
                    continue
                await send_all(emits)

    desk = qa.desk

    async def consume_admission(stream: Any) -> None:
        """Check-and-reserve, release and TTL records of the check API, decided in order."""
        async for event in stream.events():
            msg = event.message
            body: Any = None
            try:
                body = orjson.loads(msg.value)
                stream_id = f"ad:{msg.partition}"
                async with order:
                    result, emits = enforcer.admit(body, stream_id, msg.offset)
                    await send_all(emits)
            except Rejection as exc:
                desk.resolve(body.get("request_id"), exc)
                continue
            except Exception as exc:
                # written only by the check API: a bad record, or one the rules fail on, is a
                # bug, not user input; the caller gets an error and the partition goes on
                await internal_error(msg, "admission", exc, None)
                if isinstance(body, dict):
                    desk.resolve(body.get("request_id"), exc)
                continue
            desk.resolve(body.get("request_id"), result)

    app.agent(qa.resource_events, name="ingest-resource-events", concurrency=1)(consume)
    app.agent(qa.quota_commands, name="ingest-quota-commands", concurrency=1)(consume)
    app.agent(qa.routed, name="ingest-routed", concurrency=1)(consume)
    app.agent(qa.ticks, name="ticks", concurrency=1)(consume_ticks)
    app.agent(qa.system_totals, name="system-totals", concurrency=1)(consume_system_totals)
    app.agent(qa.admission, name="admission", concurrency=1)(consume_admission)


def _peek_id(msg: Any) -> str | None:
    """The CloudEvent id of a message that could not be applied, for the log, if it has one."""
    for k, v in msg.headers or ():
        if k == "ce_id":
            return bytes(v).decode("utf-8", "replace")
    try:
        body = orjson.loads(msg.value)
    except (orjson.JSONDecodeError, TypeError):
        return None
    return str(body.get("id")) if isinstance(body, dict) and "id" in body else None


def _origin(msg: Any) -> tuple[str, int, int]:
    for k, v in msg.headers or ():
        if k == ORIGIN_HEADER:
            t, p, o = v.decode().split("|")
            return t, int(p), int(o)
    return msg.topic, msg.partition, msg.offset
