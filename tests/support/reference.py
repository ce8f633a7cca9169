"""An independent reference computation over the raw input log (contract sections 3, 4 and 5).

Integration tests read the raw ``resource-events`` / ``quota-commands`` records back from the broker
and compare what the workers hold with what this module says the log implies. It is written from
the contract text alone and imports nothing from the project (only stdlib, pandas and numpy), so a
shared misunderstanding cannot hide in shared code.

Usage::

    df = parse_records((r.key, r.value, r.headers, r.timestamp) for r in consumed)
    df.attrs["invalid_count"]        # records dropped as invalid (they go to the dead-letter topic)
    df.attrs["invalid_reasons"]      # {reason: count}, reasons as in the dead-letter header
    usage(df)                        # {(tenant, level, entity, resource): Decimal}
    quotas(parse_records(commands))  # {(tenant, level, entity, resource): {field: value}}

Choices where the contract is silent are listed in :data:`CHOICES` (and in the docstrings).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Context, Decimal, localcontext
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "CHOICES",
    "TIERS",
    "api_requests",
    "expected_open_over_limit",
    "from_consumer_records",
    "instance_states",
    "parse_records",
    "parse_time_us",
    "quotas",
    "source_system",
    "system_totals",
    "usage",
    "watermark",
]

US = 1_000_000
DEFAULT_SKEW_S = 300
DEFAULT_GAUGE_TTL_S = 300
DEFAULT_LATENESS_S = 7 * 86_400

CHOICES = """
- Invalid records are dropped; df.attrs["invalid_count"] / df.attrs["invalid_reasons"] count them.
- Duplicates (same category, source, id) stay in the frame with duplicate=True; the first VALID one
  in log order (iteration order of the records) takes effect. Retentions (dedup 7 d, tombstones
  30 d) are treated as infinite: keep test logs shorter than that.
- Binary mode when a ce_specversion header exists and content-type is not application/cloudevents*.
- Numbers must be JSON numbers (strings such as "2" are invalid_field); NaN/Infinity are
  non_finite_amount; cpu with significant digits beyond 3 decimals is too_precise.
- `time` needs an explicit offset (Z or +hh:mm); 'T', 't' or ' ' separate date and time; more than
  6 fractional digits are truncated. time > record timestamp + 300 s is future_time.
- Resource events for tenant "system" are invalid_field (reserved id). Empty project/user ids
  count as absent.
- usage.reported with released:true needs no `resources`. Instance namespaces: vm, volume,
  snapshot, backup, floating_ip, load_balancer; usage.reported and inventory kinds outside that set
  share the namespace "generic" (keyed by resource_id).
- inventory.reported is a pseudo-event at as_of that beats any event at the same time; inventories
  (and tenant.deleted commands, at their `time`) apply in (time, source, id) order to instances
  whose current time <= that time. Listed instances are set whatever their source system
  (listed scope fields override, absent ones keep the old scope); known kinds get their count
  resource (instances=1, volumes=1, ...) unless listed. Unlisted instances are released only if
  their source system (first path segment of the deciding event's source, scheme/authority
  stripped) matches.
- Watermark = highest `time` of valid resource events (commands do not count), per tenant or global.
  A duplicate (source, id) does not move it: a second message "has no further effect" (section 2).
- api.requests is late when time < running watermark (log order) - 7 d; late ones are dropped.
- Commands require `actor`. quota.set/deleted/template.applied for level system use tenant "system".
  A custom template.defined with a built-in name shadows it. tenant.deleted removes the tenant's
  quotas and releases its instances and gauges.
