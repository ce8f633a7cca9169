"""The operations overview (``GET /api/v1/operations/overview``, admin): what spans tenants.

- ``open_violations_by_kind``: the open episodes the projection worker already folds from the
  violations topic, counted by ``kind``.
- ``DeadLetters``: the dead-letter topic over the last hour. A tail of its own (a plain
  consumer, no group: it never moves the views' positions nor their readiness) starts an hour
  back by record time and keeps per-minute counts by reason (at most 61 buckets) and the 20
  newest records; memory stays bounded whatever the rate.
- ``GroupSampler``: the enforcement workers' consumer group (``settings.app_id``) every few
  seconds: its members and their assigned partitions (describe group), the group's committed
  offsets and the partitions' high watermarks. A member's lag is Σ (high watermark - committed)
  over its assigned partitions of the two input topics; its rate is the growth of those
  committed offsets between the last two samples, per second.

A failure of either background task is logged and retried; it never touches the fold loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from novaquota.projections.folds import ProjectionState
from novaquota.streams.settings import Settings

__all__ = [
    "DeadLetters",
    "GroupSample",
    "GroupSampler",
    "Member",
    "open_violations_by_kind",
    "workers_view",
]

log = logging.getLogger("novaquota.projections")

WINDOW_MS: Final = 3_600_000
RECENT: Final = 20
_MINUTE_MS: Final = 60_000
_MAX_TEXT: Final = 512
"""Characters of a dead letter's message kept for the overview (the header holds up to 4 KiB)."""
_MAX_PARSED: Final = 64 * 1024
"""Bytes of a dead-lettered value parsed for its source, type and tenant (larger: not read)."""
_MAX_REASONS: Final = 64
"""Distinct reasons counted per minute; more (never seen: reasons are a fixed set) are 'other'."""


def open_violations_by_kind(state: ProjectionState) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in state.open_violations.values():
        kind = str(v.get("kind") or "unknown")
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for k, v in headers or ():
        if k == name and v is not None:
            return v.decode("utf-8", "replace")
    return None


def _original(
    value: bytes | None, headers: Sequence[tuple[str, bytes]] | None
) -> tuple[str | None, str | None, str | None]:
    """(source, type, tenant_id) of the dead-lettered message, where it can be read: the
    binary mode's ``ce_*`` headers, else the structured JSON; None where it cannot."""
    source, type_ = _header(headers, "ce_source"), _header(headers, "ce_type")
    tenant: str | None = None
    try:  # a huge value is not parsed for three fields of an overview
        body = orjson.loads(value) if value and len(value) <= _MAX_PARSED else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        data = body if source is not None else body.get("data")
        if source is None:
            source = body.get("source") if isinstance(body.get("source"), str) else None
            type_ = body.get("type") if isinstance(body.get("type"), str) else None
        if isinstance(data, dict) and isinstance(data.get("tenant_id"), str):
            tenant = data["tenant_id"]
    return (
        source[:_MAX_TEXT] if source else None,
        type_[:_MAX_TEXT] if type_ else None,
        tenant[:_MAX_TEXT] if tenant else None,
    )


@dataclass
class DeadLetters:
    """The last hour of the dead-letter topic, bounded: per-minute counts and the newest few."""

    buckets: dict[int, dict[str, int]] = field(default_factory=dict)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))

    def add(
        self,
        time_ms: int,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        now_ms: int,
    ) -> None:
        if time_ms <= now_ms - WINDOW_MS:
            return
        reason = (_header(headers, "error.reason") or "unknown")[:_MAX_TEXT]
        minute = time_ms // _MINUTE_MS
        bucket = self.buckets.setdefault(minute, {})
        if reason not in bucket and len(bucket) >= _MAX_REASONS:
            reason = "other"
        bucket[reason] = bucket.get(reason, 0) + 1
        if len(self.buckets) > 61:
            self._expire(now_ms)
        if self.recent and time_ms < self.recent[0]["_ms"] and len(self.recent) == RECENT:
            return  # older than every one kept (records of partitions read out of order)
        source, type_, tenant = _original(value, headers)
        entry = {
            "_ms": time_ms,
            "time": _iso_ms(time_ms),
            "reason": reason,
            "message": (_header(headers, "error.message") or "")[:_MAX_TEXT],
            "source": source,
            "type": type_,
            "tenant_id": tenant,
            "topic": _header(headers, "error.topic"),
        }
        kept = sorted([*self.recent, entry], key=lambda e: e["_ms"])[-RECENT:]
        self.recent.clear()
        self.recent.extend(kept)

    def _expire(self, now_ms: int) -> None:
        oldest = (now_ms - WINDOW_MS) // _MINUTE_MS
        for minute in [m for m in self.buckets if m < oldest]:
            del self.buckets[minute]

    def view(self, now_ms: int) -> dict[str, Any]:
        """``{total, by_reason, recent}`` of the last hour (minute resolution at its start)."""
        self._expire(now_ms)
        by_reason: dict[str, int] = {}
        for bucket in self.buckets.values():
            for reason, n in bucket.items():
                by_reason[reason] = by_reason.get(reason, 0) + n
        cutoff = now_ms - WINDOW_MS
        recent = [
            {k: v for k, v in e.items() if k != "_ms"}
            for e in reversed(self.recent)
            if e["_ms"] > cutoff
        ]
        return {
            "total": sum(by_reason.values()),
            "by_reason": dict(sorted(by_reason.items())),
            "recent": recent,
        }

    async def tail(
        self, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:  # pragma: no cover - exercised by the integration tests
        """Follow the dead-letter topic from an hour back, for as long as the worker runs."""
        while True:
            try:
                await self._tail(settings, clock)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tailing the dead-letter topic failed; starting again in 5 s")
                await asyncio.sleep(5.0)

    async def _tail(self, settings: Settings, clock: Callable[[], float]) -> None:
        topic = settings.topics.dead_letter
        consumer = AIOKafkaConsumer(
            **settings.kafka_client_config(), group_id=None, enable_auto_commit=False,
            auto_offset_reset="latest", fetch_max_wait_ms=500,
        )  # fmt: skip
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic)
            deadline = time.monotonic() + 30.0
            while not parts and time.monotonic() < deadline:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.5)
                parts = consumer.partitions_for_topic(topic)
            tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
            if not tps:
                raise RuntimeError(f"topic {topic} does not exist")
            consumer.assign(tps)
            start_ms = int(clock() * 1000) - WINDOW_MS
            found = await consumer.offsets_for_times(dict.fromkeys(tps, start_ms))
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                at = found.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
            self.buckets.clear()
            self.recent.clear()
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
                now_ms = int(clock() * 1000)
                for records in batch.values():
                    for r in records:
                        self.add(r.timestamp, r.value, r.headers, now_ms)
                await asyncio.sleep(0)
        finally:
            await consumer.stop()


