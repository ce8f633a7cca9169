"""The seeded workload generator: deterministic, valid, realistic in the ways it promises."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest

from novaquota.ops.workload import TIERS, Workload, WorkloadSpec, bulk_load, is_command, to_jsonl
from novaquota.schemas.codec import decode
from novaquota.schemas.templates import BUILTIN_TEMPLATES


def _bytes(spec: WorkloadSpec, n: int) -> bytes:
    wl = Workload(spec)
    return b"".join(to_jsonl(e) for e in [*wl.setup_commands(), *wl.events(n)])


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    spec = WorkloadSpec(tenants=40, seed=5)
    assert _bytes(spec, 3000) == _bytes(spec, 3000)
    assert _bytes(spec, 3000) != _bytes(WorkloadSpec(tenants=40, seed=6), 3000)


def test_every_message_is_accepted_by_the_codec() -> None:
    wl = Workload(WorkloadSpec(tenants=60, seed=1))
    now_ms = int(time.time() * 1000)
    kinds: Counter[str] = Counter()
    for ev in [*wl.setup_commands(), *wl.events(5000)]:
        decoded = decode(to_jsonl(ev).strip(), None, record_timestamp_ms=now_ms)
        kinds[decoded.kind] += 1
        assert (decoded.kind == "command") == is_command(ev)
    assert kinds["command"] == len(
        list(Workload(WorkloadSpec(tenants=60, seed=1)).setup_commands())
    )
    assert sum(kinds.values()) - kinds["command"] == 5000


def test_all_tiers_and_all_levels_are_present() -> None:
    wl = Workload(WorkloadSpec(tenants=12, seed=2))
    cmds = list(wl.setup_commands())
    tiers = {c["data"]["template"] for c in cmds if c["type"] == "template.applied"}
    assert tiers == set(TIERS)
    levels = {c["data"]["level"] for c in cmds}
    assert levels == {"system", "tenant", "project", "user"}
    expanded = sum(
        len(BUILTIN_TEMPLATES[c["data"]["template"]].quotas)
        for c in cmds
        if c["type"] == "template.applied"
    )
    plain = sum(1 for c in cmds if c["type"] == "quota.set")
    assert wl.quota_count() == expanded + plain


def test_event_mix_covers_the_promised_types() -> None:
    wl = Workload(WorkloadSpec(tenants=100, seed=3))
    types = Counter(e["type"] for e in wl.events(20_000))
    for t in (
        "vm.created",
        "vm.resized",
        "vm.deleted",
        "volume.created",
        "volume.resized",
        "volume.deleted",
        "snapshot.created",
        "snapshot.deleted",
        "network.sampled",
        "api.requests",
    ):
        assert types[t] > 0, t


def test_event_time_is_increasing_and_seasonal() -> None:
    day = 3600.0
    spec = WorkloadSpec(tenants=50, seed=4, events_per_second=20, seasonality=0.8, day_seconds=day)
    wl = Workload(spec)
    evs = list(wl.events_until(int((spec.start.timestamp() + 2 * day) * 1_000_000)))
    times = [e["time"] for e in evs]
    assert times == sorted(times)
    # events per hour-of-cycle bucket: the busy afternoon carries several times the night
    per_bucket: Counter[int] = Counter()
    for e in evs:
        t = datetime.strptime(e["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        per_bucket[int(((t.timestamp() - spec.start.timestamp()) % day) / day * 24)] += 1
    assert per_bucket[14] > 3 * per_bucket[2]
    assert abs(len(evs) - 20 * 2 * day) < 0.1 * 20 * 2 * day  # the mean rate holds


def _tenant_cpu(events: list[dict[str, object]]) -> dict[str, dict[str, int]]:
    """Peak tenant cpu per tenant, replaying allocations (vm_id -> cpu)."""
    held: dict[str, dict[str, int]] = defaultdict(dict)
    peak: dict[str, int] = defaultdict(int)
    for e in events:
        d = e["data"]
        assert isinstance(d, dict)
        t = d["tenant_id"]
        if e["type"] in ("vm.created", "vm.resized"):
            held[t][d["vm_id"]] = d["cpu"]
        elif e["type"] == "vm.deleted":
            held[t].pop(d["vm_id"], None)
        peak[t] = max(peak[t], sum(held[t].values()))
    return {"peak": dict(peak)}


def test_well_behaved_tenants_stay_within_limits_misbehaving_ones_do_not() -> None:
    wl = Workload(WorkloadSpec(tenants=200, seed=8, misbehaving=0.02))
    assert len(wl.misbehaving) == 4
    evs = list(wl.events(60_000))
    peak = _tenant_cpu(evs)["peak"]
    tier = {wl.tenant(i): wl.tier_of(i) for i in range(200)}
    bad = {wl.tenant(i) for i in wl.misbehaving}
    limit = {t: float(BUILTIN_TEMPLATES[tier[t]].quotas[0].limit) for t in tier}
    over = {t for t, p in peak.items() if p > limit[t]}
    assert over, "nobody hit a limit"
    assert over <= bad, sorted(over - bad)[:5]


def test_spec_rejects_bad_values() -> None:
    for kw in (
        {"tenants": 0},
        {"events_per_second": 0},
        {"seasonality": 1.5},
        {"misbehaving": -0.1},
        {"start": datetime(2026, 1, 1)},  # naive
    ):
        with pytest.raises(ValueError):
            WorkloadSpec(**kw)


def test_bulk_load_counts_exactly() -> None:
    cmds, events = bulk_load(25, 7, start=datetime(2026, 11, 1, tzinfo=UTC))
    evs = list(events)
    assert len(cmds) == 25 and len(evs) == 7
    assert (
        len(
            {
                (
                    c["data"]["tenant_id"],
                    c["data"]["level"],
                    c["data"]["entity_id"],
                    c["data"]["resource_type"],
                )
                for c in cmds
            }
        )
        == 25
    )
    assert len({e["data"]["vm_id"] for e in evs}) == 7
    now_ms = int(time.time() * 1000)
    for ev in [*cmds, *evs]:
        decode(to_jsonl(ev).strip(), None, record_timestamp_ms=now_ms)
    with pytest.raises(ValueError):
        bulk_load(-1, 0, start=datetime(2026, 11, 1, tzinfo=UTC))