"""

# ---------------------------------------------------------------------------------------------
# Event catalogue (contract section 3) and commands (section 4)
# ---------------------------------------------------------------------------------------------

#: allocation type -> (instance namespace, id field, is a deletion/release)
ALLOC_TYPES: dict[str, tuple[str, str, bool]] = {
    "vm.created": ("vm", "vm_id", False),
    "vm.resized": ("vm", "vm_id", False),
    "vm.deleted": ("vm", "vm_id", True),
    "volume.created": ("volume", "volume_id", False),
    "volume.resized": ("volume", "volume_id", False),
    "volume.deleted": ("volume", "volume_id", True),
    "snapshot.created": ("snapshot", "snapshot_id", False),
    "snapshot.deleted": ("snapshot", "snapshot_id", True),
    "backup.created": ("backup", "backup_id", False),
    "backup.deleted": ("backup", "backup_id", True),
    "floating_ip.allocated": ("floating_ip", "ip_id", False),
    "floating_ip.released": ("floating_ip", "ip_id", True),
    "load_balancer.created": ("load_balancer", "lb_id", False),
    "load_balancer.deleted": ("load_balancer", "lb_id", True),
    "usage.reported": ("generic", "resource_id", False),  # release decided by `released`
}
EVENT_TYPES = frozenset(ALLOC_TYPES) | {"network.sampled", "api.requests", "inventory.reported"}
COMMAND_TYPES = frozenset(
    {
        "quota.set",
        "quota.deleted",
        "template.defined",
        "template.applied",
        "reservation.created",
        "reservation.cancelled",
        "budget.set",
        "rate_limit.set",
        "tenant.deleted",
    }
)
#: the count resource a known instance kind holds
KIND_COUNT = {
    "vm": "instances",
    "volume": "volumes",
    "snapshot": "snapshots",
    "backup": "backups",
    "floating_ip": "floating_ips",
    "load_balancer": "load_balancers",
}
GAUGES = ("bandwidth_in", "bandwidth_out", "connections")
WINDOWED = frozenset({"api_requests", "cost"})
LEVELS = ("system", "tenant", "project", "user")
WINDOWS = {"minute": "m", "hour": "h", "day": "D", "month": "M"}

_GIB = 1024  # MiB per GiB
_TIB = 1024  # GiB per TiB


def _tier(limit_type: str, rows: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    return {
        "limit_type": limit_type,
        "quotas": [
            {"resource_type": r, "limit": Decimal(str(lim)), "burst_limit": _opt_dec(burst)}
            for r, (lim, burst) in rows.items()
        ],
    }


def _opt_dec(x: Any) -> Decimal | None:
    return None if x is None else Decimal(str(x))


#: built-in service tiers of contract section 4 (memory in MiB, storage in GiB)
TIERS: dict[str, dict[str, Any]] = {
    "free": _tier(
        "hard",
        {
            "cpu": (2, 4),
            "memory": (4 * _GIB, 6 * _GIB),
            "storage": (10, None),
            "instances": (3, None),
        },
    ),
    "developer": _tier(
        "hard",
        {
            "cpu": (8, 12),
            "memory": (16 * _GIB, 24 * _GIB),
            "storage": (100, None),
            "instances": (10, None),
        },
    ),
    "startup": _tier(
        "hard",
        {
            "cpu": (32, 48),
            "memory": (64 * _GIB, 96 * _GIB),
            "storage": (500, None),
            "instances": (25, None),
            "gpu": (2, None),
        },
    ),
    "growth": _tier(
        "hard",
        {
            "cpu": (128, 192),
            "memory": (256 * _GIB, 384 * _GIB),
            "storage": (2 * _TIB, None),
            "instances": (100, None),
            "gpu": (8, None),
            "load_balancers": (10, None),
        },
    ),
    "enterprise": _tier(
        "soft",
        {
            "cpu": (1000, 1500),
            "memory": (1 * _TIB * _GIB, Decimal("1.5") * _TIB * _GIB),
            "storage": (10 * _TIB, None),
            "instances": (500, None),
        },
    ),
}
TIER_MONTHLY_USD = {
    "free": Decimal("0"),
    "developer": Decimal("29.99"),
    "startup": Decimal("99.99"),
    "growth": Decimal("299.99"),
    "enterprise": Decimal("999.99"),
}

# ---------------------------------------------------------------------------------------------
# Field validation
# ---------------------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def parse_time_us(text: str) -> int:
    """RFC 3339 -> integer microseconds since the epoch, UTC. Raises ValueError."""
    m = _RFC3339.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    datetime(y, mo, d, h, mi, s)  # validates ranges (no leap second 60)
    frac = (m.group(7) or "").ljust(6, "0")[:6]
    offset_s = 0
    if m.group(8) is None:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise ValueError(f"bad offset in {text!r}")
        offset_s = (oh * 3600 + om * 60) * (1 if m.group(9) == "+" else -1)
    days = date(y, mo, d).toordinal() - _EPOCH_ORDINAL
    seconds = days * 86_400 + h * 3600 + mi * 60 + s - offset_s
    return seconds * US + int(frac)


def _time(data: Mapping[str, Any], field: str) -> int:
    v = data.get(field)
    if v is None or v == "":
        raise _Invalid("missing_field", field)
    try:
        return parse_time_us(v)
    except ValueError as exc:
        raise _Invalid("invalid_field", f"{field}: {exc}") from None


def _str(data: Mapping[str, Any], field: str, *, required: bool = True) -> str | None:
    v = data.get(field)
    if v is None or v == "":
        if required:
            raise _Invalid("missing_field", field)
        return None
    if not isinstance(v, str):
        raise _Invalid("invalid_field", f"{field} is not a string")
    return v


def _choice(
    data: Mapping[str, Any], field: str, allowed: Iterable[str], default: str | None
) -> str | None:
    v = _str(data, field, required=default is None)
    if v is None:
        return default
    if v not in allowed:
        raise _Invalid("invalid_field", f"{field}={v!r}")
    return v


def _amount(
    data: Mapping[str, Any],
    field: str,
    cap: Decimal | None,
    *,
    required: bool = True,
    default: Decimal | None = None,
) -> Decimal | None:
    if data.get(field) is None:
        if required:
            raise _Invalid("missing_field", field)
        return default
    return _number(data[field], field, cap)


def _number(v: Any, field: str, cap: Decimal | None) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, int | Decimal):
        raise _Invalid("invalid_field", f"{field} is not a number")
    d = Decimal(v)
    if not d.is_finite():
        raise _Invalid("non_finite_amount", field)
    if d < 0:
        raise _Invalid("negative_amount", field)
    if cap is not None and d > cap:
        raise _Invalid("amount_over_cap", field)
    return d


def _resources(data: Mapping[str, Any], field: str, cap: Decimal | None) -> dict[str, Decimal]:
    v = data.get(field)
    if v is None:
        raise _Invalid("missing_field", field)
    if not isinstance(v, dict):
        raise _Invalid("invalid_field", f"{field} is not an object")
    out: dict[str, Decimal] = {}
    for name, amount in v.items():
        if not name:
            raise _Invalid("invalid_field", f"{field} has an empty resource name")
        out[name] = _number(amount, f"{field}.{name}", cap)
    return out


def _scope(data: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    tenant = _str(data, "tenant_id")
    assert tenant is not None
    if tenant == "system":
        raise _Invalid("invalid_field", "tenant_id 'system' is reserved")
    return tenant, _str(data, "project_id", required=False), _str(data, "user_id", required=False)


def source_system(source: str) -> str:
    """First path segment of a CloudEvent ``source`` ("nova/compute/h17" -> "nova")."""
    s = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", source)  # scheme://
    s = s.lstrip("/")
    return s.split("/", 1)[0]


# ---------------------------------------------------------------------------------------------
# Per-type decoding
# ---------------------------------------------------------------------------------------------


def _decode_event(type_: str, data: dict[str, Any], cap: Decimal | None) -> dict[str, Any]:
    tenant, project, user = _scope(data)
    row: dict[str, Any] = {"tenant_id": tenant, "project_id": project, "user_id": user}
    if type_ in ALLOC_TYPES:
        kind, id_field, release = ALLOC_TYPES[type_]
        row["inst_kind"], row["inst_id"] = kind, _str(data, id_field)
        holds: dict[str, Decimal | None] = {}
        one = Decimal(1)
        if kind == "vm" and not release:
            cpu = _amount(data, "cpu", cap)
            assert cpu is not None
            milli = cpu.scaleb(3)
            if milli != milli.to_integral_value():
                raise _Invalid("too_precise", "cpu has more than 3 decimals")
            holds = {
                "cpu": cpu,
                "memory": _amount(data, "memory", cap),
                "gpu": _amount(data, "gpu", cap, required=False, default=Decimal(0)),
                "instances": one,
            }
        elif kind in ("volume", "snapshot", "backup"):
            size = _amount(data, "size_gb", cap, required=not release)
            if not release:
                holds = {"storage": size, KIND_COUNT[kind]: one}
        elif kind in ("floating_ip", "load_balancer") and not release:
            holds = {KIND_COUNT[kind]: one}
        elif kind == "generic":
            released = data.get("released", False)
            if released is None:
                released = False
            if not isinstance(released, bool):
                raise _Invalid("invalid_field", "released is not a boolean")
            release = released
            if not release or data.get("resources") is not None:
                res = _resources(data, "resources", cap)
                holds = {} if release else dict(res)
        row["release"], row["holds"] = release, holds
    elif type_ == "network.sampled":
        row["inst_kind"], row["inst_id"] = "interface", _str(data, "interface_id")
        row["holds"] = {g: _amount(data, g, cap) for g in GAUGES}
        row["release"] = False
    elif type_ == "api.requests":
        count = _amount(data, "count", cap)
        assert count is not None
        if count < 1:
            raise _Invalid("invalid_field", "count < 1")
        row["count"] = count
    elif type_ == "inventory.reported":
        listed = data.get("instances")
        if listed is None:
            raise _Invalid("missing_field", "instances")
        if not isinstance(listed, list):
            raise _Invalid("invalid_field", "instances is not a list")
        items = []
        for i, item in enumerate(listed):
            if not isinstance(item, dict):
                raise _Invalid("invalid_field", f"instances[{i}] is not an object")
            kind_text = _str(item, "kind")
            items.append(
                {
                    "kind": kind_text if kind_text in KIND_COUNT else "generic",
                    "raw_kind": kind_text,
                    "resource_id": _str(item, "resource_id"),
                    "project_id": _str(item, "project_id", required=False),
                    "user_id": _str(item, "user_id", required=False),
                    "resources": _resources(item, "resources", cap),
                }
            )
        row["payload"] = {
            "source_system": _str(data, "source_system"),
            "as_of_us": _time(data, "as_of"),
            "instances": items,
        }
    return row


def _quota_fields(data: Mapping[str, Any], cap: Decimal | None) -> dict[str, Any]:
    """Fields of one quota (quota.set or a template entry) with the contract's defaults."""
    limit = _amount(data, "limit", cap)
    assert limit is not None
    burst = _amount(data, "burst_limit", cap, required=False)
    if burst is not None and burst < limit:
        raise _Invalid("invalid_field", "burst_limit < limit")
    limit_type = _choice(data, "limit_type", ("hard", "soft"), "hard")
    burst_seconds = _amount(data, "burst_seconds", cap, required=False)
    if burst is not None and burst_seconds is None:
        burst_seconds = Decimal(3600)
    grace = _amount(data, "grace_seconds", cap, required=False)
    if limit_type == "soft" and grace is None:
        grace = Decimal(86_400)
    if limit_type == "hard":
        grace = None
    return {
        "limit": limit,
        "limit_type": limit_type,
        "burst_limit": burst,
        "burst_seconds": burst_seconds if burst is not None else None,
        "grace_seconds": grace,
        "window": _choice(data, "window", WINDOWS, "") or None,
        "status": _choice(data, "status", ("active", "suspended"), "active"),
        "enforcement_action": _choice(
            data, "enforcement_action", ("deny", "warn", "throttle", "notify"), "deny"
        ),
    }


