"""The decision function: ``apply(state, instances, input, config) -> outputs``.

One entry point per state kind, dispatching on the input type. For speed ``apply`` MUTATES the
``TenantState`` passed in and writes changed ``InstanceState`` rows into ``instances``; it never
reads a clock (event time comes in with the input) and is deterministic, so a replay of the same
inputs re-derives the same state and the same outputs (ids included). An input that comes back
``Rejected`` has changed nothing.

Event time: an input whose time is past the watermark first fires every pending deadline up to
it, in deadline order, each evaluated as of its own due time (so expiries do not depend on how
often ticks arrive), then advances the watermark and applies the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from .config import DEFAULT_CONFIG, Config
from .evaluate import (
    cancel_deadline,
    close_all,
    compact_heap,
    evaluate,
    evaluate_quota,
    pop_due,
    set_deadline,
)
from .ids import det_id
from .inputs import (
    Allocation,
    BudgetSet,
    Consumption,
    GaugeSample,
    Input,
    Inventory,
    PolicyChanged,
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
)
from .outputs import Audit, Output, Rejected
from .state import (
    G_EVENT,
    G_PROJECT,
    G_RES,
    G_SOURCE,
    G_TIME,
    G_USER,
    R_CAUSE,
    R_EKEY,
    R_RES,
    InstanceState,
    Quota,
    QuotaBook,
    Reservation,
    SystemState,
    TenantState,
)
from .units import (
    ACTIONS,
    ACTIVE,
    HARD,
    SEP,
    SOFT,
    SUSPENDED,
    SYSTEM_TENANT,
    TENANT_LEVELS,
    WINDOWED_RESOURCES,
    entity_key,
    split_quota_key,
)
from .windows import WINDOWS, window_start, window_starts

__all__ = ["apply", "apply_system", "recount"]

Out = list[Output]
Instances = MutableMapping[str, InstanceState]
_Touched = dict[tuple[str, str], None]
"""Insertion-ordered set of (entity key, resource) whose usage changed."""


# --- entry points -------------------------------------------------------------------------------


def apply(
    state: TenantState, instances: Instances, inp: Input, config: Config = DEFAULT_CONFIG
) -> list[Output]:
    """Decide one input for one tenant (mutates ``state`` and ``instances``, see module doc).

    ``instances`` maps instance_key → InstanceState for this tenant only; ``apply`` reads and
    writes just the keys it needs, except ``Inventory``, ``Reconcile`` and ``TenantDeleted``,
    which iterate it (the glue adapts a prefix scan of its table).
    """
    handler = _TENANT_HANDLERS.get(type(inp))
    if handler is None:
        return [Rejected("unsupported", f"{type(inp).__name__} is not a tenant input")]
    if state.tenant_id == SYSTEM_TENANT:
        return [Rejected("reserved_tenant", "'system' is reserved; use apply_system")]
    if state.purged:
        _reset(state)
    out: Out = []
    handler(state, instances, inp, config, out)
    return out


def apply_system(state: SystemState, inp: Input, config: Config = DEFAULT_CONFIG) -> list[Output]:
    """Decide one input for the reserved tenant ``system`` (mutates ``state``)."""
    out: Out = []
    if isinstance(inp, Tick):
        _advance(state, inp.time_us, config, out)
    elif isinstance(inp, SystemTotals):
        _system_totals(state, inp, config, out)
    elif isinstance(inp, QuotaSet):
        if inp.level != "system" or inp.tenant_id not in (None, SYSTEM_TENANT):
            return [Rejected("invalid", "only system-level quotas belong to the system state")]
        _quota_set(state, inp, config, out)
    elif isinstance(inp, PolicyChanged):
        out.append(_policy_audit(state, inp))
    elif isinstance(inp, QuotaDeleted):
        if inp.level != "system":
            return [Rejected("invalid", "only system-level quotas belong to the system state")]
        _quota_deleted(state, inp, config, out)
    else:
        return [Rejected("unsupported", f"{type(inp).__name__} is not a system input")]
    return out


# --- event time ---------------------------------------------------------------------------------


def _advance(book: QuotaBook, t: int, cfg: Config, out: Out) -> None:
    if t <= book.watermark_us:
        return
    while True:
        nxt = pop_due(book, t)
        if nxt is None:
            break
        due, item = nxt
        if due > book.watermark_us:
            book.watermark_us = due
        _fire(book, item, due, cfg, out)
    book.watermark_us = t
    if t >= book.next_prune_us:
        _prune(book, cfg)


def _fire(book: QuotaBook, item: str, due: int, cfg: Config, out: Out) -> None:
    code, key = item[0], item[1:]
    if code == "c":
        ekey, res = split_quota_key(key)
        clock = book.clocks.get(key)
        evaluate(book, ekey, res, due, clock[1] if clock else "", cfg, out)
    elif code == "w":
        ekey, res = split_quota_key(key)
        evaluate(book, ekey, res, due, "", cfg, out)
    elif isinstance(book, TenantState):
        if code in "se":
            raw = book.reservations.get(key)
            if raw is None:
                return
            if code == "e":
                del book.reservations[key]
            chain = _holder_chain(book, raw[R_EKEY])
            _evaluate_chain(book, chain, raw[R_RES], due, raw[R_CAUSE], cfg, out)
        elif code == "g":
            g = book.gauges.pop(key, None)
            if g is None:
                return
            touched: _Touched = {}
            chain = _chain(book.tenant_id, g[G_PROJECT], g[G_USER])
            for res, amount in g[G_RES].items():
                _add(book, chain, res, -amount, touched, due, g[G_EVENT], out)
            _evaluate_touched(book, touched, due, g[G_EVENT], cfg, out)


def _prune(book: QuotaBook, cfg: Config) -> None:
    wm = book.watermark_us
    if book.dedup:
        cutoff = wm - cfg.dedup_retention_us
        book.dedup = {k: at for k, at in book.dedup.items() if at >= cutoff}
    if isinstance(book, TenantState) and book.windows:
        month = window_start("month", wm)
        book.windows = {k: c for k, c in book.windows.items() if c[6] >= month}
    if len(book.heap) > len(book.deadlines):
        compact_heap(book)
    book.next_prune_us = wm + cfg.prune_interval_us


# --- usage arithmetic ---------------------------------------------------------------------------


def _chain(tenant_id: str, project_id: str | None, user_id: str | None) -> list[str]:
    """Entity keys a usage counts for, tenant first."""
    chain = ["T" + tenant_id]
    if project_id is not None:
        chain.append("P" + project_id)
    if user_id is not None:
        chain.append("U" + user_id)
    return chain


def _scope_chain(scope: Scope) -> list[str]:
    return _chain(scope.tenant_id, scope.project_id, scope.user_id)


def _holder_chain(st: TenantState, holder: str) -> list[str]:
    """Entities a reservation counts for: its holder and the tenant (a user's project is not
    known from the reservation, so a user reservation counts for the user and the tenant)."""
    tenant = "T" + st.tenant_id
    return [tenant] if holder == tenant else [tenant, holder]


def _add(
    st: TenantState,
    chain: list[str],
    res: str,
    delta: int,
    touched: _Touched,
    t: int,
    cause: str,
    out: Out,
) -> None:
    usage = st.usage
    for ekey in chain:
        per = usage.get(ekey)
        if per is None:
            per = usage[ekey] = {}
        value = per.get(res, 0) + delta
        if value > 0:
            per[res] = value
        else:
            if value < 0:
                # Only reachable if the instance and tenant tables disagree (e.g. a non-atomic
                # write); usage never goes negative, and the clamp is audited.
                out.append(
                    audit_record(
                        st,
                        "audit.correction",
                        "system",
                        cause,
                        t,
                        f"usage/{ekey}/{res}",
                        value - delta,
                        0,
                        "negative usage clamped to zero",
                    )
                )
            per.pop(res, None)
            if not per:
                del usage[ekey]
        touched[(ekey, res)] = None


def _move(
    st: TenantState,
    old: InstanceState | None,
    new: InstanceState,
    touched: _Touched,
    t: int,
    cause: str,
    out: Out,
) -> None:
    """Replace what ``old`` contributed to usage by what ``new`` contributes."""
    old_res = old.resources if old is not None and old.live else None
    new_res = new.resources if new.live else None
    if old is not None and old_res and new_res and old.scope == new.scope:
        chain = _scope_chain(new.scope)
        for res, amount in new_res.items():
            delta = amount - old_res.get(res, 0)
            if delta:
                _add(st, chain, res, delta, touched, t, cause, out)
        for res, amount in old_res.items():
            if res not in new_res:
                _add(st, chain, res, -amount, touched, t, cause, out)
        return
    if old is not None and old_res:
        chain = _scope_chain(old.scope)
        for res, amount in old_res.items():
            _add(st, chain, res, -amount, touched, t, cause, out)
    if new_res:
        chain = _scope_chain(new.scope)
        for res, amount in new_res.items():
            _add(st, chain, res, amount, touched, t, cause, out)


def _evaluate_touched(
    book: QuotaBook, touched: Iterable[tuple[str, str]], t: int, cause: str, cfg: Config, out: Out
) -> None:
    quotas = book.quotas
    for ekey, res in touched:
        per = quotas.get(ekey)
        if per is not None:
            raw = per.get(res)
            if raw is not None:
                evaluate_quota(book, ekey, res, raw, t, cause, cfg, out)


def _evaluate_chain(
    book: QuotaBook, chain: list[str], res: str, t: int, cause: str, cfg: Config, out: Out
) -> None:
    _evaluate_touched(book, [(ekey, res) for ekey in chain], t, cause, cfg, out)


# --- validation helpers -------------------------------------------------------------------------


def _bad_amounts(resources: Mapping[str, int]) -> str | None:
    for res, amount in resources.items():
        if not isinstance(res, str) or not res:
            return f"bad resource type {res!r}"
        if type(amount) is not int or amount < 0:
            return f"{res}: amount must be a non-negative int of micro-units, got {amount!r}"
    return None


def _wrong_tenant(st: TenantState, tenant_id: str | None, out: Out) -> bool:
    if tenant_id != st.tenant_id:
        out.append(Rejected("wrong_tenant", f"input for {tenant_id!r} applied to {st.tenant_id!r}"))
        return True
    return False


def _bad_entity(st: TenantState, level: str, entity_id: str, out: Out) -> bool:
    if level not in TENANT_LEVELS:
        out.append(Rejected("invalid", f"level {level!r} is not tenant, project or user"))
        return True
    if level == "tenant" and entity_id != st.tenant_id:
        out.append(Rejected("invalid", "a tenant entity's entity_id is its tenant_id"))
        return True
    if not entity_id:
        out.append(Rejected("invalid", "empty entity_id"))
        return True
    return False


def _seen(book: QuotaBook, cfg: Config, source: str, event_id: str) -> bool:
    """Whether (source, id) took effect before. With ``external_dedup`` the caller keeps the
    identities (a table of their own, checked per message) and nothing is kept here."""
    return not cfg.external_dedup and source + SEP + event_id in book.dedup


def _remember(book: QuotaBook, cfg: Config, source: str, event_id: str, t: int) -> None:
    if not cfg.external_dedup:
        book.dedup[source + SEP + event_id] = t


def audit_record(
    book: QuotaBook,
    action: str,
    actor: str,
    cause: str,
    t: int,
    subject: str,
    before: Any,
    after: Any,
    reason: str = "",
) -> Audit:
    return Audit(
        audit_id=det_id("audit", book.tenant_id, action, cause, subject, t),
        tenant_id=book.tenant_id,
        action=action,
        actor=actor,
        cause_event_id=cause,
        time_us=t,
        subject=subject.replace(SEP, "/"),
        before=before,
        after=after,
        reason=reason,
    )


# --- resource events ----------------------------------------------------------------------------


def convert_grants(
    state: TenantState, instance_key: str, time_us: int, event_id: str
) -> list[Audit]:
    """The allocation of ``instance_key`` arrived: the admission grants made for it stop counting
    as reserved (the allocation itself now counts as usage), in the same state update."""
    bare = instance_key.split(":", 1)[1] if ":" in instance_key else instance_key
    out = []
    for gid in [g for g, raw in state.grants.items() if raw[4] in (bare, instance_key)]:
        raw = state.grants.pop(gid)
        out.append(
            audit_record(
                state,
                "audit.reservation_released",
                "system",
                event_id,
                time_us,
                f"grant/{gid}",
                {"resources": raw[2], "resource_id": raw[4], "expires_us": raw[3]},
                {"instance": instance_key},
                "converted into usage by its allocation event",
            )
        )
    return out


def _current(st: TenantState, instances: Instances, key: str, cfg: Config) -> InstanceState | None:
    """The instance's state; a tombstone past its retention counts as unknown."""
    cur = instances.get(key)
    if (
        cur is not None
        and not cur.live
        and cur.time_us < st.watermark_us - cfg.tombstone_retention_us
    ):
        return None
    return cur


