"""Reading the log as it stood at a moment: every record of some topics up to a time.

"As of T" is a position in each partition, not a filter on every record: for each partition the
cut is the first offset whose record timestamp is after T (Kafka's ``ListOffsets`` by time, what
aiokafka's ``offsets_for_times`` asks), and everything before that offset is read. A record
stamped later than T is therefore never included, and the same log and T always give the same
records, whatever was appended since.

Records of several topics are merged into one deterministic order: record timestamp, then the
topic's rank (the order the caller listed the topics in), then partition, then offset. Within a
partition that is offset order whenever timestamps rise with offsets (the usual case, and always
with ``LogAppendTime``); where a producer stamped records out of order, offset order wins within
the partition (``merge``), so a partition is never read out of order.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from novaquota.streams.settings import Settings

__all__ = [
    "LogPosition",
    "LogReadError",
    "LogReader",
    "LogRecord",
    "LogSlice",
    "Merger",
    "PartitionRange",
    "merge",
    "read_log",
]


class LogReadError(RuntimeError):
    """The log could not be read as asked (missing topic, broker stopped answering)."""


@dataclass(frozen=True, slots=True, order=True)
class LogPosition:
    """Where a record sits in the log: what a report cites."""

    topic: str
    partition: int
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class LogRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def position(self) -> LogPosition:
        return LogPosition(self.topic, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """The part of one partition that was read: offsets ``start`` (first kept) to ``end``
    (exclusive), and how many records that gave (control records of transactions take offsets
    but are not records)."""

    topic: str
    partition: int
    start: int
    end: int
    records: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "start": self.start,
            "end": self.end,
            "records": self.records,
        }


@dataclass
class LogSlice:
    """Records of several topics up to a time, in merge order, and the ranges they came from."""

    until_ms: int | None
    records: list[LogRecord] = field(default_factory=list)
    ranges: list[PartitionRange] = field(default_factory=list)

    def partitions_of(self, topic: str) -> int:
        return sum(1 for r in self.ranges if r.topic == topic)


K = TypeVar("K", bound=Hashable)


class Merger(Generic[K]):
    """Streaming k-way merge by (timestamp, topic rank, partition, offset).

    Each partition's records are added in offset order and kept in it: a record stamped
    earlier than its predecessor waits for it. ``pop`` hands out the next record only while
    every unfinished partition has one buffered (its next record could come first otherwise);
    ``starving`` says which partitions to fetch before popping again.
    """

    def __init__(self, keys: Iterable[K], topics: Sequence[str]) -> None:
        self.rank = {t: i for i, t in enumerate(topics)}
        self.keys = list(keys)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.buffers: dict[K, deque[LogRecord]] = {k: deque() for k in self.keys}
        self.finished: set[K] = set()
        self.empty: set[K] = set(self.keys)
        """Unfinished partitions with nothing buffered."""
        self.last_ts: dict[K, int] = {}
        self.heap: list[tuple[int, int, int, int, int]] = []

    def add(self, key: K, records: Iterable[LogRecord]) -> None:
        buf = self.buffers[key]
        was_empty = not buf
        buf.extend(records)
        if buf and was_empty:
            self.empty.discard(key)
            self._push(key)

    def finish(self, key: K) -> None:
        self.finished.add(key)
        self.empty.discard(key)

    def starving(self) -> list[K]:
        return sorted(self.empty, key=self.index.__getitem__)

    def _push(self, key: K) -> None:
        r = self.buffers[key][0]
        ts = max(r.timestamp_ms, self.last_ts.get(key, r.timestamp_ms))
        rank = self.rank.get(r.topic, len(self.rank))
        heapq.heappush(self.heap, (ts, rank, r.partition, r.offset, self.index[key]))

    def pop(self) -> LogRecord | None:
        """The next record, or None when a partition must be fetched first or all is done."""
        if not self.heap or self.empty:
            return None
        ts, _rank, _p, _o, i = heapq.heappop(self.heap)
        key = self.keys[i]
        buf = self.buffers[key]
        rec = buf.popleft()
        self.last_ts[key] = ts
        if buf:
            self._push(key)
        elif key not in self.finished:
            self.empty.add(key)
        return rec


def merge(
    records_by_partition: Iterable[Sequence[LogRecord]], topics: Sequence[str]
) -> Iterator[LogRecord]:
    """The merge order (``Merger``) of records already read, one sequence per partition."""
    parts = list(records_by_partition)
    m = Merger(range(len(parts)), topics)
    for i, recs in enumerate(parts):
        m.add(i, recs)
        m.finish(i)
    while (rec := m.pop()) is not None:
        yield rec


class LogReader:
    """Reads ``topics`` from their beginning up to a record time, in merge order, streaming
    (memory holds the fetch buffers, not the log).

    ``async with LogReader(...) as reader: async for rec in reader.records(): ...``; after
    iterating, ``ranges`` says what was read. Raises ``LogReadError`` when a topic does not
    exist (unless listed in ``missing_ok``) or the broker stops delivering before the cut.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        until_ms: int | None = None,
        *,
        missing_ok: Sequence[str] = (),
        idle_timeout: float = 30.0,
        batch: int = 5_000,
    ) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.until_ms = until_ms
        self.missing_ok = set(missing_ok)
        self.idle_timeout = idle_timeout
        self.batch = batch
        self.consumer: Any = None
        self.tps: list[Any] = []
        self.begins: dict[Any, int] = {}
        self.ends: dict[Any, int] = {}
        self.counts: dict[Any, int] = {}

    async def __aenter__(self) -> LogReader:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self.consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_config(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=1024 * 1024,  # bounds the prefetch buffers
        )
        await self.consumer.start()
        try:
            await self._plan(TopicPartition)
        except BaseException:
            await self.consumer.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def _plan(self, topic_partition: Any) -> None:
        consumer = self.consumer
        existing = await consumer.topics()  # one fresh metadata request
        for topic in self.topics:
            parts = await _partitions(consumer, topic, existing)
            if not parts:
                if topic in self.missing_ok:
                    continue
                raise LogReadError(
                    f"topic {topic!r} does not exist on {self.settings.bootstrap_servers} (is the "
                    "topic prefix right? `novaquota topics describe` lists them)"
                )
            self.tps.extend(topic_partition(topic, p) for p in sorted(parts))
        if not self.tps:
            return
        self.begins = await consumer.beginning_offsets(self.tps)
        self.ends = await consumer.end_offsets(self.tps)
        if self.until_ms is not None:
            by_time = await consumer.offsets_for_times({tp: self.until_ms + 1 for tp in self.tps})
            for tp in self.tps:
                hit = by_time.get(tp)
                if hit is not None:
                    self.ends[tp] = min(self.ends[tp], hit.offset)
        for tp in self.tps:
            self.ends[tp] = max(self.ends[tp], self.begins[tp])
            self.counts[tp] = 0
        consumer.assign(self.tps)
        for tp in self.tps:
            consumer.seek(tp, self.begins[tp])

    def partitions_of(self, topic: str) -> int:
        return sum(1 for tp in self.tps if tp.topic == topic)

    @property
    def ranges(self) -> list[PartitionRange]:
        return [
            PartitionRange(tp.topic, tp.partition, self.begins[tp], self.ends[tp], self.counts[tp])
            for tp in self.tps
        ]

    async def records(self) -> AsyncIterator[LogRecord]:
        consumer = self.consumer
        merger: Merger[Any] = Merger(self.tps, self.topics)
        for tp in self.tps:
            if self.ends[tp] <= self.begins[tp]:
                merger.finish(tp)
                consumer.pause(tp)  # nothing to read: do not prefetch past the cut
        last = time.monotonic()
        while True:
            while (rec := merger.pop()) is not None:
                yield rec
            need = merger.starving()
            if not need:
                return  # nothing buffered, nothing left to fetch
            batch = await consumer.getmany(*need, timeout_ms=500, max_records=self.batch)
            for tp, msgs in batch.items():
                end = self.ends[tp]
                recs = [
                    LogRecord(
                        m.topic,
                        m.partition,
                        m.offset,
                        int(m.timestamp),
                        m.key,
                        m.value,
                        tuple((k, bytes(v)) for k, v in (m.headers or ())),
                    )
                    for m in msgs
                    if m.offset < end
                ]
                if recs:
                    self.counts[tp] += len(recs)
                    merger.add(tp, recs)
                    last = time.monotonic()
            for tp in need:
                if tp not in merger.finished and await consumer.position(tp) >= self.ends[tp]:
                    merger.finish(tp)
                    consumer.pause(tp)
            if merger.starving() and time.monotonic() - last > self.idle_timeout:
                left = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in merger.starving())
                raise LogReadError(f"no records for {self.idle_timeout:.0f}s while reading {left}")


async def read_log(
    settings: Settings,
    topics: Sequence[str],
    until_ms: int | None = None,
    *,
    missing_ok: Sequence[str] = (),
    idle_timeout: float = 30.0,
) -> LogSlice:
    """All of ``LogReader``'s records in one list (small logs, tests)."""
    async with LogReader(
        settings, topics, until_ms, missing_ok=missing_ok, idle_timeout=idle_timeout
    ) as reader:
        records = [rec async for rec in reader.records()]
        return LogSlice(until_ms, records, reader.ranges)


async def _partitions(consumer: Any, topic: str, existing: set[str]) -> set[int]:
    if topic not in existing:
        return set()
    # topics() does not fill the client's cluster view, which partitions_for_topic reads
    for _ in range(20):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
    raise LogReadError(f"no partition metadata for topic {topic!r}")
