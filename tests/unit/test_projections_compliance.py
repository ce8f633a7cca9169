"""Compliance report over in-memory logs: episodes by kind, time over limit, changes, errors."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import orjson
import pytest

from novaquota.projections.compliance import buckets, build_report, main
from novaquota.projections.replay import ArgumentError, parse_time, replay_records
from tests.support.events import command, vm_created, vm_deleted

from .test_projections_replay import SETTINGS, Log, at, quota_set


def report(log: Log, start: float, end: float, **kw: Any) -> dict[str, Any]:
    tenant = kw.pop("tenant", None)
    result = replay_records(log.ordered(), SETTINGS, at(end), tenant=tenant)
    doc: dict[str, Any] = orjson.loads(build_report(result, at(start), at(end), **kw).to_json())
    return doc


def hard_log() -> Log:
    """acme: cpu limit 4; over from t=20 to t=80 (vm2), over again from t=200 (vm3)."""
    log = Log()
    log.command(quota_set("acme", "cpu", 4, t=0, id_="q1"))
    log.event(vm_created("acme", "vm1", cpu=3, t=10, id_="e1"))
    log.event(vm_created("acme", "vm2", cpu=2, t=20, id_="e2"))
    log.event(vm_deleted("acme", "vm2", t=80, id_="e3"))
    log.event(vm_created("acme", "vm3", cpu=2, t=200, id_="e4"))
    return log


def test_violations_by_kind_and_time_over_limit_clipped_to_the_period() -> None:
    doc = report(hard_log(), start=0, end=300)
    s = doc["summary"]
    assert s["opened_by_kind"]["over_limit"] == 2 and s["opened"] == 2
    assert (s["resolved"], s["open_at_end"]) == (1, 1)
    first, second = doc["violations"]
    assert (first["opened_at"], first["resolved_at"]) == (
        "2026-11-01T00:00:20.000000Z",
        "2026-11-01T00:01:20.000000Z",
    )
    assert first["seconds_in_period"] == "60" and second["seconds_in_period"] == "100"
    assert first["opened_by"]["id"] == "e2" and first["resolved_by"]["id"] == "e3"
    assert (first["limit"], first["usage"]) == ("4", "5")
    [over] = doc["time_over_limit"]
    assert (over["tenant_id"], over["level"], over["resource_type"]) == ("acme", "tenant", "cpu")
    assert over["seconds"] == "160" and over["stretches"] == 2 and over["over_at_period_end"]
    assert s["seconds_over_limit"] == "160"

    # a period that starts inside the first episode: only its tail counts, nothing opened
    part = report(hard_log(), start=50, end=150)
    assert part["summary"]["opened"] == 0 and part["summary"]["resolved"] == 1
    [v] = part["violations"]
    assert v["seconds_in_period"] == "30"
    assert part["time_over_limit"][0]["seconds"] == "30"


def test_burst_time_counts_as_over_limit_without_an_episode() -> None:
    log = Log()
    log.command(quota_set("acme", "cpu", 4, t=0, id_="q", burst_limit=8, burst_seconds=3600))
    log.event(vm_created("acme", "vm1", cpu=6, t=100, id_="e1"))
    log.event(vm_deleted("acme", "vm1", t=130.5, id_="e2"))
    doc = report(log, start=0, end=600)
    assert doc["violations"] == [] and doc["summary"]["opened"] == 0
    [over] = doc["time_over_limit"]
    assert over["seconds"] == "30.5" and over["violation_kinds"] == []
    assert over["first_cause"]["id"] == "e1" and not over["over_at_period_end"]


def test_grace_expiries_are_listed() -> None:
    log = Log()
    log.command(
        quota_set("acme", "memory", 1024, t=0, id_="q", limit_type="soft", grace_seconds=60)
    )
    log.event(vm_created("acme", "vm1", cpu=1, memory=2048, t=10, id_="e1"))
    doc = report(log, start=0, end=600)
    [g] = doc["grace_expiries"]
    assert g["kind"] == "grace_expired" and g["opened_at"] == "2026-11-01T00:01:10.000000Z"
    assert g["cause_event_id"] == "e1"
    assert doc["summary"]["grace_expiries"] == 1
    [over] = doc["time_over_limit"]
    assert over["seconds"] == "590" and over["violation_kinds"] == ["grace_expired"]


def test_changes_carry_actor_and_cite_their_record() -> None:
    log = Log()
    log.command(
        command(
            "template.applied",
            {"template": "free", "level": "tenant", "entity_id": "acme", "tenant_id": "acme"},
            t=5,
            id_="apply",
        )
    )
    log.command(
        command(
            "quota.set",
            {
                "level": "tenant",
                "entity_id": "acme",
                "tenant_id": "acme",
                "resource_type": "cpu",
                "limit": 3,
                "actor": "alice@ops",
            },
            t=50,
            id_="raise",
        )
    )
    doc = report(log, start=0, end=100)
    changes = doc["changes"]
    template = [c for c in changes if c["category"] == "template"]
    assert [(c["type"], c["subject"], c["after"]) for c in template] == [
        ("template.applied", "tenant/acme", {"template": "free"})
    ]
    assert template[0]["cause"]["id"] == "apply" and template[0]["actor"] == "tests"
    quota = [c for c in changes if c["type"] == "audit.quota_set"]
    assert len(quota) == 5  # the free tier sets cpu, memory, storage, instances; then cpu again
    last = quota[-1]
    assert last["actor"] == "alice@ops" and last["cause"]["id"] == "raise"
    assert last["subject"].endswith("cpu") and last["time"] == "2026-11-01T00:00:50.000000Z"
    assert (last["before"]["limit"], last["after"]["limit"]) == ("2", "3")  # exact text
    # a later period does not see them
    assert report(log, start=60, end=100)["changes"] == []


def test_steps_split_the_period_at_utc_boundaries() -> None:
    day = 86_400
    log = Log()
    log.command(quota_set("acme", "cpu", 1, t=0, id_="q"))
    for i, t in enumerate((10, day + 10, day + 20, 3 * day + 5)):
        log.event(vm_created("acme", f"vm{i}", cpu=2, t=t, id_=f"c{i}"))
        log.event(vm_deleted("acme", f"vm{i}", t=t + 1, id_=f"d{i}"))
    doc = report(log, start=0, end=4 * day, step="day")
    assert [p["opened"] for p in doc["periods"]] == [1, 2, 0, 1]
    assert doc["periods"][1]["start"] == "2026-11-02T00:00:00.000000Z"
    weekly = buckets(parse_time("2026-11-01T12:00:00Z"), parse_time("2026-11-20T00:00:00Z"), "week")
    # 2026-11-01 is a Sunday: the first ISO week ends on Monday 2026-11-02
    assert [b1 - b0 for b0, b1 in weekly][:2] == [12 * 3600 * 10**6, 7 * day * 10**6]
    monthly = buckets(
        parse_time("2026-11-15T00:00:00Z"), parse_time("2027-01-10T00:00:00Z"), "month"
    )
    assert len(monthly) == 3 and monthly[1][0] == parse_time("2026-12-01T00:00:00Z")


def test_tenant_filter_keeps_one_tenant() -> None:
    log = hard_log()
    log.command(quota_set("zeta", "cpu", 1, t=0, id_="zq"))
    log.event(vm_created("zeta", "z1", cpu=5, t=30, id_="z1"), partition=1)
    all_ = report(log, start=0, end=300)
    assert {v["tenant_id"] for v in all_["violations"]} == {"acme", "zeta"}
    only = report(log, start=0, end=300, tenant="zeta")
    assert {v["tenant_id"] for v in only["violations"]} == {"zeta"}
    assert {c["tenant_id"] for c in only["changes"]} == {"zeta"}


def test_renderings_are_deterministic_and_self_contained() -> None:
    def render(fmt: str) -> bytes:
        result = replay_records(hard_log().ordered(), SETTINGS, at(300))
        return build_report(result, at(0), at(300), step="day").render(fmt)

    for fmt in ("json", "csv", "html"):
        assert render(fmt) == render(fmt)
    html = render("html").decode()
    assert "<svg" in html and "http://" not in html and "https://" not in html
    rows = list(csv.DictReader(io.StringIO(render("csv").decode())))
    kinds = {r["record"] for r in rows}
    assert {"period", "violation", "time_over_limit", "change"} <= kinds
    seconds = [Decimal(r["seconds"]) for r in rows if r["record"] == "time_over_limit"]
    assert seconds == [Decimal(160)]


def test_bad_periods_and_steps_are_rejected() -> None:
    result = replay_records(hard_log().ordered(), SETTINGS, at(300))
    with pytest.raises(ArgumentError, match="empty"):
        build_report(result, at(10), at(10))
    with pytest.raises(ArgumentError, match="unknown step"):
        build_report(result, at(0), at(10), step="fortnight")
    with pytest.raises(ArgumentError, match="reach the end"):
        build_report(result, at(0), at(400))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["report", "--start", "2026-11-02T00:00:00Z", "--end", "last week"], "RFC 3339"),
        (["--start", "2026-11-02T00:00:00Z", "--end", "2026-11-01T00:00:00Z"], "must be after"),
        (
            ["--start", "2026-11-01T00:00:00Z", "--end", "2026-11-02T00:00:00Z", "--format", "xls"],
            "xls",
        ),
        (["--end", "2026-11-02T00:00:00Z"], "--start"),
    ],
)
def test_cli_errors_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, SETTINGS) == 2
    err = capsys.readouterr().err
    assert err.startswith("novaquota projections report: error: ") and needle in err
