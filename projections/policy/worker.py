"""The policy worker (``novaquota policy run``): the policy engine run from the log.

A plain aiokafka consumer with manual assignment reads the resource events, the command topic
(quotas, templates, the policy set), the violations and the alerts (the projections' forecasts)
from the position stored with its state, feeds them to a ``PolicyFeed`` in log order, and sends
the actions: commands to the command topic (``actor: policy/<name>@<version>``, with a
``cause``), ``policy`` alerts to the alerts topic.

Nothing is sent twice, across restarts and rebuilds, as in the projection workers:

- the state (the feed and the input position after it) is one JSON file, replaced atomically;
- the emitted ledger (every action id sent, and the input position they were sent at) is a file
  of its own that a rebuild keeps: while the inputs are not past the ledger's position nothing
  is sent (the log is being read again), and an id already in the ledger is never sent again.

Action ids are deterministic (``projections.policy.engine.action_id``) and become the commands'
CloudEvent ids, so even a send that the ledger missed (a crash between sending and recording)
is recognised by the enforcement worker as the same message, and has no second effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from novaquota.projections.policy.engine import POLICY_SOURCE, PolicyAction
from novaquota.projections.policy.feed import PolicyFeed
from novaquota.projections.policy.metrics import PolicyMetrics
from novaquota.schemas.codec import decode, encode
from novaquota.schemas.exceptions import DecodeError
from novaquota.schemas.limits import DecodeLimits
from novaquota.streams.settings import Settings, ensure_dir

__all__ = ["PolicySettings", "PolicyWorker", "WorkerStatus"]

log = logging.getLogger("novaquota.policy")
STATE_FORMAT = 1
Position = dict[tuple[str, int], int]


class PolicySettings(BaseSettings):
    """Knobs of the policy worker (``NOVAQUOTA_POLICY_*``); the broker and topics are the
    shared ``Settings``'."""

    model_config = SettingsConfigDict(env_prefix="NOVAQUOTA_POLICY_", frozen=True, extra="ignore")

    data_dir: Path = Path("./var/policy")
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6068, ge=0, le=65535)
    #: consumer group used only to make the lag visible; the stored position is the truth
    group_suffix: str = "-policy"
    #: the state and its position are written at most this often (and when the log is idle)
    commit_interval_seconds: float = Field(default=1.0, ge=0)
    max_batch: int = Field(default=5_000, ge=1)
    #: send the actions (off: evaluate and show them only)
    emit: bool = True


@dataclass
class WorkerStatus:
    started: float = field(default_factory=time.time)
    messages: int = 0
    rejected: int = 0
    actions: int = 0
    emitted: int = 0
    suppressed: int = 0
    """Actions not sent: already in the ledger, or computed while re-reading the log."""
    ready: bool = False


