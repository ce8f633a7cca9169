"""Helpers shared by the quota core tests (a tiny driver around ``apply``)."""

from __future__ import annotations

from typing import Any

from novaquota.streams.quota import (
    DEFAULT_CONFIG,
    MICRO,
    SEC_US,
    Alert,
    Allocation,
    Audit,
    Config,
    Consumption,
    GaugeSample,
    InstanceState,
    Output,
    QuotaSet,
    Rejected,
    Scope,
    TenantState,
    Tick,
    ViolationOpened,
    ViolationResolved,
    apply,
)
from novaquota.streams.quota.inputs import Input

M = MICRO
S = SEC_US
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z


def at(seconds: float) -> int:
    """Event time ``seconds`` after T0 (microsecond exact for up to 6 decimals)."""
    return T0 + round(seconds * S)


class World:
    """One tenant's state, its instances and everything emitted so far."""

    def __init__(self, tenant: str = "t1", config: Config = DEFAULT_CONFIG) -> None:
        self.tenant = tenant
        self.st = TenantState(tenant)
        self.inst: dict[str, InstanceState] = {}
        self.cfg = config
        self.log: list[Output] = []
        self._n = 0

    def next_id(self) -> str:
        self._n += 1
        return f"ev{self._n}"

    def do(self, inp: Input) -> list[Output]:
        out = apply(self.st, self.inst, inp, self.cfg)
        self.log.extend(out)
        return out

    def quota(
        self,
        res: str = "cpu",
        limit: float = 10,
        *,
        level: str = "tenant",
        entity: str | None = None,
        t: float = 0,
        burst: float | None = None,
        **kw: Any,
    ) -> list[Output]:
        return self.do(
            QuotaSet(
                level=level,
                entity_id=entity if entity is not None else self.tenant,
                tenant_id=self.tenant,
                resource_type=res,
                limit=round(limit * M),
                burst_limit=None if burst is None else round(burst * M),
                time_us=at(t),
                source="api",
                event_id=self.next_id(),
                actor="admin",
                **kw,
            )
        )

    def alloc(
        self,
        key: str,
        t: float,
        *,
        project: str | None = "p1",
        user: str | None = "u1",
        release: bool = False,
        source: str = "nova/compute/h1",
        event_id: str | None = None,
        **resources: float,
    ) -> list[Output]:
        return self.do(
            Allocation(
                scope=Scope(self.tenant, project, user),
                instance_key=key,
                resources={r: round(a * M) for r, a in resources.items()},
                release=release,
                time_us=at(t),
                source=source,
                event_id=event_id or self.next_id(),
            )
        )

    def release(self, key: str, t: float, **kw: Any) -> list[Output]:
        return self.alloc(key, t, release=True, **kw)

    def consume(
        self, amount: float, t: float, *, project: str | None = "p1", event_id: str | None = None
    ) -> list[Output]:
        return self.do(
            Consumption(
                scope=Scope(self.tenant, project, "u1"),
                resource_type="api_requests",
                amount=round(amount * M),
                time_us=at(t),
                source="gw",
                event_id=event_id or self.next_id(),
            )
        )

    def gauge(self, iface: str, t: float, **resources: float) -> list[Output]:
        return self.do(
            GaugeSample(
                scope=Scope(self.tenant, "p1", None),
                interface_id=iface,
                resources={r: round(a * M) for r, a in resources.items()},
                time_us=at(t),
                source="neutron/agent",
                event_id=self.next_id(),
            )
        )

    def tick(self, t: float) -> list[Output]:
        return self.do(Tick(at(t)))

    def used(self, level: str = "tenant", entity: str | None = None, res: str = "cpu") -> int:
        ekey = {"tenant": "T", "project": "P", "user": "U"}[level] + (
            entity if entity is not None else self.tenant
        )
        return self.st.usage.get(ekey, {}).get(res, 0)


def opened(out: list[Output]) -> list[ViolationOpened]:
    return [o for o in out if isinstance(o, ViolationOpened)]


def resolved(out: list[Output]) -> list[ViolationResolved]:
    return [o for o in out if isinstance(o, ViolationResolved)]


def alerts(out: list[Output], kind: str | None = None) -> list[Alert]:
    return [o for o in out if isinstance(o, Alert) and (kind is None or o.kind == kind)]


def audits(out: list[Output], action: str | None = None) -> list[Audit]:
    return [o for o in out if isinstance(o, Audit) and (action is None or o.action == action)]


def rejected(out: list[Output]) -> list[Rejected]:
    return [o for o in out if isinstance(o, Rejected)]


def violations(out: list[Output]) -> list[Output]:
    return [o for o in out if isinstance(o, ViolationOpened | ViolationResolved)]
