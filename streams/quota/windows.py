"""Tumbling windows aligned to UTC; a month is a calendar month.

Pure integer calendar arithmetic (H. Hinnant's civil-date algorithms), so no datetime, no floats.
"""

from __future__ import annotations

from typing import Final

from .units import SEC_US

__all__ = ["WINDOWS", "WINDOW_INDEX", "window_bounds", "window_start", "window_starts"]

WINDOWS: Final = ("minute", "hour", "day", "month")
WINDOW_INDEX: Final = {w: i for i, w in enumerate(WINDOWS)}

_MINUTE_US: Final = 60 * SEC_US
_HOUR_US: Final = 3_600 * SEC_US
_DAY_US: Final = 86_400 * SEC_US
_FIXED: Final = {"minute": _MINUTE_US, "hour": _HOUR_US, "day": _DAY_US}


def _civil_from_days(days: int) -> tuple[int, int]:
    """(year, month) of a day count since 1970-01-01."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1_460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month


def _days_from_civil(year: int, month: int) -> int:
    """Day count since 1970-01-01 of the first day of (year, month)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _month_bounds(t_us: int) -> tuple[int, int]:
    year, month = _civil_from_days(t_us // _DAY_US)
    nyear, nmonth = (year + 1, 1) if month == 12 else (year, month + 1)
    return _days_from_civil(year, month) * _DAY_US, _days_from_civil(nyear, nmonth) * _DAY_US


def window_bounds(window: str, t_us: int) -> tuple[int, int]:
    """[start, end) in microseconds of the window of kind ``window`` that contains ``t_us``."""
    size = _FIXED.get(window)
    if size is not None:
        start = t_us - t_us % size
        return start, start + size
    if window == "month":
        return _month_bounds(t_us)
    raise ValueError(f"unknown window {window!r}")


def window_start(window: str, t_us: int) -> int:
    return window_bounds(window, t_us)[0]


def window_starts(t_us: int) -> tuple[int, int, int, int]:
    """Starts of the minute, hour, day and month windows containing ``t_us`` (in WINDOWS order)."""
    return (
        t_us - t_us % _MINUTE_US,
        t_us - t_us % _HOUR_US,
        t_us - t_us % _DAY_US,
        _month_bounds(t_us)[0],
    )
