"""``novaquota replay --until T``: rebuild quota state as of a moment, for an audit.

The log is read up to T (``projections.log``: per partition, every record stamped at or before
T) and fed, in one deterministic order, through the same enforcement step the worker runs
(``streams.enforce.Enforcer`` over in-memory tables, which calls the pure core
``streams.quota.apply``). Every figure of the report cites the records behind it: the live
instances that make up each usage figure and the record that set each one, the command that
set each quota, the record whose processing opened each violation episode.

Order. The worker applies each partition in offset order; resource events and commands of one
tenant interleave in arrival order. The replay merges the input topics by record timestamp, then
topic (commands first), then partition and offset, and applies the worker's tick records (the
internal ticks topic) in the same merge, so expiries fire where the worker fired them.
Allocation totals do not depend on this order at all: an instance holds what its newest event
(by event time) says, whatever order the events arrive in. Episode and alert timings can differ
from the worker's only where the worker's two input agents raced on the same tenant. After the
last record the replay advances every tenant with a pending deadline to T (a final tick), so
burst, grace, window and gauge expiries due by T have fired.

Determinism. The same log and T give a byte-identical report: no wall clock, no set iteration,
no floats in amounts (exact decimal strings), sorted output.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import csv
import io
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Final

import orjson

from novaquota.projections.log import LogPosition, LogReader, LogRecord, LogSlice, PartitionRange
from novaquota.schemas.amounts import from_micros
from novaquota.schemas.codec import Decoded, DecodeLimits
from novaquota.schemas.common import format_time_us, parse_time_us
from novaquota.streams import quota as q
from novaquota.streams import step
from novaquota.streams.enforce import SYSTEM, Emit, Enforcer, InstanceRows
from novaquota.streams.quota.state import (
    C_START,
    E_AT,
    G_EVENT,
    G_PROJECT,
    G_RES,
    G_SOURCE,
    G_TIME,
    G_USER,
)
from novaquota.streams.quota.units import SEP, entity_key, split_entity_key, split_quota_key
from novaquota.streams.settings import Settings, TopicNames, ensure_dir
from novaquota.streams.store.memory import MemoryStore
from novaquota.streams.store.records import instance_key

__all__ = [
    "FORMATS",
    "ArgumentError",
    "Citation",
    "CliParser",
    "DeadLetter",
    "OutputRecord",
    "OverInterval",
    "ReplayEngine",
    "ReplayReport",
    "ReplayResult",
    "Report",
    "amount",
    "bar_chart",
    "build_replay_report",
    "input_reader",
    "iso",
    "log_topics",
    "main",
    "parse_exact",
    "parse_time",
    "percent",
    "replay",
    "replay_log",
    "replay_records",
    "run_cli",
    "write_output",
]

FORMATS: Final = ("json", "csv", "html")
REPORT_VERSION: Final = 1
LEVEL_ORDER: Final = {"system": 0, "tenant": 1, "project": 2, "user": 3}
_CENT: Final = Decimal("0.01")
_NEVER: Final = 1 << 62


class ArgumentError(ValueError):
    """Bad command-line input: the message says what was wrong and what is expected."""


# --- time ------------------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """An RFC 3339 time with an offset (``2026-11-28T12:00:00Z``) as microseconds since the
    epoch; raises ``ArgumentError`` for anything else (no naive times, no bare dates)."""
    try:
        return parse_time_us(text)
    except ValueError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else "unparseable"
        raise ArgumentError(
            f"not an RFC 3339 time with an offset: {text!r} ({detail}); e.g. 2026-11-28T12:00:00Z"
        ) from None


def iso(time_us: int | None) -> str | None:
    return None if time_us is None else format_time_us(time_us)


def amount(micros: int | None) -> str | None:
    """An exact decimal string (micro-units in, no float on the way)."""
    return None if micros is None else str(from_micros(micros))


def percent(used: int, limit: int | None) -> str | None:
    """used / limit * 100, exact, rounded half-even to 2 places; None without a limit and for a
    zero limit, which has no percentage (contract section 5: null in every view)."""
    if not limit:
        return None
    return str((Decimal(used * 100) / Decimal(limit)).quantize(_CENT, ROUND_HALF_EVEN))


# --- what the replay records -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Citation:
    """The record behind a figure: its log position and CloudEvent identity."""

    position: LogPosition | None
    """None when the replay itself made the input (the final tick at T)."""
    event_id: str | None = None
    source: str | None = None
    time_us: int | None = None

    def to_dict(self) -> dict[str, Any]:
        p = self.position
        return {
            "topic": p.topic if p else None,
            "partition": p.partition if p else None,
            "offset": p.offset if p else None,
            "id": self.event_id,
            "source": self.source,
            "time": iso(self.time_us),
        }


FINAL_TICK = Citation(None, "replay:final-tick")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not take effect (the worker dead-letters it with ``reason``)."""

    position: LogPosition
    timestamp_ms: int
    reason: str
    message: str
    event_id: str | None
    tenant_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.position.to_dict(),
            "id": self.event_id,
            "tenant_id": self.tenant_id,
            "reason": self.reason,
            "message": self.message,
            "record_time": iso(self.timestamp_ms * 1000),
        }


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One CloudEvent the enforcement step produced, and the record that caused it."""

    cause: Citation
    topic: str
    """The contract topic name without prefix: quota-violations, quota-alerts or audit."""
    event: dict[str, Any]
    tenant_id: str
    cause_type: str | None = None
    actor: str | None = None


@dataclass(slots=True)
class OverInterval:
    """A stretch of event time during which one quota was over its limit: a violation episode
    was open or a burst/grace clock ran (usage above the limit), per the core's own state."""

    tenant_id: str
    level: str
    entity_id: str
    resource_type: str
    start_us: int
    cause: Citation
    end_us: int | None = None
    end_cause: Citation | None = None
    kinds: list[str] = field(default_factory=list)


