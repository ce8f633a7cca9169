"""The topic catalogue: every topic of the contract with its partitions, retention and cleanup.

``create_topics`` is idempotent: topics that exist are left alone (and checked), missing ones are
created. The two input topics must have the same partition count, because a tenant's resource
events and commands are processed by the same owner; a mismatch is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from novaquota.streams.settings import Settings

__all__ = [
    "TopicMismatchError",
    "TopicSpec",
    "TopicsNotListedError",
    "catalogue",
    "changelog_topics",
    "check_reachable",
    "create_topics",
    "describe_topics",
]

FOREVER = "-1"
THIRTY_DAYS_MS = str(30 * 24 * 3600 * 1000)


class TopicMismatchError(RuntimeError):
    """An existing topic contradicts the catalogue in a way that breaks correctness."""


class TopicsNotListedError(TimeoutError):
    """Topics were created but the broker did not list them in time."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    purpose: str


def catalogue(settings: Settings) -> list[TopicSpec]:
    t = settings.topics
    n = settings.partitions
    forever = {"retention.ms": FOREVER, "retention.bytes": "-1", "cleanup.policy": "delete"}
    month = {"retention.ms": THIRTY_DAYS_MS, "cleanup.policy": "delete"}
    return [
        TopicSpec(t.resource_events, n, forever, "input: resource events (the audit log)"),
        TopicSpec(t.quota_commands, n, forever, "input: quota commands"),
        TopicSpec(t.quota_violations, n, forever, "output: violation episodes"),
        TopicSpec(t.quota_alerts, n, month, "output: alerts"),
        TopicSpec(t.audit, n, forever, "output: audit records"),
        TopicSpec(t.dead_letter, n, month, "output: rejected input, original bytes"),
        TopicSpec(
            t.delivery_dead_letter,
            n,
            month,
            "output: alerts and violations a delivery channel did not take, original bytes",
        ),
        TopicSpec(t.routed, n, forever, "internal: input re-keyed to its tenant's partition"),
        TopicSpec(t.ticks, n, forever, "internal: event-time ticks (replayable)"),
        TopicSpec(t.admission, n, month, "internal: admission requests (reserve, release, TTL)"),
        TopicSpec(
            t.live,
            n,
            {"retention.ms": str(3600 * 1000), "cleanup.policy": "delete"},
            "internal: coalesced usage snapshots for the live feed (tailed, one hour)",
        ),
        TopicSpec(
            t.system_totals,
            n,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            "internal: per-partition absolute totals for system quotas",
        ),
    ]


#: The worker's tables; Faust names their changelog topics ``<app_id>-<table>-changelog``.
CHANGELOG_TABLES: dict[str, dict[str, str]] = {
    "tenants": {"cleanup.policy": "compact"},
    "instances": {"cleanup.policy": "compact"},
    "dedup": {"cleanup.policy": "compact,delete", "retention.ms": str(8 * 24 * 3600 * 1000)},
    "templates": {"cleanup.policy": "compact"},
}


def changelog_topics(settings: Settings) -> list[TopicSpec]:
    """Created up front: when a first worker creates them itself and joins its group a moment
    later, Faust's assignor can miss a topic the broker does not list yet and never assign."""
    return [
        TopicSpec(
            f"{settings.app_id}-{table}-changelog",
            settings.partitions,
            config,
            f"internal: changelog of the worker's {table} table",
        )
        for table, config in CHANGELOG_TABLES.items()
    ]


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**settings.kafka_client_config(), request_timeout_ms=30000)


async def check_reachable(settings: Settings) -> None:
    """Raise ``KafkaConnectionError`` unless the broker answers a metadata request within
    ``kafka_connect_timeout_seconds`` (commands that would otherwise retry for ever)."""
    timeout = settings.kafka_connect_timeout_seconds
    admin = AIOKafkaAdminClient(
        **settings.kafka_client_config(), request_timeout_ms=max(1000, int(timeout * 1000))
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise KafkaConnectionError(f"{exc} (waited at most {timeout:g} s)") from exc
    finally:
        await admin.close()


async def _existing_partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    existing = set(await admin.list_topics())
    wanted = [n for n in names if n in existing]
    if not wanted:
        return {}
    out: dict[str, int] = {}
    for meta in await admin.describe_topics(wanted):
        if meta.get("error_code", 0) == 0:
            out[meta["topic"]] = len(meta["partitions"])
    return out


async def create_topics(settings: Settings) -> dict[str, str]:
    """Create what is missing and wait until the broker lists it; return
    {topic: 'created' | 'exists'}."""
    specs = catalogue(settings) + changelog_topics(settings)
    admin = _admin(settings)
    await admin.start()
    try:
        have = await _existing_partitions(admin, [s.name for s in specs])
        t = settings.topics
        inputs = {t.resource_events, t.quota_commands}
        counts = {have.get(name, settings.partitions) for name in inputs}
        if len(counts) != 1:
            raise TopicMismatchError(
                f"the input topics {sorted(inputs)} must have the same partition count; "
                f"found { ({n: have.get(n) for n in sorted(inputs)}) }"
            )
        missing = [s for s in specs if s.name not in have]
        co_partitioned = inputs | {c.name for c in changelog_topics(settings)}
        for name in sorted(co_partitioned & have.keys()):
            if have[name] != settings.partitions:
                raise TopicMismatchError(
                    f"{name} exists with {have[name]} partitions but NOVAQUOTA_PARTITIONS is "
                    f"{settings.partitions}; use the existing count, another "
                    "NOVAQUOTA_APP_ID / NOVAQUOTA_TOPIC_PREFIX, or delete the old topics"
                )
        if missing:
            new = [
                NewTopic(
                    name=s.name,
                    num_partitions=s.partitions,
                    replication_factor=settings.replication_factor,
                    topic_configs=s.config,
                )
                for s in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently: fine
                await admin.create_topics(new)
            deadline = time.monotonic() + 30
            while not {s.name for s in missing} <= set(await admin.list_topics()):
                if time.monotonic() > deadline:
                    raise TopicsNotListedError("created topics did not appear within 30 s")
                await asyncio.sleep(0.2)
        return {s.name: ("created" if s in missing else "exists") for s in specs}
    finally:
        await admin.close()


async def describe_topics(settings: Settings) -> list[dict[str, object]]:
    specs = catalogue(settings) + changelog_topics(settings)
    admin = _admin(settings)
    await admin.start()
    try:
        have = await _existing_partitions(admin, [s.name for s in specs])
        configs: dict[str, dict[str, str]] = {}
        present = [s.name for s in specs if s.name in have]
        if present:
            resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in present]
            for resp in await admin.describe_configs(resources):
                for _err, _msg, _rtype, rname, entries in resp.resources:
                    configs[rname] = {e[0]: e[1] for e in entries}
        out: list[dict[str, object]] = []
        for s in specs:
            cfg = configs.get(s.name, {})
            out.append(
                {
                    "topic": s.name,
                    "purpose": s.purpose,
                    "exists": s.name in have,
                    "partitions": have.get(s.name),
                    "retention.ms": cfg.get("retention.ms"),
                    "cleanup.policy": cfg.get("cleanup.policy"),
                }
            )
        return out
    finally:
        await admin.close()