def _entity(data: Mapping[str, Any]) -> dict[str, Any]:
    level = _choice(data, "level", LEVELS, None)
    entity = _str(data, "entity_id")
    tenant = "system" if level == "system" else _str(data, "tenant_id")
    return {"tenant_id": tenant, "level": level, "entity_id": entity}


def _decode_command(type_: str, data: dict[str, Any], cap: Decimal | None) -> dict[str, Any]:
    _str(data, "actor")
    payload: dict[str, Any] = {}
    tenant: str | None = data.get("tenant_id") if isinstance(data.get("tenant_id"), str) else None
    if type_ in (
        "quota.set",
        "quota.deleted",
        "template.applied",
        "reservation.created",
        "budget.set",
        "rate_limit.set",
    ):
        payload.update(_entity(data))
        tenant = payload["tenant_id"]
    if type_ in ("quota.set", "quota.deleted", "reservation.created"):
        payload["resource_type"] = _str(data, "resource_type")
    if type_ == "quota.set":
        payload["fields"] = _quota_fields(data, cap)
    elif type_ == "template.applied":
        payload["template"] = _str(data, "template")
    elif type_ == "template.defined":
        payload["name"] = _str(data, "name")
        entries = data.get("quotas")
        if entries is None:
            raise _Invalid("missing_field", "quotas")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise _Invalid("invalid_field", "quotas is not a list of objects")
        payload["quotas"] = [
            {"resource_type": _str(e, "resource_type"), **_quota_fields(e, cap)} for e in entries
        ]
        payload["monthly_cost"] = _amount(data, "monthly_cost", cap, required=False)
    elif type_ == "reservation.created":
        payload["reservation_id"] = _str(data, "reservation_id")
        payload["amount"] = _amount(data, "amount", cap)
        payload["start_us"], payload["end_us"] = _time(data, "start"), _time(data, "end")
    elif type_ == "reservation.cancelled":
        payload["reservation_id"] = _str(data, "reservation_id")
    elif type_ == "budget.set":
        payload["monthly_usd"] = _amount(data, "monthly_usd", cap)
    elif type_ == "rate_limit.set":
        payload["rate_per_second"] = _amount(data, "rate_per_second", cap)
        payload["burst"] = _amount(data, "burst", cap)
    elif type_ == "tenant.deleted":
        tenant = _str(data, "tenant_id")
        if tenant == "system":
            raise _Invalid("invalid_field", "tenant_id 'system' is reserved")
    return {"tenant_id": tenant or "system", "payload": payload}


