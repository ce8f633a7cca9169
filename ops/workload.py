"""A seeded, deterministic workload: tenants of every tier, quotas at all four levels, and a
realistic mix of resource events.

What it models, and why:

- every built-in tier (``template.applied``), weighted like a real customer base (many free and
  developer tenants, few enterprise ones), plus project and user quotas and one system quota;
- tenant activity follows a Zipf-like law over a seeded permutation of the tenants, so a few busy
  tenants dominate without always being the same tier;
- daily seasonality: the event rate and the VM churn follow a sine over the (event-time) day,
  peaking at 14:00 UTC; during the day VMs are created faster than deleted, at night the other
  way round, so live usage rises and falls;
- well-behaved tenants keep their usage below ~70 % of their tier (they pick sizes that fit);
  a few *misbehaving* tenants ignore their limits, pile up large VMs and volumes, and open
  violations (then clean up, which resolves them);
- volumes (created, resized, deleted), snapshots, network samples per interface, and API traffic
  that comes in bursts.

The same spec gives the same events, byte for byte (``to_jsonl``). Used by ``novaquota simulate``,
``novaquota bench``, ``novaquota demo`` and the tests.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from novaquota.schemas.templates import BUILTIN_TEMPLATES

__all__ = [
    "TIERS",
    "Workload",
    "WorkloadSpec",
    "bulk_load",
    "is_command",
    "iso_us",
    "tenant_key",
    "to_jsonl",
]

TIERS = ("free", "developer", "startup", "growth", "enterprise")
TIER_WEIGHTS = (40, 30, 15, 10, 5)
CONSOLE = "novacron/console"
COMMAND_TYPES = frozenset(
    {
        "quota.set",
        "quota.deleted",
        "template.defined",
        "template.applied",
        "reservation.created",
        "reservation.cancelled",
        "budget.set",
        "rate_limit.set",
        "tenant.deleted",
    }
)
US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: well-behaved tenants stay below this share of their tier's limits
_HEADROOM = 0.7
#: (cpu, memory MiB) flavours, smallest first
_FLAVOURS = ((1, 2048), (2, 4096), (4, 8192), (8, 16384), (16, 32768), (32, 65536))


def _tier_limits(tier: str) -> dict[str, float]:
    return {q.resource_type: float(q.limit) for q in BUILTIN_TEMPLATES[tier].quotas}


_LIMITS = {t: _tier_limits(t) for t in TIERS}


def iso_us(t_us: int) -> str:
    """RFC 3339 UTC with microseconds, from integer microseconds (no float rounding)."""
    dt = datetime.fromtimestamp(t_us // US, UTC).replace(microsecond=t_us % US)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_command(ev: dict[str, Any]) -> bool:
    return ev["type"] in COMMAND_TYPES


def tenant_key(ev: dict[str, Any]) -> bytes:
    """The message key of an event or command: its tenant, or ``system``."""
    return str(ev["data"].get("tenant_id") or "system").encode()


def to_jsonl(ev: dict[str, Any]) -> bytes:
    """One JSON line (deterministic bytes: key order is insertion order)."""
    return orjson.dumps(ev) + b"\n"


@dataclass(frozen=True)
class WorkloadSpec:
    tenants: int = 1000
    projects_per_tenant: int = 2
    users_per_project: int = 2
    seed: int = 7
    start: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    events_per_second: float = 1000.0
    """Mean event-time density: events per second of event time (seasonality modulates it)."""
    seasonality: float = 0.5
    """Amplitude of the daily cycle, 0 (flat) to 0.9."""
    day_seconds: float = 86_400.0
    """Length of the seasonal cycle in event time (shorter in demos, to see it happen)."""
    misbehaving: float = 0.01
    """Share of tenants that ignore their limits (at least one when there are 10 or more)."""
    api_burst_probability: float = 0.003
    """Chance that an event starts a burst of API traffic from one tenant."""
    tenant_prefix: str = "tenant-"
    """Tenant ids are this plus a 6-digit number (the demo uses one per run)."""

    def __post_init__(self) -> None:
        checks = (
            (self.tenants >= 1, "tenants must be >= 1"),
            (self.projects_per_tenant >= 1, "projects_per_tenant must be >= 1"),
            (self.users_per_project >= 1, "users_per_project must be >= 1"),
            (self.events_per_second > 0, "events_per_second must be > 0"),
            (0 <= self.seasonality <= 0.9, "seasonality must be between 0 and 0.9"),
            (self.day_seconds > 0, "day_seconds must be > 0"),
            (0 <= self.misbehaving <= 1, "misbehaving must be between 0 and 1"),
            (0 <= self.api_burst_probability <= 1, "api_burst_probability must be in [0, 1]"),
            (self.start.tzinfo is not None, "start must be timezone-aware"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class _Vm:
    project: str
    user: str
    cpu: int
    memory: int
    gpu: int = 0


@dataclass
class _TenantLive:
    vms: dict[str, _Vm] = field(default_factory=dict)
    volumes: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    snapshots: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    cpu: int = 0
    memory: int = 0
    gpu: int = 0
    storage: int = 0


@dataclass
class Workload:
    spec: WorkloadSpec
    rng: random.Random = field(init=False)
    seq: int = 0
    time_us: int = field(init=False)
    live: dict[int, _TenantLive] = field(default_factory=dict)
    misbehaving: frozenset[int] = field(init=False)
    _cum: list[float] = field(init=False, repr=False)
    _order: list[int] = field(init=False, repr=False)
    _burst: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.spec
        self.rng = random.Random(s.seed)
        self.time_us = int(s.start.timestamp()) * US + s.start.microsecond
        shuffle = random.Random(s.seed * 7919 + 1)
        self._order = list(range(s.tenants))
        shuffle.shuffle(self._order)
        n_bad = 0
        if s.misbehaving > 0 and s.tenants >= 10:
            n_bad = max(1, round(s.tenants * s.misbehaving))
        self.misbehaving = frozenset(shuffle.sample(range(s.tenants), n_bad))
        # Zipf-like activity by rank; a misbehaving tenant is as busy as the 5th busiest one
        weights = [1.0 / (rank + 1) ** 1.1 for rank in range(s.tenants)]
        hot = weights[min(4, s.tenants - 1)]
        for rank, i in enumerate(self._order):
            if i in self.misbehaving:
                weights[rank] = max(weights[rank], hot)
        self._cum = list(itertools.accumulate(weights))

    # --- naming ---------------------------------------------------------------------------

    def tenant(self, i: int) -> str:
        return f"{self.spec.tenant_prefix}{i:06d}"

    def tier_of(self, i: int) -> str:
        """Every tier is present (the first five tenants take one each), then weighted."""
        if i < len(TIERS):
            return TIERS[i]
        return random.Random(self.spec.seed * 1_000_003 + i).choices(TIERS, TIER_WEIGHTS)[0]

    def _event(self, type_: str, data: dict[str, Any], source: str) -> dict[str, Any]:
        self.seq += 1
        return {
            "specversion": "1.0",
            "id": f"w{self.spec.seed}-{self.seq}",
            "source": source,
            "type": type_,
            "time": iso_us(self.time_us),
            "data": data,
        }

    # --- quotas ---------------------------------------------------------------------------

    def setup_commands(self) -> Iterator[dict[str, Any]]:
        """Quotas at all four levels: a tier per tenant, project and user quotas, system."""
        s = self.spec
        yield self._event(
            "quota.set",
            {
                "actor": "simulator",
                "level": "system",
                "entity_id": "system",
                "resource_type": "cpu",
                "limit": 10_000_000,
            },
            CONSOLE,
        )
        for i in range(s.tenants):
            t = self.tenant(i)
            tier = self.tier_of(i)
            lim = _LIMITS[tier]
            yield self._event(
                "template.applied",
                {
                    "actor": "simulator",
                    "template": tier,
                    "level": "tenant",
                    "entity_id": t,
                    "tenant_id": t,
                },
                CONSOLE,
            )
            project_cpu = max(1, math.ceil(lim["cpu"] * 0.75))
            user_instances = max(2, int(lim["instances"] * 0.75))
            for p in range(s.projects_per_tenant):
                yield self._event(
                    "quota.set",
                    {
                        "actor": "simulator",
                        "level": "project",
                        "entity_id": f"p{p}",
                        "tenant_id": t,
                        "resource_type": "cpu",
                        "limit": project_cpu,
                        "burst_limit": math.ceil(project_cpu * 1.5),
                    },
                    CONSOLE,
                )
                for u in range(s.users_per_project):
                    yield self._event(
                        "quota.set",
                        {
                            "actor": "simulator",
                            "level": "user",
                            "entity_id": f"p{p}-u{u}",
                            "tenant_id": t,
                            "resource_type": "instances",
                            "limit": user_instances,
                        },
                        CONSOLE,
                    )

    def quota_count(self) -> int:
        """How many quotas ``setup_commands`` defines once templates are expanded."""
        s = self.spec
        per_tenant = s.projects_per_tenant * (1 + s.users_per_project)
        tiers = sum(len(BUILTIN_TEMPLATES[self.tier_of(i)].quotas) for i in range(s.tenants))
        return 1 + tiers + s.tenants * per_tenant

    # --- resource events ------------------------------------------------------------------

    def phase(self, t_us: int) -> float:
        """The seasonal phase at an event time: +1 at 14:00 of the cycle, -1 at 02:00."""
        day = self.spec.day_seconds
        tod = (t_us / US) % day
        return math.sin(2 * math.pi * (tod / day - 8 / 24))

    def rate_at(self, t_us: int) -> float:
        return self.spec.events_per_second * (1 + self.spec.seasonality * self.phase(t_us))

    def _pick_tenant(self) -> int:
        rank = bisect.bisect_left(self._cum, self.rng.random() * self._cum[-1])
        return self._order[min(rank, len(self._order) - 1)]

    def events(self, n: int) -> Iterator[dict[str, Any]]:
        """n resource events; event time advances with the (seasonal) rate."""
        for _ in range(n):
            yield self.next_event()

    def events_until(self, end_us: int) -> Iterator[dict[str, Any]]:
        """Resource events until event time reaches ``end_us`` (exclusive)."""
        while True:
            ev = self.next_event()
            if self.time_us >= end_us:
                return
            yield ev

    def next_event(self) -> dict[str, Any]:
        rng = self.rng
        self.time_us += max(1, int(rng.expovariate(self.rate_at(self.time_us) / US)))
        if self._burst is not None:
            ti, left = self._burst
            self._burst = (ti, left - 1) if left > 1 else None
            return self._api(ti, burst=True)
        ti = self._pick_tenant()
        if rng.random() < self.spec.api_burst_probability:
            self._burst = (ti, rng.randrange(5, 40))
            return self._api(ti, burst=True)
        bad = ti in self.misbehaving
        r = rng.random()
        if r < 0.55:
            return self._vm_op(ti, bad)
        if r < 0.72:
            return self._volume_op(ti, bad)
        if r < 0.78:
            return self._snapshot_op(ti)
        if r < 0.90:
            return self._network(ti)
        return self._api(ti, burst=False)

    def _scope(self, ti: int) -> tuple[str, str, str]:
        s, rng = self.spec, self.rng
        p = rng.randrange(s.projects_per_tenant)
        u = rng.randrange(s.users_per_project)
        return self.tenant(ti), f"p{p}", f"p{p}-u{u}"

    def _state(self, ti: int) -> _TenantLive:
        st = self.live.get(ti)
        if st is None:
            st = self.live[ti] = _TenantLive()
        return st

    def _vm_op(self, ti: int, bad: bool) -> dict[str, Any]:
        rng = self.rng
        st = self._state(ti)
        lim = _LIMITS[self.tier_of(ti)]
        t, p, u = self._scope(ti)
        host = f"nova/compute/host-{rng.randrange(64)}"
        # daytime: more creates than deletes; night: the other way round
        p_create = 0.5 + 0.25 * self.spec.seasonality * 2 * self.phase(self.time_us)
        if bad:
            p_create = 0.8 if len(st.vms) < 2 * lim["instances"] + 2 else 0.2
        wants_create = not st.vms or rng.random() < p_create
        if wants_create:
            if bad:
                cpu, mem = rng.choice(_FLAVOURS[-3:])
            else:
                room_cpu = lim["cpu"] * _HEADROOM - st.cpu
                room_mem = lim["memory"] * _HEADROOM - st.memory
                room_n = lim["instances"] * _HEADROOM - len(st.vms)
                fits = [f for f in _FLAVOURS if f[0] <= room_cpu and f[1] <= room_mem]
                if not fits or room_n < 1:
                    fits = []
                if fits:
                    cpu, mem = rng.choice(fits[:4])
                else:
                    wants_create = False
            if wants_create:
                vm = f"vm-{self.seq + 1}"
                gpu = 0
                if "gpu" in lim and rng.random() < 0.05:
                    gpu = 1 if bad or st.gpu + 1 <= lim["gpu"] * _HEADROOM else 0
                st.vms[vm] = _Vm(p, u, cpu, mem, gpu)
                st.cpu += cpu
                st.memory += mem
                st.gpu += gpu
                data = {
                    "tenant_id": t,
                    "project_id": p,
                    "user_id": u,
                    "vm_id": vm,
                    "cpu": cpu,
                    "memory": mem,
                }
                if gpu:
                    data["gpu"] = gpu
                return self._event("vm.created", data, host)
        if not st.vms:
            return self._network(ti)
        vm = rng.choice(list(st.vms)) if len(st.vms) < 64 else self._some_key(st.vms)
        row = st.vms[vm]
        scope = {"tenant_id": t, "project_id": row.project, "user_id": row.user, "vm_id": vm}
        if rng.random() < 0.2:  # resize within the flavours that fit
            room = lim["cpu"] * _HEADROOM - st.cpu + row.cpu
            room_mem = lim["memory"] * _HEADROOM - st.memory + row.memory
            fits = [f for f in _FLAVOURS if f[0] <= room and f[1] <= room_mem]
            cpu, mem = rng.choice(fits[:4] if fits else _FLAVOURS[-3:] if bad else _FLAVOURS[:1])
            if not bad and not fits:
                cpu, mem = row.cpu, row.memory  # nothing else fits: keep the size
            st.cpu += cpu - row.cpu
            st.memory += mem - row.memory
            row.cpu, row.memory = cpu, mem
            resized = {**scope, "cpu": cpu, "memory": mem}
            if row.gpu:  # a resize states everything the VM holds, its GPU included
                resized["gpu"] = row.gpu
            return self._event("vm.resized", resized, host)
        del st.vms[vm]
        st.cpu -= row.cpu
        st.memory -= row.memory
        st.gpu -= row.gpu
        return self._event("vm.deleted", scope, host)

    def _some_key(self, d: dict[str, Any]) -> str:
        """A pseudo-random key of a large dict without listing it: one of the oldest 64."""
        k = self.rng.randrange(64)
        return next(itertools.islice(iter(d), k, None))

    def _volume_op(self, ti: int, bad: bool) -> dict[str, Any]:
        rng = self.rng
        st = self._state(ti)
        storage = _LIMITS[self.tier_of(ti)]["storage"]
        t, p, u = self._scope(ti)
        src = f"cinder/volume-{rng.randrange(8)}"
        size = max(1, int(storage * rng.choice((0.02, 0.05, 0.1, 0.2))))
        if bad:
            size = max(1, int(storage * 0.3))
        fits = bad or st.storage + size <= storage * _HEADROOM
        if fits and (not st.volumes or rng.random() < 0.55):
            vol = f"vol-{self.seq + 1}"
            st.volumes[vol] = (p, u, size)
            st.storage += size
            return self._event(
                "volume.created",
                {"tenant_id": t, "project_id": p, "user_id": u, "volume_id": vol, "size_gb": size},
                src,
            )
        if not st.volumes:
            return self._network(ti)
        vol = rng.choice(list(st.volumes)) if len(st.volumes) < 64 else self._some_key(st.volumes)
        vp, vu, old = st.volumes[vol]
        scope = {"tenant_id": t, "project_id": vp, "user_id": vu, "volume_id": vol}
        if rng.random() < 0.3 and (bad or st.storage + old <= storage * _HEADROOM):
            st.volumes[vol] = (vp, vu, 2 * old)
            st.storage += old
            return self._event("volume.resized", {**scope, "size_gb": 2 * old}, src)
        del st.volumes[vol]
        st.storage -= old
        return self._event("volume.deleted", scope, src)

    def _snapshot_op(self, ti: int) -> dict[str, Any]:
        rng = self.rng
        st = self._state(ti)
        storage = _LIMITS[self.tier_of(ti)]["storage"]
        t = self.tenant(ti)
        src = f"cinder/volume-{rng.randrange(8)}"
        if st.volumes and (not st.snapshots or rng.random() < 0.5):
            vol = rng.choice(list(st.volumes)) if len(st.volumes) < 64 else None
            vp, vu, size = st.volumes[vol or self._some_key(st.volumes)]
            size = max(1, size // 4)
            if ti in self.misbehaving or st.storage + size <= storage * _HEADROOM:
                snap = f"snap-{self.seq + 1}"
                st.snapshots[snap] = (vp, vu, size)
                st.storage += size
                return self._event(
                    "snapshot.created",
                    {
                        "tenant_id": t,
                        "project_id": vp,
                        "user_id": vu,
                        "snapshot_id": snap,
                        "size_gb": size,
                    },
                    src,
                )
        if not st.snapshots:
            return self._network(ti)
        snap = next(iter(st.snapshots))  # the oldest goes first
        sp, su, size = st.snapshots.pop(snap)
        st.storage -= size
        return self._event(
            "snapshot.deleted",
            {"tenant_id": t, "project_id": sp, "user_id": su, "snapshot_id": snap, "size_gb": size},
            src,
        )

    def _network(self, ti: int) -> dict[str, Any]:
        rng = self.rng
        t, p, u = self._scope(ti)
        load = 1 + self.spec.seasonality * self.phase(self.time_us)
        return self._event(
            "network.sampled",
            {
                "tenant_id": t,
                "project_id": p,
                "user_id": u,
                "interface_id": f"eth-{p}",
                "bandwidth_in": round(rng.uniform(1, 450) * load, 2),
                "bandwidth_out": round(rng.uniform(1, 450) * load, 2),
                "connections": int(rng.randrange(1, 2500) * load) + 1,
            },
            "neutron/agent-1",
        )

    def _api(self, ti: int, *, burst: bool) -> dict[str, Any]:
        rng = self.rng
        t, p, u = self._scope(ti)
        count = rng.randrange(200, 2000) if burst else rng.randrange(1, 50)
        if ti in self.misbehaving:
            count *= 5
        return self._event(
            "api.requests",
            {"tenant_id": t, "project_id": p, "user_id": u, "count": count},
            f"gateway/edge-{rng.randrange(4)}",
        )


def bulk_load(
    quotas: int, instances: int, *, start: datetime, seed: int = 7
) -> tuple[list[dict[str, Any]], Iterator[dict[str, Any]]]:
    """Exactly ``quotas`` quota definitions and ``instances`` live VMs, for memory and restart
    benchmarks: ten quotas per tenant (tenant, project and user level), VMs spread round robin
    over the same tenants' users, limits high enough that nothing is violated.

    Returns (commands, a generator of resource events)."""
    if quotas < 0 or instances < 0:
        raise ValueError("quotas and instances must be >= 0")
    t0 = int(start.timestamp()) * US
    tenants = max(1, math.ceil(max(quotas, 1) / 10))
    rows = (
        ("tenant", None, "cpu"),
        ("tenant", None, "memory"),
        ("tenant", None, "instances"),
        ("tenant", None, "storage"),
        ("project", "p0", "cpu"),
        ("project", "p0", "instances"),
        ("project", "p1", "cpu"),
        ("project", "p1", "instances"),
        ("user", "p0-u0", "instances"),
        ("user", "p1-u0", "instances"),
    )
    commands: list[dict[str, Any]] = []
    for n in range(quotas):
        i, (level, entity, res) = divmod(n, len(rows))[0], rows[n % len(rows)]
        t = f"load-{seed}-{i:07d}"
        commands.append(
            {
                "specversion": "1.0",
                "id": f"lq{seed}-{n}",
                "source": CONSOLE,
                "type": "quota.set",
                "time": iso_us(t0),
                "data": {
                    "actor": "bench",
                    "level": level,
                    "entity_id": entity or t,
                    "tenant_id": t,
                    "resource_type": res,
                    "limit": 10_000_000,
                },
            }
        )

    def events() -> Iterator[dict[str, Any]]:
        for n in range(instances):
            i = n % tenants
            p = (n // tenants) % 2
            t = f"load-{seed}-{i:07d}"
            yield {
                "specversion": "1.0",
                "id": f"lv{seed}-{n}",
                "source": "nova/compute/bulk",
                "type": "vm.created",
                "time": iso_us(t0 + 1000 + n),
                "data": {
                    "tenant_id": t,
                    "project_id": f"p{p}",
                    "user_id": f"p{p}-u0",
                    "vm_id": f"vm-{n}",
                    "cpu": 1,
                    "memory": 1024,
                },
            }

    return commands, events()