# --- the enforcement workers' consumer group ----------------------------------------------------


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str
    assigned: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class GroupSample:
    at: float
    """Wall-clock seconds."""
    members: tuple[Member, ...]
    committed: Mapping[tuple[str, int], int]
    ends: Mapping[tuple[str, int], int]


def workers_view(
    sample: GroupSample | None, previous: GroupSample | None, inputs: Sequence[str]
) -> list[dict[str, Any]]:
    """The ``workers`` rows of the overview from the last two samples (pure)."""
    if sample is None:
        return []
    wanted = set(inputs)
    primary = inputs[0] if inputs else None
    rows = []
    for m in sorted(sample.members, key=lambda m: (m.client_id, m.member_id)):
        tps = [tp for tp in m.assigned if tp[0] in wanted]
        lag = 0
        for tp in tps:
            end = sample.ends.get(tp)
            done = sample.committed.get(tp)
            if end is not None:
                lag += max(0, end - (done if done is not None and done >= 0 else 0))
        rate: float | None = None
        if previous is not None and sample.at > previous.at:
            grown = sum(
                max(0, sample.committed.get(tp, 0) - previous.committed.get(tp, 0)) for tp in tps
            )
            rate = round(grown / (sample.at - previous.at), 3)
        rows.append(
            {"member_id": m.member_id, "client_id": m.client_id, "host": m.host,
             "partitions": sorted(p for t, p in m.assigned if t == primary),
             "lag": lag, "events_per_second": rate}
        )  # fmt: skip
    return rows


def _members(described: Any, group_id: str) -> tuple[Member, ...]:
    out = []
    for response in described:
        for group in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members[, ops])
            if group[1] != group_id or group[0]:
                continue
            for member in group[5]:
                member_id, client_id, host = member[0], member[1], member[2]
                raw = member[-1]
                assigned: list[tuple[str, int]] = []
                if raw:
                    try:
                        decoded = ConsumerProtocolMemberAssignment.decode(raw)
                        assigned = [(tp.topic, tp.partition) for tp in decoded.partitions()]
                    except Exception:  # not the consumer protocol: no partitions to show
                        assigned = []
                out.append(Member(str(member_id), str(client_id), str(host), tuple(assigned)))
    return tuple(out)


class GroupSampler:
    """Samples the enforcement group every ``interval`` seconds; keeps the last two samples."""

    def __init__(self, settings: Settings, interval: float = 5.0) -> None:
        self.settings = settings
        self.group_id = settings.app_id
        self.inputs = settings.topics.inputs()
        self.interval = interval
        self.sample: GroupSample | None = None
        self.previous: GroupSample | None = None
        self.error: str | None = None

    def view(self) -> list[dict[str, Any]]:
        return workers_view(self.sample, self.previous, self.inputs)

    async def run(self) -> None:  # pragma: no cover - exercised by the integration tests
        admin: AIOKafkaAdminClient | None = None
        consumer: AIOKafkaConsumer | None = None
        try:
            while True:
                try:
                    if admin is None:
                        admin = AIOKafkaAdminClient(**self.settings.kafka_client_config())
                        await admin.start()
                    if consumer is None:
                        consumer = AIOKafkaConsumer(
                            **self.settings.kafka_client_config(), group_id=None,
                            enable_auto_commit=False,
                        )  # fmt: skip
                        await consumer.start()
                    await self._sample(admin, consumer)
                    self.error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.error = f"{type(exc).__name__}: {exc}"[:_MAX_TEXT]
                    log.warning("sampling consumer group %s failed: %s", self.group_id, exc)
                    await self._close(admin, consumer)
                    admin = consumer = None
                await asyncio.sleep(self.interval)
        finally:
            await self._close(admin, consumer)

    @staticmethod
    async def _close(admin: AIOKafkaAdminClient | None, consumer: AIOKafkaConsumer | None) -> None:
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _sample(self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer) -> None:
        described = await admin.describe_consumer_groups([self.group_id])
        members = _members(described, self.group_id)
        offsets = await admin.list_consumer_group_offsets(self.group_id)
        committed = {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()}
        tps = [TopicPartition(t, p) for m in members for t, p in m.assigned if t in self.inputs]
        ends_raw = await consumer.end_offsets(tps) if tps else {}
        ends = {(tp.topic, tp.partition): off for tp, off in ends_raw.items()}
        sample = GroupSample(time.time(), members, committed, ends)
        self.previous, self.sample = self.sample, sample
