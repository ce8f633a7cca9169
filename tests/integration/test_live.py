"""The live WebSocket against real workers and the real broker (contract section 6)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from novaquota.streams.agents import home_partition
from tests.integration.conftest import Stack
from tests.support.events import command, vm_created, vm_deleted

pytestmark = pytest.mark.integration

WAIT = 30.0
"""A generous wait for what should arrive within about a second."""


def quota(tenant: str, resource: str, limit: float) -> dict[str, Any]:
    data = {"level": "tenant", "entity_id": tenant, "tenant_id": tenant}
    return command("quota.set", {**data, "resource_type": resource, "limit": limit})


class Client:
    """A subscriber that collects every message until closed."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"authorization": f"Bearer {token}"}
        self.messages: list[dict[str, Any]] = []
        self.closed: int | None = None

    async def run(self, ready: asyncio.Event) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(self.url, headers=self.headers) as ws,
        ):
            ready.set()
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.messages.append(json.loads(msg.data))
            self.closed = ws.close_code

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m["type"] == type_]


async def subscribe(url: str, token: str) -> tuple[Client, asyncio.Task[None]]:
    client = Client(url, token)
    ready = asyncio.Event()
    task = asyncio.create_task(client.run(ready))
    await asyncio.wait_for(ready.wait(), WAIT)
    return client, task


async def until(predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"not seen within {timeout}s")


async def produce(stack: Stack, name: str, events: list[dict[str, Any]]) -> None:
    await asyncio.to_thread(stack.produce, name, events)


def ws_url(stack: Stack, query: str, worker: int = 0) -> str:
    return stack.workers[worker].url.replace("http", "ws") + "/api/v1/quotas/live?" + query


def http_status(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=5
        ) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def usage(client: Client, level: str, entity: str, resource: str) -> list[Any]:
    return [
        d["used"]
        for d in client.of("usage_updated")
        if (d["level"], d["entity_id"], d["resource_type"]) == (level, entity, resource)
    ]


def test_usage_violations_filters_and_bad_parameters(stack: Stack) -> None:
    base = stack.workers[0].url + "/api/v1/quotas/live"
    token = stack.workers[0].credentials.admin_token
    for query, code in [
        ("", "missing_entity_id"),
        ("entity_id=t1&level=galaxy", "invalid_level"),
        ("entity_id=t1&resource_type=unicorns", "invalid_resource_type"),
        ("level=user&entity_id=u1", "missing_tenant_id"),
        ("entity_id=t1", "websocket_required"),  # a plain GET, no upgrade
    ]:
        status, body = http_status(f"{base}?{query}", token)
        assert (status, body["error"]["code"]) == (400, code), query
    # without a token, or another tenant's: refused before the upgrade
    assert http_status(f"{base}?entity_id=t1")[0] == 401
    other = stack.workers[0].credentials.token("lt2-viewer", "viewer", "lt2")
    stack.wait_for(lambda: http_status(f"{base}?entity_id=lt2", other)[0] == 400)
    status, body = http_status(f"{base}?entity_id=lt1", other)
    assert (status, body["error"]["code"]) == (404, "not_found")

    stack.produce("quota-commands", [quota("lt1", "cpu", 4)])
    stack.wait_for(lambda: stack.get("/api/v1/quotas?entity_id=lt1")[1]["total"] == 1)

    async def scenario() -> None:
        every, every_task = await subscribe(ws_url(stack, "entity_id=lt1"), token)
        narrow, narrow_task = await subscribe(
            ws_url(stack, "tenant_id=lt1&level=user&entity_id=u1&resource_type=memory"), token
        )
        await produce(
            stack,
            "resource-events",
            [
                vm_created("lt1", "vm-1", cpu=2, memory=1024, user_id="u1"),
                vm_created("lt1", "vm-2", cpu=1, memory=512, user_id="u2"),
            ],
        )
        await until(lambda: 3 in usage(every, "tenant", "lt1", "cpu"))
        await until(lambda: 1024 in usage(narrow, "user", "u1", "memory"))

        await produce(stack, "resource-events", [vm_created("lt1", "vm-3", cpu=4, user_id="u2")])
        opened = await until(lambda: every.of("quota_exceeded"))
        assert opened[0]["kind"] == "over_limit" and opened[0]["resource_type"] == "cpu"
        await produce(stack, "resource-events", [vm_deleted("lt1", "vm-3", user_id="u2")])
        resolved = await until(lambda: every.of("violation_resolved"))
        assert resolved[0]["violation_id"] == opened[0]["violation_id"]
        # 7 cores may have been coalesced away (created and deleted within one second); the
        # last figure sent is the one in force
        await until(lambda: usage(every, "tenant", "lt1", "cpu")[-1] == 3)

        tenant_cpu = [d for d in every.of("usage_updated") if d["level"] == "tenant"]
        assert tenant_cpu and all(
            d["limit"] == 4 for d in tenant_cpu if d["resource_type"] == "cpu"
        )
        assert all(m["type"] == "usage_updated" for m in narrow.messages)
        assert {
            (d["level"], d["entity_id"], d["resource_type"]) for d in narrow.of("usage_updated")
        } == {("user", "u1", "memory")}
        for task in (every_task, narrow_task):
            task.cancel()

    asyncio.run(scenario())


