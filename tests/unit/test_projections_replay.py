"""Audit replay over in-memory logs (no broker): figures, citations, determinism, errors."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2

from novaquota.ops.workload import Workload, WorkloadSpec
from novaquota.projections.log import LogRecord, merge
from novaquota.projections.replay import (
    ArgumentError,
    build_replay_report,
    main,
    parse_time,
    percent,
    replay_records,
)
from novaquota.schemas.amounts import from_micros
from novaquota.schemas.common import datetime_to_us
from novaquota.streams import quota as q
from novaquota.streams.quota.units import split_entity_key
from novaquota.streams.settings import Settings
from tests.support import reference
from tests.support.events import BASE_TIME, cloudevent, command, vm_created, vm_deleted

PREFIX = "r."
SETTINGS = Settings(topic_prefix=PREFIX, partitions=2)
EVENTS = f"{PREFIX}resource-events"
COMMANDS = f"{PREFIX}quota-commands"
TICKS = f"{PREFIX}internal-ticks"
BASE_US = datetime_to_us(BASE_TIME)


def at(seconds: float) -> int:
    """Microseconds of BASE_TIME + seconds."""
    return BASE_US + int(seconds * 1_000_000)


class Log:
    """Builds records as a broker would hold them: offsets per partition, record timestamps."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self.next: dict[tuple[str, int], int] = {}

    def add(
        self,
        topic: str,
        ev: dict[str, Any] | bytes,
        *,
        ts: float | None = None,
        partition: int = 0,
        key: bytes | None = None,
    ) -> LogRecord:
        if isinstance(ev, dict):
            value = json.dumps(ev).encode()
            if ts is None:
                ts = (parse_time(ev["time"]) - BASE_US) / 1_000_000
            if key is None:
                key = str(ev["data"].get("tenant_id", "system")).encode()
        else:
            value = ev
        offset = self.next.get((topic, partition), 0)
        self.next[(topic, partition)] = offset + 1
        rec = LogRecord(
            topic, partition, offset, (BASE_US + int((ts or 0) * 1_000_000)) // 1000, key, value
        )
        self.records.append(rec)
        return rec

    def event(self, ev: dict[str, Any] | bytes, **kw: Any) -> LogRecord:
        return self.add(EVENTS, ev, **kw)

    def command(self, ev: dict[str, Any], **kw: Any) -> LogRecord:
        return self.add(COMMANDS, ev, **kw)

    def ordered(self) -> list[LogRecord]:
        by_part: dict[tuple[str, int], list[LogRecord]] = {}
        for r in self.records:
            by_part.setdefault((r.topic, r.partition), []).append(r)
        return list(merge([by_part[k] for k in sorted(by_part)], [COMMANDS, EVENTS, TICKS]))


def quota_set(tenant: str, resource: str, limit: Any, *, t: float, id_: str, **kw: Any) -> dict:
    data = {
        "level": kw.pop("level", "tenant"),
        "entity_id": kw.pop("entity_id", tenant),
        "tenant_id": tenant,
        "resource_type": resource,
        "limit": limit,
        **kw,
    }
    return command("quota.set", data, t=t, id_=id_)


def doc_of(records: Sequence[LogRecord], until: float, **kw: Any) -> dict[str, Any]:
    result = replay_records(records, SETTINGS, at(until), **kw)
    out: dict[str, Any] = orjson.loads(build_replay_report(result).to_json())
    return out


def usage_row(doc: dict[str, Any], tenant: str, level: str, entity: str, res: str) -> dict:
    [t] = [t for t in doc["tenants"] if t["tenant_id"] == tenant]
    rows = [
        u
        for u in t["usage"]
        if (u["level"], u["entity_id"], u["resource_type"]) == (level, entity, res)
    ]
    assert rows, f"no usage row for {level}/{entity}/{res}"
    return rows[0]


def basic_log() -> Log:
    log = Log()
    log.command(quota_set("acme", "cpu", 8, t=0, id_="q-cpu"))
    log.event(vm_created("acme", "vm1", cpu=2.5, memory=1024, t=1, id_="e1", project_id="web"))
    log.event(vm_created("acme", "vm2", cpu=4, memory=2048, t=2, id_="e2", user_id="ann"))
    log.event(
        cloudevent(
            "vm.resized",
            {"tenant_id": "acme", "vm_id": "vm1", "cpu": 3.25, "memory": 1024, "project_id": "web"},
            t=3,
            id_="e3",
        )
    )
    log.event(vm_deleted("acme", "vm2", t=4, id_="e4"))
    log.event(vm_created("zeta", "vm9", cpu=1, t=5, id_="e5"), partition=1)
    return log


