"""Fault injection against real workers and a real broker (DESIGN "Correctness rules" 1 and 4).

Every test generates a seeded workload (many tenants with projects and users; VMs, volumes,
snapshots, backups, floating IPs, load balancers, generic usage, network samples, API requests;
hard quotas chosen so that violations open and resolve), produces it, runs real worker processes,
injects a fault, and at the end compares, for EVERY (tenant, level, entity, resource), the usage the
workers hold with ``tests.support.reference.usage`` over the raw records read back from the input
topic. Violation episodes are checked against an independent sequential fold (``Sim``, below) of
the contract's allocation and over_limit rules in each tenant's arrival order.

Event times lie in the past (two hours ending two minutes ago). Network samples are either older
than the tenant's watermark minus the 5-minute TTL (dead for everyone) or within the last 40 s of
the workload (alive), so that the worker's wall-clock driven ticks cannot age a live gauge within a
test's runtime and the per-tenant watermark of the reference is the right one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from novaquota.ops import kafka_local
from novaquota.ops.topics import create_topics
from novaquota.streams.settings import Settings
from tests.integration.conftest import Stack
from tests.support import reference as ref
from tests.support.kafka import consume_all, produce_raw
from tests.support.worker import WorkerProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

US = 1_000_000
#: faster failure detection than Faust's 60 s default, so a kill -9 costs seconds, not a minute
FAST_FAILOVER = {"BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1"}
LEVEL_OF = {"T": "tenant", "P": "project", "U": "user"}

Key = tuple[str, str, str, str]  # (tenant, level, entity, resource)


# ---------------------------------------------------------------------------------------------
# Workload
# ---------------------------------------------------------------------------------------------


def iso_us(t_us: int) -> str:
    dt = datetime.fromtimestamp(t_us // US, UTC).replace(microsecond=t_us % US)
    return dt.isoformat().replace("+00:00", "Z")


@dataclass
class Workload:
    seed: int
    tenants: list[str]
    commands: list[dict[str, Any]]
    events: list[dict[str, Any]]  # in event-time order
    limits: dict[Key, Decimal]


def make_workload(
    seed: int, *, n_tenants: int = 200, n_events: int = 50_000, quota_tenants: int = 40
) -> Workload:
    rng = random.Random(seed)
    t_end = (int(time.time()) - 120) * US
    t0 = t_end - 2 * 3600 * US
    main_end = t_end - 600 * US
    tenants = [f"f{seed}-t{i:03d}" for i in range(n_tenants)]
    weights = [1.0 / (1 + (i % 13)) for i in range(n_tenants)]  # a few heavy tenants
    shape: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    for t in tenants:
        projects = [f"p{j}" for j in range(rng.randint(1, 3))]
        users = {p: [f"u{j}-{k}" for k in range(rng.randint(1, 3))] for j, p in enumerate(projects)}
        shape[t] = (projects, users)

    def scope(t: str) -> dict[str, str]:
        projects, users = shape[t]
        r = rng.random()
        p = rng.choice(projects)
        if r < 0.1:
            return {}
        if r < 0.25:
            return {"project_id": p}
        if r < 0.3:
            return {"user_id": rng.choice(users[p])}  # a user without its project
        return {"project_id": p, "user_id": rng.choice(users[p])}

    ids = itertools.count()

    def ev(type_: str, t: str, data: dict[str, Any], at: int, source: str) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": f"w{seed}-{next(ids)}",
            "source": source,
            "type": type_,
            "time": iso_us(at),
            "data": {"tenant_id": t, **data},
        }

    live: dict[str, dict[str, dict[str, dict[str, str]]]] = {t: defaultdict(dict) for t in tenants}
    ifaces: dict[str, dict[str, dict[str, str]]] = {}
    for t in tenants:
        ifaces[t] = {f"if{j}": scope(t) for j in range(rng.randint(1, 4))}
    serial = itertools.count()
    ops = [
        "vm",
        "volume",
        "snapshot",
        "backup",
        "floating_ip",
        "load_balancer",
        "generic",
        "network",
        "api",
    ]
    op_weights = [38, 17, 7, 3, 3, 2, 3, 12, 15]
    create_type = {
        "vm": "vm.created",
        "volume": "volume.created",
        "snapshot": "snapshot.created",
        "backup": "backup.created",
        "floating_ip": "floating_ip.allocated",
        "load_balancer": "load_balancer.created",
        "generic": "usage.reported",
    }
    delete_type = {
        "vm": "vm.deleted",
        "volume": "volume.deleted",
        "snapshot": "snapshot.deleted",
        "backup": "backup.deleted",
        "floating_ip": "floating_ip.released",
        "load_balancer": "load_balancer.deleted",
        "generic": "usage.reported",
    }
    resize_type = {"vm": "vm.resized", "volume": "volume.resized", "generic": "usage.reported"}
    id_field = {
        "vm": "vm_id",
        "volume": "volume_id",
        "snapshot": "snapshot_id",
        "backup": "backup_id",
        "floating_ip": "ip_id",
        "load_balancer": "lb_id",
        "generic": "resource_id",
    }
    source_of = {
        "vm": "nova/compute/host-{}",
        "volume": "cinder/volume/node-{}",
        "snapshot": "cinder/volume/node-{}",
        "backup": "cinder/backup/node-{}",
        "floating_ip": "neutron/l3/agent-{}",
        "load_balancer": "octavia/api/node-{}",
        "generic": "billing/meter/m{}",
        "network": "neutron/agent/agent-{}",
        "api": "gateway/edge-{}",
    }

    def spec(kind: str) -> dict[str, Any]:
        if kind == "vm":
            cpu = rng.choice([0.5, 1, 2, 4, 8, 1.25, 0.125, 3.333, round(rng.uniform(0.1, 16), 3)])
            d: dict[str, Any] = {
                "cpu": cpu,
                "memory": rng.choice([512, 1024, 2048, 4096, 8192, 16384]),
            }
            if rng.random() < 0.3:
                d["gpu"] = rng.choice([0, 0, 1, 2])
            return d
        if kind in ("volume", "snapshot", "backup"):
            return {"size_gb": rng.choice([1, 5, 10, 20, 50, 100, 250, 0.5, 2.25])}
        if kind == "generic":
            return {"resources": {"gpu": rng.randint(0, 2), "storage": rng.choice([1, 7, 12.5])}}
        return {}

    events: list[dict[str, Any]] = []
    n_main = n_events - 2 * n_tenants
    times = sorted(rng.randrange(t0, main_end) for _ in range(n_main))
    for at in times:
        t = rng.choices(tenants, weights)[0]
        op = rng.choices(ops, op_weights)[0]
        src = source_of[op].format(rng.randint(1, 9))
        if op == "network":
            iface = rng.choice(list(ifaces[t]))
            data = {
                "interface_id": iface,
                **ifaces[t][iface],
                "bandwidth_in": round(rng.uniform(0, 1000), 1),
                "bandwidth_out": round(rng.uniform(0, 1000), 1),
                "connections": rng.randint(0, 5000),
            }
            events.append(ev("network.sampled", t, data, at, src))
            continue
        if op == "api":
            events.append(
                ev("api.requests", t, {"count": rng.randint(1, 100), **scope(t)}, at, src)
            )
            continue
        pool = live[t][op]
        r = rng.random()
        if not pool or r < (0.55 if len(pool) < 6 else 0.3):
            iid = f"{op[:2]}{next(serial)}"
            sc = scope(t)
            pool[iid] = sc
            events.append(ev(create_type[op], t, {id_field[op]: iid, **sc, **spec(op)}, at, src))
        elif r < 0.97:
            iid = rng.choice(list(pool))
            sc = pool[iid]
            if op in resize_type and rng.random() < 0.4:
                events.append(
                    ev(resize_type[op], t, {id_field[op]: iid, **sc, **spec(op)}, at, src)
                )
                continue
            del pool[iid]
            data = {id_field[op]: iid, **sc}
            if op == "generic":
                data["released"] = True
            elif op in ("snapshot", "backup"):
                data["size_gb"] = 1  # informational on a delete
            events.append(ev(delete_type[op], t, data, at, src))
        else:  # deletion of an instance nobody created
            data = {id_field[op]: f"ghost{next(serial)}", **scope(t)}
            if op == "generic":
                data["released"] = True
            events.append(ev(delete_type[op], t, data, at, src))
    final = []
    for t in tenants:  # every tenant reaches the end; some interfaces get a live sample
        final.append(
            ev("api.requests", t, {"count": 1}, t_end - rng.randrange(0, 30 * US), "gateway/edge-0")
        )
        for iface, sc in ifaces[t].items():
            if rng.random() < 0.5:
                data = {
                    "interface_id": iface,
                    **sc,
                    "bandwidth_in": rng.randint(1, 99),
                    "bandwidth_out": 2.5,
                    "connections": rng.randint(1, 50),
                }
                final.append(
                    ev("network.sampled", t, data, t_end - rng.randrange(0, 40 * US), "neutron/x")
                )
    final.sort(key=lambda e: e["time"])
    events.extend(final)

    # quotas: limits between 60 % and 100 % of each chosen entity's peak, so episodes happen
    peaks = Sim({}).run(events).peak
    limits: dict[Key, Decimal] = {}
    for t in rng.sample(tenants, quota_tenants):
        projects, users = shape[t]
        p = rng.choice(projects)
        u = rng.choice(users[p])
        for key in (
            (t, "tenant", t, "cpu"),
            (t, "tenant", t, "storage"),
            (t, "project", p, "instances"),
            (t, "user", u, "memory"),
            (t, "tenant", t, "volumes"),
        ):
            peak = peaks.get(key, Decimal(0))
            if peak < 2:
                continue
            f = rng.choice([0.6, 0.7, 0.8, 0.9, 1.0])  # 1.0: exactly at the limit at the peak
            limits[key] = peak if f == 1.0 else (peak * Decimal(str(f))).quantize(Decimal(1))
    commands = []
    for n, ((t, level, e, res), limit) in enumerate(sorted(limits.items())):
        commands.append(
            {
                "specversion": "1.0",
                "id": f"q{seed}-{n}",
                "source": "tests/admin",
                "type": "quota.set",
                "time": iso_us(t0 - 3600 * US),
                "data": {
                    "actor": "tests",
                    "tenant_id": t,
                    "level": level,
                    "entity_id": e,
                    "resource_type": res,
                    "limit": float(limit) if limit != limit.to_integral_value() else int(limit),
                },
            }
        )
    return Workload(seed, tenants, commands, events, limits)


# ---------------------------------------------------------------------------------------------
# An independent sequential fold: allocations newest-wins, over_limit episodes (contract 3, 5)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    tenant: str
    level: str
    entity: str
    resource: str
    cause: str
    detected_at_us: int
    usage: Decimal
    resolved_by: str | None


InstanceRow = tuple[tuple[int, bool, str, str], dict[str, Decimal], list[tuple[str, str]]]
"""(version, holds, the entities it counts for)"""


@dataclass
class Sim:
    """Applies events one by one in arrival order (per tenant, which is all that matters)."""

    limits: dict[Key, Decimal]
    inst: dict[tuple[str, str, str], InstanceRow] = field(default_factory=dict)
    usage: dict[Key, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    peak: dict[Key, Decimal] = field(default_factory=dict)
    open: dict[Key, tuple[str, int, Decimal]] = field(default_factory=dict)
    episodes: list[Episode] = field(default_factory=list)

    def run(self, events: Iterable[dict[str, Any]]) -> Sim:
        for e in events:
            self.apply(e)
        return self

    def apply(self, e: dict[str, Any]) -> None:
        type_ = e["type"]
        if type_ not in ref.ALLOC_TYPES:
            return
        kind, id_field, release = ref.ALLOC_TYPES[type_]
        d = e["data"]
        t = d["tenant_id"]
        if kind == "generic":
            release = bool(d.get("released", False))
        version = (ref.parse_time_us(e["time"]), release, e["source"], e["id"])
        ikey = (t, kind, d[id_field])
        old = self.inst.get(ikey)
        if old is not None and old[0] >= version:
            return
        holds: dict[str, Decimal] = {}
        if not release:
            one = Decimal(1)
            if kind == "vm":
                holds = {
                    "cpu": _dec(d["cpu"]),
                    "memory": _dec(d["memory"]),
                    "gpu": _dec(d.get("gpu", 0)),
                    "instances": one,
                }
            elif kind in ("volume", "snapshot", "backup"):
                holds = {"storage": _dec(d["size_gb"]), ref.KIND_COUNT[kind]: one}
            elif kind == "generic":
                holds = {r: _dec(a) for r, a in d["resources"].items()}
            else:
                holds = {ref.KIND_COUNT[kind]: one}
        chain = [("tenant", t)]
        if d.get("project_id"):
            chain.append(("project", d["project_id"]))
        if d.get("user_id"):
            chain.append(("user", d["user_id"]))
        touched: dict[Key, None] = {}
        if old is not None:
            for res, amount in old[1].items():
                for level, ent in old[2]:
                    self.usage[(t, level, ent, res)] -= amount
                    touched[(t, level, ent, res)] = None
        for res, amount in holds.items():
            for level, ent in chain:
                self.usage[(t, level, ent, res)] += amount
                touched[(t, level, ent, res)] = None
        self.inst[ikey] = (version, holds, chain)
        for key in touched:
            used = self.usage[key]
            if used > self.peak.get(key, Decimal(0)):
                self.peak[key] = used
            limit = self.limits.get(key)
            if limit is None:
                continue
            if used > limit and key not in self.open:
                self.open[key] = (e["id"], version[0], used)
            elif used <= limit and key in self.open:
                cause, at, u = self.open.pop(key)
                self.episodes.append(Episode(*key, cause, at, u, e["id"]))

    def all_episodes(self) -> set[Episode]:
        still = {Episode(*k, c, at, u, None) for k, (c, at, u) in self.open.items()}
        return set(self.episodes) | still

    def allocation_usage(self) -> dict[Key, Decimal]:
        return {k: v for k, v in self.usage.items() if v != 0}


def _dec(x: Any) -> Decimal:
    return Decimal(str(x))


# ---------------------------------------------------------------------------------------------
# Talking to the broker and the workers
# ---------------------------------------------------------------------------------------------


def encode(
    events: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], bytes | None] | None = None
) -> list[tuple[bytes | None, bytes, None]]:
    k = key or (lambda e: e["data"]["tenant_id"].encode())
    return [(k(e), json.dumps(e).encode(), None) for e in events]


def produce(stack: Stack, name: str, records: Sequence[tuple[Any, Any, Any]]) -> None:
    asyncio.run(produce_raw(stack.bootstrap, stack.topic(name), records))


def read_back(stack: Stack, name: str, expect: int) -> list[Any]:
    recs = asyncio.run(consume_all(stack.bootstrap, stack.topic(name), expect=expect, timeout=180))
    assert len(recs) == expect, f"read back {len(recs)} of {expect} records of {name}"
    return recs


async def _lag(stack: Stack, names: Sequence[str]) -> tuple[int, int]:
    """(committed, end) summed over the partitions of the group's input topics."""
    group = f"{stack.prefix}enforcement"
    topics = [stack.topic(n) for n in names]
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    cons = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap)
    await admin.start()
    await cons.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(stack.partitions)]
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        ends = await cons.end_offsets(tps)
        done = sum(max(0, committed[tp].offset) if tp in committed else 0 for tp in tps)
        return done, sum(ends.values())
    finally:
        await cons.stop()
        await admin.close()


