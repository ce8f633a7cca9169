"""The audit topic over HTTP (``GET /api/v1/audit``) and the "as of" replay report
(``GET /api/v1/replay/report``) of the projection workers.

Audit records are read from the log on demand, not folded into the views. The audit topic is
keyed by tenant id, so a tenant's records are all on one partition (``home_partition``, the
producers' default partitioner). A page is read backwards from the end of that partition (or
from the offset in ``page_token``) in chunks of ``CHUNK`` records, kept while they match the
filters, until the page is full. So:

- nothing is stored per tenant or per record: memory is one chunk, whatever the log's size;
- a page of a tenant with many records reads about ``page_size`` of its records (plus the other
  tenants' records interleaved on its partition), never the whole topic; the next page starts
  where the previous one stopped (``page_token`` holds that offset);
- a request reads at most ``scan_max_records`` records (``NOVAQUOTA_PROJECTIONS_AUDIT_SCAN_MAX``):
  a rare match on a busy partition answers a short page with a ``next_page_token`` to go on
  from, rather than reading for as long as it takes;
- ``since`` also bounds the scan from below: no record written (broker timestamp) before
  ``since`` minus the accepted clock skew can carry an event time at or after ``since``.

An index per tenant in the projection store would answer filters without reading other
tenants' records, but it would copy the audit log into the store (unbounded for a long log,
and re-folded from the start of the topic on every fresh store). The log is the record of truth
and is already partitioned by tenant, which is the index that matters.

One consumer (no group: it never moves the views' positions) serves every audit request, one at
a time; a request that waits more than ``LOCK_WAIT`` seconds for it answers 503.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from novaquota.projections.exceptions import QueryError
from novaquota.projections.views import parse_time
from novaquota.schemas.common import parse_time_us
from novaquota.schemas.outputs import AUDIT_MODELS
from novaquota.streams.errors import ApiError
from novaquota.streams.settings import Settings

__all__ = [
    "AUDIT_TYPES",
    "AuditQuery",
    "AuditReader",
    "ReplayReports",
    "decode_page_token",
    "encode_page_token",
    "home_partition",
    "match",
    "parse_query",
]

log = logging.getLogger("novaquota.projections")

AUDIT_TYPES: Final = frozenset(AUDIT_MODELS)
CHUNK: Final = 500
"""Records read per step backwards."""
LOCK_WAIT: Final = 10.0
STALL: Final = 5.0
"""Seconds without progress before a read gives up (503)."""
MAX_VALUE: Final = 1 << 20
"""An audit record larger than this (never written by the workers) is skipped, not parsed."""
_MAX_FILTER: Final = 256


@dataclass(frozen=True)
class AuditQuery:
    tenant_id: str
    actor: str | None = None
    type: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    page_size: int = 50
    before: int | None = None
    """Exclusive upper bound of offsets (from ``page_token``); None: the end of the partition."""

    def fingerprint(self) -> str:
        raw = "\x1f".join(
            str(x) for x in (self.tenant_id, self.actor, self.type, self.since_us, self.until_us)
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


def encode_page_token(q: AuditQuery, before: int) -> str:
    raw = f"a1:{before}:{q.fingerprint()}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, q: AuditQuery) -> int:
    bad = QueryError(
        "invalid_page_token", "page_token: not a next_page_token of this listing and filter"
    )
    if len(token) > 128:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        tag, before, fp = raw.split(":")
        offset = int(before)
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if tag != "a1" or fp != q.fingerprint() or offset < 0:
        raise bad
    return offset


def parse_query(query: Any, tenant_id: str) -> AuditQuery:
    """The query string of ``GET /api/v1/audit`` (tenant already authorized); ``QueryError``
    (400) for bad input."""
    actor = query.get("actor") or None
    type_ = query.get("type") or None
    if actor is not None and len(actor) > _MAX_FILTER:
        raise QueryError("invalid_actor", f"actor: at most {_MAX_FILTER} characters")
    if type_ is not None and type_ not in AUDIT_TYPES:
        raise QueryError("invalid_type", f"type: one of {', '.join(sorted(AUDIT_TYPES))}")
    since = parse_time(query.get("since"), "since")
    until = parse_time(query.get("until"), "until")
    if since is not None and until is not None and since > until:
        raise QueryError("invalid_time", "since is after until")
    size = query.get("page_size") or "50"
    if not size.isdigit() or not 1 <= int(size) <= 200:
        raise QueryError("invalid_page_size", "page_size: an integer 1-200")
    q = AuditQuery(tenant_id, actor, type_, since, until, int(size))
    token = query.get("page_token")
    if token:
        q = AuditQuery(**{**q.__dict__, "before": decode_page_token(token, q)})
    return q


def home_partition(tenant_id: str, partitions: int) -> int:
    """The partition of a tenant's key: ``streams.agents.home_partition`` (the producers'
    default partitioner), without importing the enforcement workers' Faust modules."""
    return (murmur2(tenant_id.encode()) & 0x7FFFFFFF) % partitions


def _record(value: bytes | None, q: AuditQuery) -> dict[str, Any] | None:
    """The audit record's view, or None when it is not one of this tenant's."""
    if not value or len(value) > MAX_VALUE:
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), dict):
        return None
    data = obj["data"]
    if data.get("tenant_id") != q.tenant_id:
        return None
    try:
        time_us = parse_time_us(str(obj.get("time")))
    except ValueError:
        return None
    return {
        "id": obj.get("id"),
        "type": obj.get("type"),
        "source": obj.get("source"),
        "time": obj.get("time"),
        "_us": time_us,
        "actor": data.get("actor"),
        "cause": data.get("cause"),
        "tenant_id": data.get("tenant_id"),
        "details": data.get("details", {}),
    }


