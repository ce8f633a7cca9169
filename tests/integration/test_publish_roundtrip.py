"""Publish -> broker -> worker round trips: ``novaquota publish`` and the official CloudEvents SDK
in both Kafka bindings (structured and binary), with a key, another key, or none."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cloudevents.v1 import kafka as ce_kafka
from cloudevents.v1.http import CloudEvent

from tests.integration.conftest import Stack
from tests.support.events import command, vm_created
from tests.support.kafka import produce_raw

pytestmark = pytest.mark.integration


def _used(stack: Stack, tenant: str, resource: str) -> float | None:
    status, body = stack.get(f"/api/v1/quotas/utilization?entity_id={tenant}")
    if status != 200:
        return None
    for row in body["resources"]:
        if row["resource_type"] == resource:
            return float(row["used"])
    return None


def test_publish_cli_sends_valid_lines_and_reports_invalid_ones(
    stack: Stack, tmp_path: Path
) -> None:
    lines = [
        json.dumps(
            command(
                "quota.set",
                {
                    "level": "tenant",
                    "entity_id": "pub",
                    "tenant_id": "pub",
                    "resource_type": "cpu",
                    "limit": 100,
                },
                t=0,
            )
        ),
        json.dumps(vm_created("pub", "v1", cpu=1.5, t=10)),
        "{not json",
        json.dumps(vm_created("pub", "v2", cpu=-3, t=20)),
        "",
        json.dumps(vm_created("pub", "v3", cpu=2.25, t=30)),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    env = {**stack.workers[0].env}
    proc = subprocess.run(
        [sys.executable, "-m", "novaquota.ops.cli", "publish", "-q", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "line 3: malformed_json" in proc.stderr
    assert "line 4: negative_amount: data.cpu" in proc.stderr
    assert "published 3 message(s) (2 resource events, 1 commands); rejected 2" in proc.stderr
    assert stack.wait_for(lambda: _used(stack, "pub", "cpu") == 3.75)
    # the rejected lines were never sent: nothing reached the dead-letter topic
    assert stack.consume("dead-letter", idle=1) == []


def test_official_sdk_messages_in_both_bindings(stack: Stack) -> None:
    now = datetime.now(UTC).isoformat()
    records = []
    for i, to_kafka in enumerate((ce_kafka.to_binary, ce_kafka.to_structured) * 2):
        event = CloudEvent(
            {
                "type": "vm.created",
                "source": "nova/compute/sdk",
                "time": now,
                "partitionkey": "sdk",
                "datacontenttype": "application/json",
            },
            {"tenant_id": "sdk", "vm_id": f"vm-{i}", "cpu": 1, "memory": 512},
        )
        msg = to_kafka(event)
        headers = [
            (k, v if isinstance(v, bytes) else str(v).encode()) for k, v in msg.headers.items()
        ]
        key = [b"sdk", b"some-other-key", None, b"sdk"][i]
        records.append((key, msg.value, headers))
    asyncio.run(produce_raw(stack.bootstrap, stack.topic("resource-events"), records))
    assert stack.wait_for(lambda: _used(stack, "sdk", "instances") == 4)
    assert _used(stack, "sdk", "cpu") == 4
