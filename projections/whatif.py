"""``novaquota replay --what-if FILE --from T1 --until T2``: what a proposal would have done.

FILE proposes quota changes (``quota.set``, ``quota.deleted``, ``template.applied`` command data,
validated with the command models of ``schemas.commands``). The log is read once and fed through
two replays (``projections.replay.ReplayEngine``, the enforcement step the workers run):

- **actual**: the log as it happened;
- **proposed**: the same log with the proposal applied from T1: each tenant's proposed commands
  take effect (with event time T1) just before the first record of that tenant whose event time
  is at or after T1 (system-level ones before the first record of any tenant), or at the end
  when no such record comes. From then on the proposal holds: a command of the log that changes
  a quota the proposal sets (or applies a template to an entity the proposal applies one to) is
  *superseded* and not applied in the proposed run; a template the log applies to an entity
  with proposed quotas is applied without those quotas.

Both runs also apply the records of the internal admission topic (check-and-reserve, release
and TTL records of the check API, decided by the tenant's agent in order with its events), so
every recorded admission check is decided again against each run's limits at its time (the
owner's clock when it was accepted, carried in the record).

The report compares, for the period [T1, T2) of event time: violation episodes (opened, by
kind, per quota, time in violation), alerts, admission checks denied, and cost (usage priced
with the projections' catalogue, plus the monthly fees of the templates in force). The same
log and FILE always give the same bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Final

import orjson
from pydantic import ValidationError

from novaquota.projections.compliance import KINDS, _episode_doc, _episodes, _time_over
from novaquota.projections.config import ProjectionSettings
from novaquota.projections.cost import Catalogue, entity_cost, load_catalogue
from novaquota.projections.exceptions import PricingError
from novaquota.projections.folds import FoldParams, FoldStats, ProjectionState, flush, fold_event
from novaquota.projections.log import LogReader, LogRecord
from novaquota.projections.policy import (
    POLICY_SOURCE,
    Episode,
    Observation,
    PolicyAction,
    PolicyEngine,
)
from novaquota.projections.replay import (
    ArgumentError,
    Citation,
    CliParser,
    Progress,
    ReplayEngine,
    ReplayResult,
    Report,
    add_report_options,
    amount,
    emit_report,
    iso,
    log_progress,
    log_topics,
    parse_time,
    read_summary,
    run_cli,
    time_arg,
)
from novaquota.schemas.amounts import from_micros
from novaquota.schemas.codec import _decode_error, encode
from novaquota.schemas.commands import (
    COMMAND_MODELS,
    Command,
    QuotaDeleted,
    QuotaSet,
    TemplateApplied,
    TemplateSpec,
)
from novaquota.schemas.common import SYSTEM_TENANT
from novaquota.schemas.limits import DecodeLimits
from novaquota.schemas.policies import Policy, PolicyFileError, parse_policies
from novaquota.schemas.templates import BUILTIN_TEMPLATES
from novaquota.streams import quota as q
from novaquota.streams.enforce import SYSTEM, Rejection
from novaquota.streams.quota.units import split_entity_key
from novaquota.streams.settings import Settings

__all__ = [
    "CHANGE_TYPES",
    "Change",
    "CheckRecord",
    "Proposal",
    "ProposalError",
    "WhatIfEngine",
    "WhatIfReport",
    "build_report",
    "load_proposal",
    "main",
    "parse_proposal",
    "what_if",
    "what_if_records",
    "what_if_topics",
]

REPORT_VERSION: Final = 1
CHANGE_TYPES: Final = ("quota.set", "quota.deleted", "template.applied")
PROPOSAL_SOURCE: Final = "novaquota/what-if"
PROPOSAL_TOPIC: Final = "what-if-proposal"
"""The pseudo-topic that citations of proposed commands name (they are not on the log)."""
DEFAULT_ACTOR: Final = "what-if"
TEMPLATE_COPY: Final = "~what-if-"
"""A template the proposed run applies without the quotas the proposal sets is a copy named
``<template>~what-if-<n>`` (the report names the template itself)."""
RUNS: Final = ("actual", "proposed")
_HOURS_PER_MONTH: Final = Decimal(730)
_US_PER_HOUR: Final = Decimal(3_600_000_000)
_CENT: Final = Decimal("0.01")
_USD: Final = Decimal("0.0001")
_TOP_KEYS: Final = ("description", "changes", "policies")


class ProposalError(ValueError):
    """The what-if file cannot be used: the message names the file and the field."""


# --- the proposal file -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One proposed command: its place in the file, type and validated data."""

    index: int
    type: str
    data: Command

    @property
    def where(self) -> str:
        return f"changes[{self.index}]"

    @property
    def tenant_id(self) -> str:
        return str(getattr(self.data, "tenant_id", SYSTEM_TENANT))

    def to_dict(self) -> dict[str, Any]:
        body = orjson.loads(orjson.dumps(self.data.model_dump(), default=str))
        return {"index": self.index, "type": self.type, "data": body}


@dataclass(frozen=True, slots=True)
class Proposal:
    name: str
    sha256: str
    description: str
    changes: tuple[Change, ...]
    policies: tuple[Policy, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "sha256": self.sha256,
            "description": self.description,
            "changes": [c.to_dict() for c in self.changes],
            "policies": [_policy_doc(p) for p in self.policies],
        }


def _policy_doc(policy: Any) -> Any:
    dump = getattr(policy, "model_dump", None)
    if dump is None:
        return policy
    return orjson.loads(orjson.dumps(dump(), default=str))


def _decimal_floats() -> Any:
    """A YAML loader that reads every float as an exact Decimal (no binary rounding of limits)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def to_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
        return Decimal(str(loader.construct_scalar(node)).replace("_", ""))

    Loader.add_constructor("tag:yaml.org,2002:float", to_decimal)
    return Loader


def _load_text(raw: bytes, name: str) -> Any:
    text = raw.decode("utf-8", "replace")
    if name.endswith(".json") or text.lstrip().startswith(("{", "[")):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if name.endswith(".json"):
                raise ProposalError(f"{name}: not valid JSON ({exc})") from None
    import yaml

    try:
        return yaml.load(text, Loader=_decimal_floats())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ProposalError(f"{name}: neither JSON nor valid YAML ({detail})") from None


def parse_proposal(
    raw: bytes,
    name: str = "what-if file",
    *,
    limits: DecodeLimits | None = None,
    tenant: str | None = None,
    base: Path | None = None,
) -> Proposal:
    """Parse and validate a what-if file (YAML or JSON).

    The file is a mapping with ``changes`` (a list of commands: ``type`` plus the command's
    data; ``actor`` defaults to ``what-if``), optionally ``policies`` (a list of policies, or
    the path of a policy file, relative to ``base``) and ``description``; a bare list is read
    as ``changes``. Raises ``ProposalError`` naming the field at fault.
    """
    doc = _load_text(raw, name)
    if isinstance(doc, list):
        doc = {"changes": doc}
    if not isinstance(doc, dict):
        raise ProposalError(
            f"{name}: expected a mapping with 'changes' and/or 'policies', got {type(doc).__name__}"
        )
    unknown = sorted(str(k) for k in doc if k not in _TOP_KEYS)
    if unknown:
        raise ProposalError(f"{name}: {unknown[0]}: unknown key; expected {', '.join(_TOP_KEYS)}")
    description = doc.get("description") or ""
    if not isinstance(description, str):
        raise ProposalError(f"{name}: description: a string")
    raw_changes = doc.get("changes") or []
    if not isinstance(raw_changes, list):
        raise ProposalError(f"{name}: changes: a list of commands")
    changes = tuple(_change(i, item, name, limits, tenant) for i, item in enumerate(raw_changes))
    digest = hashlib.sha256(raw)
    raw_policies = doc.get("policies")
    if isinstance(raw_policies, str):
        path = (base or Path.cwd()) / raw_policies
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ProposalError(
                f"{name}: policies: cannot read {raw_policies} ({exc.strerror or exc})"
            ) from None
        digest.update(b"\0" + text)
        raw_policies = _load_text(text, raw_policies)
        if isinstance(raw_policies, dict) and set(raw_policies) == {"policies"}:
            raw_policies = raw_policies["policies"]
        if isinstance(raw_policies, dict):
            raw_policies = [raw_policies]  # a file of one policy
    policies = _policies(raw_policies, name)
    if not changes and not policies:
        raise ProposalError(f"{name}: changes: the file proposes nothing (no changes, no policies)")
    _no_conflicts(changes, name)
    return Proposal(name, digest.hexdigest(), description, changes, policies)


def _change(
    i: int, item: Any, name: str, limits: DecodeLimits | None, tenant: str | None
) -> Change:
    where = f"changes[{i}]"
    if not isinstance(item, dict):
        raise ProposalError(f"{name}: {where}: a mapping with a 'type', got {item!r}")
    typ = item.get("type")
    if typ not in CHANGE_TYPES:
        raise ProposalError(f"{name}: {where}.type: one of {', '.join(CHANGE_TYPES)}, got {typ!r}")
    body = {k: v for k, v in item.items() if k != "type"}
    if isinstance(body.get("data"), dict) and len(body) == 1:
        body = dict(body["data"])  # the command's CloudEvent data, nested
    body.setdefault("actor", DEFAULT_ACTOR)
    try:
        data = COMMAND_MODELS[typ].model_validate(body, context=limits)
    except ValidationError as exc:
        raise ProposalError(f"{name}: {_decode_error(exc, where).message}") from None
    change = Change(i, typ, data)
    if tenant is not None and change.tenant_id not in (tenant, SYSTEM_TENANT):
        raise ProposalError(
            f"{name}: {where}.tenant_id: {change.tenant_id!r} is not the --tenant {tenant!r}"
        )
    if tenant is not None and change.tenant_id == SYSTEM_TENANT:
        raise ProposalError(
            f"{name}: {where}.level: system quotas need a replay of every tenant (no --tenant)"
        )
    return change


def _policies(raw: Any, name: str) -> tuple[Policy, ...]:
    """The policy set (``schemas.policies``, as ``policy.set`` takes it): a list of policies."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ProposalError(f"{name}: policies: a list of policies, or a policy file's path")
    if not raw:
        return ()
    try:
        return tuple(parse_policies(raw, name))
    except PolicyFileError as exc:
        raise ProposalError(f"{name}: {'; '.join(exc.problems)}") from None


