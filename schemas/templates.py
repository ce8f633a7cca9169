"""The built-in service tiers (contract section 4), as data, and template expansion.

Units follow the resource types: memory in MiB (4 GiB = 4096), storage in GiB (2 TiB = 2048).
A tier sets no quota for a resource marked "-" in the contract's table.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from novaquota.schemas.commands import BUILTIN_TEMPLATE_NAMES, QuotaSet, QuotaSpec, TemplateSpec
from novaquota.schemas.common import Level, LimitType

__all__ = ["BUILTIN_TEMPLATES", "expand_template", "get_template"]

_GIB: Final = 1024  # MiB
_TIB: Final = 1024  # GiB


def _tier(
    name: str,
    description: str,
    limit_type: LimitType,
    monthly_cost: str,
    *,
    cpu: tuple[int, int],
    memory_mib: tuple[int, int],
    storage_gib: int,
    instances: int,
    gpu: int | None = None,
    load_balancers: int | None = None,
) -> TemplateSpec:
    rows: list[tuple[str, int, int | None]] = [
        ("cpu", cpu[0], cpu[1]),
        ("memory", memory_mib[0], memory_mib[1]),
        ("storage", storage_gib, None),
        ("instances", instances, None),
    ]
    if gpu is not None:
        rows.append(("gpu", gpu, None))
    if load_balancers is not None:
        rows.append(("load_balancers", load_balancers, None))
    quotas = [
        QuotaSpec.model_validate(
            {
                "resource_type": rt,
                "limit": limit,
                "burst_limit": burst,
                "limit_type": limit_type,
            }
        )
        for rt, limit, burst in rows
    ]
    return TemplateSpec(
        name=name, description=description, quotas=tuple(quotas), monthly_cost=Decimal(monthly_cost)
    )


#: The five built-in tiers, exactly as in the contract's table.
BUILTIN_TEMPLATES: Final[dict[str, TemplateSpec]] = {
    t.name: t
    for t in (
        _tier(
            "free", "Free tier", "hard", "0",
            cpu=(2, 4), memory_mib=(4 * _GIB, 6 * _GIB), storage_gib=10, instances=3,
        ),
        _tier(
            "developer", "Developer tier", "hard", "29.99",
            cpu=(8, 12), memory_mib=(16 * _GIB, 24 * _GIB), storage_gib=100, instances=10,
        ),
        _tier(
            "startup", "Startup tier", "hard", "99.99",
            cpu=(32, 48), memory_mib=(64 * _GIB, 96 * _GIB), storage_gib=500, instances=25,
            gpu=2,
        ),
        _tier(
            "growth", "Growth tier", "hard", "299.99",
            cpu=(128, 192), memory_mib=(256 * _GIB, 384 * _GIB), storage_gib=2 * _TIB,
            instances=100, gpu=8, load_balancers=10,
        ),
        _tier(
            "enterprise", "Enterprise tier (soft limits)", "soft", "999.99",
            cpu=(1000, 1500), memory_mib=(1024 * _GIB, 1536 * _GIB), storage_gib=10 * _TIB,
            instances=500,
        ),
    )
}  # fmt: skip
assert tuple(BUILTIN_TEMPLATES) == BUILTIN_TEMPLATE_NAMES


def get_template(name: str) -> TemplateSpec:
    """A built-in tier by name; ``KeyError`` names the known ones."""
    try:
        return BUILTIN_TEMPLATES[name]
    except KeyError:
        raise KeyError(
            f"unknown built-in template {name!r}; one of {', '.join(BUILTIN_TEMPLATE_NAMES)}"
        ) from None


def expand_template(
    template: TemplateSpec | str,
    level: Level,
    entity_id: str,
    tenant_id: str | None,
    actor: str,
) -> list[QuotaSet]:
    """One validated ``quota.set`` per entry of ``template`` (a built-in name or a definition)."""
    spec = get_template(template) if isinstance(template, str) else template
    scope = {"level": level, "entity_id": entity_id, "tenant_id": tenant_id, "actor": actor}
    return [QuotaSet.model_validate({**quota.model_dump(), **scope}) for quota in spec.quotas]
