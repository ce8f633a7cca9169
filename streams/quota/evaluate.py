"""The quota rules (contract §5), shared by tenant and system states.

``evaluate`` looks at one quota key after something that may affect it changed and emits the
episode, alert and clock transitions; ``set_deadline``/``pop_due`` keep the pending expiries in a
small lazy-deletion heap so that advancing event time costs O(log n) per due deadline and O(1)
otherwise. Everything is evaluated as of ``book.watermark_us``; ``t`` and ``cause`` are the event
time and id of what triggered the evaluation (or the deadline, for expiries).
"""

from __future__ import annotations

import heapq
from typing import Any

from .config import Config
from .ids import det_id
from .outputs import Alert, Output, ViolationOpened, ViolationResolved
from .state import (
    C_ALERTED,
    C_CAUSE,
    C_START,
    E_AT,
    E_CAUSE,
    E_ID,
    E_WEND,
    Q_ACTION,
    Q_BURST,
    Q_BURST_S,
    Q_GRACE_S,
    Q_LIMIT,
    Q_STATUS,
    Q_TYPE,
    Q_WINDOW,
    QuotaBook,
)
from .units import (
    ACTIVE,
    BURST_EXPIRED,
    GRACE_EXPIRED,
    HARD,
    OVER_BURST,
    OVER_LIMIT,
    SEC_US,
    SEP,
    SEVERITY,
    SOFT,
    WINDOW_EXCEEDED,
    fmt_amount,
    split_entity_key,
)
from .windows import window_bounds

__all__ = [
    "cancel_deadline",
    "close_all",
    "compact_heap",
    "evaluate",
    "evaluate_quota",
    "pop_due",
    "set_deadline",
    "utilization_pct",
]


# --- deadlines ----------------------------------------------------------------------------------


def set_deadline(book: QuotaBook, item: str, due_us: int) -> None:
    if book.deadlines.get(item) == due_us:
        return
    book.deadlines[item] = due_us
    heapq.heappush(book.heap, [due_us, item])
    if len(book.heap) > 2 * len(book.deadlines) + 32:
        compact_heap(book)


def cancel_deadline(book: QuotaBook, item: str) -> None:
    book.deadlines.pop(item, None)  # its heap entry is skipped when it comes due


def compact_heap(book: QuotaBook) -> None:
    """Drop stale heap entries (a sorted list is a valid heap)."""
    book.heap = sorted([due, item] for item, due in book.deadlines.items())


def pop_due(book: QuotaBook, until_us: int) -> tuple[int, str] | None:
    """The earliest pending deadline ≤ ``until_us`` (removed), or None."""
    heap = book.heap
    while heap and heap[0][0] <= until_us:
        due, item = heapq.heappop(heap)
        if book.deadlines.get(item) == due:
            del book.deadlines[item]
            return due, item
    return None


# --- outputs ------------------------------------------------------------------------------------


def utilization_pct(used: int, limit: int) -> float | None:
    """used / limit x 100, or None for a zero limit.

    A limit of 0 means "none of this resource" (contract section 5): no percentage describes
    usage against it, and the outputs' JSON has no infinity, so every output and view carries
    null; the violation, not a percentage, says that usage is over it.
    """
    return used * 100 / limit if limit else None


def _below_thresholds(used: int, limit: int, cfg: Config) -> bool:
    """True when no threshold alert can fire: no thresholds, usage below the lowest one, or a
    zero limit (which has no thresholds: its violation says it all)."""
    return not cfg.thresholds or not limit or used * 100 < cfg.thresholds[0] * limit


def _open(
    book: QuotaBook,
    qk: str,
    ekey: str,
    res: str,
    kind: str,
    raw: list[Any],
    usage: int,
    reserved: int,
    at_us: int,
    cause: str,
    window_end: int | None,
    out: list[Output],
) -> None:
    vid = det_id("violation", book.tenant_id, qk, kind, at_us, cause)
    book.episodes.setdefault(qk, {})[kind] = [vid, at_us, cause, window_end]
    level, entity_id = split_entity_key(ekey)
    out.append(
        ViolationOpened(
            violation_id=vid,
            tenant_id=book.tenant_id,
            level=level,
            entity_id=entity_id,
            resource_type=res,
            kind=kind,
            limit_type=raw[Q_TYPE],
            limit=raw[Q_LIMIT],
            burst_limit=raw[Q_BURST],
            usage=usage,
            reserved=reserved,
            detected_at_us=at_us,
            cause_event_id=cause,
            enforcement_action=raw[Q_ACTION],
            severity=SEVERITY[kind],
            window=raw[Q_WINDOW],
            window_end_us=window_end,
        )
    )


