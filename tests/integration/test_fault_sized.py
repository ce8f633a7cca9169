"""Sized fault tests for the enforcement worker (issue #13, item 6).

Each test runs the fault suite's seeded workload at full size (200 tenants, more than 50,000
input messages: resource events plus the quota commands the workload needs) through real worker
processes and a real broker, kills workers with SIGKILL at the moments that hurt most, and at the
end requires EVERY usage figure to equal ``tests.support.reference.usage`` over the raw input log
and every violation episode to equal the suite's sequential fold (``Sim``).

How the input is produced (contract sections 1 and 2):

- Placement, per tenant. The tenants of a seeded subset, about 40 % of all messages, are placed
  the way librdkafka's default partitioner places a keyed message (``consistent_random``: CRC32
  of the key modulo the partition count, emulated here with ``zlib.crc32``); only tenants whose
  CRC32 partition differs from their murmur2 home partition are chosen, so every one of these
  messages is forwarded by the worker through the internal routed topic. All other messages are
  keyed by tenant and placed by aiokafka's default partitioner, murmur2 as in the Java client.
  Placement is per tenant, not per message, so that each tenant's messages sit on one partition
  in the workload's order: its arrival order at the worker is then that order whatever path the
  messages take, and the episodes ``Sim`` derives from it are the only correct ones.
- Bindings, per message: about 40 % in binary mode (``ce_*`` headers, the value is ``data``), the
  rest structured (``content-type: application/cloudevents+json``), commands included.

Outputs are at-least-once: a violation or alert record whose id was already seen on its topic is
counted and reported (``duplicate_violations``, ``duplicate_alerts``), never a failure. Lost or
extra episodes, conflicting contents under one id, and any wrong usage figure are failures.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from tests.integration.conftest import Stack
from tests.integration.test_fault_injection import (
    FAST_FAILOVER,
    Sim,
    Workload,
    _binary,
    assert_usage_equal,
    check_violations,
    episodes_of,
    expected_open_of,
    make_workload,
    progress,
    read_back,
    reference_of,
    report,
    settle_usage,
    wait_quotas,
)
from tests.support import reference as ref
from tests.support.worker import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

N_TENANTS = 200
N_EVENTS = 50_000  # make_workload's size; with the quota commands the input is a little larger
PARTITIONS = 12
CRC32_TARGET = 0.4  # share of the input placed by CRC32 (at least 30 % is asserted)
BINARY_SHARE = 0.4
CHUNK = 2500  # messages a produce batch
INPUTS = ("resource-events", "internal-routed")
STRUCTURED = b"application/cloudevents+json"
RESTORING = "Restoring state from changelog topics"
RECOVERY_DONE = ("]: Recovery complete", "]: Worker ready")

Placed = tuple[bytes, bytes, list[tuple[str, bytes]], int | None]
"""(key, value, headers, partition): partition None leaves it to the murmur2 partitioner."""


# ---------------------------------------------------------------------------------------------
# Placement and production
# ---------------------------------------------------------------------------------------------


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's default (``consistent_random``) for a keyed message."""
    return zlib.crc32(key) % partitions


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java client's (and aiokafka's) default for a keyed message."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def sized_workload(seed: int) -> tuple[Workload, frozenset[str]]:
    """The workload, and the tenants whose messages are placed by CRC32."""
    wl = make_workload(seed, n_tenants=N_TENANTS, n_events=N_EVENTS)
    assert len(wl.tenants) >= 200 and len(wl.events) + len(wl.commands) >= 50_000
    weight = Counter(e["data"]["tenant_id"] for e in [*wl.commands, *wl.events])
    total = sum(weight.values())
    candidates = [
        t
        for t in wl.tenants
        if crc32_partition(t.encode(), PARTITIONS) != murmur2_partition(t.encode(), PARTITIONS)
    ]
    random.Random(seed).shuffle(candidates)
    chosen: set[str] = set()
    placed = 0
    for t in candidates:
        if placed >= CRC32_TARGET * total:
            break
        chosen.add(t)
        placed += weight[t]
    assert placed >= 0.3 * total, (placed, total)
    return wl, frozenset(chosen)


def place(
    events: Sequence[dict[str, Any]], crc32_tenants: frozenset[str], rng: random.Random
) -> list[Placed]:
    out: list[Placed] = []
    for e in events:
        tenant = e["data"]["tenant_id"]
        key = tenant.encode()
        partition = crc32_partition(key, PARTITIONS) if tenant in crc32_tenants else None
        if rng.random() < BINARY_SHARE:
            value, headers = _binary(e)
        else:
            value, headers = json.dumps(e).encode(), [("content-type", STRUCTURED)]
        out.append((key, value, headers, partition))
    return out