# --- figures and citations ---------------------------------------------------------------------


def test_usage_figures_are_exact_strings_citing_the_live_instances() -> None:
    log = basic_log()
    doc = doc_of(log.ordered(), until=60)
    cpu = usage_row(doc, "acme", "tenant", "acme", "cpu")
    assert cpu["used"] == "3.25" and cpu["utilization"] == "40.62"  # 40.625, half-even
    assert cpu["quota"]["limit"] == "8"
    assert cpu["quota"]["set_by"] == {
        "topic": COMMANDS,
        "partition": 0,
        "offset": 0,
        "id": "q-cpu",
        "source": "tests/producer",
        "time": "2026-11-01T00:00:00.000000Z",
    }
    # vm2 was deleted: only vm1 contributes, cited by the resize that set it
    [c] = cpu["contributions"]
    assert (c["kind"], c["key"], c["amount"]) == ("instance", "vm:vm1", "3.25")
    assert (c["event"]["topic"], c["event"]["offset"], c["event"]["id"]) == (EVENTS, 2, "e3")
    web = usage_row(doc, "acme", "project", "web", "cpu")
    assert web["used"] == "3.25" and web["quota"] is None
    [t] = [t for t in doc["tenants"] if t["tenant_id"] == "acme"]
    assert (t["live_instances"], t["tombstones"]) == (1, 1)
    assert not any(u["entity_id"] == "ann" for u in t["usage"])  # released
    assert doc["system"]["totals"] == {"cpu": "4.25", "instances": "2", "memory": "5120"}
    for row in t["usage"]:
        assert isinstance(row["used"], str)


def test_every_figure_sums_its_contributions() -> None:
    doc = doc_of(basic_log().ordered(), until=60)
    for t in doc["tenants"]:
        for u in t["usage"]:
            from decimal import Decimal

            total = sum((Decimal(c["amount"]) for c in u["contributions"]), Decimal(0))
            assert total == Decimal(u["used"]), u


def test_until_cuts_the_log_by_record_time() -> None:
    log = basic_log()
    recs = log.ordered()
    until = 2.5
    cut = [r for r in recs if r.timestamp_ms * 1000 <= at(until)]
    doc = doc_of(cut, until=until)
    cpu = usage_row(doc, "acme", "tenant", "acme", "cpu")
    assert cpu["used"] == "6.5"  # vm1 2.5 + vm2 4, before the resize and the delete
    assert [t["tenant_id"] for t in doc["tenants"]] == ["acme"]
    assert doc["as_of"] == "2026-11-01T00:00:02.500000Z"


def test_allocation_totals_do_not_depend_on_arrival_order() -> None:
    log = Log()
    events = [
        vm_created("acme", "vm1", cpu=1, t=1, id_="a1"),
        cloudevent(
            "vm.resized", {"tenant_id": "acme", "vm_id": "vm1", "cpu": 3, "memory": 64}, t=5
        ),
        vm_created("acme", "vm2", cpu=2, t=2, id_="a2"),
        vm_deleted("acme", "vm2", t=7, id_="a3"),
        vm_created("acme", "vm3", cpu=0.125, t=3, id_="a4"),
        vm_deleted("acme", "vm3", t=3, id_="a5"),  # at equal times the delete wins
    ]
    baseline = None
    rng = random.Random(7)
    for _ in range(6):
        rng.shuffle(events)
        log = Log()
        for i, ev in enumerate(events):
            log.event(ev, ts=10 + i)
        doc = doc_of(log.ordered(), until=60)
        figures = {
            (u["level"], u["entity_id"], u["resource_type"]): u["used"]
            for u in doc["tenants"][0]["usage"]
        }
        baseline = baseline or figures
        assert figures == baseline
    assert baseline is not None and baseline[("tenant", "acme", "cpu")] == "3"