def progress(stack: Stack, names: Sequence[str] = ("resource-events",)) -> tuple[int, int]:
    return asyncio.run(_lag(stack, names))


def _committed_at_least(stack: Stack, target: int) -> bool:
    return progress(stack)[0] >= target


def wait_drained(stack: Stack, timeout: float = 240.0) -> None:
    """Until the group has committed the end of every input topic (routed ones included)."""
    names = ("resource-events", "quota-commands", "internal-routed")
    deadline = time.monotonic() + timeout
    last = (0, 0)
    while time.monotonic() < deadline:
        last = progress(stack, names)
        if last[0] == last[1]:
            return
        time.sleep(1.0)
    raise AssertionError(f"consumer group not drained after {timeout}s: {last}\n{_tails(stack)}")


def _tails(stack: Stack) -> str:
    return "\n".join(f"--- {w.log_path}\n{w.tail(30)}" for w in stack.workers)


def _get(w: WorkerProcess, path: str, timeout: float = 30.0) -> tuple[int, Any]:
    try:
        return w.get(path, timeout=timeout)
    except OSError as exc:
        return 599, str(exc)


def dump(stack: Stack, workers: Sequence[WorkerProcess] | None = None) -> dict[str, Any] | None:
    """Merged ``/internal/usage`` of the running workers, or None while any partition of the
    input topic is unowned (rebalancing) or a worker does not answer."""
    tenants: dict[str, Any] = {}
    parts: list[int] = []
    for w in workers if workers is not None else stack.workers:
        if w.proc is None or w.proc.poll() is not None:
            continue
        status, body = _get(w, "/internal/usage")
        if status != 200 or body["rebalancing"] or not body["recovered"]:
            return None
        parts += body["partitions"]
        tenants.update(body["tenants"])
    if sorted(parts) != list(range(stack.partitions)):
        return None
    return tenants


