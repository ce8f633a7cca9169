"""Build contract CloudEvents as plain dicts, independently of the project's code."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["cloudevent", "command", "dumps", "iso", "vm_created", "vm_deleted"]

_ids = itertools.count(1)
BASE_TIME = datetime(2026, 11, 1, tzinfo=UTC)


def iso(t: datetime | float) -> str:
    if not isinstance(t, datetime):
        t = BASE_TIME + timedelta(seconds=t)
    return t.isoformat().replace("+00:00", "Z")


def cloudevent(
    type_: str,
    data: dict[str, Any],
    *,
    t: datetime | float | None = None,
    source: str = "tests/producer",
    id_: str | None = None,
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id_ or f"ev-{next(_ids)}",
        "source": source,
        "type": type_,
        "time": iso(t if t is not None else datetime.now(UTC)),
        "data": data,
    }


def vm_created(tenant: str, vm_id: str, cpu: float = 2, memory: int = 4096, **kw: Any) -> dict:
    scope = {k: kw.pop(k) for k in ("project_id", "user_id") if k in kw}
    data = {"tenant_id": tenant, "vm_id": vm_id, "cpu": cpu, "memory": memory, **scope}
    return cloudevent("vm.created", data, **kw)


def vm_deleted(tenant: str, vm_id: str, **kw: Any) -> dict:
    scope = {k: kw.pop(k) for k in ("project_id", "user_id") if k in kw}
    return cloudevent("vm.deleted", {"tenant_id": tenant, "vm_id": vm_id, **scope}, **kw)


def command(type_: str, data: dict[str, Any], **kw: Any) -> dict:
    return cloudevent(type_, {"actor": "tests", **data}, **kw)


def dumps(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev).encode()