def is_binary(headers: Sequence[tuple[str, bytes]]) -> bool:
    return any(k == "ce_specversion" for k, _v in headers)


async def _produce(
    bootstrap: str, topic: str, records: Sequence[Placed], done: list[int] | None = None
) -> None:
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10)
    await prod.start()
    try:
        for i in range(0, len(records), CHUNK):
            futs = [
                await prod.send(topic, value=v, key=k, headers=h, partition=p)
                for k, v, h, p in records[i : i + CHUNK]
            ]
            await asyncio.gather(*futs)
            if done is not None:
                done[0] = i + len(futs)
    finally:
        await prod.stop()


class Load(threading.Thread):
    """Produces the resource events in batches, as fast as the broker takes them."""

    def __init__(self, stack: Stack, records: Sequence[Placed]) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.records = records
        self.done = [0]
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            topic = self.stack.topic("resource-events")
            asyncio.run(_produce(self.stack.bootstrap, topic, self.records, self.done))
        except BaseException as exc:  # pragma: no cover - surfaced by finish()
            self.error = exc

    def finish(self, timeout: float = 300.0) -> None:
        self.join(timeout)
        assert not self.is_alive() and self.error is None, self.error
        assert self.done[0] == len(self.records)


def start_with_quotas(
    stack: Stack, wl: Workload, crc32_tenants: frozenset[str], rng: random.Random
) -> tuple[WorkerProcess, list[Placed]]:
    w = stack.start_worker(wait_ready=True, **FAST_FAILOVER)
    commands = place(wl.commands, crc32_tenants, rng)
    asyncio.run(_produce(stack.bootstrap, stack.topic("quota-commands"), commands))
    wait_quotas(stack, len(wl.limits))
    return w, commands


# ---------------------------------------------------------------------------------------------
# Watching workers and the group
# ---------------------------------------------------------------------------------------------


