"""The delivery worker: consume violations and alerts, send each to its routed channels.

At least once: a partition's offset is committed only past records that are done on every
channel they were routed to (delivered, or written to the delivery dead-letter topic); a crash
redelivers the rest, with the same idempotency keys. Each (record, channel) delivery is its own
task: attempts are rate-limited and bounded in concurrency per channel, retries wait with
exponential backoff without holding a slot, and deliveries with the same ordering key (a
violation's trigger and its resolve) reach a channel in log order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from novaquota.schemas.common import format_time_us
from novaquota.schemas.exceptions import DecodeError
from novaquota.streams.delivery.backoff import delay_after, gives_up
from novaquota.streams.delivery.channels import Sender, make_sender
from novaquota.streams.delivery.config import DeliveryConfig, RetryPolicy
from novaquota.streams.delivery.exceptions import DeliveryError
from novaquota.streams.delivery.metrics import DeliveryMetrics
from novaquota.streams.delivery.ratelimit import TokenBucket
from novaquota.streams.delivery.records import Notification, parse_record
from novaquota.streams.delivery.routing import channels_for
from novaquota.streams.delivery.settings import DeliverySettings
from novaquota.streams.settings import Settings

__all__ = ["DeliveryWorker", "Redactor", "decode_marks", "encode_marks"]

log = logging.getLogger("novaquota.delivery")

MAX_ERROR_CHARS = 1024


class Redactor:
    """Replaces every configured secret in a text by ``***`` (errors, logs, headers)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:MAX_ERROR_CHARS]


@dataclass
class _Entry:
    """One record of a partition: done once every channel it was routed to is done with it."""

    offset: int
    pending: set[str]

    @property
    def done(self) -> bool:
        return not self.pending

    def finish(self, channel: str) -> None:
        self.pending.discard(channel)


#: Commit metadata stays well below the broker's ``offset.metadata.max.bytes`` (4096).
MAX_METADATA_BYTES = 3000

#: Inclusive offset ranges, sorted and disjoint.
Ranges = list[tuple[int, int]]


def _merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class _Partition:
    """The records of one partition in offset order; the commit point is the first not done.

    Besides the offset, a commit records per channel which records past the commit point are
    already done on that channel (``channel_marks``, offset ranges in the commit metadata): a
    worker that reads them again after a crash sends them only to the channels where they were
    not done yet (``skip``)."""

    def __init__(self, skip: dict[str, Ranges] | None = None) -> None:
        self.entries: deque[_Entry] = deque()
        self.next_offset: int | None = None  # one past the last record read
        self.committed: int | None = None
        self.committed_marks: dict[str, Ranges] = {}
        #: channel -> offset ranges an earlier worker had done there
        self.skip: dict[str, Ranges] = {ch: _merge(r) for ch, r in (skip or {}).items()}
        #: deliveries in progress for records of this partition
        self.tasks: set[asyncio.Task[None]] = set()

    def add(self, offset: int, channels: Iterable[str]) -> _Entry:
        entry = _Entry(offset, set(channels))
        self.entries.append(entry)
        self.next_offset = offset + 1
        return entry

    def already_done(self, channel: str, offset: int) -> bool:
        return any(lo <= offset <= hi for lo, hi in self.skip.get(channel, ()))

    def commit_point(self) -> int | None:
        while self.entries and self.entries[0].done:
            self.entries.popleft()
        if self.entries:
            return self.entries[0].offset
        return self.next_offset

    def channel_marks(self, channels: Iterable[str]) -> dict[str, Ranges]:
        """Per channel, the ranges of records from the commit point on that are done on it
        (consecutive records read, done or not routed there), with what an earlier worker had
        done (``skip``)."""
        point = self.commit_point()
        if point is None:
            return {}
        marks: dict[str, Ranges] = {}
        for ch in channels:
            runs: Ranges = []
            start = last = -1
            for entry in self.entries:
                if ch in entry.pending:
                    if start >= 0:
                        runs.append((start, last))
                    start = -1
                    continue
                if start < 0:
                    start = entry.offset
                last = entry.offset
            if start >= 0:
                runs.append((start, last))
            ranges = [
                (max(lo, point), hi)
                for lo, hi in _merge(runs + self.skip.get(ch, []))
                if hi >= point
            ]
            if ranges:
                marks[ch] = ranges
        return marks

    @property
    def in_flight(self) -> int:
        return sum(1 for e in self.entries if not e.done)