# ---------------------------------------------------------------------------------------------
# parse_records
# ---------------------------------------------------------------------------------------------

COLUMNS = [
    "seq", "key", "kafka_ts_ms", "mode", "category", "type", "id", "source", "source_system",
    "subject", "time", "time_us", "tenant_id", "project_id", "user_id", "inst_kind", "inst_id",
    "release", "holds", "count", "payload", "data", "duplicate",
]  # fmt: skip

Record = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]] | None, int | None]


def _loads(raw: bytes | str) -> Any:
    return json.loads(raw, parse_float=Decimal, parse_constant=Decimal)


def _envelope(
    value: bytes | None, headers: Sequence[tuple[str, bytes]] | None
) -> tuple[str, dict[str, Any], Any]:
    """-> (mode, attributes, data) of one record, per the CloudEvents Kafka binding."""
    hdrs: dict[str, bytes] = {}
    for name, raw in headers or ():
        hdrs.setdefault(name.lower(), raw)
    ctype = (hdrs.get("content-type") or b"").decode("latin-1").strip().lower()
    if "ce_specversion" in hdrs and not ctype.startswith("application/cloudevents"):
        attrs: dict[str, Any] = {}
        for name, raw in hdrs.items():
            if name.startswith("ce_"):
                try:
                    attrs[name[3:]] = raw.decode("utf-8") if raw is not None else None
                except UnicodeDecodeError:
                    raise _Invalid("invalid_field", f"header {name} is not UTF-8") from None
        if value is None:
            raise _Invalid("missing_field", "data")
        try:
            data = _loads(value)
        except (ValueError, RecursionError):
            raise _Invalid("malformed_json", "value is not JSON") from None
        if not isinstance(data, dict):
            raise _Invalid("not_an_object", "data is not a JSON object")
        return "binary", attrs, data
    if value is None:
        raise _Invalid("malformed_json", "empty value")
    try:
        env = _loads(value)
    except (ValueError, RecursionError):
        raise _Invalid("malformed_json", "value is not JSON") from None
    if not isinstance(env, dict):
        raise _Invalid("not_an_object", "value is not a JSON object")
    return "structured", env, env.get("data")


