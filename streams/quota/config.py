"""Tunable rules of the core, as one frozen object (the glue builds it from Settings)."""

from __future__ import annotations

from dataclasses import dataclass

from .units import SEC_US

__all__ = ["DEFAULT_CONFIG", "Config"]

_DAY_US = 86_400 * SEC_US


@dataclass(frozen=True, slots=True)
class Config:
    thresholds: tuple[int, ...] = (80, 95)
    """Threshold alert levels in percent, ascending."""
    critical_threshold: int = 95
    """Thresholds at or above this are ``critical``, lower ones ``warning``."""
    rearm_points: int = 5
    network_sample_ttl_us: int = 300 * SEC_US
    dedup_retention_us: int = 7 * _DAY_US
    tombstone_retention_us: int = 30 * _DAY_US
    lateness_us: int = 7 * _DAY_US
    default_burst_seconds: int = 3_600
    default_grace_seconds: int = 86_400
    external_dedup: bool = False
    """Messages are deduplicated by (source, id) by the caller (a table of its own, before the
    core sees them), not inside the state: a busy tenant's week of (source, id) pairs would
    otherwise ride along in every write of its record."""
    prune_interval_us: int = 3_600 * SEC_US
    """How often (event time) dedup entries and stale window counters are swept."""

    def severity_for(self, threshold: int) -> str:
        return "critical" if threshold >= self.critical_threshold else "warning"


DEFAULT_CONFIG = Config()
