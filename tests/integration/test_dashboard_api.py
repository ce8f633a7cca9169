"""What the web dashboard reads, through real workers and the real broker: the tenants list,
the operations overview, CORS on both ports and the live WebSocket's token as a subprotocol.

One deployment for the module: an enforcement worker and a projection worker sharing a token
file, both allowing one browser origin.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from novaquota.ops.topics import create_topics
from tests.integration.conftest import Stack
from tests.integration.test_auth import call
from tests.support.events import cloudevent, command, vm_created
from tests.support.worker import Credentials, ProjectionProcess, WorkerProcess

pytestmark = pytest.mark.integration

PARTITIONS = 4
DASH = "https://dash.example.com"
LIMIT = 10
#: tenant -> cpu in use (of LIMIT); "dz" has usage and no quota
USED = {"da": 2, "db": 9, "dc": 5, "dd": 0}


@dataclass
class Deployment:
    stack: Stack
    creds: Credentials
    projections: str
    log: Path

    @property
    def worker(self) -> WorkerProcess:
        return self.stack.workers[0]

    def admin(self, path: str) -> tuple[int, Any]:
        status, body, _ = call(self.projections + path, "GET", token=self.creds.admin_token)
        return status, body


def _quota(tenant: str) -> dict[str, Any]:
    data = {"level": "tenant", "entity_id": tenant, "tenant_id": tenant, "resource_type": "cpu"}
    return command("quota.set", {**data, "limit": LIMIT})


@pytest.fixture(scope="module")
def dep(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    prefix = f"d{uuid.uuid4().hex[:10]}."
    tmp = tmp_path_factory.mktemp("dash")
    stack = Stack(kafka_bootstrap, prefix, PARTITIONS, tmp)
    asyncio.run(create_topics(stack.settings))
    w = WorkerProcess(
        bootstrap=kafka_bootstrap,
        topic_prefix=prefix,
        data_dir=tmp,
        partitions=PARTITIONS,
        env={"NOVAQUOTA_CORS_ORIGINS": DASH},
    )
    stack.workers.append(w)
    w.start()
    projections = ProjectionProcess(
        bootstrap=kafka_bootstrap,
        topic_prefix=prefix,
        data_dir=tmp,
        credentials=w.credentials,
        partitions=PARTITIONS,
        env={
            "NOVAQUOTA_CORS_ORIGINS": DASH,
            "NOVAQUOTA_PROJECTIONS_WORKERS_SAMPLE_SECONDS": "1",
        },
    ).start()
    d = Deployment(stack, w.credentials, projections.url, projections.log_path)
    try:
        stack.produce("quota-commands", [_quota(t) for t in USED])
        stack.produce(
            "resource-events",
            [vm_created(t, f"{t}-vm", cpu=used) for t, used in USED.items() if used]
            + [vm_created("dz", "dz-vm", cpu=1)],
        )
        stack.wait_for(lambda: _listed(d) == 5, timeout=90)
        yield d
    finally:
        projections.stop()
        stack.stop()


def _listed(d: Deployment) -> int:
    try:
        status, body = d.admin("/api/v1/tenants")
    except OSError:
        return 0
    if status != 200:
        return 0
    rows = {r["tenant_id"]: r for r in body["tenants"]}
    if rows.get("db", {}).get("utilization") != 90.0:
        return 0  # not every usage folded yet
    return int(body["total"])


def ids(body: dict[str, Any]) -> list[str]:
    return [r["tenant_id"] for r in body["tenants"]]


def test_tenants_by_utilization_paged(dep: Deployment) -> None:
    status, body = dep.admin("/api/v1/tenants")
    assert status == 200, body
    assert ids(body) == ["db", "dc", "da", "dd", "dz"]  # 90, 50, 20, 0 %, then no quota
    rows = {r["tenant_id"]: r for r in body["tenants"]}
    assert rows["dc"] == {**rows["dc"], "utilization": 50.0, "resource_type": "cpu",
                          "resources": 1}  # fmt: skip
    assert rows["dz"]["utilization"] is None and rows["dz"]["resources"] == 0
    assert body["as_of"]["event_time"] is not None
    seen: list[str] = []
    token = None
    for _ in range(5):
        query = "/api/v1/tenants?page_size=2" + (f"&page_token={token}" if token else "")
        status, page = dep.admin(query)
        assert status == 200 and page["total"] == 5, page
        assert len(page["tenants"]) <= 2
        seen += ids(page)
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == ["db", "dc", "da", "dd", "dz"]
    assert ids(dep.admin("/api/v1/tenants?sort=tenant_id")[1]) == ["da", "db", "dc", "dd", "dz"]
    assert ids(dep.admin("/api/v1/tenants?q=dd")[1]) == ["dd"]
    for bad, code in [
        ("page_size=0", "invalid_page_size"),
        ("page_size=201", "invalid_page_size"),
        ("sort=cost", "invalid_sort"),
        ("page_token=%7Bbad", "invalid_page_token"),
    ]:
        status, body = dep.admin(f"/api/v1/tenants?{bad}")
        assert status == 400 and body["error"]["code"] == code, (bad, body)


def test_a_tenant_token_lists_its_own_tenant_only(dep: Deployment) -> None:
    token = dep.creds.token("dc-viewer", "viewer", "dc")
    url = dep.projections + "/api/v1/tenants"
    dep.stack.wait_for(lambda: call(url, "GET", token=token)[0] == 200, timeout=30)
    status, body, _ = call(url, "GET", token=token)
    assert ids(body) == ["dc"] and body["total"] == 1, body
    status, body, _ = call(url + "?q=db", "GET", token=token)
    assert status == 200 and body["tenants"] == [] and body["total"] == 0
    status, body, _ = call(dep.projections + "/api/v1/operations/overview", "GET", token=token)
    assert status == 404 and body["error"]["code"] == "not_found"


def test_overview_violations_dead_letters_and_workers(dep: Deployment) -> None:
    # db goes over its limit: the enforcement worker opens an over_limit episode
    dep.stack.produce("resource-events", [vm_created("db", "db-vm-2", cpu=3)])
    # two bad inputs: bytes that are not JSON, and an event type nobody knows
    unknown = cloudevent("vm.teleported", {"tenant_id": "da", "vm_id": "x"})
    dep.stack.produce("resource-events", [b"this is not json", unknown])

    last: list[Any] = []

    def overview() -> dict[str, Any] | None:
        status, body = dep.admin("/api/v1/operations/overview")
        assert status == 200, body
        last[:] = [body]
        dl = body["dead_letters"]
        reasons = dl["by_reason"]
        if body["open_violations_by_kind"].get("over_limit", 0) < 1:
            return None
        if reasons.get("malformed_json", 0) < 1 or reasons.get("unknown_type", 0) < 1:
            return None
        workers = body["workers"]
        if len(workers) != 1 or workers[0]["events_per_second"] is None:
            return None
        return dict(body)

    try:
        body = dep.stack.wait_for(overview, timeout=90)
    except AssertionError:
        raise AssertionError(f"last overview: {last}\n{dep.log.read_text()[-3000:]}") from None
    dl = body["dead_letters"]
    assert dl["total"] == sum(dl["by_reason"].values()) >= 2
    by_reason = {r["reason"]: r for r in dl["recent"]}
    teleported = by_reason["unknown_type"]
    assert teleported["type"] == "vm.teleported" and teleported["tenant_id"] == "da"
    assert teleported["source"] == unknown["source"] and teleported["message"]
    assert teleported["time"].endswith("Z")
    assert by_reason["malformed_json"]["type"] is None
    [member] = body["workers"]
    assert member["partitions"] == list(range(PARTITIONS))
    assert isinstance(member["lag"], int) and member["lag"] >= 0
    assert member["events_per_second"] >= 0 and member["member_id"] and member["client_id"]
    # the over-limit tenant's row counts its open violation, and it now leads at 120 %
    first = dep.admin("/api/v1/tenants?page_size=1")[1]["tenants"][0]
    assert first["tenant_id"] == "db" and first["open_violations"] >= 1, first
    assert first["utilization"] == 120.0


def test_cors_on_both_ports(dep: Deployment) -> None:
    preflight = {
        "Origin": DASH,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    for base, path in [
        (dep.worker.url, "/api/v1/quotas/utilization?entity_id=da"),
        (dep.projections, "/api/v1/tenants"),
    ]:
        status, _, headers = call(base + path, "OPTIONS", headers=preflight)
        assert status == 204, base
        assert headers["Access-Control-Allow-Origin"] == DASH
        assert "Authorization" in headers["Access-Control-Allow-Headers"]
        assert "GET" in headers["Access-Control-Allow-Methods"]
        assert headers["Access-Control-Max-Age"]
        status, _, headers = call(
            base + path, "GET", token=dep.creds.admin_token, headers={"Origin": DASH}
        )
        assert status == 200 and headers["Access-Control-Allow-Origin"] == DASH, base
        assert "Origin" in headers["Vary"]
        assert headers.get("Access-Control-Allow-Credentials") is None
        status, _, headers = call(base + path, "GET", headers={"Origin": DASH})
        assert status == 401 and headers["Access-Control-Allow-Origin"] == DASH, base
        evil = {**preflight, "Origin": "https://evil.example.com"}
        status, _, headers = call(base + path, "OPTIONS", headers=evil)
        assert headers.get("Access-Control-Allow-Origin") is None, base
        status, _, headers = call(
            base + path, "GET", token=dep.creds.admin_token, headers={"Origin": evil["Origin"]}
        )
        assert status == 200 and headers.get("Access-Control-Allow-Origin") is None


async def _ws(url: str, protocols: tuple[str, ...]) -> tuple[int, str | None, Any]:
    """(status, selected subprotocol, first message) of a browser-like connection: no
    Authorization header, the token (if any) among the offered subprotocols."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, protocols=protocols, headers={"Origin": DASH}) as ws:
                return 101, ws.protocol, None
        except aiohttp.WSServerHandshakeError as err:
            return err.status, None, None


