"""The view store, RocksDB and its in-memory twin: one suite against both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from novaquota.projections.folds import FoldParams, ProjectionState, fold_batch
from novaquota.projections.store import MemoryStore, RocksStore, ViewStore
from tests.unit.test_projections_folds import api, cmd, net, vm


@pytest.fixture(params=["memory", "rocks"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ViewStore]:
    s: ViewStore = MemoryStore() if request.param == "memory" else RocksStore(tmp_path / "v")
    yield s
    s.close()


EVENTS = [
    cmd("template.applied", {"template": "free", "level": "tenant", "entity_id": "t1"}),
    cmd("budget.set", {"level": "tenant", "entity_id": "t1", "monthly_usd": 5}),
    vm("vm.created", "v1", 0, 2, project_id="p"),
    net(1, 5),
    api(2, 3),
]
DELETE = vm("vm.deleted", "v1", 5, project_id="p")


def folded() -> ProjectionState:
    st = ProjectionState()
    fold_batch(st, EVENTS, FoldParams())
    return st


def test_round_trip_keeps_state_and_position(store: ViewStore) -> None:
    st = folded()
    store.commit(st, {("topic", 0): 42})
    loaded = store.load()
    assert loaded.positions == {("topic", 0): 42}
    assert loaded.state.series == st.series
    assert loaded.state.quotas == st.quotas
    assert loaded.state.budgets == st.budgets
    assert loaded.state.instances == st.instances
    assert loaded.state.gauges == st.gauges
    assert loaded.state.api_seen == st.api_seen
    assert loaded.state.watermark == st.watermark
    assert st.dirty.series == set()  # the commit consumed the dirty set


def test_incremental_commits_equal_one_commit(store: ViewStore) -> None:
    st = folded()
    store.commit(st, {("topic", 0): 1})
    fold_batch(st, [DELETE], FoldParams())
    store.commit(st, {("topic", 0): 2})
    once = MemoryStore()
    reloaded = store.load().state
    reloaded.mark_all_dirty()
    once.commit(reloaded, {})
    fresh = MemoryStore()
    st2 = folded()
    fold_batch(st2, [DELETE], FoldParams())
    fresh.commit(st2, {})
    assert once.dump() == fresh.dump()


def test_drop_views_keeps_the_emitted_ledger(store: ViewStore) -> None:
    store.commit(folded(), {("topic", 0): 7})
    store.record_emitted(["a", "b"], {("topic", 0): 7})
    store.drop_views()
    loaded = store.load()
    assert loaded.positions == {} and loaded.state.series == {}
    assert loaded.emitted_ids == {"a", "b"}
    assert loaded.emitted_positions == {("topic", 0): 7}


def test_custom_templates_round_trip(store: ViewStore) -> None:
    st = ProjectionState()
    fold_batch(
        st,
        [
            cmd(
                "template.defined",
                {
                    "name": "gpu1",
                    "quotas": [{"resource_type": "gpu", "limit": 1.5, "window": None}],
                },
            ),
            cmd("template.applied", {"template": "gpu1", "level": "tenant", "entity_id": "t1"}),
        ],
        FoldParams(),
    )
    store.commit(st, {})
    loaded = store.load().state
    assert loaded.templates == st.templates
    assert loaded.quotas[("t1", "tenant", "t1", "gpu")][0].limit == 1_500_000