def test_duplicates_take_effect_once() -> None:
    log = Log()
    ev = cloudevent("api.requests", {"tenant_id": "acme", "count": 5}, t=1, id_="api-1")
    log.command(quota_set("acme", "api_requests", 100, t=0, id_="q", window="hour"))
    log.event(ev)
    log.event(ev, ts=2)  # redelivered
    log.event(cloudevent("api.requests", {"tenant_id": "acme", "count": 7}, t=3, id_="api-2"))
    result = replay_records(log.ordered(), SETTINGS, at(60))
    assert result.counts["duplicates"] == 1
    doc = orjson.loads(build_replay_report(result).to_json())
    row = usage_row(doc, "acme", "tenant", "acme", "api_requests")
    assert row["used"] == "12"
    assert [c["event"]["id"] for c in row["contributions"]] == ["api-1", "api-2"]
    assert [c["event"]["offset"] for c in row["contributions"]] == [0, 2]
    assert row["contributions"][0]["key"].startswith("hour window 2026-11-01T00:00:00")


def test_rejected_records_are_dead_lettered_and_change_nothing() -> None:
    log = basic_log()
    log.event(b"{not json", ts=10)
    log.event(cloudevent("vm.teleported", {"tenant_id": "acme"}, t=11))
    log.event(cloudevent("vm.created", {"vm_id": "x", "cpu": 1, "memory": 1}, t=12))
    log.event(
        cloudevent(
            "vm.created", {"tenant_id": "acme", "vm_id": "neg", "cpu": -1, "memory": 1}, t=13
        )
    )
    clean = doc_of(basic_log().ordered(), until=60)
    doc = doc_of(log.ordered(), until=60)
    assert doc["tenants"] == clean["tenants"]
    reasons = [(d["offset"], d["reason"]) for d in doc["dead_letters"]]
    assert [o for o, _ in reasons] == [4, 5, 6, 7]
    assert reasons[0][1] == "malformed_json" and reasons[1][1] == "unknown_type"
    assert doc["inputs"]["dead_lettered"] == 4


def test_template_applied_cites_the_command_and_custom_templates_resolve() -> None:
    log = Log()
    log.command(
        command(
            "template.defined",
            {
                "name": "tiny",
                "description": "tiny tier",
                "quotas": [{"resource_type": "cpu", "limit": 1}],
                "monthly_cost": 1,
            },
            t=0,
            id_="def-tiny",
        ),
        key=b"system",
    )
    log.command(
        command(
            "template.applied",
            {"template": "tiny", "level": "tenant", "entity_id": "acme", "tenant_id": "acme"},
            t=1,
            id_="apply-tiny",
        )
    )
    log.command(
        command(
            "template.applied",
            {"template": "nope", "level": "tenant", "entity_id": "acme", "tenant_id": "acme"},
            t=2,
            id_="apply-nope",
        )
    )
    log.event(vm_created("acme", "vm1", cpu=2, t=3, id_="e1"))
    doc = doc_of(log.ordered(), until=60)
    cpu = usage_row(doc, "acme", "tenant", "acme", "cpu")
    assert cpu["quota"]["limit"] == "1"
    assert cpu["quota"]["set_by"]["id"] == "apply-tiny"
    assert cpu["quota"]["set_by"]["offset"] == 1
    [dead] = doc["dead_letters"]
    assert dead["id"] == "apply-nope" and "nope" in dead["message"]
    [v] = doc["tenants"][0]["open_violations"]
    assert (v["kind"], v["resource_type"]) == ("over_limit", "cpu")
    assert v["cause"]["id"] == "e1" and v["cause"]["offset"] == 0


# --- event time: ticks -------------------------------------------------------------------------


def burst_log() -> Log:
    log = Log()
    log.command(
        quota_set("acme", "cpu", 4, t=0, id_="q", burst_limit=8, burst_seconds=60),
    )
    log.event(vm_created("acme", "vm1", cpu=6, t=10, id_="e1"))
    return log


def test_final_tick_fires_expiries_due_by_until() -> None:
    before = doc_of(burst_log().ordered(), until=69)
    assert before["tenants"][0]["open_violations"] == []
    after = doc_of(burst_log().ordered(), until=70)
    [v] = after["tenants"][0]["open_violations"]
    assert v["kind"] == "burst_expired" and v["detected_at"] == "2026-11-01T00:01:10.000000Z"
    assert v["cause_event_id"] == "e1"
    assert v["cause"] == {
        "topic": None,
        "partition": None,
        "offset": None,
        "id": "replay:final-tick",
        "source": None,
        "time": None,
    }
    assert after["inputs"]["final_ticks"] == 1