async def _ws_messages(url: str, protocols: tuple[str, ...], dep: Deployment) -> list[Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, protocols=protocols) as ws,
    ):
        assert ws.protocol == "novaquota"
        await asyncio.to_thread(
            dep.stack.produce, "resource-events", [vm_created("dd", "dd-vm", cpu=4)]
        )
        got: list[Any] = []
        while not any(m["type"] == "usage_updated" for m in got):
            msg = await asyncio.wait_for(ws.receive(), 60)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            got.append(json.loads(msg.data))
        return got


def test_live_websocket_token_as_subprotocol(dep: Deployment) -> None:
    token = dep.creds.token("dd-viewer", "viewer", "dd")
    base = dep.worker.url.replace("http", "ws") + "/api/v1/quotas/live?entity_id="
    own, other = base + "dd", base + "da"
    offer = ("novaquota", f"bearer.{token}")
    dep.stack.wait_for(lambda: asyncio.run(_ws(own, offer))[0] == 101, timeout=30)
    status, protocol, _ = asyncio.run(_ws(own, offer))
    assert (status, protocol) == (101, "novaquota")  # never the token
    assert asyncio.run(_ws(own, ("novaquota",)))[0] == 401
    assert asyncio.run(_ws(own, ()))[0] == 401
    assert asyncio.run(_ws(other, offer))[0] == 404
    # the token offered without novaquota is not taken (and not logged by the handshake)
    assert asyncio.run(_ws(own, (f"bearer.{token}",)))[0] == 401
    messages = asyncio.run(_ws_messages(own, offer, dep))
    used = [m["data"] for m in messages if m["type"] == "usage_updated"]
    assert any(d["tenant_id"] == "dd" and d["resource_type"] == "cpu" for d in used), used
    secret = token.split("_", 2)[2]  # nq_<hex id>_<secret>: the secret may hold "_"
    assert secret not in dep.worker.log_path.read_text(errors="replace")