def served_usage(tenants: dict[str, Any]) -> dict[Key, Decimal]:
    out: dict[Key, Decimal] = {}
    for t, body in tenants.items():
        for ekey, per in body["usage"].items():
            for res, amount in per.items():
                if Decimal(amount) != 0:
                    out[(t, LEVEL_OF[ekey[0]], ekey[1:], res)] = Decimal(amount)
    return out


def diff(expected: dict[Key, Decimal], got: dict[Key, Decimal]) -> list[tuple[Key, Any, Any]]:
    keys = sorted(set(expected) | set(got))
    return [(k, expected.get(k), got.get(k)) for k in keys if expected.get(k) != got.get(k)]


class Expectation:
    """The reference usage, with the gauges of a tenant re-evaluated at the worker's event time
    when ticks moved that tenant past its highest event time.

    A worker's event time advances with tick records while its partition is quiet (contract 5),
    so a live network sample can expire there although the log's own watermark keeps it alive;
    the reference then answers for the worker's watermark (never behind the log's, never ahead of
    the wall clock: event times here lie in the past).
    """

    def __init__(self, df: Any, expected: dict[Key, Decimal]) -> None:
        self.df = df
        self.by_tenant: dict[str, dict[Key, Decimal]] = defaultdict(dict)
        for k, v in expected.items():
            self.by_tenant[k[0]][k] = v
        self.ref_wm: dict[str, int] = ref.watermark(df)  # type: ignore[assignment]
        self.groups: dict[str, Any] | None = None
        self.cache: dict[tuple[str, int], dict[Key, Decimal]] = {}
        self.advanced: dict[str, int] = {}

    def tenant_at(self, t: str, wm: int) -> dict[Key, Decimal]:
        """One tenant's expected usage when the worker's event time for it is ``wm``."""
        rwm = self.ref_wm.get(t)
        if rwm is None or wm <= rwm:
            return self.by_tenant.get(t, {})
        self.advanced[t] = wm - rwm
        if (t, wm) not in self.cache:
            if self.groups is None:
                self.groups = dict(tuple(self.df.groupby("tenant_id")))
            self.cache[(t, wm)] = ref.usage(self.groups[t], watermark_us=wm)
        return self.cache[(t, wm)]

    def at(self, tenants: dict[str, Any]) -> dict[Key, Decimal]:
        out: dict[Key, Decimal] = {}
        self.advanced = {}
        for t in set(self.by_tenant) | set(tenants):
            out.update(self.tenant_at(t, tenants.get(t, {}).get("watermark_us", 0)))
        return out

    def check_watermarks(self, tenants: dict[str, Any]) -> None:
        now_us = int(time.time() * US)
        for t, rwm in self.ref_wm.items():
            wm = tenants.get(t, {}).get("watermark_us", 0)
            assert rwm <= wm <= now_us, f"{t}: worker event time {wm}, log {rwm}, now {now_us}"


