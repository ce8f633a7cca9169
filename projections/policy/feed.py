"""From the log to the policy engine: decoded messages in, ``PolicyAction``s out (pure, no I/O).

``PolicyFeed`` keeps what the engine's observations are made of:

- usage per quota key, from the allocation events (per instance, the newest event decides what
  it holds, as in the projections' folds; contract section 3). Gauges (``network.sampled``),
  ``api.requests`` and inventory snapshots are not followed: utilization conditions apply to
  held resources;
- the quotas in force and each entity's tier, from the command topic (``quota.set``,
  ``quota.deleted``, ``template.applied`` expanded with built-in and ``template.defined``
  templates, ``tenant.deleted``);
- the policy set, from ``policy.set`` / ``policy.deleted`` on the command topic;
- violation episodes (the violations topic) and the projections' forecasts (``forecast`` alerts
  on the alerts topic, whose message names the predicted exhaustion time).

The worker (``projections.policy.worker``) and a what-if replay feed it the same way; the state
round-trips through JSON (``to_json``/``from_json``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from novaquota.projections.policy.engine import (
    QUOTA_FIELDS,
    Episode,
    Key,
    Observation,
    PolicyAction,
    PolicyEngine,
    quota_fields,
)
from novaquota.schemas.allocation import (
    ALLOCATION_TYPES,
    RELEASE_TYPES,
    instance_key,
    is_release,
    resources_of,
)
from novaquota.schemas.amounts import from_micros
from novaquota.schemas.codec import Decoded
from novaquota.schemas.commands import (
    PolicyDeleted,
    PolicySet,
    QuotaDeleted,
    QuotaSet,
    TemplateApplied,
    TemplateDefined,
    TemplateSpec,
    TenantDeleted,
)
from novaquota.schemas.common import parse_time_us
from novaquota.schemas.templates import BUILTIN_TEMPLATES, expand_template

__all__ = ["PolicyFeed"]

_AT: Final = re.compile(r" at (\d{4}-\d\d-\d\dT[0-9:.]+Z)")
_PARENT: Final = {"project": "tenant", "user": "project"}
Holding = tuple[tuple[int, int, str, str], str | None, str | None, dict[str, int]]


def _entities(tenant: str, project: str | None, user: str | None) -> list[tuple[str, str, str]]:
    out = [(tenant, "tenant", tenant)]
    if project:
        out.append((tenant, "project", project))
    if user:
        out.append((tenant, "user", user))
    return out


class PolicyFeed:
    """Turns decoded messages into engine calls (module docstring)."""

    def __init__(self, engine: PolicyEngine | None = None) -> None:
        self.engine = engine if engine is not None else PolicyEngine()
        #: tenant -> instance key -> (order, project, user, resources in micro-units)
        self.holdings: dict[str, dict[str, Holding]] = {}
        #: quota key -> usage in micro-units
        self.usage: dict[Key, int] = {}
        #: quota key -> the quota's fields (as in ``quota.set``) while one is in force
        self.quotas: dict[Key, dict[str, Any]] = {}
        #: (tenant, level, entity) -> the template last applied
        self.tiers: dict[tuple[str, str, str], str] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        #: quota key -> (forecast made at, predicted exhaustion), event time
        self.forecasts: dict[Key, tuple[int, int]] = {}
        self.watermark = 0

    # -- inputs ------------------------------------------------------------------------------

    def event(self, d: Decoded) -> list[PolicyAction]:
        """One decoded input message (resource event or command) in log order."""
        return self._settle(self._event(d))

    def _event(self, d: Decoded) -> list[PolicyAction]:
        t = d.time_us
        data: Any = d.data
        if d.kind == "resource":
            self.watermark = max(self.watermark, t)
            if d.type in ALLOCATION_TYPES or d.type in RELEASE_TYPES:
                return self._allocation(d)
            return []
        if isinstance(data, PolicySet):
            return self.engine.set_policy(data.policy(), t)
        if isinstance(data, PolicyDeleted):
            self.engine.delete_policy(data.name, t)
            return []
        if isinstance(data, QuotaSet):
            return self._quota(data, t)
        if isinstance(data, QuotaDeleted):
            key = (data.tenant_id, data.level, data.entity_id, data.resource_type)
            if self.quotas.pop(key, None) is None:
                return []
            return self._observe_entity(key[:3], t, only=key)
        if isinstance(data, TemplateDefined):
            self.templates[data.name] = data.model_dump(
                include={"name", "description", "quotas", "monthly_cost"}
            )
            return []
        if isinstance(data, TemplateApplied):
            return self._template(data, t)
        if isinstance(data, TenantDeleted):
            return self._tenant_deleted(data.tenant_id, t)
        return []

    def output(self, type_: str, data: Mapping[str, Any]) -> list[PolicyAction]:
        """One record of the violations or alerts topic (as a dict of its ``data``)."""
        return self._settle(self._output(type_, data))

    def _output(self, type_: str, data: Mapping[str, Any]) -> list[PolicyAction]:
        try:
            key: Key = (
                str(data["tenant_id"]),
                str(data["level"]),
                str(data["entity_id"]),
                str(data["resource_type"]),
            )
            if type_ == "quota.violation":
                opened = parse_time_us(str(data["detected_at"]))
                return self.engine.violation(
                    Episode(key, str(data["violation_id"]), str(data["kind"]), opened)
                )
            if type_ == "quota.alert" and data.get("kind") == "forecast":
                made = parse_time_us(str(data["detected_at"]))
                m = _AT.search(str(data.get("message") or ""))
                if m is None:
                    return []
                self.forecasts[key] = (made, parse_time_us(m.group(1)))
                return self._observe(key, made)
        except (KeyError, ValueError, TypeError):
            return []
        return []

    def advance(self, time_us: int | None = None) -> list[PolicyAction]:
        """Event time passed (default: the newest resource event's time)."""
        return self._settle(self.engine.advance(self.watermark if time_us is None else time_us))

    def _settle(self, actions: list[PolicyAction]) -> list[PolicyAction]:
        """Take the policies' own commands as applied at once (the quota they set is observed
        at the action's time), so the rules that follow see it without waiting for the command
        to come back through the command topic; when it does, it changes nothing. Bounded: a
        chain of actions that keeps causing actions stops after a few rounds."""
        out = list(actions)
        pending = actions
        for _round in range(8):
            more: list[PolicyAction] = []
            for a in pending:
                more.extend(self._apply_own(a))
            if not more:
                break
            out.extend(more)
            pending = more
        return out

    def _apply_own(self, a: PolicyAction) -> list[PolicyAction]:
        cmd = a.command()
        if cmd is None:
            return []
        type_, data = cmd
        try:
            if type_ == "quota.set":
                return self._quota(QuotaSet.model_validate(data), a.time_us)
            if type_ == "template.applied":
                return self._template(TemplateApplied.model_validate(data), a.time_us)
        except ValueError:  # the enforcement worker refuses it too (dead-lettered)
            return []
        return []

    # -- usage -------------------------------------------------------------------------------

    def _allocation(self, d: Decoded) -> list[PolicyAction]:
        data: Any = d.data
        tenant = data.tenant_id
        release = is_release(d)
        order = (d.time_us, 1 if release else 0, d.source, d.id)
        new: Holding = (
            order,
            data.project_id,
            data.user_id,
            {} if release else {rt: a for rt, a in resources_of(d).items() if a},
        )
        per = self.holdings.setdefault(tenant, {})
        ikey = instance_key(d)
        old = per.get(ikey)
        if old is not None and new[0] <= old[0]:
            return []
        per[ikey] = new  # a release is kept too: a late create must not bring it back
        changed: set[Key] = set()
        if old is not None:
            changed |= self._add(tenant, old[1], old[2], old[3], -1)
        changed |= self._add(tenant, new[1], new[2], new[3], 1)
        out: list[PolicyAction] = []
        for key in sorted(changed):
            if key in self.quotas or key in self.engine.keys:
                out.extend(self._observe(key, d.time_us))
        return out

    def _add(
        self, tenant: str, project: str | None, user: str | None, res: dict[str, int], sign: int
    ) -> set[Key]:
        changed: set[Key] = set()
        for ent in _entities(tenant, project, user):
            for rt, amount in res.items():
                key = (*ent, rt)
                self.usage[key] = self.usage.get(key, 0) + sign * amount
                changed.add(key)
        return changed

    # -- quotas ------------------------------------------------------------------------------

    def _quota(self, data: QuotaSet, t: int, tier: str | None = None) -> list[PolicyAction]:
        key = (data.tenant_id, data.level, data.entity_id, data.resource_type)
        self.quotas[key] = data.model_dump(include=set(QUOTA_FIELDS))
        return self._observe_entity(key[:3], t, only=key)

    def _template(self, data: TemplateApplied, t: int) -> list[PolicyAction]:
        custom = self.templates.get(data.template)
        spec: TemplateSpec | None = (
            TemplateSpec.model_validate(custom)
            if custom is not None
            else BUILTIN_TEMPLATES.get(data.template)
        )
        if spec is None:
            return []  # the enforcement worker refuses it too
        entity = (data.tenant_id, data.level, data.entity_id)
        self.tiers[entity] = data.template
        for qs in expand_template(spec, data.level, data.entity_id, data.tenant_id, data.actor):
            self.quotas[(*entity, qs.resource_type)] = qs.model_dump(include=set(QUOTA_FIELDS))
        return self._observe_entity(entity, t)

    def _tenant_deleted(self, tenant: str, t: int) -> list[PolicyAction]:
        keys = [k for k in self.quotas if k[0] == tenant]
        for k in keys:
            del self.quotas[k]
        self.holdings.pop(tenant, None)
        for k in [k for k in self.usage if k[0] == tenant]:
            del self.usage[k]
        for e in [e for e in self.tiers if e[0] == tenant]:
            del self.tiers[e]
        out: list[PolicyAction] = []
        for k in sorted(k for k in self.engine.keys if k[0] == tenant):
            out.extend(self._observe(k, t))
        return out

    def _observe_entity(
        self, entity: tuple[str, str, str], t: int, only: Key | None = None
    ) -> list[PolicyAction]:
        """Observe the entity's quotas (or just ``only``) and its children's, whose parent
        limit may have changed."""
        keys = {only} if only is not None else {k for k in self.quotas if k[:3] == entity}
        keys |= {k for k in self.engine.keys if k[:3] == entity and (only is None or k == only)}
        child = {"tenant": "project", "project": "user"}.get(entity[1])
        if child is not None:
            rts = {k[3] for k in keys}
            keys |= {k for k in self.quotas if k[0] == entity[0] and k[1] == child and k[3] in rts}
        out: list[PolicyAction] = []
        for key in sorted(keys):
            out.extend(self._observe(key, t))
        return out

    def _parent_limit(self, key: Key) -> Decimal | None:
        tenant, level, _entity, rt = key
        if level not in _PARENT:
            return None
        # a user's quota does not name its project: above the project level, the tenant's
        # limit is the parent that applies
        q = self.quotas.get((tenant, "tenant", tenant, rt))
        return None if q is None else Decimal(str(q["limit"]))

    def _observe(self, key: Key, t: int) -> list[PolicyAction]:
        q = self.quotas.get(key)
        tte: float | None = None
        fc = self.forecasts.get(key)
        if fc is not None:
            tte = (fc[1] - t) / 1_000_000
        obs = Observation(
            key=key,
            time_us=t,
            usage=from_micros(self.usage.get(key, 0)),
            limit=None if q is None else Decimal(str(q["limit"])),
            parent_limit=self._parent_limit(key),
            tier=self.tiers.get(key[:3]),
            status="active" if q is None else str(q.get("status") or "active"),
            quota=q,
            time_to_exhaustion_seconds=tte,
        )
        return self.engine.observe(obs)

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine.to_json(),
            "holdings": {
                t: {k: [list(h[0]), h[1], h[2], h[3]] for k, h in sorted(per.items())}
                for t, per in sorted(self.holdings.items())
            },
            "usage": [[list(k), v] for k, v in sorted(self.usage.items())],
            "quotas": [[list(k), _plain(q)] for k, q in sorted(self.quotas.items())],
            "tiers": [[list(e), v] for e, v in sorted(self.tiers.items())],
            "templates": _plain(self.templates),
            "forecasts": [[list(k), list(v)] for k, v in sorted(self.forecasts.items())],
            "watermark": self.watermark,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PolicyFeed:
        feed = cls(PolicyEngine.from_json(raw["engine"]))
        feed.holdings = {
            t: {
                k: ((int(h[0][0]), int(h[0][1]), str(h[0][2]), str(h[0][3])), h[1], h[2], h[3])
                for k, h in per.items()
            }
            for t, per in raw["holdings"].items()
        }
        feed.usage = {_key(k): int(v) for k, v in raw["usage"]}
        feed.quotas = {_key(k): quota_fields(q) for k, q in raw["quotas"]}
        feed.tiers = {(str(e[0]), str(e[1]), str(e[2])): str(v) for e, v in raw["tiers"]}
        feed.templates = {n: _amounts(t) for n, t in raw["templates"].items()}
        feed.forecasts = {_key(k): (int(v[0]), int(v[1])) for k, v in raw["forecasts"]}
        feed.watermark = int(raw["watermark"])
        return feed


def _key(raw: Any) -> Key:
    t, lvl, e, r = (str(x) for x in raw)
    return (t, lvl, e, r)


_AMOUNT_KEYS: Final = frozenset({"limit", "burst_limit", "monthly_cost"})


def _amounts(value: Any, key: str = "") -> Any:
    """Amounts back to exact decimals after a JSON trip (the models take numbers, not text)."""
    if isinstance(value, Mapping):
        return {str(k): _amounts(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_amounts(v) for v in value]
    if key in _AMOUNT_KEYS and isinstance(value, str):
        return Decimal(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    return value