def _allocation(
    st: TenantState, instances: Instances, inp: Allocation, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.scope.tenant_id, out):
        return
    problem = _bad_amounts(inp.resources)
    if problem is not None:
        out.append(Rejected("invalid", problem))
        return
    _advance(st, inp.time_us, cfg, out)
    key = inp.instance_key
    release = bool(inp.release)
    if st.grants and not release:
        out.extend(convert_grants(st, key, inp.time_us, inp.event_id))
    old = _current(st, instances, key, cfg)
    if old is not None and old.version >= (inp.time_us, release, inp.source, inp.event_id):
        return  # a duplicate, or older than what the instance already reflects
    resources = {} if release else {r: a for r, a in inp.resources.items() if a}
    new = InstanceState(
        inp.scope,
        resources,
        not release,
        inp.system,
        inp.time_us,
        release,
        inp.source,
        inp.event_id,
    )
    instances[key] = new
    touched: _Touched = {}
    _move(st, old, new, touched, inp.time_us, inp.event_id, out)
    _evaluate_touched(st, touched, inp.time_us, inp.event_id, cfg, out)


def _gauge(st: TenantState, instances: Instances, inp: GaugeSample, cfg: Config, out: Out) -> None:
    if _wrong_tenant(st, inp.scope.tenant_id, out):
        return
    problem = _bad_amounts(inp.resources)
    if problem is not None:
        out.append(Rejected("invalid", problem))
        return
    _advance(st, inp.time_us, cfg, out)
    ttl = cfg.network_sample_ttl_us
    if inp.time_us + ttl < st.watermark_us:
        return  # already older than the TTL: it would count for nothing
    iface = inp.interface_id
    old = st.gauges.get(iface)
    if old is not None and (old[G_TIME], old[G_SOURCE], old[G_EVENT]) >= (
        inp.time_us,
        inp.source,
        inp.event_id,
    ):
        return
    touched: _Touched = {}
    if old is not None:
        chain = _chain(st.tenant_id, old[G_PROJECT], old[G_USER])
        for res, amount in old[G_RES].items():
            _add(st, chain, res, -amount, touched, inp.time_us, inp.event_id, out)
    resources = {r: a for r, a in inp.resources.items() if a}
    scope = inp.scope
    st.gauges[iface] = [
        scope.project_id,
        scope.user_id,
        resources,
        inp.time_us,
        inp.source,
        inp.event_id,
    ]
    chain = _scope_chain(scope)
    for res, amount in resources.items():
        _add(st, chain, res, amount, touched, inp.time_us, inp.event_id, out)
    set_deadline(st, "g" + iface, inp.time_us + ttl + 1)
    _evaluate_touched(st, touched, inp.time_us, inp.event_id, cfg, out)