def _key_of(change: Change) -> tuple[str, str, str, str] | None:
    d = change.data
    if isinstance(d, QuotaSet | QuotaDeleted):
        return d.quota_key
    return None


def _no_conflicts(changes: Sequence[Change], name: str) -> None:
    """Two changes of one quota (or two templates for one entity) would make the proposal
    depend on their order in the file: refuse them."""
    seen: dict[tuple[str, ...], int] = {}
    for c in changes:
        d = c.data
        key: tuple[str, ...]
        if isinstance(d, TemplateApplied):
            key = ("template", *d.entity_key)
        else:
            qk = _key_of(c)
            assert qk is not None
            key = ("quota", *qk)
        if key in seen:
            raise ProposalError(
                f"{name}: {c.where}: changes the same {key[0]} as changes[{seen[key]}]"
            )
        seen[key] = c.index


def load_proposal(
    path: Path, *, limits: DecodeLimits | None = None, tenant: str | None = None
) -> Proposal:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProposalError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return parse_proposal(raw, path.name, limits=limits, tenant=tenant, base=path.parent)


# --- the two runs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """One admission check of the log, decided in one run."""

    cite: Citation
    time_us: int
    tenant_id: str
    project_id: str | None
    user_id: str | None
    resources: dict[str, int]
    reserve: bool
    allowed: bool
    reason: str
    repeated: bool


