"""Settings of the delivery worker (``NOVAQUOTA_DELIVERY_*``); the shared
:class:`streams.settings.Settings` names the broker and the topics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from novaquota.streams.settings import DEFAULT_TOPIC_PREFIX, Settings

__all__ = ["DeliverySettings"]


class DeliverySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOVAQUOTA_DELIVERY_", frozen=True, extra="ignore")

    #: the channels and routes (YAML or JSON); ``--config`` overrides it
    config: Path | None = None
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6068, ge=0, le=65535)
    #: consumer group; unset: ``novaquota-delivery`` under the default topic prefix,
    #: ``<prefix>delivery`` under any other
    group_id: str | None = None
    #: where a new group starts: ``latest`` does not page anyone for last month's violations
    start_from: Literal["earliest", "latest"] = "latest"
    #: records read but not yet done on all their channels; fetching pauses above it
    max_in_flight: int = Field(default=1000, ge=1, le=1_000_000)
    #: how often done offsets are committed (also on shutdown and on a rebalance)
    commit_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    #: on SIGTERM, how long deliveries in flight may finish before the worker exits
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)

    def group(self, settings: Settings) -> str:
        if self.group_id:
            return self.group_id
        prefix = settings.topic_prefix
        return "novaquota-delivery" if prefix == DEFAULT_TOPIC_PREFIX else f"{prefix}delivery"
