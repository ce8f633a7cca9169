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

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.partitioner import murmur2

from novaquota.schemas.codec import DecodeLimits
from novaquota.schemas.commands import COMMAND_MODELS
from novaquota.streams import step
from novaquota.streams.batch import Batch
from novaquota.streams.enforce import Emit, Enforcer, Identities, Rejection
from novaquota.streams.faust_compat import committed_offset, waiting_input
from novaquota.streams.ingest import dead_letter_headers
from novaquota.streams.store.records import IDENTITY, REJECTION, rejection_key, rejection_value

if TYPE_CHECKING:
    from novaquota.streams.app import QuotaApp

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

    def template_lookup(name: str) -> Any:
        from novaquota.schemas.commands import TemplateSpec

        raw = qa.templates.get(name)
        return None if raw is None else TemplateSpec.model_validate_json(raw)

    streams_by_short = {v: k for k, v in short.items()}

    @functools.lru_cache(maxsize=1024)
    def stream_tp(stream: str) -> Any:
        from faust.types import TP

        name, partition = stream.split(":")
        return TP(streams_by_short[name], int(partition))

    def committed(stream: str) -> int:
        value = committed_offset(app, stream_tp(stream))
        return -1 if value is None else value

    store = qa.store
    enforcer = Enforcer(store, templates=template_lookup, committed=committed)
    enforcer.fault_ids = frozenset(i for i in settings.fault_event_ids.split(",") if i)
    qa.enforcer = enforcer

    async def send(e: Emit) -> None:
        await out_topics[e.topic].send(key=e.key, value=e.value)
        if e.opened is not None:
            metrics.violations.labels(*e.opened).inc()

    def written(messages: int, tenants: int, seconds: float) -> None:
        metrics.batch_messages.observe(messages)
        metrics.batch_seconds.observe(seconds)

    batch = Batch(
        store,
        qa.writer.write,
        send,
        max_events=settings.batch_max_events,
        max_wait=settings.batch_max_wait_ms / 1000,
        on_written=written,
    )
    qa.batch = batch
    order = batch.lock

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

    sweeps: dict[int, tuple[int, bytes, bytes]] = {}

    def sweep_identities(partition: int) -> None:
        """Every ``SWEEP_EVERY`` messages of a partition, look at the next ``SWEEP_BUDGET``
        committed identities of that partition and delete the expired ones (staged, so the
        deletes reach the changelog with the batch); rejection rows the same way, with their
        own cursor (they are few: one per dead-lettered command)."""
        count, cursor, rejected = sweeps.get(partition, (0, b"", b""))
        count += 1
        if count < SWEEP_EVERY:
            sweeps[partition] = (count, cursor, rejected)
            return

        def sweep(kind: bytes, start: bytes) -> bytes:
            nxt = enforcer.identities.sweep(
                store.base.scan(partition, kind, start),
                lambda tenant: watermark_of(tenant, partition),
                SWEEP_BUDGET,
                kind,
            )
            return nxt or b""

        sweeps[partition] = (0, sweep(IDENTITY, cursor), sweep(REJECTION, rejected))

    def note_rejection(got: step.Outcome, reason: str, message: str) -> None:
        """Stage why a tenant's command was dead-lettered, with the batch, so that the tenant's
        owner can answer ``rejected`` for it (``streams.manage``). Resource events are not
        noted: nobody asks for their status, and they can be many. Registered as a step of the
        tenant, so that a later failure in the batch that drops the tenant's staged rows
        stages it again."""
        decoded: Any = got.decoded
        tenant = got.tenant
        if decoded is None or tenant is None or decoded.type not in COMMAND_MODELS:
            return
        key = rejection_key(tenant, decoded.source, decoded.id)
        value = rejection_value(reason, message, decoded.time_us)

        def put() -> None:
            store.put(key, value, tenant)

        put()
        store.done(tenant, put)

    def watermark_of(tenant: str, partition: int) -> int:
        """The tenant's watermark; the partition's for a tenant gone (offboarded)."""
        rec, exists = enforcer.load(tenant)
        return rec.state.watermark_us if exists else qa.ticker.watermark.get(partition, 0)

    async def handle(event: Any) -> None:
        msg = event.message
        try:
            await apply(event)
        except Exception as exc:  # no input may stop a partition
            await internal_error(msg, "apply", exc, _peek_id(msg))
            batch.add(event)

    async def apply(event: Any) -> None:
        """Classify, route and apply one input message (``streams.step``); add it to the
        batch."""
        msg = event.message
        topic = msg.topic
        got = step.classify(
            msg.value,
            list(msg.headers or ()),
            msg.key,
            timestamp_ms=int(msg.timestamp * 1000),
            limits=limits,
        )
        if got.kind == "template":
            define_template(got.decoded, f"{short[topic]}:{msg.partition}:{msg.offset}")
        elif got.kind == "dead_letter":
            await to_dead_letter(msg, got.reason, got.message)
        elif short[topic] != "rt" and msg.partition != qa.home(got.tenant):
            await qa.routed.send(
                key=got.tenant.encode(),  # type: ignore[union-attr]
                value=msg.value,
                partition=qa.home(got.tenant),
                headers=[
                    *list(msg.headers or ()),
                    (ORIGIN_HEADER, f"{topic}|{msg.partition}|{msg.offset}".encode()),
                ],
            )
        else:
            await apply_here(event, got)
            return
        batch.add(event)

    async def apply_here(event: Any, got: step.Outcome) -> None:
        msg = event.message
        decoded: Any = got.decoded
        stream = f"{short[msg.topic]}:{msg.partition}"
        async with order:
            try:
                done = step.apply(enforcer, got, stream, msg.offset)
            except Exception as exc:
                note_rejection(got, "internal_error", f"{type(exc).__name__}: {exc}")
                await internal_error(msg, "apply", exc, decoded.id)
                batch.add(event)
                return
            if done.kind != "dead_letter":
                sweep_identities(msg.partition)
                if done.kind == "duplicate":
                    count_duplicate(decoded.type)
                else:
                    applied(msg.partition, decoded)
                batch.add(event, done.emits)
                return
            note_rejection(got, done.reason, done.message)
        await to_dead_letter(msg, done.reason, done.message, decoded.id)
        batch.add(event)

    def applied(partition: int, decoded: Any) -> None:
        qa.ticker.note(
            partition, decoded.tenant_id, enforcer.last_deadline, enforcer.last_watermark
        )
        if enforcer.totals_delta:
            qa.add_totals(partition, enforcer.totals_delta)
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

    async def write_if_due(stream: Any) -> None:
        if batch.due(waiting_input(stream)):
            async with order:
                await batch.flush()

    async def consume(stream: Any) -> None:
        stream = stream.noack()  # acknowledged by the batch, once written
        async for event in stream.events():
            await handle(event)
            await write_if_due(stream)

    async def consume_ticks(stream: Any) -> None:
        stream = stream.noack()
        async for event in stream.events():
            msg = event.message
            tick_us = int(msg.value)
            stream_id = f"tk:{msg.partition}"
            emits: list[Emit] = []
            failed: list[tuple[str, Exception]] = []
            async with order:
                for tenant in qa.ticker.due(msg.partition, tick_us):
                    try:
                        emits += enforcer.tick(tenant, tick_us, stream_id, msg.offset)
                    except Exception as tick_error:  # the tenant's state is as it was; go on
                        failed.append((tenant, tick_error))
                        continue
                    qa.ticker.note(msg.partition, tenant, enforcer.last_deadline, tick_us)
                    if enforcer.totals_delta:
                        qa.add_totals(msg.partition, enforcer.totals_delta)
                batch.add(event, emits)
            for tenant, failure in failed:
                await internal_error(msg, "tick", failure, f"tick:{tenant}")
            await write_if_due(stream)

    latest_totals: dict[str, tuple[dict[str, int], int]] = {}

    async def consume_system_totals(stream: Any) -> None:
        """On the owner of the tenant "system": sum the partitions' totals, evaluate."""
        stream = stream.noack()
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
            error: Exception | None = None
            emits: list[Emit] = []
            async with order:
                try:
                    emits = enforcer.system_totals(summed, wm, f"st:{msg.partition}", msg.offset)
                except Exception as exc:
                    error = exc
                batch.add(event, emits)
            if error is not None:
                await internal_error(msg, "system_totals", error, None)
            await write_if_due(stream)

    desk = qa.desk

    async def consume_admission(stream: Any) -> None:
        """Check-and-reserve, release and TTL records of the check API, decided in order;
        each answer is given once the state it decided on is written."""
        stream = stream.noack()
        async for event in stream.events():
            msg = event.message
            body: Any = None
            error: Exception | None = None
            try:
                body = orjson.loads(msg.value)
                stream_id = f"ad:{msg.partition}"
                async with order:
                    try:
                        result, emits = enforcer.admit(body, stream_id, msg.offset)
                    except Exception as exc:
                        error = exc
                    else:
                        request_id = body.get("request_id")
                        batch.add(
                            event,
                            emits,
                            lambda r=request_id, res=result: desk.resolve(r, res),  # type: ignore[misc]
                        )
            except Exception as exc:  # not JSON
                error = exc
            if error is not None:
                if not isinstance(error, Rejection):
                    # written only by the check API: a bad record, or one the rules fail
                    # on, is a bug, not user input; the caller gets an error and the
                    # partition goes on
                    await internal_error(msg, "admission", error, None)
                if isinstance(body, dict):
                    desk.resolve(body.get("request_id"), error)
                batch.add(event)
            await write_if_due(stream)

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