def _consumption(
    st: TenantState, instances: Instances, inp: Consumption, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.scope.tenant_id, out):
        return
    amount = inp.amount
    if type(amount) is not int or amount <= 0 or not inp.resource_type:
        out.append(Rejected("invalid", f"consumption must be a positive int, got {amount!r}"))
        return
    if inp.time_us < st.watermark_us - cfg.lateness_us:
        out.append(
            Rejected(
                "late",
                f"event time {inp.time_us} is more than {cfg.lateness_us} us behind the "
                f"watermark {st.watermark_us}",
            )
        )
        return
    if _seen(st, cfg, inp.source, inp.event_id):
        return
    _advance(st, inp.time_us, cfg, out)
    _remember(st, cfg, inp.source, inp.event_id, inp.time_us)
    starts = window_starts(inp.time_us)
    res = inp.resource_type
    for ekey in _scope_chain(inp.scope):
        qk = ekey + SEP + res
        c = st.windows.get(qk)
        if c is None:
            c = st.windows[qk] = [starts[0], 0, starts[1], 0, starts[2], 0, starts[3], 0]
        for i in range(4):
            j = 2 * i
            if starts[i] == c[j]:
                c[j + 1] += amount
            elif starts[i] > c[j]:
                c[j] = starts[i]
                c[j + 1] = amount
            # else: it belongs to a window already closed; that window is no longer enforced
        per = st.quotas.get(ekey)
        if per is not None and res in per:
            evaluate(st, ekey, res, inp.time_us, inp.event_id, cfg, out)