async def _describe_group(stack: Stack) -> tuple[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        resp = await admin.describe_consumer_groups([f"{stack.prefix}enforcement"])
        group = resp[0].groups[0]  # (error, id, state, protocol type, protocol, members)
        return str(group[2]), len(group[5])
    finally:
        await admin.close()


def group_state(stack: Stack) -> tuple[str, int]:
    """(state, number of members) of the workers' consumer group, as the coordinator sees it."""
    return asyncio.run(_describe_group(stack))


def log_size(w: WorkerProcess) -> int:
    return w.log_path.stat().st_size if w.log_path.exists() else 0


def log_since(w: WorkerProcess, offset: int) -> str:
    with open(w.log_path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def committed(stack: Stack, target: int) -> bool:
    return progress(stack)[0] >= target


def restart_and_kill_in_recovery(stack: Stack, w: WorkerProcess) -> dict[str, Any]:
    """Restart ``w`` on an empty data dir (a new machine) and kill -9 it while it restores its
    state from the changelog topics.

    With its local state kept a worker's recovery reads only the changelog's tail and lasts tens
    of milliseconds; from an empty data dir it reads every changelog record, long enough to be
    killed in the middle. The worker is then started on an empty data dir again, so the final
    figures come from the changelog alone: that checks the changelog, not only local RocksDB.

    The killed member is waited out first, so that the restarted one is assigned at once (its
    recovery then starts a few seconds after the restart, not after the old session expired)."""
    stack.wait_for(lambda: group_state(stack)[1] == 0, timeout=120, interval=0.5)
    wipe_state(w)
    offset = log_size(w)
    t0 = time.monotonic()
    w.start(wait_ready=False)
    while True:
        text = log_since(w, offset)
        if RESTORING in text:
            break
        assert w.proc is not None and w.proc.poll() is None, w.tail()
        assert time.monotonic() - t0 < 120, f"no recovery began within 120 s:\n{w.tail()}"
        time.sleep(0.02)
    w.kill9()
    after = log_since(w, offset)
    assert not any(m in after for m in RECOVERY_DONE), (
        f"the kill came after the recovery had finished:\n{after[-3000:]}"
    )
    return {
        "seconds_after_restart": round(time.monotonic() - t0, 1),
        "restoring": RESTORING in after,
    }


def wipe_state(w: WorkerProcess) -> None:
    """Delete the worker's local RocksDB state (it restores from the changelogs)."""
    shutil.rmtree(w.env["NOVAQUOTA_DATA_DIR"], ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The final comparison
# ---------------------------------------------------------------------------------------------


def _ce_id(r: Any) -> str:
    for k, v in r.headers or ():
        if k == "ce_id":
            return str(v.decode())
    return str(json.loads(r.value)["id"])


def _first_outputs(records: Sequence[Any], id_field: str) -> tuple[dict[tuple[str, str], Any], int]:
    """The first record of each (type, id) in log order, and how many records repeated one."""
    first: dict[tuple[str, str], Any] = {}
    repeated = 0
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        ev = json.loads(r.value)
        k = (ev["type"], ev["data"][id_field])
        if k in first:
            repeated += 1
        else:
            first[k] = ev["data"]
    return first, repeated


def check_against_reference(
    stack: Stack,
    name: str,
    wl: Workload,
    crc32_tenants: frozenset[str],
    placed: Sequence[Placed],
    commands: Sequence[Placed],
    **figures: Any,
) -> None:
    n = len(wl.events)
    raw = read_back(stack, "resource-events", n)
    # the input sits where it was meant to: each tenant on one partition, in the workload's order
    order: dict[str, list[str]] = defaultdict(list)
    forwarded = 0
    for r in sorted(raw, key=lambda r: (r.partition, r.offset)):
        tenant = r.key.decode()
        home = murmur2_partition(r.key, PARTITIONS)
        want = crc32_partition(r.key, PARTITIONS) if tenant in crc32_tenants else home
        assert r.partition == want, (tenant, r.partition, want)
        forwarded += r.partition != home
        order[tenant].append(_ce_id(r))
    wl_order: dict[str, list[str]] = defaultdict(list)
    for e in wl.events:
        wl_order[e["data"]["tenant_id"]].append(e["id"])
    assert order == wl_order
    forwarded += sum(p is not None for _k, _v, _h, p in commands)
    inputs = n + len(commands)
    binary = sum(is_binary(h) for _k, _v, h, _p in [*placed, *commands])

    df, expected = reference_of(raw)
    assert df.attrs["invalid_count"] == 0, df.attrs["invalid_reasons"]
    modes = Counter("binary" if is_binary(h) else "structured" for _k, _v, h, _p in placed)
    assert Counter(df["mode"]) == modes
    sim = Sim(wl.limits).run(wl.events)
    assert sim.allocation_usage() == ref.usage(df, include_gauges=False)  # the fold is sound
    want_episodes = sim.all_episodes()

    tenants, exp, bad, compared = settle_usage(stack, expected, df, timeout=420)
    violations = stack.consume("quota-violations", idle=3.0, timeout=120)
    first, dup_violations = _first_outputs(violations, "violation_id")
    opened = {vid: d for (typ, vid), d in first.items() if typ == "quota.violation"}
    resolved = {vid: d for (typ, vid), d in first.items() if typ == "quota.violation_resolved"}
    got_episodes = episodes_of(opened, resolved)
    alerts = stack.consume("quota-alerts", idle=2.0, timeout=120)
    _alerts_first, dup_alerts = _first_outputs(alerts, "alert_id")
    routed = stack.consume("internal-routed", idle=2.0, timeout=120)
    report(
        name,
        tenants=len(wl.tenants),
        inputs=inputs,
        events=n,
        commands=len(commands),
        crc32_placed=f"{forwarded / inputs:.1%}",
        binary=f"{binary / inputs:.1%}",
        routed_records=len(routed),
        usage_wrong=f"{len(bad)}/{compared}",
        episodes_expected=len(want_episodes),
        episodes_missing=len(want_episodes - got_episodes),
        episodes_extra=len(got_episodes - want_episodes),
        violation_records=len(violations),
        duplicate_violations=dup_violations,
        alert_records=len(alerts),
        duplicate_alerts=dup_alerts,
        **figures,
    )
    assert forwarded >= 0.3 * inputs and 0.3 * inputs <= binary <= 0.5 * inputs
    assert len(routed) >= forwarded  # every CRC32-placed message went through the routed topic
    assert_usage_equal(stack, tenants, exp, bad, compared)
    stats = check_violations(
        stack,
        expected_episodes=want_episodes,
        expected_open=expected_open_of(df, wl),
        served=tenants,
    )
    assert stats["episodes"] > 20
    assert stack.consume("dead-letter", idle=2.0) == []


# ---------------------------------------------------------------------------------------------
# 1. one worker, three kills, the third while the restarted worker recovers its tables
# ---------------------------------------------------------------------------------------------


def test_three_kills_one_during_recovery(stack_factory: Callable[..., Stack]) -> None:
    seed = 7707
    wl, crc32_tenants = sized_workload(seed)
    stack = stack_factory(PARTITIONS)
    rng = random.Random(seed + 1)
    worker, commands = start_with_quotas(stack, wl, crc32_tenants, rng)
    placed = place(wl.events, crc32_tenants, rng)
    n = len(placed)
    load = Load(stack, placed)
    load.start()

    kills: list[dict[str, Any]] = []
    last = 0
    for frac in (0.15, 0.35):  # of the resource events committed (forwarding counts)
        target = max(int((frac + rng.uniform(-0.03, 0.03)) * n), last + 2000)
        stack.wait_for(partial(committed, stack, target), timeout=300, interval=0.3)
        time.sleep(rng.uniform(0.0, 1.0))
        worker.kill9()
        done, end = progress(stack, INPUTS)
        last = progress(stack)[0]
        kills.append({"committed": done, "end": end, "produced": load.done[0]})
        if len(kills) == 1:
            time.sleep(rng.uniform(0.2, 2.0))
            worker.start(wait_ready=True)
    in_recovery = restart_and_kill_in_recovery(stack, worker)
    done, end = progress(stack, INPUTS)
    kills.append({"committed": done, "end": end, "produced": load.done[0], **in_recovery})
    wipe_state(worker)
    worker.start(wait_ready=True)
    # every kill left input still to process
    assert all(k["committed"] < k["end"] for k in kills), kills
    load.finish()

    check_against_reference(
        stack,
        "three-kills",
        wl,
        crc32_tenants,
        placed,
        commands,
        partitions=PARTITIONS,
        kills=kills,
    )


# ---------------------------------------------------------------------------------------------
# 2. two workers; a third joins, and one of the two is killed while that rebalance runs
# ---------------------------------------------------------------------------------------------


def test_two_workers_one_killed_during_rebalance(stack_factory: Callable[..., Stack]) -> None:
    seed = 8808
    wl, crc32_tenants = sized_workload(seed)
    stack = stack_factory(PARTITIONS)
    rng = random.Random(seed + 1)
    a, commands = start_with_quotas(stack, wl, crc32_tenants, rng)
    b = stack.start_worker(wait_ready=True, **FAST_FAILOVER)
    a.wait_ready()
    stack.wait_for(lambda: group_state(stack) == ("Stable", 2), timeout=120)
    for w in (a, b):
        status, body = w.get("/internal/usage", timeout=30)
        assert status == 200 and body["partitions"], f"worker {w.port} owns no partition"
    placed = place(wl.events, crc32_tenants, rng)
    n = len(placed)
    load = Load(stack, placed)
    load.start()

    target = int(rng.uniform(0.2, 0.3) * n)
    stack.wait_for(partial(committed, stack, target), timeout=300, interval=0.3)
    c = stack.start_worker(wait_ready=False, **FAST_FAILOVER)
    t0 = time.monotonic()

    def rebalancing() -> str | None:
        state = group_state(stack)[0]
        if state in ("PreparingRebalance", "CompletingRebalance"):
            return state
        return "joined" if "Joined group" in log_since(c, 0) else None

    seen = stack.wait_for(rebalancing, timeout=120, interval=0.1)
    time.sleep(rng.uniform(0.0, 0.5))
    victim, survivor = (a, b) if rng.random() < 0.5 else (b, a)
    assert "]: Worker ready" not in log_since(c, 0), "the rebalance finished before the kill"
    victim.kill9()
    killed_after = round(time.monotonic() - t0, 1)
    joiner_ready = "]: Worker ready" in log_since(c, 0)
    produced = load.done[0]
    done, end = progress(stack, INPUTS)
    assert done < end, (done, end)
    load.finish()

    check_against_reference(
        stack,
        "kill-during-rebalance",
        wl,
        crc32_tenants,
        placed,
        commands,
        partitions=PARTITIONS,
        rebalance_seen=seen,
        kill_after_joiner_start_s=killed_after,
        joiner_ready_at_kill=joiner_ready,
        victim=victim.port,
        survivor=survivor.port,
        joiner=c.port,
        committed_at_kill=(done, end),
        produced_at_kill=produced,
    )