def test_logged_tick_records_fire_expiries_where_the_worker_did() -> None:
    from novaquota.streams.agents import home_partition  # the worker's own routing

    log = burst_log()
    home = home_partition("acme", SETTINGS.partitions)
    tick = log.add(TICKS, str(at(75)).encode(), ts=75.5, partition=home)
    doc = doc_of(log.ordered(), until=200)
    [v] = doc["tenants"][0]["open_violations"]
    assert v["kind"] == "burst_expired"
    assert (v["cause"]["topic"], v["cause"]["offset"]) == (TICKS, tick.offset)
    assert doc["inputs"]["ticks"] == 1 and doc["inputs"]["final_ticks"] == 0
    # a tick on another partition does not concern the tenant
    log2 = burst_log()
    log2.add(TICKS, str(at(75)).encode(), ts=75.5, partition=1 - home)
    doc2 = doc_of(log2.ordered(), until=200)
    assert doc2["tenants"][0]["open_violations"][0]["cause"]["topic"] is None


# --- system, tenant filter, determinism --------------------------------------------------------


def test_system_quotas_are_evaluated_against_all_tenants() -> None:
    log = basic_log()
    log.command(
        command(
            "quota.set",
            {"level": "system", "entity_id": "system", "resource_type": "cpu", "limit": 4},
            t=6,
            id_="sys-q",
        ),
        key=b"system",
    )
    doc = doc_of(log.ordered(), until=60)
    [row] = [u for u in doc["system"]["quotas"] if u["resource_type"] == "cpu"]
    assert (row["used"], row["quota"]["limit"], row["utilization"]) == ("4.25", "4", "106.25")
    assert row["quota"]["set_by"]["id"] == "sys-q"
    [v] = doc["system"]["open_violations"]
    assert v["kind"] == "over_limit"
    assert [t["tenant_id"] for t in doc["tenants"]] == ["acme", "zeta"]


def test_tenant_filter_reports_one_tenant_and_no_system() -> None:
    doc = doc_of(basic_log().ordered(), until=60, tenant="zeta")
    assert [t["tenant_id"] for t in doc["tenants"]] == ["zeta"]
    assert doc["system"] is None and doc["tenant"] == "zeta"
    assert doc["inputs"]["other_tenants"] == 5
    assert usage_row(doc, "zeta", "tenant", "zeta", "cpu")["used"] == "1"


def test_same_log_gives_byte_identical_reports() -> None:
    log = basic_log()
    log.event(b"garbage", ts=30)
    for fmt in ("json", "csv", "html"):
        a = build_replay_report(replay_records(log.ordered(), SETTINGS, at(60))).render(fmt)
        b = build_replay_report(replay_records(list(log.ordered()), SETTINGS, at(60))).render(fmt)
        assert a == b and len(a) > 200


def test_csv_rows_cite_every_contribution() -> None:
    import csv
    import io

    result = replay_records(basic_log().ordered(), SETTINGS, at(60))
    rows = list(csv.DictReader(io.StringIO(build_replay_report(result).to_csv().decode())))
    usage = [r for r in rows if r["record"] == "usage" and r["resource_type"] == "cpu"]
    assert {(r["tenant_id"], r["level"], r["entity_id"], r["amount"]) for r in usage} == {
        ("acme", "tenant", "acme", "3.25"),
        ("acme", "project", "web", "3.25"),
        ("zeta", "tenant", "zeta", "1"),
    }
    inst = [r for r in rows if r["record"] == "instance" and r["entity_id"] == "zeta"]
    assert {(r["topic"], r["partition"], r["offset"], r["event_id"]) for r in inst} == {
        (EVENTS, "1", "0", "e5")
    }


def test_html_is_self_contained() -> None:
    html = build_replay_report(replay_records(basic_log().ordered(), SETTINGS, at(60))).to_html()
    text = html.decode()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "vm:vm1" in text and f"{EVENTS}[0]@2" in text


# --- merge order -------------------------------------------------------------------------------


def test_merge_orders_by_timestamp_then_topic_rank_and_keeps_partition_order() -> None:
    def r(topic: str, p: int, o: int, ts: int) -> LogRecord:
        return LogRecord(topic, p, o, ts, None, b"")

    events0 = [r(EVENTS, 0, 0, 100), r(EVENTS, 0, 1, 50), r(EVENTS, 0, 2, 300)]
    commands0 = [r(COMMANDS, 0, 0, 100), r(COMMANDS, 0, 1, 200)]
    out = [(x.topic[2], x.offset) for x in merge([events0, commands0], [COMMANDS, EVENTS])]
    # equal timestamps: commands first; the record stamped 50 still follows its predecessor
    assert out == [("q", 0), ("r", 0), ("r", 1), ("q", 1), ("r", 2)]


