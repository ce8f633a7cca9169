"""What-if replay over in-memory logs (no broker): the file, the two runs, the comparison."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from novaquota.projections.cost import load_catalogue
from novaquota.projections.log import LogRecord, merge
from novaquota.projections.replay import iso, parse_time
from novaquota.projections.whatif import (
    ProposalError,
    WhatIfResult,
    build_report,
    main,
    parse_proposal,
    what_if_records,
    what_if_topics,
)
from novaquota.schemas.common import datetime_to_us
from novaquota.streams.settings import Settings
from tests.support.events import BASE_TIME, command, vm_created, vm_deleted

PREFIX = "w."
SETTINGS = Settings(topic_prefix=PREFIX, partitions=1)
EVENTS = f"{PREFIX}resource-events"
COMMANDS = f"{PREFIX}quota-commands"
ADMISSION = f"{PREFIX}internal-admission"
BASE_US = datetime_to_us(BASE_TIME)
CATALOGUE = load_catalogue()


def at(seconds: float) -> int:
    return BASE_US + int(seconds * 1_000_000)


def t_iso(seconds: float) -> str:
    out = iso(at(seconds))
    assert out is not None
    return out


class Log:
    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self.next: dict[str, int] = {}

    def add(self, topic: str, value: bytes, ts: float, key: bytes) -> None:
        offset = self.next.get(topic, 0)
        self.next[topic] = offset + 1
        self.records.append(LogRecord(topic, 0, offset, at(ts) // 1000, key, value))

    def event(self, ev: dict[str, Any]) -> None:
        ts = (parse_time(ev["time"]) - BASE_US) / 1e6
        topic = COMMANDS if ev["type"].startswith(("quota.", "template.")) else EVENTS
        self.add(topic, json.dumps(ev).encode(), ts, ev["data"]["tenant_id"].encode())

    def check(self, tenant: str, ts: float, rid: str, **resources: float) -> None:
        body = {
            "op": "check",
            "tenant_id": tenant,
            "project_id": None,
            "user_id": None,
            "resources": {r: int(a * 1_000_000) for r, a in resources.items()},
            "now_us": at(ts),
            "reserve": True,
            "ttl_us": 300_000_000,
            "resource_id": None,
            "idempotency_key": None,
            "actor": "tests",
            "request_id": rid,
        }
        self.add(ADMISSION, orjson.dumps(body), ts, tenant.encode())

    def ordered(self) -> list[LogRecord]:
        by_topic: dict[str, list[LogRecord]] = {}
        for r in self.records:
            by_topic.setdefault(r.topic, []).append(r)
        return list(merge([by_topic[k] for k in sorted(by_topic)], what_if_topics(SETTINGS)))


def quota_set(tenant: str, res: str, limit: Any, t: float, id_: str, **kw: Any) -> dict:
    data = {"level": "tenant", "entity_id": tenant, "tenant_id": tenant, "resource_type": res}
    return command("quota.set", {**data, "limit": limit, **kw}, t=t, id_=id_)


def workload() -> Log:
    """acme: cpu limit 4; 3 cores from t=10, 6 from t=20 to t=80 (an over_limit episode),
    checks for 1 core at t=30 (over: denied) and t=90 (3 + 1 <= 4: allowed)."""
    log = Log()
    log.event(quota_set("acme", "cpu", 4, 0, "q1"))
    log.event(vm_created("acme", "a1", cpu=3, memory=1024, t=10, id_="e1"))
    log.event(vm_created("acme", "a2", cpu=3, memory=1024, t=20, id_="e2"))
    log.check("acme", 30, "r30", cpu=1)
    log.event(vm_deleted("acme", "a2", t=80, id_="e3"))
    log.check("acme", 90, "r90", cpu=1)
    return log


def proposal(limit: Any, **kw: Any) -> Any:
    change = {"type": "quota.set", "level": "tenant", "entity_id": "acme",
              "resource_type": "cpu", "limit": limit, **kw}  # fmt: skip
    return parse_proposal(json.dumps({"changes": [change]}).encode(), "p.json")


def run(log: Log, prop: Any, start: float = 5, end: float = 100) -> WhatIfResult:
    return what_if_records(log.ordered(), SETTINGS, prop, at(start), at(end))


def doc(result: WhatIfResult) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(build_report(result, CATALOGUE).to_json())
    return out


# --- the file ----------------------------------------------------------------------------------


def test_yaml_and_json_give_the_same_proposal_with_exact_decimals() -> None:
    yaml_text = b"""