def of_tenants(client: Client, type_: str, n: int) -> list[dict[str, Any]] | None:
    """The messages of a type once they come from ``n`` tenants."""
    got = client.of(type_)
    return got if len({d["tenant_id"] for d in got}) >= n else None


def test_an_admin_follows_the_violations_and_alerts_of_every_tenant(stack: Stack) -> None:
    """scope=all: one socket for every tenant's violations and alerts (admin only), never
    usage; ``types`` narrows it, and a tenant's subscription too."""
    base = stack.workers[0].url + "/api/v1/quotas/live"
    admin = stack.workers[0].credentials.admin_token
    viewer = stack.workers[0].credentials.token("all-viewer", "viewer", "ta")
    stack.wait_for(lambda: http_status(f"{base}?entity_id=ta", viewer)[0] == 400)  # token read
    status, body = http_status(f"{base}?scope=all", viewer)  # a tenant's token: admin-only
    assert (status, body["error"]["code"]) == (404, "not_found")
    for query, code in [
        ("scope=all&types=usage_updated", "invalid_types"),
        ("scope=all&types=alert,usage_updated", "invalid_types"),
        ("scope=all&types=unicorns", "invalid_types"),
        ("scope=all&entity_id=ta", "invalid_scope"),
        ("scope=galaxy", "invalid_scope"),
        ("entity_id=ta&types=lagging", "invalid_types"),
        ("scope=all", "websocket_required"),  # a plain GET, no upgrade: the admin may
    ]:
        status, body = http_status(f"{base}?{query}", admin)
        assert (status, body["error"]["code"]) == (400, code), query

    tenants = ("ta", "tb")
    stack.produce("quota-commands", [quota(t, "cpu", 1) for t in tenants])
    stack.wait_for(
        lambda: all(stack.get(f"/api/v1/quotas?entity_id={t}")[1]["total"] == 1 for t in tenants)
    )

    async def scenario() -> None:
        every, every_task = await subscribe(ws_url(stack, "scope=all"), admin)
        resolved, resolved_task = await subscribe(
            ws_url(stack, "scope=all&types=violation_resolved"), admin
        )
        one, one_task = await subscribe(ws_url(stack, "entity_id=tb&types=quota_exceeded"), admin)
        await produce(stack, "resource-events", [vm_created(t, f"{t}-vm", cpu=2) for t in tenants])
        opened = await until(lambda: of_tenants(every, "quota_exceeded", 2))
        assert {(d["tenant_id"], d["kind"], d["resource_type"]) for d in opened} == {
            (t, "over_limit", "cpu") for t in tenants
        }
        alerts = await until(lambda: of_tenants(every, "alert", 2))
        assert all(d["kind"] == "threshold" for d in alerts)
        await until(lambda: one.of("quota_exceeded"))

        await produce(stack, "resource-events", [vm_deleted(t, f"{t}-vm") for t in tenants])
        closed = await until(lambda: of_tenants(resolved, "violation_resolved", 2))
        assert {d["violation_id"] for d in closed} == {d["violation_id"] for d in opened}
        await until(lambda: len(every.of("violation_resolved")) == 2)
        # the usage went up and down twice meanwhile: none of it reached an all-tenants socket
        assert {m["type"] for m in every.messages} == {
            "quota_exceeded", "alert", "violation_resolved"
        }  # fmt: skip
        assert {m["type"] for m in resolved.messages} == {"violation_resolved"}
        assert [(m["type"], m["data"]["tenant_id"]) for m in one.messages] == [
            ("quota_exceeded", "tb")
        ]
        for task in (every_task, resolved_task, one_task):
            task.cancel()

    asyncio.run(scenario())


