"""The compliance report: what happened to quotas during a period, and who changed them.

``novaquota projections report --start T1 --end T2 [--tenant ID] [--step day|week|month]
[--format json|csv|html] [--out FILE]``.

Per period: violation episodes by kind (opened, resolved, still open), the time each quota
spent over its limit, every quota, template, reservation, budget and rate-limit change with its
actor, the grace expiries, and the records that were dead-lettered.

Where the figures come from. The log is replayed up to T2 (``projections.replay``) and the
figures are taken from what the enforcement rules re-derive on the way: the episodes they open
and resolve, the audit records they write, and their own over-limit state (a burst or grace
clock running, or an episode open). The output topics are not read: the report then depends only
on the input log, so it is the same whether or not a worker ran, and the same log always gives a
byte-identical report. "Time over limit" of a quota is the event time during which its usage
(plus reservations in their window) was above its limit, clipped to the period.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from novaquota.projections.replay import (
    FORMATS,
    ArgumentError,
    Citation,
    CliParser,
    ReplayResult,
    Report,
    amount,
    bar_chart,
    iso,
    parse_time,
    replay_log,
    run_cli,
    write_output,
)
from novaquota.schemas.common import datetime_to_us, parse_rfc3339
from novaquota.streams.quota.windows import window_bounds
from novaquota.streams.settings import Settings

__all__ = ["STEPS", "ComplianceReport", "build_report", "compliance_report", "main"]

STEPS: Final = ("day", "week", "month")
REPORT_VERSION: Final = 1
KINDS: Final = ("over_limit", "over_burst", "burst_expired", "grace_expired", "window_exceeded")
_WEEK_US: Final = 7 * 86_400 * 1_000_000
_MONDAY_OFFSET_US: Final = 4 * 86_400 * 1_000_000  # 1970-01-01 was a Thursday
_CHANGE_TYPES: Final = {
    "audit.quota_set": "quota",
    "audit.quota_deleted": "quota",
    "audit.reservation_created": "reservation",
    "audit.reservation_cancelled": "reservation",
    "audit.reservation_granted": "reservation",
    "audit.reservation_released": "reservation",
    "audit.reservation_expired": "reservation",
    "audit.budget_set": "budget",
    "audit.rate_limit_set": "rate_limit",
    "audit.tenant_deleted": "tenant",
    "audit.tenant_purged": "tenant",
    "audit.correction": "correction",
}
_TEMPLATE_COMMANDS: Final = ("template.defined", "template.applied")


def _us(text: str) -> int:
    return datetime_to_us(parse_rfc3339(text))


def _text(value: Any) -> str | None:
    """An amount from an output event (int, or an exact decimal string) as a string."""
    return None if value is None else str(value)


def _numbers_as_text(value: Any) -> Any:
    """Every number of an audit detail as exact decimal text (one type for amounts)."""
    if isinstance(value, dict):
        return {k: _numbers_as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_text(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _seconds(us: int) -> str:
    """Microseconds as exact decimal seconds."""
    return str(amount(us))


def buckets(start_us: int, end_us: int, step: str | None) -> list[tuple[int, int]]:
    """[start, end) cut at UTC day, ISO week (Monday) or calendar month boundaries."""
    if step is None:
        return [(start_us, end_us)]
    out = []
    t = start_us
    while t < end_us:
        if step == "week":
            b0 = t - (t - _MONDAY_OFFSET_US) % _WEEK_US
            b1 = b0 + _WEEK_US
        else:
            b1 = window_bounds(step, t)[1]
        out.append((t, min(b1, end_us)))
        t = b1
    return out


@dataclass(slots=True)
class _Episode:
    violation_id: str
    tenant_id: str
    data: dict[str, Any]
    opened_at: int
    opened_by: Citation
    resolved_at: int | None = None
    resolved_by: Citation | None = None
    resolve_reason: str | None = None


def _episodes(result: ReplayResult) -> list[_Episode]:
    eps: list[_Episode] = []
    open_: dict[str, _Episode] = {}
    for o in result.outputs:
        typ = o.event.get("type")
        d = o.event.get("data", {})
        if typ == "quota.violation":
            ep = _Episode(d["violation_id"], o.tenant_id, d, _us(d["detected_at"]), o.cause)
            eps.append(ep)
            open_[ep.violation_id] = ep
        elif typ == "quota.violation_resolved":
            found = open_.pop(d["violation_id"], None)
            if found is not None:
                found.resolved_at = _us(d["resolved_at"])
                found.resolved_by = o.cause
    return eps


def _episode_doc(ep: _Episode, start_us: int, end_us: int) -> dict[str, Any]:
    d = ep.data
    lo = max(ep.opened_at, start_us)
    hi = min(ep.resolved_at if ep.resolved_at is not None else end_us, end_us)
    return {
        "violation_id": ep.violation_id,
        "tenant_id": d["tenant_id"],
        "level": d["level"],
        "entity_id": d["entity_id"],
        "resource_type": d["resource_type"],
        "kind": d["kind"],
        "limit_type": d["limit_type"],
        "limit": _text(d["limit"]),
        "burst_limit": _text(d["burst_limit"]),
        "usage": _text(d["usage"]),
        "severity": d["severity"],
        "enforcement_action": d["enforcement_action"],
        "opened_at": iso(ep.opened_at),
        "resolved_at": iso(ep.resolved_at),
        "seconds_in_period": _seconds(max(0, hi - lo)),
        "cause_event_id": d["cause_event_id"],
        "opened_by": ep.opened_by.to_dict(),
        "resolved_by": ep.resolved_by.to_dict() if ep.resolved_by else None,
    }


def _changes(result: ReplayResult, start_us: int, end_us: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for o in result.outputs:
        if o.topic != "audit":
            continue
        d = o.event["data"]
        details = d.get("details", {})
        # the CloudEvent type of a command's audit record is generic; the action says which
        typ = details.get("action") or o.event.get("type", "")
        category = _CHANGE_TYPES.get(typ)
        if category is None:
            continue
        t = _us(o.event["time"])
        if not start_us <= t < end_us:
            continue
        rows.append(
            {
                "time": iso(t),
                "category": category,
                "type": typ,
                "tenant_id": d.get("tenant_id"),
                "actor": d.get("actor"),
                "subject": details.get("subject"),
                "before": _numbers_as_text(details.get("before")),
                "after": _numbers_as_text(details.get("after")),
                "reason": details.get("reason"),
                "cause": o.cause.to_dict(),
            }
        )
    for cite, typ, actor, body in result.commands:
        if typ not in _TEMPLATE_COMMANDS or cite.time_us is None:
            continue
        if not start_us <= cite.time_us < end_us:
            continue
        if result.tenant is not None and body.get("tenant_id") not in (result.tenant, "system"):
            continue
        if typ == "template.defined":
            subject = f"template/{body.get('name')}"
            after: Any = {k: body.get(k) for k in ("description", "quotas", "monthly_cost")}
        else:
            subject = f"{body.get('level')}/{body.get('entity_id')}"
            after = {"template": body.get("template")}
        rows.append(
            {
                "time": iso(cite.time_us),
                "category": "template",
                "type": typ,
                "tenant_id": None if typ == "template.defined" else body.get("tenant_id"),
                "actor": actor,
                "subject": subject,
                "before": None,
                "after": after,
                "reason": None,
                "cause": cite.to_dict(),
            }
        )
    rows.sort(key=lambda r: (r["time"], r["cause"]["topic"] or "", r["cause"]["offset"] or -1))
    return rows


def _time_over(result: ReplayResult, start_us: int, end_us: int) -> list[dict[str, Any]]:
    per: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for iv in result.intervals:
        if iv.start_us >= end_us or (iv.end_us is not None and iv.end_us <= start_us):
            continue
        lo = max(iv.start_us, start_us)
        hi = min(iv.end_us if iv.end_us is not None else end_us, end_us)
        key = (iv.tenant_id, iv.level, iv.entity_id, iv.resource_type)
        row = per.setdefault(
            key,
            {"us": 0, "stretches": 0, "kinds": set(), "open_at_end": False, "first": None},
        )
        row["us"] += max(0, hi - lo)
        row["stretches"] += 1
        row["kinds"].update(iv.kinds)
        row["open_at_end"] = iv.end_us is None or iv.end_us > end_us
        if row["first"] is None:
            row["first"] = iv.cause
    rows = []
    for (tenant, level, entity, res), row in sorted(per.items()):
        rows.append(
            {
                "tenant_id": tenant,
                "level": level,
                "entity_id": entity,
                "resource_type": res,
                "seconds": _seconds(row["us"]),
                "stretches": row["stretches"],
                "violation_kinds": sorted(row["kinds"]),
                "over_at_period_end": row["open_at_end"],
                "first_cause": row["first"].to_dict(),
            }
        )
    return rows


class ComplianceReport(Report):
    template = "compliance.html"
    csv_columns = (
        "record",
        "tenant_id",
        "level",
        "entity_id",
        "resource_type",
        "kind",
        "start",
        "end",
        "seconds",
        "actor",
        "detail",
        "topic",
        "partition",
        "offset",
        "event_id",
    )

    def csv_rows(self) -> Iterator[dict[str, Any]]:
        doc = self.doc
        for b in doc["periods"]:
            for kind, n in b["opened_by_kind"].items():
                yield {
                    "record": "period",
                    "kind": kind,
                    "start": b["start"],
                    "end": b["end"],
                    "detail": str(n),
                }
        for v in doc["violations"]:
            c = v["opened_by"]
            yield {
                "record": "violation",
                "tenant_id": v["tenant_id"],
                "level": v["level"],
                "entity_id": v["entity_id"],
                "resource_type": v["resource_type"],
                "kind": v["kind"],
                "start": v["opened_at"],
                "end": v["resolved_at"],
                "seconds": v["seconds_in_period"],
                "detail": f"{v['violation_id']} usage {v['usage']} limit {v['limit']}",
                **_cols(c),
            }
        for r in doc["time_over_limit"]:
            yield {
                "record": "time_over_limit",
                "tenant_id": r["tenant_id"],
                "level": r["level"],
                "entity_id": r["entity_id"],
                "resource_type": r["resource_type"],
                "kind": " ".join(r["violation_kinds"]),
                "seconds": r["seconds"],
                "detail": f"{r['stretches']} stretch(es)"
                + ("; still over at period end" if r["over_at_period_end"] else ""),
                **_cols(r["first_cause"]),
            }
        for ch in doc["changes"]:
            yield {
                "record": "change",
                "tenant_id": ch["tenant_id"],
                "kind": ch["type"],
                "start": ch["time"],
                "actor": ch["actor"],
                "detail": ch["subject"],
                **_cols(ch["cause"]),
            }
        for d in doc["dead_letters"]:
            yield {
                "record": "dead_letter",
                "tenant_id": d["tenant_id"],
                "kind": d["reason"],
                "start": d["record_time"],
                "detail": d["message"],
                "topic": d["topic"],
                "partition": d["partition"],
                "offset": d["offset"],
                "event_id": d["id"],
            }

    def charts(self) -> dict[str, str]:
        doc = self.doc
        out = {
            "by_kind": bar_chart(
                [(k, Decimal(n)) for k, n in doc["summary"]["opened_by_kind"].items()],
                title="Violation episodes opened, by kind",
            )
        }
        if len(doc["periods"]) > 1:
            out["periods"] = bar_chart(
                [(p["start"][:10], Decimal(p["opened"])) for p in doc["periods"]][:62],
                title=f"Violation episodes opened per {doc['step']}",
            )
        over = sorted(
            doc["time_over_limit"], key=lambda r: (-Decimal(r["seconds"]), r["tenant_id"])
        )[:25]
        if over:
            out["over"] = bar_chart(
                [
                    (
                        f"{r['tenant_id']} {r['level']} {r['entity_id']} {r['resource_type']}",
                        (Decimal(r["seconds"]) / 3600).quantize(Decimal("0.01")),
                    )
                    for r in over
                ],
                title="Time over limit (hours), top 25",
                unit=" h",
            )
        return out


def _cols(c: dict[str, Any] | None) -> dict[str, Any]:
    if c is None:
        return {}
    return {
        "topic": c["topic"],
        "partition": c["partition"],
        "offset": c["offset"],
        "event_id": c["id"],
    }


def build_report(
    result: ReplayResult,
    start_us: int,
    end_us: int,
    *,
    step: str | None = None,
    as_of_us: int | None = None,
) -> ComplianceReport:
    """The compliance report for [start_us, end_us) (event time) from a replay that reached
    ``end_us``; ``as_of_us`` is the log cut it was read at (None: the end of the log)."""
    if end_us <= start_us:
        raise ArgumentError(f"the period is empty: end {iso(end_us)} is not after {iso(start_us)}")
    if step is not None and step not in STEPS:
        raise ArgumentError(f"unknown step {step!r}; choose one of {', '.join(STEPS)}")
    if result.until_us < end_us:
        raise ArgumentError("the replay must reach the end of the period")
    episodes = [
        ep for ep in _episodes(result) if result.tenant is None or ep.tenant_id == result.tenant
    ]
    in_period = [
        ep
        for ep in episodes
        if ep.opened_at < end_us and (ep.resolved_at is None or ep.resolved_at > start_us)
    ]
    opened = [ep for ep in episodes if start_us <= ep.opened_at < end_us]
    resolved = [
        ep for ep in episodes if ep.resolved_at is not None and start_us <= ep.resolved_at < end_us
    ]
    by_kind = {k: 0 for k in KINDS}
    for ep in opened:
        kind = ep.data["kind"]
        by_kind[kind] = by_kind.get(kind, 0) + 1
    periods = []
    for b0, b1 in buckets(start_us, end_us, step):
        counts = {k: 0 for k in KINDS}
        for ep in opened:
            if b0 <= ep.opened_at < b1:
                counts[ep.data["kind"]] = counts.get(ep.data["kind"], 0) + 1
        periods.append(
            {
                "start": iso(b0),
                "end": iso(b1),
                "opened": sum(counts.values()),
                "opened_by_kind": counts,
            }
        )
    violations = [_episode_doc(ep, start_us, end_us) for ep in in_period]
    violations.sort(key=lambda v: (v["opened_at"], v["tenant_id"], v["violation_id"]))
    over = _time_over(result, start_us, end_us)
    changes = _changes(result, start_us, end_us)
    dead = [d.to_dict() for d in result.dead_letters if start_us <= d.timestamp_ms * 1000 < end_us]
    dead_by_reason: dict[str, int] = {}
    for d in dead:
        dead_by_reason[d["reason"]] = dead_by_reason.get(d["reason"], 0) + 1
    total_over = sum(Decimal(r["seconds"]) for r in over)
    doc = {
        "report": "novaquota.compliance",
        "report_version": REPORT_VERSION,
        "period": {"start": iso(start_us), "end": iso(end_us)},
        "tenant": result.tenant,
        "step": step,
        "log": {
            "as_of": iso(as_of_us),
            "cut": "every record stamped at or before as_of (null: the whole log when read)",
            "partitions": [r.to_dict() for r in result.ranges],
        },
        "derived_from": "the input log replayed up to the period end (episodes, clocks and "
        "audit records re-derived by the enforcement rules; output topics not read)",
        "summary": {
            "opened": len(opened),
            "resolved": len(resolved),
            "open_at_end": sum(
                1 for ep in in_period if ep.resolved_at is None or ep.resolved_at >= end_us
            ),
            "opened_by_kind": by_kind,
            "grace_expiries": by_kind.get("grace_expired", 0),
            "quotas_over_limit": len(over),
            "seconds_over_limit": str(total_over),
            "changes": len(changes),
            "dead_lettered": len(dead),
            "dead_lettered_by_reason": dict(sorted(dead_by_reason.items())),
        },
        "periods": periods,
        "violations": violations,
        "grace_expiries": [
            _episode_doc(ep, start_us, end_us)
            for ep in opened
            if ep.data["kind"] == "grace_expired"
        ],
        "time_over_limit": over,
        "changes": changes,
        "dead_letters": dead,
    }
    return ComplianceReport(doc)


async def compliance_report(
    settings: Settings,
    start_us: int,
    end_us: int,
    *,
    tenant: str | None = None,
    step: str | None = None,
    as_of_us: int | None = None,
) -> ComplianceReport:
    """Read the log as it stands (or stood at ``as_of_us``), replay it, build the report.

    The period is event time; the log cut is record time: events of the period that were
    published late (a backfill) count when they were in the log by ``as_of_us``.
    """
    if end_us <= start_us:
        raise ArgumentError(f"the period is empty: end {iso(end_us)} is not after {iso(start_us)}")
    final = end_us if as_of_us is None else max(end_us, as_of_us)
    result = await replay_log(settings, final, cut_us=as_of_us, tenant=tenant)
    return build_report(result, start_us, end_us, step=step, as_of_us=as_of_us)


def _time_arg(text: str) -> int:
    try:
        return parse_time(text)
    except ArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="novaquota projections report",
        description="Compliance report for a period: violations by kind, time over each limit, "
        "quota and template changes with their actor, grace expiries.",
    )
    p.add_argument("--start", required=True, type=_time_arg, metavar="T1", help="RFC 3339")
    p.add_argument("--end", required=True, type=_time_arg, metavar="T2", help="RFC 3339")
    p.add_argument("--tenant", metavar="ID", help="only this tenant")
    p.add_argument(
        "--as-of",
        type=_time_arg,
        metavar="T",
        help="read the log as it stood at T (RFC 3339; default: all of it, now)",
    )
    p.add_argument("--step", choices=STEPS, help="also count per UTC day, ISO week or month")
    p.add_argument("--format", default="json", choices=FORMATS, help="report format (json)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write here instead of stdout")
    return p


def main(argv: Sequence[str], settings: Settings) -> int:
    argv = list(argv)
    if argv and argv[0] == "report":
        argv = argv[1:]

    def body(args: argparse.Namespace) -> int:
        if args.end <= args.start:
            raise ArgumentError(f"--end {iso(args.end)} must be after --start {iso(args.start)}")
        report = asyncio.run(
            compliance_report(
                settings,
                args.start,
                args.end,
                tenant=args.tenant,
                step=args.step,
                as_of_us=args.as_of,
            )
        )
        write_output(report.render(args.format), args.out)
        if args.out is not None:
            print(f"wrote {args.out}", file=sys.stderr)
        return 0

    return run_cli(argv, build_parser(), body)
