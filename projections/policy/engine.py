"""The policy engine: a pure, deterministic evaluator of policy rules over event time.

No Kafka, no clock, no I/O. The caller feeds it, in log order, what it knows about each quota
(one *key* = ``(tenant_id, level, entity_id, resource_type)``):

- ``observe(Observation)``: the quota's usage, limit, parent's limit, tier, status and forecast
  at an event time (whenever one of them changed);
- ``violation(Episode)``: a violation episode opened at an event time;
- ``advance(time_us)``: event time passed without news (durations expire, idle quotas stay idle);
- ``set_policy(Policy, time_us)`` / ``delete_policy(name, time_us)``: the policy set changed.

Each call returns the ``PolicyAction``s that became due, in a deterministic order. An action is
not applied here: the caller publishes ``action.command()`` (a ``quota.set`` or
``template.applied`` with ``actor: policy/<name>@<version>`` and a ``cause``) or
``action.alert()`` (a ``quota.alert`` of kind ``policy``), and feeds the quota that results back
in as a later observation.

Determinism. Conditions only change value at *change points*: observation times, and times
derived from the data (``since + for``, the end of a cooldown, a violation leaving its window,
a time-of-day boundary, the forecast's exhaustion minus the threshold, the time a policy was
set). The engine evaluates exactly at those points, in time order per key, so the actions and
their times depend only on each key's inputs, not on when ``advance`` happens to be called.
Every action's id is ``uuid5(policy, version, rule, action index, key, due time)``: a replay
of the same log gives the same ids, and a consumer (the enforcement worker, an alert receiver)
recognises a repeat.

Rule life cycle: a rule is *armed*; when its condition is true at a change point and its
cooldown since the last firing has passed, it fires (its actions are produced) and disarms. It
re-arms once its condition is false again, with every utilization threshold moved by
``hysteresis.points`` towards clearing, for at least ``hysteresis.for``.

Interface (stable; extended, never renamed): ``PolicyEngine``, ``Observation``, ``Episode``,
``PolicyAction``, ``Key``, ``action_id``, ``POLICY_SOURCE``, ``actor_of``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Final

from novaquota.schemas.amounts import RESOURCE_DECIMALS
from novaquota.schemas.common import format_time_us
from novaquota.schemas.policies import (
    AdjustLimit,
    AdjustLimitSpec,
    AlertAction,
    AllOf,
    AnyOf,
    Condition,
    Policy,
    Resume,
    Rule,
    Suspend,
    SwitchTemplate,
    TierIs,
    TimeOfDay,
    TimeToExhaustion,
    Utilization,
    Violations,
)

__all__ = [
    "NAMESPACE",
    "POLICY_SOURCE",
    "QUOTA_FIELDS",
    "Episode",
    "Key",
    "Observation",
    "PolicyAction",
    "PolicyEngine",
    "action_id",
    "actor_of",
    "quota_fields",
]

Key = tuple[str, str, str, str]
"""(tenant_id, level, entity_id, resource_type)."""

#: uuid5 namespace of every action id
NAMESPACE: Final = uuid.UUID("3c6f0d9e-57a1-4b8e-9d2f-6a4e1b7c8f20")
#: CloudEvents ``source`` of the commands and alerts the policy engine's actions become
POLICY_SOURCE: Final = "novaquota/policy"
#: The fields of a quota that a ``quota.set`` action carries over from the quota in force
QUOTA_FIELDS: Final = (
    "resource_type",
    "limit",
    "limit_type",
    "burst_limit",
    "burst_seconds",
    "grace_seconds",
    "window",
    "status",
    "enforcement_action",
)
_US: Final = 1_000_000
_DAY_US: Final = 86_400 * _US
_MIN_US: Final = 60 * _US
_HUNDRED: Final = Decimal(100)
#: violation episodes older than this are forgotten (no ``within`` may usefully exceed it)
EPISODE_RETENTION_US: Final = 90 * _DAY_US
#: actions remembered per policy for ``describe`` (the newest)
RECENT_ACTIONS: Final = 200


def action_id(
    policy: str, version: int, rule: str, index: int, key: Key | tuple[str, ...], time_us: int
) -> str:
    """The deterministic id of one action (also its command's or alert's CloudEvent id)."""
    parts = (policy, version, rule, index, *key, time_us)
    return str(uuid.uuid5(NAMESPACE, "\x1f".join(str(p) for p in parts)))


def actor_of(policy: Policy) -> str:
    """``policy/<name>@<version>``: the actor of every command a policy issues."""
    return f"policy/{policy.ref}"


def quota_fields(quota: Mapping[str, Any]) -> dict[str, Any]:
    """The ``QUOTA_FIELDS`` of a quota, amounts as exact decimals (also after a JSON trip)."""
    out = {k: v for k, v in quota.items() if k in QUOTA_FIELDS}
    for k in ("limit", "burst_limit"):
        if out.get(k) is not None:
            out[k] = Decimal(str(out[k]))
    return out


def _iso(time_us: int) -> str:
    return format_time_us(time_us)


def _num(d: Decimal | None) -> str | None:
    """An exact decimal as text without exponent (figures are JSON-ready)."""
    return None if d is None else format(d.normalize(), "f")


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """What is known about one quota at ``time_us`` (event time, microseconds).

    ``usage``/``limit`` are exact amounts (``limit`` None: no quota in force); ``quota`` the
    quota's fields (``QUOTA_FIELDS``, as in ``quota.set``) that an adjustment or a
    suspension carries over; ``time_to_exhaustion_seconds`` the forecast's, measured from
    ``time_us`` (None: no forecast, or none that reaches the limit).
    """

    key: Key
    time_us: int
    usage: Decimal
    limit: Decimal | None
    parent_limit: Decimal | None = None
    tier: str | None = None
    status: str = "active"
    quota: Mapping[str, Any] | None = None
    time_to_exhaustion_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Episode:
    """A violation episode of ``key`` (from the violations topic) opened at ``opened_us``."""

    key: Key
    violation_id: str
    kind: str
    opened_us: int


@dataclass(frozen=True, slots=True)
class PolicyAction:
    """One action a rule took at ``time_us`` (the event time it became due)."""

    action_id: str
    kind: str
    """``adjust_limit``, ``switch_template``, ``suspend``, ``resume`` or ``alert``."""
    policy: str
    version: int
    rule: str
    key: Key
    time_us: int
    figures: Mapping[str, Any]
    """The figures that triggered it (JSON-ready: numbers as text, times as RFC 3339)."""
    summary: str
    limit: Decimal | None = None
    """The new limit (``adjust_limit``)."""
    previous_limit: Decimal | None = None
    template: str | None = None
    status: str | None = None
    severity: str | None = None
    message: str | None = None
    quota: Mapping[str, Any] | None = None

    @property
    def actor(self) -> str:
        return f"policy/{self.policy}@{self.version}"

    @property
    def tenant_id(self) -> str:
        return self.key[0]

    def cause(self) -> dict[str, Any]:
        """The ``cause`` a command of this action carries (and its audit record shows)."""
        return {
            "policy": self.policy,
            "version": self.version,
            "rule": self.rule,
            "action": self.kind,
            "action_id": self.action_id,
            "figures": dict(self.figures),
            "summary": self.summary,
        }

    def command(self) -> tuple[str, dict[str, Any]] | None:
        """(CloudEvent type, data) of the command this action becomes; None for alerts."""
        tenant, level, entity, resource = self.key
        scope = {"tenant_id": tenant, "level": level, "entity_id": entity}
        base = {"actor": self.actor, "cause": self.cause()}
        if self.kind == "switch_template":
            return "template.applied", {**scope, "template": self.template, **base}
        if self.kind not in ("adjust_limit", "suspend", "resume"):
            return None
        quota = quota_fields(self.quota or {})
        quota["resource_type"] = resource
        if self.kind == "adjust_limit":
            assert self.limit is not None
            quota["limit"] = self.limit
            burst = quota.get("burst_limit")
            if burst is not None and burst < self.limit:
                quota["burst_limit"] = self.limit
        else:
            quota["status"] = self.status
        return "quota.set", {**scope, **quota, **base}

    def alert(self) -> dict[str, Any] | None:
        """``data`` of the ``quota.alert`` (kind ``policy``) of an alert action, else None."""
        if self.kind != "alert":
            return None
        tenant, level, entity, resource = self.key
        util = self.figures.get("utilization")
        return {
            "alert_id": self.action_id,
            "tenant_id": tenant,
            "level": level,
            "entity_id": entity,
            "resource_type": resource,
            "kind": "policy",
            "threshold": None,
            "utilization": Decimal(util) if util is not None else None,
            "severity": self.severity,
            "message": self.message or self.summary,
            "detected_at": _iso(self.time_us),
            "cause_event_id": None,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (views, what-if reports)."""
        return {
            "action_id": self.action_id,
            "kind": self.kind,
            "policy": self.policy,
            "version": self.version,
            "rule": self.rule,
            "tenant_id": self.key[0],
            "level": self.key[1],
            "entity_id": self.key[2],
            "resource_type": self.key[3],
            "time": _iso(self.time_us),
            "figures": dict(self.figures),
            "summary": self.summary,
            **({"limit": _num(self.limit)} if self.limit is not None else {}),
            **(
                {"previous_limit": _num(self.previous_limit)}
                if self.previous_limit is not None
                else {}
            ),
            **({"template": self.template} if self.template else {}),
            **({"status": self.status} if self.status else {}),
            **({"severity": self.severity} if self.severity else {}),
            **({"message": self.message} if self.message else {}),
        }


