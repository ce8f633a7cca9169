"""Pure domain core of the quota stream: no Faust, Kafka, pydantic or web imports.

Every enforcement rule lives here; Faust agents only load state, call ``apply``, store state and
send the outputs. Amounts are int micro-units, times int microseconds (event time, UTC).
"""

from __future__ import annotations

from .config import DEFAULT_CONFIG, Config
from .decide import apply, apply_system
from .exceptions import QuotaCoreError, StateVersionError
from .inputs import (
    Allocation,
    BudgetSet,
    Consumption,
    GaugeSample,
    Input,
    Inventory,
    InventoryItem,
    QuotaDeleted,
    QuotaSet,
    RateLimitSet,
    Reconcile,
    ReservationCancelled,
    ReservationCreated,
    Scope,
    SystemTotals,
    TenantDeleted,
    Tick,
    source_system_of,
)
from .outputs import Alert, Audit, Output, Rejected, ViolationOpened, ViolationResolved
from .state import (
    STATE_VERSION,
    InstanceState,
    Quota,
    Reservation,
    SystemState,
    TenantState,
    expired,
)
from .tokenbucket import Bucket, new_bucket, refill, try_take
from .units import MICRO, SEC_US, entity_key, split_entity_key
from .views import (
    CheckResult,
    LevelCheck,
    bucket_of,
    check,
    next_deadline,
    quota_of,
    recompute_usage,
    reserved_of,
    store_bucket,
    tenant_totals,
    usage_of,
    utilization_view,
)
from .windows import window_bounds

__all__ = [
    "DEFAULT_CONFIG",
    "MICRO",
    "SEC_US",
    "STATE_VERSION",
    "Alert",
    "Allocation",
    "Audit",
    "Bucket",
    "BudgetSet",
    "CheckResult",
    "Config",
    "Consumption",
    "GaugeSample",
    "Input",
    "InstanceState",
    "Inventory",
    "InventoryItem",
    "LevelCheck",
    "Output",
    "Quota",
    "QuotaCoreError",
    "QuotaDeleted",
    "QuotaSet",
    "RateLimitSet",
    "Reconcile",
    "Rejected",
    "Reservation",
    "ReservationCancelled",
    "ReservationCreated",
    "Scope",
    "StateVersionError",
    "SystemState",
    "SystemTotals",
    "TenantDeleted",
    "TenantState",
    "Tick",
    "ViolationOpened",
    "ViolationResolved",
    "apply",
    "apply_system",
    "bucket_of",
    "check",
    "entity_key",
    "expired",
    "new_bucket",
    "next_deadline",
    "quota_of",
    "recompute_usage",
    "refill",
    "reserved_of",
    "source_system_of",
    "split_entity_key",
    "store_bucket",
    "tenant_totals",
    "try_take",
    "usage_of",
    "utilization_view",
    "window_bounds",
]