def _decode_record(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    ts_ms: int | None,
    *,
    types: frozenset[str],
    max_skew_s: float | None,
    cap: Decimal | None,
) -> dict[str, Any]:
    mode, attrs, data = _envelope(value, headers)
    for attr in ("specversion", "id", "source", "type", "time"):
        _str(attrs, attr)
    if attrs["specversion"] != "1.0":
        raise _Invalid("invalid_field", f"specversion {attrs['specversion']!r}")
    type_ = attrs["type"]
    if type_ not in types:
        raise _Invalid("unknown_type", type_)
    time_us = _time(attrs, "time")
    if data is None:
        raise _Invalid("missing_field", "data")
    if not isinstance(data, dict):
        raise _Invalid("invalid_field", "data is not an object")
    if type_ in EVENT_TYPES:
        row = {"category": "event", **_decode_event(type_, data, cap)}
    else:
        row = {"category": "command", **_decode_command(type_, data, cap)}
    if (
        max_skew_s is not None
        and ts_ms is not None
        and ts_ms >= 0
        and time_us > ts_ms * 1000 + int(max_skew_s * US)
    ):
        raise _Invalid("future_time", "time is ahead of the record timestamp")
    subject = attrs.get("subject")
    row.update(
        mode=mode,
        type=type_,
        id=attrs["id"],
        source=attrs["source"],
        source_system=source_system(attrs["source"]),
        subject=subject if isinstance(subject, str) else None,
        time=attrs["time"],
        time_us=time_us,
        data=data,
    )
    return row


def parse_records(
    records: Iterable[Record],
    *,
    accept: Literal["any", "events", "commands"] = "any",
    max_skew_s: float | None = DEFAULT_SKEW_S,
    sanity_cap: Decimal | int | None = None,
) -> pd.DataFrame:
    """Decode raw Kafka records ``(key, value, headers, kafka_timestamp_ms)`` into one row each.

    Both CloudEvents modes are accepted. Invalid records are dropped; their number is
    ``df.attrs["invalid_count"]`` and ``df.attrs["invalid_reasons"]`` is ``{reason: count}``.
    ``seq`` is the position in ``records`` (the log order). A repeated (source, id) within a
    category is kept with ``duplicate=True`` (every function here ignores such rows). ``accept``
    limits the types to one topic's (others are ``unknown_type``); ``sanity_cap`` rejects bigger
    amounts.
    """
    types = {
        "any": EVENT_TYPES | COMMAND_TYPES,
        "events": EVENT_TYPES,
        "commands": COMMAND_TYPES,
    }[accept]
    cap = None if sanity_cap is None else Decimal(sanity_cap)
    rows: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    for seq, (key, value, headers, ts_ms) in enumerate(records):
        try:
            row = _decode_record(value, headers, ts_ms, types=types, max_skew_s=max_skew_s, cap=cap)
        except _Invalid as exc:
            reasons[exc.reason] += 1
            continue
        row.update(seq=seq, key=key, kafka_ts_ms=ts_ms)
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["seq"] = df["seq"].astype("int64")
    df["time_us"] = df["time_us"].astype("int64")
    df["release"] = df["release"].astype(object)
    df["duplicate"] = df.duplicated(["category", "source", "id"], keep="first")
    df.attrs["invalid_count"] = sum(reasons.values())
    df.attrs["invalid_reasons"] = dict(reasons)
    return df


def from_consumer_records(consumed: Iterable[Any]) -> list[Record]:
    """aiokafka / confluent-kafka records -> the tuples :func:`parse_records` takes."""
    out: list[Record] = []
    for r in consumed:
        if callable(getattr(r, "value", None)):  # confluent_kafka.Message
            ts = r.timestamp()[1]
            out.append((r.key(), r.value(), r.headers(), ts))
        else:
            out.append((r.key, r.value, r.headers, r.timestamp))
    return out