# --- state -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _KeyState:
    clock: int = 0
    usage: Decimal = Decimal(0)
    limit: Decimal | None = None
    parent_limit: Decimal | None = None
    tier: str | None = None
    status: str = "active"
    quota: dict[str, Any] | None = None
    exhaustion_us: int | None = None
    tte_seconds: float | None = None
    episodes: list[tuple[int, str, str]] = field(default_factory=list)  # (opened, kind, id)

    def utilization(self) -> Decimal | None:
        if self.limit is None or self.limit == 0:
            return None
        return self.usage * _HUNDRED / self.limit

    def to_json(self) -> list[Any]:
        return [
            self.clock,
            str(self.usage),
            None if self.limit is None else str(self.limit),
            None if self.parent_limit is None else str(self.parent_limit),
            self.tier,
            self.status,
            _jsonable(self.quota),
            self.exhaustion_us,
            self.tte_seconds,
            [list(e) for e in self.episodes],
        ]

    @classmethod
    def from_json(cls, raw: list[Any]) -> _KeyState:
        return cls(
            int(raw[0]),
            Decimal(raw[1]),
            None if raw[2] is None else Decimal(raw[2]),
            None if raw[3] is None else Decimal(raw[3]),
            raw[4],
            raw[5],
            None if raw[6] is None else quota_fields(raw[6]),
            raw[7],
            raw[8],
            [(int(e[0]), str(e[1]), str(e[2])) for e in raw[9]],
        )