def _inventory(
    st: TenantState, instances: Instances, inp: Inventory, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.tenant_id, out):
        return
    for key, scope, resources in inp.instances:
        if scope.tenant_id != st.tenant_id:
            out.append(Rejected("invalid", f"inventory instance {key!r} of another tenant"))
            return
        problem = _bad_amounts(resources)
        if problem is not None:
            out.append(Rejected("invalid", f"inventory instance {key!r}: {problem}"))
            return
    if _seen(st, cfg, inp.source, inp.event_id):
        return
    _advance(st, inp.time_us, cfg, out)
    _remember(st, cfg, inp.source, inp.event_id, inp.time_us)
    system, as_of = inp.source_system, inp.as_of_us
    touched: _Touched = {}
    listed: dict[str, tuple[Scope, dict[str, int]]] = {}
    for key, scope, resources in inp.instances:
        listed[key] = (scope, {r: a for r, a in resources.items() if a})

    def correct(key: str, old: InstanceState | None, new: InstanceState, why: str) -> None:
        instances[key] = new
        _move(st, old, new, touched, inp.time_us, inp.event_id, out)
        out.append(
            audit_record(
                st,
                "audit.correction",
                f"inventory:{system}",
                inp.event_id,
                inp.time_us,
                f"instance/{key}",
                old.to_dict() if old else None,
                new.to_dict(),
                why,
            )
        )

    for key, (scope, resources) in listed.items():
        old = _current(st, instances, key, cfg)
        if old is not None and (
            old.time_us > as_of
            or (
                old.live
                and old.scope == scope
                and old.resources == resources
                and old.source_system == system
            )
        ):
            continue
        new = InstanceState(scope, resources, True, system, as_of, False, inp.source, inp.event_id)
        if old is not None and old.version >= new.version:
            continue
        why = "missing from the stream" if old is None or not old.live else "differs from source"
        correct(key, old, new, f"{system} inventory: {why}")
    for key, old in list(instances.items()):
        if old.live and old.source_system == system and key not in listed and old.time_us <= as_of:
            new = InstanceState(old.scope, {}, False, system, as_of, True, inp.source, inp.event_id)
            if new.version > old.version:
                correct(key, old, new, f"{system} inventory: instance no longer exists")
    _evaluate_touched(st, touched, inp.time_us, inp.event_id, cfg, out)


