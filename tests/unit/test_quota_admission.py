"""Admission grants and token buckets in the pure core (contract section 6)."""

from __future__ import annotations

import random

from novaquota.streams.quota import (
    AdmissionRequest,
    RateLimitSet,
    Scope,
    TenantState,
    check,
    decide_admission,
    grant_of,
    needs_agent,
    next_grant_expiry,
    release_grant,
)

from .test_quota_support import M, S, World, at, audits

_n = 0


def req(
    t: float,
    *,
    reserve: bool = True,
    scope: Scope | None = None,
    ttl: float = 60,
    idem: str | None = None,
    resource_id: str | None = None,
    **resources: float,
) -> AdmissionRequest:
    global _n
    _n += 1
    return AdmissionRequest(
        request_id=f"r{_n}",
        scope=scope or Scope("t1", "p1", "u1"),
        resources={r: round(a * M) for r, a in resources.items()},
        now_us=at(t),
        reserve=reserve,
        ttl_us=round(ttl * S),
        resource_id=resource_id,
        idempotency_key=idem,
        actor="svc",
    )


def test_n_requests_against_capacity_for_k_yield_exactly_k_grants() -> None:
    w = World()
    w.quota("cpu", 10)
    w.alloc("vm0", 0, cpu=3)  # 7 cores left: room for 3 requests of 2
    answers = [decide_admission(w.st, req(1, cpu=2))[0] for _ in range(100)]
    granted = [a for a in answers if a.allowed]
    assert len(granted) == 3
    assert len({a.reservation_id for a in granted}) == 3
    denied = next(a for a in answers if not a.allowed)
    assert "exceeds available 1" in denied.reason and "reserved 6" in denied.reason
    [c] = [c for c in denied.checks if c.level == "tenant"]
    assert (c.used, c.reserved, c.available) == (3 * M, 6 * M, 1 * M)
    # a read-only check sees the grants as reserved, too
    assert check(w.st, Scope("t1"), {"cpu": 2 * M}, at(1)).allowed is False
    assert check(w.st, Scope("t1"), {"cpu": 1 * M}, at(1)).allowed is True


def test_grants_count_for_their_own_user_project_and_tenant_only() -> None:
    w = World()
    w.quota("cpu", 4, level="project", entity="p1")
    w.quota("cpu", 4, level="project", entity="p2")
    w.quota("cpu", 6)
    a, _ = decide_admission(w.st, req(1, scope=Scope("t1", "p1", "u1"), cpu=4))
    assert a.allowed
    assert not decide_admission(w.st, req(1, scope=Scope("t1", "p1", "u2"), cpu=1))[0].allowed
    # project p2 has its own 4, but the tenant has only 2 left
    b, _ = decide_admission(w.st, req(1, scope=Scope("t1", "p2", None), cpu=3))
    assert not b.allowed and "tenant t1" in b.reason
    assert decide_admission(w.st, req(1, scope=Scope("t1", "p2", None), cpu=2))[0].allowed


def test_grant_is_audited_and_converted_by_its_instance_in_the_same_update() -> None:
    w = World()
    w.quota("cpu", 10)
    a, out = decide_admission(w.st, req(1, resource_id="vm-7", cpu=8))
    [g] = audits(list(out), "audit.reservation_granted")
    assert g.subject == f"grant/{a.reservation_id}" and g.after["resources"] == {"cpu": 8 * M}
    assert not check(w.st, Scope("t1"), {"cpu": 3 * M}, at(2)).allowed
    conv = w.alloc("vm:vm-7", 2, cpu=8)
    [c] = audits(conv, "audit.reservation_released")
    assert c.subject == f"grant/{a.reservation_id}"
    assert w.st.grants == {} and w.used() == 8 * M
    # usage 8, nothing reserved: 2 left, not 2 - 8
    assert check(w.st, Scope("t1"), {"cpu": 2 * M}, at(3)).allowed
    assert not check(w.st, Scope("t1"), {"cpu": 3 * M}, at(3)).allowed


def test_ttl_expiry_stops_counting_and_releases_only_after_the_ttl() -> None:
    w = World()
    w.quota("cpu", 10)
    a, _ = decide_admission(w.st, req(0, ttl=30, cpu=10))
    assert a.expires_us == at(30) and next_grant_expiry(w.st) == at(30)
    assert not check(w.st, Scope("t1"), {"cpu": 1 * M}, at(29)).allowed
    assert check(w.st, Scope("t1"), {"cpu": 1 * M}, at(30)).allowed  # expired: not counted
    gid = a.reservation_id
    assert gid is not None
    assert release_grant(w.st, gid, "expired", now_us=at(29), actor="ttl", cause="x") == (None, [])
    grant, out = release_grant(w.st, gid, "expired", now_us=at(31), actor="ttl", cause="x")
    assert grant is not None and grant.resources == {"cpu": 10 * M}
    assert [o.action for o in out] == ["audit.reservation_expired"]
    assert grant_of(w.st, gid) is None and next_grant_expiry(w.st) is None