# ---------------------------------------------------------------------------------------------
# Allocation: per-instance newest state, inventories, roll-up
# ---------------------------------------------------------------------------------------------


def _effective(df: pd.DataFrame, category: str = "event") -> pd.DataFrame:
    return df[(df["category"] == category) & ~df["duplicate"].astype(bool)]


def watermark(
    df: pd.DataFrame, scope: Literal["tenant", "global"] = "tenant"
) -> dict[str, int] | int | None:
    """Highest event time (µs) of valid resource events: {tenant: µs} or one int (None if empty).

    A duplicate (same source and id as an earlier valid event) has no effect, so it does not move
    the watermark either, whatever its own time."""
    ev = _effective(df, "event")
    if scope == "global":
        return int(ev["time_us"].max()) if len(ev) else None
    if scope != "tenant":
        raise ValueError(f"watermark scope {scope!r}")
    return {str(t): int(v) for t, v in ev.groupby("tenant_id")["time_us"].max().items()}


def _rows_of(df: pd.DataFrame, type_: str) -> Iterable[Any]:
    return df[df["type"] == type_].itertuples()


def _pseudo_events(df: pd.DataFrame) -> list[tuple[int, str, str, str, dict[str, Any]]]:
    """Inventories (at as_of) and tenant deletions (at time), in the order they apply."""
    out = []
    for r in _rows_of(_effective(df, "event"), "inventory.reported"):
        out.append((r.payload["as_of_us"], r.source, r.id, r.tenant_id, r.payload))
    for r in _rows_of(_effective(df, "command"), "tenant.deleted"):
        out.append((r.time_us, r.source, r.id, r.tenant_id, {"tenant_deleted": True}))
    out.sort(key=lambda x: (x[0], x[1], x[2]))
    return out


def instance_states(df: pd.DataFrame) -> pd.DataFrame:
    """One row per allocation instance (tenant_id, inst_kind, inst_id): what it holds now.

    Columns: time_us, released, holds (dict), project_id, user_id, source_system, decided_by
    (the id of the deciding event, ``inventory:<id>`` or ``tenant.deleted:<id>``).
    """
    ev = _effective(df, "event")
    alloc = ev[ev["type"].isin(ALLOC_TYPES)].sort_values(
        ["time_us", "release", "source", "id"], kind="stable"
    )
    newest = alloc.drop_duplicates(["tenant_id", "inst_kind", "inst_id"], keep="last")
    state: dict[tuple[str, str, str], dict[str, Any]] = {}
    by_tenant: dict[str, set[tuple[str, str, str]]] = {}
    for r in newest.itertuples():
        k = (r.tenant_id, r.inst_kind, r.inst_id)
        state[k] = {
            "time_us": r.time_us,
            "released": bool(r.release),
            "holds": {} if r.release else dict(r.holds),
            "project_id": r.project_id,
            "user_id": r.user_id,
            "source_system": r.source_system,
            "decided_by": r.id,
        }
        by_tenant.setdefault(r.tenant_id, set()).add(k)

    for at, _src, ev_id, tenant, payload in _pseudo_events(df):
        keys = by_tenant.setdefault(tenant, set())
        if payload.get("tenant_deleted"):
            for k in keys:
                st = state[k]
                if st["time_us"] <= at:
                    st.update(
                        time_us=at, released=True, holds={}, decided_by=f"tenant.deleted:{ev_id}"
                    )
            continue
        system = payload["source_system"]
        listed = {}
        for item in payload["instances"]:
            listed[(tenant, item["kind"], item["resource_id"])] = item
        for k in list(keys):
            st = state[k]
            if st["time_us"] > at or k in listed or st["source_system"] != system:
                continue
            st.update(time_us=at, released=True, holds={}, decided_by=f"inventory:{ev_id}")
        for k, item in listed.items():
            known = state.get(k)
            if known is not None and known["time_us"] > at:
                continue
            holds = dict(item["resources"])
            if item["kind"] in KIND_COUNT:
                holds.setdefault(KIND_COUNT[item["kind"]], Decimal(1))
            old = known or {}
            state[k] = {
                "time_us": at,
                "released": False,
                "holds": holds,
                "project_id": item["project_id"] or old.get("project_id"),
                "user_id": item["user_id"] or old.get("user_id"),
                "source_system": system,
                "decided_by": f"inventory:{ev_id}",
            }
            keys.add(k)

    cols = ["tenant_id", "inst_kind", "inst_id", "time_us", "released", "holds", "project_id",
            "user_id", "source_system", "decided_by"]  # fmt: skip
    return pd.DataFrame([(*k, *(v[c] for c in cols[3:])) for k, v in state.items()], columns=cols)


