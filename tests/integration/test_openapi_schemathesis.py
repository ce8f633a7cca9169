"""Both servers against their OpenAPI document (schemathesis): a real enforcement worker and a real
projection worker on the broker, every documented operation of each called with generated
requests, and each answer checked: no 5xx, and the body matches the documented schema of its
status. Failures are collected per operation and reported together, not shrunk."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.integration.conftest import Stack
from tests.support.events import command, vm_created
from tests.support.worker import ProjectionProcess, WorkerProcess

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 60
CHECKS = [not_a_server_error, response_schema_conformance]


@dataclass
class Servers:
    enforcement: str
    projections: str
    headers: dict[str, str] = field(default_factory=dict)
    """Sent with every request: where a bearer token goes once the API requires one."""


@dataclass
class Outcome:
    cases: int = 0
    statuses: dict[tuple[str, int], int] = field(default_factory=dict)
    """(operation, status) -> how many answers: shows what the cases reached."""
    failures: dict[str, set[str]] = field(default_factory=dict)

    def record(self, label: str, failure: Failure) -> None:
        self.failures.setdefault(label, set()).add(f"{failure.title}: {failure.message[:300]}")


def _seed(stack: Stack) -> None:
    """A tenant with a quota and usage, so the views answer with rows, not only empty lists."""
    quota = {"level": "tenant", "entity_id": "t1", "resource_type": "cpu", "limit": 8}
    stack.produce("quota-commands", [command("quota.set", quota, t=0)])
    stack.produce("resource-events", [vm_created("t1", "v1", cpu=2, t=60)])


@pytest.fixture
def servers(stack_factory: Any, tmp_path: Path) -> Iterator[Servers]:
    stack: Stack = stack_factory(2)
    _seed(stack)
    enforcement: WorkerProcess = stack.start_worker()
    projections = ProjectionProcess(
        bootstrap=stack.bootstrap,
        topic_prefix=stack.prefix,
        data_dir=tmp_path,
        credentials=enforcement.credentials,
        partitions=2,
    ).start()
    try:
        stack.wait_for(projections.ready, timeout=90)
        bearer = {"authorization": f"Bearer {enforcement.credentials.admin_token}"}
        yield Servers(enforcement.url, projections.url, bearer)
    finally:
        projections.stop()


def _get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:
        return 0, None


def _unwaited(op: dict[str, Any]) -> dict[str, Any]:
    """Without ``?wait=``: a generated ``wait=30s`` on a command nobody applies would hold each
    case 30 s. Its parsing is tested in test_manage."""
    params = [p for p in op.get("parameters", []) if p["name"] != "wait"]
    return (
        {**op, "parameters": params}
        if params
        else {k: v for k, v in op.items() if k != "parameters"}
    )


def _operations_of(doc: dict[str, Any], server: str) -> dict[str, Any]:
    """The document with only the operations ``server`` answers."""
    paths: dict[str, Any] = {}
    for path, ops in doc["paths"].items():
        mine = {m: _unwaited(op) for m, op in ops.items() if server in op["x-novaquota-server"]}
        if mine:
            paths[path] = mine
    return {**doc, "paths": paths}


def _exercise(
    doc: dict[str, Any],
    base_url: str,
    headers: dict[str, str],
    examples: int = EXAMPLES_PER_OPERATION,
) -> Outcome:
    outcome = Outcome()
    schema = schemathesis.openapi.from_dict(doc)
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            outcome.cases += 1
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            key = (case.operation.label, response.status_code)
            outcome.statuses[key] = outcome.statuses.get(key, 0) + 1
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except FailureGroup as group:
                for failure in group.exceptions:
                    outcome.record(case.operation.label, failure)
            except Failure as failure:
                outcome.record(case.operation.label, failure)

        run()
    return outcome


def test_errors_have_one_shape_on_both_servers(servers: Servers) -> None:
    """The routers' own 404 and 405, and a time that used to overflow (a 500), on real workers."""
    for base in (servers.enforcement, servers.projections):
        assert _get(base + "/no/such/path", headers=servers.headers)[0] == 404
        status, body = _get(base + "/healthz", method="PATCH")
        assert status == 405 and body["error"]["code"] == "method_not_allowed"
    history = "/api/v1/quotas/usage/t/history?start=inf"
    status, body = _get(servers.projections + history, headers=servers.headers)
    assert status == 400 and body["error"]["code"] == "invalid_time"
    status, body = _get(servers.enforcement + "/no/such/path", headers=servers.headers)
    assert body == {"error": {"code": "not_found", "message": "Not Found"}}


def test_both_servers_conform_to_the_document(servers: Servers) -> None:
    status, doc = _get(servers.enforcement + "/api/v1/openapi.json")
    assert status == 200
    assert _get(servers.projections + "/api/v1/openapi.json") == (200, doc)
    report = []
    total = 0
    for server, url in (("enforcement", servers.enforcement), ("projections", servers.projections)):
        outcome = _exercise(_operations_of(doc, server), url, servers.headers)
        total += outcome.cases
        report.append(f"{server}: {outcome.cases} cases")
        print(
            "\n".join(f"    {op} -> {st}: {n}" for (op, st), n in sorted(outcome.statuses.items()))
        )
        for label, problems in sorted(outcome.failures.items()):
            report.extend(f"  {label}: {p}" for p in sorted(problems))
    print("\n".join(report))
    assert total > 0
    assert not [line for line in report if line.startswith("  ")], "\n".join(report)


def test_without_a_token_every_protected_operation_answers_401(servers: Servers) -> None:
    """The same document, no credentials: 401 (documented, with the error shape) on every
    operation that has a security requirement, and an answer on the open ones."""
    status, doc = _get(servers.enforcement + "/api/v1/openapi.json")
    assert status == 200
    protected = {
        f"{method.upper()} {path}"
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if op.get("security") != []
    }
    total = 0
    for server, url in (("enforcement", servers.enforcement), ("projections", servers.projections)):
        outcome = _exercise(_operations_of(doc, server), url, {}, examples=5)
        total += outcome.cases
        assert not outcome.failures, outcome.failures
        for (label, code), _n in outcome.statuses.items():
            assert (code == 401) == (label in protected), (server, label, code)
    print(f"without a token: {total} cases")
    assert total > 0
