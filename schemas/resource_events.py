"""``data`` of the resource events (contract section 3), one frozen model per type.

Inbound data is read tolerantly: unknown fields are ignored so that producers can add fields
without coordinating with us, while a missing or invalid field the contract requires rejects the
message. Every model carries the scope (tenant, optional project and user).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, model_validator

from novaquota.schemas.amounts import Amount, Count, CpuAmount, Resources, WholeAmount
from novaquota.schemas.common import Id, TenantId, Timestamp, fail

__all__ = [
    "RESOURCE_EVENT_MODELS",
    "ApiRequests",
    "BackupCreated",
    "BackupDeleted",
    "FloatingIpAllocated",
    "FloatingIpReleased",
    "InventoryInstance",
    "InventoryReported",
    "LoadBalancerCreated",
    "LoadBalancerDeleted",
    "NetworkSampled",
    "ResourceEvent",
    "SnapshotCreated",
    "SnapshotDeleted",
    "UsageReported",
    "VmCreated",
    "VmDeleted",
    "VmResized",
    "VolumeCreated",
    "VolumeDeleted",
    "VolumeResized",
]


class ResourceEvent(BaseModel):
    """Base of every resource event's data: the scope the usage counts for."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    TYPE: ClassVar[str] = ""

    tenant_id: TenantId
    project_id: Id | None = None
    user_id: Id | None = None


class _VmSpec(ResourceEvent):
    vm_id: Id
    cpu: CpuAmount
    memory: Amount
    gpu: Amount = Decimal(0)


class VmCreated(_VmSpec):
    """A VM now holds exactly ``cpu`` cores, ``memory`` MiB, ``gpu`` units and one instance."""

    TYPE: ClassVar[str] = "vm.created"


class VmResized(_VmSpec):
    """Same holding rule as ``vm.created``: the newest event of the VM decides."""

    TYPE: ClassVar[str] = "vm.resized"


class VmDeleted(ResourceEvent):
    TYPE: ClassVar[str] = "vm.deleted"
    vm_id: Id


class VolumeCreated(ResourceEvent):
    """``storage`` (GiB) = ``size_gb`` and one volume."""

    TYPE: ClassVar[str] = "volume.created"
    volume_id: Id
    size_gb: Amount


class VolumeResized(ResourceEvent):
    TYPE: ClassVar[str] = "volume.resized"
    volume_id: Id
    size_gb: Amount


class VolumeDeleted(ResourceEvent):
    TYPE: ClassVar[str] = "volume.deleted"
    volume_id: Id


class SnapshotCreated(ResourceEvent):
    TYPE: ClassVar[str] = "snapshot.created"
    snapshot_id: Id
    size_gb: Amount


class SnapshotDeleted(ResourceEvent):
    """``size_gb`` is informational on a delete: the release frees whatever was held."""

    TYPE: ClassVar[str] = "snapshot.deleted"
    snapshot_id: Id
    size_gb: Amount | None = None


class BackupCreated(ResourceEvent):
    TYPE: ClassVar[str] = "backup.created"
    backup_id: Id
    size_gb: Amount


class BackupDeleted(ResourceEvent):
    TYPE: ClassVar[str] = "backup.deleted"
    backup_id: Id
    size_gb: Amount | None = None


class FloatingIpAllocated(ResourceEvent):
    TYPE: ClassVar[str] = "floating_ip.allocated"
    ip_id: Id


class FloatingIpReleased(ResourceEvent):
    TYPE: ClassVar[str] = "floating_ip.released"
    ip_id: Id


class LoadBalancerCreated(ResourceEvent):
    TYPE: ClassVar[str] = "load_balancer.created"
    lb_id: Id


class LoadBalancerDeleted(ResourceEvent):
    TYPE: ClassVar[str] = "load_balancer.deleted"
    lb_id: Id


class NetworkSampled(ResourceEvent):
    """A gauge sample of one interface (Mbit/s, open connections)."""

    TYPE: ClassVar[str] = "network.sampled"
    interface_id: Id
    bandwidth_in: Amount
    bandwidth_out: Amount
    connections: WholeAmount


class ApiRequests(ResourceEvent):
    """``count`` requests consumed in the window containing the event's ``time``."""

    TYPE: ClassVar[str] = "api.requests"
    count: Count


class UsageReported(ResourceEvent):
    """A generic allocation; ``released: true`` releases it (then ``resources`` may be absent)."""

    TYPE: ClassVar[str] = "usage.reported"
    resource_id: Id
    resources: Resources = {}
    released: bool = False

    @model_validator(mode="before")
    @classmethod
    def _resources_required_unless_released(cls, data: Any) -> Any:
        if isinstance(data, dict) and "resources" not in data and data.get("released") is not True:
            fail("missing_field", "required unless released is true", field="resources")
        return data


class InventoryInstance(BaseModel):
    """One live instance as the source system knows it; the scope defaults to the report's."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    resource_id: Id
    kind: Id
    tenant_id: TenantId
    project_id: Id | None = None
    user_id: Id | None = None
    resources: Resources


class InventoryReported(ResourceEvent):
    """The full set of live instances one source system knows for the tenant."""

    TYPE: ClassVar[str] = "inventory.reported"
    source_system: Id
    as_of: Timestamp
    instances: tuple[InventoryInstance, ...]

    @model_validator(mode="before")
    @classmethod
    def _instances_inherit_tenant(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        tenant = data.get("tenant_id")
        instances = data.get("instances")
        if not isinstance(tenant, str) or not isinstance(instances, list):
            return data
        filled: list[Any] = []
        for index, item in enumerate(instances):
            if isinstance(item, dict):
                own = item.get("tenant_id")
                if own is None:
                    item = {**item, "tenant_id": tenant}
                elif own != tenant:
                    fail(
                        "invalid_field",
                        "tenant {own} differs from the report's tenant {tenant}",
                        field=f"instances.{index}.tenant_id",
                        own=repr(own),
                        tenant=repr(tenant),
                    )
            filled.append(item)
        return {**data, "instances": filled}


RESOURCE_EVENT_MODELS: Final[dict[str, type[ResourceEvent]]] = {
    model.TYPE: model
    for model in (
        VmCreated,
        VmResized,
        VmDeleted,
        VolumeCreated,
        VolumeResized,
        VolumeDeleted,
        SnapshotCreated,
        SnapshotDeleted,
        BackupCreated,
        BackupDeleted,
        FloatingIpAllocated,
        FloatingIpReleased,
        LoadBalancerCreated,
        LoadBalancerDeleted,
        NetworkSampled,
        ApiRequests,
        UsageReported,
        InventoryReported,
    )
}