def settle_usage(
    stack: Stack,
    expected: dict[Key, Decimal],
    df: Any,
    timeout: float = 240.0,
    exp: Expectation | None = None,
) -> tuple[dict[str, Any], Expectation, list[tuple[Key, Any, Any]], int]:
    """Poll until the workers serve what the reference says (or ``timeout``) and the group is
    drained; then (served tenants, the expectation, the differing entries, entries compared)."""
    exp = exp or Expectation(df, expected)
    deadline = time.monotonic() + timeout
    tenants: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        tenants = dump(stack)
        if tenants is not None and served_usage(tenants) == exp.at(tenants):
            break
        time.sleep(2.0)
    wait_drained(stack)
    time.sleep(1.0)
    tenants = stack.wait_for(lambda: dump(stack), timeout=120)
    got = served_usage(tenants)
    want = exp.at(tenants)
    return tenants, exp, diff(want, got), len(set(want) | set(got))


def assert_usage_equal(
    stack: Stack,
    tenants: dict[str, Any],
    exp: Expectation,
    bad: list[tuple[Key, Any, Any]],
    compared: int,
) -> None:
    """Fail with the first differing usage figures; then check the watermarks."""
    if bad:
        lines = [
            f"{k}: expected {e} got {g} (watermark log {exp.ref_wm.get(k[0])} worker "
            f"{tenants.get(k[0], {}).get('watermark_us')})"
            for k, e, g in bad[:25]
        ]
        raise AssertionError(
            f"{len(bad)} of {compared} usage entries differ:\n"
            + "\n".join(lines)
            + "\n"
            + _tails(stack)
        )
    exp.check_watermarks(tenants)
    if exp.advanced:
        print(
            f"\n  {len(exp.advanced)} tenants' event time advanced by ticks "
            f"(max {max(exp.advanced.values()) / US:.0f} s)"
        )


def wait_usage_equal(
    stack: Stack,
    expected: dict[Key, Decimal],
    df: Any,
    timeout: float = 240.0,
    exp: Expectation | None = None,
) -> dict[str, Any]:
    """Poll until the workers serve what the reference says and the group is drained; then
    assert equality for every (tenant, level, entity, resource)."""
    tenants, exp, bad, compared = settle_usage(stack, expected, df, timeout, exp)
    assert_usage_equal(stack, tenants, exp, bad, compared)
    return tenants


def reference_of(records: list[Any]) -> tuple[Any, dict[Key, Decimal]]:
    df = ref.parse_records(ref.from_consumer_records(records), accept="events")
    return df, ref.usage(df)


def wait_quotas(stack: Stack, n: int) -> None:
    def applied() -> bool:
        tenants = dump(stack)
        return tenants is not None and sum(b["quotas"] for b in tenants.values()) == n

    stack.wait_for(applied, timeout=120, interval=1.0)


# ---------------------------------------------------------------------------------------------
# Violation episodes
# ---------------------------------------------------------------------------------------------