def encode_marks(marks: dict[str, Ranges]) -> str:
    """Commit metadata; when too long, the highest ranges are left out (a left-out record is
    only sent again, never lost)."""
    marks = {ch: list(r) for ch, r in marks.items() if r}
    while marks:
        doc = {"v": 1, "done": {ch: [list(x) for x in r] for ch, r in marks.items()}}
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
        if len(text.encode()) <= MAX_METADATA_BYTES:
            return text
        longest = max(marks, key=lambda ch: (len(marks[ch]), ch))
        marks[longest].pop()
        if not marks[longest]:
            del marks[longest]
    return ""


def decode_marks(metadata: str | None) -> dict[str, Ranges]:
    """Tolerant: metadata someone else wrote (or none) means no marks."""
    if not metadata:
        return {}
    try:
        doc = json.loads(metadata)
        done = doc["done"] if isinstance(doc, dict) and doc.get("v") == 1 else {}
        out: dict[str, Ranges] = {}
        for ch, ranges in done.items():
            good = [
                (int(lo), int(hi))
                for lo, hi in ranges
                if type(lo) is int and type(hi) is int and 0 <= lo <= hi
            ]
            if good:
                out[str(ch)] = _merge(good)
        return out
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


@dataclass
class _Channel:
    name: str
    sender: Sender
    policy: RetryPolicy
    slots: asyncio.Semaphore
    limiter: TokenBucket | None
    #: ordering key -> the last delivery queued for it (done when set)
    chains: dict[str, asyncio.Event] = field(default_factory=dict)


@dataclass(frozen=True)
class _Outcome:
    delivered: bool
    attempts: int
    first_attempt_us: int
    error: str = ""