description: more cpu for acme
changes:
  - type: quota.set
    level: tenant
    entity_id: acme
    resource_type: cpu
    limit: 8.125
  - type: template.applied
    level: tenant
    tenant_id: globex
    template: growth
"""
    a = parse_proposal(yaml_text, "p.yaml")
    b = parse_proposal(
        json.dumps(
            {
                "description": "more cpu for acme",
                "changes": [
                    {"type": "quota.set", "level": "tenant", "entity_id": "acme",
                     "resource_type": "cpu", "limit": "8.125"},
                    {"type": "template.applied", "data": {"level": "tenant",
                     "tenant_id": "globex", "template": "growth"}},
                ],
            }
        ).encode(),
        "p.json",
    )  # fmt: skip
    assert [c.to_dict() for c in a.changes] == [c.to_dict() for c in b.changes]
    assert a.changes[0].data.limit == Decimal("8.125")  # type: ignore[attr-defined]
    assert a.changes[0].data.actor == "what-if"
    assert a.changes[1].tenant_id == "globex"
    # a bare list is the list of changes
    assert len(parse_proposal(b"[{type: quota.deleted, level: tenant, entity_id: a, "
                              b"resource_type: cpu}]", "p.yaml").changes) == 1  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"changes: [{type: quota.sett, level: tenant, entity_id: a}]", "changes[0].type"),
        (
            b"changes: [{type: quota.set, level: tenant, entity_id: a, resource_type: cpu, "
            b"limit: -1}]",
            "changes[0].limit",
        ),
        (
            b"changes: [{type: quota.set, level: tenant, entity_id: a, limit: 1}]",
            "changes[0].resource_type: required",
        ),
        (
            b"changes: [{type: quota.set, level: tenant, entity_id: a, resource_type: cpu, "
            b"limit: 4, burst_limit: 2}]",
            "changes[0].burst_limit: must be >= limit",
        ),
        (
            b"changes: [{type: quota.set, level: project, entity_id: p, resource_type: cpu, "
            b"limit: 4}]",
            "changes[0].tenant_id: required",
        ),
        (
            b"changes: [{type: quota.set, level: tenant, entity_id: a, resource_type: cpu, "
            b"limit: 4}, {type: quota.deleted, level: tenant, entity_id: a, "
            b"resource_type: cpu}]",
            "changes[1]: changes the same quota as changes[0]",
        ),
        (b"chnages: []", "chnages: unknown key"),
        (b"changes: {type: quota.set}", "changes: a list"),
        (b"changes: []", "proposes nothing"),
        (b"changes: [1, 2", "neither JSON nor valid YAML"),
        (b"- 3", "changes[0]: a mapping"),
    ],
)
def test_a_bad_file_is_refused_naming_the_field(text: bytes, expected: str) -> None:
    with pytest.raises(ProposalError) as err:
        parse_proposal(text, "p.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("p.yaml: ")


def test_a_change_for_another_tenant_than_tenant_is_refused() -> None:
    text = b"[{type: quota.set, level: tenant, entity_id: b, resource_type: cpu, limit: 1}]"
    with pytest.raises(ProposalError, match=r"changes\[0\]\.tenant_id: 'b' is not the --tenant"):
        parse_proposal(text, "p.yaml", tenant="a")


def test_the_cli_exits_1_for_a_bad_file_before_reading_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("changes:\n  - type: quota.set\n    level: tenant\n    entity_id: a\n"
                   "    resource_type: cpu\n    limit: lots\n")  # fmt: skip
    settings = Settings(bootstrap_servers="localhost:1", topic_prefix=PREFIX)
    argv = ["--what-if", str(bad), "--from", t_iso(0), "--until", t_iso(60)]
    from novaquota.projections import replay

    assert replay.main(argv, settings) == 1  # replay dispatches --what-if here
    err = capsys.readouterr().err
    assert err.startswith("novaquota replay: error: bad.yaml: changes[0].limit")
    assert main(["--what-if", str(tmp_path / "nope.yaml"), "--from", t_iso(0), "--until",
                 t_iso(60)], settings) == 1  # fmt: skip
    assert "nope.yaml: cannot read it" in capsys.readouterr().err
    # bad arguments stay exit 2
    assert main(["--what-if", str(bad), "--from", t_iso(60), "--until", t_iso(0)], settings) == 2


# --- the comparison ----------------------------------------------------------------------------


def test_a_raised_limit_removes_the_episode_and_allows_the_denied_check() -> None:
    d = doc(run(workload(), proposal(8)))
    sa, sp = d["summary"]["actual"], d["summary"]["proposed"]
    assert sa["episodes_opened"] == 1 and sa["opened_by_kind"]["over_limit"] == 1
    assert sp["episodes_opened"] == 0
    assert d["summary"]["difference"]["episodes_opened"] == -1
    assert sa["seconds_in_violation"] == "60" and sp["seconds_in_violation"] == "0"
    [ep] = d["episodes"]
    assert (ep["resource_type"], ep["kind"]) == ("cpu", "over_limit")
    assert ep["actual"] == {"count": 1, "seconds": "60"}
    assert ep["proposed"] == {"count": 0, "seconds": "0"}
    [v] = d["violations"]["actual"]
    assert (v["opened_at"], v["resolved_at"]) == (t_iso(20), t_iso(80))
    assert d["violations"]["proposed"] == []
    assert (sa["checks"], sa["checks_denied"]) == (2, 1)
    assert (sp["checks"], sp["checks_denied"]) == (2, 0)
    [c] = d["denied_checks"]
    assert c["time"] == t_iso(30) and c["changed"] is True
    assert c["actual"]["allowed"] is False and "cpu" in c["actual"]["reason"]
    assert c["proposed"] == {"allowed": True, "reason": c["proposed"]["reason"]}
    [applied] = d["applied"]
    assert applied["time"] == t_iso(5) and applied["index"] == 0


def test_a_lowered_limit_adds_an_episode_and_denies_a_check() -> None:
    d = doc(run(workload(), proposal(2)))
    sp = d["summary"]["proposed"]
    assert sp["episodes_opened"] == 1
    [v] = d["violations"]["proposed"]
    # 3 cores from t=10 are over 2: the episode opens then and never resolves in the period
    assert (v["opened_at"], v["resolved_at"], v["limit"]) == (t_iso(10), None, "2")
    assert v["seconds_in_period"] == "90"
    assert sp["open_at_end"] == 1
    assert (sp["checks"], sp["checks_denied"]) == (2, 2)
    by_time = {c["time"]: c for c in d["denied_checks"]}
    assert by_time[t_iso(90)]["actual"]["allowed"] is True
    assert by_time[t_iso(90)]["proposed"]["allowed"] is False
    assert by_time[t_iso(30)]["changed"] is False


def test_from_after_some_events_leaves_the_earlier_ones_unchanged() -> None:
    result = run(workload(), proposal(2), start=85)
    before = [
        (o.topic, o.event["type"], o.event["data"])
        for o in result.actual.outputs
        if parse_time(o.event["time"]) < at(85)
    ]
    proposed_before = [
        (o.topic, o.event["type"], o.event["data"])
        for o in result.proposed.outputs
        if parse_time(o.event["time"]) < at(85)
    ]
    assert before and before == proposed_before
    d = doc(result)
    # the period starts at 85: the actual episode (20..80) is outside it
    assert d["summary"]["actual"]["episodes_opened"] == 0
    [v] = d["violations"]["proposed"]
    assert v["opened_at"] == t_iso(85)  # 3 cores over the proposed 2 as soon as it holds
    assert d["summary"]["actual"]["checks"] == 1  # only the check at 90 is in the period


def test_a_later_change_of_a_proposed_quota_is_superseded() -> None:
    log = workload()
    log.event(quota_set("acme", "cpu", 10, 50, "q2"))  # the operator raised it at t=50
    d = doc(run(log, proposal(4)))
    [sup] = d["superseded"]
    assert (sup["type"], sup["time"], sup["by"]) == ("quota.set", t_iso(50), "changes[0]")
    assert sup["cause"]["id"] == "q2"
    # actual: the raise at 50 resolved the episode; proposed: the limit stayed 4 until 80
    [va] = d["violations"]["actual"]
    [vp] = d["violations"]["proposed"]
    assert va["resolved_at"] == t_iso(50) and vp["resolved_at"] == t_iso(80)


def test_a_proposed_template_costs_its_prorated_monthly_fee() -> None:
    prop = parse_proposal(
        b"[{type: template.applied, level: tenant, entity_id: acme, template: growth}]", "t.yaml"
    )
    d = doc(run(workload(), prop, start=0, end=3600))
    [acme] = d["cost"]["tenants"]
    assert acme["actual"]["template_fees_usd"] == "0.0000"
    # 299.99 USD a month of 730 hours, for one hour
    assert acme["proposed"]["template_fees_usd"] == "0.4109"
    [tmpl] = acme["proposed"]["templates"]
    assert (tmpl["template"], tmpl["from"], tmpl["until"]) == ("growth", t_iso(0), t_iso(3600))
    assert Decimal(acme["usage_usd"]) > 0  # cpu and memory held for most of the hour
    assert Decimal(d["summary"]["difference"]["cost_usd"]) == Decimal("0.4109")
    # growth's cpu limit is 128: no episode in the proposed run
    assert d["summary"]["proposed"]["episodes_opened"] == 0


def test_an_unknown_template_is_a_clear_error() -> None:
    prop = parse_proposal(
        b"[{type: template.applied, level: tenant, entity_id: acme, template: gold}]", "t.yaml"
    )
    with pytest.raises(ProposalError, match=r"changes\[0\]\.template: no template named 'gold'"):
        run(workload(), prop)


def test_the_report_is_byte_identical_in_every_format() -> None:
    prop = proposal(2)
    for fmt in ("json", "csv", "html"):
        one = build_report(run(workload(), prop), CATALOGUE).render(fmt)
        two = build_report(run(workload(), prop), CATALOGUE).render(fmt)
        assert one == two and len(one) > 500
    html = build_report(run(workload(), prop), CATALOGUE).render("html").decode()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert html.count("<svg") >= 3
    csv_text = build_report(run(workload(), prop), CATALOGUE).render("csv").decode()
    assert "violation,proposed,acme,tenant,acme,cpu,over_limit" in csv_text


# --- policies in the proposed run --------------------------------------------------------------

GROW = b"""
description: grow cpu that stays at 90 % or more for 30 s
policies:
  - name: grow
    rules:
      - name: double
        when: {utilization: {above: 90, for: 30s}}
        then:
          - adjust_limit: {factor: 2, ceiling: 16}
          - alert: {severity: warning, message: cpu doubled}
        cooldown: 1h