def recount(st: TenantState, instances: Iterable[InstanceState]) -> dict[str, dict[str, int]]:
    """Usage recomputed from scratch: live instances plus live gauges (same shape as
    ``TenantState.usage``). The incremental totals must always equal this."""
    usage: dict[str, dict[str, int]] = {}

    def add(chain: list[str], resources: Mapping[str, int]) -> None:
        for ekey in chain:
            per = usage.setdefault(ekey, {})
            for res, amount in resources.items():
                if amount:
                    per[res] = per.get(res, 0) + amount

    for inst in instances:
        if inst.live and inst.scope.tenant_id == st.tenant_id:
            add(_scope_chain(inst.scope), inst.resources)
    for g in st.gauges.values():
        add(_chain(st.tenant_id, g[G_PROJECT], g[G_USER]), g[G_RES])
    return {ek: per for ek, per in usage.items() if per}


def _reconcile(
    st: TenantState, instances: Instances, inp: Reconcile, cfg: Config, out: Out
) -> None:
    if _seen(st, cfg, inp.source, inp.event_id):
        return
    _advance(st, inp.time_us, cfg, out)
    _remember(st, cfg, inp.source, inp.event_id, inp.time_us)
    truth = recount(st, instances.values())
    touched: _Touched = {}
    for ekey in list(dict.fromkeys([*st.usage, *truth])):
        have, want = st.usage.get(ekey, {}), truth.get(ekey, {})
        for res in list(dict.fromkeys([*have, *want])):
            before, after = have.get(res, 0), want.get(res, 0)
            if before != after:
                out.append(
                    audit_record(
                        st,
                        "audit.correction",
                        inp.actor,
                        inp.event_id,
                        inp.time_us,
                        f"usage/{ekey}/{res}",
                        before,
                        after,
                        "recomputed from instance allocations",
                    )
                )
                touched[(ekey, res)] = None
    st.usage = truth
    _evaluate_touched(st, touched, inp.time_us, inp.event_id, cfg, out)


def _tick(st: TenantState, instances: Instances, inp: Tick, cfg: Config, out: Out) -> None:
    _advance(st, inp.time_us, cfg, out)


# --- commands -----------------------------------------------------------------------------------


