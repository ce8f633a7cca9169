"""Worker glue without a broker: emitted-ledger rules and the forecast thread."""

from __future__ import annotations

import asyncio

from novaquota.projections.config import ProjectionSettings
from novaquota.projections.emit import Emission
from novaquota.projections.folds import FoldParams, fold_batch
from novaquota.projections.metrics import ProjectionMetrics
from novaquota.projections.store import MemoryStore
from novaquota.projections.worker import ProjectionWorker
from novaquota.streams.settings import Settings
from tests.unit.test_projections_folds import cmd, vm


def make(store: MemoryStore | None = None) -> ProjectionWorker:
    return ProjectionWorker(
        Settings(topic_prefix="unit."),
        ProjectionSettings(emit=False),
        store=store or MemoryStore(),
        metrics=ProjectionMetrics(),
    )


def test_replaying_until_past_the_emitted_position() -> None:
    store = MemoryStore()
    store.record_emitted(["x"], {("unit.resource-events", 0): 10})
    w = make(store)
    assert w.emitted_ids == {"x"}
    w.positions = {("unit.resource-events", 0): 5, ("unit.quota-violations", 0): 99}
    assert w.replaying()  # the violations topic does not count
    w.positions[("unit.resource-events", 0)] = 11
    assert not w.replaying()


def test_forecasts_run_in_a_thread_on_a_snapshot() -> None:
    w = make()
    events = [
        cmd(
            "quota.set", {"level": "tenant", "entity_id": "t1", "resource_type": "cpu", "limit": 10}
        )
    ]
    events += [vm("vm.created", f"v{i}", i * 60, 1) for i in range(8)]  # one more core an hour
    fold_batch(w.state, events, FoldParams())
    w.status.ready = True

    async def go() -> list[Emission]:
        w._maybe_start_forecast()
        task = w._forecast_task
        if task is None:  # the analytics package is not installed
            return []
        return await task

    outs = asyncio.run(go())
    assert all(o.role == "alerts" for o in outs)
    assert len({o.id for o in outs}) == len(outs)