"""


def test_a_policy_acts_in_the_proposed_run_at_its_event_time() -> None:
    d = doc(run(workload(), parse_proposal(GROW, "grow.yaml")))
    acts = d["policy_actions"]["proposed"]
    assert [(a["kind"], a["time"], a["outcome"]) for a in acts] == [
        ("adjust_limit", t_iso(50), "applied"),
        ("alert", t_iso(50), "alert"),
    ]
    grow = acts[0]
    assert (grow["limit"], grow["previous_limit"], grow["actor"]) == ("8", "4", "policy/grow@1")
    assert grow["figures"]["since"] == t_iso(20)  # over 90 % since the second VM
    assert d["policy_actions"]["actual"] == []
    assert d["summary"]["proposed"]["policy_actions"] == 2
    # the raise at 50 s ends the episode that actually lasted until the delete at 80 s
    [va] = d["violations"]["actual"]
    [vp] = d["violations"]["proposed"]
    assert va["violation_id"] == vp["violation_id"]
    assert (va["resolved_at"], vp["resolved_at"]) == (t_iso(80), t_iso(50))
    # the check at 30 s came before the raise: denied in both runs
    [c] = d["denied_checks"]
    assert c["time"] == t_iso(30) and not c["proposed"]["allowed"] and not c["changed"]
    # the same log and file give the same actions (deterministic ids)
    again = doc(run(workload(), parse_proposal(GROW, "grow.yaml")))
    assert again["policy_actions"] == d["policy_actions"]
    html = build_report(run(workload(), parse_proposal(GROW, "g.yaml")), CATALOGUE).to_html()
    assert b"policy/grow@1" in html and b"adjust_limit to 8" in html


def test_the_logs_commands_of_a_policy_the_file_names_are_superseded() -> None:
    log = workload()
    cause = {"policy": "grow", "version": 1, "rule": "old", "summary": "grew at 40 s"}
    log.event(quota_set("acme", "cpu", 12, 40, "p1", actor="policy/grow@1", cause=cause))
    d = doc(run(log, parse_proposal(GROW, "grow.yaml")))
    [old] = d["policy_actions"]["actual"]
    assert (old["actor"], old["time"], old["limit"], old["summary"]) == (
        "policy/grow@1",
        t_iso(40),
        "12",
        "grew at 40 s",
    )
    [sup] = d["superseded"]
    assert (sup["by"], sup["cause"]["id"]) == ("policies[grow]", "p1")
    assert [a["time"] for a in d["policy_actions"]["proposed"]] == [t_iso(50), t_iso(50)]


def test_a_bad_policy_names_its_field() -> None:
    text = b"""
