"""Bad input from any Kafka client reaches the dead-letter topic with its reason, unchanged,
while good messages keep flowing (contract sections 1 and 3)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from novaquota.ops.topics import create_topics
from novaquota.streams.settings import Settings
from tests.support.events import dumps, vm_created
from tests.support.kafka import consume_all, produce_raw
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration

BAD = [
    (b"not json at all {", "malformed_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (
        b'{"specversion":"1.0","id":"x1","source":"s","type":"vm.exploded",'
        b'"time":"2026-11-01T00:00:00Z","data":{"tenant_id":"t"}}',
        "unknown_type",
    ),
    (
        b'{"specversion":"1.0","id":"x2","source":"s","type":"vm.created",'
        b'"time":"2026-11-01T00:00:00Z","data":{"tenant_id":"t","vm_id":"v","memory":1}}',
        "missing_field",
    ),
    (
        b'{"specversion":"1.0","id":"x3","source":"s","type":"vm.created",'
        b'"time":"2026-11-01T00:00:00Z","data":{"tenant_id":"t","vm_id":"v","cpu":-1,'
        b'"memory":1}}',
        "negative_amount",
    ),
]


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _scrape(worker: WorkerProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def test_bad_messages_go_to_dead_letter_good_ones_flow(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        partitions=4,
        app_id=f"{topic_prefix}enforcement",  # the worker's group: never the default names
    )
    asyncio.run(create_topics(settings))
    worker = WorkerProcess(
        bootstrap=kafka_bootstrap, topic_prefix=topic_prefix, data_dir=tmp_path, partitions=4
    ).start()
    try:
        good_before = [dumps(vm_created("acme", f"vm-{i}")) for i in range(5)]
        good_after = [dumps(vm_created("globex", f"vm-{i}")) for i in range(5)]
        records = (
            [(b"acme", v, None) for v in good_before]
            # no key at all, and odd headers: the worker must not care
            + [(None, value, [("x-odd", b"\xff")]) for value, _ in BAD]
            + [(b"globex", v, None) for v in good_after]
        )
        topic = settings.topics.resource_events
        asyncio.run(produce_raw(kafka_bootstrap, topic, records))
        # a command topic message with a bad body too
        asyncio.run(
            produce_raw(
                kafka_bootstrap,
                settings.topics.quota_commands,
                [(b"acme", b"\x00\x01binary", None)],
            )
        )

        dlq = asyncio.run(
            consume_all(kafka_bootstrap, settings.topics.dead_letter, expect=len(BAD) + 1)
        )
        assert len(dlq) == len(BAD) + 1
        by_value = {r.value: dict(r.headers) for r in dlq}
        for value, reason in BAD:
            headers = by_value[value]  # original bytes, unchanged
            assert headers["error.reason"].decode() == reason
            assert headers["error.topic"].decode() == topic
            assert re.fullmatch(rb"\d+", headers["error.partition"])
            assert re.fullmatch(rb"\d+", headers["error.offset"])
            assert headers["x-odd"] == b"\xff"  # original headers kept
        cmd = by_value[b"\x00\x01binary"]
        assert cmd["error.reason"] == b"malformed_json"
        assert cmd["error.topic"].decode() == settings.topics.quota_commands

        # every good message was accepted (none dead-lettered), including those after the bad
        deadline = time.monotonic() + 60
        accepted = 0.0
        while time.monotonic() < deadline:
            text = _scrape(worker)
            accepted = _metric(text, "quota_events_processed_total", outcome="accepted")
            if accepted >= 10:
                break
            time.sleep(0.5)
        assert accepted == 10
        assert _metric(text, "quota_dead_letter_total") == len(BAD) + 1
    finally:
        worker.stop()