def _quota_problem(inp: QuotaSet) -> str | None:
    if type(inp.limit) is not int or inp.limit < 0:
        return "limit must be a non-negative int"
    if inp.limit_type not in (HARD, SOFT):
        return f"limit_type {inp.limit_type!r} is not hard or soft"
    if inp.burst_limit is not None and (
        type(inp.burst_limit) is not int or inp.burst_limit < inp.limit
    ):
        return "burst_limit must be an int ≥ limit"
    for name in ("burst_seconds", "grace_seconds"):
        value = getattr(inp, name)
        if value is not None and (type(value) is not int or value < 0):
            return f"{name} must be a non-negative int"
    if inp.window is not None and inp.window not in WINDOWS:
        return f"window {inp.window!r} is not one of {', '.join(WINDOWS)}"
    if inp.status not in (ACTIVE, SUSPENDED):
        return f"status {inp.status!r} is not active or suspended"
    if inp.enforcement_action not in ACTIONS:
        return f"enforcement_action {inp.enforcement_action!r} is not one of {', '.join(ACTIONS)}"
    if not inp.resource_type:
        return "empty resource_type"
    return None


def _quota_set(book: QuotaBook, inp: QuotaSet, cfg: Config, out: Out) -> None:
    problem = _quota_problem(inp)
    if problem is not None:
        out.append(Rejected("invalid", problem))
        return
    # One command can stand for several quota.set inputs (``template.applied`` expands into one
    # per resource, all with the command's source and id), so the dedup key names the quota too.
    ekey = entity_key(inp.level, inp.entity_id)
    dedup_id = inp.event_id + SEP + ekey + SEP + inp.resource_type
    if _seen(book, cfg, inp.source, dedup_id):
        return
    _advance(book, inp.time_us, cfg, out)
    _remember(book, cfg, inp.source, dedup_id, inp.time_us)
    res = inp.resource_type
    window = inp.window
    if window is None and res in WINDOWED_RESOURCES:
        window = "month"
    burst_s = inp.burst_seconds
    if burst_s is None and inp.burst_limit is not None:
        burst_s = cfg.default_burst_seconds
    grace_s = inp.grace_seconds
    if grace_s is None and inp.limit_type == SOFT:
        grace_s = cfg.default_grace_seconds
    raw = [
        inp.limit_type,
        inp.limit,
        inp.burst_limit,
        burst_s,
        grace_s,
        window,
        inp.status,
        inp.enforcement_action,
        inp.time_us,
        inp.event_id,
    ]
    per = book.quotas.setdefault(ekey, {})
    before = per.get(res)
    per[res] = raw
    out.append(
        audit_record(
            book,
            "audit.quota_set",
            inp.actor,
            inp.event_id,
            inp.time_us,
            f"quota/{inp.level}/{inp.entity_id}/{res}",
            Quota.from_raw(ekey, res, before).to_dict() if before else None,
            Quota.from_raw(ekey, res, raw).to_dict(),
        )
    )
    evaluate(book, ekey, res, inp.time_us, inp.event_id, cfg, out)


def _policy_audit(book: QuotaBook, inp: PolicyChanged) -> Audit:
    """A policy change leaves the enforcement state as it is; it is audited only."""
    deleted = inp.version is None
    return audit_record(
        book,
        "audit.policy_deleted" if deleted else "audit.policy_set",
        inp.actor,
        inp.event_id,
        inp.time_us,
        f"policy/{inp.name}",
        None,
        None if deleted else inp.policy,
    )


def _quota_deleted(book: QuotaBook, inp: QuotaDeleted, cfg: Config, out: Out) -> None:
    if _seen(book, cfg, inp.source, inp.event_id):
        return
    _advance(book, inp.time_us, cfg, out)
    _remember(book, cfg, inp.source, inp.event_id, inp.time_us)
    ekey = entity_key(inp.level, inp.entity_id)
    res = inp.resource_type
    per = book.quotas.get(ekey)
    before = per.pop(res, None) if per is not None else None
    if per is not None and not per:
        del book.quotas[ekey]
    out.append(
        audit_record(
            book,
            "audit.quota_deleted",
            inp.actor,
            inp.event_id,
            inp.time_us,
            f"quota/{inp.level}/{inp.entity_id}/{res}",
            Quota.from_raw(ekey, res, before).to_dict() if before else None,
            None,
            "" if before else "no such quota",
        )
    )
    close_all(book, ekey, res, before, inp.time_us, inp.event_id, "quota deleted", out)


def _t_quota_set(
    st: TenantState, instances: Instances, inp: QuotaSet, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.tenant_id, out) or _bad_entity(st, inp.level, inp.entity_id, out):
        return
    _quota_set(st, inp, cfg, out)