def check_violations(
    stack: Stack,
    *,
    expected_episodes: set[Episode] | None,
    expected_open: set[Key],
    served: dict[str, Any],
    in_order: bool = True,
) -> dict[str, int]:
    records = stack.consume("quota-violations", idle=3.0, timeout=120)
    contents: dict[tuple[str, str], set[str]] = defaultdict(set)
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        ev = json.loads(r.value)
        k = (ev["type"], ev["data"]["violation_id"])
        contents[k].add(json.dumps(ev, sort_keys=True))
        first.setdefault(k, ev)
    conflicting = {k: v for k, v in contents.items() if len(v) > 1}
    assert not conflicting, (
        f"a violation id with different contents: {list(conflicting.items())[:3]}"
    )
    opened = {vid: ev["data"] for (typ, vid), ev in first.items() if typ == "quota.violation"}
    resolved = {
        vid: ev["data"] for (typ, vid), ev in first.items() if typ == "quota.violation_resolved"
    }
    assert set(resolved) <= set(opened), "resolved episodes that never opened"
    by_key: dict[tuple[str, ...], list[tuple[int, int | None, str]]] = defaultdict(list)
    for vid, d in opened.items():
        key = (d["tenant_id"], d["level"], d["entity_id"], d["resource_type"], d["kind"])
        start = ref.parse_time_us(d["detected_at"])
        end = ref.parse_time_us(resolved[vid]["resolved_at"]) if vid in resolved else None
        by_key[key].append((start, end, vid))
    # in the output log (keyed by tenant: one partition per tenant), an episode key alternates
    # opened, resolved, opened, ... once re-deliveries of the same record are dropped
    seen: set[tuple[str, str]] = set()
    current: dict[tuple[str, ...], str] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        ev = json.loads(r.value)
        d = ev["data"]
        k = (ev["type"], d["violation_id"])
        if k in seen:
            continue
        seen.add(k)
        key = (d["tenant_id"], d["level"], d["entity_id"], d["resource_type"], d["kind"])
        if ev["type"] == "quota.violation":
            assert key not in current, f"two open episodes of {key}: {current[key]} {k[1]}"
            current[key] = k[1]
        else:
            assert current.pop(key, None) == k[1], f"{key}: resolved {k[1]} is not the open one"
    if in_order:  # arrival order is event-time order: the episodes do not overlap in time either
        for ep_key, eps in by_key.items():
            eps.sort(key=lambda x: (x[0], x[1] is None, x[1] or 0))
            for (_s1, e1, v1), (s2, _e2, v2) in itertools.pairwise(eps):
                assert e1 is not None and e1 <= s2, f"overlapping episodes {ep_key}: {v1} {v2}"
    kinds = Counter(d["kind"] for d in opened.values())
    assert set(kinds) <= {"over_limit"}, kinds
    got_open = {
        (d["tenant_id"], d["level"], d["entity_id"], d["resource_type"])
        for vid, d in opened.items()
        if vid not in resolved
    }
    assert got_open == expected_open, (
        f"open episodes: missing {sorted(expected_open - got_open)[:10]}, "
        f"extra {sorted(got_open - expected_open)[:10]}"
    )
    served_open = set()
    for t, body in served.items():
        for qk, per in body["open"].items():
            ekey, _, res = qk.rpartition("/")
            if "over_limit" in per:
                served_open.add((t, LEVEL_OF[ekey[0]], ekey[1:], res))
    assert served_open == expected_open
    if expected_episodes is not None:
        got = episodes_of(opened, resolved)
        assert got == expected_episodes, (
            f"episodes: missing {sorted(expected_episodes - got, key=str)[:5]}, "
            f"extra {sorted(got - expected_episodes, key=str)[:5]}"
        )
    return {
        "records": len(records),
        "episodes": len(opened),
        "resolved": len(resolved),
        "redelivered": len(records) - len(first),
    }


def episodes_of(opened: dict[str, Any], resolved: dict[str, Any]) -> set[Episode]:
    """The episodes of the output: ``opened``/``resolved`` map a violation id to the data of the
    first ``quota.violation`` / ``quota.violation_resolved`` record with that id."""
    return {
        Episode(
            d["tenant_id"],
            d["level"],
            d["entity_id"],
            d["resource_type"],
            d["cause_event_id"],
            ref.parse_time_us(d["detected_at"]),
            Decimal(str(d["usage"])),
            resolved[vid]["resolved_cause_event_id"] if vid in resolved else None,
        )
        for vid, d in opened.items()
    }


def expected_open_of(df: Any, wl: Workload) -> set[Key]:
    usage = ref.usage(df)
    quotas = {k: {"limit": v} for k, v in wl.limits.items()}
    return ref.expected_open_over_limit(usage, quotas)


def start_with_quotas(stack: Stack, wl: Workload) -> WorkerProcess:
    w = stack.start_worker(wait_ready=True, **FAST_FAILOVER)
    produce(stack, "quota-commands", encode(wl.commands))
    wait_quotas(stack, len(wl.limits))
    return w


def report(name: str, **figures: Any) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in figures.items()))


# ---------------------------------------------------------------------------------------------
# 1. kill -9 during the load
# ---------------------------------------------------------------------------------------------


