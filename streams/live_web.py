"""The live WebSocket ``/api/v1/quotas/live`` on every enforcement worker (contract section 6).

Any worker serves any tenant, but a tenant's usage changes only on the worker that owns its
partition. So the feed goes through Kafka:

- **Owner side** (``UsageFeed``): after a batch is written (never inside the write path), the
  tenants it changed are noted; a loop publishes, at most once a second per tenant, the rows
  (entity, resource) whose usage, limit or reservation changed since the tenant's last snapshot,
  to the internal ``internal-live`` topic (one hour of retention).
- **Every worker** (``LiveHub``): one plain consumer, without a consumer group, tails
  ``internal-live``, ``quota-violations`` and ``quota-alerts`` (where the projection workers put
  their cost alerts too) from the latest offset, and hands each record whose key is a
  subscribed tenant to that tenant's subscribers. Records of tenants nobody watches are not
  even decoded, unless an admin subscribed to every tenant (``scope=all``): then each violation
  and alert record is decoded once and offered to those subscribers too (never the usage
  snapshots, the bulk of the traffic).

Each client has a bounded queue (``streams.live.Subscriber``) and its own sender task, so a slow
client costs its own queue and socket buffer only; when its queue overflows it gets a
``lagging`` notice and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType
from aiohttp import web as aioweb
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust import web

from novaquota.streams.auth import WS_PROTOCOL, offered_protocols
from novaquota.streams.errors import ApiError
from novaquota.streams.live import (
    LAGGING_CLOSE_CODE,
    Filters,
    Subscriber,
    UsageDiff,
    alert_message,
    lagging_message,
    parse_filters,
    snapshot_body,
    usage_messages,
    usage_rows,
    violation_message,
)

if TYPE_CHECKING:
    from novaquota.streams.app import QuotaApp

__all__ = ["LiveHub", "UsageFeed", "register"]

log = logging.getLogger(__name__)

PUBLISH_EVERY = 0.2
"""How often the owner looks for tenants due a snapshot: the feed's added delay, at most."""
MIN_INTERVAL = 1.0
"""A tenant's snapshots are at least this far apart: usage_updated is coalesced per second."""
CLOSE_GRACE = 5.0
"""A lagging client whose socket stays blocked this long is cut off without a close frame."""