class _Run(ReplayEngine):
    """A replay that also decides the admission records (check, release, TTL expiry)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.checks: list[CheckRecord] = []
        self.counts["admission_records"] = 0

    def state_of(self, tenant: str) -> q.TenantState | q.SystemState | None:
        if self.store.stored(tenant) is None:
            return None
        return self.enforcer.load(tenant)[0].state

    def admission(self, rec: LogRecord, body: dict[str, Any]) -> None:
        tenant = str(body["tenant_id"])
        self.counts["records"] += 1
        self.counts["admission_records"] += 1
        now = int(body["now_us"])
        cite = Citation(rec.position, str(body.get("request_id") or ""), "novaquota/admission", now)
        before = self._over_of(tenant)
        try:
            result, emits = self.enforcer.admit(body, f"{rec.topic}:{rec.partition}", rec.offset)
        except Rejection as exc:
            self._dead(rec, exc.reason, exc.message, None)
            return
        except (KeyError, TypeError, ValueError) as exc:
            # the worker dead-letters it as an internal error and goes on; so does the replay
            self._dead(rec, "internal_error", f"{type(exc).__name__}: {exc}", None)
            return
        self._after(tenant, before, emits, cite, now, f"admission.{body['op']}", body.get("actor"))
        if body["op"] == "check" and isinstance(result, q.AdmissionResult):
            self.checks.append(
                CheckRecord(
                    cite,
                    now,
                    tenant,
                    body.get("project_id"),
                    body.get("user_id"),
                    {str(r): int(a) for r, a in sorted(body["resources"].items())},
                    bool(body.get("reserve")),
                    result.allowed,
                    result.reason,
                    result.repeated,
                )
            )


@dataclass
class WhatIfResult:
    start_us: int
    end_us: int
    as_of_us: int | None
    tenant: str | None
    proposal: Proposal
    actual: ReplayResult
    proposed: ReplayResult
    checks: dict[str, list[CheckRecord]]
    superseded: list[dict[str, Any]]
    applied: list[dict[str, Any]]
    policy_actions: list[dict[str, Any]]
    costs: ProjectionState
    templates: dict[str, TemplateSpec]
    counts: dict[str, int] = field(default_factory=dict)


def _admission_body(value: bytes | None) -> dict[str, Any] | None:
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or "tenant_id" not in body or "op" not in body:
        return None
    if not isinstance(body.get("now_us"), int):
        return None
    return body


class WhatIfEngine:
    """Feeds each log record to the actual and the proposed replay (module doc)."""

    def __init__(
        self,
        settings: Settings,
        proposal: Proposal,
        *,
        partitions: int,
        start_us: int,
        end_us: int,
        until_us: int,
        tenant: str | None = None,
        fold_params: FoldParams | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.proposal = proposal
        self.start_us = start_us
        self.end_us = end_us
        self.tenant = tenant
        kw: dict[str, Any] = {"partitions": partitions, "until_us": until_us, "tenant": tenant}
        self.actual = _Run(settings, **kw)
        self.proposed = _Run(settings, **kw)
        self.pending: dict[str, list[Change]] = {}
        for c in proposal.changes:
            self.pending.setdefault(c.tenant_id, []).append(c)
        self.pinned_quotas: dict[tuple[str, str, str, str], Change] = {}
        self.pinned_templates: dict[tuple[str, str, str], Change] = {}
        self.superseded: list[dict[str, Any]] = []
        self.applied: list[dict[str, Any]] = []
        self._seq = 0
        self._tag = proposal.sha256[:12]
        self.costs = ProjectionState()
        self.fold_params = fold_params or FoldParams()
        self._fold_stats = FoldStats()
        self._inputs = {self.topics.resource_events, self.topics.quota_commands}
        self.limits = self.actual.limits
        self.policies = _PolicyRunner(self, proposal.policies) if proposal.policies else None
        self._policy_names = {p.name for p in proposal.policies}

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, rec: LogRecord) -> None:
        if rec.topic in self._inputs:
            got = self.actual.classify(rec)
            decoded: Any = got.decoded
            tenant = got.tenant if got.kind == "tenant" else None
            if tenant is not None:
                self._arrive(tenant, decoded.time_us)
                self._before(tenant, decoded.time_us)
            mark = len(self.proposed.outputs)
            self.actual.counts["records"] += 1
            self.proposed.counts["records"] += 1
            self.actual.apply_input(rec, got)
            if tenant is not None and decoded.kind == "command":
                self._proposed_command(rec, got)
            else:
                self.proposed.apply_input(rec, got)
            if tenant is not None:
                self._after(tenant, decoded.time_us, mark)
            if got.kind in ("tenant", "template") and (
                self.tenant is None or got.tenant in (None, self.tenant)
            ):
                fold_event(self.costs, decoded, self.fold_params, self._fold_stats)
        elif rec.topic == self.topics.ticks:
            try:
                tick_us = int(rec.value or b"")
            except ValueError:
                tick_us = None
            due: list[str] = []
            if tick_us is not None:
                due = self.proposed.due_tenants(tick_us, rec.partition)
                for tenant in due:
                    self._arrive(tenant, tick_us)
                    self._before(tenant, tick_us)
            mark = len(self.proposed.outputs)
            self.actual.feed(rec)
            self.proposed.feed(rec)
            for tenant in due:
                assert tick_us is not None
                self._after(tenant, tick_us, mark)
        elif rec.topic == self.topics.admission:
            body = _admission_body(rec.value)
            if body is None:
                return  # not a record the check API writes; the worker would fail on it too
            tenant = str(body["tenant_id"])
            if self.tenant is not None and tenant != self.tenant:
                return
            now = int(body["now_us"])
            self._arrive(tenant, now)
            self._before(tenant, now)
            self.actual.admission(rec, body)
            self.proposed.admission(rec, body)

    def _arrive(self, tenant: str | None, time_us: int) -> None:
        """A record of ``tenant`` at ``time_us`` is next: the proposal takes effect first."""
        if time_us < self.start_us:
            return
        if self.pending:
            if SYSTEM_TENANT in self.pending:
                self._inject(SYSTEM_TENANT, self.start_us)
            if tenant is not None and tenant in self.pending:
                self._inject(tenant, self.start_us)
        if self.policies is not None and not self.policies.started:
            self.policies.start(self.start_us)

    def _before(self, tenant: str, time_us: int) -> None:
        if self.policies is not None and self.policies.started:
            self.policies.before(tenant, time_us)

    def _after(self, tenant: str, time_us: int, mark: int) -> None:
        if self.policies is not None and self.policies.started:
            self.policies.after(tenant, time_us, mark)

    def _inject(self, tenant: str, time_us: int) -> None:
        for change in self.pending.pop(tenant, []):
            self._apply_change(change, time_us, "proposal")
            d = change.data
            if isinstance(d, TemplateApplied):
                self.pinned_templates[d.entity_key] = change
                for spec in self._template(change).quotas:
                    self.pinned_quotas[(*d.entity_key, spec.resource_type)] = change
            else:
                qk = _key_of(change)
                assert qk is not None
                self.pinned_quotas[qk] = change

    def _template(self, change: Change) -> TemplateSpec:
        d = change.data
        assert isinstance(d, TemplateApplied)
        spec = BUILTIN_TEMPLATES.get(d.template) or self.proposed.templates.get(d.template)
        if spec is None:
            raise ProposalError(
                f"{self.proposal.name}: {change.where}.template: no template named "
                f"{d.template!r} (built-in tiers: {', '.join(sorted(BUILTIN_TEMPLATES))}; "
                "others must be defined on the log before the period starts)"
            )
        return spec

    def _apply_change(self, change: Change, time_us: int, why: str) -> None:
        """Apply one proposed command to the proposed run, as a record of its own."""
        if isinstance(change.data, TemplateApplied):
            self._template(change)  # a clear error for an unknown template
        self._seq += 1
        event_id = f"what-if-{self._tag}-{self._seq}"
        value = encode(
            change.type, change.data, source=PROPOSAL_SOURCE, id=event_id, time_us=time_us
        )
        rec = LogRecord(PROPOSAL_TOPIC, 0, self._seq, time_us // 1000, None, value)
        got = self.proposed.classify(rec)
        dead_before = len(self.proposed.dead_letters)
        self.proposed.apply_input(rec, got)
        if got.kind == "dead_letter" or len(self.proposed.dead_letters) > dead_before:
            d = self.proposed.dead_letters[-1] if self.proposed.dead_letters else None
            why_not = f"{d.reason}: {d.message}" if d is not None else got.message
            raise ProposalError(f"{self.proposal.name}: {change.where}: refused ({why_not})")
        self.applied.append(
            {
                "index": change.index,
                "type": change.type,
                "time": iso(time_us),
                "why": why,
                "tenant_id": change.tenant_id,
                "event_id": event_id,
            }
        )

    def _proposed_command(self, rec: LogRecord, got: Any) -> None:
        """A command of the log, in the proposed run: superseded where the proposal holds."""
        decoded: Any = got.decoded
        data = decoded.data
        if decoded.time_us < self.start_us:
            self.proposed.apply_input(rec, got)
            return
        by: str | None = None
        change: Change | None = None
        if isinstance(data, QuotaSet | QuotaDeleted):
            change = self.pinned_quotas.get(data.quota_key)
        elif isinstance(data, TemplateApplied):
            change = self.pinned_templates.get(data.entity_key)
        if change is not None:
            by = change.where
        actor = str(getattr(data, "actor", "") or "")
        policy = actor[7:].rsplit("@", 1)[0] if actor.startswith("policy/") else None
        if policy is not None and policy in self._policy_names:
            by = f"policies[{policy}]"  # the proposal's version of this policy decides
        if by is None and isinstance(data, TemplateApplied):
            narrowed = self._narrowed_template(rec, got)
            if narrowed is None:
                return
            rec, got, by, resources = narrowed
            self._supersede(rec, decoded, got.tenant, actor, by, resources)
            if len(resources) < self._template_size(data.template):
                self.proposed.apply_input(rec, got)
            return
        if by is not None:
            self._supersede(rec, decoded, got.tenant, actor, by, None)
            return
        self.proposed.apply_input(rec, got)

    def _supersede(
        self,
        rec: LogRecord,
        decoded: Any,
        tenant: str | None,
        actor: str,
        by: str,
        resources: list[str] | None,
    ) -> None:
        if self.tenant is not None and tenant != self.tenant:
            return
        self.superseded.append(
            {
                "type": decoded.type,
                "tenant_id": tenant,
                "time": iso(decoded.time_us),
                "actor": actor,
                "by": by,
                "resources": resources,
                "cause": Citation(
                    rec.position, decoded.id, decoded.source, decoded.time_us
                ).to_dict(),
            }
        )
        self.proposed.counts["superseded"] = self.proposed.counts.get("superseded", 0) + 1

    def _template_size(self, name: str) -> int:
        spec = BUILTIN_TEMPLATES.get(name) or self.proposed.templates.get(name)
        return len(spec.quotas) if spec is not None else 0

    def _narrowed_template(
        self, rec: LogRecord, got: Any
    ) -> tuple[LogRecord, Any, str, list[str]] | None:
        """The log applies a template to an entity some of whose quotas the proposal sets: the
        proposed run applies the template without those quotas (a copy of it, named
        ``<template>~what-if-<n>``, with the same fee). None: apply it as it is."""
        decoded: Any = got.decoded
        data: TemplateApplied = decoded.data
        pinned = {k[3]: c for k, c in self.pinned_quotas.items() if k[:3] == data.entity_key}
        spec = BUILTIN_TEMPLATES.get(data.template) or self.proposed.templates.get(data.template)
        if not pinned or spec is None:
            self.proposed.apply_input(rec, got)
            return None
        keep = tuple(qs for qs in spec.quotas if qs.resource_type not in pinned)
        dropped = sorted(qs.resource_type for qs in spec.quotas if qs.resource_type in pinned)
        if not dropped:
            self.proposed.apply_input(rec, got)
            return None
        by = sorted({pinned[r].where for r in dropped})[0]
        if not keep:
            return rec, got, by, dropped  # nothing of the template is left to apply
        self._seq += 1
        name = f"{spec.name}{TEMPLATE_COPY}{self._seq}"
        self.proposed.templates[name] = spec.model_copy(update={"name": name, "quotas": keep})
        value = encode(
            decoded.type,
            data.model_copy(update={"template": name}),
            source=decoded.source,
            id=decoded.id,
            time_us=decoded.time_us,
        )
        copy = LogRecord(rec.topic, rec.partition, rec.offset, rec.timestamp_ms, rec.key, value)
        return copy, self.proposed.classify(copy), by, dropped

    def finish(self, ranges: Sequence[Any] = ()) -> WhatIfResult:
        for tenant in sorted(self.pending):
            self._inject(tenant, self.start_us)
        if self.policies is not None:
            if not self.policies.started:
                self.policies.start(self.start_us)
            self.policies.finish(self.end_us)
        flush(self.costs)
        actual = self.actual.finish(ranges)
        proposed = self.proposed.finish(ranges)
        templates = dict(BUILTIN_TEMPLATES)
        templates.update(self.actual.templates)
        return WhatIfResult(
            start_us=self.start_us,
            end_us=self.end_us,
            as_of_us=None,
            tenant=self.tenant,
            proposal=self.proposal,
            actual=actual,
            proposed=proposed,
            checks={"actual": self.actual.checks, "proposed": self.proposed.checks},
            superseded=self.superseded,
            applied=self.applied,
            policy_actions=self.policies.actions if self.policies is not None else [],
            costs=self.costs,
            templates=templates,
        )


# --- the policy set in the proposed run --------------------------------------------------------


_MAX_ROUNDS: Final = 100
"""Actions that lead to more actions at the same moment stop after this many rounds."""


class _PolicyRunner:
    """Runs the proposal's policies (``projections.policy.PolicyEngine``) inside the proposed
    replay: from T1 the engine is told each quota's figures whenever a record changes them and
    every violation episode the proposed run opens; the commands its actions become are applied
    to the proposed run at their event time, and what results is observed again."""

    def __init__(self, owner: WhatIfEngine, policies: Sequence[Policy]) -> None:
        self.owner = owner
        self.run = owner.proposed
        self.policies = list(policies)
        self.engine = PolicyEngine()
        self.started = False
        self.start_us = owner.start_us
        self.last: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
        self.last_obs: dict[tuple[str, str, str, str], Observation] = {}
        self.by_tenant: dict[str, set[tuple[str, str, str, str]]] = {}
        self.tiers: dict[tuple[str, str, str], str] = {}
        self._commands_seen = 0
        self.actions: list[dict[str, Any]] = []

    # -- feeding the engine ------------------------------------------------------------------

    def start(self, time_us: int) -> None:
        """The policies take effect at T1: the engine learns the episodes so far and every
        quota's figures, then the policies (which are evaluated against them at once)."""
        self.started = True
        self._episodes(0, None)
        for tenant in self._tenants():
            self._observe(tenant, time_us, force=True)
        self.engine.advance(time_us)  # no policy yet: every quota's clock moves to T1, no action
        acts: list[PolicyAction] = []
        for policy in self.policies:
            acts.extend(self.engine.set_policy(policy, time_us))
        self._apply(acts)

    def before(self, tenant: str, time_us: int) -> None:
        """A record of ``tenant`` at ``time_us`` is next: what its quotas' rules have due by
        then is applied first (the engine re-evaluates each quota at its change points)."""
        acts: list[PolicyAction] = []
        for key in sorted(self.by_tenant.get(tenant, ())):
            obs = self.last_obs[key]
            if time_us > obs.time_us:
                acts.extend(self.engine.observe(_at(obs, time_us)))
        self._apply(acts)

    def after(self, tenant: str, time_us: int, mark: int) -> None:
        """The record was applied: new episodes and changed figures go to the engine."""
        acts = self._episodes(mark, tenant)
        acts.extend(self._observe(tenant, time_us))
        self._apply(acts)

    def finish(self, end_us: int) -> None:
        acts = [a for a in self.engine.advance(end_us) if a.time_us < end_us]
        self._apply(acts)

    def _tenants(self) -> list[str]:
        only = self.owner.tenant
        return sorted(
            t for t, _raw in self.run.store.records(0) if t != SYSTEM and only in (None, t)
        )

    def _episodes(self, mark: int, tenant: str | None) -> list[PolicyAction]:
        acts: list[PolicyAction] = []
        for o in self.run.outputs[mark:]:
            if o.event.get("type") != "quota.violation" or o.tenant_id == SYSTEM:
                continue
            if tenant is not None and o.tenant_id != tenant:
                continue
            d = o.event["data"]
            key = (o.tenant_id, d["level"], d["entity_id"], d["resource_type"])
            opened = parse_time(d["detected_at"])
            acts.extend(self.engine.violation(Episode(key, d["violation_id"], d["kind"], opened)))
        return acts

    def _tier_of(self) -> dict[tuple[str, str, str], str]:
        cmds = self.run.commands
        for _cite, typ, _actor, body in cmds[self._commands_seen :]:
            if typ == "template.applied":
                key = (str(body["tenant_id"]), str(body["level"]), str(body["entity_id"]))
                self.tiers[key] = _template_name(body)
        self._commands_seen = len(cmds)
        return self.tiers

    def _observe(self, tenant: str, time_us: int, *, force: bool = False) -> list[PolicyAction]:
        """Tell the engine the figures of ``tenant``'s quotas that changed (all: ``force``)."""
        if self.owner.tenant is not None and tenant != self.owner.tenant:
            return []
        state = self.run.state_of(tenant)
        if not isinstance(state, q.TenantState):
            return []
        tiers = self._tier_of()
        acts: list[PolicyAction] = []
        for ekey in sorted(state.quotas):
            level, entity_id = split_entity_key(ekey)
            for res in sorted(state.quotas[ekey]):
                quota = q.quota_of(state, level, entity_id, res)
                if quota is None:
                    continue
                key = (tenant, level, entity_id, res)
                used = state.used(ekey, res, quota.window, max(time_us, state.watermark_us))
                parent = None
                if level in ("project", "user"):
                    up = q.quota_of(state, "tenant", tenant, res)
                    parent = from_micros(up.limit) if up is not None else None
                tier = tiers.get((tenant, level, entity_id))
                if not any(p.enabled and p.scope.matches(*key, tier) for p in self.policies):
                    continue  # no rule can act on it: the engine need not know it
                fields = _quota_fields(quota)
                sig = (used, quota.limit, parent, tier, quota.status, tuple(fields.items()))
                if not force and self.last.get(key) == sig:
                    continue
                self.last[key] = sig
                obs = Observation(
                    key=key,
                    time_us=time_us,
                    usage=from_micros(used),
                    limit=from_micros(quota.limit),
                    parent_limit=parent,
                    tier=tier,
                    status=quota.status,
                    quota=fields,
                )
                self.last_obs[key] = obs
                self.by_tenant.setdefault(tenant, set()).add(key)
                acts.extend(self.engine.observe(obs))
        return acts

    # -- acting --------------------------------------------------------------------------------

    def _apply(self, acts: list[PolicyAction]) -> None:
        rounds = 0
        while acts and rounds < _MAX_ROUNDS:
            rounds += 1
            more: list[PolicyAction] = []
            for act in sorted(acts, key=lambda a: (a.time_us, a.action_id)):
                more.extend(self._act(act))
            acts = more

    def _act(self, act: PolicyAction) -> list[PolicyAction]:
        """Apply one action to the proposed run; returns what the engine does next."""
        row: dict[str, Any] = {**act.to_dict(), "actor": act.actor}
        self.actions.append(row)
        cmd = act.command()
        if cmd is None:
            row.update(type="quota.alert", outcome="alert")
            return []
        typ, data = cmd
        row["type"] = typ
        try:
            model = COMMAND_MODELS[typ].model_validate(data, context=self.owner.limits)
        except ValidationError as exc:
            row["outcome"] = f"refused: {_decode_error(exc, 'data').message}"
            return []
        value = encode(typ, model, source=POLICY_SOURCE, id=act.action_id, time_us=act.time_us)
        self.owner._seq += 1
        rec = LogRecord(PROPOSAL_TOPIC, 1, self.owner._seq, act.time_us // 1000, None, value)
        got = self.run.classify(rec)
        dead = len(self.run.dead_letters)
        mark = len(self.run.outputs)
        self.run.apply_input(rec, got)
        if got.kind == "dead_letter" or len(self.run.dead_letters) > dead:
            d = self.run.dead_letters[-1] if len(self.run.dead_letters) > dead else None
            row["outcome"] = f"refused: {d.reason}: {d.message}" if d else got.message
            return []
        row["outcome"] = "applied"
        tenant = act.tenant_id
        out = self._episodes(mark, tenant)
        out.extend(self._observe(tenant, act.time_us))
        return out


def _at(obs: Observation, time_us: int) -> Observation:
    return Observation(
        key=obs.key,
        time_us=time_us,
        usage=obs.usage,
        limit=obs.limit,
        parent_limit=obs.parent_limit,
        tier=obs.tier,
        status=obs.status,
        quota=obs.quota,
        time_to_exhaustion_seconds=obs.time_to_exhaustion_seconds,
    )


def _quota_fields(quota: q.Quota) -> dict[str, Any]:
    """A quota's fields as ``quota.set`` carries them (what a policy action keeps)."""
    return {
        "resource_type": quota.resource_type,
        "limit": from_micros(quota.limit),
        "limit_type": quota.limit_type,
        "burst_limit": None if quota.burst_limit is None else from_micros(quota.burst_limit),
        "burst_seconds": quota.burst_seconds,
        "grace_seconds": quota.grace_seconds,
        "window": quota.window,
        "status": quota.status,
        "enforcement_action": quota.enforcement_action,
    }


def what_if_topics(settings: Settings) -> list[str]:
    """What the what-if replay reads, in merge rank (``log_topics``, then admission records)."""
    return [*log_topics(settings.topics), settings.topics.admission]


def what_if_records(
    records: Iterable[LogRecord],
    settings: Settings,
    proposal: Proposal,
    start_us: int,
    end_us: int,
    *,
    tenant: str | None = None,
    partitions: int | None = None,
) -> WhatIfResult:
    """Both runs over records already read, in merge order (``what_if_topics`` ranks)."""
    engine = WhatIfEngine(
        settings,
        proposal,
        partitions=partitions or settings.partitions,
        start_us=start_us,
        end_us=end_us,
        until_us=end_us,
        tenant=tenant,
    )
    for rec in records:
        engine.feed(rec)
    return engine.finish()


async def what_if(
    settings: Settings,
    proposal: Proposal,
    start_us: int,
    end_us: int,
    *,
    tenant: str | None = None,
    as_of_us: int | None = None,
    fold_params: FoldParams | None = None,
    progress: Progress | None = None,
) -> WhatIfResult:
    """Read the log (as it stands, or stood at ``as_of_us``) and run both replays."""
    if end_us <= start_us:
        raise ArgumentError(f"the period is empty: {iso(end_us)} is not after {iso(start_us)}")
    topics = settings.topics
    cut_ms = None if as_of_us is None else as_of_us // 1000
    until_us = end_us if as_of_us is None else max(end_us, as_of_us)
    async with LogReader(
        settings,
        what_if_topics(settings),
        cut_ms,
        missing_ok=[topics.ticks, topics.admission],
        progress=progress,
    ) as reader:
        engine = WhatIfEngine(
            settings,
            proposal,
            partitions=reader.partitions_of(topics.resource_events) or settings.partitions,
            start_us=start_us,
            end_us=end_us,
            until_us=until_us,
            tenant=tenant,
            fold_params=fold_params,
        )
        async for rec in reader.records():
            engine.feed(rec)
        result = engine.finish(reader.ranges)
    result.as_of_us = as_of_us
    return result


# --- the comparison ----------------------------------------------------------------------------


def _in_tenant(result: WhatIfResult, tenant_id: str | None) -> bool:
    return result.tenant is None or tenant_id == result.tenant


def _violations(result: WhatIfResult, run: ReplayResult) -> list[dict[str, Any]]:
    s, e = result.start_us, result.end_us
    rows = [
        _episode_doc(ep, s, e)
        for ep in _episodes(run)
        if _in_tenant(result, ep.tenant_id)
        and ep.opened_at < e
        and (ep.resolved_at is None or ep.resolved_at > s)
    ]
    rows.sort(key=lambda v: (v["opened_at"], v["tenant_id"], v["violation_id"]))
    return rows


def _opened_in(rows: Iterable[dict[str, Any]], s: str, e: str) -> list[dict[str, Any]]:
    return [v for v in rows if s <= v["opened_at"] < e]


def _alerts(result: WhatIfResult, run: ReplayResult) -> list[dict[str, Any]]:
    rows = []
    for o in run.outputs:
        if o.topic != "quota-alerts" or not _in_tenant(result, o.tenant_id):
            continue
        t = parse_time(o.event["time"])
        if not result.start_us <= t < result.end_us:
            continue
        d = o.event["data"]
        rows.append(
            {
                "alert_id": d.get("alert_id"),
                "time": iso(t),
                "tenant_id": d.get("tenant_id"),
                "level": d.get("level"),
                "entity_id": d.get("entity_id"),
                "resource_type": d.get("resource_type"),
                "kind": d.get("kind"),
                "severity": d.get("severity"),
                "threshold": None if d.get("threshold") is None else str(d["threshold"]),
                "utilization": None if d.get("utilization") is None else str(d["utilization"]),
                "cause": o.cause.to_dict(),
            }
        )
    rows.sort(key=lambda a: (a["time"], a["tenant_id"] or "", a["alert_id"] or ""))
    return rows


def _check_doc(c: CheckRecord) -> dict[str, Any]:
    return {"allowed": c.allowed, "reason": c.reason}


def _checks(result: WhatIfResult) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]]]:
    """Counts per run, and every check denied in either run with both decisions."""
    s, e = result.start_us, result.end_us
    by_pos: dict[tuple[str, int, int], dict[str, CheckRecord]] = {}
    order: list[tuple[str, int, int]] = []
    for run in RUNS:
        for c in result.checks[run]:
            if not s <= c.time_us < e or c.cite.position is None:
                continue
            pos = c.cite.position
            key = (pos.topic, pos.partition, pos.offset)
            if key not in by_pos:
                by_pos[key] = {}
                order.append(key)
            by_pos[key][run] = c
    counts = {run: {"checks": 0, "allowed": 0, "denied": 0} for run in RUNS}
    rows: list[dict[str, Any]] = []
    for key in order:
        pair = by_pos[key]
        for run, c in pair.items():
            counts[run]["checks"] += 1
            counts[run]["allowed" if c.allowed else "denied"] += 1
        a, p = pair.get("actual"), pair.get("proposed")
        if (a is None or a.allowed) and (p is None or p.allowed):
            continue
        any_c = a or p
        assert any_c is not None
        rows.append(
            {
                "time": iso(any_c.time_us),
                "tenant_id": any_c.tenant_id,
                "project_id": any_c.project_id,
                "user_id": any_c.user_id,
                "resources": {r: amount(v) for r, v in any_c.resources.items()},
                "reserve": any_c.reserve,
                "request_id": any_c.cite.event_id,
                "actual": _check_doc(a) if a else None,
                "proposed": _check_doc(p) if p else None,
                "changed": (a.allowed if a else None) != (p.allowed if p else None),
                "record": any_c.cite.to_dict(),
            }
        )
    rows.sort(key=lambda r: (r["time"], r["record"]["partition"], r["record"]["offset"]))
    return counts, rows


