"""Deterministic ids: a replay or a restart re-derives the same ids for the same episodes."""

from __future__ import annotations

import uuid

__all__ = ["det_id"]

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:novacron:quota-stream")


def det_id(*parts: object) -> str:
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(str(p) for p in parts)))