def _long(rows: pd.DataFrame) -> pd.DataFrame:
    """rows with tenant_id/project_id/user_id/holds -> one row per (scope, resource, amount)."""
    out = [
        (t, p, u, res, amt)
        for t, p, u, holds in zip(
            rows["tenant_id"], rows["project_id"], rows["user_id"], rows["holds"], strict=True
        )
        for res, amt in holds.items()
    ]
    return pd.DataFrame(out, columns=["tenant_id", "project_id", "user_id", "resource", "amount"])


def _rollup(long: pd.DataFrame, extra: Sequence[str] = ("resource",)) -> dict[tuple, Decimal]:
    """user -> project -> tenant roll-up of a long table; only non-zero sums."""
    parts = []
    for level, col, mask in (
        ("tenant", "tenant_id", None),
        ("project", "project_id", long["project_id"].notna()),
        ("user", "user_id", long["user_id"].notna()),
    ):
        part = long if mask is None else long[mask]
        parts.append(
            pd.DataFrame(
                {
                    "tenant_id": part["tenant_id"],
                    "level": level,
                    "entity_id": part[col],
                    **{c: part[c] for c in extra},
                    "amount": part["amount"].astype(object),
                }
            )
        )
    both = pd.concat(parts, ignore_index=True)
    if both.empty:
        return {}
    with localcontext(Context(prec=100)):  # exact for any realistic amount
        sums = both.groupby(["tenant_id", "level", "entity_id", *extra], sort=False)["amount"].agg(
            lambda s: sum(s, Decimal(0))
        )
        return {tuple(k): +Decimal(v) for k, v in sums.items() if v != 0}


def _live_gauges(
    df: pd.DataFrame,
    *,
    watermark_scope: Literal["tenant", "global"],
    gauge_ttl_s: float,
    watermark_us: int | None,
) -> pd.DataFrame:
    ev = _effective(df, "event")
    ns = ev[ev["type"] == "network.sampled"].sort_values(["time_us", "source", "id"])
    latest = ns.drop_duplicates(["tenant_id", "inst_id"], keep="last")
    if latest.empty:
        return latest
    if watermark_us is not None:
        wm = pd.Series(watermark_us, index=latest.index)
    elif watermark_scope == "global":
        wm = pd.Series(watermark(df, "global"), index=latest.index)
    else:
        wm = latest["tenant_id"].map(watermark(df, "tenant"))
    alive = latest["time_us"] >= wm - int(gauge_ttl_s * US)
    latest = latest[alive]
    for at, _s, _i, tenant, payload in _pseudo_events(df):
        if payload.get("tenant_deleted"):
            latest = latest[~((latest["tenant_id"] == tenant) & (latest["time_us"] <= at))]
    return latest


def usage(
    df: pd.DataFrame,
    *,
    include_gauges: bool = True,
    watermark_scope: Literal["tenant", "global"] = "tenant",
    gauge_ttl_s: float = DEFAULT_GAUGE_TTL_S,
    watermark_us: int | None = None,
) -> dict[tuple[str, str, str, str], Decimal]:
    """(tenant_id, level, entity_id, resource_type) -> exact usage; levels tenant/project/user.

    Allocation resources of live instances, plus (``include_gauges``) the latest network sample
    of each interface whose time >= watermark - ``gauge_ttl_s``. The watermark is the highest
    resource-event time of the tenant (``watermark_scope="tenant"``) or of the whole log
    (``"global"``), or ``watermark_us`` when given. Only non-zero entries.
    """
    states = instance_states(df)
    live = states[~states["released"].astype(bool)]
    long = _long(live)
    if include_gauges:
        gauges = _live_gauges(
            df, watermark_scope=watermark_scope, gauge_ttl_s=gauge_ttl_s, watermark_us=watermark_us
        )
        if not gauges.empty:
            long = pd.concat([long, _long(gauges)], ignore_index=True)
    return _rollup(long)


def system_totals(df: pd.DataFrame, **usage_kwargs: Any) -> dict[str, Decimal]:
    """resource_type -> sum of the tenant-level usage over all tenants (non-zero only)."""
    totals: dict[str, Decimal] = {}
    for (_t, level, _e, res), amount in usage(df, **usage_kwargs).items():
        if level == "tenant":
            totals[res] = totals.get(res, Decimal(0)) + amount
    return {r: v for r, v in totals.items() if v != 0}


# ---------------------------------------------------------------------------------------------
# Windowed consumption: api.requests
# ---------------------------------------------------------------------------------------------