def _policy_actions(result: WhatIfResult) -> dict[str, list[dict[str, Any]]]:
    """Actual: the commands policies issued on the log during the period; proposed: what the
    proposal's policies did in the proposed run (the log's commands of a policy the proposal
    also names are superseded there)."""
    s, e = iso(result.start_us), iso(result.end_us)
    assert s is not None and e is not None
    actual = []
    for cite, typ, actor, body in result.actual.commands:
        if not actor.startswith("policy/") or cite.time_us is None:
            continue
        if not result.start_us <= cite.time_us < result.end_us:
            continue
        if not _in_tenant(result, body.get("tenant_id")):
            continue
        cause = body.get("cause") or {}
        actual.append(
            {
                "action_id": cause.get("action_id") or cite.event_id,
                "time": iso(cite.time_us),
                "actor": actor,
                "type": typ,
                "kind": cause.get("action"),
                "tenant_id": body.get("tenant_id"),
                "level": body.get("level"),
                "entity_id": body.get("entity_id"),
                "resource_type": body.get("resource_type"),
                "limit": None if body.get("limit") is None else str(body["limit"]),
                "template": body.get("template"),
                "summary": cause.get("summary") or "",
                "record": cite.to_dict(),
            }
        )
    proposed = [
        a
        for a in result.policy_actions
        if s <= a["time"] < e and _in_tenant(result, a["tenant_id"])
    ]
    return {
        "actual": [{**_ACTION_KEYS, **a} for a in actual],
        "proposed": [{**_ACTION_KEYS, **a} for a in proposed],
    }