def _resolve(
    book: QuotaBook,
    qk: str,
    ekey: str,
    res: str,
    kind: str,
    raw: list[Any] | None,
    usage: int,
    reserved: int,
    t: int,
    cause: str,
    reason: str,
    out: list[Output],
) -> None:
    eps = book.episodes[qk]
    ep = eps.pop(kind)
    if not eps:
        del book.episodes[qk]
    level, entity_id = split_entity_key(ekey)
    out.append(
        ViolationResolved(
            violation_id=ep[E_ID],
            tenant_id=book.tenant_id,
            level=level,
            entity_id=entity_id,
            resource_type=res,
            kind=kind,
            limit_type=raw[Q_TYPE] if raw else HARD,
            limit=raw[Q_LIMIT] if raw else 0,
            burst_limit=raw[Q_BURST] if raw else None,
            usage=usage,
            reserved=reserved,
            detected_at_us=ep[E_AT],
            resolved_at_us=max(t, ep[E_AT]),
            cause_event_id=cause,
            enforcement_action=raw[Q_ACTION] if raw else "deny",
            severity=SEVERITY[kind],
            reason=reason,
            opened_cause_event_id=ep[E_CAUSE],
        )
    )


def _alert(
    book: QuotaBook,
    qk: str,
    ekey: str,
    res: str,
    kind: str,
    threshold: int | None,
    severity: str,
    used: int,
    limit: int,
    t: int,
    cause: str,
    message: str,
    out: list[Output],
) -> None:
    level, entity_id = split_entity_key(ekey)
    out.append(
        Alert(
            alert_id=det_id("alert", book.tenant_id, qk, kind, threshold, t, cause),
            tenant_id=book.tenant_id,
            level=level,
            entity_id=entity_id,
            resource_type=res,
            kind=kind,
            threshold=threshold,
            utilization=utilization_pct(used, limit),
            severity=severity,
            message=f"{level} {entity_id}: {message}",
            usage=used,
            limit=limit,
            time_us=t,
            cause_event_id=cause,
        )
    )


# --- rules --------------------------------------------------------------------------------------


def close_all(
    book: QuotaBook,
    ekey: str,
    res: str,
    raw: list[Any] | None,
    t: int,
    cause: str,
    reason: str,
    out: list[Output],
) -> None:
    """Resolve every episode of a quota key and forget its clock and alert state."""
    qk = ekey + SEP + res
    eps = book.episodes.get(qk)
    if eps:
        now = book.watermark_us
        window = raw[Q_WINDOW] if raw else None
        used = book.used(ekey, res, window, now)
        reserved = book.reserved(ekey, res, now)
        for kind in list(eps):
            _resolve(
                book, qk, ekey, res, kind, raw, used + reserved, reserved, t, cause, reason, out
            )
    book.clocks.pop(qk, None)
    book.alerts.pop(qk, None)
    cancel_deadline(book, "c" + qk)
    cancel_deadline(book, "w" + qk)


def evaluate(
    book: QuotaBook,
    ekey: str,
    res: str,
    t: int,
    cause: str,
    cfg: Config,
    out: list[Output],
) -> None:
    """Apply every rule of the quota (ekey, res) to its current usage; no quota → no-op."""
    per = book.quotas.get(ekey)
    raw = per.get(res) if per is not None else None
    if raw is not None:
        evaluate_quota(book, ekey, res, raw, t, cause, cfg, out)


def evaluate_quota(
    book: QuotaBook,
    ekey: str,
    res: str,
    raw: list[Any],
    t: int,
    cause: str,
    cfg: Config,
    out: list[Output],
) -> None:
    """``evaluate`` for a quota record already looked up."""
    if raw[Q_STATUS] != ACTIVE:
        close_all(book, ekey, res, raw, t, cause, "suspended", out)
        return
    qk = ekey + SEP + res
    now = book.watermark_us
    window = raw[Q_WINDOW]
    used = book.used(ekey, res, window, now)
    reserved = book.reserved(ekey, res, now)
    eff = used + reserved
    limit = raw[Q_LIMIT]
    if (
        eff <= limit
        and _below_thresholds(used, limit, cfg)
        and qk not in book.episodes
        and qk not in book.clocks
        and qk not in book.alerts
    ):
        return  # the common case: within limit, below every threshold, nothing open
    if window is None:
        _level_rules(book, qk, ekey, res, raw, used, reserved, eff, limit, t, cause, cfg, out)
    else:
        _window_rules(book, qk, ekey, res, raw, reserved, eff, limit, t, cause, out)
    _thresholds(book, qk, ekey, res, raw, used, limit, t, cause, cfg, out)


