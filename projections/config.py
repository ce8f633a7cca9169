"""Settings of the projection workers, read from the environment (``NOVAQUOTA_PROJECTIONS_*``).

The shared :class:`streams.settings.Settings` names the broker and the topics; these are the knobs
that only the projection workers read.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ProjectionSettings"]


class ProjectionSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NOVAQUOTA_PROJECTIONS_", frozen=True, extra="ignore"
    )

    data_dir: Path = Path("./var/projections")
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6067, ge=0, le=65535)
    #: consumer group used only to make the lag visible; the stored position is the truth
    group_suffix: str = "-projections"
    #: JSON file with unit-hour prices (see docs/projections.md); None: built-in defaults
    pricing_file: Path | None = None
    #: forecast alerts fire when exhaustion is predicted within this many hours
    forecast_horizon_hours: int = Field(default=72, ge=1, le=24 * 90)
    #: forecast and anomaly alerts look at the busiest this many tenant quotas each hour
    forecast_max_entities: int = Field(default=20, ge=0, le=10_000)
    #: network gauges count until older than this (contract default 5 minutes)
    network_sample_ttl_seconds: float = Field(default=300.0, gt=0)
    #: api.requests older than this behind the tenant's watermark are late and dropped
    lateness_seconds: float = Field(default=7 * 86400.0, gt=0)
    #: the views and their position are written at most this often (and whenever the log is idle)
    commit_interval_seconds: float = Field(default=2.0, ge=0)
    #: records per ``getmany`` call
    max_batch: int = Field(default=20_000, ge=1)
    #: send alerts and violations (off: views only)
    emit: bool = True
    #: the operations overview samples the enforcement workers' consumer group this often
    workers_sample_seconds: float = Field(default=5.0, ge=0.5, le=300)
    #: ``GET /api/v1/audit`` reads at most this many records of the log per request
    audit_scan_max: int = Field(default=50_000, ge=1_000, le=10_000_000)
    #: ``GET /api/v1/replay/report``: replays running at once (more: 503), and each one's limit
    replay_max_concurrent: int = Field(default=2, ge=0, le=64)
    replay_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
