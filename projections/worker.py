"""The projection worker: consume from the stored position, fold, store view and position together.

Thin glue around the pure folds: a plain aiokafka consumer with manual assignment reads the input
topics (and the violations topic, for the overview) from the position stored with the views — the
stored position is the truth; offsets are also committed to the consumer group so that the lag is
visible to Kafka tooling. Outputs (cost alerts, ``budget_exceeded``, forecast and anomaly alerts)
are sent only past the stored emitted-up-to position and only once per deterministic id.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from novaquota.projections.audit import AuditReader, ReplayReports
from novaquota.projections.config import ProjectionSettings
from novaquota.projections.cost import Catalogue, load_catalogue
from novaquota.projections.emit import Emission, budget_outputs, forecast_alerts, forecast_jobs
from novaquota.projections.exceptions import ProjectionError
from novaquota.projections.folds import (
    FoldParams,
    FoldStats,
    ProjectionState,
    flush,
    fold_event,
    fold_violation,
)
from novaquota.projections.metrics import ProjectionMetrics
from novaquota.projections.operations import DeadLetters, GroupSampler
from novaquota.projections.store import Position, RocksStore, ViewStore
from novaquota.schemas.codec import Decoded, decode
from novaquota.schemas.exceptions import DecodeError
from novaquota.schemas.limits import DecodeLimits
from novaquota.streams.settings import Settings

__all__ = ["ProjectionWorker", "WorkerStatus"]

log = logging.getLogger("novaquota.projections")
PROJECTION = "usage"
_HOUR_US = 3_600_000_000


@dataclass
class WorkerStatus:
    started: float = field(default_factory=time.time)
    folded: int = 0
    rejected: int = 0
    batches: int = 0
    emitted: int = 0
    ready: bool = False
    caught_up_at: float | None = None
    last_event_time_us: int | None = None


class ProjectionWorker:
    def __init__(
        self,
        settings: Settings,
        psettings: ProjectionSettings,
        *,
        store: ViewStore | None = None,
        metrics: ProjectionMetrics | None = None,
        catalogue: Catalogue | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.psettings = psettings
        self.store = store if store is not None else RocksStore(psettings.data_dir / "views")
        self.metrics = metrics if metrics is not None else ProjectionMetrics()
        self.catalogue = (
            catalogue if catalogue is not None else load_catalogue(psettings.pricing_file)
        )
        self.clock = clock
        self.params = FoldParams(
            gauge_ttl_us=int(psettings.network_sample_ttl_seconds * 1e6),
            lateness_us=int(psettings.lateness_seconds * 1e6),
        )
        self.limits = DecodeLimits(
            max_amount=settings.max_amount,
            max_clock_skew_seconds=settings.max_clock_skew_seconds,
        )
        loaded = self.store.load()
        self.state: ProjectionState = loaded.state
        self.positions: Position = loaded.positions
        self.emitted_positions: Position = loaded.emitted_positions
        self.emitted_ids: set[str] = loaded.emitted_ids
        self.status = WorkerStatus()
        self.targets: Position = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._last_emit = 0.0
        self._last_commit = time.monotonic()
        self._uncommitted = False
        #: seconds between evaluations of the outputs (budgets, forecasts)
        self.emit_interval = 5.0
        self._last_group_commit = 0.0
        self._last_forecast_hour = -1
        self._forecasts = True
        self._forecast_task: asyncio.Future[list[Emission]] | None = None
        topics = settings.topics
        self.inputs = (topics.resource_events, topics.quota_commands)
        self.violations_topic = topics.quota_violations
        #: the operations overview's: the last hour of dead letters, the enforcement group
        self.dead_letters = DeadLetters()
        self.sampler = GroupSampler(settings, psettings.workers_sample_seconds)
        self._operations: list[asyncio.Task[None]] = []
        #: ``GET /api/v1/audit`` and ``GET /api/v1/replay/report`` (``projections.audit``)
        self.audit = AuditReader(settings, psettings.audit_scan_max)
        self.replays = ReplayReports(
            settings,
            limit=psettings.replay_max_concurrent,
            timeout=psettings.replay_timeout_seconds,
        )

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}{self.psettings.group_suffix}"

    async def start(self) -> None:
        cfg = self.settings.kafka_client_config()
        self._consumer = AIOKafkaConsumer(
            **cfg,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await self._consumer.start()
        gc.freeze()  # the loaded views
        tps: list[TopicPartition] = []
        for topic in (*self.inputs, self.violations_topic):
            parts = await self._partitions(topic)
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        self._consumer.assign(tps)
        for tp in tps:
            stored = self.positions.get((tp.topic, tp.partition))
            if stored is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, stored)
        ends = await self._consumer.end_offsets(tps)
        self.targets = {(tp.topic, tp.partition): off for tp, off in ends.items()}
        for tp in tps:
            pos = self.positions.setdefault((tp.topic, tp.partition), 0)
            self.metrics.position.labels(f"{tp.topic}:{tp.partition}").set(pos)
        self.metrics.events.labels(PROJECTION)
        if self.state.watermark:
            self.status.last_event_time_us = self.state.watermark
            self.metrics.lag.labels(PROJECTION).set(
                max(0.0, self.clock() - self.state.watermark / 1e6)
            )
        self._check_ready()
        if self.psettings.emit:
            self._producer = AIOKafkaProducer(
                **cfg, acks="all", enable_idempotence=True,
                compression_type=self.settings.compression_type,
            )  # fmt: skip
            await self._producer.start()

    async def _partitions(self, topic: str) -> set[int]:
        assert self._consumer is not None
        deadline = time.monotonic() + 30.0
        while True:
            parts = self._consumer.partitions_for_topic(topic)
            if parts:
                return set(parts)
            if time.monotonic() > deadline:
                raise ProjectionError(
                    f"topic {topic} does not exist (run `novaquota topics create`)"
                )
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)

    def start_operations(self) -> None:
        """The overview's background tasks (``projections.operations``): off the fold loop;
        their failures are logged and retried, never raised here."""
        if not self._operations:
            self._operations = [
                asyncio.create_task(self.dead_letters.tail(self.settings)),
                asyncio.create_task(self.sampler.run()),
            ]

    async def stop(self) -> None:
        for task in self._operations:
            task.cancel()
        for task in self._operations:
            with contextlib.suppress(BaseException):
                await task
        self._operations = []
        await self.audit.close()
        self.commit()
        if self._forecast_task is not None:
            with contextlib.suppress(BaseException):
                await self._forecast_task
            self._forecast_task = None
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._commit_group(force=True)
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        self.store.close()

    # --- the loop ----------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if self.status.ready:
            return
        if all(self.positions.get(k, 0) >= end for k, end in self.targets.items()):
            self.status.ready = True
            self.status.caught_up_at = time.time()
            self.metrics.ready.set(1)

    def caught_up(self) -> bool:
        return self.status.ready

    async def run(self, stop: asyncio.Event, *, until_caught_up: bool = False) -> None:
        """Fold until ``stop`` (or until caught up: then without the hourly forecasts, which
        would only delay the exit)."""
        self._forecasts = not until_caught_up
        while not stop.is_set():
            await self.step()
            if until_caught_up and self.status.ready:
                self.commit()
                await self.emit(force=True)
                return

    async def step(self, timeout_ms: int = 500) -> int:
        """One consumed batch: fold, store with positions, commit, maybe emit."""
        assert self._consumer is not None
        batch = await self._consumer.getmany(
            timeout_ms=timeout_ms, max_records=self.psettings.max_batch
        )
        n = self.fold_records(batch)
        if n:
            self.status.batches += 1
            self._uncommitted = True
            # The views are millions of long-lived, acyclic objects: keep them out of the cyclic
            # collector's scans (a full collection over them costs more than the fold itself).
            gc.freeze()
        self._check_ready()
        if n == 0 or time.monotonic() - self._last_commit >= self.psettings.commit_interval_seconds:
            self.commit()
        await self._commit_group()
        await self.emit()
        return n

    def commit(self) -> None:
        """Write the changed views and the position after them (one atomic batch)."""
        if self._uncommitted:
            self.store.commit(self.state, self.positions)
            self._uncommitted = False
        self._last_commit = time.monotonic()

    def fold_records(self, batch: dict[TopicPartition, list[Any]]) -> int:
        """Decode and fold one ``getmany`` result (in partition order); returns records seen."""
        stats = FoldStats()
        state, params, limits = self.state, self.params, self.limits
        seen = 0
        rejected = 0
        for tp, records in sorted(batch.items(), key=lambda kv: (kv[0].topic, kv[0].partition)):
            if not records:
                continue
            seen += len(records)
            if tp.topic == self.violations_topic:
                for r in records:
                    self._fold_output(r.value)
            else:
                for r in records:
                    try:
                        ev: Decoded = decode(
                            r.value, r.headers, record_timestamp_ms=r.timestamp, limits=limits
                        )
                    except DecodeError as exc:
                        rejected += 1
                        self.metrics.rejected.labels(exc.reason).inc()
                        continue
                    fold_event(state, ev, params, stats)
            pos = records[-1].offset + 1
            self.positions[(tp.topic, tp.partition)] = pos
            self.metrics.position.labels(f"{tp.topic}:{tp.partition}").set(pos)
        flush(state)
        if stats.folded:
            self.metrics.events.labels(PROJECTION).inc(stats.folded)
        if stats.last_event_time_us is not None:
            self.status.last_event_time_us = stats.last_event_time_us
        if self.status.last_event_time_us is not None:
            lag = self.clock() - self.status.last_event_time_us / 1e6
            self.metrics.lag.labels(PROJECTION).set(max(0.0, lag))
        self.status.folded += stats.folded
        self.status.rejected += rejected
        return seen

    def _fold_output(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict) and isinstance(obj.get("data"), dict):
            fold_violation(self.state, str(obj.get("type")), obj["data"])

    async def _commit_group(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._consumer is None or (not force and now - self._last_group_commit < 2.0):
            return
        self._last_group_commit = now
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(off, "")
            for (t, p), off in self.positions.items()
            if off > 0
        }
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except Exception as exc:  # lag visibility only: the stored position is the truth
                log.warning("committing offsets to group %s failed: %s", self.group_id, exc)

    # --- outputs -----------------------------------------------------------------------------

    def replaying(self) -> bool:
        """Still re-folding what outputs were already evaluated for (no partition is past the
        stored emitted-up-to position)."""
        if not self.emitted_positions:
            return False
        return all(
            off <= self.emitted_positions.get(k, 0)
            for k, off in self.positions.items()
            if k[0] in self.inputs
        )

    def pending_outputs(self) -> list[Emission]:
        outs = budget_outputs(self.state, self.catalogue, self.state.watermark)
        task = self._forecast_task
        if task is not None and task.done():
            self._forecast_task = None
            if task.exception() is None:
                outs += task.result()
        self._maybe_start_forecast()
        return [o for o in outs if o.id not in self.emitted_ids]

    def _maybe_start_forecast(self) -> None:
        """Once per hour of event time, once caught up: the forecast and anomaly math (seconds
        per series) runs in a thread on a snapshot of the series, off the event loop."""
        at = self.state.watermark
        hour = at // _HOUR_US
        if not self._forecasts or not self.status.ready or self._forecast_task:
            return
        if hour == self._last_forecast_hour:
            return
        self._last_forecast_hour = hour
        jobs = forecast_jobs(self.state, at, max_entities=self.psettings.forecast_max_entities)
        if jobs:
            self._forecast_task = asyncio.ensure_future(
                asyncio.to_thread(
                    forecast_alerts, jobs, horizon_hours=self.psettings.forecast_horizon_hours
                )
            )

    async def emit(self, *, force: bool = False) -> int:
        if not self.psettings.emit or self._producer is None:
            return 0
        now = time.monotonic()
        if not force and now - self._last_emit < self.emit_interval:
            return 0
        self._last_emit = now
        if self.replaying():
            return 0
        try:
            outs = self.pending_outputs()
        except Exception:  # a bug in one output must not stop the views
            log.exception("evaluating the outputs failed; retrying in %.0f s", self.emit_interval)
            return 0
        topics = {
            "alerts": self.settings.topics.quota_alerts,
            "violations": self.settings.topics.quota_violations,
        }
        try:
            futures = [
                await self._producer.send(topics[o.role], o.value, key=o.key.encode())
                for o in sorted(outs, key=lambda o: (o.time_us, o.id))
            ]
            await asyncio.gather(*futures)
        except Exception as exc:  # not recorded: the next evaluation sends them again
            log.warning("sending %d outputs failed (%s); retrying", len(outs), exc)
            return 0
        ids = [o.id for o in outs]
        self.emitted_ids.update(ids)
        merged = dict(self.emitted_positions)
        for k, v in self.positions.items():
            merged[k] = max(v, merged.get(k, 0))
        self.emitted_positions = merged
        self.store.record_emitted(ids, merged)
        for o in outs:
            self.metrics.emitted.labels(o.role).inc()
        self.status.emitted += len(outs)
        return len(outs)
