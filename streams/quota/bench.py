"""Throughput of the pure core as the glue will drive it.

``bench_apply(n)``: n resource events (vm create / resize / delete) over 1,000 tenants with
quotas at tenant, project and user level. Each event does what an agent does: load the tenant
state and the instance row from bytes, ``apply``, and write both back as bytes. Run
``python -m streams.quota.bench [n]``.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator, MutableMapping

from .decide import apply
from .inputs import Allocation, QuotaSet, Scope
from .state import InstanceState, TenantState
from .units import MICRO, SEC_US

__all__ = ["bench_apply", "main"]

_TENANTS = 1_000
_PROJECTS = 3
_USERS = 4  # per project


class _BytesInstances(MutableMapping[str, InstanceState]):
    """A table of serialised instance rows, like the glue's adapter over its Faust table."""

    def __init__(self, table: dict[str, bytes], tenant: str) -> None:
        self._table, self._prefix = table, tenant + "\x1f"

    def __getitem__(self, key: str) -> InstanceState:
        return InstanceState.from_bytes(self._table[self._prefix + key])

    def __setitem__(self, key: str, value: InstanceState) -> None:
        self._table[self._prefix + key] = value.to_bytes()

    def __delitem__(self, key: str) -> None:
        del self._table[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        n = len(self._prefix)
        return (k[n:] for k in list(self._table) if k.startswith(self._prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def get(self, key: str, default: InstanceState | None = None) -> InstanceState | None:  # type: ignore[override]
        raw = self._table.get(self._prefix + key)
        return InstanceState.from_bytes(raw) if raw is not None else default


def _quota(st: TenantState, n: int, level: str, entity: str, res: str, limit: int) -> None:
    q = QuotaSet(
        level=level,
        entity_id=entity,
        tenant_id=st.tenant_id,
        resource_type=res,
        limit=limit,
        burst_limit=limit * 3 // 2 if res == "cpu" else None,
        time_us=1,
        source="bench",
        event_id=f"q{n}",
    )
    apply(st, {}, q)


def _setup() -> dict[str, bytes]:
    """1,000 tenants x (1 tenant + 3 projects + 12 users), cpu/memory/instances quotas."""
    states: dict[str, bytes] = {}
    for i in range(_TENANTS):
        tenant = f"tenant-{i}"
        st = TenantState(tenant)
        n = 0
        for res, lim in (("cpu", 200), ("memory", 400_000), ("instances", 100)):
            n += 1
            _quota(st, n, "tenant", tenant, res, lim * MICRO)
            for p in range(_PROJECTS):
                n += 1
                _quota(st, n, "project", f"p{p}", res, lim * MICRO // 2)
                for u in range(_USERS):
                    if res != "instances":
                        n += 1
                        _quota(st, n, "user", f"p{p}u{u}", res, lim * MICRO // 6)
        states[tenant] = st.to_bytes()
    return states


def _events(n: int, seed: int = 7) -> list[tuple[str, Allocation]]:
    rng = random.Random(seed)
    live: dict[str, list[str]] = {}
    out = []
    t = 10 * SEC_US
    for i in range(n):
        t += rng.randrange(50, 150)  # ~10k events/s of event time
        tenant = f"tenant-{rng.randrange(_TENANTS)}"
        vms = live.setdefault(tenant, [])
        p = rng.randrange(_PROJECTS)
        scope = Scope(tenant, f"p{p}", f"p{p}u{rng.randrange(_USERS)}")
        roll = rng.random()
        if vms and roll < 0.15:
            vm = vms.pop(rng.randrange(len(vms)))
            ev = Allocation(
                scope=scope,
                instance_key=vm,
                resources={},
                release=True,
                time_us=t,
                source="nova/compute/h1",
                event_id=f"e{i}",
            )
        else:
            if vms and roll < 0.40:
                vm = vms[rng.randrange(len(vms))]
            else:
                vm = f"vm:{i}"
                vms.append(vm)
            cpu = rng.choice((1, 2, 4, 8)) * MICRO
            ev = Allocation(
                scope=scope,
                instance_key=vm,
                resources={"cpu": cpu, "memory": cpu * 2048, "instances": MICRO},
                release=False,
                time_us=t,
                source="nova/compute/h1",
                event_id=f"e{i}",
            )
        out.append((tenant, ev))
    return out


def bench_apply(n: int = 50_000) -> float:
    """Events per second of load → apply → store, on one core."""
    states = _setup()
    table: dict[str, bytes] = {}
    events = _events(n)
    start = time.perf_counter()
    for tenant, ev in events:
        st = TenantState.from_bytes(states[tenant])
        apply(st, _BytesInstances(table, tenant), ev)
        states[tenant] = st.to_bytes()
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    n = int(args[0]) if args else 50_000
    print(f"{bench_apply(n):,.0f} events/s through apply (state to/from bytes each event)")


if __name__ == "__main__":
    main()