_ACTION_KEYS: Final[dict[str, Any]] = dict.fromkeys(
    ("kind", "limit", "previous_limit", "template", "status", "severity", "message", "outcome")
)
"""Every row of ``policy_actions`` has these keys (None where they do not apply)."""


def _usd(value: Decimal | float) -> str:
    return str(
        Decimal(repr(value) if isinstance(value, float) else value).quantize(_USD, ROUND_HALF_EVEN)
    )


def _template_fees(result: WhatIfResult, run: ReplayResult) -> dict[str, list[dict[str, Any]]]:
    """Per tenant: the templates in force on each entity during the period, with the prorated
    monthly fee (730 hours a month, as the catalogue's monthly prices)."""
    s, e = result.start_us, result.end_us
    changes: dict[tuple[str, str, str], list[tuple[int, str | None]]] = {}
    for cite, typ, _actor, body in run.commands:
        if cite.time_us is None:
            continue
        if typ == "template.applied":
            key = (str(body["tenant_id"]), str(body["level"]), str(body["entity_id"]))
            changes.setdefault(key, []).append((cite.time_us, _template_name(body)))
        elif typ == "tenant.deleted":
            tid = str(body["tenant_id"])
            for key in [k for k in changes if k[0] == tid]:
                changes[key].append((cite.time_us, None))
    out: dict[str, list[dict[str, Any]]] = {}
    for key, seq in sorted(changes.items()):
        if not _in_tenant(result, key[0]):
            continue
        seq.sort(key=lambda x: x[0])
        current: str | None = None
        since = s
        spans: list[tuple[str, int, int]] = []
        for t, name in seq:
            if t <= s:
                current = name
                continue
            if t >= e:
                break
            if current is not None:
                spans.append((current, since, t))
            current, since = name, t
        if current is not None:
            spans.append((current, since, e))
        for name, lo, hi in spans:
            spec = result.templates.get(name)
            monthly = Decimal(spec.monthly_cost) if spec is not None else Decimal(0)
            fee = monthly * Decimal(hi - lo) / (_HOURS_PER_MONTH * _US_PER_HOUR)
            out.setdefault(key[0], []).append(
                {
                    "level": key[1],
                    "entity_id": key[2],
                    "template": name,
                    "from": iso(lo),
                    "until": iso(hi),
                    "monthly_cost": str(monthly),
                    "fee_usd": _usd(fee),
                }
            )
    return out


