"""The message step shared by the worker's agents and ``novaquota replay``.

``classify`` decodes an input record and says what it is: a dead letter (with the reason), a
custom template definition, or a message for one tenant. ``apply`` runs a tenant's message
through the ``Enforcer`` and says what came of it: applied (with the outputs), a duplicate of
an earlier message with the same (source, id), or a dead letter the rules refused. The callers
only act on the outcome (the worker forwards, sends and acknowledges; the replay records).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from novaquota.schemas.codec import Decoded, DecodeLimits, decode
from novaquota.schemas.exceptions import DecodeError
from novaquota.streams.enforce import Emit, Enforcer, Rejection
from novaquota.streams.translate import with_tenant

__all__ = ["Outcome", "apply", "classify"]

Kind = Literal["dead_letter", "template", "tenant", "applied", "duplicate"]


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    decoded: Decoded | None = None
    tenant: str | None = None
    """The tenant the message belongs to (``data.tenant_id``, else the record key)."""
    reason: str = ""
    message: str = ""
    """Why it is a dead letter."""
    emits: list[Emit] = field(default_factory=list)


def classify(
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    key: bytes | None,
    *,
    timestamp_ms: int,
    limits: DecodeLimits,
) -> Outcome:
    """Decode one input record: a dead letter, a template definition, or a tenant's message."""
    try:
        decoded = decode(value, headers, record_timestamp_ms=timestamp_ms, limits=limits)
    except DecodeError as exc:
        return Outcome("dead_letter", reason=exc.reason, message=exc.message)
    if decoded.type == "template.defined":
        return Outcome("template", decoded)
    tenant = decoded.tenant_id
    if tenant is None and key:
        tenant = key.decode("utf-8", "replace")
    if tenant is None:
        return Outcome(
            "dead_letter",
            decoded,
            reason="missing_field",
            message="data.tenant_id: required for routing",
        )
    return Outcome("tenant", with_tenant(decoded, tenant), tenant)


def apply(enforcer: Enforcer, msg: Outcome, stream: str, offset: int) -> Outcome:
    """Apply a tenant's message (``classify``'s ``tenant`` outcome) read at ``offset`` of
    ``stream``. Exceptions other than the rules' refusals propagate (internal errors)."""
    decoded: Any = msg.decoded
    try:
        emits = enforcer.process(decoded, stream, offset)
    except Rejection as exc:
        return Outcome("dead_letter", decoded, msg.tenant, exc.reason, exc.message)
    if enforcer.last_duplicate:
        return Outcome("duplicate", decoded, msg.tenant)
    return Outcome("applied", decoded, msg.tenant, emits=emits)