def test_kill9_during_load(stack_factory: Callable[..., Stack]) -> None:
    seed = 1101
    wl = make_workload(seed, n_tenants=200, n_events=50_000)
    stack = stack_factory(12)
    worker = start_with_quotas(stack, wl)
    rng = random.Random(seed + 1)
    n = len(wl.events)
    records = encode(wl.events)
    chunk = 1000
    produced = [0]
    errors: list[BaseException] = []

    def producer() -> None:  # faster than the worker: a backlog, so every kill hits input
        try:
            for i in range(0, n, chunk):
                produce(stack, "resource-events", records[i : i + chunk])
                produced[0] = i + len(records[i : i + chunk])
                time.sleep(0.2)
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    # kill when the worker has committed a seeded fraction of the input (spread out, so that
    # each restarted worker is busy again when the next kill comes)
    # early fractions: the backlog then outlasts all three kills even when commits come late
    kill_at = [f + rng.uniform(-0.03, 0.03) for f in (0.1, 0.25, 0.4)]
    kills: list[tuple[int, int, int]] = []
    for frac in kill_at:
        # and only once the restarted worker has committed new progress
        target = max(int(frac * n), kills[-1][0] + 2000 if kills else 0)
        stack.wait_for(partial(_committed_at_least, stack, target), timeout=300, interval=0.3)
        time.sleep(rng.uniform(0.0, 1.0))
        done, end = progress(stack)
        worker.kill9()
        kills.append((done, end, produced[0]))
        time.sleep(rng.uniform(0.2, 2.0))
        worker.start(wait_ready=True)
    # every kill hit a worker with input still to process
    assert all(done < p for done, _end, p in kills), kills
    thread.join(300)
    assert not errors, errors
    assert produced[0] == n

    raw = read_back(stack, "resource-events", n)
    df, expected = reference_of(raw)
    assert df.attrs["invalid_count"] == 0, df.attrs["invalid_reasons"]
    sim = Sim(wl.limits).run(wl.events)
    assert sim.allocation_usage() == ref.usage(df, include_gauges=False)  # the fold is sound
    served = wait_usage_equal(stack, expected, df)
    stats = check_violations(
        stack,
        expected_episodes=sim.all_episodes(),
        expected_open=expected_open_of(df, wl),
        served=served,
    )
    assert stats["episodes"] > 20
    report("kill9", events=n, partitions=12, kills=kills, entries=len(expected), **stats)


# ---------------------------------------------------------------------------------------------
# 2. two workers: rebalance, forwarded queries, kill -9 of one
# ---------------------------------------------------------------------------------------------


def _utilization(
    w: WorkerProcess, tenant: str, level: str, entity: str
) -> tuple[dict[str, Decimal], int]:
    """Used amounts per resource, and the event time (``as_of``) they reflect."""
    path = f"/api/v1/quotas/utilization?entity_id={entity}&level={level}&tenant_id={tenant}"
    deadline = time.monotonic() + 60
    while True:
        status, body = _get(w, path, timeout=10)
        if status == 200:
            used = {r["resource_type"]: Decimal(str(r["used"])) for r in body["resources"]}
            event_time = body["as_of"]["event_time"]
            return used, ref.parse_time_us(event_time) if event_time else 0
        if status not in (503, 599) or time.monotonic() > deadline:
            raise AssertionError(f"GET {path} on {w.port}: {status} {body}")
        time.sleep(0.5)


def test_two_workers_rebalance_and_forwarded_queries(stack_factory: Callable[..., Stack]) -> None:
    seed = 2202
    wl = make_workload(seed, n_tenants=200, n_events=30_000)
    stack = stack_factory(12)
    a = start_with_quotas(stack, wl)
    n = len(wl.events)
    records = encode(wl.events)
    half, three_q = n // 2, (3 * n) // 4
    produce(stack, "resource-events", records[:half])
    b = stack.start_worker(wait_ready=False, **FAST_FAILOVER)  # joins while A is busy
    produce(stack, "resource-events", records[half:three_q])
    b.wait_ready()
    a.wait_ready()

    raw = read_back(stack, "resource-events", three_q)
    df, expected = reference_of(raw)
    exp = Expectation(df, expected)
    wait_usage_equal(stack, expected, df, exp=exp)
    # while both run: ask each worker about tenants the OTHER one owns
    owned: dict[int, set[str]] = {}
    for w in (a, b):
        status, body = _get(w, "/internal/usage")
        assert status == 200
        assert body["partitions"], f"worker {w.port} owns no partition after the rebalance"
        owned[w.port] = set(body["tenants"])
    rng = random.Random(seed)
    entities: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for t, level, e, _res in expected:
        entities[t].add((level, e))
    queried = 0
    for asker, owner in ((a, b), (b, a)):
        foreign = sorted(owned[owner.port] & set(entities))
        assert foreign
        for t in rng.sample(foreign, min(15, len(foreign))):
            for level, e in sorted(entities[t]):
                got, wm = _utilization(asker, t, level, e)
                want = {
                    res: v
                    for (tt, lv, ee, res), v in exp.tenant_at(t, wm).items()
                    if (lv, ee) == (level, e)
                }
                assert {r: v for r, v in got.items() if v != 0} == want, (t, level, e, asker.port)
                queried += 1

    # the rest of the load, and kill -9 one worker while it is being processed
    produce(stack, "resource-events", records[three_q:])
    time.sleep(rng.uniform(1.0, 3.0))
    victim, survivor = (a, b) if rng.random() < 0.5 else (b, a)
    at_kill = progress(stack)
    victim.kill9()
    raw = read_back(stack, "resource-events", n)
    df, expected = reference_of(raw)
    sim = Sim(wl.limits).run(wl.events)
    served = wait_usage_equal(stack, expected, df)
    assert len(dump(stack, [survivor]) or {}) == len(served)  # the survivor owns everything
    stats = check_violations(
        stack,
        expected_episodes=sim.all_episodes(),
        expected_open=expected_open_of(df, wl),
        served=served,
    )
    report(
        "two-workers",
        events=n,
        partitions=12,
        forwarded_queries=queried,
        victim=victim.port,
        committed_at_kill=at_kill,
        **stats,
    )


# ---------------------------------------------------------------------------------------------
# 3. every event twice, each tenant's events shuffled
# ---------------------------------------------------------------------------------------------