policies:
  - name: p
    rules:
      - name: r
        when: {utilisation: {above: 90}}
        then: [{alert: {severity: warning}}]
"""
    with pytest.raises(ProposalError) as err:
        parse_proposal(text, "p.yaml")
    assert str(err.value).startswith("p.yaml: policies[0].rules[0].when")


def test_policies_may_name_a_policy_file_next_to_the_what_if_file(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "policies"
    prop = parse_proposal(b"policies: autogrow.yaml", "w.yaml", base=examples)
    assert [p.ref for p in prop.policies] == ["autogrow@1"]
    # the digest covers the policy file too
    other = tmp_path / "autogrow.yaml"
    other.write_bytes((examples / "autogrow.yaml").read_bytes().replace(b"1.5", b"2"))
    changed = parse_proposal(b"policies: autogrow.yaml", "w.yaml", base=tmp_path)
    assert changed.sha256 != prop.sha256
    with pytest.raises(ProposalError, match=r"w\.yaml: policies: cannot read nope\.yaml"):
        parse_proposal(b"policies: nope.yaml", "w.yaml", base=tmp_path)


def test_a_template_applied_on_the_log_does_not_undo_a_proposed_quota() -> None:
    log = workload()
    log.event(
        command(
            "template.applied",
            {"level": "tenant", "entity_id": "acme", "tenant_id": "acme", "template": "developer"},
            t=50,
            id_="t1",
        )
    )
    result = run(log, proposal(2))
    d = doc(result)
    [sup] = d["superseded"]
    assert (sup["type"], sup["by"], sup["resources"]) == ("template.applied", "changes[0]", ["cpu"])
    # actual: developer's cpu limit (8, burst 12) ended the episode at 50; proposed: cpu stays
    # 2 throughout (one episode), the template's other quotas are applied
    [va] = d["violations"]["actual"]
    [vp] = d["violations"]["proposed"]
    assert va["resolved_at"] == t_iso(50) and vp["resolved_at"] is None
    state = result.proposed.state("acme")
    assert state is not None
    assert sorted(state.quotas["Tacme"]) == ["cpu", "instances", "memory", "storage"]
    assert state.quotas["Tacme"]["cpu"][1] == 2_000_000
    # the template's other quotas took effect in both runs, and its fee in both
    [acme] = d["cost"]["tenants"]
    assert [t["template"] for t in acme["proposed"]["templates"]] == ["developer"]
    assert acme["proposed"]["template_fees_usd"] == acme["actual"]["template_fees_usd"]


def test_episodes_before_the_period_count_for_a_violations_rule_from_its_start() -> None:
    text = b"""