def _costs(result: WhatIfResult, catalogue: Catalogue) -> dict[str, Any]:
    fees = {run: _template_fees(result, r) for run, r in zip(RUNS, _runs(result), strict=True)}
    tenants = sorted(
        {t for t, _lvl, _e, _r in result.costs.series if t != SYSTEM_TENANT}
        | set(fees["actual"])
        | set(fees["proposed"])
    )
    rows = []
    totals = {run: Decimal(0) for run in RUNS}
    for tid in tenants:
        if not _in_tenant(result, tid):
            continue
        summary = entity_cost(
            result.costs, (tid, "tenant", tid), catalogue, result.start_us, result.end_us
        )
        usage = Decimal(_usd(summary.total))
        row: dict[str, Any] = {
            "tenant_id": tid,
            "usage_usd": str(usage),
            "usage_by_resource": {r: _usd(v) for r, v in sorted(summary.by_resource.items()) if v},
        }
        for run in RUNS:
            fee = sum((Decimal(f["fee_usd"]) for f in fees[run].get(tid, [])), Decimal(0))
            row[run] = {
                "template_fees_usd": str(fee.quantize(_USD)),
                "templates": fees[run].get(tid, []),
                "total_usd": str((usage + fee).quantize(_USD)),
            }
            totals[run] += usage + fee
        rows.append(row)
    return {
        "catalogue": catalogue.describe(),
        "note": "usage is what the log's events held and consumed; it is the same in both runs "
        "(the events are what happened), the runs differ in the template fees in force",
        "tenants": rows,
        "total_usd": {run: str(totals[run].quantize(_USD)) for run in RUNS},
    }


def _denied_rate(rows: list[dict[str, Any]], catalogue: Catalogue) -> dict[str, str]:
    """USD per hour of the capacity that each run's denials refused (priced per unit-hour)."""
    out = {}
    for run in RUNS:
        rate = Decimal(0)
        for r in rows:
            d = r[run]
            if d is None or d["allowed"]:
                continue
            for res, a in r["resources"].items():
                if not catalogue.consumed(res):
                    rate += Decimal(a) * Decimal(repr(catalogue.price(res)))
        out[run] = str(rate.quantize(Decimal("0.0001"), ROUND_HALF_EVEN))
    return out


def _runs(result: WhatIfResult) -> tuple[ReplayResult, ReplayResult]:
    return result.actual, result.proposed


def _summary(
    violations: list[dict[str, Any]],
    opened: list[dict[str, Any]],
    over: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    checks: dict[str, int],
    end: str,
) -> dict[str, Any]:
    by_kind = {k: 0 for k in KINDS}
    for v in opened:
        by_kind[v["kind"]] = by_kind.get(v["kind"], 0) + 1
    alerts_by: dict[str, int] = {}
    for a in alerts:
        k = f"{a['kind']}/{a['severity']}"
        alerts_by[k] = alerts_by.get(k, 0) + 1
    return {
        "episodes_opened": len(opened),
        "opened_by_kind": by_kind,
        "open_at_end": sum(
            1 for v in violations if v["resolved_at"] is None or v["resolved_at"] >= end
        ),
        "seconds_in_violation": str(
            sum((Decimal(v["seconds_in_period"]) for v in violations), Decimal(0))
        ),
        "quotas_over_limit": len(over),
        "seconds_over_limit": str(sum((Decimal(r["seconds"]) for r in over), Decimal(0))),
        "alerts": len(alerts),
        "alerts_by_kind": dict(sorted(alerts_by.items())),
        "checks": checks["checks"],
        "checks_denied": checks["denied"],
        "policy_actions": 0,  # filled in by build_report
    }


def _side_by_side(
    per_run: dict[str, list[dict[str, Any]]],
    key_fields: tuple[str, ...],
    value: str | None,
) -> list[dict[str, Any]]:
    """Rows keyed by ``key_fields`` with, per run, the count (and the sum of ``value``)."""
    table: dict[tuple[Any, ...], dict[str, Any]] = {}
    for run, rows in per_run.items():
        for r in rows:
            key = tuple(r[f] for f in key_fields)
            row = table.setdefault(
                key,
                {
                    **dict(zip(key_fields, key, strict=True)),
                    **{run2: {"count": 0, "seconds": "0"} for run2 in RUNS},
                },
            )
            cell = row[run]
            cell["count"] += 1
            if value is not None:
                cell["seconds"] = str(Decimal(cell["seconds"]) + Decimal(r[value]))
    out = []
    for key in sorted(table, key=lambda k: tuple("" if x is None else str(x) for x in k)):
        row = table[key]
        if value is None:
            for run in RUNS:
                del row[run]["seconds"]
        out.append(row)
    return out


def build_report(result: WhatIfResult, catalogue: Catalogue) -> WhatIfReport:
    s, e = iso(result.start_us), iso(result.end_us)
    assert s is not None and e is not None
    violations: dict[str, list[dict[str, Any]]] = {}
    opened: dict[str, list[dict[str, Any]]] = {}
    over: dict[str, list[dict[str, Any]]] = {}
    alerts: dict[str, list[dict[str, Any]]] = {}
    for run, r in zip(RUNS, _runs(result), strict=True):
        violations[run] = _violations(result, r)
        opened[run] = _opened_in(violations[run], s, e)
        over[run] = [
            row
            for row in _time_over(r, result.start_us, result.end_us)
            if _in_tenant(result, row["tenant_id"])
        ]
        alerts[run] = _alerts(result, r)
    check_counts, denied = _checks(result)
    policy_actions = _policy_actions(result)
    summary = {
        run: _summary(violations[run], opened[run], over[run], alerts[run], check_counts[run], e)
        for run in RUNS
    }
    costs = _costs(result, catalogue)
    for run in RUNS:
        summary[run]["policy_actions"] = len(policy_actions[run])
    for run in RUNS:
        summary[run]["cost_usd"] = costs["total_usd"][run]
    denied_rate = _denied_rate(denied, catalogue)
    for run in RUNS:
        summary[run]["denied_capacity_usd_per_hour"] = denied_rate[run]
    summary["difference"] = {
        k: _diff(summary["proposed"][k], summary["actual"][k])
        for k in summary["actual"]
        if k not in ("opened_by_kind", "alerts_by_kind")
    }
    a_counts = result.actual.counts
    doc = {
        "report": "novaquota.what_if",
        "report_version": REPORT_VERSION,
        "period": {"start": s, "end": e},
        "tenant": result.tenant,
        "log": {
            "as_of": iso(result.as_of_us),
            "cut": "every record stamped at or before as_of (null: the whole log when read)",
            "partitions": [r.to_dict() for r in result.actual.ranges],
        },
        "proposal": result.proposal.to_dict(),
        "semantics": "proposed: the log replayed with the proposal in force from the period "
        "start; the log's own changes of a proposed quota are superseded",
        "inputs": {
            "records": a_counts.get("records", 0),
            "admission_records": a_counts.get("admission_records", 0),
            "dead_lettered": a_counts.get("dead_lettered", 0),
            "proposed_commands_applied": len(result.applied),
            "superseded": len(result.superseded),
        },
        "summary": summary,
        "episodes": _side_by_side(
            opened,
            ("tenant_id", "level", "entity_id", "resource_type", "kind"),
            "seconds_in_period",
        ),
        "time_over_limit": _side_by_side(
            over, ("tenant_id", "level", "entity_id", "resource_type"), "seconds"
        ),
        "alerts": _side_by_side(
            alerts, ("tenant_id", "level", "entity_id", "resource_type", "kind", "severity"), None
        ),
        "violations": violations,
        "denied_checks": denied,
        "policy_actions": policy_actions,
        "cost": costs,
        "applied": result.applied,
        "superseded": result.superseded,
    }
    return WhatIfReport(doc)


