"""Policies against a real broker and real workers, over a simulated week.

One deployment (an enforcement worker and a policy worker, both real processes) and a workload
of past event times spread over 7 days, published at once. Each tenant exercises one rule kind
and one action kind:

==========  ======================================  =====================================
tenant      condition                               action
==========  ======================================  =====================================
grow        utilization above 90 % for 1 h          adjust_limit (built-in ``autogrow``)
idle        utilization below 10 % for 7 d          adjust_limit (built-in ``idle-shrink``)
fc          forecast time to exhaustion below 1 d   adjust_limit by a step
noisy       2 violation episodes within 1 d         suspend
paused      utilization below 50 %                  resume
tiered      all: tier in [free], utilization >80 %  switch_template
night       any: time of day 01:00-05:00, ...       alert
==========  ======================================  =====================================

The policies are loaded with ``novaquota policy load`` (policy.set on the command topic); the
enforcement worker applies the resulting commands, and its API and the audit topic show them
with ``actor: policy/<name>@<version>`` and the cause. Then the policy worker is restarted and
rebuilt from offset 0: nothing is sent twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from tests.integration.conftest import Stack
from tests.support.events import BASE_TIME, cloudevent, command, iso, vm_created
from tests.support.worker import PolicyProcess

ROOT = Path(__file__).parents[2]
H = 3600
DAY = 24 * H
WEEK_END = 7 * DAY + 4 * H


def _quota(tenant: str, resource: str, limit: float, t: float = 0, **kw: Any) -> dict[str, Any]:
    data = {"level": "tenant", "tenant_id": tenant, "resource_type": resource, "limit": limit}
    return command("quota.set", {**data, **kw}, t=t)


def _policies(tmp: Path) -> Path:
    """The two built-ins (their scope narrowed to the tenant that exercises each) and five
    policies, one per remaining rule kind, in one YAML file."""
    docs: list[dict[str, Any]] = []
    for name, tenant in (("autogrow", "grow"), ("idle-shrink", "idle")):
        p = yaml.safe_load((ROOT / "examples" / "policies" / f"{name}.yaml").read_text())
        p["scope"]["tenants"] = [tenant]
        docs.append(p)
    docs += [
        {
            "name": "forecast-step",
            "scope": {"tenants": ["fc"]},
            "rules": [
                {
                    "name": "ahead",
                    "when": {"time_to_exhaustion": {"below": "1d"}},
                    "then": [{"adjust_limit": {"step": 5, "ceiling": 40}}],
                }
            ],
        },
        {
            "name": "noisy",
            "scope": {"tenants": ["noisy"]},
            "rules": [
                {
                    "name": "repeat-offender",
                    "when": {
                        "violations": {"at_least": 2, "within": "1d", "kinds": ["over_limit"]}
                    },
                    "then": ["suspend"],
                }
            ],
        },
        {
            "name": "wake",
            "scope": {"tenants": ["paused"]},
            "rules": [{"name": "quiet", "when": {"utilization": {"below": 50}}, "then": "resume"}],
        },
        {
            "name": "upgrade",
            "scope": {"tenants": ["tiered"], "resource_types": ["cpu"]},
            "rules": [
                {
                    "name": "outgrown",
                    "when": {
                        "all": [
                            {"tier": {"in": ["free"]}},
                            {"utilization": {"above": 80, "for": "30m"}},
                        ]
                    },
                    "then": [{"switch_template": {"template": "developer"}}],
                }
            ],
        },
        {
            "name": "night-watch",
            "scope": {"tenants": ["night"]},
            "rules": [
                {
                    "name": "late",
                    "when": {
                        "all": [
                            {"utilization": {"above": 0}},
                            {
                                "any": [
                                    {"time_of_day": {"from": "01:00", "to": "05:00"}},
                                    {
                                        "time_of_day": {
                                            "from": "13:00",
                                            "to": "13:05",
                                            "weekdays": ["sun"],
                                        }
                                    },
                                ]
                            },
                        ]
                    },
                    "then": [{"alert": {"severity": "critical", "message": "busy at night"}}],
                    "cooldown": "1h",
                }
            ],
        },
    ]
    path = tmp / "policies.yaml"
    path.write_text(yaml.safe_dump(docs, sort_keys=False))
    return path


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "NOVAQUOTA_TOPIC_PREFIX": stack.prefix,
        "NOVAQUOTA_PARTITIONS": str(stack.partitions),
    }
    return subprocess.run(
        [sys.executable, "-m", "novaquota.ops.cli", "policy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _week() -> list[dict[str, Any]]:
    """The workload: past event times over a week (t in seconds from BASE_TIME)."""
    ev: list[dict[str, Any]] = [
        vm_created("grow", "g1", cpu=4, t=600),
        vm_created("grow", "g2", cpu=5.5, t=H),  # 95 % from 01:00
        vm_created("idle", "i1", cpu=1, memory=50, t=60),  # 5 % of its memory, all week
        vm_created("fc", "f1", cpu=5, t=600),
        vm_created("paused", "p1", cpu=1, t=600),
        vm_created("tiered", "t1", cpu=1.8, t=H),  # 90 % of the free tier's 2 cpu
    ]
    lb = "load_balancer.created"
    ev += [
        cloudevent(lb, {"tenant_id": "noisy", "lb_id": "lb1"}, t=H),
        cloudevent(lb, {"tenant_id": "noisy", "lb_id": "lb2"}, t=2 * H),  # over: episode 1
        cloudevent("load_balancer.deleted", {"tenant_id": "noisy", "lb_id": "lb2"}, t=3 * H),
        cloudevent(lb, {"tenant_id": "noisy", "lb_id": "lb3"}, t=4 * H),  # over: episode 2
        cloudevent("floating_ip.allocated", {"tenant_id": "night", "ip_id": "ip1"}, t=600),
    ]
    # a tenant without quotas whose events carry event time through the week
    ev += [
        vm_created("clock", f"c{i}", cpu=1, t=i * 2 * H) for i in range(1, WEEK_END // (2 * H) + 1)
    ]
    return ev


def _sent_by_policies(stack: Stack) -> list[dict[str, Any]]:
    """Every command and alert the policy worker sent."""
    return [
        e
        for topic in ("quota-commands", "quota-alerts")
        for e in stack.outputs(topic, idle=1)
        if e["source"] == "novaquota/policy"
    ]


def test_policies_act_over_a_simulated_week(stack: Stack, tmp_path: Path) -> None:
    creds = stack.workers[0].credentials
    policy_worker = PolicyProcess(
        bootstrap=stack.bootstrap,
        topic_prefix=stack.prefix,
        data_dir=tmp_path,
        credentials=creds,
        partitions=stack.partitions,
    ).start()
    try:
        _run(stack, policy_worker, tmp_path)
    finally:
        policy_worker.stop()


def _wait_policy(p: PolicyProcess, stack: Stack, pred: Callable[[Any], Any], path: str) -> Any:
    return stack.wait_for(lambda: (r := p.get(path))[0] == 200 and pred(r[1]) and r[1], timeout=90)


def _run(stack: Stack, pw: PolicyProcess, tmp: Path) -> None:
    # -- quotas first, all at the week's start ------------------------------------------------
    stack.produce(
        "quota-commands",
        [
            _quota("grow", "cpu", 10),
            _quota("idle", "memory", 1000),
            _quota("fc", "cpu", 10),
            _quota("noisy", "load_balancers", 1),
            _quota("paused", "cpu", 10, status="suspended"),
            _quota("night", "floating_ips", 5),
            command(
                "template.applied",
                {"level": "tenant", "tenant_id": "tiered", "template": "free"},
                t=0,
            ),
        ],
    )
    # -- the policy set, through the CLI: an invalid file publishes nothing ------------------
    bad = tmp / "bad.yaml"
    bad.write_text(
        "name: broken\nrules:\n- name: r\n"
        "  when: {utilization: {above: 90, for: 1x}}\n  then: suspend\n"
    )
    out = _cli(stack, "load", str(bad))
    assert out.returncode == 1
    assert (
        "rules[0].when.utilization.for (broken)" in out.stderr and "nothing published" in out.stderr
    )
    # ... and one published by another client is dead-lettered with the field named
    stack.produce(
        "quota-commands",
        [
            command(
                "policy.set", {"name": "broken", "rules": [{"name": "r", "when": {}, "then": []}]}
            )
        ],
    )
    (dead,) = stack.wait_for(lambda: stack.consume("dead-letter", idle=1))
    assert dict(dead.headers)["error.reason"] == b"invalid_field"
    assert dict(dead.headers)["error.message"].startswith(b"data.rules.0.when")
    out = _cli(stack, "load", str(_policies(tmp)), "--actor", "ops")
    assert out.returncode == 0, out.stderr
    assert "published policy.set autogrow@1" in out.stdout
    names = {"autogrow", "idle-shrink", "forecast-step", "noisy", "wake", "upgrade", "night-watch"}
    listed = _wait_policy(
        pw,
        stack,
        lambda b: {p["name"] for p in b["policies"] if p["active"]} == names,
        "/api/v1/policies",
    )
    assert {p["name"]: p["version"] for p in listed["policies"]}["autogrow"] == 1
    stack.wait_for(lambda: len(stack.get("/api/v1/quotas?entity_id=tiered")[1]["quotas"]) == 4)

    # -- the week, published at once --------------------------------------------------------
    stack.produce("resource-events", _week())
    # the projections' forecast for fc: exhaustion 12 h after the forecast was made (day 1)
    made = BASE_TIME + timedelta(days=1)
    stack.produce(
        "quota-alerts",
        [
            {
                **cloudevent(
                    "quota.alert",
                    {
                        "alert_id": "fc-forecast-1",
                        "tenant_id": "fc",
                        "level": "tenant",
                        "entity_id": "fc",
                        "resource_type": "cpu",
                        "kind": "forecast",
                        "threshold": 100,
                        "utilization": 50,
                        "severity": "warning",
                        "message": f"cpu of tenant fc is forecast to reach its limit 10 at "
                        f"{iso(made + timedelta(hours=12))} (ets)",
                        "detected_at": iso(made),
                        "cause_event_id": None,
                    },
                    t=made,
                    source="novaquota/projections",
                )
            }
        ],
    )

    # -- what the enforcement worker made of the actions --------------------------------------
    def quota(tenant: str, resource: str) -> dict[str, Any] | None:
        status, body = stack.get(f"/api/v1/quotas?entity_id={tenant}&resource_type={resource}")
        return body["quotas"][0] if status == 200 and body["quotas"] else None

    def becomes(tenant: str, resource: str, **want: Any) -> dict[str, Any]:
        return stack.wait_for(
            lambda: (
                (q := quota(tenant, resource)) and all(q[k] == v for k, v in want.items()) and q
            ),
            timeout=120,
        )

    becomes("grow", "cpu", limit=15)  # autogrow: x1.5
    becomes("idle", "memory", limit=500)  # idle-shrink: /2 (usage 50 + headroom is far below)
    becomes("fc", "cpu", limit=15)  # forecast: +5
    becomes("noisy", "load_balancers", status="suspended")
    becomes("paused", "cpu", status="active")
    becomes("tiered", "cpu", limit=8)  # the developer tier

    # -- the audit topic shows each with its actor and cause ----------------------------------
    audits = stack.wait_for(
        lambda: (
            (
                a := [
                    e["data"]
                    for e in stack.outputs("audit", idle=1)
                    if e["data"]["actor"].startswith("policy/")
                ]
            )
            and {x["actor"] for x in a}
            >= {
                "policy/autogrow@1",
                "policy/idle-shrink@1",
                "policy/forecast-step@1",
                "policy/noisy@1",
                "policy/wake@1",
                "policy/upgrade@1",
            }
            and a
        ),
        timeout=60,
    )
    grow = next(a for a in audits if a["actor"] == "policy/autogrow@1")
    assert grow["tenant_id"] == "grow"
    assert grow["details"]["action"] == "audit.quota_set"
    assert grow["details"]["after"]["limit"] == 15
    cause = grow["details"]["cause"]
    assert (cause["policy"], cause["version"], cause["rule"]) == ("autogrow", 1, "grow")
    assert cause["figures"]["utilization"] == "95"
    assert cause["figures"]["since"] == "2026-11-01T01:00:00.000000Z"
    assert cause["figures"]["at"] == "2026-11-01T02:00:00.000000Z"  # an hour later
    assert grow["details"]["reason"].startswith("autogrow@1 rule grow: utilization 95 %")
    idle = next(a for a in audits if a["actor"] == "policy/idle-shrink@1")
    assert idle["details"]["cause"]["figures"]["at"] == "2026-11-08T00:00:00.000000Z"
    noisy = next(a for a in audits if a["actor"] == "policy/noisy@1")
    assert noisy["details"]["cause"]["figures"]["violations"] == 2
    assert noisy["details"]["after"]["status"] == "suspended"
    tiered = [a for a in audits if a["actor"] == "policy/upgrade@1"]
    assert {a["details"]["subject"] for a in tiered} >= {"quota/tenant/tiered/cpu"}

    # -- the alert action: policy alerts at 01:00 each night ---------------------------------
    alerts = stack.wait_for(
        lambda: [
            e
            for e in stack.outputs("quota-alerts", idle=1)
            if e["data"]["kind"] == "policy" and e["data"]["tenant_id"] == "night"
        ],
        timeout=60,
    )
    first = min(alerts, key=lambda e: e["time"])
    assert first["time"] == "2026-11-01T01:00:00.000000Z"
    assert first["data"]["severity"] == "critical" and first["data"]["message"] == "busy at night"
    assert first["source"] == "novaquota/policy"

    # -- per policy: its versions, its rules' state, its actions ------------------------------
    view = _wait_policy(pw, stack, lambda b: b["actions"], "/api/v1/policies/autogrow")
    assert view["versions"][0]["version"] == 1
    assert any(r["tenant_id"] == "grow" and r["fired"] == 1 for r in view["rules"])
    assert view["actions"][0]["limit"] == "15"
    status, one = pw.get("/api/v1/policies/noisy?tenant_id=nobody")
    assert status == 200 and one["rules"] == [] and one["actions"] == []
    assert pw.get("/api/v1/policies/no-such-policy")[0] == 404

    # -- the enforcement API takes policies too (admin only) ----------------------------------
    w = stack.workers[0]
    admin = pw.credentials.admin_token
    rule = {"name": "r", "when": {"tier": {"in": ["x"]}}, "then": "suspend"}
    extra = json.dumps({"name": "api-made", "rules": [rule]}).encode()
    status, body = w.request("POST", "/api/v1/policies?wait=10", extra, token=admin)
    assert (status, body["status"], body["type"]) == (200, "applied", "policy.set")
    bad_rule = {"name": "api-made", "rules": [{**rule, "when": {"tier": {}}}]}
    status, body = w.request("POST", "/api/v1/policies", json.dumps(bad_rule).encode(), token=admin)
    assert status == 400 and "rules.0.when" in body["error"]["message"]
    viewer = pw.credentials.token("policy-viewer", "viewer", "grow")
    # the worker reads the token file again within a second: until then the token is unknown
    stack.wait_for(
        lambda: w.request("GET", "/api/v1/quotas?entity_id=grow", token=viewer)[0] == 200
    )
    status, _ = w.request("POST", "/api/v1/policies", extra, token=viewer)
    assert status in (403, 404)
    status, body = w.request("DELETE", "/api/v1/policies/api-made?wait=10", token=admin)
    assert (status, body["status"]) == (200, "applied")
    _wait_policy(
        pw,
        stack,
        lambda b: any(p["name"] == "api-made" and not p["active"] for p in b["policies"]),
        "/api/v1/policies",
    )
    names.add("api-made")

    # -- a restart and a rebuild send nothing again -------------------------------------------
    status = _wait_policy(pw, stack, lambda b: b["ready"], "/api/v1/policies/status")
    sent = _sent_by_policies(stack)
    assert len(sent) == status["emitted"] and len({e["id"] for e in sent}) == len(sent)
    with urllib.request.urlopen(f"http://127.0.0.1:{pw.port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'policy_actions_total{kind="adjust_limit",policy="autogrow"} 1.0' in metrics
    pw.stop()
    pw.start()
    again = _wait_policy(pw, stack, lambda b: b["ready"], "/api/v1/policies/status")
    assert again["emitted"] == 0
    pw.stop()
    pw.start(rebuild=True)
    rebuilt = _wait_policy(pw, stack, lambda b: b["ready"], "/api/v1/policies/status")
    assert rebuilt["emitted"] == 0 and rebuilt["suppressed"] > 0
    assert len(_sent_by_policies(stack)) == len(sent)
    listed = json.loads(_cli(stack, "list", "--from-log", "--output", "json").stdout)
    assert {p["name"] for p in listed["policies"]} == names
