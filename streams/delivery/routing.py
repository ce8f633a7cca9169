"""Which channels a record goes to: the union of the channels of every route it matches."""

from __future__ import annotations

from collections.abc import Sequence

from novaquota.streams.delivery.config import SEVERITIES, Route

__all__ = ["channels_for", "route_matches"]

_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def route_matches(route: Route, *, type_: str, tenant_id: str, severity: str, kind: str) -> bool:
    """Every criterion the route gives must hold; within a list, any entry will do."""
    if (route.tenant_ids or route.tenant_prefixes) and not (
        tenant_id in route.tenant_ids or any(tenant_id.startswith(p) for p in route.tenant_prefixes)
    ):
        return False
    if route.min_severity is not None and _RANK.get(severity, -1) < _RANK[route.min_severity]:
        return False
    if route.severities and severity not in route.severities:
        return False
    if route.kinds and kind not in route.kinds:
        return False
    return not (route.types and type_ not in route.types)


def channels_for(
    routes: Sequence[Route], *, type_: str, tenant_id: str, severity: str, kind: str
) -> list[str]:
    """Channel names in the order routes first name them, each once; [] when none matches."""
    out: list[str] = []
    for route in routes:
        if route_matches(route, type_=type_, tenant_id=tenant_id, severity=severity, kind=kind):
            out.extend(c for c in route.channels if c not in out)
    return out
