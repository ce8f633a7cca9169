"""Token bucket: exact fractional refill, capacity, one bucket per entity."""

from __future__ import annotations

import pytest

from novaquota.streams.quota import (
    Bucket,
    RateLimitSet,
    bucket_of,
    new_bucket,
    refill,
    store_bucket,
    try_take,
)

from .test_quota_support import M, S, World, at


def test_fractional_rate_refills_exactly_under_steady_polling() -> None:
    # 0.3 tokens/s polled every millisecond: each poll adds 300 micro-tokens; one token every
    # 3.33 s. The seed truncated per-poll fractions and stopped refilling under steady load.
    b = Bucket(300_000, 5 * M, 0, 0, 0)  # empty, with room to spare (never full)
    taken = []
    for ms in range(1, 100_001):
        ok, b = try_take(b, 1 * M, ms * 1_000)
        if ok:
            taken.append(ms)
    assert len(taken) == 30  # 100 s x 0.3 tokens/s, exactly
    assert taken[:3] == [3_334, 6_667, 10_000] and taken[-1] == 100_000
    assert b.tokens_micros == 0


def test_full_bucket_drops_overflow() -> None:
    b = Bucket(300_000, 1 * M, 0, 0, 0)
    ok, b = try_take(b, 1 * M, 3_334_000)  # 1_000_200 refilled, capped at capacity 1_000_000
    assert ok and b.tokens_micros == 0


def test_sub_micro_token_refill_is_carried_not_lost() -> None:
    b = Bucket(1, 10, 0, 0, 0)  # one micro-token per second, polled every 7 microseconds
    for us in range(1, 3 * S + 1, 7):
        b = refill(b, us)
    b = refill(b, 3 * S)
    assert b.tokens_micros == 3 and b.remainder == 0


def test_capacity_is_never_exceeded_and_clock_going_back_adds_nothing() -> None:
    b = new_bucket(5 * M, 2 * M, 0)
    b = refill(b, 3600 * S)
    assert b.tokens_micros == 2 * M
    ok, b = try_take(b, 2 * M, 3600 * S)
    assert ok and b.tokens_micros == 0
    ok, b2 = try_take(b, 1, 3599 * S)
    assert not ok and b2.tokens_micros == 0
    ok, b = try_take(b, 1 * M, 3600 * S + 200_000)  # 0.2 s x 5/s = 1 token
    assert ok and b.tokens_micros == 0
    with pytest.raises(ValueError):
        try_take(b, -1, 0)


def test_each_entity_has_its_own_bucket() -> None:
    w = World()
    for p in ("p1", "p2"):
        w.do(
            RateLimitSet(
                level="project",
                entity_id=p,
                tenant_id="t1",
                rate_per_second_micros=1 * M,
                burst_micros=1 * M,
                time_us=at(0),
                source="api",
                event_id=f"rl-{p}",
            )
        )
    now = at(1)
    b1 = bucket_of(w.st, "project", "p1", now)
    assert b1 is not None
    ok, b1 = try_take(b1, 1 * M, now)
    store_bucket(w.st, "project", "p1", b1)
    assert ok
    after1 = bucket_of(w.st, "project", "p1", now)
    assert after1 is not None and not try_take(after1, 1 * M, now)[0]
    b2 = bucket_of(w.st, "project", "p2", now)
    assert b2 is not None and try_take(b2, 1 * M, now)[0]
    assert bucket_of(w.st, "project", "p3", now) is None