policies:
  - name: watch
    rules:
      - name: repeat
        when: {violations: {at_least: 1, within: 1h}}
        then: [{alert: {severity: critical, message: over again}}]
"""
    d = doc(run(workload(), parse_proposal(text, "w.yaml"), start=25))
    # the episode opened at 20 s, before the period: the rule holds when the policy starts
    [alert] = d["policy_actions"]["proposed"]
    assert (alert["kind"], alert["time"], alert["severity"]) == ("alert", t_iso(25), "critical")
    assert alert["figures"]["violations"] == 1 and alert["outcome"] == "alert"


@pytest.mark.parametrize("name", ["what-if.yaml", "what-if-autogrow.yaml"])
def test_the_example_files_are_valid(name: str) -> None:
    from novaquota.projections.whatif import load_proposal

    prop = load_proposal(Path(__file__).resolve().parents[2] / "examples" / name)
    assert prop.description and (prop.changes or prop.policies)


def test_the_builtin_idle_shrink_policy_over_a_simulated_fortnight() -> None:
    """idle-shrink (at or below 10 % for 7 days: halve, never below usage + 20 %, at least +1)
    over 15 days of event time in which acme holds 2 of 100 cores; the log's only other records
    are a heartbeat VM resize every 6 hours (event time moves, usage does not)."""
    day = 86_400
    log = Log()
    log.event(quota_set("acme", "cpu", 100, 0, "q1"))
    log.event(vm_created("acme", "a1", cpu=2, memory=512, t=60, id_="e0"))
    for i in range(1, 15 * 4):
        log.event(vm_created("acme", "a1", cpu=2, memory=512, t=i * 6 * 3600, id_=f"hb{i}"))
    examples = Path(__file__).resolve().parents[2] / "examples"
    prop = parse_proposal(b"policies: policies/idle-shrink.yaml", "w.yaml", base=examples)
    d = doc(run(log, prop, start=0, end=15 * day))
    acts = [(a["time"], a["previous_limit"], a["limit"]) for a in d["policy_actions"]["proposed"]]
    # idle from the start: halved 7 days later; the rule re-arms only once utilization has been
    # above 10 % again (it never is), so there is no second halving in the fortnight
    assert acts == [(t_iso(7 * day), "100", "50")]
    [act] = d["policy_actions"]["proposed"]
    assert act["outcome"] == "applied" and act["figures"]["since"] == t_iso(0)
    assert d["summary"]["proposed"]["episodes_opened"] == 0
