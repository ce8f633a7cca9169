"""Authentication and authorization through real workers (contract section 6).

One deployment for the module: two enforcement workers bound to 0.0.0.0 that peers reach by
their advertised URLs, and a projection worker, sharing one token file. The route table below
must name every route both servers register (read from the apps at run time), so a new route
fails here until its tenant rule is written down.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from novaquota.ops.topics import create_topics
from novaquota.projections.config import ProjectionSettings
from novaquota.projections.cost import load_catalogue
from novaquota.projections.http import build_app
from novaquota.projections.metrics import ProjectionMetrics
from novaquota.projections.store import MemoryStore
from novaquota.projections.worker import ProjectionWorker
from novaquota.streams.agents import home_partition
from novaquota.streams.auth import OPEN_PATHS, Access, anonymous
from novaquota.streams.settings import Settings
from novaquota.streams.tokens import revoke_token
from tests.integration.conftest import Stack
from tests.support.events import command
from tests.support.http import call
from tests.support.worker import Credentials, ProjectionProcess, WorkerProcess

pytestmark = pytest.mark.integration

A, B = "tenant-a", "tenant-b"
PARTITIONS = 4


@dataclass(frozen=True)
class Case:
    """How to ask a route about tenant B; ``scope``: ``tenant`` (B's data: 404 for A's
    token), ``internal`` (admins and peers only: 404), ``global`` (no tenant's data: 200),
    ``own`` (a list: 200 for A's token, with nothing of B in it)."""

    path: str
    body: Any = None
    scope: str = "tenant"


CHECK_B = {"tenant_id": B, "resources": {"cpu": 1}}
ENFORCEMENT: dict[tuple[str, str], Case] = {
    ("GET", "/api/v1/quotas/utilization"): Case(f"/api/v1/quotas/utilization?entity_id={B}"),
    ("GET", "/api/v1/quotas"): Case(f"/api/v1/quotas?tenant_id={B}"),
    ("GET", "/api/v1/quotas/check"): Case(
        f"/api/v1/quotas/check?entity_id={B}&resource_type=cpu&amount=1"
    ),
    ("POST", "/api/v1/quotas/check"): Case("/api/v1/quotas/check", CHECK_B),
    ("POST", "/api/v1/quotas/check:batch"): Case(
        "/api/v1/quotas/check:batch", {"checks": [CHECK_B]}
    ),
    ("GET", "/api/v1/quotas/reservations"): Case(f"/api/v1/quotas/reservations?tenant_id={B}"),
    ("POST", "/api/v1/quotas/reservations"): Case(
        "/api/v1/quotas/reservations",
        {
            "tenant_id": B,
            "resource_type": "cpu",
            "amount": 1,
            "start": "2026-12-01T00:00:00Z",
            "end": "2026-12-02T00:00:00Z",
        },
    ),
    ("DELETE", "/api/v1/quotas/reservations/{reservation_id}"): Case(
        f"/api/v1/quotas/reservations/r1?tenant_id={B}"
    ),
    ("POST", "/api/v1/quotas"): Case(
        "/api/v1/quotas", {"tenant_id": B, "resource_type": "cpu", "limit": 1}
    ),
    ("PUT", "/api/v1/quotas/{level}/{entity_id}/{resource_type}"): Case(
        f"/api/v1/quotas/tenant/{B}/cpu", {"limit": 1}
    ),
    ("DELETE", "/api/v1/quotas/{level}/{entity_id}/{resource_type}"): Case(
        f"/api/v1/quotas/tenant/{B}/cpu"
    ),
    ("GET", "/api/v1/quotas/templates"): Case("/api/v1/quotas/templates", scope="global"),
    ("POST", "/api/v1/quotas/templates"): Case(
        "/api/v1/quotas/templates",
        {"name": "b-tier", "quotas": [{"resource_type": "cpu", "limit": 1}]},
        scope="internal",
    ),
    ("POST", "/api/v1/quotas/templates/{name}/apply"): Case(
        "/api/v1/quotas/templates/free/apply", {"tenant_id": B}
    ),
    ("POST", "/quotas/templates/{name}/apply"): Case(
        "/quotas/templates/free/apply", {"tenant_id": B}
    ),
    ("GET", "/api/v1/commands/{command_id}"): Case(f"/api/v1/commands/c1?tenant_id={B}"),
    ("GET", "/api/v1/quotas/live"): Case(f"/api/v1/quotas/live?entity_id={B}"),
    ("GET", "/api/v1/quotas/hierarchy"): Case(f"/api/v1/quotas/hierarchy?tenant_id={B}"),
    ("GET", "/api/v1/auth/whoami"): Case("/api/v1/auth/whoami", scope="global"),
    ("POST", "/api/v1/policies"): Case(
        "/api/v1/policies",
        {"name": "b-policy", "version": 1, "rules": []},
        scope="internal",
    ),
    ("DELETE", "/api/v1/policies/{name}"): Case("/api/v1/policies/b-policy", scope="internal"),
    ("GET", "/internal/usage"): Case("/internal/usage", scope="internal"),
    ("GET", "/internal/system"): Case("/internal/system", scope="internal"),
    ("GET", "/"): Case("/", scope="global"),  # Faust's index: {"status": "OK"}
}
ENFORCEMENT_VARIANTS: list[tuple[str, Case]] = [
    # every tenant's violations and alerts: admin only, like every read spanning tenants
    ("GET", Case("/api/v1/quotas/live?scope=all", scope="internal")),
    ("GET", Case(f"/api/v1/quotas/live?entity_id={B}&types=alert", scope="tenant")),
]
"""Routes of the table above asked again with other parameters that change who may call."""

UI_ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/ui/"): "/ui/",
    ("GET", "/ui/config.json"): "/ui/config.json",
    ("GET", "/ui/{path}"): "/ui/app.js",
}
"""The dashboard (projections.ui): open on the projection workers, as static files are."""

PROJECTIONS: dict[tuple[str, str], Case] = {
    ("GET", "/api/v1/quotas/usage/{entity_id}/history"): Case(f"/api/v1/quotas/usage/{B}/history"),
    ("GET", "/api/v1/quotas/analytics/{entity_id}"): Case(f"/api/v1/quotas/analytics/{B}"),
    ("GET", "/api/v1/quotas/overview"): Case(f"/api/v1/quotas/overview?entity_id={B}"),
    ("GET", "/api/v1/quotas/templates/recommendation"): Case(
        f"/api/v1/quotas/templates/recommendation?entity_id={B}"
    ),
    ("GET", "/api/v1/quotas/cost/{entity_id}"): Case(f"/api/v1/quotas/cost/{B}"),
    ("GET", "/api/v1/pricing"): Case("/api/v1/pricing", scope="global"),
    ("GET", "/api/v1/auth/whoami"): Case("/api/v1/auth/whoami", scope="global"),
    ("GET", "/api/v1/projections/status"): Case("/api/v1/projections/status", scope="global"),
    ("GET", "/api/v1/tenants"): Case(f"/api/v1/tenants?q={B}", scope="own"),
    ("GET", "/api/v1/operations/overview"): Case("/api/v1/operations/overview", scope="internal"),
    ("GET", "/api/v1/audit"): Case(f"/api/v1/audit?tenant_id={B}"),
    ("GET", "/api/v1/replay/report"): Case(
        f"/api/v1/replay/report?tenant_id={B}&until=2026-11-02T00:00:00Z"
    ),
}


def _routes(router: Any) -> set[tuple[str, str]]:
    out = set()
    for route in router.routes():
        if route.method in ("HEAD", "OPTIONS") or route.resource is None:
            continue
        out.add((route.method, route.resource.canonical))
    return out


def enforcement_routes(tmp: Path) -> set[tuple[str, str]]:
    from novaquota.streams.app import create_app

    qa = create_app(Settings(data_dir=tmp / "routes", tokens_file=tmp / "none.json"))
    qa.app.web.init_server()
    return _routes(qa.app.web.web_app.router)  # type: ignore[attr-defined]


def projection_routes() -> set[tuple[str, str]]:
    worker = ProjectionWorker(
        Settings(topic_prefix="routes."),
        ProjectionSettings(emit=False),
        store=MemoryStore(),
        metrics=ProjectionMetrics(),
        catalogue=load_catalogue(data={"prices": {"cpu": 1.0}}),
    )
    return _routes(build_app(worker, Access(anonymous)).router)


# --- the deployment --------------------------------------------------------------------------


@dataclass
class Deployment:
    stack: Stack
    creds: Credentials
    projections: str
    projections_log: Path
    tenant_admin: str  # of tenant A

    @property
    def servers(self) -> list[str]:
        return [w.url for w in self.stack.workers] + [self.projections]


@pytest.fixture(scope="module")
def dep(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    tmp = tmp_path_factory.mktemp("auth")
    stack = Stack(kafka_bootstrap, prefix, PARTITIONS, tmp)
    asyncio.run(create_topics(stack.settings))
    for _ in range(2):
        w = WorkerProcess(
            bootstrap=kafka_bootstrap, topic_prefix=prefix, data_dir=tmp, partitions=PARTITIONS
        )
        # bound to every interface: only the advertised URL tells peers where it is
        w.env["NOVAQUOTA_WEB_HOST"] = "0.0.0.0"
        w.env["NOVAQUOTA_ADVERTISED_URL"] = w.url
        stack.workers.append(w)
        w.start()
    creds = stack.workers[0].credentials
    projections = ProjectionProcess(
        bootstrap=kafka_bootstrap,
        topic_prefix=prefix,
        data_dir=tmp,
        credentials=creds,
        partitions=PARTITIONS,
    ).start()
    dep = Deployment(
        stack, creds, projections.url, projections.log_path, creds.token("a", "tenant-admin", A)
    )
    try:
        stack.produce("quota-commands", [_quota(A), _quota(B)])
        stack.wait_for(lambda: _ready(dep.projections), timeout=90)
        stack.wait_for(lambda: _owners(dep) is not None, timeout=90)
        yield dep
    finally:
        projections.stop()
        stack.stop()


def _ready(url: str) -> bool:
    try:
        return call(url + "/readyz", "GET")[0] == 200
    except OSError:
        return False


def _quota(tenant: str) -> dict[str, Any]:
    data = {"level": "tenant", "entity_id": tenant, "tenant_id": tenant, "resource_type": "cpu"}
    return command("quota.set", {**data, "limit": 10})


def _owners(dep: Deployment) -> dict[int, int] | None:
    """partition -> worker index, once every partition has one owner."""
    owners: dict[int, int] = {}
    for i, w in enumerate(dep.stack.workers):
        status, body = w.get("/internal/usage")
        if status != 200 or body["rebalancing"]:
            return None
        for p in body["partitions"]:
            owners[p] = i
    return owners if len(owners) == PARTITIONS else None


# --- tests -----------------------------------------------------------------------------------


def test_the_route_table_names_every_route(tmp_path: Path) -> None:
    """A route missing here would escape the tests below: name it and its tenant rule."""
    open_routes = {("GET", p) for p in OPEN_PATHS}
    assert enforcement_routes(tmp_path) == set(ENFORCEMENT) | open_routes
    assert projection_routes() == set(PROJECTIONS) | open_routes | set(UI_ROUTES)


def _cases(dep: Deployment) -> Iterator[tuple[str, str, Case]]:
    for w in dep.stack.workers:
        for (method, _), case in ENFORCEMENT.items():
            yield w.url, method, case
        for method, case in ENFORCEMENT_VARIANTS:
            yield w.url, method, case
    for (method, _), case in PROJECTIONS.items():
        yield dep.projections, method, case


def test_without_credentials_every_route_but_probes_answers_401(dep: Deployment) -> None:
    for url, method, case in _cases(dep):
        status, body, headers = call(url + case.path, method, case.body)
        assert status == 401, (method, url + case.path, status, body)
        assert body["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"] == "Bearer"
        bad = call(url + case.path, method, case.body, token="nq_0000_not-a-token")
        assert bad[0] == 401, (method, url + case.path)
    for url in dep.servers:
        for path in sorted(OPEN_PATHS):
            assert call(url + path, "GET")[0] == 200, url + path
    for path in UI_ROUTES.values():  # the dashboard's shell: no data in it
        assert call(dep.projections + path, "GET")[0] == 200, path


def test_a_tenant_token_never_reaches_another_tenant(dep: Deployment) -> None:
    """404, not 403, on every route of both servers and from both workers (one of which
    forwards B's requests), also when the caller claims the request was forwarded."""
    forwarded = {"x-novaquota-forwarded": "1"}
    for url, method, case in _cases(dep):
        for headers in (None, forwarded):
            status, body, _ = call(
                url + case.path, method, case.body, token=dep.tenant_admin, headers=headers
            )
            where = (method, url + case.path, headers, body)
            if case.scope == "global":
                assert status == 200, where
            elif case.scope == "own":
                assert status == 200 and B not in json.dumps(body), where
            else:
                assert status == 404, where
                assert body["error"]["code"] == "not_found", where
            if case.scope == "tenant":
                assert B in body["error"]["message"], where


def test_a_tenant_token_reads_and_checks_its_own_tenant(dep: Deployment) -> None:
    for url in dep.servers:
        status, body, _ = call(url + "/api/v1/auth/whoami", "GET", token=dep.tenant_admin)
        assert (status, body["role"], body["tenant_id"], body["subject"]) == (
            200,
            "tenant-admin",
            A,
            "token:a",
        )
        assert body["actions"] == ["check", "read", "write"]
    for w in dep.stack.workers:
        status, body, _ = call(
            w.url + f"/api/v1/quotas?tenant_id={A}", "GET", token=dep.tenant_admin
        )
        assert status == 200 and body["tenant_id"] == A, body
        status, body, _ = call(
            w.url + "/api/v1/quotas/check",
            "POST",
            {"tenant_id": A, "resources": {"cpu": 1}},
            token=dep.tenant_admin,
        )
        assert status == 200 and body["allowed"] is True, body
    status, body, _ = call(
        dep.projections + f"/api/v1/quotas/overview?entity_id={A}", "GET", token=dep.tenant_admin
    )
    assert status == 200, body
    # the tenants list: A's own row for A's token, every tenant for an admin
    url = dep.projections + "/api/v1/tenants?sort=tenant_id"
    status, body, _ = call(url, "GET", token=dep.tenant_admin)
    assert status == 200 and [r["tenant_id"] for r in body["tenants"]] == [A], body
    status, body, _ = call(url, "GET", token=dep.creds.admin_token)
    assert status == 200 and [r["tenant_id"] for r in body["tenants"]] == [A, B], body


def test_a_request_to_a_worker_bound_to_any_interface_is_forwarded_to_the_owner(
    dep: Deployment,
) -> None:
    owners = _owners(dep)
    assert owners is not None
    # a tenant each worker does not own: the other one answers through the advertised URL
    for asked in (0, 1):
        tenant = next(
            f"t{i}" for i in range(1000) if owners[home_partition(f"t{i}", PARTITIONS)] != asked
        )
        url = dep.stack.workers[asked].url
        token = dep.creds.admin_token
        status, body, _ = call(url + f"/api/v1/quotas?tenant_id={tenant}", "GET", token=token)
        assert status == 200 and body["tenant_id"] == tenant, body
        check = {"tenant_id": tenant, "resources": {"cpu": 1}}
        status, body, _ = call(url + "/api/v1/quotas/check", "POST", check, token=token)
        assert status == 200 and body["allowed"] is True, body


def test_bodies_too_large_malformed_or_too_deep_get_a_4xx(dep: Deployment) -> None:
    url = dep.stack.workers[0].url + "/api/v1/quotas/check"
    token = dep.creds.admin_token
    big = json.dumps({"tenant_id": A, "resources": {"cpu": 1}, "pad": "x" * (2 << 20)})
    status, body, _ = call(url, "POST", big.encode(), token=token)
    assert status == 413 and body["error"]["code"] == "body_too_large", body
    status, body, _ = call(url, "POST", b'{"tenant_id": ', token=token)
    assert status == 400 and body["error"]["code"] == "invalid_json", body
    status, body, _ = call(url, "POST", b"[" * 100_000 + b"]" * 100_000, token=token)
    assert status == 400, body
    deep: Any = 1
    for _ in range(500):
        deep = {"x": deep}
    status, body, _ = call(url, "POST", {"tenant_id": A, "resources": deep}, token=token)
    assert status == 400, body


def test_a_revoked_token_stops_working_without_a_restart(dep: Deployment) -> None:
    token = dep.creds.token("short-lived", "viewer", A)
    url = dep.stack.workers[0].url + f"/api/v1/quotas?tenant_id={A}"
    # the workers read the changed file within a second, for a new token as for a revoked one
    dep.stack.wait_for(lambda: call(url, "GET", token=token)[0] == 200, timeout=30)
    assert revoke_token(dep.creds.tokens_file, "short-lived")
    dep.stack.wait_for(lambda: call(url, "GET", token=token)[0] == 401, timeout=30)


def test_tokens_never_appear_in_the_logs(dep: Deployment) -> None:
    wrong = dep.tenant_admin[:-4] + "XXXX"
    for url, method, case in _cases(dep):
        for token in (dep.tenant_admin, dep.creds.admin_token, wrong):
            call(url + case.path, method, case.body, token=token)
    logs = [w.log_path.read_text(errors="replace") for w in dep.stack.workers]
    logs.append(dep.projections_log.read_text(errors="replace"))
    assert all(logs)  # the workers did log something
    for token in (dep.tenant_admin, dep.creds.admin_token, wrong):
        secret = token.split("_", 2)[2]  # nq_<hex id>_<secret>: the secret may hold "_"
        assert not any(secret in text for text in logs)
    assert not any(dep.creds.internal_secret in text for text in logs)