def _t_quota_deleted(
    st: TenantState, instances: Instances, inp: QuotaDeleted, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.tenant_id, out) or _bad_entity(st, inp.level, inp.entity_id, out):
        return
    _quota_deleted(st, inp, cfg, out)


def _drop_reservation(st: TenantState, rid: str) -> list[Any] | None:
    raw = st.reservations.pop(rid, None)
    cancel_deadline(st, "s" + rid)
    cancel_deadline(st, "e" + rid)
    return raw


def _reservation_created(
    st: TenantState, instances: Instances, inp: ReservationCreated, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.tenant_id, out) or _bad_entity(st, inp.level, inp.entity_id, out):
        return
    if type(inp.amount) is not int or inp.amount < 0:
        out.append(Rejected("invalid", "amount must be a non-negative int"))
        return
    if inp.end_us <= inp.start_us:
        out.append(Rejected("invalid", "a reservation must end after it starts"))
        return
    if _seen(st, cfg, inp.source, inp.event_id):
        return
    _advance(st, inp.time_us, cfg, out)
    _remember(st, cfg, inp.source, inp.event_id, inp.time_us)
    rid = inp.reservation_id
    old = _drop_reservation(st, rid)
    holder = entity_key(inp.level, inp.entity_id)
    raw = [
        holder,
        inp.resource_type,
        inp.amount,
        inp.start_us,
        inp.end_us,
        inp.purpose,
        inp.actor,
        inp.event_id,
        inp.time_us,
    ]
    wm = st.watermark_us
    if inp.end_us > wm:  # one that already ended would count for nothing
        st.reservations[rid] = raw
        if inp.start_us > wm:
            set_deadline(st, "s" + rid, inp.start_us)
        set_deadline(st, "e" + rid, inp.end_us)
    out.append(
        audit_record(
            st,
            "audit.reservation_created",
            inp.actor,
            inp.event_id,
            inp.time_us,
            f"reservation/{rid}",
            Reservation.from_raw(rid, old).to_dict() if old else None,
            Reservation.from_raw(rid, raw).to_dict(),
            "" if inp.end_us > wm else "already ended",
        )
    )
    if old is not None and (old[R_EKEY], old[R_RES]) != (holder, inp.resource_type):
        _evaluate_chain(
            st, _holder_chain(st, old[R_EKEY]), old[R_RES], inp.time_us, inp.event_id, cfg, out
        )
    _evaluate_chain(
        st, _holder_chain(st, holder), inp.resource_type, inp.time_us, inp.event_id, cfg, out
    )


def _reservation_cancelled(
    st: TenantState, instances: Instances, inp: ReservationCancelled, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.tenant_id, out):
        return
    if _seen(st, cfg, inp.source, inp.event_id):
        return
    _advance(st, inp.time_us, cfg, out)
    _remember(st, cfg, inp.source, inp.event_id, inp.time_us)
    rid = inp.reservation_id
    old = _drop_reservation(st, rid)
    out.append(
        audit_record(
            st,
            "audit.reservation_cancelled",
            inp.actor,
            inp.event_id,
            inp.time_us,
            f"reservation/{rid}",
            Reservation.from_raw(rid, old).to_dict() if old else None,
            None,
            "" if old else "no such live reservation",
        )
    )
    if old is not None:
        _evaluate_chain(
            st, _holder_chain(st, old[R_EKEY]), old[R_RES], inp.time_us, inp.event_id, cfg, out
        )


def _rate_limit_set(
    st: TenantState, instances: Instances, inp: RateLimitSet, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.tenant_id, out) or _bad_entity(st, inp.level, inp.entity_id, out):
        return
    rate, burst = inp.rate_per_second_micros, inp.burst_micros
    if type(rate) is not int or type(burst) is not int or rate < 0 or burst < 0:
        out.append(Rejected("invalid", "rate and burst must be non-negative ints"))
        return
    if _seen(st, cfg, inp.source, inp.event_id):
        return
    _advance(st, inp.time_us, cfg, out)
    _remember(st, cfg, inp.source, inp.event_id, inp.time_us)
    ekey = entity_key(inp.level, inp.entity_id)
    before = st.rate_limits.get(ekey)
    st.rate_limits[ekey] = [rate, burst]
    bucket = st.buckets.get(ekey)
    if bucket is not None:  # keep its tokens, capped by the new capacity
        st.buckets[ekey] = [rate, burst, min(bucket[2], burst), bucket[3], bucket[4]]
    out.append(
        audit_record(
            st,
            "audit.rate_limit_set",
            inp.actor,
            inp.event_id,
            inp.time_us,
            f"rate_limit/{inp.level}/{inp.entity_id}",
            {"rate_per_second_micros": before[0], "burst_micros": before[1]} if before else None,
            {"rate_per_second_micros": rate, "burst_micros": burst},
        )
    )


