"""Admission decisions that change state: grants (check-and-reserve) and token buckets.

A read-only check is ``views.check``. A check that must change state goes through the tenant's
agent as one input, so that N concurrent requests against capacity for K yield exactly K grants:

- ``reserve``: the grant is held (it counts as reserved for its user, project and tenant) until
  the allocation event of its ``resource_id`` arrives, which converts it into usage in the same
  state update (``convert_grants``), or until its TTL passes on the owner's wall clock
  (``release_grant(..., "expired")``, audited). A repeated request with the same
  ``idempotency_key`` gets the same answer and the same grant.
- ``api_requests`` with a rate limit (``rate_limit.set``) at any level of the scope takes tokens
  from every such level's bucket, all or nothing.

Times here are the owner's wall clock at the moment the request was accepted, carried in the
request record, so that a replay of the internal topic decides exactly as the first run did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from .decide import audit_record, convert_grants
from .ids import det_id
from .inputs import Scope
from .outputs import Audit
from .state import TenantState
from .tokenbucket import refill
from .units import SEC_US, fmt_amount
from .views import CheckResult, LevelCheck, bucket_of, check, store_bucket

__all__ = [
    "API_REQUESTS",
    "AdmissionRequest",
    "AdmissionResult",
    "Grant",
    "convert_grants",
    "decide_admission",
    "grant_of",
    "needs_agent",
    "next_grant_expiry",
    "release_grant",
]

API_REQUESTS: Final = "api_requests"
ADMISSION_MEMORY_US: Final = 24 * 3600 * SEC_US
"""How long a repeated idempotency key gets the recorded answer."""

G_PROJECT, G_USER, G_RES, G_EXPIRES, G_RESOURCE_ID, G_IDEM, G_AT, G_ACTOR = range(8)
A_GRANT, A_ALLOWED, A_REASON, A_AT = range(4)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionRequest:
    request_id: str
    scope: Scope
    resources: Mapping[str, int]
    """Requested amounts in micro-units."""
    now_us: int
    """The owner's wall clock when it accepted the request."""
    reserve: bool = False
    ttl_us: int = 300 * SEC_US
    resource_id: str | None = None
    idempotency_key: str | None = None
    actor: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    grant_id: str
    tenant_id: str
    project_id: str | None
    user_id: str | None
    resources: dict[str, int]
    expires_us: int
    resource_id: str | None
    idempotency_key: str | None
    granted_at_us: int
    actor: str

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class AdmissionResult:
    allowed: bool
    reason: str
    checks: list[LevelCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reservation_id: str | None = None
    expires_us: int | None = None
    repeated: bool = False


def grant_of(state: TenantState, grant_id: str) -> Grant | None:
    raw = state.grants.get(grant_id)
    if raw is None:
        return None
    return Grant(
        grant_id,
        state.tenant_id,
        raw[G_PROJECT],
        raw[G_USER],
        dict(raw[G_RES]),
        raw[G_EXPIRES],
        raw[G_RESOURCE_ID],
        raw[G_IDEM],
        raw[G_AT],
        raw[G_ACTOR],
    )


def needs_agent(state: TenantState, scope: Scope, resources: Mapping[str, int]) -> bool:
    """Whether a check without ``reserve`` must still go through the agent (it takes tokens)."""
    if API_REQUESTS not in resources or not state.rate_limits:
        return False
    return any(bucket_of(state, lvl, eid, 0) is not None for lvl, eid in _chain(scope))


def next_grant_expiry(state: TenantState) -> int | None:
    return min((g[G_EXPIRES] for g in state.grants.values()), default=None)


def _chain(scope: Scope) -> list[tuple[str, str]]:
    levels = []
    if scope.user_id is not None:
        levels.append(("user", scope.user_id))
    if scope.project_id is not None:
        levels.append(("project", scope.project_id))
    levels.append(("tenant", scope.tenant_id))
    return levels


def _take_tokens(
    state: TenantState, scope: Scope, amount: int, now_us: int
) -> tuple[list[LevelCheck], str | None, list[tuple[str, str, Any]]]:
    """Rate-limit checks of every level with a bucket; (checks, denial, buckets to store)."""
    checks: list[LevelCheck] = []
    denial: str | None = None
    taken = []
    for level, eid in _chain(scope):
        bucket = bucket_of(state, level, eid, now_us)
        if bucket is None:
            continue
        bucket = refill(bucket, now_us)
        ok = bucket.tokens_micros >= amount
        checks.append(
            LevelCheck(
                level,
                eid,
                API_REQUESTS,
                bucket.capacity_micros,
                None,
                bucket.capacity_micros - bucket.tokens_micros,
                0,
                amount,
                bucket.tokens_micros,
                False,
                ok,
                None if ok else f"{level} {eid}: rate limit",
                "rate_limit",
            )
        )
        if not ok and denial is None:
            denial = (
                f"{level} {eid}: api_requests rate limit: {fmt_amount(bucket.tokens_micros)} "
                f"of {fmt_amount(bucket.capacity_micros)} tokens left, refilling "
                f"{fmt_amount(bucket.rate_micros_per_s)}/s"
            )
        taken.append((level, eid, bucket))
    return checks, denial, taken


def decide_admission(
    state: TenantState, req: AdmissionRequest
) -> tuple[AdmissionResult, list[Audit]]:
    """Decide one admission request atomically (mutates ``state``)."""
    now = req.now_us
    _forget_old_answers(state, now)
    idem = req.idempotency_key
    if idem is not None and idem in state.admissions:
        return _repeat(state, req, state.admissions[idem]), []
    outputs: list[Audit] = []
    rate_checks: list[LevelCheck] = []
    rate_denial: str | None = None
    buckets: list[tuple[str, str, Any]] = []
    if API_REQUESTS in req.resources:
        rate_checks, rate_denial, buckets = _take_tokens(
            state, req.scope, req.resources[API_REQUESTS], now
        )
    result: CheckResult = check(state, req.scope, req.resources, now)
    checks = rate_checks + result.checks
    if rate_denial is not None or not result.allowed:
        reason = "; ".join(r for r in (rate_denial, None if result.allowed else result.reason) if r)
        answer = AdmissionResult(False, reason, checks, result.warnings)
        if idem is not None:
            state.admissions[idem] = [None, 0, reason, now]
        return answer, outputs
    for level, eid, bucket in buckets:
        taken = replace(bucket, tokens_micros=bucket.tokens_micros - req.resources[API_REQUESTS])
        store_bucket(state, level, eid, taken)
    gid = None
    expires = None
    if req.reserve:
        gid = det_id("grant", state.tenant_id, idem if idem is not None else req.request_id)
        expires = now + req.ttl_us
        raw = [
            req.scope.project_id,
            req.scope.user_id,
            {r: a for r, a in sorted(req.resources.items()) if r != API_REQUESTS},
            expires,
            req.resource_id,
            idem,
            now,
            req.actor,
        ]
        state.grants[gid] = raw
        grant = grant_of(state, gid)
        assert grant is not None
        outputs.append(
            audit_record(
                state,
                "audit.reservation_granted",
                req.actor,
                req.request_id,
                now,
                f"grant/{gid}",
                None,
                grant.to_dict(),
            )
        )
    if idem is not None:
        state.admissions[idem] = [gid, 1, result.reason, now]
    return AdmissionResult(True, result.reason, checks, result.warnings, gid, expires), outputs


def _repeat(state: TenantState, req: AdmissionRequest, rec: list[Any]) -> AdmissionResult:
    gid = rec[A_GRANT]
    grant = grant_of(state, gid) if gid is not None else None
    view = check(state, req.scope, req.resources, req.now_us)
    how = "held" if grant is not None else "no longer held (converted, released or expired)"
    reason = f"repeated idempotency_key: the answer given at {rec[A_AT]} us: {rec[A_REASON]}"
    if gid is not None:
        reason += f"; grant {how}"
    return AdmissionResult(
        bool(rec[A_ALLOWED]),
        reason,
        view.checks,
        view.warnings,
        gid,
        grant.expires_us if grant is not None else None,
        repeated=True,
    )


def _forget_old_answers(state: TenantState, now_us: int) -> None:
    if not state.admissions:
        return
    cutoff = now_us - ADMISSION_MEMORY_US
    for key in [k for k, v in state.admissions.items() if v[A_AT] < cutoff]:
        del state.admissions[key]


def release_grant(
    state: TenantState, grant_id: str, how: str, *, now_us: int, actor: str, cause: str
) -> tuple[Grant | None, list[Audit]]:
    """Release a grant: ``released`` (by the client), ``expired`` (only once its TTL has passed
    at ``now_us``). Returns the grant released, or None (unknown, or not yet expired)."""
    grant = grant_of(state, grant_id)
    if grant is None or (how == "expired" and grant.expires_us > now_us):
        return None, []
    del state.grants[grant_id]
    action = "audit.reservation_expired" if how == "expired" else "audit.reservation_released"
    reason = "TTL passed before the allocation arrived" if how == "expired" else "released"
    audit = audit_record(
        state, action, actor, cause, now_us, f"grant/{grant_id}", grant.to_dict(), None, reason
    )
    return grant, [audit]
