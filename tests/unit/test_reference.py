"""The independent reference computation (tests/support/reference.py) on small hand-made logs."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from typing import Any

import pytest

from tests.support.reference import (
    TIERS,
    api_requests,
    expected_open_over_limit,
    instance_states,
    parse_records,
    parse_time_us,
    quotas,
    source_system,
    system_totals,
    usage,
    watermark,
)

D = Decimal
T0 = parse_time_us("2026-11-01T00:00:00Z")  # µs
_seq = iter(range(1, 1_000_000))


def iso(seconds: float) -> str:
    """BASE + seconds as RFC 3339 (µs precision)."""
    us = T0 + round(seconds * 1_000_000)
    s, frac = divmod(us, 1_000_000)
    base = dt.datetime.fromtimestamp(s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:06d}Z" if frac else f"{base}Z"


def envelope(
    type_: str, data: dict[str, Any], t: float, *, source: str = "nova/compute/h1", id_: str = ""
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id_ or f"e{next(_seq)}",
        "source": source,
        "type": type_,
        "time": iso(t),
        "data": data,
    }


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=float).encode()  # Decimal literals such as 4.25 stay exact


def rec(ev: dict[str, Any] | bytes, ts: float | None = None) -> tuple:
    """A structured-mode record; the Kafka timestamp is BASE + ``ts`` seconds, by default the
    event time + 1 s."""
    if isinstance(ev, bytes):
        return (b"k", ev, None, T0 // 1000 + 10_000)
    if ts is None:
        ts_ms = parse_time_us(ev["time"]) // 1000 + 1000
    else:
        ts_ms = T0 // 1000 + round(ts * 1000)
    return (ev["data"].get("tenant_id", "").encode(), dumps(ev), None, ts_ms)


def binary(ev: dict[str, Any]) -> tuple:
    headers = [(f"ce_{k}", str(v).encode()) for k, v in ev.items() if k != "data"]
    headers.append(("content-type", b"application/json"))
    ts_ms = parse_time_us(ev["time"]) // 1000
    return (None, dumps(ev["data"]), headers, ts_ms)


def vm(kind: str, vm_id: str, t: float, tenant: str = "acme", **kw: Any) -> dict[str, Any]:
    source = kw.pop("source", "nova/compute/h1")
    id_ = kw.pop("id_", "")
    data = {"tenant_id": tenant, "vm_id": vm_id, **kw}
    if kind in ("created", "resized"):
        data.setdefault("cpu", 2)
        data.setdefault("memory", 4096)
    return envelope(f"vm.{kind}", data, t, source=source, id_=id_)


def run(*events: dict[str, Any] | tuple) -> dict:
    recs = [e if isinstance(e, tuple) else rec(e) for e in events]
    return usage(parse_records(recs))


def tenant_usage(u: dict, tenant: str = "acme") -> dict[str, Decimal]:
    return {k[3]: v for k, v in u.items() if k[:3] == (tenant, "tenant", tenant)}


# --------------------------------------------------------------------------------------------
# time and envelope
# --------------------------------------------------------------------------------------------


def test_rfc3339_to_microseconds() -> None:
    assert parse_time_us("1970-01-01T00:00:00Z") == 0
    assert parse_time_us("1970-01-01T01:00:00+01:00") == 0
    assert parse_time_us("1970-01-01T00:00:00.5z") == 500_000
    assert parse_time_us("1970-01-01 00:00:01.1234569Z") == 1_123_456
    assert parse_time_us("2026-11-01T00:00:00-00:30") == T0 + 1_800_000_000
    for bad in ("2026-11-01T00:00:00", "2026-13-01T00:00:00Z", "2026-11-01T00:00:60Z", "x"):
        with pytest.raises(ValueError):
            parse_time_us(bad)


def test_source_system_is_first_path_segment() -> None:
    assert source_system("nova/compute/host-17") == "nova"
    assert source_system("/cinder/volumes") == "cinder"
    assert source_system("https://nova.example/compute") == "nova.example"
    assert source_system("nova") == "nova"


def test_binary_and_structured_modes_agree() -> None:
    events = [
        vm("created", "v1", 1, cpu=D("1.5"), memory=2048, gpu=1, user_id="u1", project_id="p1"),
        vm("created", "v2", 2, cpu=4, memory=1024),
    ]
    structured = run(*events)
    bin_df = parse_records([binary(e) for e in events])
    assert set(bin_df["mode"]) == {"binary"}
    assert usage(bin_df) == structured
    assert tenant_usage(structured) == {
        "cpu": D("5.5"),
        "memory": D(3072),
        "gpu": D(1),
        "instances": D(2),
    }


def test_cloudevents_content_type_means_structured_even_with_ce_headers() -> None:
    ev = vm("created", "v1", 1)
    headers = [("ce_specversion", b"1.0"), ("content-type", b"application/cloudevents+json")]
    df = parse_records([(None, dumps(ev), headers, T0 // 1000 + 5000)])
    assert list(df["mode"]) == ["structured"]
    assert df.attrs["invalid_count"] == 0


def test_invalid_records_are_dropped_and_counted() -> None:
    good = vm("created", "v1", 1)
    future = vm("created", "v9", 400)
    bad_binary = binary(vm("created", "v8", 1))
    bad_binary = (None, b"{not json", bad_binary[2], bad_binary[3])
    records = [
        rec(b"not json at all {"),
        rec(b"[1, 2, 3]"),
        rec(envelope("vm.exploded", {"tenant_id": "acme"}, 1)),
        rec(vm("created", "v2", 1, cpu=None)),  # cpu: null is missing
        rec(vm("created", "v3", 1, cpu=-1)),
        rec(
            b'{"specversion":"1.0","id":"n","source":"s","type":"vm.created",'
            b'"time":"2026-11-01T00:00:00Z","data":{"tenant_id":"acme","vm_id":"v4",'
            b'"cpu":NaN,"memory":1}}'
        ),
        rec(vm("created", "v5", 1, cpu="2")),  # a string is not a number
        rec(vm("created", "v6", 1, cpu=D("0.0001"))),  # more than 3 decimals
        rec({**vm("created", "v7", 1), "specversion": "0.3"}),
        rec(future, ts=99),  # 301 s ahead of its record timestamp
        rec(envelope("api.requests", {"tenant_id": "acme", "count": 0}, 1)),
        rec(envelope("vm.created", {"vm_id": "v10", "cpu": 1, "memory": 1}, 1)),  # no tenant
        bad_binary,
        rec(good),
        rec(vm("created", "v11", 400), ts=100),  # exactly 300 s ahead: fine
    ]
    df = parse_records(records)
    assert df.attrs["invalid_count"] == 13
    assert df.attrs["invalid_reasons"] == {
        "malformed_json": 2,
        "not_an_object": 1,
        "unknown_type": 1,
        "missing_field": 2,
        "negative_amount": 1,
        "non_finite_amount": 1,
        "invalid_field": 3,
        "too_precise": 1,
        "future_time": 1,
    }
    assert list(df["seq"]) == [13, 14]
    assert tenant_usage(usage(df))["instances"] == 2


def test_accept_limits_types_to_one_topic() -> None:
    cmd = envelope(
        "quota.set",
        {
            "actor": "a",
            "tenant_id": "acme",
            "level": "tenant",
            "entity_id": "acme",
            "resource_type": "cpu",
            "limit": 4,
        },
        1,
    )
    df = parse_records([rec(cmd), rec(vm("created", "v1", 1))], accept="events")
    assert df.attrs["invalid_reasons"] == {"unknown_type": 1}
    assert list(df["type"]) == ["vm.created"]


# --------------------------------------------------------------------------------------------
# allocation: newest event per instance
# --------------------------------------------------------------------------------------------


def test_out_of_order_delete_then_create() -> None:
    # the delete (t=20) arrives before the older create (t=10): the VM stays deleted
    u = run(vm("deleted", "v1", 20), vm("created", "v1", 10))
    assert tenant_usage(u) == {}
    # a newer create after an older delete does hold
    u = run(vm("created", "v2", 30), vm("deleted", "v2", 20))
    assert tenant_usage(u) == {"cpu": 2, "memory": 4096, "instances": 1}


def test_equal_time_delete_beats_create_whatever_the_ids() -> None:
    create = vm("created", "v1", 10, source="z-source", id_="zzz")
    delete = vm("deleted", "v1", 10, source="a-source", id_="aaa")
    assert tenant_usage(run(create, delete)) == {}
    assert tenant_usage(run(delete, create)) == {}


def test_equal_time_creates_larger_source_id_wins() -> None:
    a = vm("resized", "v1", 10, cpu=1, id_="a")
    b = vm("resized", "v1", 10, cpu=8, id_="b")
    assert tenant_usage(run(a, b))["cpu"] == 8
    assert tenant_usage(run(b, a))["cpu"] == 8


def test_resize_replaces_and_arrival_order_does_not_matter() -> None:
    events = [
        vm("created", "v1", 10, cpu=2, memory=2048, gpu=1),
        vm("resized", "v1", 20, cpu=D("4.250"), memory=8192),  # gpu back to default 0
        vm("created", "v2", 15, cpu=1, memory=512),
        vm("deleted", "v2", 25),
        envelope("volume.created", {"tenant_id": "acme", "volume_id": "d1", "size_gb": 10}, 5),
        envelope("volume.resized", {"tenant_id": "acme", "volume_id": "d1", "size_gb": 50}, 30),
        envelope("snapshot.created", {"tenant_id": "acme", "snapshot_id": "s1", "size_gb": 7}, 6),
        envelope("backup.created", {"tenant_id": "acme", "backup_id": "b1", "size_gb": 3}, 6),
        envelope("backup.deleted", {"tenant_id": "acme", "backup_id": "b1"}, 7),
        envelope("floating_ip.allocated", {"tenant_id": "acme", "ip_id": "ip1"}, 6),
        envelope("load_balancer.created", {"tenant_id": "acme", "lb_id": "lb1"}, 6),
    ]
    expected = {
        "cpu": D("4.25"),
        "memory": D(8192),
        "instances": D(1),
        "storage": D(57),
        "volumes": D(1),
        "snapshots": D(1),
        "floating_ips": D(1),
        "load_balancers": D(1),
    }
    rng = random.Random(7)
    for _ in range(20):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert tenant_usage(run(*shuffled)) == expected


def test_duplicates_have_no_extra_effect() -> None:
    create = vm("created", "v1", 10, id_="dup")
    # a second message with the same (source, id) and other content is ignored
    second = vm("created", "v1", 50, cpu=64, id_="dup")
    recs = [rec(create), rec(create), rec(second)]
    df = parse_records(recs)
    assert list(df["duplicate"]) == [False, True, True]
    assert tenant_usage(usage(df)) == {"cpu": 2, "memory": 4096, "instances": 1}
    # same id from another source is a different event
    other = vm("resized", "v1", 60, cpu=3, id_="dup", source="nova/compute/h2")
    assert tenant_usage(run(create, other))["cpu"] == 3


def test_first_valid_copy_counts_when_an_earlier_copy_was_invalid() -> None:
    bad = vm("created", "v1", 10, cpu=-1, id_="x")
    good = vm("created", "v1", 10, cpu=1, id_="x")
    df = parse_records([rec(bad), rec(good)])
    assert df.attrs["invalid_count"] == 1
    assert tenant_usage(usage(df))["cpu"] == 1


def test_scope_rolls_up_user_project_tenant_without_collisions() -> None:
    u = run(
        vm("created", "v1", 1, cpu=1, user_id="alice", project_id="web"),
        vm("created", "v2", 1, cpu=2, user_id="alice", project_id="db"),
        vm("created", "v3", 1, cpu=4, user_id="bob", project_id="web"),
        vm("created", "v4", 1, cpu=8, user_id="acme"),  # a user named like its tenant
        vm("created", "v5", 1, cpu=16, project_id="web"),
        vm("created", "v6", 1, cpu=32, tenant="globex", user_id="alice", project_id="web"),
    )
    cpu = {k[:3]: v for k, v in u.items() if k[3] == "cpu"}
    assert cpu == {
        ("acme", "tenant", "acme"): 31,
        ("acme", "project", "web"): 21,
        ("acme", "project", "db"): 2,
        ("acme", "user", "alice"): 3,
        ("acme", "user", "bob"): 4,
        ("acme", "user", "acme"): 8,
        ("globex", "tenant", "globex"): 32,
        ("globex", "project", "web"): 32,
        ("globex", "user", "alice"): 32,
    }
    assert (
        system_totals(
            parse_records([rec(vm("created", "v", 1, cpu=1, tenant=t)) for t in ("a", "b", "c")])
        )["cpu"]
        == 3
    )


def test_scope_follows_the_newest_event() -> None:
    u = run(
        vm("created", "v1", 1, user_id="alice", project_id="web"),
        vm("resized", "v1", 2, cpu=3, user_id="bob", project_id="web"),
    )
    assert ("acme", "user", "alice", "cpu") not in u
    assert u[("acme", "user", "bob", "cpu")] == 3


def test_usage_reported_generic_allocation_and_release() -> None:
    def rep(rid: str, t: float, **kw: Any) -> dict:
        return envelope("usage.reported", {"tenant_id": "acme", "resource_id": rid, **kw}, t)

    u = run(
        rep("lic-1", 1, resources={"licenses": 2, "cpu": D("0.5")}),
        rep("lic-2", 1, resources={"licenses": 1}),
        rep("lic-2", 2, released=True),
        rep("lic-3", 3, released=True, resources={"licenses": 9}),
        rep("lic-3", 1, resources={"licenses": 9}),
    )
    assert tenant_usage(u) == {"licenses": 2, "cpu": D("0.5")}


def test_exact_arithmetic_no_float_drift() -> None:
    events = [vm("created", f"v{i}", 1, cpu=D("0.1"), memory=1) for i in range(30)]
    events += [vm("deleted", f"v{i}", 2) for i in range(10)]
    u = run(*events)
    assert tenant_usage(u)["cpu"] == D("2.0")
    assert str(tenant_usage(u)["cpu"].normalize()) == "2"


def test_tenant_deleted_releases_everything_before_it() -> None:
    cmd = envelope("tenant.deleted", {"actor": "ops", "tenant_id": "acme"}, 50)
    u = run(
        vm("created", "v1", 10),
        vm("created", "v2", 10, tenant="globex"),
        cmd,
        vm("created", "v3", 60, cpu=1),
    )
    assert tenant_usage(u) == {"cpu": 1, "memory": 4096, "instances": 1}
    assert tenant_usage(u, "globex")["instances"] == 1


# --------------------------------------------------------------------------------------------
# inventory reconciliation
# --------------------------------------------------------------------------------------------


def inventory(t: float, as_of: float, instances: list[dict], system: str = "nova") -> dict:
    data = {
        "tenant_id": "acme",
        "source_system": system,
        "as_of": iso(as_of),
        "instances": instances,
    }
    return envelope("inventory.reported", data, t, source=f"{system}/inventory")


def test_inventory_releases_ghost_and_corrects_others() -> None:
    listed = [
        {"resource_id": "v2", "kind": "vm", "resources": {"cpu": 4, "memory": 1024}},
        {
            "resource_id": "v9",
            "kind": "vm",
            "project_id": "web",
            "resources": {"cpu": 1, "memory": 256},
        },
    ]
    events = [
        vm("created", "ghost", 10),  # its delete was lost
        vm("created", "v2", 10, cpu=2),  # inventory says 4 cpu
        vm("created", "late", 150),  # after as_of: the inventory cannot know it
        vm("created", "other", 10, source="ironic/x"),  # another source system
        envelope(
            "volume.created",
            {"tenant_id": "acme", "volume_id": "d1", "size_gb": 5},
            10,
            source="cinder/api",
        ),
        inventory(101, 100, listed),
    ]
    u = run(*events)
    assert tenant_usage(u) == {
        "cpu": D(2 + 4 + 1 + 2),  # late + v2 + v9 + other
        "memory": D(4096 + 1024 + 256 + 4096),
        "instances": D(4),  # v9 created by the inventory, with the implied count
        "storage": D(5),
        "volumes": D(1),
    }
    assert u[("acme", "project", "web", "cpu")] == 1
    states = instance_states(parse_records([rec(e) for e in events])).set_index("inst_id")
    assert bool(states.loc["ghost", "released"])
    assert states.loc["ghost", "decided_by"].startswith("inventory:")
    assert states.loc["late", "decided_by"] == events[2]["id"]


def test_inventory_at_equal_time_wins_and_later_events_win_over_it() -> None:
    u = run(vm("created", "v1", 100), inventory(101, 100, []))
    assert tenant_usage(u) == {}
    u = run(inventory(101, 100, []), vm("created", "v1", 10), vm("resized", "v1", 120, cpu=1))
    assert tenant_usage(u)["cpu"] == 1


def test_inventories_apply_in_as_of_order() -> None:
    listed = [{"resource_id": "v1", "kind": "vm", "resources": {"cpu": 3, "memory": 1}}]
    # the later inventory (as_of 200) lists v1; the earlier one (as_of 100) does not
    u = run(vm("created", "v1", 10), inventory(202, 200, listed), inventory(101, 100, []))
    assert tenant_usage(u) == {"cpu": 3, "memory": 1, "instances": 1}


# --------------------------------------------------------------------------------------------
# network gauges
# --------------------------------------------------------------------------------------------


def sample(iface: str, t: float, bw_in: Any, tenant: str = "acme", **kw: Any) -> dict:
    data = {
        "tenant_id": tenant,
        "interface_id": iface,
        "bandwidth_in": bw_in,
        "bandwidth_out": 1,
        "connections": 2,
        **kw,
    }
    return envelope("network.sampled", data, t)


def test_gauges_latest_sample_within_ttl_of_the_watermark() -> None:
    events = [
        sample("eth0", 10, 100),
        sample("eth0", 1000, 7, user_id="alice"),  # the latest sample of eth0
        sample("eth1", 600, 50),  # 400 s older than acme's watermark (1000): expired
        sample("eth2", 700, 5),  # exactly 300 s: still counts
        sample("eth9", 2000, 1, tenant="globex"),
    ]
    df = parse_records([rec(e) for e in events])
    assert watermark(df, "tenant") == {"acme": T0 + 1000 * 10**6, "globex": T0 + 2000 * 10**6}
    u = usage(df)
    assert tenant_usage(u) == {"bandwidth_in": 12, "bandwidth_out": 2, "connections": 4}
    assert u[("acme", "user", "alice", "bandwidth_in")] == 7
    # against the global watermark (2000) every acme sample has expired
    assert tenant_usage(usage(df, watermark_scope="global")) == {}
    assert tenant_usage(usage(df, include_gauges=False)) == {}
    # an explicit watermark only moves the TTL cut-off (350 s): eth0 (at 1000), eth1, eth2 count
    assert tenant_usage(usage(df, watermark_us=T0 + 650 * 10**6))["bandwidth_in"] == 62


# --------------------------------------------------------------------------------------------
# api.requests windows
# --------------------------------------------------------------------------------------------


def api(t: float, count: int, **kw: Any) -> dict:
    return envelope("api.requests", {"tenant_id": "acme", "count": count, **kw}, t)


def test_api_request_windows_are_utc_aligned_and_deduplicated() -> None:
    dup = api(59.999, 1, user_id="u1", project_id="p1")
    events = [
        api(0, 5, user_id="u1", project_id="p1"),
        dup,
        dup,
        api(60, 2),
        api(3600, 10),
        api(-1, 100),  # 2026-10-31T23:59:59Z: the previous day and month
    ]
    df = parse_records([rec(e) for e in events])
    assert api_requests(df, "minute") == {
        ("acme", "tenant", "acme", "2026-11-01T00:00:00Z"): 6,
        ("acme", "project", "p1", "2026-11-01T00:00:00Z"): 6,
        ("acme", "user", "u1", "2026-11-01T00:00:00Z"): 6,
        ("acme", "tenant", "acme", "2026-11-01T00:01:00Z"): 2,
        ("acme", "tenant", "acme", "2026-11-01T01:00:00Z"): 10,
        ("acme", "tenant", "acme", "2026-10-31T23:59:00Z"): 100,
    }
    hour = api_requests(df, "hour")
    assert hour[("acme", "tenant", "acme", "2026-11-01T00:00:00Z")] == 8
    day = api_requests(df, "day")
    assert day[("acme", "tenant", "acme", "2026-11-01T00:00:00Z")] == 18
    assert day[("acme", "tenant", "acme", "2026-10-31T00:00:00Z")] == 100
    month = api_requests(df, "month")
    assert month[("acme", "tenant", "acme", "2026-11-01T00:00:00Z")] == 18
    assert month[("acme", "tenant", "acme", "2026-10-01T00:00:00Z")] == 100
    assert usage(df) == {}  # api requests are not allocation


def test_api_requests_older_than_lateness_are_dropped() -> None:
    week = 7 * 86_400
    events = [api(week + 10, 1), api(9, 5), api(10, 7), api(9, 9, tenant_id="globex")]
    df = parse_records([rec(e) for e in events])
    per_day = api_requests(df, "day")
    first_day = "2026-11-01T00:00:00Z"
    assert per_day[("acme", "tenant", "acme", first_day)] == 7  # 9 s is late, 10 s is not
    assert per_day[("globex", "tenant", "globex", first_day)] == 9  # its own watermark
    assert ("globex", "tenant", "globex", first_day) not in api_requests(
        df, "day", watermark_scope="global"
    )
    assert api_requests(df, "day", lateness_s=None)[("acme", "tenant", "acme", first_day)] == 12


# --------------------------------------------------------------------------------------------
# quotas and expected violations
# --------------------------------------------------------------------------------------------


def cmd(type_: str, t: float = 1, **data: Any) -> tuple:
    return rec(envelope(type_, {"actor": "tests", **data}, t, source="tests/admin"))


def test_template_expansion_and_quota_commands_in_log_order() -> None:
    ent = {"tenant_id": "acme", "level": "tenant", "entity_id": "acme"}
    records = [
        cmd("template.applied", template="free", **ent),
        cmd(
            "template.applied",
            template="enterprise",
            tenant_id="acme",
            level="project",
            entity_id="web",
        ),
        cmd("template.applied", template="growth", tenant_id="acme", level="user", entity_id="al"),
        cmd("quota.set", resource_type="cpu", limit=3, **ent),
        cmd("quota.deleted", resource_type="instances", **ent),
        cmd(
            "template.defined",
            name="tiny",
            description="d",
            quotas=[{"resource_type": "gpu", "limit": 0}],
        ),
        cmd("template.applied", template="tiny", tenant_id="acme", level="user", entity_id="bo"),
        cmd("template.applied", template="nope", tenant_id="acme", level="user", entity_id="cy"),
        cmd("quota.set", level="system", entity_id="system", resource_type="cpu", limit=10),
        cmd("quota.set", resource_type="memory", limit=5, burst_limit=4, **ent),  # invalid
    ]
    df = parse_records(records)
    assert df.attrs["invalid_reasons"] == {"invalid_field": 1}
    q = quotas(df)
    assert q[("acme", "tenant", "acme", "cpu")] | {"command_id": None} == {
        "limit": 3,
        "limit_type": "hard",
        "burst_limit": None,
        "burst_seconds": None,
        "grace_seconds": None,
        "window": None,
        "status": "active",
        "enforcement_action": "deny",
        "command_id": None,
    }
    mem = q[("acme", "tenant", "acme", "memory")]
    assert (mem["limit"], mem["burst_limit"], mem["burst_seconds"]) == (4096, 6144, 3600)
    assert q[("acme", "tenant", "acme", "storage")]["limit"] == 10
    assert ("acme", "tenant", "acme", "instances") not in q
    ent_mem = q[("acme", "project", "web", "memory")]
    assert (ent_mem["limit"], ent_mem["burst_limit"]) == (1024 * 1024, 1536 * 1024)
    assert ent_mem["limit_type"] == "soft" and ent_mem["grace_seconds"] == 86_400
    assert q[("acme", "project", "web", "storage")]["limit"] == 10 * 1024
    assert q[("acme", "user", "al", "storage")]["limit"] == 2048
    assert q[("acme", "user", "al", "load_balancers")]["limit"] == 10
    assert {k for k in q if k[2] == "al"} == {
        ("acme", "user", "al", r["resource_type"]) for r in TIERS["growth"]["quotas"]
    }
    assert q[("acme", "user", "bo", "gpu")]["limit"] == 0
    assert not any(k[2] == "cy" for k in q)
    assert q[("system", "system", "system", "cpu")]["limit"] == 10


def test_tenant_deleted_removes_its_quotas() -> None:
    df = parse_records(
        [
            cmd(
                "quota.set",
                tenant_id="acme",
                level="user",
                entity_id="u",
                resource_type="cpu",
                limit=1,
            ),
            cmd(
                "quota.set",
                tenant_id="globex",
                level="tenant",
                entity_id="globex",
                resource_type="cpu",
                limit=1,
            ),
            cmd("tenant.deleted", tenant_id="acme"),
        ]
    )
    assert list(quotas(df)) == [("globex", "tenant", "globex", "cpu")]


def test_expected_open_over_limit() -> None:
    u = {
        ("acme", "tenant", "acme", "cpu"): D(5),
        ("acme", "tenant", "acme", "memory"): D(4096),
        ("acme", "user", "al", "cpu"): D(3),
        ("globex", "tenant", "globex", "cpu"): D(6),
    }

    def quota(limit: int, **kw: Any) -> dict[str, Any]:
        return {
            "limit": D(limit),
            "limit_type": "hard",
            "burst_limit": None,
            "status": "active",
            **kw,
        }

    q = {
        ("acme", "tenant", "acme", "cpu"): quota(4),  # over
        ("acme", "tenant", "acme", "memory"): quota(4096),  # exactly at the limit: not a violation
        ("acme", "user", "al", "cpu"): quota(2, burst_limit=D(8)),  # burst applies
        ("acme", "user", "bo", "cpu"): quota(0),  # no usage
        ("globex", "tenant", "globex", "cpu"): quota(1, limit_type="soft"),
        ("acme", "project", "p", "gpu"): quota(0, status="suspended"),
        ("system", "system", "system", "cpu"): quota(10),  # 11 in all
    }
    assert expected_open_over_limit(u, q) == {
        ("acme", "tenant", "acme", "cpu"),
        ("system", "system", "system", "cpu"),
    }


def test_empty_log() -> None:
    df = parse_records([])
    assert df.attrs["invalid_count"] == 0
    assert usage(df) == {} and system_totals(df) == {} and quotas(df) == {}
    assert api_requests(df, "month") == {}
    assert watermark(df, "global") is None


def test_ten_thousand_events_end_to_end() -> None:
    rng = random.Random(1)
    events = []
    for i in range(10_000):
        t = rng.uniform(0, 3600)
        kind = rng.choice(["created", "resized", "deleted"])
        events.append(vm(kind, f"v{i % 500}", t, tenant=f"t{i % 7}", user_id=f"u{i % 11}"))
    df = parse_records([rec(e) for e in events])
    u = usage(df)
    # the reference agrees with a plain per-instance replay
    newest: dict = {}
    for e in events:
        d = e["data"]
        k = (d["tenant_id"], d["vm_id"])
        order = (parse_time_us(e["time"]), e["type"] == "vm.deleted", e["source"], e["id"])
        if k not in newest or order > newest[k][0]:
            newest[k] = (order, e)
    expected: dict = {}
    for (tenant, _vm), (_o, e) in newest.items():
        if e["type"] != "vm.deleted":
            expected[tenant] = expected.get(tenant, 0) + 1
    assert {k[0]: v for k, v in u.items() if k[1] == "tenant" and k[3] == "instances"} == expected