def test_duplicates_and_out_of_order(stack_factory: Callable[..., Stack]) -> None:
    seed = 3303
    wl = make_workload(seed, n_tenants=200, n_events=15_000)
    rng = random.Random(seed)
    per_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in wl.events:
        per_tenant[e["data"]["tenant_id"]] += [e, e]
    labels = []
    for t, evs in per_tenant.items():
        rng.shuffle(evs)
        labels += [t] * len(evs)
    rng.shuffle(labels)
    cursors = {t: iter(evs) for t, evs in per_tenant.items()}
    order = [next(cursors[t]) for t in labels]
    assert len(order) == 2 * len(wl.events)

    stack = stack_factory(12)
    start_with_quotas(stack, wl)
    records = encode(order)
    for i in range(0, len(records), 5000):
        produce(stack, "resource-events", records[i : i + 5000])
    raw = read_back(stack, "resource-events", len(records))
    df, expected = reference_of(raw)
    assert int(df["duplicate"].sum()) == len(wl.events)
    # order independence of the reference itself: the time-ordered log gives the same usage
    df_sorted = ref.parse_records([(None, json.dumps(e).encode(), None, None) for e in wl.events])
    assert ref.usage(df_sorted) == expected
    sim = Sim(wl.limits).run(order)
    assert sim.allocation_usage() == ref.usage(df, include_gauges=False)
    served = wait_usage_equal(stack, expected, df)
    stats = check_violations(
        stack,
        expected_episodes=sim.all_episodes(),
        expected_open=expected_open_of(df, wl),
        served=served,
        in_order=False,
    )
    report("duplicates-shuffled", events=len(wl.events), messages=len(records), **stats)


# ---------------------------------------------------------------------------------------------
# 4. librdkafka producer, half without keys, some in CloudEvents binary mode
# ---------------------------------------------------------------------------------------------


def _binary(e: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
    headers = [
        (f"ce_{a}", str(e[a]).encode()) for a in ("specversion", "id", "source", "type", "time")
    ]
    headers.append(("content-type", b"application/json"))
    return json.dumps(e["data"]).encode(), headers


def test_librdkafka_producer_without_keys(stack_factory: Callable[..., Stack]) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    seed = 4404
    wl = make_workload(seed, n_tenants=200, n_events=20_000)
    stack = stack_factory(12)
    start_with_quotas(stack, wl)
    rng = random.Random(seed)
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": stack.bootstrap, "acks": "all", "linger.ms": 20}
    )
    topic = stack.topic("resource-events")
    modes: Counter[str] = Counter()
    failures: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for e in wl.events:
        key = None if rng.random() < 0.5 else e["data"]["tenant_id"].encode()
        if rng.random() < 0.3:
            value, headers = _binary(e)
            modes["binary"] += 1
        else:
            value, headers = json.dumps(e).encode(), None
            modes["structured"] += 1
        modes["keyless" if key is None else "keyed"] += 1
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures[:3]

    raw = read_back(stack, "resource-events", len(wl.events))
    df, expected = reference_of(raw)
    assert df.attrs["invalid_count"] == 0, df.attrs["invalid_reasons"]
    assert Counter(df["mode"]) == Counter(
        {"binary": modes["binary"], "structured": modes["structured"]}
    )
    served = wait_usage_equal(stack, expected, df)
    # keyless messages are forwarded, so a tenant's arrival order is not the log order: only the
    # final episode state is determined
    stats = check_violations(
        stack,
        expected_episodes=None,
        expected_open=expected_open_of(df, wl),
        served=served,
        in_order=False,
    )
    assert stack.consume("dead-letter", idle=2.0) == []
    report("librdkafka", events=len(wl.events), **modes, **stats)


# ---------------------------------------------------------------------------------------------
# 5. a flood of bad input while good traffic flows
# ---------------------------------------------------------------------------------------------


def _bad_messages(
    rng: random.Random, tenants: list[str], n: int, t_us: int
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]]:
    out: list[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]] = []
    for i in range(n):
        t = rng.choice(tenants)
        key = None if rng.random() < 0.3 else t.encode()
        base = {
            "specversion": "1.0",
            "id": f"bad-{i}",
            "source": "tests/chaos",
            "time": iso_us(t_us + i),
        }
        kind = i % 8
        if kind == 0:
            value = b'{"specversion": "1.0", "id": ' + str(i).encode() + b", broken"
        elif kind == 1:
            value = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))) + b"\xff{"
        elif kind == 2:
            value = json.dumps(
                {
                    **base,
                    "type": rng.choice(["vm.exploded", "vm.teleported", "x"]),
                    "data": {"tenant_id": t},
                }
            ).encode()
        elif kind == 3:
            value = json.dumps(
                {
                    **base,
                    "type": "vm.created",
                    "data": {"tenant_id": t, "vm_id": f"bad{i}", "cpu": -2, "memory": 1024},
                }
            ).encode()
        elif kind == 4:
            value = json.dumps(
                {
                    **base,
                    "type": "volume.created",
                    "data": {"tenant_id": t, "volume_id": f"bad{i}", "size_gb": -1},
                }
            ).encode()
        elif kind == 5:
            value = json.dumps(
                {
                    **base,
                    "type": "network.sampled",
                    "data": {
                        "tenant_id": t,
                        "interface_id": "if0",
                        "bandwidth_in": -1.5,
                        "bandwidth_out": 1,
                        "connections": 1,
                    },
                }
            ).encode()
        elif kind == 6:
            value = json.dumps(
                {
                    **base,
                    "type": "vm.created",
                    "data": {"vm_id": f"bad{i}", "cpu": 1, "memory": 1024},
                }
            ).encode()
        else:
            value = json.dumps(
                {**base, "type": "api.requests", "data": {"project_id": "p0", "count": 3}}
            ).encode()
        out.append((key, value, [("x-chaos", str(kind).encode())]))
    return out


