"""Message identity and internal errors, through a real worker and a real broker.

- Deduplication by (source, id) holds for every input type (contract section 3): the first
  message with an identity wins; a later one with the same source and id is ignored even when
  its time or data differ, in either CloudEvents binding.
- A message whose processing raises unexpectedly leaves state as it was, goes to the
  dead-letter topic with reason ``internal_error``, and the partition goes on (section 1).
  A test-only setting (``NOVAQUOTA_FAULT_EVENT_IDS``) makes the worker raise half-way through
  the processing of the named events, after it changed the state in memory.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from novaquota.ops.topics import create_topics
from tests.integration.conftest import Stack
from tests.support.events import BASE_TIME, cloudevent, command, iso
from tests.support.kafka import produce_raw

pytestmark = pytest.mark.integration

FAULTY = "boom-1"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    s = Stack(kafka_bootstrap, prefix, 4, tmp_path_factory.mktemp("identity"))
    asyncio.run(create_topics(s.settings))
    s.start_worker(NOVAQUOTA_FAULT_EVENT_IDS=FAULTY)
    try:
        yield s
    finally:
        s.stop()


def at(minutes: float) -> datetime:
    return BASE_TIME + timedelta(days=3, minutes=minutes)


def binary(ev: dict[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """The CloudEvents Kafka binary binding: attributes in ce_* headers, the value is data."""
    headers = [(f"ce_{k}", str(v).encode()) for k, v in ev.items() if k != "data"]
    headers.append(("content-type", b"application/json"))
    return ev["data"]["tenant_id"].encode(), json.dumps(ev["data"]).encode(), headers


def structured(ev: dict[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return ev["data"]["tenant_id"].encode(), json.dumps(ev).encode(), []


def produce(stack: Stack, topic: str, records: list[tuple[bytes, bytes, Any]]) -> None:
    asyncio.run(produce_raw(stack.bootstrap, stack.topic(topic), records))


def usage(stack: Stack, tenant: str) -> dict[str, Any]:
    status, body = stack.get(f"/api/v1/quotas/utilization?entity_id={tenant}")
    assert status == 200, body
    return body


def wait_watermark(stack: Stack, tenant: str, t: datetime) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = usage(stack, tenant)
        wm = body["as_of"]["event_time"]
        return body if wm and datetime.fromisoformat(wm.replace("Z", "+00:00")) >= t else None

    result: dict[str, Any] = stack.wait_for(reached, timeout=60)
    return result


def cpu_row(body: dict[str, Any]) -> dict[str, Any]:
    [row] = [r for r in body["resources"] if r["resource_type"] == "cpu"]
    return row


def metric(stack: Stack, name: str, **labels: str) -> float:
    with urllib.request.urlopen(stack.workers[0].url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def vm(tenant: str, vm_id: str, id_: str, t: datetime, cpu: float = 1) -> dict[str, Any]:
    data = {"tenant_id": tenant, "vm_id": vm_id, "cpu": cpu, "memory": 1024}
    return cloudevent("vm.created", data, t=t, source="nova/compute", id_=id_)


def vm_gone(tenant: str, vm_id: str, id_: str, t: datetime) -> dict[str, Any]:
    data = {"tenant_id": tenant, "vm_id": vm_id}
    return cloudevent("vm.deleted", data, t=t, source="nova/compute", id_=id_)


@pytest.mark.parametrize(
    ("first", "again"), [(structured, binary), (binary, structured)], ids=["s-then-b", "b-then-s"]
)
def test_a_second_message_with_a_known_identity_has_no_effect(
    stack: Stack, first: Any, again: Any
) -> None:
    tenant = f"dup-{first.__name__[0]}{again.__name__[0]}"
    quota = command(
        "quota.set",
        {
            "level": "tenant",
            "entity_id": tenant,
            "tenant_id": tenant,
            "resource_type": "cpu",
            "limit": 10,
        },
        t=at(0),
        id_=f"{tenant}-q",
    )
    # the same command identity again, asking for another limit: ignored
    quota_again = {**quota, "time": iso(at(1)), "data": {**quota["data"], "limit": 1}}
    produce(stack, "quota-commands", [first(quota)])
    wait_watermark(stack, tenant, at(0))
    produce(stack, "quota-commands", [again(quota_again)])
    before = metric(stack, "quota_duplicates_total", type="vm.created")

    original = vm(tenant, "vm-1", f"{tenant}-c1", at(2), cpu=5)
    # same source and id, other data and a later time: the first one wins
    conflicting = vm(tenant, "vm-1", f"{tenant}-c1", at(3), cpu=68)
    created = vm(tenant, "vm-2", f"{tenant}-c2", at(4), cpu=2)
    deleted = vm_gone(tenant, "vm-2", f"{tenant}-d2", at(5))
    sentinel = vm(tenant, "vm-3", f"{tenant}-c3", at(7), cpu=1)
    produce(stack, "resource-events", [first(original), first(created), first(deleted)])
    produce(stack, "resource-events", [again(conflicting), again(created), first(sentinel)])
    body = wait_watermark(stack, tenant, at(7))
    row = cpu_row(body)
    assert row["used"] == 6  # vm-1 with its first 5 cores, vm-3's one; vm-2 stays deleted
    assert row["limit"] == 10  # the re-sent quota.set with limit 1 changed nothing
    vios = [
        e
        for e in stack.outputs("quota-violations", idle=1.0)
        if e["data"].get("tenant_id") == tenant
    ]
    assert vios == []  # no false over_limit from the conflicting re-send
    stack.wait_for(lambda: metric(stack, "quota_duplicates_total", type="vm.created") >= before + 2)
    assert metric(stack, "quota_duplicates_total", type="quota.set") >= 1


async def _committed(stack: Stack, tp: TopicPartition) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{stack.prefix}enforcement")
        meta = offsets.get(tp)
        return -1 if meta is None else int(meta.offset)
    finally:
        await admin.close()


def test_a_message_that_raises_is_dead_lettered_and_the_partition_goes_on(stack: Stack) -> None:
    tenant = "fault-1"
    before = metric(stack, "quota_internal_errors_total")
    events = [
        vm(tenant, "vm-a", "fault-a", at(10), cpu=1),
        vm(tenant, FAULTY, FAULTY, at(11), cpu=4),  # raises after changing state in memory
        vm(tenant, "vm-c", "fault-c", at(12), cpu=2),
    ]
    produce(stack, "resource-events", [structured(e) for e in events])
    body = wait_watermark(stack, tenant, at(12))
    assert cpu_row(body)["used"] == 3  # a and c; the faulty one left no trace

    records = stack.consume("resource-events", idle=1.0)
    [bad] = [r for r in records if json.loads(r.value).get("id") == FAULTY]
    dead = stack.wait_for(
        lambda: [
            r
            for r in stack.consume("dead-letter", idle=0.5)
            if dict(r.headers).get("error.reason") == b"internal_error"
        ]
    )
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert dead[0].value == bad.value  # the original bytes, unchanged
    assert headers["error.message"].startswith(b"InjectedFault: ")
    assert headers["error.topic"] == stack.topic("resource-events").encode()
    assert headers["error.partition"] == str(bad.partition).encode()
    assert headers["error.offset"] == str(bad.offset).encode()
    assert metric(stack, "quota_internal_errors_total") == before + 1

    # the worker goes on past it: the group's commit moves beyond the faulty record
    tp = TopicPartition(stack.topic("resource-events"), bad.partition)
    last = max(r.offset for r in records if r.partition == bad.partition)
    stack.wait_for(lambda: asyncio.run(_committed(stack, tp)) > last, timeout=60)
    # and the faulty VM can still be created by a new message
    produce(stack, "resource-events", [structured(vm(tenant, FAULTY, "fault-d", at(13), 4))])
    assert cpu_row(wait_watermark(stack, tenant, at(13)))["used"] == 7
