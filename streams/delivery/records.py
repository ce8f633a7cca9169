"""What the worker delivers: one violation, resolve or alert read from its topic (contract §5).

The idempotency key is ``<type>:<id>`` with the record's deterministic id (``violation_id`` or
``alert_id``): a replay, a restart or a redelivery after a crash yields the same key, so a
receiver can recognise a record it has already seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from novaquota.schemas.codec import decode_output
from novaquota.schemas.envelope import Envelope
from novaquota.schemas.exceptions import DecodeError
from novaquota.schemas.outputs import QuotaAlert, QuotaViolation, QuotaViolationResolved

__all__ = ["Notification", "dumps", "idempotency_key", "parse_record"]


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal) and obj.is_finite():
        return orjson.Fragment(format(obj, "f").encode())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """JSON with exact decimals as numbers, times as RFC 3339 UTC, keys sorted (the same
    record gives the same bytes on every attempt and every redelivery)."""
    return orjson.dumps(
        obj, default=_default, option=orjson.OPT_UTC_Z | orjson.OPT_SORT_KEYS | orjson.OPT_NAIVE_UTC
    )


def idempotency_key(type_: str, record_id: str) -> str:
    return f"{type_}:{record_id}"


@dataclass(frozen=True, slots=True)
class Notification:
    """One record to deliver, with what routing and the channels need."""

    type: str  # quota.violation | quota.violation_resolved | quota.alert
    id: str  # violation_id or alert_id
    tenant_id: str
    severity: str
    kind: str
    envelope: Envelope
    data: QuotaViolation | QuotaAlert

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.type, self.id)

    @property
    def dedup_key(self) -> str:
        """PagerDuty's ``dedup_key``: the violation_id (trigger and resolve share it) or the
        alert_id."""
        return self.id

    @property
    def is_resolve(self) -> bool:
        return self.type == QuotaViolationResolved.TYPE

    @property
    def ordering_key(self) -> str:
        """Deliveries with the same key go to a channel in log order (a trigger before its
        resolve)."""
        return self.id

    def event_json(self) -> dict[str, Any]:
        """The CloudEvent as written on the topic: amounts stay exact ``Decimal``s (``dumps``
        writes them as JSON numbers with their digits), times ``datetime``s."""
        return {
            **self.envelope.model_dump(mode="json", exclude_none=True),
            "data": self.data.model_dump(),
        }

    def summary(self) -> str:
        """One line for humans: Slack text, PagerDuty summary, mail subject."""
        d = self.data
        scope = f"{d.level} {d.entity_id}" + (
            f" of tenant {d.tenant_id}" if d.level != "tenant" else ""
        )
        if isinstance(d, QuotaAlert):
            return (
                f"{d.severity.upper()} {d.kind} alert on {d.resource_type} for {scope}: {d.message}"
            )
        what = "resolved" if self.is_resolve else "violation"
        limit = f"limit {d.limit}" + (f", burst {d.burst_limit}" if d.burst_limit else "")
        return (
            f"{d.severity.upper()} {d.kind} {what} on {d.resource_type} for {scope}: "
            f"usage {d.usage} ({limit})"
        )


def parse_record(value: bytes | None) -> Notification:
    """Decode one record of the violations or alerts topic; DecodeError when it is not one."""
    if value is None:
        raise DecodeError("malformed_json", "the record has no value")
    envelope, data = decode_output(value)
    if isinstance(data, QuotaViolation):  # QuotaViolationResolved is a subclass
        return Notification(
            envelope.type,
            data.violation_id,
            data.tenant_id,
            data.severity,
            data.kind,
            envelope,
            data,
        )
    if isinstance(data, QuotaAlert):
        return Notification(
            envelope.type, data.alert_id, data.tenant_id, data.severity, data.kind, envelope, data
        )
    raise DecodeError("unknown_type", f"type: {envelope.type} is not delivered")