def _budget_set(
    st: TenantState, instances: Instances, inp: BudgetSet, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.tenant_id, out) or _bad_entity(st, inp.level, inp.entity_id, out):
        return
    if type(inp.monthly_usd_micros) is not int or inp.monthly_usd_micros < 0:
        out.append(Rejected("invalid", "monthly_usd must be a non-negative amount"))
        return
    if _seen(st, cfg, inp.source, inp.event_id):
        return
    _advance(st, inp.time_us, cfg, out)
    _remember(st, cfg, inp.source, inp.event_id, inp.time_us)
    ekey = entity_key(inp.level, inp.entity_id)
    before = st.budgets.get(ekey)
    raw = [inp.monthly_usd_micros, list(inp.thresholds), inp.time_us, inp.event_id]
    st.budgets[ekey] = raw
    out.append(
        audit_record(
            st,
            "audit.budget_set",
            inp.actor,
            inp.event_id,
            inp.time_us,
            f"budget/{inp.level}/{inp.entity_id}",
            {"monthly_usd_micros": before[0], "thresholds": before[1]} if before else None,
            {"monthly_usd_micros": raw[0], "thresholds": raw[1]},
        )
    )


def _reset(st: TenantState) -> None:
    fresh = TenantState(st.tenant_id)
    for name in TenantState.__dataclass_fields__:
        setattr(st, name, getattr(fresh, name))


def _tenant_deleted(
    st: TenantState, instances: Instances, inp: TenantDeleted, cfg: Config, out: Out
) -> None:
    if _wrong_tenant(st, inp.tenant_id, out):
        return
    _advance(st, inp.time_us, cfg, out)
    released = dict(st.usage.get("T" + st.tenant_id, {}))
    keys = list(instances.keys())
    n_quotas = sum(len(per) for per in st.quotas.values())
    st.usage.clear()
    st.gauges.clear()
    st.windows.clear()
    st.reservations.clear()
    for qk in list(st.episodes):
        ekey, res = split_quota_key(qk)
        per = st.quotas.get(ekey)
        close_all(
            st,
            ekey,
            res,
            per.get(res) if per else None,
            inp.time_us,
            inp.event_id,
            "tenant deleted",
            out,
        )
    for key in keys:
        del instances[key]
    out.append(
        audit_record(
            st,
            "audit.tenant_deleted",
            inp.actor,
            inp.event_id,
            inp.time_us,
            f"tenant/{st.tenant_id}",
            {"usage": released, "instances": len(keys), "quotas": n_quotas},
            None,
            "offboarding: everything released, state purged",
        )
    )
    _reset(st)
    st.purged = True


# --- system -------------------------------------------------------------------------------------


def _system_totals(st: SystemState, inp: SystemTotals, cfg: Config, out: Out) -> None:
    problem = _bad_amounts(inp.totals)
    if problem is not None:
        out.append(Rejected("invalid", problem))
        return
    _advance(st, inp.time_us, cfg, out)
    old = st.totals
    new = {r: a for r, a in inp.totals.items() if a}
    changed = [r for r in dict.fromkeys([*old, *new]) if old.get(r, 0) != new.get(r, 0)]
    st.totals = new
    for res in changed:
        for ekey, per in st.quotas.items():
            if res in per:
                evaluate(st, ekey, res, inp.time_us, "", cfg, out)


_TENANT_HANDLERS: dict[type, Callable[[TenantState, Instances, Any, Config, Out], None]] = {
    Allocation: _allocation,
    GaugeSample: _gauge,
    Consumption: _consumption,
    Inventory: _inventory,
    QuotaSet: _t_quota_set,
    QuotaDeleted: _t_quota_deleted,
    ReservationCreated: _reservation_created,
    ReservationCancelled: _reservation_cancelled,
    RateLimitSet: _rate_limit_set,
    BudgetSet: _budget_set,
    TenantDeleted: _tenant_deleted,
    Tick: _tick,
    Reconcile: _reconcile,
}