def test_release_by_client_is_audited_and_unknown_ids_change_nothing() -> None:
    w = World()
    w.quota("cpu", 10)
    a, _ = decide_admission(w.st, req(0, cpu=10))
    assert a.reservation_id is not None
    assert release_grant(w.st, "nope", "released", now_us=at(1), actor="a", cause="c") == (
        None,
        [],
    )
    _, out = release_grant(w.st, a.reservation_id, "released", now_us=at(1), actor="a", cause="c")
    assert [o.action for o in out] == ["audit.reservation_released"]
    assert check(w.st, Scope("t1"), {"cpu": 10 * M}, at(1)).allowed


def test_repeated_idempotency_key_gets_the_same_grant_and_holds_once() -> None:
    w = World()
    w.quota("cpu", 10)
    first, out1 = decide_admission(w.st, req(1, idem="k1", cpu=6))
    again, out2 = decide_admission(w.st, req(2, idem="k1", cpu=6))
    assert first.allowed and again.allowed and again.repeated
    assert again.reservation_id == first.reservation_id
    assert out1 and not out2  # audited once
    assert len(w.st.grants) == 1
    # a denial is repeated as well, even after capacity frees up, for the same key
    denied, _ = decide_admission(w.st, req(3, idem="k2", cpu=6))
    assert not denied.allowed
    assert first.reservation_id is not None
    release_grant(w.st, first.reservation_id, "released", now_us=at(4), actor="a", cause="c")
    assert not decide_admission(w.st, req(5, idem="k2", cpu=6))[0].allowed
    assert decide_admission(w.st, req(5, idem="k3", cpu=6))[0].allowed


def test_without_reserve_nothing_is_held() -> None:
    w = World()
    w.quota("cpu", 10)
    for _ in range(5):
        a, out = decide_admission(w.st, req(1, reserve=False, cpu=10))
        assert a.allowed and a.reservation_id is None and out == []
    assert w.st.grants == {}


def _rate(w: World, rate: float, burst: float, level: str = "tenant", entity: str = "t1") -> None:
    w.do(
        RateLimitSet(
            level=level,
            entity_id=entity,
            tenant_id="t1",
            rate_per_second_micros=round(rate * M),
            burst_micros=round(burst * M),
            time_us=at(0),
            source="api",
            event_id=w.next_id(),
            actor="admin",
        )
    )


def test_token_bucket_refills_under_steady_load_and_never_exceeds_capacity() -> None:
    w = World()
    _rate(w, 10, 20)
    assert needs_agent(w.st, Scope("t1"), {"api_requests": M})
    assert not needs_agent(w.st, Scope("t1"), {"cpu": M})
    # a full bucket of 20, then steady load at exactly the rate for 100 s: all admitted
    burst = [decide_admission(w.st, req(1, reserve=False, api_requests=1))[0] for _ in range(21)]
    assert [a.allowed for a in burst].count(True) == 20
    admitted = 0
    for i in range(1, 1001):  # one request every 0.1 s
        admitted += decide_admission(w.st, req(1 + i / 10, reserve=False, api_requests=1))[
            0
        ].allowed
    assert admitted == 1000
    # a long pause refills to capacity, not beyond
    answers = [
        decide_admission(w.st, req(5000, reserve=False, api_requests=1))[0] for _ in range(25)
    ]
    assert [a.allowed for a in answers].count(True) == 20
    last = answers[-1]
    assert "rate limit" in last.reason and not last.allowed


def test_fractional_refill_is_kept() -> None:
    w = World()
    _rate(w, 0.3, 5)  # 0.3 tokens/s: one token every 3.33 s
    drained = [decide_admission(w.st, req(0, reserve=False, api_requests=1))[0] for _ in range(6)]
    assert [a.allowed for a in drained].count(True) == 5
    t, admitted = 0.0, 0
    rng = random.Random(3)
    while t < 1000:
        t += rng.uniform(0.000001, 0.5)  # polled at uneven, often tiny intervals
        admitted += decide_admission(w.st, req(t, reserve=False, api_requests=1))[0].allowed
    # the bucket never fills, so every fraction of a token counts: exactly floor(0.3 x t)
    assert admitted == int(0.3 * t)


def test_buckets_are_per_entity_and_every_level_must_allow() -> None:
    w = World()
    _rate(w, 1, 5)
    _rate(w, 1, 2, level="project", entity="p1")
    p1 = Scope("t1", "p1", None)
    p2 = Scope("t1", "p2", None)
    assert [
        decide_admission(w.st, req(0, reserve=False, scope=p1, api_requests=1))[0].allowed
        for _ in range(3)
    ] == [True, True, False]
    # p2 has no bucket of its own; the tenant's has 3 tokens left
    assert [
        decide_admission(w.st, req(0, reserve=False, scope=p2, api_requests=1))[0].allowed
        for _ in range(4)
    ] == [True, True, True, False]
    other = World("t2")
    assert decide_admission(other.st, req(0, reserve=False, scope=Scope("t2"), api_requests=1))[
        0
    ].allowed  # no rate limit there: buckets are not shared between tenants


def test_grants_survive_a_storage_round_trip() -> None:
    w = World()
    w.quota("cpu", 10)
    a, _ = decide_admission(w.st, req(1, idem="k", resource_id="vm-1", cpu=4))
    st = TenantState.from_bytes(w.st.to_bytes())
    assert st.grants == w.st.grants and st.admissions == w.st.admissions
    assert a.reservation_id in st.grants
