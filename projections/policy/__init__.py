"""Policies that act: the pure engine (``engine``) and the worker that runs it from the log."""

from __future__ import annotations

from .engine import (
    POLICY_SOURCE,
    Episode,
    Key,
    Observation,
    PolicyAction,
    PolicyEngine,
    action_id,
    actor_of,
)
from .feed import PolicyFeed

__all__ = [
    "POLICY_SOURCE",
    "Episode",
    "Key",
    "Observation",
    "PolicyAction",
    "PolicyEngine",
    "PolicyFeed",
    "action_id",
    "actor_of",
]