def match(rec: dict[str, Any], q: AuditQuery) -> bool:
    if q.actor is not None and rec["actor"] != q.actor:
        return False
    if q.type is not None and rec["type"] != q.type:
        return False
    if q.since_us is not None and rec["_us"] < q.since_us:
        return False
    return not (q.until_us is not None and rec["_us"] > q.until_us)


class AuditReader:
    """Pages of a tenant's audit records, newest written first, read from its partition."""

    def __init__(self, settings: Settings, scan_max_records: int = 50_000) -> None:
        self.settings = settings
        self.topic = settings.topics.audit
        self.scan_max_records = scan_max_records
        self.skew_ms = int(settings.max_clock_skew_seconds * 1000)
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None

    async def _start(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self.settings.kafka_client_config(), group_id=None, enable_auto_commit=False,
                isolation_level="read_committed", fetch_max_wait_ms=100,
                max_partition_fetch_bytes=1 << 20,
            )  # fmt: skip
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def page(self, q: AuditQuery) -> dict[str, Any]:
        try:
            await asyncio.wait_for(self._lock.acquire(), LOCK_WAIT)
        except TimeoutError:
            raise ApiError(503, "unavailable", "the audit reader is busy; retry") from None
        try:
            return await self._page(q)
        except (ApiError, QueryError):
            raise
        except Exception as exc:
            log.warning("reading the audit topic failed: %s", exc)
            await self.close()  # a fresh consumer next time
            raise ApiError(503, "unavailable", "the audit topic cannot be read now") from None
        finally:
            self._lock.release()

    async def _partition(self, consumer: AIOKafkaConsumer, tenant: str) -> TopicPartition:
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            raise ApiError(503, "unavailable", f"topic {self.topic} does not exist")
        return TopicPartition(self.topic, home_partition(tenant, len(parts)))

    async def _page(self, q: AuditQuery) -> dict[str, Any]:
        consumer = await self._start()
        tp = await self._partition(consumer, q.tenant_id)
        consumer.assign([tp])
        lo = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if q.since_us is not None:
            floor_ms = max(0, q.since_us // 1000 - self.skew_ms)
            found = await consumer.offsets_for_times({tp: floor_ms})
            at = found.get(tp)
            lo = max(lo, at.offset if at is not None else end)
        cursor = end if q.before is None else min(q.before, end)
        records: list[dict[str, Any]] = []
        scanned = 0
        next_before: int | None = None
        while cursor > lo and next_before is None:
            if scanned >= self.scan_max_records:
                next_before = cursor
                break
            start = max(lo, cursor - CHUNK)
            chunk = await self._read(consumer, tp, start, cursor)
            scanned += cursor - start
            for offset, value in reversed(chunk):
                rec = _record(value, q)
                if rec is None or not match(rec, q):
                    continue
                rec["offset"] = offset
                records.append(rec)
                if len(records) == q.page_size:
                    next_before = offset
                    break
            cursor = start
        if next_before is not None and next_before <= lo:
            next_before = None
        for rec in records:
            del rec["_us"]
        return {
            "tenant_id": q.tenant_id,
            "records": records,
            "next_page_token": encode_page_token(q, next_before)
            if next_before is not None
            else None,
            "scanned": scanned,
            "partition": tp.partition,
        }

    async def _read(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int
    ) -> list[tuple[int, bytes | None]]:
        """The records at offsets [start, stop) (fewer where offsets hold no record: a
        transaction marker, a compacted or deleted record)."""
        consumer.seek(tp, start)
        out: list[tuple[int, bytes | None]] = []
        last_progress = time.monotonic()
        while (position := await consumer.position(tp)) < stop:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=CHUNK)
            got = batch.get(tp, [])
            for r in got:
                if r.offset >= stop:
                    return out
                out.append((r.offset, r.value))
            if got or await consumer.position(tp) > position:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL:
                raise TimeoutError(f"reading {tp.topic}:{tp.partition} {start}-{stop} stalled")
        return out


# --- replay reports ------------------------------------------------------------------------------


class ReplayReports:
    """``novaquota replay --until T --tenant ID`` run by the server: in a thread of its own
    (its own event loop: the replay reads the log with its own consumers), at most ``limit`` at
    a time (else 503 with ``Retry-After``), cancelled after ``timeout`` seconds (504)."""

    def __init__(self, settings: Settings, *, limit: int = 2, timeout: float = 60.0) -> None:
        self.settings = settings
        self.limit = limit
        self.timeout = timeout
        self.running = 0

    async def report(self, tenant: str, until_us: int, fmt: str) -> bytes:
        if self.running >= self.limit:
            raise ApiError(503, "busy", f"{self.limit} replays are running; retry later")
        self.running += 1
        job = asyncio.ensure_future(asyncio.to_thread(self._run, tenant, until_us, fmt))

        def done(_: asyncio.Future[bytes]) -> None:
            self.running -= 1  # when the thread ends, even if the caller went away

        job.add_done_callback(done)
        return await asyncio.shield(job)

    def _run(self, tenant: str, until_us: int, fmt: str) -> bytes:
        from novaquota.projections.log import LogReadError
        from novaquota.projections.replay import build_replay_report, replay

        async def bounded() -> bytes:
            result = await asyncio.wait_for(
                replay(self.settings, until_us, tenant=tenant), self.timeout
            )
            return build_replay_report(result).render(fmt)

        try:
            return asyncio.run(bounded())
        except TimeoutError:
            raise ApiError(
                504, "replay_timeout", f"the replay took longer than {self.timeout:g} s"
            ) from None
        except LogReadError as exc:
            raise ApiError(503, "unavailable", f"the log cannot be read now: {exc}") from None