def _diff(proposed: Any, actual: Any) -> Any:
    if isinstance(proposed, bool) or isinstance(actual, bool):
        return None
    if isinstance(proposed, int) and isinstance(actual, int):
        return proposed - actual
    if isinstance(proposed, str) and isinstance(actual, str):
        return str(Decimal(proposed) - Decimal(actual))
    return None


# --- rendering ---------------------------------------------------------------------------------


def timeline_chart(
    rows: Sequence[tuple[str, Sequence[tuple[int, int, str]]]],
    *,
    start_us: int,
    end_us: int,
    title: str,
    width: int = 760,
) -> str:
    """Episodes over the period, one row per quota: spans ``(start, end, run)`` drawn as bars,
    actual (grey) above proposed (blue); inline SVG, integer coordinates, no scripts."""
    from xml.sax.saxutils import escape

    bar_h, gap, label_w, pad = 9, 8, 230, 8
    row_h = bar_h * 2 + gap
    plot_w = width - label_w - pad * 2
    height = pad * 2 + 44 + row_h * max(1, len(rows)) + 16
    span = max(1, end_us - start_us)
    quoted = escape(title, {'"': "&quot;"})

    def x(t: int) -> int:
        return label_w + (min(max(t, start_us), end_us) - start_us) * plot_w // span

    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{quoted}">',
        f'<text x="{pad}" y="{pad + 14}" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{label_w}" y="{pad + 22}" width="10" height="10" fill="#9a9a9a"/>',
        f'<text x="{label_w + 14}" y="{pad + 31}" font-size="11">actual</text>',
        f'<rect x="{label_w + 70}" y="{pad + 22}" width="10" height="10" fill="#3b75af"/>',
        f'<text x="{label_w + 84}" y="{pad + 31}" font-size="11">proposed</text>',
    ]
    top = pad + 44
    bottom = top + row_h * max(1, len(rows))
    parts.append(
        f'<rect x="{label_w}" y="{top - 2}" width="{plot_w}" height="{bottom - top}" '
        'fill="none" stroke="#ccc"/>'
    )
    for i, (label, spans) in enumerate(rows):
        y = top + i * row_h
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h + 3}" font-size="12" text-anchor="end">'
            f"{escape(label[:38])}</text>"
        )
        for lo, hi, run in spans:
            yy = y + (0 if run == "actual" else bar_h)
            colour = "#9a9a9a" if run == "actual" else "#3b75af"
            x0 = x(lo)
            w = max(1, x(hi) - x0)
            parts.append(
                f'<rect x="{x0}" y="{yy}" width="{w}" height="{bar_h - 1}" fill="{colour}"/>'
            )
    for t, anchor in ((start_us, "start"), (end_us, "end")):
        parts.append(
            f'<text x="{x(t)}" y="{bottom + 12}" font-size="10" text-anchor="{anchor}">'
            f"{escape(iso(t) or '')}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def paired_bar_chart(
    rows: Sequence[tuple[str, Decimal, Decimal]],
    *,
    title: str,
    unit: str = "",
    width: int = 680,
) -> str:
    """Horizontal bars, actual (grey) above proposed (blue) for each label: inline SVG with
    deterministic text (no scripts, no fonts)."""
    from xml.sax.saxutils import escape

    bar_h, gap, label_w, pad = 12, 10, 230, 8
    row_h = bar_h * 2 + gap
    height = pad * 2 + 44 + row_h * max(1, len(rows))
    plot_w = width - label_w - 100
    top = max([max(a, p) for _, a, p in rows] + [Decimal(1)])
    quoted = escape(title, {'"': "&quot;"})
    parts = [
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{quoted}">',
        f'<text x="{pad}" y="{pad + 14}" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{label_w}" y="{pad + 22}" width="10" height="10" fill="#9a9a9a"/>',
        f'<text x="{label_w + 14}" y="{pad + 31}" font-size="11">actual</text>',
        f'<rect x="{label_w + 70}" y="{pad + 22}" width="10" height="10" fill="#3b75af"/>',
        f'<text x="{label_w + 84}" y="{pad + 31}" font-size="11">proposed</text>',
    ]
    for i, (label, a, p) in enumerate(rows):
        y = pad + 44 + i * row_h
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h + 4}" font-size="12" text-anchor="end">'
            f"{escape(label[:38])}</text>"
        )
        for j, (value, colour) in enumerate(((a, "#9a9a9a"), (p, "#3b75af"))):
            w = int(Decimal(plot_w) * value / top)
            yy = y + j * bar_h
            parts.append(
                f'<rect x="{label_w}" y="{yy}" width="{w}" height="{bar_h - 1}" fill="{colour}"/>'
            )
            parts.append(
                f'<text x="{label_w + w + 4}" y="{yy + bar_h - 2}" font-size="11">'
                f"{escape(str(value))}{escape(unit)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


class WhatIfReport(Report):
    template = "whatif.html"
    csv_columns = (
        "record",
        "run",
        "tenant_id",
        "level",
        "entity_id",
        "resource_type",
        "kind",
        "start",
        "end",
        "count",
        "seconds",
        "amount",
        "detail",
        "topic",
        "partition",
        "offset",
        "event_id",
    )

    def csv_rows(self) -> Iterator[dict[str, Any]]:
        doc = self.doc
        for run in RUNS:
            for k, v in doc["summary"][run].items():
                if isinstance(v, dict):
                    for kk, vv in v.items():
                        yield {"record": "summary", "run": run, "kind": f"{k}.{kk}", "amount": vv}
                else:
                    yield {"record": "summary", "run": run, "kind": k, "amount": v}
        for table, record in (("episodes", "episodes"), ("time_over_limit", "time_over_limit")):
            for row in doc[table]:
                for run in RUNS:
                    yield {
                        "record": record,
                        "run": run,
                        "tenant_id": row["tenant_id"],
                        "level": row["level"],
                        "entity_id": row["entity_id"],
                        "resource_type": row["resource_type"],
                        "kind": row.get("kind"),
                        "count": row[run]["count"],
                        "seconds": row[run]["seconds"],
                    }
        for row in doc["alerts"]:
            for run in RUNS:
                yield {
                    "record": "alerts",
                    "run": run,
                    "tenant_id": row["tenant_id"],
                    "level": row["level"],
                    "entity_id": row["entity_id"],
                    "resource_type": row["resource_type"],
                    "kind": f"{row['kind']}/{row['severity']}",
                    "count": row[run]["count"],
                }
        for run in RUNS:
            for v in doc["violations"][run]:
                c = v["opened_by"]
                yield {
                    "record": "violation",
                    "run": run,
                    "tenant_id": v["tenant_id"],
                    "level": v["level"],
                    "entity_id": v["entity_id"],
                    "resource_type": v["resource_type"],
                    "kind": v["kind"],
                    "start": v["opened_at"],
                    "end": v["resolved_at"],
                    "seconds": v["seconds_in_period"],
                    "amount": v["usage"],
                    "detail": f"{v['violation_id']} limit {v['limit']}",
                    **_cols(c),
                }
        for d in doc["denied_checks"]:
            for run in RUNS:
                dec = d[run]
                if dec is None:
                    continue
                yield {
                    "record": "check",
                    "run": run,
                    "tenant_id": d["tenant_id"],
                    "kind": "allowed" if dec["allowed"] else "denied",
                    "start": d["time"],
                    "amount": " ".join(f"{r}={a}" for r, a in d["resources"].items()),
                    "detail": dec["reason"],
                    **_cols(d["record"]),
                }
        for t in doc["cost"]["tenants"]:
            for run in RUNS:
                yield {
                    "record": "cost",
                    "run": run,
                    "tenant_id": t["tenant_id"],
                    "amount": t[run]["total_usd"],
                    "detail": f"usage {t['usage_usd']} + template fees "
                    f"{t[run]['template_fees_usd']} USD",
                }
        for a in doc["applied"]:
            yield {
                "record": "proposed_command",
                "run": "proposed",
                "tenant_id": a["tenant_id"],
                "kind": a["type"],
                "start": a["time"],
                "detail": f"changes[{a['index']}] ({a['why']})",
                "event_id": a["event_id"],
            }
        for sup in doc["superseded"]:
            yield {
                "record": "superseded",
                "run": "proposed",
                "tenant_id": sup["tenant_id"],
                "kind": sup["type"],
                "start": sup["time"],
                "detail": f"by {sup['by']}; actor {sup['actor']}"
                + (f"; only {' '.join(sup['resources'])}" if sup["resources"] else ""),
                **_cols(sup["cause"]),
            }
        for run in RUNS:
            for p in doc["policy_actions"][run]:
                yield {
                    "record": "policy_action",
                    "run": run,
                    "tenant_id": p["tenant_id"],
                    "level": p["level"],
                    "entity_id": p["entity_id"],
                    "resource_type": p["resource_type"],
                    "kind": p["type"],
                    "start": p["time"],
                    "detail": f"{p['actor']}: {p['summary']}"
                    + (f" ({p['outcome']})" if p.get("outcome") else ""),
                    "event_id": p["action_id"],
                }

    def charts(self) -> dict[str, str]:
        doc = self.doc
        sa, sp = doc["summary"]["actual"], doc["summary"]["proposed"]
        out = {
            "by_kind": paired_bar_chart(
                [
                    (k, Decimal(sa["opened_by_kind"][k]), Decimal(sp["opened_by_kind"].get(k, 0)))
                    for k in sa["opened_by_kind"]
                ],
                title="Violation episodes opened, by kind",
            ),
            "checks": paired_bar_chart(
                [
                    ("admission checks", Decimal(sa["checks"]), Decimal(sp["checks"])),
                    ("denied", Decimal(sa["checks_denied"]), Decimal(sp["checks_denied"])),
                    ("alerts", Decimal(sa["alerts"]), Decimal(sp["alerts"])),
                ],
                title="Admission checks denied and alerts",
            ),
        }
        timeline = self._timeline()
        if timeline:
            out["timeline"] = timeline
        hours = Decimal(3600)
        over = sorted(
            doc["time_over_limit"],
            key=lambda r: (
                -max(Decimal(r["actual"]["seconds"]), Decimal(r["proposed"]["seconds"])),
                r["tenant_id"],
                r["level"],
                r["entity_id"],
                r["resource_type"],
            ),
        )[:25]
        if over:
            out["over"] = paired_bar_chart(
                [
                    (
                        f"{r['tenant_id']} {r['level']} {r['entity_id']} {r['resource_type']}",
                        (Decimal(r["actual"]["seconds"]) / hours).quantize(_CENT),
                        (Decimal(r["proposed"]["seconds"]) / hours).quantize(_CENT),
                    )
                    for r in over
                ],
                title="Time over limit (hours), top 25",
                unit=" h",
            )
        costs = doc["cost"]["tenants"][:25]
        if costs:
            out["cost"] = paired_bar_chart(
                [
                    (
                        t["tenant_id"],
                        Decimal(t["actual"]["total_usd"]),
                        Decimal(t["proposed"]["total_usd"]),
                    )
                    for t in costs
                ],
                title="Cost in the period (USD), first 25 tenants",
                unit=" USD",
            )
        return out

    def _timeline(self) -> str | None:
        """The episodes of the 25 quotas with the most time in violation, in both runs."""
        doc = self.doc
        start, end = parse_time(doc["period"]["start"]), parse_time(doc["period"]["end"])
        per: dict[tuple[str, str, str, str], list[tuple[int, int, str]]] = {}
        for run in RUNS:
            for v in doc["violations"][run]:
                key = (v["tenant_id"], v["level"], v["entity_id"], v["resource_type"])
                lo = parse_time(v["opened_at"])
                hi = end if v["resolved_at"] is None else parse_time(v["resolved_at"])
                per.setdefault(key, []).append((lo, hi, run))
        if not per:
            return None

        def busy(k: tuple[str, str, str, str]) -> tuple[int, tuple[str, str, str, str]]:
            return (-sum(min(hi, end) - max(lo, start) for lo, hi, _r in per[k]), k)

        keys = sorted(per, key=busy)[:25]
        return timeline_chart(
            [(" ".join(k), sorted(per[k])) for k in keys],
            start_us=start,
            end_us=end,
            title="Violation episodes over the period, top 25 quotas",
        )


def _cols(c: dict[str, Any] | None) -> dict[str, Any]:
    if c is None:
        return {}
    return {
        "topic": c["topic"],
        "partition": c["partition"],
        "offset": c["offset"],
        "event_id": c["id"],
    }


# --- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(
        prog="novaquota replay",
        description="What-if replay: replay a period as it happened and with proposed quota "
        "changes and/or a policy set, and compare violations, alerts, denied admission checks, "
        "policy actions and cost (docs/replay.md, What-if).",
    )
    p.add_argument(
        "--what-if",
        required=True,
        type=Path,
        metavar="FILE",
        help="the proposal: YAML or JSON with 'changes' and/or 'policies'",
    )
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        type=time_arg,
        metavar="T1",
        help="start of the period (event time, RFC 3339); the proposal holds from here",
    )
    p.add_argument(
        "--until",
        dest="end",
        required=True,
        type=time_arg,
        metavar="T2",
        help="end of the period (event time, RFC 3339, excluded)",
    )
    p.add_argument("--tenant", metavar="ID", help="only this tenant")
    p.add_argument(
        "--as-of",
        type=time_arg,
        metavar="T",
        help="read the log as it stood at T (RFC 3339; default: all of it, now)",
    )
    add_report_options(p)
    return p