# --- parsing and the command line --------------------------------------------------------------


def test_parse_time_accepts_rfc3339_only() -> None:
    assert parse_time("2026-11-01T00:00:01Z") == at(1)
    assert parse_time("2026-11-01T01:00:01+01:00") == at(1)
    for bad in ("yesterday", "2026-11-01", "2026-11-01T00:00:00", "1764300000"):
        with pytest.raises(ArgumentError, match="RFC 3339"):
            parse_time(bad)


def test_percent_is_exact_and_rounded_half_even() -> None:
    assert percent(1, 8) == "12.50"
    assert percent(1, 3) == "33.33"
    assert percent(5, None) is None
    assert percent(0, 0) is None and percent(1, 0) is None  # a zero limit has no percentage


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--until", "tomorrow"], "RFC 3339"),
        (["--until", "2026-11-01T00:00:00Z", "--format", "pdf"], "invalid choice: 'pdf'"),
        ([], "--until"),
        (["--until", "2026-11-01T00:00:00Z", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, SETTINGS) == 2
    err = capsys.readouterr().err
    assert err.startswith("novaquota replay: error: ") and needle in err


def test_unknown_format_is_rejected_by_render() -> None:
    report = build_replay_report(replay_records([], SETTINGS, at(0)))
    with pytest.raises(ArgumentError, match="unknown format 'pdf'"):
        report.render("pdf")


def test_novaquota_replay_exits_2_on_bad_input() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "novaquota.ops.cli", "replay", "--until", "soon"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "novaquota replay: error: argument --until" in proc.stderr and "RFC 3339" in proc.stderr
    assert proc.stdout == ""


def test_replayed_usage_matches_the_independent_reference_on_a_workload() -> None:
    w = Workload(WorkloadSpec(tenants=25, events_per_second=20, seed=11, misbehaving=0.1))
    evs = [*w.setup_commands(), *w.events(3000)]
    log = Log()
    raw: list[tuple[bytes | None, bytes, None, int]] = []
    for ev in evs:
        tenant = str(ev["data"].get("tenant_id", "system"))
        topic = COMMANDS if ev["type"] in ("quota.set", "template.applied") else EVENTS
        part = (murmur2(tenant.encode()) & 0x7FFFFFFF) % SETTINGS.partitions
        rec = log.add(topic, ev, partition=part)
        if topic == EVENTS:
            raw.append((rec.key, rec.value or b"", None, rec.timestamp_ms))
    until = max(parse_time(ev["time"]) for ev in evs)
    result = replay_records(log.ordered(), SETTINGS, until)
    df = reference.parse_records(raw, accept="events")
    expected = {k: v for k, v in reference.usage(df, watermark_us=until).items() if v != 0}
    got = {}
    for tenant in result.tenant_ids():
        st = result.state(tenant)
        assert isinstance(st, q.TenantState)
        for ekey, per in st.usage.items():
            level, entity = split_entity_key(ekey)
            for res, a in per.items():
                if a:
                    got[(tenant, level, entity, res)] = from_micros(a)
    assert got == expected
    assert len(got) > 100
    assert result.counts["dead_lettered"] == df.attrs["invalid_count"]


def test_streaming_merge_waits_until_every_partition_has_a_record() -> None:
    from novaquota.projections.log import Merger

    def r(p: int, o: int, ts: int) -> LogRecord:
        return LogRecord(EVENTS, p, o, ts, None, b"")

    m: Merger[str] = Merger(["a", "b"], [COMMANDS, EVENTS])
    m.add("a", [r(0, 0, 100), r(0, 1, 300)])
    assert m.pop() is None and m.starving() == ["b"]  # b's next record could come first
    m.add("b", [r(1, 0, 200)])
    assert [(x.partition, x.offset) for x in (m.pop(), m.pop())] == [(0, 0), (1, 0)]  # type: ignore[union-attr]
    assert m.pop() is None and m.starving() == ["b"]
    m.finish("b")
    last = m.pop()
    assert last is not None and (last.partition, last.offset) == (0, 1)
    assert m.pop() is None and m.starving() == ["a"]
    m.finish("a")
    assert m.pop() is None and m.starving() == []