class DeliveryWorker:
    def __init__(
        self,
        settings: Settings,
        dsettings: DeliverySettings,
        config: DeliveryConfig,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.dsettings = dsettings
        self.config = config
        self.metrics = metrics or DeliveryMetrics()
        self.redact = Redactor(config.secret_values())
        topics = settings.topics
        self.topics = (topics.quota_violations, topics.quota_alerts)
        self.dead_letter_topic = topics.delivery_dead_letter
        self.partitions: dict[TopicPartition, _Partition] = {}
        self.channels: dict[str, _Channel] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.state = "starting"
        self._paused = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100), raise_for_status=False
        )
        for name, cfg in self.config.channels.items():
            limit = cfg.rate_limit
            self.channels[name] = _Channel(
                name,
                make_sender(name, cfg, self.session),
                self.config.retry_for(name),
                asyncio.Semaphore(cfg.concurrency),
                TokenBucket(limit.per_second, limit.capacity) if limit else None,
            )
        kafka = self.settings.kafka_client_config()
        self.producer = AIOKafkaProducer(**kafka, acks="all", enable_idempotence=True)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            **kafka,
            group_id=self.dsettings.group(self.settings),
            enable_auto_commit=False,
            auto_offset_reset=self.dsettings.start_from,
            isolation_level="read_committed",
            session_timeout_ms=int(self.settings.session_timeout_seconds * 1000),
        )
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics), listener=_Rebalance(self))
        self.state = "running"
        log.info(
            "delivery worker consuming %s as group %s; channels: %s",
            ", ".join(self.topics),
            self.dsettings.group(self.settings),
            ", ".join(f"{n} ({c.type})" for n, c in self.config.channels.items()),
        )

    async def run(self, stop: asyncio.Event) -> None:
        assert self.consumer is not None
        last_commit = time.monotonic()
        while not stop.is_set():
            self._flow_control()
            try:
                room = max(1, self.dsettings.max_in_flight - self.in_flight)
                batch = await self.consumer.getmany(timeout_ms=200, max_records=min(500, room))
            except KafkaError as exc:
                log.warning("fetch failed, retrying: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                part = self.partitions.setdefault(tp, _Partition())
                for record in records:
                    self._admit(tp, part, record)
            self.metrics.ready.set(1 if self.consumer.assignment() else 0)
            if time.monotonic() - last_commit >= self.dsettings.commit_interval_seconds:
                await self.commit()
                self._observe_lag()
                last_commit = time.monotonic()

    async def stop(self) -> None:
        """Stop fetching, let deliveries in flight finish within the grace period, commit what
        is done; what is not done is redelivered by the next worker."""
        self.state = "stopping"
        self.metrics.ready.set(0)
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.dsettings.shutdown_grace_seconds)
            for t in still:
                t.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)
        if self.consumer is not None:
            with contextlib.suppress(KafkaError):
                await self.commit()
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.session is not None:
            await self.session.close()
        self.state = "stopped"

    # --- consuming ---------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(p.in_flight for p in self.partitions.values())

    def _flow_control(self) -> None:
        assert self.consumer is not None
        in_flight = self.in_flight
        self.metrics.in_flight.set(in_flight)
        assigned = self.consumer.assignment()
        if in_flight >= self.dsettings.max_in_flight and not self._paused:
            self.consumer.pause(*assigned)
            self._paused = True
        elif in_flight < self.dsettings.max_in_flight and self._paused:
            self.consumer.resume(*assigned)
            self._paused = False

    def _admit(
        self, tp: TopicPartition, part: _Partition, record: ConsumerRecord[Any, Any]
    ) -> None:
        try:
            n = parse_record(record.value)
        except Exception as exc:  # DecodeError, or a bug: either way the record is kept
            reason = exc.reason if isinstance(exc, DecodeError) else "internal_error"
            self.metrics.invalid.labels(reason).inc()
            entry = part.add(record.offset, ["-"])
            error = self.redact(f"undecodable ({reason}): {exc}")
            log.error(
                "undecodable record at %s[%d]@%d goes to the delivery dead-letter topic: %s",
                tp.topic,
                tp.partition,
                record.offset,
                error,
            )
            outcome = _Outcome(False, 0, int(time.time() * 1e6), error)
            self._spawn(part, self._dead_letter_then_done(record, "-", outcome, entry))
            return
        names = channels_for(
            self.config.routes,
            type_=n.type,
            tenant_id=n.tenant_id,
            severity=n.severity,
            kind=n.kind,
        )
        if not names:
            self.metrics.unrouted.labels(n.type).inc()
            part.add(record.offset, ())
            return
        todo = [name for name in names if not part.already_done(name, record.offset)]
        for name in names:
            if name not in todo:
                self.metrics.skipped.labels(name).inc()
        entry = part.add(record.offset, todo)
        for name in todo:
            self._spawn(part, self._deliver(self.channels[name], n, record, entry))

    def _spawn(self, part: _Partition, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        part.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(part.tasks.discard)

    # --- delivering --------------------------------------------------------------------------

    async def _deliver(
        self, ch: _Channel, n: Notification, record: ConsumerRecord[Any, Any], entry: _Entry
    ) -> None:
        previous = ch.chains.get(n.ordering_key)
        mine = asyncio.Event()
        ch.chains[n.ordering_key] = mine
        try:
            if previous is not None:
                await previous.wait()
            outcome = await self._attempts(ch, n)
            if outcome.delivered:
                self.metrics.sent.labels(ch.name, "delivered").inc()
                self._observe_done(ch.name, record)
                entry.finish(ch.name)
            else:
                log.error(
                    "%s to channel %s given up after %d attempt(s): %s; written to %s",
                    n.idempotency_key,
                    ch.name,
                    outcome.attempts,
                    outcome.error,
                    self.dead_letter_topic,
                )
                await self._dead_letter_then_done(record, ch.name, outcome, entry, n)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: the record stays not done, so it is redelivered on restart
            log.exception("delivery of %s to %s failed unexpectedly", n.idempotency_key, ch.name)
        finally:
            mine.set()
            if ch.chains.get(n.ordering_key) is mine:
                del ch.chains[n.ordering_key]

    async def _attempts(self, ch: _Channel, n: Notification) -> _Outcome:
        first = time.monotonic()
        first_us = int(time.time() * 1e6)
        attempt = 0
        while True:
            attempt += 1
            if ch.limiter is not None:
                waited = await ch.limiter.take()
                if waited:
                    self.metrics.rate_limited.labels(ch.name).inc(waited)
            async with ch.slots:
                try:
                    await ch.sender.attempt(n, attempt)
                    error: DeliveryError | None = None
                except DeliveryError as exc:
                    error = exc
                except Exception as exc:
                    error = DeliveryError(f"{ch.name}: {type(exc).__name__}", retryable=True)
            if error is None:
                self.metrics.attempts.labels(ch.name, "ok").inc()
                return _Outcome(True, attempt, first_us)
            message = self.redact(error.message)
            if not error.retryable:
                self.metrics.attempts.labels(ch.name, "permanent_error").inc()
                return _Outcome(False, attempt, first_us, message)
            self.metrics.attempts.labels(ch.name, "retryable_error").inc()
            delay = delay_after(ch.policy, attempt, retry_after=error.retry_after)
            if gives_up(ch.policy, attempt, time.monotonic() - first, delay):
                return _Outcome(False, attempt, first_us, message)
            log.warning(
                "%s to channel %s: attempt %d failed (%s); next in %.2f s",
                n.idempotency_key,
                ch.name,
                attempt,
                message,
                delay,
            )
            await asyncio.sleep(delay)

    async def _dead_letter_then_done(
        self,
        record: ConsumerRecord[Any, Any],
        channel: str,
        outcome: _Outcome,
        entry: _Entry,
        n: Notification | None = None,
    ) -> None:
        """Write the original record with ``delivery.*`` headers; the record is done on this
        channel only once the broker has it (until then it keeps trying)."""
        assert self.producer is not None
        headers = [
            *(record.headers or ()),
            ("delivery.channel", channel.encode()),
            ("delivery.attempts", str(outcome.attempts).encode()),
            ("delivery.error", outcome.error.encode("utf-8", "replace")),
            ("delivery.first_attempt", format_time_us(outcome.first_attempt_us).encode()),
            ("delivery.topic", record.topic.encode()),
            ("delivery.partition", str(record.partition).encode()),
            ("delivery.offset", str(record.offset).encode()),
        ]
        if n is not None:
            headers.append(("delivery.idempotency_key", n.idempotency_key.encode()))
        wait = 0.5
        while True:
            try:
                await self.producer.send_and_wait(
                    self.dead_letter_topic, value=record.value, key=record.key, headers=headers
                )
                break
            except KafkaError as exc:
                log.warning(
                    "writing to %s failed (%s); retrying",
                    self.dead_letter_topic,
                    type(exc).__name__,
                )
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30.0)
        self.metrics.dead_letter.labels(channel).inc()
        if channel != "-":
            self.metrics.sent.labels(channel, "dead_lettered").inc()
        self._observe_done(channel, record)
        entry.finish(channel)

    def _observe_done(self, channel: str, record: ConsumerRecord[Any, Any]) -> None:
        if record.timestamp and record.timestamp > 0:
            self.metrics.lag.labels(channel).observe(max(0.0, time.time() - record.timestamp / 1e3))

    # --- offsets -----------------------------------------------------------------------------

    async def commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        """Commit, for each assigned partition, the offset of its first record not done."""
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        wanted = assigned if only is None else set(only) & assigned
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in wanted:
            part = self.partitions.get(tp)
            if part is None:
                continue
            point = part.commit_point()
            marks = part.channel_marks(self.channels)
            if point is not None and (point != part.committed or marks != part.committed_marks):
                offsets[tp] = OffsetAndMetadata(point, encode_marks(marks))
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # a rebalance in progress: the next commit catches up
            log.warning("offset commit failed (%s); will retry", type(exc).__name__)
            return
        for tp, om in offsets.items():
            self.partitions[tp].committed = om.offset
            self.partitions[tp].committed_marks = decode_marks(om.metadata)

    async def load_marks(self, tps: Iterable[TopicPartition]) -> None:
        """A fresh partition per assigned one, with the channel marks of the last commit."""
        tps = list(tps)
        committed: dict[TopicPartition, OffsetAndMetadata] = {}
        if tps:
            admin = AIOKafkaAdminClient(**self.settings.kafka_client_config())
            try:
                await admin.start()
                committed = await admin.list_consumer_group_offsets(
                    self.dsettings.group(self.settings), partitions=tps
                )
            except KafkaError as exc:  # no marks: everything uncommitted is sent again
                log.warning("reading the committed channel marks failed (%s)", type(exc).__name__)
            finally:
                await admin.close()
        for tp in tps:
            om = committed.get(tp)
            skip = decode_marks(om.metadata) if om is not None and om.offset >= 0 else {}
            self.partitions[tp] = _Partition(skip)

    def _observe_lag(self) -> None:
        assert self.consumer is not None
        lag: dict[str, int] = dict.fromkeys(self.topics, 0)
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            part = self.partitions.get(tp)
            if high is None or part is None or part.committed is None:
                continue
            lag[tp.topic] += max(0, high - part.committed)
        for topic, value in lag.items():
            self.metrics.consumer_lag.labels(topic).set(value)

    async def release(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions leave this worker: commit what is done, stop their deliveries (the new
        owner sends what was not done, skipping what the commit marks done)."""
        tps = list(tps)
        with contextlib.suppress(KafkaError):
            await self.commit(tps)
        tasks: list[asyncio.Task[None]] = []
        for tp in tps:
            part = self.partitions.pop(tp, None)
            if part is not None:
                tasks.extend(part.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def health(self) -> dict[str, Any]:
        assigned = self.consumer.assignment() if self.consumer is not None else set()
        return {
            "status": self.state,
            "group": self.dsettings.group(self.settings),
            "topics": list(self.topics),
            "assigned_partitions": len(assigned),
            "in_flight": self.in_flight,
            "paused": self._paused,
            "channels": {n: c.type for n, c in self.config.channels.items()},
        }


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: DeliveryWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker.release(revoked)
        self.worker._paused = False  # the next assignment starts unpaused

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.worker.load_marks(assigned)  # start clean from the committed offset