@dataclass(slots=True)
class _RuleState:
    armed: bool = True
    last_fired: int | None = None
    cleared_since: int | None = None
    #: leaf path -> event time its raw predicate became (and stayed) true
    since: dict[str, int] = field(default_factory=dict)
    fired: int = 0

    def to_json(self) -> list[Any]:
        return [self.armed, self.last_fired, self.cleared_since, dict(self.since), self.fired]

    @classmethod
    def from_json(cls, raw: list[Any]) -> _RuleState:
        return cls(
            bool(raw[0]), raw[1], raw[2], {str(k): int(v) for k, v in raw[3].items()}, raw[4]
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def _leaves(cond: Condition, path: str = "0") -> Iterator[tuple[str, Condition]]:
    if isinstance(cond, AllOf):
        for i, c in enumerate(cond.all):
            yield from _leaves(c, f"{path}.{i}")
    elif isinstance(cond, AnyOf):
        for i, c in enumerate(cond.any):
            yield from _leaves(c, f"{path}.{i}")
    else:
        yield path, cond


def _weekday(t: int) -> str:
    return ("thu", "fri", "sat", "sun", "mon", "tue", "wed")[(t // _DAY_US) % 7]


# --- the engine ------------------------------------------------------------------------------


class PolicyEngine:
    """Evaluates a set of policies over the quotas it is told about (module docstring)."""

    def __init__(self, policies: Iterable[Policy] = ()) -> None:
        self.policies: dict[str, Policy] = {}
        #: name -> [(version, event time set)] (the newest last; deletions as version 0)
        self.versions: dict[str, list[tuple[int, int]]] = {}
        self.keys: dict[Key, _KeyState] = {}
        self.rules: dict[tuple[str, str, Key], _RuleState] = {}
        self.recent: dict[str, list[PolicyAction]] = {}
        self.watermark = 0
        for p in policies:
            self.set_policy(p, 0)

    # -- the policy set ----------------------------------------------------------------------

    def set_policy(self, policy: Policy, time_us: int = 0) -> list[PolicyAction]:
        """Add a policy or replace its version (a new version starts its rules afresh).

        The quotas already known are evaluated against it at once, each at its own event time
        (what the log had said of it when the policy arrived): a policy acts from where it
        stands in the log, so loading one now does not jump quotas whose events are older to
        the wall clock. ``time_us`` (the command's time) is recorded in ``versions``. A lower
        version than the one in force is ignored (publish a higher one to roll back).
        """
        old = self.policies.get(policy.name)
        if old is not None and (old == policy or policy.version < old.version):
            return []  # the same again, or an older version read after a newer one
        self._drop_rules(policy.name)
        self.policies[policy.name] = policy
        self.versions.setdefault(policy.name, []).append((policy.version, time_us))
        out: list[PolicyAction] = []
        for key in sorted(self.keys):
            out.extend(self._evaluate(key, self.keys[key].clock))
        return out

    def delete_policy(self, name: str, time_us: int = 0) -> bool:
        """Remove a policy (its rules' state goes with it); False if there was none."""
        if name not in self.policies:
            return False
        del self.policies[name]
        self._drop_rules(name)
        self.versions.setdefault(name, []).append((0, time_us))
        return True

    def _drop_rules(self, name: str) -> None:
        for k in [k for k in self.rules if k[0] == name]:
            del self.rules[k]

    # -- inputs ------------------------------------------------------------------------------

    def observe(self, obs: Observation) -> list[PolicyAction]:
        """A quota's figures at ``obs.time_us``; returns the actions due up to then."""
        ks = self.keys.get(obs.key)
        if ks is None:
            ks = self.keys[obs.key] = _KeyState(clock=obs.time_us)
        out = self._run(obs.key, obs.time_us)
        t = max(ks.clock, obs.time_us)
        ks.usage = obs.usage
        ks.limit = obs.limit
        ks.parent_limit = obs.parent_limit
        ks.tier = obs.tier
        ks.status = obs.status
        ks.quota = quota_fields(obs.quota) if obs.quota is not None else None
        ks.tte_seconds = obs.time_to_exhaustion_seconds
        ks.exhaustion_us = (
            None
            if obs.time_to_exhaustion_seconds is None
            else obs.time_us + int(obs.time_to_exhaustion_seconds * _US)
        )
        ks.clock = t
        self.watermark = max(self.watermark, t)
        out.extend(self._evaluate(obs.key, t))
        return out

    def violation(self, ep: Episode) -> list[PolicyAction]:
        """A violation episode opened; returns the actions due up to its time. An episode read
        after the quota's event time passed its opening counts from that event time."""
        ks = self.keys.get(ep.key)
        if ks is None:
            ks = self.keys[ep.key] = _KeyState(clock=ep.opened_us)
        out = self._run(ep.key, ep.opened_us)
        t = max(ks.clock, ep.opened_us)
        if all(e[2] != ep.violation_id for e in ks.episodes):
            # An episode counts from when it is known: its opening time, or the quota's event
            # time if it arrives later than that (violations are derived from the same events
            # and may be read after them); the window is measured in those times.
            ks.episodes.append((t, ep.kind, ep.violation_id))
            ks.episodes.sort()
        ks.episodes = [e for e in ks.episodes if e[0] > t - EPISODE_RETENTION_US]
        ks.clock = t
        self.watermark = max(self.watermark, t)
        out.extend(self._evaluate(ep.key, t))
        return out

    def advance(self, time_us: int) -> list[PolicyAction]:
        """Event time reached ``time_us`` for every known quota: the actions due until then."""
        out: list[PolicyAction] = []
        for key in sorted(self.keys):
            out.extend(self._run(key, time_us))
            ks = self.keys[key]
            ks.clock = max(ks.clock, time_us)
        self.watermark = max(self.watermark, time_us)
        return out

    # -- evaluation --------------------------------------------------------------------------

    def _applicable(self, key: Key, ks: _KeyState) -> Iterator[Policy]:
        for name in sorted(self.policies):
            p = self.policies[name]
            if p.enabled and p.scope.matches(*key, ks.tier):
                yield p

    def _run(self, key: Key, until: int) -> list[PolicyAction]:
        """Evaluate ``key`` at each change point in (its clock, until]."""
        ks = self.keys.get(key)
        if ks is None:
            return []
        out: list[PolicyAction] = []
        while True:
            nxt = self._next_change(key, ks, ks.clock)
            if nxt is None or nxt > until:
                break
            ks.clock = nxt
            out.extend(self._evaluate(key, nxt))
        return out

    def _next_change(self, key: Key, ks: _KeyState, t: int) -> int | None:
        best: int | None = None
        for p in self._applicable(key, ks):
            for rule in p.rules:
                rs = self.rules.get((p.name, rule.name, key))
                for c in self._change_points(rule, rs, ks, t):
                    if c > t and (best is None or c < best):
                        best = c
        return best

    def _change_points(
        self, rule: Rule, rs: _RuleState | None, ks: _KeyState, t: int
    ) -> Iterator[int]:
        if rs is not None:
            if rs.last_fired is not None:
                yield rs.last_fired + rule.cooldown_seconds * _US
            if rs.cleared_since is not None:
                yield rs.cleared_since + rule.hysteresis.for_ * _US
        for path, leaf in _leaves(rule.when):
            if isinstance(leaf, Utilization):
                if rs is not None and path in rs.since:
                    yield rs.since[path] + leaf.utilization.for_ * _US
            elif isinstance(leaf, TimeToExhaustion):
                if ks.exhaustion_us is not None:
                    yield ks.exhaustion_us - leaf.time_to_exhaustion.below * _US + 1
            elif isinstance(leaf, Violations):
                spec = leaf.violations
                for opened, _kind, _vid in ks.episodes:
                    yield opened + spec.within * _US
            elif isinstance(leaf, TimeOfDay):
                spec_t = leaf.time_of_day
                day = t // _DAY_US * _DAY_US
                bounds = {spec_t.from_minute, spec_t.to_minute}
                if spec_t.weekdays is not None:
                    bounds.add(0)
                for b in bounds:
                    at = day + (b % 1440) * _MIN_US
                    yield at if at > t else at + _DAY_US

    def _raw(self, leaf: Condition, ks: _KeyState, t: int, points: Decimal | None) -> bool:
        """A leaf's truth at ``t`` without its duration; ``points``: the re-arm test (the
        utilization threshold moved by that many points towards clearing)."""
        if isinstance(leaf, Utilization):
            u = ks.utilization()
            if u is None:
                return False
            spec = leaf.utilization
            shift = points or Decimal(0)
            if spec.above is not None:
                return u >= spec.above - shift
            assert spec.below is not None
            return u <= spec.below + shift
        if isinstance(leaf, TimeToExhaustion):
            return (
                ks.exhaustion_us is not None
                and ks.exhaustion_us - t < leaf.time_to_exhaustion.below * _US
            )
        if isinstance(leaf, Violations):
            return self._violation_count(leaf, ks, t) >= leaf.violations.at_least
        if isinstance(leaf, TierIs):
            return ks.tier is not None and ks.tier in leaf.tier.in_
        if isinstance(leaf, TimeOfDay):
            spec_t = leaf.time_of_day
            if spec_t.weekdays is not None and _weekday(t) not in spec_t.weekdays:
                return False
            m = (t % _DAY_US) // _MIN_US
            a, b = spec_t.from_minute, spec_t.to_minute
            if a == b:
                return True
            return a <= m < b if a < b else (m >= a or m < b)
        raise TypeError(f"not a leaf condition: {type(leaf).__name__}")  # pragma: no cover

    @staticmethod
    def _violation_count(leaf: Violations, ks: _KeyState, t: int) -> int:
        spec = leaf.violations
        lo = t - spec.within * _US
        return sum(
            1
            for opened, kind, _vid in ks.episodes
            if lo < opened <= t and (spec.kinds is None or kind in spec.kinds)
        )

    def _value(
        self, cond: Condition, ks: _KeyState, rs: _RuleState, t: int, path: str = "0"
    ) -> bool:
        if isinstance(cond, AllOf):
            return all(self._value(c, ks, rs, t, f"{path}.{i}") for i, c in enumerate(cond.all))
        if isinstance(cond, AnyOf):
            return any(self._value(c, ks, rs, t, f"{path}.{i}") for i, c in enumerate(cond.any))
        if isinstance(cond, Utilization):
            since = rs.since.get(path)
            return since is not None and t - since >= cond.utilization.for_ * _US
        return self._raw(cond, ks, t, None)

    def _relaxed(self, cond: Condition, ks: _KeyState, t: int, points: Decimal) -> bool:
        if isinstance(cond, AllOf):
            return all(self._relaxed(c, ks, t, points) for c in cond.all)
        if isinstance(cond, AnyOf):
            return any(self._relaxed(c, ks, t, points) for c in cond.any)
        return self._raw(cond, ks, t, points)

    def _evaluate(self, key: Key, t: int) -> list[PolicyAction]:
        ks = self.keys[key]
        out: list[PolicyAction] = []
        for p in self._applicable(key, ks):
            for rule in p.rules:
                rkey = (p.name, rule.name, key)
                rs = self.rules.get(rkey)
                if rs is None:
                    rs = self.rules[rkey] = _RuleState()
                out.extend(self._evaluate_rule(p, rule, key, ks, rs, t))
        return out

    def _evaluate_rule(
        self, p: Policy, rule: Rule, key: Key, ks: _KeyState, rs: _RuleState, t: int
    ) -> list[PolicyAction]:
        for path, leaf in _leaves(rule.when):
            if isinstance(leaf, Utilization):
                if self._raw(leaf, ks, t, None):
                    rs.since.setdefault(path, t)
                else:
                    rs.since.pop(path, None)
        if not rs.armed:
            if self._relaxed(rule.when, ks, t, rule.hysteresis.points):
                rs.cleared_since = None
                return []
            if rs.cleared_since is None:
                rs.cleared_since = t
            if t - rs.cleared_since < rule.hysteresis.for_ * _US:
                return []
            rs.armed = True
            rs.cleared_since = None
            return []
        if not self._value(rule.when, ks, rs, t):
            return []
        if rs.last_fired is not None and t < rs.last_fired + rule.cooldown_seconds * _US:
            return []
        rs.armed = False
        rs.last_fired = t
        rs.fired += 1
        actions = self._actions(p, rule, key, ks, rs, t)
        recent = self.recent.setdefault(p.name, [])
        recent.extend(actions)
        del recent[:-RECENT_ACTIONS]
        return actions

    # -- actions -----------------------------------------------------------------------------

    def _figures(self, rule: Rule, ks: _KeyState, rs: _RuleState, t: int) -> dict[str, Any]:
        figures: dict[str, Any] = {"usage": _num(ks.usage)}
        if ks.limit is not None:
            figures["limit"] = _num(ks.limit)
        u = ks.utilization()
        if u is not None:
            figures["utilization"] = _num(u.quantize(Decimal("0.001")))
        if ks.parent_limit is not None:
            figures["parent_limit"] = _num(ks.parent_limit)
        if rs.since:
            figures["since"] = _iso(min(rs.since.values()))
        for _path, leaf in _leaves(rule.when):
            if isinstance(leaf, TimeToExhaustion) and ks.exhaustion_us is not None:
                figures["time_to_exhaustion_seconds"] = (ks.exhaustion_us - t) // _US
            elif isinstance(leaf, Violations):
                figures["violations"] = self._violation_count(leaf, ks, t)
            elif isinstance(leaf, TierIs | TimeOfDay):
                figures["tier"] = ks.tier
        figures["at"] = _iso(t)
        return figures

    def _actions(
        self, p: Policy, rule: Rule, key: Key, ks: _KeyState, rs: _RuleState, t: int
    ) -> list[PolicyAction]:
        figures = self._figures(rule, ks, rs, t)
        summary = f"{p.ref} rule {rule.name}: " + _describe(figures)
        out: list[PolicyAction] = []
        for i, act in enumerate(rule.then):
            common: dict[str, Any] = {
                "policy": p.name,
                "version": p.version,
                "rule": rule.name,
                "key": key,
                "time_us": t,
                "figures": figures,
                "summary": summary,
                "quota": ks.quota,
            }
            aid = action_id(p.name, p.version, rule.name, i, key, t)
            if isinstance(act, AdjustLimit):
                new = self._new_limit(act.adjust_limit, key, ks)
                if new is None:
                    continue
                out.append(
                    PolicyAction(
                        aid,
                        "adjust_limit",
                        limit=new,
                        previous_limit=ks.limit,
                        **common,
                    )
                )
            elif isinstance(act, SwitchTemplate):
                tpl = act.switch_template.template
                if ks.tier == tpl:
                    continue
                # one template per entity: the id leaves the resource out, so the rule firing
                # for several resources of the entity issues one command
                eid = action_id(p.name, p.version, rule.name, i, key[:3], t)
                out.append(PolicyAction(eid, "switch_template", template=tpl, **common))
            elif isinstance(act, Suspend | Resume):
                status = "suspended" if isinstance(act, Suspend) else "active"
                if ks.limit is None or ks.quota is None or ks.status == status:
                    continue
                kind = "suspend" if status == "suspended" else "resume"
                out.append(PolicyAction(aid, kind, status=status, **common))
            elif isinstance(act, AlertAction):
                out.append(
                    PolicyAction(
                        aid,
                        "alert",
                        severity=act.alert.severity,
                        message=act.alert.message or summary,
                        **common,
                    )
                )
        return out

    @staticmethod
    def _new_limit(spec: AdjustLimitSpec, key: Key, ks: _KeyState) -> Decimal | None:
        """The adjusted limit, or None when the rules leave nothing to change."""
        if ks.limit is None or ks.quota is None:
            return None
        places = RESOURCE_DECIMALS.get(key[3], 6)
        quantum = Decimal(1).scaleb(-places)
        cur = ks.limit
        raw = cur + spec.step if spec.step is not None else cur * (spec.factor or Decimal(1))
        new = raw.quantize(quantum, rounding=ROUND_CEILING)
        if spec.floor is not None:
            new = max(new, spec.floor.quantize(quantum, rounding=ROUND_CEILING))
        if spec.ceiling is not None:
            new = min(new, spec.ceiling.quantize(quantum, rounding=ROUND_FLOOR))
        if ks.parent_limit is not None:
            new = min(new, ks.parent_limit)
        if not spec.grows:
            h = spec.headroom
            room = max(
                ks.usage * (h.percent or 0) / _HUNDRED,
                h.amount if h.amount is not None else Decimal(0),
            )
            least = (ks.usage + room).quantize(quantum, rounding=ROUND_CEILING)
            new = max(new, least)
            if ks.parent_limit is not None and new > ks.parent_limit:
                return None
        new = max(new, Decimal(0))
        if (spec.grows and new <= cur) or (not spec.grows and new >= cur):
            return None
        # the fewest digits that say it: 3, not 3.000
        return new.quantize(Decimal(1)) if new == new.to_integral_value() else new.normalize()

    # -- views and persistence ---------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any] | None:
        """A policy's versions, its rules' state per quota, and its recent actions."""
        versions = self.versions.get(name)
        if versions is None:
            return None
        p = self.policies.get(name)
        rules: list[dict[str, Any]] = []
        for (pname, rname, key), rs in sorted(self.rules.items()):
            if pname != name:
                continue
            rules.append(
                {
                    "rule": rname,
                    "tenant_id": key[0],
                    "level": key[1],
                    "entity_id": key[2],
                    "resource_type": key[3],
                    "armed": rs.armed,
                    "fired": rs.fired,
                    "last_fired": _iso(rs.last_fired) if rs.last_fired is not None else None,
                    "since": {k: _iso(v) for k, v in sorted(rs.since.items())},
                }
            )
        return {
            "name": name,
            "active": p is not None,
            "version": p.version if p is not None else None,
            "policy": p.model_dump(mode="json") if p is not None else None,
            "versions": [{"version": v, "set_at": _iso(t), "deleted": v == 0} for v, t in versions],
            "rules": rules,
            "actions": [a.to_dict() for a in self.recent.get(name, [])],
        }

    def to_json(self) -> dict[str, Any]:
        """The whole state, JSON-ready (``from_json`` restores it exactly)."""
        return {
            "policies": {n: p.model_dump(mode="json") for n, p in sorted(self.policies.items())},
            "versions": {n: [list(v) for v in vs] for n, vs in sorted(self.versions.items())},
            "keys": [[list(k), ks.to_json()] for k, ks in sorted(self.keys.items())],
            "rules": [
                [list(k[:2]), list(k[2]), rs.to_json()] for k, rs in sorted(self.rules.items())
            ],
            "recent": {
                n: [_action_json(a) for a in acts] for n, acts in sorted(self.recent.items())
            },
            "watermark": self.watermark,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PolicyEngine:
        eng = cls()
        eng.policies = {n: Policy.model_validate(p) for n, p in raw["policies"].items()}
        eng.versions = {n: [(int(v), int(t)) for v, t in vs] for n, vs in raw["versions"].items()}
        eng.keys = {_key(k): _KeyState.from_json(v) for k, v in raw["keys"]}
        eng.rules = {
            (str(pr[0]), str(pr[1]), _key(k)): _RuleState.from_json(v) for pr, k, v in raw["rules"]
        }
        eng.recent = {n: [_action_from(a) for a in acts] for n, acts in raw["recent"].items()}
        eng.watermark = int(raw["watermark"])
        return eng


def _describe(f: Mapping[str, Any]) -> str:
    """The figures in words, e.g. ``utilization 95 % (9.5 of 10) since 2026-...``."""
    parts = []
    if "utilization" in f:
        parts.append(f"utilization {f['utilization']} % ({f['usage']} of {f['limit']})")
    else:
        parts.append(f"usage {f['usage']}" + (f" of {f['limit']}" if "limit" in f else ""))
    if "since" in f:
        parts.append(f"since {f['since']}")
    if "time_to_exhaustion_seconds" in f:
        parts.append(f"exhausted in {f['time_to_exhaustion_seconds']} s")
    if "violations" in f:
        parts.append(f"{f['violations']} violation episode(s)")
    if f.get("tier"):
        parts.append(f"tier {f['tier']}")
    return ", ".join(parts) + f" at {f['at']}"


def _key(raw: Iterable[Any]) -> Key:
    t, lvl, e, r = (str(x) for x in raw)
    return (t, lvl, e, r)


def _action_json(a: PolicyAction) -> dict[str, Any]:
    return {
        "action_id": a.action_id,
        "kind": a.kind,
        "policy": a.policy,
        "version": a.version,
        "rule": a.rule,
        "key": list(a.key),
        "time_us": a.time_us,
        "figures": _jsonable(a.figures),
        "summary": a.summary,
        "limit": _num(a.limit),
        "previous_limit": _num(a.previous_limit),
        "template": a.template,
        "status": a.status,
        "severity": a.severity,
        "message": a.message,
        "quota": _jsonable(a.quota),
    }


def _action_from(raw: Mapping[str, Any]) -> PolicyAction:
    return PolicyAction(
        action_id=raw["action_id"],
        kind=raw["kind"],
        policy=raw["policy"],
        version=int(raw["version"]),
        rule=raw["rule"],
        key=_key(raw["key"]),
        time_us=int(raw["time_us"]),
        figures=raw["figures"],
        summary=raw["summary"],
        limit=None if raw["limit"] is None else Decimal(raw["limit"]),
        previous_limit=None if raw["previous_limit"] is None else Decimal(raw["previous_limit"]),
        template=raw["template"],
        status=raw["status"],
        severity=raw["severity"],
        message=raw["message"],
        quota=None if raw["quota"] is None else quota_fields(raw["quota"]),
    )
