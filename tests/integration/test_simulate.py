"""``novaquota simulate`` against the real broker and a real worker.

The simulator's Kafka output is the same bytes as its file output for the same options; every
message is accepted (nothing on the dead-letter topic); the worker's allocation usage equals the
independent recomputation; and only the misbehaving tenants open violations.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from novaquota.ops import simulate
from novaquota.ops.processes import events_processed
from tests.integration.conftest import Stack
from tests.support import reference as ref

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEVEL_OF = {"T": "tenant", "P": "project", "U": "user"}
NOT_ALLOCATED = {*ref.GAUGES, "api_requests"}


def _served(stack: Stack) -> dict[tuple[str, str, str, str], Decimal]:
    status, body = stack.get("/internal/usage")
    assert status == 200
    out = {}
    for t, b in body["tenants"].items():
        for ekey, per in b["usage"].items():
            for res, amount in per.items():
                if res not in NOT_ALLOCATED and Decimal(amount) != 0:
                    out[(t, LEVEL_OF[ekey[0]], ekey[1:], res)] = Decimal(amount)
    return out


def test_simulate_to_kafka_matches_the_file_and_the_reference(
    stack_factory: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = stack_factory(4)
    stack.start_worker()
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    argv = [
        "--tenants", "30", "--rate", "20", "--duration", "600", "--seed", "11",
        "--misbehaving", "0.1", "--start", start.isoformat(),
    ]  # fmt: skip
    assert simulate.main([*argv, "--speed", "0"], stack.settings) == 0
    out = tmp_path / "sim.jsonl"
    assert simulate.main([*argv, "--out", str(out)], stack.settings) == 0
    lines = out.read_bytes().splitlines()
    n_commands = sum(1 for ln in lines if simulate.is_command(json.loads(ln)))

    commands = stack.consume("quota-commands", expect=n_commands, timeout=60)
    events = stack.consume("resource-events", expect=len(lines) - n_commands, timeout=60)
    assert sorted(r.value for r in commands + events) == sorted(lines)  # same bytes
    for r in commands + events:
        assert r.key == simulate.tenant_key(json.loads(r.value))

    worker = stack.workers[0]

    def done() -> bool:
        try:
            return events_processed(worker.url) >= len(lines)
        except OSError:
            return False

    stack.wait_for(done, timeout=300, interval=1.0)
    time.sleep(2.0)
    assert stack.consume("dead-letter", idle=2.0) == []

    df = ref.parse_records(ref.from_consumer_records(events), accept="events")
    assert df.attrs["invalid_count"] == 0
    expected = {
        k: v for k, v in ref.usage(df, include_gauges=False).items() if k[3] not in NOT_ALLOCATED
    }
    stack.wait_for(lambda: _served(stack) == expected, timeout=120, interval=1.0)

    wl = simulate.Workload(simulate.WorkloadSpec(tenants=30, seed=11, misbehaving=0.1))
    bad = {wl.tenant(i) for i in wl.misbehaving}
    violations: list[dict[str, Any]] = [
        json.loads(r.value)["data"] for r in stack.consume("quota-violations", idle=3.0)
    ]
    opened = {d["tenant_id"] for d in violations if "cause_event_id" in d}
    assert opened, "the misbehaving tenants opened no violation"
    assert opened <= bad, sorted(opened - bad)