def main(argv: Sequence[str], settings: Settings) -> int:
    prog = "novaquota replay"

    def body(args: argparse.Namespace) -> int:
        if args.end <= args.start:
            raise ArgumentError(f"--until {iso(args.end)} must be after --from {iso(args.start)}")
        psettings = ProjectionSettings()
        try:
            catalogue = load_catalogue(psettings.pricing_file)
            limits = DecodeLimits(
                max_amount=settings.max_amount,
                max_clock_skew_seconds=settings.max_clock_skew_seconds,
            )
            proposal = load_proposal(args.what_if, limits=limits, tenant=args.tenant)
            with log_progress(args, "reading the log") as bar:
                result = asyncio.run(
                    what_if(
                        settings,
                        proposal,
                        args.start,
                        args.end,
                        tenant=args.tenant,
                        as_of_us=args.as_of,
                        fold_params=FoldParams(
                            gauge_ttl_us=int(psettings.network_sample_ttl_seconds * 1_000_000),
                            lateness_us=int(psettings.lateness_seconds * 1_000_000),
                        ),
                        progress=bar.update,
                    )
                )
        except (ProposalError, PricingError) as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 1
        summary = {"from": iso(args.start), "until": iso(args.end)}
        summary.update(read_summary(result.actual.ranges))
        emit_report(args, build_report(result, catalogue).render(args.format), summary)
        return 0

    return run_cli(list(argv), build_parser(), body)


def _template_name(body: dict[str, Any]) -> str:
    """The template a ``template.applied`` names (a narrowed copy by its original's name)."""
    return str(body["template"]).split(TEMPLATE_COPY, 1)[0]
