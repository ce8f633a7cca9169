"""What-if replay against a real worker and broker: a workload with known violations and
recorded admission checks, replayed as it happened and with proposed limits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from novaquota.projections import replay as replay_mod
from novaquota.projections.cost import load_catalogue
from novaquota.projections.replay import iso
from novaquota.projections.whatif import build_report, parse_proposal, what_if
from novaquota.schemas.common import datetime_to_us
from tests.integration.conftest import Stack
from tests.integration.test_replay import at, max_times, quota, wait_processed
from tests.support.events import vm_created, vm_deleted

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAISE = """
description: room to grow
changes:
  - {type: quota.set, level: tenant, entity_id: acme, resource_type: cpu, limit: 16}
  - {type: quota.set, level: tenant, entity_id: globex, resource_type: cpu, limit: 8}
"""
LOWER = {
    "changes": [
        {"type": "quota.set", "level": "tenant", "entity_id": "acme",
         "resource_type": "cpu", "limit": 2},
        {"type": "quota.set", "level": "tenant", "entity_id": "acme",
         "resource_type": "memory", "limit": 1024},
    ]
}  # fmt: skip


def post_check(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    w = stack.workers[0]
    status, answer = w.request(
        "POST",
        "/api/v1/quotas/check",
        json.dumps(body).encode(),
        token=w.credentials.admin_token,
        timeout=30,
    )
    assert status == 200, answer
    result: dict[str, Any] = answer
    return result


def run_cli(stack: Stack, argv: list[str]) -> None:
    assert replay_mod.main(argv, stack.settings) == 0


def test_what_if_raise_and_lower_against_the_log(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stack_factory(2)
    stack.start_worker()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)

    # quotas first, then a workload with past event times: acme goes over cpu 4 from 60 s to
    # 180 s; globex goes over cpu 2 at 100 s and stays over
    commands = [quota("acme", "cpu", 4, base, 0), quota("globex", "cpu", 2, base, 0)]
    stack.produce("quota-commands", commands)
    wait_processed(stack, max_times(commands), {"acme": 1, "globex": 1})
    events = [
        vm_created("acme", "a1", cpu=3, memory=2048, t=at(base, 10)),
        vm_created("acme", "a2", cpu=3, memory=2048, t=at(base, 60)),
        vm_deleted("acme", "a2", t=at(base, 180)),
        vm_created("globex", "g1", cpu=1, memory=512, t=at(base, 10)),
        vm_created("globex", "g2", cpu=2, memory=512, t=at(base, 100)),
    ]
    stack.produce("resource-events", events)
    wait_processed(stack, max_times(commands + events), {"acme": 1, "globex": 1})

    # recorded admission checks (reserve: they go through the admission topic), now
    granted = post_check(
        stack, {"tenant_id": "acme", "resources": {"cpu": 1}, "reserve": True, "ttl_seconds": 900}
    )
    refused = post_check(stack, {"tenant_id": "acme", "resources": {"cpu": 2}, "reserve": True})
    g_refused = post_check(stack, {"tenant_id": "globex", "resources": {"cpu": 1}, "reserve": True})
    assert granted["allowed"] and not refused["allowed"] and not g_refused["allowed"]
    time.sleep(1.1)  # the cut below is after every record so far (record time, ms)
    as_of = iso(int(time.time() * 1000) * 1000)
    start = iso(datetime_to_us(base) - 60_000_000)
    assert as_of is not None and start is not None

    raise_file = tmp_path / "raise.yaml"
    raise_file.write_text(RAISE)
    lower_file = tmp_path / "lower.json"
    lower_file.write_text(json.dumps(LOWER))
    common = ["--from", start, "--until", as_of, "--as-of", as_of]

    # --- a raise removes the episodes and the denials
    out = tmp_path / "raise-report.json"
    run_cli(stack, ["--what-if", str(raise_file), *common, "--out", str(out)])
    doc = orjson.loads(out.read_bytes())
    sa, sp = doc["summary"]["actual"], doc["summary"]["proposed"]
    assert sa["episodes_opened"] == 2 and sa["opened_by_kind"]["over_limit"] == 2
    assert sp["episodes_opened"] == 0 and doc["violations"]["proposed"] == []
    assert {(v["tenant_id"], v["resource_type"]) for v in doc["violations"]["actual"]} == {
        ("acme", "cpu"),
        ("globex", "cpu"),
    }
    [acme_ep] = [v for v in doc["violations"]["actual"] if v["tenant_id"] == "acme"]
    assert acme_ep["seconds_in_period"] == "120"  # 60 s to 180 s
    # the actual run re-derives the decisions the worker gave; the proposed one allows all
    assert (sa["checks"], sa["checks_denied"]) == (3, 2)
    assert (sp["checks"], sp["checks_denied"]) == (3, 0)
    assert all(c["changed"] and c["proposed"]["allowed"] for c in doc["denied_checks"])
    assert {c["tenant_id"] for c in doc["denied_checks"]} == {"acme", "globex"}
    assert doc["inputs"]["admission_records"] == 3
    assert doc["proposal"]["description"] == "room to grow"

    # --- a lower limit adds episodes and denies the check that was granted
    out = tmp_path / "lower-report.json"
    run_cli(stack, ["--what-if", str(lower_file), *common, "--tenant", "acme", "--out", str(out)])
    doc = orjson.loads(out.read_bytes())
    sa, sp = doc["summary"]["actual"], doc["summary"]["proposed"]
    assert sa["episodes_opened"] == 1 and sp["episodes_opened"] == 2
    assert {v["resource_type"] for v in doc["violations"]["proposed"]} == {"cpu", "memory"}
    assert Decimal(sp["seconds_in_violation"]) > Decimal(sa["seconds_in_violation"])
    assert (sa["checks"], sa["checks_denied"]) == (2, 1)
    assert (sp["checks"], sp["checks_denied"]) == (2, 2)
    [newly] = [c for c in doc["denied_checks"] if c["changed"]]
    assert newly["actual"]["allowed"] and not newly["proposed"]["allowed"]
    assert newly["resources"] == {"cpu": "1"}
    assert {t["tenant_id"] for t in doc["cost"]["tenants"]} == {"acme"}

    # --- the same log and file give the same bytes, in every format
    for fmt in ("json", "csv", "html"):
        files = [tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"]
        for f in files:
            run_cli(
                stack, ["--what-if", str(lower_file), *common, "--format", fmt, "--out", str(f)]
            )
        assert files[0].read_bytes() == files[1].read_bytes()
        assert len(files[0].read_bytes()) > 1000

    # --- --from after some events: what happened before it is the same in both runs
    later = datetime_to_us(base) + 120_000_000  # after a2 went over, before its delete
    proposal = parse_proposal(json.dumps(LOWER).encode(), "lower.json")
    result = asyncio.run(
        what_if(
            stack.settings,
            proposal,
            later,
            datetime_to_us(base) + 600_000_000,
            tenant="acme",
            as_of_us=replay_mod.parse_time(as_of),
        )
    )

    def before(outputs: list[Any]) -> list[tuple[str, Any]]:
        return [
            (o.event["type"], o.event["data"])
            for o in outputs
            if replay_mod.parse_time(o.event["time"]) < later
        ]

    assert before(result.actual.outputs) == before(result.proposed.outputs)
    assert any(t == "quota.violation" for t, _ in before(result.actual.outputs))
    doc = orjson.loads(build_report(result, load_catalogue()).to_json())
    [a_cpu] = [v for v in doc["violations"]["actual"] if v["resource_type"] == "cpu"]
    [p_cpu] = [v for v in doc["violations"]["proposed"] if v["resource_type"] == "cpu"]
    # the episode opened at 60 s is the same episode in both runs (deterministic id); in the
    # proposed run it stays open: 3 cores are still over the proposed 2 after the delete
    assert a_cpu["violation_id"] == p_cpu["violation_id"]
    assert a_cpu["opened_at"] == p_cpu["opened_at"] == iso(datetime_to_us(base) + 60_000_000)
    assert a_cpu["resolved_at"] == iso(datetime_to_us(base) + 180_000_000)
    assert p_cpu["resolved_at"] is None
    [applied_cpu, _mem] = doc["applied"]
    assert applied_cpu["time"] == iso(later)


def test_what_if_with_the_builtin_autogrow_policy(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    """The autogrow policy (examples/policies/autogrow.yaml: at or above 90 % for an hour, grow
    by half) run inside the proposed replay of two hours of a real worker's log."""
    stack = stack_factory(2)
    stack.start_worker()
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    commands = [quota("acme", "cpu", 8, base, 0)]
    stack.produce("quota-commands", commands)
    wait_processed(stack, max_times(commands), {"acme": 1})
    # 8 of 8 cores from 60 s; 2 more at 4000 s: over the limit from then on
    events = [
        vm_created("acme", "a1", cpu=8, memory=1024, t=at(base, 60)),
        vm_created("acme", "a2", cpu=2, memory=1024, t=at(base, 4000)),
    ]
    stack.produce("resource-events", events)
    wait_processed(stack, max_times(commands + events), {"acme": 1})
    refused = post_check(stack, {"tenant_id": "acme", "resources": {"cpu": 2}, "reserve": True})
    assert not refused["allowed"]
    time.sleep(1.1)
    as_of = iso(int(time.time() * 1000) * 1000)
    start = iso(datetime_to_us(base) - 60_000_000)
    assert as_of is not None and start is not None

    examples = Path(__file__).resolve().parents[2] / "examples" / "policies"
    (tmp_path / "autogrow.yaml").write_bytes((examples / "autogrow.yaml").read_bytes())
    what_if_file = tmp_path / "grow.yaml"
    what_if_file.write_text("description: the built-in autogrow policy\npolicies: autogrow.yaml\n")
    out = tmp_path / "grow-report.json"
    argv = ["--what-if", str(what_if_file), "--from", start, "--until", as_of, "--as-of", as_of]
    run_cli(stack, [*argv, "--out", str(out)])
    doc = orjson.loads(out.read_bytes())

    [grow] = doc["policy_actions"]["proposed"]
    assert (grow["kind"], grow["actor"], grow["outcome"]) == (
        "adjust_limit",
        "policy/autogrow@1",
        "applied",
    )
    assert grow["time"] == iso(datetime_to_us(base) + (60 + 3600) * 1_000_000)  # an hour at 100 %
    assert (grow["previous_limit"], grow["limit"]) == ("8", "12")
    assert doc["policy_actions"]["actual"] == []
    sa, sp = doc["summary"]["actual"], doc["summary"]["proposed"]
    # actual: 10 of 8 cores from 4000 s; proposed: the limit was 12 by then
    assert sa["episodes_opened"] == 1 and sp["episodes_opened"] == 0
    # the refused check (10 + 2 of 8) fits the grown limit (10 + 2 of 12)
    [c] = doc["denied_checks"]
    assert not c["actual"]["allowed"] and c["proposed"]["allowed"] and c["changed"]
    # byte-identical again
    html = [tmp_path / "g1.html", tmp_path / "g2.html"]
    for f in html:
        run_cli(stack, [*argv, "--format", "html", "--out", str(f)])
    assert html[0].read_bytes() == html[1].read_bytes()
    assert b"policy/autogrow@1" in html[0].read_bytes()