def _level_rules(
    book: QuotaBook,
    qk: str,
    ekey: str,
    res: str,
    raw: list[Any],
    used: int,
    reserved: int,
    eff: int,
    limit: int,
    t: int,
    cause: str,
    cfg: Config,
    out: list[Output],
) -> None:
    ltype = raw[Q_TYPE]
    burst = raw[Q_BURST]
    clock = book.clocks.get(qk)
    over_limit = over_burst = timed_out = False
    clock_alert: str | None = None
    due = 0
    if ltype == HARD and burst is None:
        over_limit = eff > limit
        if clock is not None:
            del book.clocks[qk]
            cancel_deadline(book, "c" + qk)
    else:
        over_burst = burst is not None and eff > burst
        if eff > limit:
            if ltype == SOFT:
                secs = raw[Q_GRACE_S] if raw[Q_GRACE_S] is not None else cfg.default_grace_seconds
            else:
                secs = raw[Q_BURST_S] if raw[Q_BURST_S] is not None else cfg.default_burst_seconds
            if clock is None:
                clock = book.clocks[qk] = [t, cause, 0]
            due = clock[C_START] + secs * SEC_US
            timed_out = due <= book.watermark_us
            if not timed_out:
                set_deadline(book, "c" + qk, due)
            if not clock[C_ALERTED]:
                if ltype == SOFT:
                    clock_alert = "soft_limit"
                elif not over_burst:
                    clock_alert = "burst"
                if clock_alert is not None:
                    clock[C_ALERTED] = 1
        elif clock is not None:
            del book.clocks[qk]
            cancel_deadline(book, "c" + qk)

    eps = book.episodes.get(qk)
    if eps is not None or over_limit or over_burst or timed_out:
        want = {
            OVER_LIMIT: over_limit,
            OVER_BURST: over_burst,
            BURST_EXPIRED: timed_out and ltype != SOFT,
            GRACE_EXPIRED: timed_out and ltype == SOFT,
        }
        if eps is not None:
            for kind in list(eps):
                if not want.get(kind):
                    reason = "quota changed" if kind == WINDOW_EXCEEDED else "usage within limit"
                    _resolve(book, qk, ekey, res, kind, raw, eff, reserved, t, cause, reason, out)
        eps = book.episodes.get(qk)
        for kind, on in want.items():
            if on and (eps is None or kind not in eps):
                if kind in (BURST_EXPIRED, GRACE_EXPIRED):
                    assert clock is not None
                    at, why = due, clock[C_CAUSE]
                else:
                    at, why = t, cause
                _open(book, qk, ekey, res, kind, raw, eff, reserved, at, why, None, out)
                eps = book.episodes.get(qk)
    if clock_alert is not None:
        if clock_alert == "soft_limit":
            text = f"{res} {fmt_amount(eff)} above soft limit {fmt_amount(limit)}; grace running"
        else:
            text = (
                f"{res} {fmt_amount(eff)} above limit {fmt_amount(limit)}, within burst "
                f"{fmt_amount(burst or 0)}; burst clock running"
            )
        _alert(book, qk, ekey, res, clock_alert, None, "warning", used, limit, t, cause, text, out)


def _window_rules(
    book: QuotaBook,
    qk: str,
    ekey: str,
    res: str,
    raw: list[Any],
    reserved: int,
    eff: int,
    limit: int,
    t: int,
    cause: str,
    out: list[Output],
) -> None:
    if qk in book.clocks:
        del book.clocks[qk]
        cancel_deadline(book, "c" + qk)
    eps = book.episodes.get(qk)
    now = book.watermark_us
    if eps is not None:
        for kind in list(eps):
            if kind != WINDOW_EXCEEDED:
                _resolve(book, qk, ekey, res, kind, raw, eff, reserved, t, cause, "windowed", out)
            else:
                wend = eps[kind][E_WEND]
                if wend is None or now >= wend:
                    at = wend if wend is not None else t
                    _resolve(
                        book,
                        qk,
                        ekey,
                        res,
                        kind,
                        raw,
                        eff,
                        reserved,
                        at,
                        cause,
                        "window closed",
                        out,
                    )
        eps = book.episodes.get(qk)
    if eff > limit and (eps is None or WINDOW_EXCEEDED not in eps):
        _, end = window_bounds(raw[Q_WINDOW], now)
        _open(book, qk, ekey, res, WINDOW_EXCEEDED, raw, eff, reserved, t, cause, end, out)
        set_deadline(book, "w" + qk, end)


def _thresholds(
    book: QuotaBook,
    qk: str,
    ekey: str,
    res: str,
    raw: list[Any],
    used: int,
    limit: int,
    t: int,
    cause: str,
    cfg: Config,
    out: list[Output],
) -> None:
    if not limit:
        # A zero limit has no thresholds; crossings fired under an earlier limit are forgotten
        # (they re-arm), so that a later non-zero limit starts from a clean slate.
        book.alerts.pop(qk, None)
        return
    thresholds = cfg.thresholds
    fired = book.alerts.get(qk)
    if fired is None and _below_thresholds(used, limit, cfg):
        return
    for thr in thresholds:
        if fired is not None and thr in fired:
            if used * 100 <= (thr - cfg.rearm_points) * limit:
                fired.remove(thr)
        elif used > 0 and used * 100 >= thr * limit:
            if fired is None:
                fired = book.alerts[qk] = []
            fired.append(thr)
            text = (
                f"{res} at {used * 100 / limit:.1f}% of limit {fmt_amount(limit)} "
                f"(threshold {thr}%)"
            )
            severity = cfg.severity_for(thr)
            _alert(
                book, qk, ekey, res, "threshold", thr, severity, used, limit, t, cause, text, out
            )
    if fired is not None and not fired:
        del book.alerts[qk]
    elif fired and raw[Q_WINDOW] is not None:
        # The window's close drops utilization to zero, which re-arms these thresholds.
        set_deadline(book, "w" + qk, window_bounds(raw[Q_WINDOW], book.watermark_us)[1])