def test_a_tenant_owned_by_the_other_worker(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    stack.start_worker()
    stack.wait_split()
    theirs = set(stack.owned(1))
    tenant = next(t for t in (f"far{i}" for i in range(100)) if home_partition(t, 4) in theirs)
    stack.produce("quota-commands", [quota(tenant, "instances", 1)])
    stack.wait_for(lambda: stack.get(f"/api/v1/quotas?entity_id={tenant}")[1]["total"] == 1)

    async def scenario() -> None:
        client, task = await subscribe(
            ws_url(stack, f"entity_id={tenant}", worker=0), stack.workers[0].credentials.admin_token
        )
        await produce(
            stack,
            "resource-events",
            [vm_created(tenant, "a", cpu=1), vm_created(tenant, "b", cpu=1)],
        )
        await until(lambda: 2 in usage(client, "tenant", tenant, "instances"))
        exceeded = await until(lambda: client.of("quota_exceeded"))
        assert exceeded[0]["tenant_id"] == tenant
        task.cancel()

    asyncio.run(scenario())


class SlowReader(threading.Thread):
    """A WebSocket client on a raw socket with a small receive buffer that reads nothing
    until told to, then everything until the server closes."""

    def __init__(self, host: str, port: int, path: str, token: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((host, port))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Authorization: Bearer {token}\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.go = threading.Event()
        self.data = b""

    def run(self) -> None:
        self.go.wait()
        self.sock.settimeout(WAIT)
        try:
            while chunk := self.sock.recv(65536):
                self.data += chunk
        except OSError:
            pass

    def frames(self) -> list[tuple[int, bytes]]:
        """(opcode, payload) of every complete server frame (unmasked)."""
        out, i, d = [], 0, self.data
        while i + 2 <= len(d):
            opcode, n, i = d[i] & 0x0F, d[i + 1] & 0x7F, i + 2
            if n == 126:
                n, i = int.from_bytes(d[i : i + 2], "big"), i + 2
            elif n == 127:
                n, i = int.from_bytes(d[i : i + 8], "big"), i + 8
            if i + n > len(d):
                break
            out.append((opcode, d[i : i + n]))
            i += n
        return out


def test_a_slow_client_is_told_it_lags_and_closed_while_a_fast_one_goes_on(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory(4)
    stack.start_worker(NOVAQUOTA_LIVE_CLIENT_QUEUE="60", NOVAQUOTA_LIVE_SOCKET_BUFFER_KB="4")
    worker = stack.workers[0]
    path = "/api/v1/quotas/live?entity_id=busy"
    slow = SlowReader("127.0.0.1", worker.port, path, worker.credentials.admin_token)
    slow.start()

    def lagging_count() -> float:
        with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("quota_live_lagging_total"):
                    return float(line.split()[-1])
        return 0.0

    async def scenario() -> Client:
        fast, task = await subscribe(
            ws_url(stack, "entity_id=busy"), worker.credentials.admin_token
        )
        # four new users (three rows each: cpu, memory, instances) every half second: a
        # second's snapshot stays well inside the fast client's queue of 60, while the slow
        # client's distinct entities pile up
        for round_ in range(80):
            events = [
                vm_created("busy", f"vm-{round_}-{i}", cpu=1, user_id=f"u{round_}-{i}")
                for i in range(4)
            ]
            await produce(stack, "resource-events", events)
            if lagging_count() >= 1:
                break
            await asyncio.sleep(0.5)
        await until(lambda: lagging_count() >= 1)
        slow.go.set()  # now read what was sent: the notice and the close come after it
        await produce(stack, "resource-events", [vm_created("busy", "after", cpu=1)])
        await until(lambda: usage(fast, "user", "u0-0", "cpu"))
        before = len(fast.messages)
        await produce(stack, "resource-events", [vm_created("busy", "later", cpu=1, user_id="z")])
        await until(lambda: usage(fast, "user", "z", "cpu"))
        assert len(fast.messages) > before and fast.closed is None
        task.cancel()
        return fast

    asyncio.run(scenario())
    slow.join(WAIT)
    frames = slow.frames()
    texts = [json.loads(p) for op, p in frames if op == 0x1]
    assert texts and texts[-1]["type"] == "lagging" and texts[-1]["data"]["missed"] > 0
    close = [p for op, p in frames if op == 0x8]
    assert close and int.from_bytes(close[0][:2], "big") == 1013
