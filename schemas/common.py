"""Vocabulary shared by events, commands and outputs: levels, resource types, ids, timestamps.

Kept in one place so that a resource type or level added to the contract is added once, and the
JSON Schemas, the validators and the stream all agree on it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, NoReturn, get_args

from pydantic import AfterValidator, BeforeValidator, StringConstraints
from pydantic_core import PydanticCustomError

__all__ = [
    "EPOCH",
    "INTEGER_RESOURCES",
    "LEVELS",
    "RESOURCE_TYPES",
    "SYSTEM_TENANT",
    "WINDOWED_RESOURCES",
    "WINDOWS",
    "AlertKind",
    "EnforcementAction",
    "Id",
    "Level",
    "LimitType",
    "ResourceType",
    "Severity",
    "Status",
    "TenantId",
    "Timestamp",
    "ViolationKind",
    "Window",
    "datetime_to_us",
    "fail",
    "format_time_us",
    "parse_rfc3339",
    "parse_time_us",
    "shorten",
    "us_to_datetime",
]

Level = Literal["system", "tenant", "project", "user"]
LEVELS: Final[tuple[str, ...]] = get_args(Level)

ResourceType = Literal[
    "cpu",
    "memory",
    "gpu",
    "instances",
    "storage",
    "volumes",
    "snapshots",
    "backups",
    "bandwidth_in",
    "bandwidth_out",
    "connections",
    "load_balancers",
    "floating_ips",
    "api_requests",
    "cost",
]
RESOURCE_TYPES: Final[tuple[str, ...]] = get_args(ResourceType)
#: Counted things: a fraction of one is a producer bug, not a measurement.
INTEGER_RESOURCES: Final[frozenset[str]] = frozenset(
    {
        "instances",
        "volumes",
        "snapshots",
        "backups",
        "floating_ips",
        "load_balancers",
        "connections",
        "api_requests",
    }
)
#: Consumed per tumbling window rather than held by instances; their quotas need a ``window``.
WINDOWED_RESOURCES: Final[frozenset[str]] = frozenset({"api_requests", "cost"})

Window = Literal["minute", "hour", "day", "month"]
WINDOWS: Final[tuple[str, ...]] = get_args(Window)
LimitType = Literal["hard", "soft"]
Status = Literal["active", "suspended"]
EnforcementAction = Literal["deny", "warn", "throttle", "notify"]
Severity = Literal["info", "warning", "critical", "emergency"]
ViolationKind = Literal[
    "over_limit",
    "over_burst",
    "burst_expired",
    "grace_expired",
    "window_exceeded",
    "budget_exceeded",
]
AlertKind = Literal["threshold", "burst", "soft_limit", "cost", "forecast", "anomaly", "policy"]

SYSTEM_TENANT: Final = "system"
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)


def fail(reason: str, template: str, **ctx: Any) -> NoReturn:
    """Raise a validation error whose type is a decode reason code.

    ``ctx["field"]``, when given, names a sub-field (a dict key, or the field a model-level rule
    is about) that the codec appends to the error's location.
    """
    raise PydanticCustomError(reason, template, ctx)


def shorten(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _not_system(value: str) -> str:
    if value == SYSTEM_TENANT:
        fail("invalid_field", "'system' is a reserved tenant id")
    return value


#: A tenant that owns resources: any id except the reserved ``system``.
TenantId = Annotated[Id, AfterValidator(_not_system)]

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?P<tz>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


def parse_rfc3339(value: Any) -> datetime:
    """An RFC 3339 timestamp with an offset, as an aware UTC datetime.

    Stricter than pydantic's parser on purpose: no unix-seconds strings, no bare dates, no naive
    times; event time decides everything, so it must be unambiguous.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            fail("invalid_field", "must carry a timezone, got a naive datetime")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            fail("invalid_field", "out of range in UTC, got {value}", value=value.isoformat())
    if not isinstance(value, str):
        fail("invalid_field", "must be an RFC 3339 string, got {value}", value=shorten(value))
    match = _RFC3339.fullmatch(value)
    if match is None:
        fail("invalid_field", "must be an RFC 3339 timestamp, got {value}", value=shorten(value))
    if match.group("tz") is None:
        fail(
            "invalid_field",
            "must carry a timezone (Z or +hh:mm), got {value}",
            value=shorten(value),
        )
    try:
        return datetime.fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        fail("invalid_field", "{error}, got {value}", error=str(exc), value=shorten(value))


#: An aware UTC datetime parsed from RFC 3339 (``Z`` or an explicit offset required).
Timestamp = Annotated[datetime, BeforeValidator(parse_rfc3339)]


def datetime_to_us(value: datetime) -> int:
    """Microseconds since the epoch, exactly (no float on the way)."""
    return (value - EPOCH) // _ONE_US


def us_to_datetime(time_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=time_us)


_EPOCH_SECONDS: Final = re.compile(r"[+-]?[0-9]{1,20}(?:\.[0-9]{1,9})?")
_MIN_US: Final = (datetime.min.replace(tzinfo=UTC) - EPOCH) // _ONE_US
_MAX_US: Final = (datetime.max.replace(tzinfo=UTC) - EPOCH) // _ONE_US


def parse_time_us(value: Any, *, epoch_seconds: bool = False) -> int:
    """A time as microseconds since the epoch: the one parser of times in query strings, CLI
    arguments and records.

    RFC 3339 with an offset (``parse_rfc3339``); where the caller allows it, also epoch seconds
    (``1764547200``, ``-1.5``), read exactly as a decimal so ``inf``, ``nan``, exponents and
    floats' rounding never get in. Anything else, or a time outside years 1-9999, raises a
    ``ValueError`` whose message can be shown to the sender.
    """
    if epoch_seconds and isinstance(value, str) and _EPOCH_SECONDS.fullmatch(value):
        whole, _, frac = value.lstrip("+-").partition(".")
        if len(frac) > 6:
            raise ValueError(f"epoch seconds: at most 6 decimals (microseconds), got {value!r}")
        time_us = int(whole) * 1_000_000 + int(frac.ljust(6, "0"))
        time_us = -time_us if value.startswith("-") else time_us
        if not _MIN_US <= time_us <= _MAX_US:
            raise ValueError(f"epoch seconds out of range (years 1-9999), got {value!r}")
        return time_us
    return datetime_to_us(parse_rfc3339(value))


def format_time_us(time_us: int) -> str:
    """RFC 3339 in UTC with microseconds and ``Z``: one canonical spelling for outputs."""
    return us_to_datetime(time_us).isoformat(timespec="microseconds").replace("+00:00", "Z")
