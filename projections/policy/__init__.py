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

__all__ = [
    "POLICY_SOURCE",
    "Episode",
    "Key",
    "Observation",
    "PolicyAction",
    "PolicyEngine",
    "action_id",
    "actor_of",
]
