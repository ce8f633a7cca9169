"""``GET /api/v1/audit`` and ``GET /api/v1/replay/report`` on a real projection worker, with the
audit records written by a real enforcement worker from commands and an admission grant."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from novaquota.ops.topics import create_topics
from novaquota.projections.audit import CHUNK, home_partition
from tests.integration.conftest import Stack
from tests.support.events import command
from tests.support.http import call as http_call
from tests.support.kafka import produce_raw
from tests.support.worker import ProjectionProcess, WorkerProcess

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)
PARTITIONS = 4
SCAN_MAX = 5000
RESOURCES = ["cpu", "memory", "gpu", "storage", "volumes", "snapshots", "backups"]


@dataclass
class Deployment:
    stack: Stack
    enforcement: WorkerProcess
    projections: str
    admin: str
    viewer: str  # of acme
    service: str  # of acme
    globex: str  # a viewer of globex
    base: datetime


def call(
    url: str, token: str | None, method: str = "GET", body: Any = None
) -> tuple[int, Any, Any]:
    return http_call(url, method, body, token=token or None, timeout=90)


def audit(d: Deployment, token: str | None = None, **params: Any) -> tuple[int, Any]:
    params.setdefault("tenant_id", "acme")
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    status, body, _ = call(f"{d.projections}/api/v1/audit?{query}", token or d.viewer)
    return status, body


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def dep(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("audit")
    stack = Stack(kafka_bootstrap, f"t{uuid.uuid4().hex[:10]}.", PARTITIONS, tmp)
    asyncio.run(create_topics(stack.settings))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    # acme: seven quotas set by alice, then three changes by bob ten minutes later; globex: two
    commands = [
        command(
            "quota.set",
            {
                "level": "tenant",
                "entity_id": "acme",
                "resource_type": r,
                "limit": 100,
                "actor": "ops:alice",
            },
            t=base + i * MINUTE,
        )
        for i, r in enumerate(RESOURCES)
    ]
    commands += [
        command(
            "quota.set",
            {
                "level": "tenant",
                "entity_id": "acme",
                "resource_type": r,
                "limit": 50,
                "actor": "ops:bob",
            },
            t=base + (10 + i) * MINUTE,
        )
        for i, r in enumerate(RESOURCES[:3])
    ]
    commands += [
        command(
            "quota.set",
            {
                "level": "tenant",
                "entity_id": "globex",
                "resource_type": r,
                "limit": 4,
                "actor": "ops:carol",
            },
            t=base + i * MINUTE,
        )
        for i, r in enumerate(RESOURCES[:2])
    ]
    stack.produce("quota-commands", commands)
    enforcement = stack.start_worker()
    creds = enforcement.credentials
    process = ProjectionProcess(
        bootstrap=stack.bootstrap,
        topic_prefix=stack.prefix,
        data_dir=tmp,
        credentials=creds,
        partitions=PARTITIONS,
        env={
            "NOVAQUOTA_PROJECTIONS_REPLAY_MAX_CONCURRENT": "1",
            "NOVAQUOTA_PROJECTIONS_AUDIT_SCAN_MAX": str(SCAN_MAX),
        },
    ).start()
    d = Deployment(
        stack,
        enforcement,
        process.url,
        creds.admin_token,
        creds.token("acme-viewer", "viewer", "acme"),
        creds.token("acme-svc", "service", "acme"),
        creds.token("globex-viewer", "viewer", "globex"),
        base,
    )
    try:
        stack.wait_for(process.ready, timeout=90)
        # an admission grant: an audit record of another type, by the service token
        status, body, _ = call(
            enforcement.url + "/api/v1/quotas/check",
            d.service,
            "POST",
            {"tenant_id": "acme", "resources": {"cpu": 1}, "reserve": True},
        )
        assert status == 200 and body["allowed"], body
        stack.wait_for(lambda: len(audit(d, page_size=200)[1]["records"]) == 11, timeout=60)
        yield d
    finally:
        process.stop()
        stack.stop()


def test_a_tenants_records_newest_first_and_only_its_own(dep: Deployment) -> None:
    status, body = audit(dep, page_size=200)
    assert status == 200, body
    records = body["records"]
    assert body["tenant_id"] == "acme" and body["next_page_token"] is None
    assert {r["tenant_id"] for r in records} == {"acme"}
    offsets = [r["offset"] for r in records]
    assert offsets == sorted(offsets, reverse=True) and len(set(offsets)) == 11
    # the grant came last; before it bob's changes, then alice's quotas, newest first
    assert records[0]["type"] == "audit.reservation_granted"
    assert records[0]["actor"] == "token:acme-svc"
    applied = [r for r in records if r["type"] == "audit.command_applied"]
    assert [r["actor"] for r in applied] == ["ops:bob"] * 3 + ["ops:alice"] * 7
    assert [r["details"]["subject"].split("/")[-1] for r in applied[:3]] == ["gpu", "memory", "cpu"]
    assert applied[0]["details"]["action"] == "audit.quota_set"
    assert applied[0]["cause"]["type"] == "quota.set"
    assert applied[0]["time"].startswith(_iso(dep.base + 12 * MINUTE)[:16])
    # globex's two records are its own
    status, body = audit(dep, dep.globex, tenant_id="globex")
    assert status == 200 and [r["actor"] for r in body["records"]] == ["ops:carol"] * 2


def test_filters_by_actor_type_and_time(dep: Deployment) -> None:
    status, body = audit(dep, tenant_id="acme", actor="ops:bob")
    assert status == 200 and [r["actor"] for r in body["records"]] == ["ops:bob"] * 3
    status, body = audit(dep, tenant_id="acme", actor="ops:bo")  # exact, not a prefix
    assert status == 200 and body["records"] == []
    status, body = audit(dep, tenant_id="acme", type="audit.reservation_granted")
    assert status == 200 and [r["actor"] for r in body["records"]] == ["token:acme-svc"]
    status, body = audit(dep, tenant_id="acme", type="audit.command_applied", actor="ops:alice")
    assert status == 200 and len(body["records"]) == 7
    since, until = _iso(dep.base + 3 * MINUTE), _iso(dep.base + 11 * MINUTE)
    status, body = audit(dep, tenant_id="acme", since=since, until=until)
    assert status == 200
    # alice's 4th to 7th (minutes 3-6) and bob's first two (minutes 10, 11)
    assert [r["actor"] for r in body["records"]] == ["ops:bob"] * 2 + ["ops:alice"] * 4
    epoch = str(int((dep.base + 10 * MINUTE).timestamp()))
    status, body = audit(dep, tenant_id="acme", since=epoch, type="audit.command_applied")
    assert status == 200 and [r["actor"] for r in body["records"]] == ["ops:bob"] * 3


def test_pages_follow_each_other_without_gaps_or_repeats(dep: Deployment) -> None:
    _, whole = audit(dep, tenant_id="acme", page_size=200)
    seen: list[int] = []
    token = None
    sizes = []
    for _ in range(10):
        status, body = audit(dep, tenant_id="acme", page_size=4, page_token=token)
        assert status == 200, body
        sizes.append(len(body["records"]))
        seen += [r["offset"] for r in body["records"]]
        token = body["next_page_token"]
        if token is None:
            break
    assert sizes == [4, 4, 3]
    assert seen == [r["offset"] for r in whole["records"]]
    # a token is bound to its tenant and filter
    _, first = audit(dep, tenant_id="acme", page_size=2)
    status, body = audit(dep, tenant_id="acme", page_size=2, page_token=first["next_page_token"],
                         actor="ops:bob")  # fmt: skip
    assert status == 400 and body["error"]["code"] == "invalid_page_token"


def test_bad_input_is_a_400_and_another_tenant_a_404(dep: Deployment) -> None:
    for params, code in [
        ({"since": "yesterday"}, "invalid_time"),
        ({"until": "2026-11-02T10:00:00"}, "invalid_time"),
        ({"since": _iso(dep.base), "until": _iso(dep.base - MINUTE)}, "invalid_time"),
        ({"type": "quota.set"}, "invalid_type"),
        ({"page_size": "0"}, "invalid_page_size"),
        ({"page_size": "201"}, "invalid_page_size"),
        ({"page_token": "AAAA"}, "invalid_page_token"),
    ]:
        status, body = audit(dep, tenant_id="acme", **params)
        assert status == 400 and body["error"]["code"] == code, (params, body)
    status, body = audit(dep, tenant_id=None)
    assert status == 400 and body["error"]["code"] == "missing_tenant_id"
    status, body = audit(dep, dep.globex, tenant_id="acme")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body, headers = call(f"{dep.projections}/api/v1/audit?tenant_id=acme", None)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    status, body = audit(dep, dep.admin, tenant_id="acme", page_size=1)
    assert status == 200 and len(body["records"]) == 1
    # the worker is still well
    assert call(f"{dep.projections}/readyz", None)[0] == 200


def test_the_replay_report_as_of_a_time(dep: Deployment) -> None:
    report = f"{dep.projections}/api/v1/replay/report"
    as_of = _iso(dep.base + 10 * MINUTE + 30 * timedelta(seconds=1))
    status, doc, _ = call(f"{report}?tenant_id=acme&until={as_of}&format=json", dep.viewer)
    assert status == 200, doc
    assert doc["report"] == "novaquota.replay" and doc["tenant"] == "acme"
    assert doc["as_of"].startswith(as_of[:19])
    status, html, headers = call(f"{report}?tenant_id=acme&until={as_of}", dep.viewer)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"acme" in html and b"<html" in html.lower()
    for query, code, want in [
        ("tenant_id=acme", "missing_until", 400),
        ("tenant_id=acme&until=noon", "invalid_time", 400),
        (f"tenant_id=acme&until={as_of}&format=csv", "invalid_format", 400),
        (f"until={as_of}", "missing_tenant_id", 400),
    ]:
        status, body, _ = call(f"{report}?{query}", dep.viewer)
        assert (status, body["error"]["code"]) == (want, code), query
    status, body, _ = call(f"{report}?tenant_id=acme&until={as_of}", dep.globex)
    assert status == 404 and body["error"]["code"] == "not_found"


def test_replays_beyond_the_limit_answer_503_with_retry_after(dep: Deployment) -> None:
    """The deployment allows one replay at a time."""
    url = f"{dep.projections}/api/v1/replay/report?tenant_id=acme&until={_iso(dep.base)}"
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: call(url, dep.viewer), range(4)))
    statuses = sorted(a[0] for a in answers)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
    for status, body, headers in answers:
        if status == 503:
            assert body["error"]["code"] == "busy" and headers["Retry-After"]
    assert call(url, dep.viewer)[0] == 200  # the slot is free again


def test_a_large_partition_is_read_a_chunk_at_a_time(dep: Deployment) -> None:
    """30,000 records of a tenant on a partition of its own, one of them by a rare actor near
    the start: the first page reads one chunk, not the partition; the rare record is reached
    through pages of at most SCAN_MAX records each, none of them the whole partition."""
    taken = {home_partition(t, PARTITIONS) for t in ("acme", "globex")}
    tenant = next(
        f"bulk-{i}" for i in range(50) if home_partition(f"bulk-{i}", PARTITIONS) not in taken
    )
    t = _iso(dep.base)

    def record(i: int, actor: str) -> tuple[bytes, bytes, None]:
        cause = {"source": "tests", "id": f"c{i}", "type": "quota.set"}
        details = {"action": "audit.quota_set", "subject": f"s{i}"}
        data = {"actor": actor, "cause": cause, "tenant_id": tenant, "details": details}
        value = {
            "specversion": "1.0", "id": f"bulk-{i}", "source": "novaquota/enforcement",
            "type": "audit.command_applied", "time": t, "data": data,
        }  # fmt: skip
        return tenant.encode(), json.dumps(value).encode(), None

    n = 30_000
    records = [record(i, "bulk:rare" if i == 100 else "bulk:many") for i in range(n)]
    asyncio.run(produce_raw(dep.stack.bootstrap, dep.stack.topic("audit"), records))
    started = time.monotonic()
    status, body = audit(dep, dep.admin, tenant_id=tenant)
    took = time.monotonic() - started
    print(f"first page of 50 over {n} records: {took * 1000:.0f} ms")
    assert status == 200, body
    assert took < 2.0
    assert [r["id"] for r in body["records"]] == [f"bulk-{i}" for i in range(n - 1, n - 51, -1)]
    assert body["scanned"] == CHUNK
    started = time.monotonic()
    pages, found, scanned = 0, [], []
    next_token = None
    while True:
        status, body = audit(dep, dep.admin, tenant_id=tenant, actor="bulk:rare",
                             page_token=next_token)  # fmt: skip
        assert status == 200, body
        pages += 1
        found += [r["id"] for r in body["records"]]
        scanned.append(body["scanned"])
        next_token = body["next_page_token"]
        if next_token is None:
            break
    print(f"{pages} pages to reach a rare actor: {(time.monotonic() - started) * 1000:.0f} ms")
    assert found == ["bulk-100"]
    assert max(scanned) <= SCAN_MAX and sum(scanned) == n and pages == n // SCAN_MAX
