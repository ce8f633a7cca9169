"""Schema versions per type, and upcasters from older versions.

A published event shape is never edited: its version is bumped and a pure upcaster (an old
``data`` dict in, the next version's dict out) is registered here, applied on read before
validation. Every type is at version 1 today, so no upcaster ships yet.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from novaquota.schemas.commands import COMMAND_MODELS
from novaquota.schemas.exceptions import DecodeError
from novaquota.schemas.outputs import OUTPUT_MODELS
from novaquota.schemas.resource_events import RESOURCE_EVENT_MODELS

__all__ = [
    "CURRENT_VERSIONS",
    "Upcaster",
    "current_version",
    "register_upcaster",
    "upcast",
    "version_from_dataschema",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: The current schema version of every type's ``data``.
CURRENT_VERSIONS: Final[dict[str, int]] = {
    t: 1 for t in (*RESOURCE_EVENT_MODELS, *COMMAND_MODELS, *OUTPUT_MODELS)
}
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}
_DATASCHEMA_VERSION: Final = re.compile(r"(?:^|[/.:#_-])[vV]([0-9]+)(?:\.json)?/?$")


def current_version(type_: str) -> int:
    return CURRENT_VERSIONS.get(type_, 1)


def register_upcaster(type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator: ``fn`` turns ``data`` of ``type_`` at ``from_version`` into the next version."""

    def register(fn: Upcaster) -> Upcaster:
        key = (type_, from_version)
        if key in _UPCASTERS:
            raise ValueError(f"an upcaster for {type_} v{from_version} is already registered")
        _UPCASTERS[key] = fn
        return fn

    return register


def version_from_dataschema(dataschema: str) -> int | None:
    """The version a ``dataschema`` URI ends with (``.../v2``, ``...v2.json``), if any."""
    match = _DATASCHEMA_VERSION.search(dataschema)
    return int(match.group(1)) if match else None


def upcast(type_: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` raised from ``version`` to the current version of ``type_``."""
    current = current_version(type_)
    if version > current:
        raise DecodeError(
            "unsupported_version",
            f"schemaversion: {type_} v{version} is newer than the supported v{current}",
        )
    while version < current:
        fn = _UPCASTERS.get((type_, version))
        if fn is None:
            raise DecodeError(
                "unsupported_version", f"schemaversion: no upcaster for {type_} from v{version}"
            )
        data = fn(data)
        version += 1
    return data
