"""Units, levels, kinds and the compact keys the state uses.

Amounts are ints in micro-units and times ints in microseconds since the epoch (UTC), so that
arithmetic is exact. Entity keys are one level letter + the entity id (``"Pweb"`` is project
``web``); a quota key is ``entity_key + "\\x1f" + resource_type``. Keys are plain strings so that
state serialises with one ``orjson.dumps`` call.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTIONS",
    "ACTIVE",
    "ALERT_SEVERITY",
    "BURST_EXPIRED",
    "CODE_LEVEL",
    "GRACE_EXPIRED",
    "HARD",
    "KINDS",
    "LEVELS",
    "LEVEL_CODE",
    "MICRO",
    "OVER_BURST",
    "OVER_LIMIT",
    "SEC_US",
    "SEP",
    "SEVERITY",
    "SOFT",
    "SUSPENDED",
    "SYSTEM_TENANT",
    "TENANT_LEVELS",
    "WINDOWED_RESOURCES",
    "WINDOW_EXCEEDED",
    "entity_key",
    "fmt_amount",
    "quota_key",
    "split_entity_key",
    "split_quota_key",
]

MICRO: Final = 1_000_000
"""Micro-units per unit (amounts) and microseconds per second (times)."""
SEC_US: Final = 1_000_000
SEP: Final = "\x1f"
SYSTEM_TENANT: Final = "system"

LEVELS: Final = ("system", "tenant", "project", "user")
TENANT_LEVELS: Final = ("tenant", "project", "user")
LEVEL_CODE: Final = {"system": "S", "tenant": "T", "project": "P", "user": "U"}
CODE_LEVEL: Final = {v: k for k, v in LEVEL_CODE.items()}

HARD: Final = "hard"
SOFT: Final = "soft"
ACTIVE: Final = "active"
SUSPENDED: Final = "suspended"
ACTIONS: Final = ("deny", "warn", "throttle", "notify")

OVER_LIMIT: Final = "over_limit"
OVER_BURST: Final = "over_burst"
BURST_EXPIRED: Final = "burst_expired"
GRACE_EXPIRED: Final = "grace_expired"
WINDOW_EXCEEDED: Final = "window_exceeded"
KINDS: Final = (OVER_LIMIT, OVER_BURST, BURST_EXPIRED, GRACE_EXPIRED, WINDOW_EXCEEDED)

SEVERITY: Final = {
    OVER_LIMIT: "critical",
    OVER_BURST: "emergency",
    BURST_EXPIRED: "critical",
    GRACE_EXPIRED: "critical",
    WINDOW_EXCEEDED: "warning",
}
ALERT_SEVERITY: Final = {"burst": "warning", "soft_limit": "warning"}

WINDOWED_RESOURCES: Final = frozenset({"api_requests", "cost"})
"""Resources consumed per window; a quota on one of them without a window counts per month."""


def entity_key(level: str, entity_id: str) -> str:
    return LEVEL_CODE[level] + entity_id


def split_entity_key(ekey: str) -> tuple[str, str]:
    return CODE_LEVEL[ekey[0]], ekey[1:]


def quota_key(ekey: str, resource_type: str) -> str:
    return ekey + SEP + resource_type


def split_quota_key(qk: str) -> tuple[str, str]:
    """(entity key, resource type); resource types never contain the separator, ids may."""
    ekey, _, res = qk.rpartition(SEP)
    return ekey, res


def fmt_amount(micros: int) -> str:
    """Exact decimal text of a micro-unit amount (for human messages)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICRO)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")