def test_bad_input_flood_while_good_traffic_flows(stack_factory: Callable[..., Stack]) -> None:
    seed = 5505
    wl = make_workload(seed, n_tenants=200, n_events=15_000)
    rng = random.Random(seed)
    bad = _bad_messages(rng, wl.tenants, 4000, (int(time.time()) - 3600) * US)
    good = encode(wl.events)
    # interleave, keeping the good ones in their order
    slots = [True] * len(good) + [False] * len(bad)
    rng.shuffle(slots)
    gi, bi = iter(good), iter(bad)
    mixed = [next(gi) if s else next(bi) for s in slots]

    stack = stack_factory(12)
    start_with_quotas(stack, wl)
    for i in range(0, len(mixed), 4000):
        produce(stack, "resource-events", mixed[i : i + 4000])
    raw = read_back(stack, "resource-events", len(mixed))
    df, expected = reference_of(raw)
    assert df.attrs["invalid_count"] == len(bad), df.attrs["invalid_reasons"]
    assert len(df) == len(good)
    dlq = stack.consume("dead-letter", expect=len(bad), timeout=240)
    assert len(dlq) == len(bad)
    reasons: Counter[str] = Counter()
    for r in dlq:
        h = dict(r.headers)
        assert h["error.topic"].decode() == stack.topic("resource-events")
        assert h["x-chaos"]  # original headers kept
        reasons[h["error.reason"].decode()] += 1
    assert {v for _k, v, _h in bad} == {r.value for r in dlq}  # original bytes, unchanged
    assert reasons == Counter(df.attrs["invalid_reasons"]), (reasons, df.attrs["invalid_reasons"])
    sim = Sim(wl.limits).run(wl.events)
    served = wait_usage_equal(stack, expected, df)
    stats = check_violations(
        stack,
        expected_episodes=sim.all_episodes(),
        expected_open=expected_open_of(df, wl),
        served=served,
    )
    # still exactly once on the dead-letter topic after everything drained
    assert len(stack.consume("dead-letter", idle=2.0)) == len(bad)
    report("bad-input", good=len(good), bad=len(bad), reasons=dict(reasons), **stats)


# ---------------------------------------------------------------------------------------------
# 6. the broker stops and starts again during the load (a broker of the test's own)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Settings]:
    """A throw-away single-node broker on free ports with its own kafka_home and data dir
    (reusing the cached jars), so that stopping it disturbs nobody else."""
    configured = Settings()
    lib = kafka_local.ensure_jars(configured)
    home = tmp_path / "kafka"
    (home / configured.kafka_version).mkdir(parents=True)
    (home / configured.kafka_version / "lib").symlink_to(lib, target_is_directory=True)
    settings = Settings(
        bootstrap_servers=f"localhost:{free_port()}",
        kafka_home=home,
        kafka_data_dir=tmp_path / "kafka-data",
        kafka_controller_port=free_port(),
        kafka_version=configured.kafka_version,
        kafka_heap="-Xmx384m -Xms128m",
    )
    try:
        kafka_local.start(settings, timeout=240)
        yield settings
    finally:
        kafka_local.stop(settings, timeout=30)


def test_broker_stop_and_start_during_load(own_broker: Settings, tmp_path: Path) -> None:
    seed = 6606
    wl = make_workload(seed, n_tenants=200, n_events=16_000)
    stack = Stack(own_broker.bootstrap_servers, f"b{seed}.", 12, tmp_path / "stack")
    asyncio.run(create_topics(stack.settings))
    try:
        _broker_outage(stack, wl, own_broker, seed)
    finally:
        stack.stop()


def _broker_outage(stack: Stack, wl: Workload, broker: Settings, seed: int) -> None:
    worker = start_with_quotas(stack, wl)
    rng = random.Random(seed)
    n = len(wl.events)
    records = encode(wl.events)
    chunk = 500
    produced = [0]
    retried: list[str] = []
    errors: list[BaseException] = []
    outage = threading.Event()

    def producer() -> None:
        """Produces half, waits for the outage, then keeps producing through it: a chunk that
        fails is sent again (at least once: the contract's deduplication by (source, id) absorbs
        what got through twice)."""
        try:
            for i in range(0, n, chunk):
                if i >= n // 2:
                    outage.wait(600)
                while True:
                    try:
                        produce(stack, "resource-events", records[i : i + chunk])
                        break
                    except Exception as exc:
                        retried.append(type(exc).__name__)
                        if len(retried) > 200:
                            raise
                        time.sleep(1.0)
                produced[0] = i + len(records[i : i + chunk])
                time.sleep(0.3)
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    stack.wait_for(lambda: produced[0] >= n // 2 and _committed_at_least(stack, 1000), timeout=300)
    at_stop = progress(stack)
    produced_at_stop = produced[0]
    assert kafka_local.stop(broker, timeout=60)
    outage.set()  # only now: the rest of the input meets a broker that is down
    down = rng.uniform(8.0, 15.0)
    time.sleep(down)
    kafka_local.start(broker, timeout=240)
    thread.join(600)
    assert not thread.is_alive() and not errors, errors
    assert produced[0] == n
    # the outage hit both sides: input still to produce, and input still to process
    assert produced_at_stop < n and at_stop[0] < at_stop[1], (produced_at_stop, at_stop)
    assert retried, "the producer never noticed the outage"
    # the worker rode out the outage on its own: no restart
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()

    raw = asyncio.run(
        consume_all(stack.bootstrap, stack.topic("resource-events"), idle=5.0, timeout=180)
    )
    assert {json.loads(r.value)["id"] for r in raw} == {e["id"] for e in wl.events}
    df, expected = reference_of(raw)
    assert df.attrs["invalid_count"] == 0, df.attrs["invalid_reasons"]
    sim = Sim(wl.limits).run(json.loads(r.value) for r in sorted(raw, key=_log_order))
    assert sim.allocation_usage() == ref.usage(df, include_gauges=False)
    served = wait_usage_equal(stack, expected, df, timeout=300)
    stats = check_violations(
        stack,
        expected_episodes=sim.all_episodes(),
        expected_open=expected_open_of(df, wl),
        served=served,
    )
    assert stats["episodes"] > 10
    assert stack.consume("dead-letter", idle=2.0) == []
    report(
        "broker-outage",
        events=n,
        messages=len(raw),
        partitions=12,
        committed_at_stop=at_stop,
        produced_at_stop=produced_at_stop,
        down_seconds=round(down, 1),
        producer_retries=len(retried),
        **stats,
    )


def _log_order(r: Any) -> tuple[int, int]:
    return (r.partition, r.offset)