# --- in-memory tables --------------------------------------------------------------------------


# --- the engine --------------------------------------------------------------------------------


def _over_keys(book: q.TenantState | q.SystemState) -> dict[str, int]:
    """Quota key → start of its current over-limit stretch (clock start or episode open)."""
    over: dict[str, int] = {}
    for qk, clock in book.clocks.items():
        over[qk] = clock[C_START]
    for qk, per in book.episodes.items():
        if per:
            first = min(ep[E_AT] for ep in per.values())
            over[qk] = min(over.get(qk, first), first)
    return over


def _home_partition(tenant_id: str, partitions: int) -> int:
    from aiokafka.partitioner import murmur2

    return (murmur2(tenant_id.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class ReplayResult:
    """Everything a replay rebuilt, for the reports."""

    until_us: int
    tenant: str | None
    topics: TopicNames
    enforcer: Enforcer
    store: MemoryStore
    ranges: list[PartitionRange]
    counts: dict[str, int]
    dead_letters: list[DeadLetter]
    outputs: list[OutputRecord]
    intervals: list[OverInterval]
    commands: list[tuple[Citation, str, str, dict[str, Any]]]
    """(record, type, actor, data) of every command that took effect, in replay order."""
    command_by_id: dict[str, Citation]
    gauge_by_event: dict[tuple[str, str], Citation]
    consumption: dict[str, list[tuple[int, tuple[str, ...], int, Citation]]]
    system_totals: dict[str, int]
    _opened: dict[str, Citation] | None = None

    def opened_by(self) -> dict[str, Citation]:
        """violation_id → the record whose processing opened the episode."""
        if self._opened is None:
            self._opened = {
                o.event["data"]["violation_id"]: o.cause
                for o in self.outputs
                if o.event.get("type") == "quota.violation"
            }
        return self._opened

    def tenant_ids(self) -> list[str]:
        return sorted(t for t, _raw in self.store.records(0) if t != SYSTEM)

    def state(self, tenant_id: str) -> q.TenantState | q.SystemState | None:
        rec, exists = self.store.record(tenant_id)
        return rec.state if exists else None


class ReplayEngine:
    """Feeds log records through the enforcement step, recording what each one caused."""

    def __init__(
        self,
        settings: Settings,
        *,
        partitions: int,
        until_us: int,
        tenant: str | None = None,
        config: q.Config = q.DEFAULT_CONFIG,
    ) -> None:
        self.topics = settings.topics
        self.partitions = max(1, partitions)
        self.until_us = until_us
        self.tenant = tenant
        self.limits = DecodeLimits(
            max_amount=settings.max_amount,
            max_clock_skew_seconds=settings.max_clock_skew_seconds,
        )
        self.templates: dict[str, Any] = {}
        self.store = MemoryStore()
        self.enforcer = Enforcer(
            self.store,
            config=config,
            templates=self.templates.get,
            # nothing is redelivered in a replay: the outbox (kept for re-sending after a
            # crash) never needs more than the current record's outputs
            committed=lambda _stream: _NEVER,
        )
        self.counts: dict[str, int] = {
            "records": 0,
            "applied": 0,
            "duplicates": 0,
            "dead_lettered": 0,
            "other_tenants": 0,
            "ticks": 0,
            "tenant_ticks": 0,
            "final_ticks": 0,
            "templates_defined": 0,
        }
        self.dead_letters: list[DeadLetter] = []
        self.outputs: list[OutputRecord] = []
        self.intervals: list[OverInterval] = []
        self._open: dict[tuple[str, str], OverInterval] = {}
        self.commands: list[tuple[Citation, str, str, dict[str, Any]]] = []
        self.command_by_id: dict[str, Citation] = {}
        self.gauge_by_event: dict[tuple[str, str], Citation] = {}
        self.consumption: dict[str, list[tuple[int, tuple[str, ...], int, Citation]]] = {}
        self.deadlines: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.max_time_us = 0
        self._system_seq = 0
        self._homes: dict[str, int] = {}
        self._input_topics = {self.topics.resource_events, self.topics.quota_commands}

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, rec: LogRecord) -> None:
        self.counts["records"] += 1
        if rec.topic == self.topics.ticks:
            self._tick_record(rec)
        elif rec.topic in self._input_topics:
            self._input(rec)

    def _dead(self, rec: LogRecord, reason: str, message: str, d: Decoded | None) -> None:
        self.counts["dead_lettered"] += 1
        tenant = d.tenant_id if d is not None else None
        if self.tenant is not None and tenant not in (None, self.tenant):
            return
        self.dead_letters.append(
            DeadLetter(rec.position, rec.timestamp_ms, reason, message, d.id if d else None, tenant)
        )

    def _input(self, rec: LogRecord) -> None:
        got = step.classify(
            rec.value,
            list(rec.headers) or None,
            rec.key,
            timestamp_ms=rec.timestamp_ms,
            limits=self.limits,
        )
        if got.kind == "dead_letter":
            self._dead(rec, got.reason, got.message, got.decoded)
            return
        decoded: Any = got.decoded
        cite = Citation(rec.position, decoded.id, decoded.source, decoded.time_us)
        data: Any = decoded.data
        if got.kind == "template":
            from novaquota.schemas.commands import TemplateSpec

            self.templates[data.name] = TemplateSpec.model_validate(
                data.model_dump(include={"name", "description", "quotas", "monthly_cost"})
            )
            self.counts["templates_defined"] += 1
            self.counts["applied"] += 1
            self._command(cite, decoded, "system")
            return
        tenant: Any = got.tenant
        if self.tenant is not None and tenant != self.tenant:
            self.counts["other_tenants"] += 1
            return
        before = self._over_of(tenant)
        self.enforcer.totals_delta = {}
        done = step.apply(self.enforcer, got, f"{rec.topic}:{rec.partition}", rec.offset)
        if done.kind == "dead_letter":
            self._dead(rec, done.reason, done.message, decoded)
            return
        if done.kind == "duplicate":
            self.counts["duplicates"] += 1
            return
        emits = done.emits
        if decoded.type == "api.requests":
            scope = q.Scope(tenant, data.project_id, data.user_id)
            self.consumption.setdefault(tenant, []).append(
                (decoded.time_us, _chain(scope), int(data.count), cite)
            )
        self.counts["applied"] += 1
        self.max_time_us = max(self.max_time_us, decoded.time_us)
        if decoded.kind == "command":
            self.command_by_id.setdefault(decoded.id, cite)
            self._command(cite, decoded, tenant)
        elif decoded.type == "network.sampled":
            self.gauge_by_event.setdefault((decoded.source, decoded.id), cite)
        actor = getattr(data, "actor", None)
        self._after(tenant, before, emits, cite, decoded.time_us, decoded.type, actor)
        self._totals(tenant, cite)

    def _command(self, cite: Citation, decoded: Decoded, tenant: str) -> None:
        data: Any = decoded.data
        body = orjson.loads(orjson.dumps(data.model_dump(), default=_json_default))
        body.setdefault("tenant_id", tenant)
        self.commands.append((cite, decoded.type, str(getattr(data, "actor", "") or ""), body))

    def _tick_record(self, rec: LogRecord) -> None:
        try:
            tick_us = int(rec.value or b"")
        except ValueError:
            return  # not a tick record; the worker would not have written it
        self.counts["ticks"] += 1
        due = sorted(
            t for t, d in self.deadlines.items() if d <= tick_us and self._home(t) == rec.partition
        )
        cite = Citation(rec.position, f"tick:{tick_us}", "novaquota/tick", tick_us)
        stream = f"{rec.topic}:{rec.partition}"
        for tenant in due:
            self._run_tick(tenant, tick_us, stream, rec.offset, cite)

    def _home(self, tenant: str) -> int:
        home = self._homes.get(tenant)
        if home is None:
            home = self._homes[tenant] = _home_partition(tenant, self.partitions)
        return home

    def _run_tick(
        self, tenant: str, tick_us: int, stream: str, offset: int, cite: Citation
    ) -> None:
        before = self._over_of(tenant)
        self.enforcer.totals_delta = {}
        emits = self.enforcer.tick(tenant, tick_us, stream, offset)
        self.counts["tenant_ticks"] += 1
        self.max_time_us = max(self.max_time_us, tick_us)
        self._after(tenant, before, emits, cite, tick_us, "tick", None)
        self._totals(tenant, cite)

    def _totals(self, tenant: str, cite: Citation) -> None:
        """Keep the summed tenant totals; re-evaluate system quotas when they (or the system
        quotas themselves) changed."""
        if self.tenant is not None:
            return
        if tenant == SYSTEM:
            self._system(cite)
            return
        delta = self.enforcer.totals_delta
        if not delta:
            return
        for r, d in delta.items():
            v = self.totals.get(r, 0) + d
            if v:
                self.totals[r] = v
            else:
                self.totals.pop(r, None)
        self._system(cite)

    def _over_of(self, tenant: str) -> dict[str, int]:
        if self.store.stored(tenant) is None:
            return {}
        return _over_keys(self.enforcer.load(tenant)[0].state)

    def _after(
        self,
        tenant: str,
        before: dict[str, int],
        emits: list[Emit],
        cite: Citation,
        step_us: int,
        cause_type: str,
        actor: str | None,
    ) -> None:
        resolved: dict[str, int] = {}
        for e in emits:
            event = parse_exact(e.value)
            self.outputs.append(OutputRecord(cite, e.topic, event, tenant, cause_type, actor))
            if event.get("type") == "quota.violation_resolved":
                d = event["data"]
                qk = entity_key(d["level"], d["entity_id"]) + SEP + d["resource_type"]
                at = parse_time_us(d["resolved_at"])
                resolved[qk] = max(resolved.get(qk, at), at)
        if self.store.stored(tenant) is None:
            self.deadlines.pop(tenant, None)
            after: dict[str, int] = {}
            book = None
        else:
            book = self.enforcer.load(tenant)[0].state
            after = _over_keys(book)
            deadline = q.next_deadline(book)
            if deadline is None or tenant == SYSTEM:
                self.deadlines.pop(tenant, None)
            else:
                self.deadlines[tenant] = deadline
        for qk in sorted(before.keys() - after.keys()):
            iv = self._open.pop((tenant, qk), None)
            if iv is not None:
                iv.end_us = max(iv.start_us, resolved.get(qk, step_us))
                iv.end_cause = cite
        for qk in sorted(after.keys() - before.keys()):
            ekey, res = split_quota_key(qk)
            level, entity_id = split_entity_key(ekey)
            iv = OverInterval(tenant, level, entity_id, res, after[qk], cite)
            self._open[(tenant, qk)] = iv
            self.intervals.append(iv)
        if book is not None:
            for qk in after:
                iv = self._open.get((tenant, qk))
                if iv is not None:
                    for kind in book.episodes.get(qk, {}):
                        if kind not in iv.kinds:
                            iv.kinds.append(kind)

    def _system(self, cite: Citation, time_us: int | None = None) -> None:
        """Evaluate system quotas against the summed tenant totals (the worker does this at
        most once a second from the partitions' totals; here after every change)."""
        if self.store.stored(SYSTEM) is None:
            return
        state = self.enforcer.load(SYSTEM)[0].state
        if not state.quotas:
            return
        before = _over_keys(state)
        self._system_seq += 1
        t = self.max_time_us if time_us is None else time_us
        emits = self.enforcer.system_totals(
            dict(self.totals), t, "replay:system-totals", self._system_seq
        )
        self._after(SYSTEM, before, emits, cite, t, "system.totals", None)

    # -- finishing -------------------------------------------------------------------------

    def finish(self, ranges: Sequence[PartitionRange] = ()) -> ReplayResult:
        """Fire what is due by T (the final tick) and hand over the result."""
        for tenant in sorted(t for t, d in self.deadlines.items() if d <= self.until_us):
            self._run_tick(tenant, self.until_us, "replay:final-tick", 0, FINAL_TICK)
            self.counts["tenant_ticks"] -= 1
            self.counts["final_ticks"] += 1
        if self.tenant is None:
            self._system(FINAL_TICK, max(self.max_time_us, self.until_us))
        return ReplayResult(
            until_us=self.until_us,
            tenant=self.tenant,
            topics=self.topics,
            enforcer=self.enforcer,
            store=self.store,
            ranges=list(ranges),
            counts=dict(self.counts),
            dead_letters=self.dead_letters,
            outputs=self.outputs,
            intervals=self.intervals,
            commands=self.commands,
            command_by_id=self.command_by_id,
            gauge_by_event=self.gauge_by_event,
            consumption=self.consumption,
            system_totals=dict(self.totals),
        )


def parse_exact(raw: bytes) -> Any:
    """JSON with every non-integer number kept exact, as its decimal string."""
    return _exact(json.loads(raw, parse_float=Decimal))


def _exact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_exact(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _chain(scope: q.Scope) -> tuple[str, ...]:
    chain = [entity_key("tenant", scope.tenant_id)]
    if scope.project_id is not None:
        chain.append(entity_key("project", scope.project_id))
    if scope.user_id is not None:
        chain.append(entity_key("user", scope.user_id))
    return tuple(chain)


def log_topics(topics: TopicNames) -> list[str]:
    """The topics a replay reads, in merge rank: commands before events at equal timestamps,
    ticks last."""
    return [topics.quota_commands, topics.resource_events, topics.ticks]


def replay_records(
    records: Sequence[LogRecord] | LogSlice,
    settings: Settings,
    until_us: int,
    *,
    tenant: str | None = None,
    partitions: int | None = None,
) -> ReplayResult:
    """Replay records already read (in merge order) as of ``until_us``."""
    if isinstance(records, LogSlice):
        ranges = records.ranges
        if partitions is None:
            partitions = records.partitions_of(settings.topics.resource_events) or None
        recs: Sequence[LogRecord] = records.records
    else:
        ranges, recs = [], records
    engine = ReplayEngine(
        settings,
        partitions=partitions or settings.partitions,
        until_us=until_us,
        tenant=tenant,
    )
    for rec in recs:
        engine.feed(rec)
    return engine.finish(ranges)


def input_reader(settings: Settings, cut_us: int | None) -> LogReader:
    """A reader of what a replay reads: inputs and ticks stamped at or before ``cut_us``
    (None: the whole log as it stands when reading starts)."""
    topics = settings.topics
    cut_ms = None if cut_us is None else cut_us // 1000
    return LogReader(settings, log_topics(topics), cut_ms, missing_ok=[topics.ticks])


async def replay_log(
    settings: Settings,
    until_us: int,
    *,
    cut_us: int | None,
    tenant: str | None = None,
) -> ReplayResult:
    """Stream the log (cut at ``cut_us``) through a replay that ends with a tick at
    ``until_us``."""
    async with input_reader(settings, cut_us) as reader:
        engine = ReplayEngine(
            settings,
            partitions=reader.partitions_of(settings.topics.resource_events) or settings.partitions,
            until_us=until_us,
            tenant=tenant,
        )
        async for rec in reader.records():
            engine.feed(rec)
        return engine.finish(reader.ranges)


async def replay(settings: Settings, until_us: int, *, tenant: str | None = None) -> ReplayResult:
    """Replay the log as it stood at ``until_us``, as of then."""
    return await replay_log(settings, until_us, cut_us=until_us, tenant=tenant)


# --- the report --------------------------------------------------------------------------------


class Report(abc.ABC):
    """A report document: one deterministic dict, rendered as JSON, CSV or HTML."""

    template: str = ""
    csv_columns: tuple[str, ...] = ()

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def to_json(self) -> bytes:
        return orjson.dumps(self.doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    @abc.abstractmethod
    def csv_rows(self) -> Iterator[dict[str, Any]]: ...

    def to_csv(self) -> bytes:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.csv_columns), lineterminator="\n")
        w.writeheader()
        for row in self.csv_rows():
            w.writerow({k: "" if v is None else v for k, v in row.items()})
        return buf.getvalue().encode()

    def charts(self) -> dict[str, str]:
        return {}

    def to_html(self) -> bytes:
        env = _jinja()
        html = env.get_template(self.template).render(doc=self.doc, charts=self.charts())
        return html.encode()

    def render(self, fmt: str) -> bytes:
        if fmt == "json":
            return self.to_json()
        if fmt == "csv":
            return self.to_csv()
        if fmt == "html":
            return self.to_html()
        raise ArgumentError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _jinja() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def bar_chart(
    bars: Sequence[tuple[str, Decimal]],
    *,
    title: str,
    unit: str = "",
    limit_line: Decimal | None = None,
    width: int = 640,
) -> str:
    """A horizontal bar chart as inline SVG (deterministic text, no scripts, no fonts)."""
    from xml.sax.saxutils import escape

    row_h, label_w, pad = 22, 230, 8
    height = pad * 2 + 24 + row_h * max(1, len(bars))
    plot_w = width - label_w - 90
    top = max([v for _, v in bars] + [limit_line or Decimal(0), Decimal(1)])
    quoted = escape(title, {'"': "&quot;"})
    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{quoted}">',
        f'<text x="{pad}" y="{pad + 14}" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(bars):
        y = pad + 24 + i * row_h
        w = int(Decimal(plot_w) * value / top) if top else 0
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" font-size="12" text-anchor="end">'
            f"{escape(label[:38])}</text>"
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{w}" height="{row_h - 6}" fill="#3b75af"/>'
        )
        parts.append(
            f'<text x="{label_w + w + 4}" y="{y + 15}" font-size="12">{escape(str(value))}'
            f"{escape(unit)}</text>"
        )
    if limit_line is not None and top:
        x = label_w + int(Decimal(plot_w) * limit_line / top)
        parts.append(
            f'<line x1="{x}" y1="{pad + 20}" x2="{x}" y2="{height - pad}" stroke="#c0392b" '
            'stroke-dasharray="4 3"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


class ReplayReport(Report):
    template = "replay.html"
    csv_columns = (
        "record",
        "tenant_id",
        "level",
        "entity_id",
        "resource_type",
        "amount",
        "limit",
        "utilization",
        "detail",
        "topic",
        "partition",
        "offset",
        "event_id",
        "event_time",
    )

    def csv_rows(self) -> Iterator[dict[str, Any]]:
        for t in self.doc["tenants"]:
            tid = t["tenant_id"]
            for u in t["usage"]:
                base = {
                    "tenant_id": tid,
                    "level": u["level"],
                    "entity_id": u["entity_id"],
                    "resource_type": u["resource_type"],
                }
                qc = u["quota"]["set_by"] if u["quota"] else None
                yield {
                    **base,
                    "record": "usage",
                    "amount": u["used"],
                    "limit": u["quota"]["limit"] if u["quota"] else None,
                    "utilization": u["utilization"],
                    "detail": f"reserved {u['reserved']}" if u["reserved"] != "0" else "",
                    **_cite_cols(qc),
                }
                for c in u["contributions"]:
                    yield {
                        **base,
                        "record": c["kind"],
                        "amount": c["amount"],
                        "detail": c["key"],
                        **_cite_cols(c["event"]),
                    }
            for v in t["open_violations"]:
                yield {
                    "record": "open_violation",
                    "tenant_id": tid,
                    "level": v["level"],
                    "entity_id": v["entity_id"],
                    "resource_type": v["resource_type"],
                    "detail": f"{v['kind']} {v['violation_id']} since {v['detected_at']}",
                    **_cite_cols(v["cause"]),
                }
        for d in self.doc["dead_letters"]:
            yield {
                "record": "dead_letter",
                "tenant_id": d["tenant_id"],
                "detail": f"{d['reason']}: {d['message']}",
                "topic": d["topic"],
                "partition": d["partition"],
                "offset": d["offset"],
                "event_id": d["id"],
            }

    def charts(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for t in self.doc["tenants"]:
            bars = [
                (f"{u['level']} {u['entity_id']} {u['resource_type']}", Decimal(u["utilization"]))
                for u in t["usage"]
                if u["utilization"] is not None
            ]
            if bars:
                out[t["tenant_id"]] = bar_chart(
                    bars[:40],
                    title=f"Utilization of {t['tenant_id']} (% of limit)",
                    unit=" %",
                    limit_line=Decimal(100),
                )
        return out


def _cite_cols(c: dict[str, Any] | None) -> dict[str, Any]:
    if c is None:
        return {}
    return {
        "topic": c["topic"],
        "partition": c["partition"],
        "offset": c["offset"],
        "event_id": c["id"],
        "event_time": c["time"],
    }


def _marker_citation(marker: str, topics: set[str]) -> LogPosition | None:
    parts = marker.rsplit(":", 2)
    if len(parts) == 3 and parts[0] in topics:
        return LogPosition(parts[0], int(parts[1]), int(parts[2]))
    return None


def _tenant_section(result: ReplayResult, tenant_id: str) -> dict[str, Any] | None:
    state = result.state(tenant_id)
    if not isinstance(state, q.TenantState):
        return None
    topics = {result.topics.resource_events, result.topics.quota_commands}
    contributions: dict[tuple[str, str], list[dict[str, Any]]] = {}
    live = tombstones = 0
    prefix = instance_key(tenant_id, "")
    for key, raw in result.store.scan(prefix):
        marker, inst = InstanceRows.parse(raw)
        if not inst.live:
            tombstones += 1
            continue
        live += 1
        ikey = key[len(prefix) :].decode()
        pos = _marker_citation(marker, topics)
        cite = Citation(pos, inst.event_id, inst.source, inst.time_us).to_dict()
        for ekey in _chain(inst.scope):
            for res, a in sorted(inst.resources.items()):
                if a:
                    contributions.setdefault((ekey, res), []).append(
                        {"kind": "instance", "key": ikey, "amount": amount(a), "event": cite}
                    )
    for iface, g in sorted(state.gauges.items()):
        scope = q.Scope(tenant_id, g[G_PROJECT], g[G_USER])
        gc = result.gauge_by_event.get((g[G_SOURCE], g[G_EVENT]))
        gcite = (gc or Citation(None, g[G_EVENT], g[G_SOURCE], g[G_TIME])).to_dict()
        for ekey in _chain(scope):
            for res, a in sorted(g[G_RES].items()):
                if a:
                    contributions.setdefault((ekey, res), []).append(
                        {"kind": "gauge", "key": iface, "amount": amount(a), "event": gcite}
                    )
    wm = state.watermark_us
    usage_rows: list[dict[str, Any]] = []
    ekeys = sorted(
        set(state.usage) | set(state.quotas),
        key=lambda ek: (LEVEL_ORDER[split_entity_key(ek)[0]], split_entity_key(ek)[1]),
    )
    for ekey in ekeys:
        level, entity_id = split_entity_key(ekey)
        for row in q.utilization_view(state, level, entity_id):
            res = row["resource_type"]
            quota = q.quota_of(state, level, entity_id, res)
            contrib = contributions.get((ekey, res), [])
            if quota is not None and quota.window is not None:
                start, end = q.window_bounds(quota.window, wm)
                contrib = [
                    {
                        "kind": "consumption",
                        "key": f"{quota.window} window {iso(start)}",
                        "amount": amount(a),
                        "event": c.to_dict(),
                    }
                    for t_us, chain, a, c in result.consumption.get(tenant_id, [])
                    if ekey in chain and start <= t_us < end
                ]
            usage_rows.append(
                {
                    "level": level,
                    "entity_id": entity_id,
                    "resource_type": res,
                    "used": amount(row["used"]),
                    "reserved": amount(row["reserved"]),
                    "utilization": percent(row["used"], quota.limit if quota else None),
                    "quota": _quota_doc(result, quota),
                    "contributions": sorted(
                        contrib, key=lambda c: (c["kind"], c["key"], c["event"]["offset"] or -1)
                    ),
                }
            )
    return {
        "tenant_id": tenant_id,
        "watermark": iso(wm) if wm else None,
        "purged": state.purged,
        "live_instances": live,
        "tombstones": tombstones,
        "usage": usage_rows,
        "open_violations": _open_violations(result, state),
        "reservations": [
            {
                "reservation_id": r.reservation_id,
                "level": r.level,
                "entity_id": r.entity_id,
                "resource_type": r.resource_type,
                "amount": amount(r.amount),
                "start": iso(r.start_us),
                "end": iso(r.end_us),
                "actor": r.actor,
                "set_by": _by_id(result, r.cause_event_id),
            }
            for r in sorted(
                (q.Reservation.from_raw(rid, raw) for rid, raw in state.reservations.items()),
                key=lambda r: r.reservation_id,
            )
        ],
    }


def _by_id(result: ReplayResult, event_id: str) -> dict[str, Any] | None:
    c = result.command_by_id.get(event_id)
    return (c or Citation(None, event_id)).to_dict()


def _quota_doc(result: ReplayResult, quota: q.Quota | None) -> dict[str, Any] | None:
    if quota is None:
        return None
    return {
        "limit": amount(quota.limit),
        "burst_limit": amount(quota.burst_limit),
        "limit_type": quota.limit_type,
        "window": quota.window,
        "status": quota.status,
        "enforcement_action": quota.enforcement_action,
        "set_at": iso(quota.set_at_us),
        "set_by": _by_id(result, quota.cause_event_id),
    }


def _open_violations(result: ReplayResult, book: q.TenantState | q.SystemState) -> list[Any]:
    opened = result.opened_by()
    rows = []
    for qk, per in book.episodes.items():
        ekey, res = split_quota_key(qk)
        level, entity_id = split_entity_key(ekey)
        for kind, ep in per.items():
            c = opened.get(ep[0])
            rows.append(
                {
                    "level": level,
                    "entity_id": entity_id,
                    "resource_type": res,
                    "kind": kind,
                    "violation_id": ep[0],
                    "detected_at": iso(ep[1]),
                    "cause_event_id": ep[2],
                    "cause": c.to_dict() if c is not None else None,
                }
            )
    rows.sort(
        key=lambda r: (LEVEL_ORDER[r["level"]], r["entity_id"], r["resource_type"], r["kind"])
    )
    return rows


def _system_section(result: ReplayResult) -> dict[str, Any] | None:
    if result.tenant is not None:
        return None
    state = result.state(SYSTEM)
    quotas = []
    if isinstance(state, q.SystemState):
        for row in q.utilization_view(state, "system", SYSTEM):
            quota = q.quota_of(state, "system", SYSTEM, row["resource_type"])
            quotas.append(
                {
                    "resource_type": row["resource_type"],
                    "used": amount(row["used"]),
                    "utilization": percent(row["used"], quota.limit if quota else None),
                    "quota": _quota_doc(result, quota),
                }
            )
    return {
        "totals": {r: amount(a) for r, a in sorted(result.system_totals.items())},
        "quotas": quotas,
        "open_violations": _open_violations(result, state) if state is not None else [],
    }


def build_replay_report(result: ReplayResult) -> ReplayReport:
    """The audit report of a replay (module doc): state as of T with its citations."""
    per_topic: dict[str, int] = {}
    for o in result.outputs:
        if result.tenant is None or o.tenant_id == result.tenant:
            per_topic[o.topic] = per_topic.get(o.topic, 0) + 1
    tenants = [result.tenant] if result.tenant is not None else result.tenant_ids()
    sections = [s for t in tenants if (s := _tenant_section(result, t)) is not None]
    doc = {
        "report": "novaquota.replay",
        "report_version": REPORT_VERSION,
        "as_of": iso(result.until_us),
        "tenant": result.tenant,
        "log": {
            "cut": "per partition: every record with a record timestamp at or before as_of",
            "partitions": [r.to_dict() for r in result.ranges],
        },
        "inputs": dict(sorted(result.counts.items())),
        "outputs": dict(sorted(per_topic.items())),
        "dead_letters": [d.to_dict() for d in result.dead_letters],
        "tenants": sections,
        "system": _system_section(result),
    }
    return ReplayReport(doc)


# --- command line ------------------------------------------------------------------------------


class CliParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own errors: usage + message, status 2
        raise ArgumentError(f"{message}\n{self.format_usage().rstrip()}")


def _time_arg(text: str) -> int:
    try:
        return parse_time(text)
    except ArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="novaquota replay",
        description="Rebuild quota state as of a time from the log and write an audit report "
        "that cites the records (topic, partition, offset, id) behind each figure.",
    )
    p.add_argument("--until", required=True, type=_time_arg, metavar="T", help="RFC 3339 time")
    p.add_argument("--tenant", metavar="ID", help="only this tenant (no system section)")
    p.add_argument("--format", default="json", choices=FORMATS, help="report format (json)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write here instead of stdout")
    return p


def write_output(data: bytes, out: Path | None) -> None:
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    ensure_dir(out.parent)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)


def run_cli(
    argv: list[str], parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int]
) -> int:
    """Parse, run, and turn bad input into a one-line error with exit status 2."""
    prog = parser.prog
    try:
        args = parser.parse_args(argv)
    except ArgumentError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        return body(args)
    except ArgumentError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from novaquota.projections.log import LogReadError

        if isinstance(exc, LogReadError):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        raise


def main(argv: list[str], settings: Settings) -> int:
    def body(args: argparse.Namespace) -> int:
        result = asyncio.run(replay(settings, args.until, tenant=args.tenant))
        write_output(build_replay_report(result).render(args.format), args.out)
        if args.out is not None:
            print(f"wrote {args.out}", file=sys.stderr)
        return 0

    return run_cli(argv, build_parser(), body)