class UsageFeed:
    """Owner side: coalesced usage snapshots of the tenants written batches changed."""

    def __init__(self, qa: QuotaApp) -> None:
        self.qa = qa
        self.touched: set[str] = set()
        self.last_sent: dict[str, float] = {}
        self.diff = UsageDiff()
        self.topic = qa.app.topic(
            qa.settings.topics.live,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    def note(self, tenants: list[str]) -> None:
        """``Batch.on_durable``: only remembers names, so the write path pays a set update."""
        self.touched.update(tenants)

    def due(self, now: float) -> list[str]:
        """Touched tenants whose last snapshot is at least ``MIN_INTERVAL`` old; the others
        wait for their second to pass."""
        last = self.last_sent
        ready = [t for t in self.touched if now - last.get(t, -MIN_INTERVAL) >= MIN_INTERVAL]
        self.touched.difference_update(ready)
        for tenant in [t for t, at in self.last_sent.items() if now - at >= MIN_INTERVAL]:
            if tenant not in self.touched:
                del self.last_sent[tenant]
        return ready

    async def publish(self, tenants: Iterable[str], now: float) -> int:
        sent = 0
        owned = self.qa.active_inputs
        for tenant in tenants:
            if tenant == "system" or self.qa.home(tenant) not in owned:
                self.diff.forget(tenant)
                continue
            rec, _exists = self.qa.store.committed_record(tenant)
            rows = self.diff.changed(tenant, usage_rows(rec.tenant))
            self.last_sent[tenant] = now
            if not rows:
                continue
            body = snapshot_body(tenant, rec.state.watermark_us, rows)
            await self.topic.send(key=tenant.encode(), value=orjson.dumps(body))
            sent += 1
        return sent

    async def run(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_EVERY)
            now = time.monotonic()
            try:
                await self.publish(self.due(now), now)
            except Exception:  # the feed must never take the worker down
                log.exception("publishing live usage snapshots failed")


class LiveHub:
    """Every worker: the subscribers by tenant, and the tail of the topics that feed them."""

    def __init__(self, qa: QuotaApp) -> None:
        self.qa = qa
        self.by_tenant: dict[str, set[Subscriber]] = {}
        self.everyone: set[Subscriber] = set()
        """``scope=all`` subscribers: violations and alerts of every tenant."""
        t = qa.settings.topics
        self.kinds = {t.live: "usage", t.quota_violations: "violation", t.quota_alerts: "alert"}
        self.started = asyncio.Event()

    @property
    def clients(self) -> int:
        return len(self.everyone) + sum(len(subs) for subs in self.by_tenant.values())

    def subscribe(self, sub: Subscriber) -> None:
        tenant = sub.filters.tenant_id
        if tenant is None:
            self.everyone.add(sub)
        else:
            self.by_tenant.setdefault(tenant, set()).add(sub)
        self.qa.metrics.live_clients.set(self.clients)

    def unsubscribe(self, sub: Subscriber) -> None:
        tenant = sub.filters.tenant_id
        if tenant is None:
            self.everyone.discard(sub)
        else:
            subs = self.by_tenant.get(tenant)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.by_tenant[tenant]
        self.qa.metrics.live_clients.set(self.clients)

    def dispatch(self, topic: str, key: bytes | None, value: bytes | None) -> bool:
        """One tailed record to the subscribers of its tenant (the record key), and a
        violation or alert also to the all-tenants subscribers; whether it had any."""
        if key is None or value is None:
            return False
        kind = self.kinds.get(topic)
        subs = self.by_tenant.get(key.decode("utf-8", "replace"))
        everyone = self.everyone if kind in ("violation", "alert") else None
        if not subs and not everyone:
            return False
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(body, dict):
            return False
        if kind == "usage":
            for sub in list(subs or ()):
                for message in usage_messages(body, sub.filters):
                    sub.offer(message)
            return True
        found = violation_message(body) if kind == "violation" else alert_message(body)
        if found is None:
            return False
        for sub in [*(subs or ()), *(everyone or ())]:
            if sub.filters.accepts(found):
                sub.offer(found)
        return True

    async def run(self) -> None:
        """Tail the feed topics from their end, for as long as the worker runs."""
        while True:
            try:
                await self._tail()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tailing the live feed topics failed; starting again in 1 s")
                await asyncio.sleep(1.0)

    async def _tail(self) -> None:
        settings = self.qa.settings
        consumer = AIOKafkaConsumer(
            **settings.kafka_client_config(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in self.kinds for p in range(settings.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:  # positioned before anyone is told the feed is up
                await consumer.position(tp)
            self.started.set()
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                for tp, records in batches.items():
                    for rec in records:
                        if self.dispatch(tp.topic, rec.key, rec.value):
                            # the senders run before the next record, so a client's queue
                            # holds at most a record's worth unless its socket is blocked
                            await asyncio.sleep(0)
        finally:
            self.started.clear()
            await consumer.stop()


class Connection:
    """One subscribed WebSocket: its queue, its sender and its cut-off when lagging."""

    def __init__(self, qa: QuotaApp, request: Any, ws: aioweb.WebSocketResponse, f: Filters):
        self.qa = qa
        self.request = request
        self.ws = ws
        self.sub = Subscriber(f, qa.settings.live_client_queue, on_lagging=self._lagging)
        self.sub.wake = asyncio.Event()
        self.cutoff: asyncio.TimerHandle | None = None

    def _lagging(self) -> None:
        """The queue overflowed. The sender says so and closes; if its socket stays blocked,
        the connection is cut off after ``CLOSE_GRACE``."""
        self.qa.metrics.live_lagging.inc()
        loop = asyncio.get_running_loop()
        self.cutoff = loop.call_later(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def pump(self) -> None:
        """Send what the queue holds, in order; after a lagging mark, the notice and a close."""
        sub = self.sub
        while True:
            await sub.wake.wait()
            if sub.lagging:
                with contextlib.suppress(Exception):
                    await self.ws.send_str(orjson.dumps(lagging_message(sub.missed)).decode())
                    await self.ws.close(code=LAGGING_CLOSE_CODE, message=b"lagging")
                return
            for message in sub.take():
                await self.ws.send_str(orjson.dumps(message).decode())
                if sub.lagging:
                    break

    async def serve(self, hub: LiveHub) -> None:
        hub.subscribe(self.sub)
        sender = asyncio.create_task(self.pump())
        try:
            async for msg in self.ws:  # the client sends nothing we act on; pings are automatic
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            hub.unsubscribe(self.sub)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if self.cutoff is not None:
                self.cutoff.cancel()


def _bound_socket(request: Any, buffer_bytes: int) -> None:
    """Small send buffers per client (the kernel's and the transport's): a reader that stops
    reading blocks its own sends soon (and so shows as lagging) instead of parking megabytes in
    the kernel or the worker."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
    if transport is not None:
        transport.set_write_buffer_limits(high=buffer_bytes)


def register(qa: QuotaApp) -> None:
    app = qa.app
    hub = LiveHub(qa)
    qa.live = hub
    if qa.settings.live_publish:
        feed = UsageFeed(qa)
        qa.batch.on_durable = feed.note
        app.task(feed.run)
    app.task(hub.run)

    def refuse(view: web.View, exc: ApiError) -> web.Response:
        return view.json(exc.body(), status=exc.status, headers=exc.headers())

    @app.page("/api/v1/quotas/live")
    async def live(self: web.View, request: Any) -> Any:
        """Everything that can be refused is refused with a JSON error before the upgrade."""
        try:
            filters = parse_filters(request.query)
            if filters.all_tenants:  # every tenant: admins only (404 for every other role)
                qa.access(request, None, "admin")
            else:
                qa.access(request, filters.tenant_id, "read")
            if hub.clients >= qa.settings.live_max_clients:
                raise ApiError(503, "too_many_clients", "this worker serves enough live clients")
            if not hub.started.is_set():
                raise ApiError(503, "unavailable", "the live feed is starting; retry")
            offered = offered_protocols(request)
            if offered and WS_PROTOCOL not in offered:
                # refused before aiohttp would log the offered protocols (a token among them)
                raise ApiError(400, "invalid_subprotocol", f"offer the subprotocol {WS_PROTOCOL!r}")
            buffer_bytes = qa.settings.live_socket_buffer_kb * 1024
            # writer_limit: how much is written between two looks at the transport's buffer.
            # protocols: a browser's offer (novaquota, bearer.<token>) gets novaquota back,
            # never the token.
            ws = aioweb.WebSocketResponse(
                heartbeat=30.0,
                max_msg_size=4096,
                writer_limit=buffer_bytes,
                protocols=(WS_PROTOCOL,),
            )
            if not ws.can_prepare(request).ok:
                raise ApiError(400, "websocket_required", "connect with a WebSocket upgrade")
        except ApiError as exc:
            return refuse(self, exc)
        _bound_socket(request, buffer_bytes)
        await ws.prepare(request)
        await Connection(qa, request, ws, filters).serve(hub)
        return ws