def api_requests(
    df: pd.DataFrame,
    window: Literal["minute", "hour", "day", "month"],
    *,
    lateness_s: float | None = DEFAULT_LATENESS_S,
    watermark_scope: Literal["tenant", "global"] = "tenant",
) -> dict[tuple[str, str, str, str], Decimal]:
    """(tenant_id, level, entity_id, window_start) -> requests counted in that UTC-aligned window.

    ``window_start`` is ISO 8601 UTC, e.g. ``"2026-11-01T00:00:00Z"``. Duplicates are ignored.
    With ``lateness_s``, an event older than the running watermark (in log order, per tenant or
    global) minus ``lateness_s`` is late and dropped.
    """
    unit = WINDOWS[window]
    api = _effective(df, "event")
    api = api[api["type"] == "api.requests"]
    if lateness_s is not None and not api.empty:
        seen = _effective(df, "event").sort_values("seq")
        if watermark_scope == "global":
            running = seen["time_us"].cummax()
        else:
            running = seen.groupby("tenant_id")["time_us"].cummax()
        api = api[api["time_us"] >= running.loc[api.index] - int(lateness_s * US)]
    if api.empty:
        return {}
    starts = (
        api["time_us"]
        .to_numpy(dtype="int64")
        .astype("datetime64[us]")
        .astype(f"datetime64[{unit}]")
    )
    iso = [s + "Z" for s in np.datetime_as_string(starts.astype("datetime64[s]"), unit="s")]
    long = pd.DataFrame(
        {
            "tenant_id": api["tenant_id"].to_numpy(),
            "project_id": api["project_id"].to_numpy(),
            "user_id": api["user_id"].to_numpy(),
            "window_start": iso,
            "amount": api["count"].to_numpy(),
        }
    )
    return _rollup(long, extra=("window_start",))


# ---------------------------------------------------------------------------------------------
# Quotas (section 4) and expected over_limit episodes (section 5)
# ---------------------------------------------------------------------------------------------


def quotas(commands_df: pd.DataFrame) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """(tenant_id, level, entity_id, resource_type) -> the quota in force after the log.

    Commands apply in log order (``seq``): quota.set creates or replaces, quota.deleted removes,
    template.applied expands into one quota.set per entry (custom templates defined earlier in the
    log, else the built-in tiers), tenant.deleted removes the tenant's quotas. Each value holds
    limit, limit_type, burst_limit, burst_seconds, grace_seconds, window, status,
    enforcement_action (defaults filled in) and command_id.
    """
    out: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    custom: dict[str, list[dict[str, Any]]] = {}
    for r in _effective(commands_df, "command").sort_values("seq").itertuples():
        p = r.payload
        if r.type == "quota.set":
            key = (p["tenant_id"], p["level"], p["entity_id"], p["resource_type"])
            out[key] = {**p["fields"], "command_id": r.id}
        elif r.type == "quota.deleted":
            out.pop((p["tenant_id"], p["level"], p["entity_id"], p["resource_type"]), None)
        elif r.type == "template.defined":
            custom[p["name"]] = p["quotas"]
        elif r.type == "template.applied":
            for entry in _template_entries(p["template"], custom):
                key = (p["tenant_id"], p["level"], p["entity_id"], entry["resource_type"])
                fields = {k: v for k, v in entry.items() if k != "resource_type"}
                out[key] = {**fields, "command_id": r.id}
        elif r.type == "tenant.deleted":
            for key in [k for k in out if k[0] == r.tenant_id]:
                del out[key]
    return out


def _template_entries(name: str, custom: Mapping[str, list[dict[str, Any]]]) -> list[dict]:
    if name in custom:
        return custom[name]
    tier = TIERS.get(name)
    if tier is None:
        return []  # unknown template: the command is rejected, nothing changes
    entries = []
    for q in tier["quotas"]:
        soft = tier["limit_type"] == "soft"
        entries.append(
            {
                "resource_type": q["resource_type"],
                "limit": q["limit"],
                "limit_type": tier["limit_type"],
                "burst_limit": q["burst_limit"],
                "burst_seconds": Decimal(3600) if q["burst_limit"] is not None else None,
                "grace_seconds": Decimal(86_400) if soft else None,
                "window": None,
                "status": "active",
                "enforcement_action": "deny",
            }
        )
    return entries


def expected_open_over_limit(
    usage: Mapping[tuple[str, str, str, str], Decimal],
    quotas: Mapping[tuple[str, str, str, str], Mapping[str, Any]],
) -> set[tuple[str, str, str, str]]:
    """Quota keys where an active hard, non-windowed quota without burst_limit has usage > limit.

    Usage of a system-level quota is the sum of the tenant-level usage of that resource.
    """
    totals: dict[str, Decimal] = {}
    for (_t, level, _e, res), amount in usage.items():
        if level == "tenant":
            totals[res] = totals.get(res, Decimal(0)) + amount
    out = set()
    for key, q in quotas.items():
        _tenant, level, _entity, res = key
        if (
            q.get("status", "active") != "active"
            or q.get("limit_type", "hard") != "hard"
            or q.get("burst_limit") is not None
            or res in WINDOWED
        ):
            continue
        used = totals.get(res, Decimal(0)) if level == "system" else usage.get(key, Decimal(0))
        if used > q["limit"]:
            out.add(key)
    return out
