"""Exact amounts (micro-units) and the per-instance allocation helpers the stream folds with."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from novaquota.schemas import (
    decode,
    from_micros,
    instance_key,
    instance_key_for,
    is_release,
    resources_of,
)
from novaquota.schemas.allocation import (
    ALLOCATION_TYPES,
    GAUGE_TYPES,
    RELEASE_TYPES,
    WINDOWED_TYPES,
)
from novaquota.schemas.amounts import to_micros
from novaquota.schemas.resource_events import RESOURCE_EVENT_MODELS, InventoryReported

SAMPLES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "schema_samples.json").read_text()
)
M = 1_000_000


def event(type_: str, **changes: Any) -> Any:
    value = {
        "specversion": "1.0",
        "id": "e",
        "source": "s",
        "type": type_,
        "time": "2024-05-01T12:00:00Z",
        "data": {**SAMPLES[type_], **changes},
    }
    return decode(orjson.dumps(value))


@given(st.integers(-(10**20), 10**20))
def test_micros_round_trip(micros: int) -> None:
    assert to_micros(from_micros(micros)) == micros


@given(st.decimals(min_value=-(10**12), max_value=10**12, places=6))
def test_decimal_round_trip(d: Decimal) -> None:
    assert from_micros(to_micros(d)) == d


def test_micros_are_exact_and_tidy() -> None:
    assert to_micros(Decimal("0.000001")) == 1
    assert to_micros(Decimal("1E+3")) == 1_000_000_000
    assert to_micros(Decimal("2.500000000")) == 2_500_000
    assert str(from_micros(2_500_000)) == "2.5"
    assert str(from_micros(100_000_000)) == "100"
    assert str(from_micros(1)) == "0.000001"
    with pytest.raises(ValueError):
        to_micros(Decimal("0.0000001"))
    with pytest.raises(ValueError):
        to_micros(Decimal("NaN"))


def test_ten_million_up_and_down_ends_where_it_started() -> None:
    step = to_micros(Decimal("0.1"))
    total = 0
    for _ in range(10_000):  # the property is exactness, the count only shows it (ints)
        total += step
    for _ in range(10_000):
        total -= step
    assert total == 0


def test_type_sets_partition_resource_events() -> None:
    sets = [ALLOCATION_TYPES, RELEASE_TYPES, GAUGE_TYPES, WINDOWED_TYPES, {"inventory.reported"}]
    assert set().union(*sets) == set(RESOURCE_EVENT_MODELS)
    assert sum(len(s) for s in sets) == len(RESOURCE_EVENT_MODELS)


@pytest.mark.parametrize(
    ("type_", "key", "held"),
    [
        ("vm.created", "vm:vm-1", {"cpu": 2_500_000, "memory": 4096 * M, "gpu": M, "instances": M}),
        ("vm.resized", "vm:vm-1", {"cpu": 4 * M, "memory": 8192 * M, "instances": M}),
        ("volume.created", "volume:vol-1", {"storage": 100 * M, "volumes": M}),
        ("volume.resized", "volume:vol-1", {"storage": 150_500_000, "volumes": M}),
        ("snapshot.created", "snapshot:snap-1", {"snapshots": M, "storage": 20 * M}),
        ("backup.created", "backup:bak-1", {"backups": M, "storage": 30 * M}),
        ("floating_ip.allocated", "fip:fip-1", {"floating_ips": M}),
        ("load_balancer.created", "lb:lb-1", {"load_balancers": M}),
        (
            "network.sampled",
            "nic:nic-1",
            {"bandwidth_in": 120_500_000, "bandwidth_out": 80 * M, "connections": 42 * M},
        ),
        ("usage.reported", "usage:db-1", {"cpu": 1_500_000, "memory": 2048 * M, "storage": 50 * M}),
        ("vm.deleted", "vm:vm-1", {}),
        ("volume.deleted", "volume:vol-1", {}),
        ("snapshot.deleted", "snapshot:snap-1", {}),
        ("backup.deleted", "backup:bak-1", {}),
        ("floating_ip.released", "fip:fip-1", {}),
        ("load_balancer.deleted", "lb:lb-1", {}),
    ],
)
def test_instance_and_holding(type_: str, key: str, held: dict[str, int]) -> None:
    decoded = event(type_)
    assert instance_key(decoded) == instance_key(decoded.data) == key
    assert resources_of(decoded) == held
    assert is_release(decoded) == (type_ in RELEASE_TYPES)


def test_gpu_only_when_held() -> None:
    assert "gpu" not in resources_of(event("vm.created", gpu=0))


def test_usage_reported_release() -> None:
    released = event("usage.reported", released=True, resources={})
    assert is_release(released) and resources_of(released) == {}
    no_resources = {k: v for k, v in SAMPLES["usage.reported"].items() if k != "resources"}
    value = orjson.dumps(
        {
            "specversion": "1.0",
            "id": "e",
            "source": "s",
            "type": "usage.reported",
            "time": "2024-05-01T12:00:00Z",
            "data": {**no_resources, "released": True},
        }
    )
    assert is_release(decode(value))


def test_api_requests_consumption() -> None:
    decoded = event("api.requests")
    assert resources_of(decoded) == {"api_requests": 250 * M}
    assert not is_release(decoded)
    with pytest.raises(ValueError):
        instance_key(decoded)


def test_inventory_instances_share_event_keys() -> None:
    decoded = event("inventory.reported")
    assert isinstance(decoded.data, InventoryReported)
    with pytest.raises(ValueError):
        resources_of(decoded)
    vm, db = decoded.data.instances
    assert instance_key(vm) == "vm:vm-1" == instance_key(event("vm.created"))
    assert resources_of(vm) == {"cpu": 4 * M, "memory": 8192 * M, "instances": M}
    assert instance_key(db) == "usage:db-1" == instance_key_for("database", "db-1")
    assert (vm.tenant_id, vm.project_id, db.tenant_id) == ("acme", "web", "acme")
    assert instance_key_for("floating_ip", "x") == "fip:x"


def test_commands_hold_nothing() -> None:
    decoded = event("quota.set")
    with pytest.raises(ValueError):
        resources_of(decoded)
    with pytest.raises(ValueError):
        instance_key(decoded)
    assert not is_release(decoded)
