"""The one time parser (``schemas.common.parse_time_us``) and what the HTTP views make of it:
every bad time is a 400 with the error body, never a 500."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novaquota.projections.exceptions import QueryError
from novaquota.projections.views import parse_time
from novaquota.schemas.common import datetime_to_us, format_time_us, parse_time_us
from tests.unit.test_projections_http import get

EDGES = [
    "inf", "-inf", "Infinity", "nan", "NaN", "1e400", "1e5", "0x10", "", " ", "1.1234567",
    "99999999999999999999", "-99999999999999999999", "253402300800", "-62135596801",
    "2026-11-02", "2026-11-02T00:00:00", "2026-11-02 00:00", "10000-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2026-02-30T00:00:00Z",
    "2026-11-02T24:00:00Z", "2026-11-02T00:00:00+25:00", "\x00",
    "\uff12\uff10\uff12\uff16-11-02T00:00:00Z",  # full-width digits
]  # fmt: skip


@pytest.mark.parametrize("text", EDGES)
def test_edge_values_are_refused_with_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time_us(text, epoch_seconds=True)
    with pytest.raises(QueryError) as caught:
        parse_time(text or " ", "start")
    assert caught.value.status == 400 and caught.value.code == "invalid_time"


@pytest.mark.parametrize(
    ("text", "time_us"),
    [
        ("2026-11-02T00:00:00Z", 1_793_577_600_000_000),
        ("2026-11-02t00:00:00z", 1_793_577_600_000_000),
        ("2026-11-02T01:00:00+01:00", 1_793_577_600_000_000),
        ("2026-11-02T00:00:00.5Z", 1_793_577_600_500_000),
        ("2026-11-02T00:00:00.123456789Z", 1_793_577_600_123_456),
        ("1793577600", 1_793_577_600_000_000),
        ("1793577600.000001", 1_793_577_600_000_001),
        ("-1.5", -1_500_000),
        ("+0", 0),
        ("-62135596800", datetime_to_us(datetime(1, 1, 1, tzinfo=UTC))),
        ("253402300799.999999", datetime_to_us(datetime.max.replace(tzinfo=UTC))),
    ],
)
def test_good_values(text: str, time_us: int) -> None:
    assert parse_time_us(text, epoch_seconds=True) == time_us


def test_epoch_seconds_only_where_the_caller_allows_them() -> None:
    with pytest.raises(ValueError):
        parse_time_us("1793577600")
    assert parse_time(None, "start") is None and parse_time("", "end") is None


_TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(_TIMES)
def test_rfc3339_round_trip(at: datetime) -> None:
    time_us = datetime_to_us(at)
    assert parse_time_us(format_time_us(time_us)) == time_us


@given(_TIMES, st.integers(min_value=-23 * 60, max_value=23 * 60))
def test_offsets_name_the_same_instant(at: datetime, minutes: int) -> None:
    local = at.astimezone(timezone(timedelta(minutes=minutes)))
    assert parse_time_us(local.isoformat()) == datetime_to_us(at)


_MIN_US = datetime_to_us(datetime.min.replace(tzinfo=UTC))
_MAX_US = datetime_to_us(datetime.max.replace(tzinfo=UTC))


@given(st.integers(min_value=-(10**15), max_value=10**15), st.integers(0, 999_999))
def test_epoch_seconds_are_exact_within_years_1_to_9999(seconds: int, micros: int) -> None:
    text = f"{seconds}.{micros:06d}"
    magnitude = abs(seconds) * 1_000_000 + micros
    expected = -magnitude if text.startswith("-") else magnitude
    if _MIN_US <= expected <= _MAX_US:
        assert parse_time_us(text, epoch_seconds=True) == expected
    else:
        with pytest.raises(ValueError):
            parse_time_us(text, epoch_seconds=True)


@given(st.text(max_size=40))
def test_any_text_is_a_time_or_a_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_time_us(text, epoch_seconds=True)


def test_history_with_an_unparseable_or_out_of_range_time_is_a_400() -> None:
    answers = get(
        "/api/v1/quotas/usage/t/history?start=inf",
        "/api/v1/quotas/usage/t/history?end=nan",
        "/api/v1/quotas/usage/t/history?start=-86400",
        "/api/v1/quotas/usage/t/history?start=9999999999&end=9999999999.5",
        "/api/v1/quotas/analytics/t1?start=0001-01-01T00:00:00Z",
        "/api/v1/quotas/analytics/t1?end=99999999999999",
    )
    for status, body in answers:
        assert status == 400, body
        assert set(body["error"]) == {"code", "message"}
    assert [body["error"]["code"] for _, body in answers[:2]] == ["invalid_time"] * 2
