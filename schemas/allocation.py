"""What an event's resource instance holds: pure helpers the stream folds with.

Allocation is tracked per instance (the newest event of an instance decides what it holds), so
the stream needs, for every event, the instance it is about (``instance_key``), what that
instance holds afterwards (``resources_of``, exact micro-units) and whether it is a release.
Inventory instances map onto the same keys as the events of their kind, so a reconciliation
compares like with like.
"""

from __future__ import annotations

from typing import Final

from novaquota.schemas.amounts import MICRO, to_micros
from novaquota.schemas.codec import Decoded
from novaquota.schemas.commands import Command
from novaquota.schemas.resource_events import (
    ApiRequests,
    BackupCreated,
    BackupDeleted,
    FloatingIpAllocated,
    FloatingIpReleased,
    InventoryInstance,
    LoadBalancerCreated,
    LoadBalancerDeleted,
    NetworkSampled,
    ResourceEvent,
    SnapshotCreated,
    SnapshotDeleted,
    UsageReported,
    VmCreated,
    VmDeleted,
    VmResized,
    VolumeCreated,
    VolumeDeleted,
    VolumeResized,
)

__all__ = [
    "ALLOCATION_TYPES",
    "GAUGE_TYPES",
    "KEY_PREFIXES",
    "RELEASE_TYPES",
    "WINDOWED_TYPES",
    "instance_key",
    "instance_key_for",
    "is_release",
    "resources_of",
]

#: Events about a held instance (``usage.reported`` may also be a release).
ALLOCATION_TYPES: Final = frozenset(
    {
        "vm.created",
        "vm.resized",
        "volume.created",
        "volume.resized",
        "snapshot.created",
        "backup.created",
        "floating_ip.allocated",
        "load_balancer.created",
        "usage.reported",
    }
)
RELEASE_TYPES: Final = frozenset(
    {
        "vm.deleted",
        "volume.deleted",
        "snapshot.deleted",
        "backup.deleted",
        "floating_ip.released",
        "load_balancer.deleted",
    }
)
#: The latest sample of each instance counts until it is older than the sample TTL.
GAUGE_TYPES: Final = frozenset({"network.sampled"})
#: Consumed in the tumbling window containing the event time.
WINDOWED_TYPES: Final = frozenset({"api.requests"})

#: Instance kind (as in ``inventory.reported``) -> key prefix; anything else is ``usage``.
KEY_PREFIXES: Final[dict[str, str]] = {
    "vm": "vm",
    "volume": "volume",
    "snapshot": "snapshot",
    "backup": "backup",
    "floating_ip": "fip",
    "fip": "fip",
    "load_balancer": "lb",
    "lb": "lb",
    "nic": "nic",
    "interface": "nic",
}
_ONE: Final = MICRO

Subject = Decoded | ResourceEvent | Command | InventoryInstance


def _data(event: Subject) -> ResourceEvent | Command | InventoryInstance:
    return event.data if isinstance(event, Decoded) else event


def instance_key_for(kind: str, resource_id: str) -> str:
    """The key of an instance of ``kind``; e.g. ``("vm", "v1")`` -> ``"vm:v1"``."""
    return f"{KEY_PREFIXES.get(kind, 'usage')}:{resource_id}"


def instance_key(event: Subject) -> str:
    """The resource instance an event is about (``vm:<vm_id>``, ``fip:<ip_id>``, ...).

    ``ValueError`` for events that are not about one instance (``api.requests``,
    ``inventory.reported``, commands).
    """
    data = _data(event)
    match data:
        case VmCreated() | VmResized() | VmDeleted():
            return f"vm:{data.vm_id}"
        case VolumeCreated() | VolumeResized() | VolumeDeleted():
            return f"volume:{data.volume_id}"
        case SnapshotCreated() | SnapshotDeleted():
            return f"snapshot:{data.snapshot_id}"
        case BackupCreated() | BackupDeleted():
            return f"backup:{data.backup_id}"
        case FloatingIpAllocated() | FloatingIpReleased():
            return f"fip:{data.ip_id}"
        case LoadBalancerCreated() | LoadBalancerDeleted():
            return f"lb:{data.lb_id}"
        case UsageReported():
            return f"usage:{data.resource_id}"
        case NetworkSampled():
            return f"nic:{data.interface_id}"
        case InventoryInstance():
            return instance_key_for(data.kind, data.resource_id)
    raise ValueError(f"{type(data).__name__} is not about one resource instance")


def is_release(event: Subject) -> bool:
    """A deletion or release: the instance holds nothing afterwards."""
    data = _data(event)
    if isinstance(data, UsageReported):
        return data.released
    return getattr(data, "TYPE", "") in RELEASE_TYPES


def resources_of(event: Subject) -> dict[str, int]:
    """What the instance holds after ``event`` (resource type -> micro-units; ``{}`` after a
    release). For ``api.requests``, the consumption. ``ValueError`` for inventory reports and
    commands (use their instances / fields)."""
    data = _data(event)
    match data:
        case VmCreated() | VmResized():
            held = {"cpu": to_micros(data.cpu), "memory": to_micros(data.memory), "instances": _ONE}
            if data.gpu > 0:
                held["gpu"] = to_micros(data.gpu)
            return held
        case VolumeCreated() | VolumeResized():
            return {"storage": to_micros(data.size_gb), "volumes": _ONE}
        case SnapshotCreated():
            return {"snapshots": _ONE, "storage": to_micros(data.size_gb)}
        case BackupCreated():
            return {"backups": _ONE, "storage": to_micros(data.size_gb)}
        case FloatingIpAllocated():
            return {"floating_ips": _ONE}
        case LoadBalancerCreated():
            return {"load_balancers": _ONE}
        case NetworkSampled():
            return {
                "bandwidth_in": to_micros(data.bandwidth_in),
                "bandwidth_out": to_micros(data.bandwidth_out),
                "connections": to_micros(data.connections),
            }
        case UsageReported() | InventoryInstance():
            if isinstance(data, UsageReported) and data.released:
                return {}
            return {rt: to_micros(amount) for rt, amount in data.resources.items()}
        case ApiRequests():
            return {"api_requests": to_micros(data.count)}
    if is_release(data):
        return {}
    raise ValueError(f"{type(data).__name__} does not hold resources by itself")