def _write_atomic(path: Path, body: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _positions_json(pos: Position) -> list[list[Any]]:
    return [[t, p, o] for (t, p), o in sorted(pos.items())]


def _positions_from(raw: list[list[Any]]) -> Position:
    return {(str(t), int(p)): int(o) for t, p, o in raw}


class PolicyWorker:
    def __init__(
        self,
        settings: Settings,
        psettings: PolicySettings,
        *,
        metrics: PolicyMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else PolicyMetrics()
        self.psettings = psettings
        self.clock = clock
        self.dir = ensure_dir(psettings.data_dir)
        self.state_path = self.dir / "state.json"
        self.ledger_path = self.dir / "emitted.json"
        self.limits = DecodeLimits(
            max_amount=settings.max_amount,
            max_clock_skew_seconds=settings.max_clock_skew_seconds,
        )
        self.feed, self.positions = self._load_state()
        self.emitted_positions, self.emitted_ids = self._load_ledger()
        topics = settings.topics
        self.inputs = (topics.resource_events, topics.quota_commands)
        self.outputs = (topics.quota_violations, topics.quota_alerts)
        self.status = WorkerStatus()
        self.targets: Position = {}
        #: actions sent (or that would have been), newest last, for the views
        self.sent: list[dict[str, Any]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dirty = False
        self._last_commit = time.monotonic()
        self._last_group_commit = 0.0

    # --- persistence -------------------------------------------------------------------------

    def _load_state(self) -> tuple[PolicyFeed, Position]:
        try:
            raw = orjson.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return PolicyFeed(), {}
        if raw.get("format") != STATE_FORMAT:
            log.warning("policy state format %s unknown: reading the log again", raw.get("format"))
            return PolicyFeed(), {}
        return PolicyFeed.from_json(raw["feed"]), _positions_from(raw["positions"])

    def _load_ledger(self) -> tuple[Position, set[str]]:
        try:
            raw = orjson.loads(self.ledger_path.read_bytes())
        except FileNotFoundError:
            return {}, set()
        return _positions_from(raw["positions"]), set(raw["ids"])

    def commit(self) -> None:
        """The feed and the input position after it, in one atomic file write."""
        if self._dirty:
            body = {
                "format": STATE_FORMAT,
                "positions": _positions_json(self.positions),
                "feed": self.feed.to_json(),
            }
            _write_atomic(self.state_path, orjson.dumps(body))
            self._dirty = False
        self._last_commit = time.monotonic()

    def _record_emitted(self, ids: list[str]) -> None:
        self.emitted_ids.update(ids)
        merged = dict(self.emitted_positions)
        for k, v in self.positions.items():
            merged[k] = max(v, merged.get(k, 0))
        self.emitted_positions = merged
        body = {"positions": _positions_json(merged), "ids": sorted(self.emitted_ids)}
        _write_atomic(self.ledger_path, orjson.dumps(body))

    @staticmethod
    def drop_state(directory: Path) -> None:
        """For a rebuild: forget the state and position, keep the emitted ledger."""
        with contextlib.suppress(FileNotFoundError):
            (directory / "state.json").unlink()

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}{self.psettings.group_suffix}"

    async def start(self) -> None:
        cfg = self.settings.kafka_client_config()
        self._consumer = AIOKafkaConsumer(
            **cfg, group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await self._consumer.start()
        tps: list[TopicPartition] = []
        for topic in (*self.inputs, *self.outputs):
            parts = await self._partitions(topic)
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        self._consumer.assign(tps)
        for tp in tps:
            stored = self.positions.get((tp.topic, tp.partition))
            if stored is None:
                await self._consumer.seek_to_beginning(tp)
                self.positions[(tp.topic, tp.partition)] = 0
            else:
                self._consumer.seek(tp, stored)
        ends = await self._consumer.end_offsets(tps)
        self.targets = {(tp.topic, tp.partition): off for tp, off in ends.items()}
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
                raise RuntimeError(f"topic {topic} does not exist (run `novaquota topics create`)")
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self.commit()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._commit_group(force=True)
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def _check_ready(self) -> None:
        if not self.status.ready and all(
            self.positions.get(k, 0) >= end for k, end in self.targets.items()
        ):
            self.status.ready = True
            self.metrics.ready.set(1)

    async def run(self, stop: asyncio.Event, *, until_caught_up: bool = False) -> None:
        while not stop.is_set():
            await self.step()
            if until_caught_up and self.status.ready:
                self.commit()
                return

    # --- the loop ----------------------------------------------------------------------------

    async def step(self, timeout_ms: int = 500) -> int:
        """One consumed batch: feed it, advance event time, send the actions, store."""
        assert self._consumer is not None
        batch = await self._consumer.getmany(
            timeout_ms=timeout_ms, max_records=self.psettings.max_batch
        )
        actions = self.feed_records(batch)
        if batch:
            actions.extend(self.feed.advance())
            self._dirty = True
        if actions:
            await self.send(actions)
        self._check_ready()  # after sending: ready means caught up and sent
        if (
            not batch
            or time.monotonic() - self._last_commit >= self.psettings.commit_interval_seconds
        ):
            self.commit()
        await self._commit_group()
        return sum(len(r) for r in batch.values())

    def feed_records(self, batch: dict[TopicPartition, list[Any]]) -> list[PolicyAction]:
        """Decode and feed one ``getmany`` result: commands first (the quotas and policies the
        events of the same batch are judged against), then the rest, partition by partition."""
        out: list[PolicyAction] = []
        order = {self.inputs[1]: 0, self.inputs[0]: 1}
        for tp, records in sorted(
            batch.items(), key=lambda kv: (order.get(kv[0].topic, 2), kv[0].topic, kv[0].partition)
        ):
            if not records:
                continue
            role = "output" if tp.topic in self.outputs else "input"
            self.metrics.messages.labels(role).inc(len(records))
            for r in records:
                self.status.messages += 1
                try:
                    out.extend(self._feed_one(tp.topic, r))
                except Exception:  # no message may stop the worker
                    self.status.rejected += 1
                    log.exception(
                        "policy feed failed on %s:%d@%d", tp.topic, tp.partition, r.offset
                    )
            self.positions[(tp.topic, tp.partition)] = records[-1].offset + 1
        return out

    def _feed_one(self, topic: str, r: Any) -> list[PolicyAction]:
        if topic in self.outputs:
            if not r.value:
                return []
            obj = orjson.loads(r.value)
            if not isinstance(obj, dict) or not isinstance(obj.get("data"), dict):
                return []
            return self.feed.output(str(obj.get("type")), obj["data"])
        try:
            ev = decode(r.value, r.headers, record_timestamp_ms=r.timestamp, limits=self.limits)
        except DecodeError:
            self.status.rejected += 1  # the enforcement worker dead-letters it
            return []
        return self.feed.event(ev)

    def replaying(self) -> bool:
        """Still re-reading what actions were already sent for: no partition (violations and
        alerts included, which also trigger rules) is past the ledger's position."""
        if not self.emitted_positions:
            return False
        return all(off <= self.emitted_positions.get(k, 0) for k, off in self.positions.items())

    def records(self, actions: list[PolicyAction]) -> list[tuple[str, str, bytes, str]]:
        """(topic, key, value, id) of each action, once per id."""
        topics = self.settings.topics
        out: list[tuple[str, str, bytes, str]] = []
        seen: set[str] = set()
        for a in actions:
            if a.action_id in seen:
                continue
            seen.add(a.action_id)
            cmd = a.command()
            if cmd is not None:
                type_, data = cmd
                value = encode(type_, data, source=POLICY_SOURCE, id=a.action_id, time_us=a.time_us)
                out.append((topics.quota_commands, a.tenant_id, value, a.action_id))
                continue
            alert = a.alert()
            if alert is not None:
                subject = f"{a.key[1]}/{a.key[2]}/{a.key[3]}"
                value = encode(
                    "quota.alert",
                    alert,
                    source=POLICY_SOURCE,
                    id=a.action_id,
                    time_us=a.time_us,
                    subject=subject,
                )
                out.append((topics.quota_alerts, a.tenant_id, value, a.action_id))
        return out

    async def send(self, actions: list[PolicyAction]) -> int:
        self.status.actions += len(actions)
        self.metrics.watermark.set(self.feed.watermark / 1e6)
        for a in actions:
            self.sent.append(a.to_dict())
            self.metrics.actions.labels(a.policy, a.kind).inc()
        del self.sent[:-500]
        if self._producer is None:
            return 0
        if self.replaying():
            self.status.suppressed += len(actions)
            self.metrics.suppressed.inc(len(actions))
            return 0
        records = [r for r in self.records(actions) if r[3] not in self.emitted_ids]
        self.status.suppressed += len(actions) - len(records)
        self.metrics.suppressed.inc(len(actions) - len(records))
        if not records:
            return 0
        futures = [
            await self._producer.send(topic, value, key=key.encode())
            for topic, key, value, _id in records
        ]
        await asyncio.gather(*futures)
        self._record_emitted([r[3] for r in records])
        self.status.emitted += len(records)
        for r in records:
            kind = "alert" if r[0] == self.settings.topics.quota_alerts else "command"
            self.metrics.emitted.labels(kind).inc()
            log.info("policy action sent: %s to %s", r[3], r[0])
        return len(records)

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

    # --- views -------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        eng = self.feed.engine
        policies = []
        for name in sorted(eng.versions):
            view = eng.describe(name) or {}
            p = eng.policies.get(name)
            policies.append(
                {
                    "name": name,
                    "active": p is not None,
                    "version": p.version if p is not None else None,
                    "description": p.description if p is not None else "",
                    "rules": [r.name for r in p.rules] if p is not None else [],
                    "versions": view.get("versions", []),
                    "actions": len(view.get("actions", [])),
                }
            )
        return {"policies": policies, **self.status_body()}

    def status_body(self) -> dict[str, Any]:
        s = self.status
        return {
            "ready": s.ready,
            "messages": s.messages,
            "rejected": s.rejected,
            "actions": s.actions,
            "emitted": s.emitted,
            "suppressed": s.suppressed,
            "replaying": self.replaying(),
            "watermark": self.feed.watermark,
            "positions": {f"{t}:{p}": o for (t, p), o in sorted(self.positions.items())},
        }
