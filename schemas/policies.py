"""Policies: rules that watch quotas and act on them (docs/policies.md).

A policy is declared in YAML or JSON and published as a ``policy.set`` command; the policy engine
(``projections.policy.engine``) evaluates its rules in event time and turns their actions into
ordinary commands. These models are strict (``extra="forbid"``): a misspelt condition must be an
error naming the field, not a rule that silently never fires.

Conditions and actions are written as one-key mappings, the key naming the kind::

    when: {all: [{utilization: {above: 90, for: 1h}}, {tier: {in: [startup]}}]}
    then: [{adjust_limit: {factor: 1.5, ceiling: 64}}, {alert: {severity: warning}}]

Durations are seconds (an integer) or a string of number-unit pairs: ``90m``, ``1h30m``, ``7d``
(units ``s``, ``m``, ``h``, ``d``, ``w``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from novaquota.schemas.common import Id, Level, ResourceType, Severity

__all__ = [
    "ACTION_KINDS",
    "CONDITION_KINDS",
    "Action",
    "AdjustLimit",
    "AlertAction",
    "AllOf",
    "AnyOf",
    "Condition",
    "Duration",
    "Hysteresis",
    "Policy",
    "PolicyFileError",
    "Resume",
    "Rule",
    "Scope",
    "Suspend",
    "SwitchTemplate",
    "TierIs",
    "TimeOfDay",
    "TimeToExhaustion",
    "Utilization",
    "Violations",
    "load_policies",
    "parse_duration",
    "parse_policies",
]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION: Final = re.compile(r"(\d+)\s*([smhdw])")
_HHMM: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_duration(value: Any) -> int:
    """Seconds of ``value``: a non-negative integer, or number-unit pairs (``1h30m``, ``7d``)."""
    if isinstance(value, bool):
        raise ValueError(f"a duration is seconds or a string like '90m', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        return value
    if (
        isinstance(value, float | Decimal)
        and math.isfinite(value)
        and value >= 0
        and value == int(value)
    ):
        return int(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return int(text)
        pos = 0
        total = 0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            total += int(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
            while pos < len(text) and text[pos] == " ":
                pos += 1
        if text and pos == len(text):
            return total
    raise ValueError(
        f"a duration is seconds or number-unit pairs like '90m', '1h30m', '7d' "
        f"(units s, m, h, d, w), got {value!r}"
    )


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*(\d+\s*[smhdwSMHDW]\s*)+$|^\d+$"},
            ],
            "description": "seconds, or number-unit pairs such as '90m', '1h30m', '7d'",
        }
    ),
]
"""Seconds; written as an integer or as ``90m`` / ``1h30m`` / ``7d``."""

_Percent = Annotated[Decimal, Field(ge=0, le=100_000, allow_inf_nan=False)]
_Number = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
_Dec = Annotated[Decimal, PlainSerializer(lambda d: format(d, "f"), return_type=str)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True
    )


# --- conditions ------------------------------------------------------------------------------


class UtilizationSpec(_Strict):
    """Usage as a percent of the limit is above (or below) a threshold, held for a duration."""

    above: _Percent | None = None
    below: _Percent | None = None
    for_: Duration = Field(default=0, alias="for")

    @model_validator(mode="after")
    def _one_bound(self) -> Self:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' and 'below'")
        return self


class Utilization(_Strict):
    utilization: UtilizationSpec


class TimeToExhaustionSpec(_Strict):
    """The forecast says the limit is reached in less than ``below``."""

    below: Duration


class TimeToExhaustion(_Strict):
    time_to_exhaustion: TimeToExhaustionSpec


class ViolationsSpec(_Strict):
    """At least ``at_least`` violation episodes opened within the last ``within``."""

    at_least: int = Field(ge=1)
    within: Duration
    kinds: tuple[str, ...] | None = None

    @field_validator("within")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be longer than 0 seconds")
        return v


class Violations(_Strict):
    violations: ViolationsSpec


class TierSpec(_Strict):
    """The entity's tier (the template last applied to it) is one of ``in``."""

    in_: tuple[Id, ...] = Field(alias="in", min_length=1)


class TierIs(_Strict):
    tier: TierSpec


class TimeOfDaySpec(_Strict):
    """Event time (UTC) within [from, to); ``from`` after ``to`` wraps past midnight."""

    from_: str = Field(alias="from")
    to: str
    weekdays: tuple[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], ...] | None = None

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _hhmm(cls, v: Any) -> str:
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1440:
            v = f"{v // 60:02d}:{v % 60:02d}"  # YAML 1.1 reads an unquoted 18:30 as 1110
        if not isinstance(v, str) or not _HHMM.match(v):
            raise ValueError(f"a time of day is HH:MM (UTC, 00:00 to 24:00), got {v!r}")
        return v

    @property
    def from_minute(self) -> int:
        h, m = self.from_.split(":")
        return int(h) * 60 + int(m)

    @property
    def to_minute(self) -> int:
        h, m = self.to.split(":")
        return int(h) * 60 + int(m)


class TimeOfDay(_Strict):
    time_of_day: TimeOfDaySpec


def _condition_kind(value: Any) -> str | None:
    if isinstance(value, Mapping):
        keys = list(value)
        return str(keys[0]) if len(keys) == 1 else None
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return next(iter(fields)) if len(fields) == 1 else None
    return None


class AllOf(_Strict):
    all: tuple[Condition, ...] = Field(min_length=1)


class AnyOf(_Strict):
    any: tuple[Condition, ...] = Field(min_length=1)


CONDITION_KINDS: Final = (
    "utilization",
    "time_to_exhaustion",
    "violations",
    "tier",
    "time_of_day",
    "all",
    "any",
)

Condition = Annotated[
    Annotated[Utilization, Tag("utilization")]
    | Annotated[TimeToExhaustion, Tag("time_to_exhaustion")]
    | Annotated[Violations, Tag("violations")]
    | Annotated[TierIs, Tag("tier")]
    | Annotated[TimeOfDay, Tag("time_of_day")]
    | Annotated[AllOf, Tag("all")]
    | Annotated[AnyOf, Tag("any")],
    Discriminator(
        _condition_kind,
        custom_error_type="invalid_condition",
        custom_error_message=(
            "a condition is a mapping with one key, one of " + ", ".join(CONDITION_KINDS)
        ),
    ),
]
"""One condition: a mapping with one key naming its kind."""

AllOf.model_rebuild()
AnyOf.model_rebuild()


# --- actions ---------------------------------------------------------------------------------


class Headroom(_Strict):
    """What a shrink leaves above usage: a percent of usage and/or an amount (the larger)."""

    percent: _Number | None = None
    amount: _Number | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_scalar(cls, data: Any) -> Any:
        if isinstance(data, str) and data.strip().endswith("%"):
            return {"percent": data.strip()[:-1]}
        if isinstance(data, int | float | Decimal | str) and not isinstance(data, bool):
            return {"amount": data}
        return data

    @model_validator(mode="after")
    def _some(self) -> Self:
        if self.percent is None and self.amount is None:
            raise ValueError("give 'percent' and/or 'amount'")
        return self


class AdjustLimitSpec(_Strict):
    """New limit = limit + ``step`` (negative to shrink) or limit x ``factor``, then kept within
    [``floor``, ``ceiling``], never above the parent's limit, and (when shrinking) never below
    usage + ``headroom``."""

    step: Annotated[Decimal, Field(allow_inf_nan=False)] | None = None
    factor: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)] | None = None
    floor: _Number | None = None
    ceiling: _Number | None = None
    headroom: Headroom = Headroom(percent=Decimal(10))

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.step is None) == (self.factor is None):
            raise ValueError("give exactly one of 'step' and 'factor'")
        if self.step is not None and self.step == 0:
            raise ValueError("step: must not be 0 (the limit would not change)")
        if self.factor is not None and self.factor == 1:
            raise ValueError("factor: must not be 1 (the limit would not change)")
        if self.floor is not None and self.ceiling is not None and self.floor > self.ceiling:
            raise ValueError(f"floor ({self.floor}) must not be above ceiling ({self.ceiling})")
        return self

    @property
    def grows(self) -> bool:
        return (self.step or 0) > 0 or (self.factor or 0) > 1


class AdjustLimit(_Strict):
    adjust_limit: AdjustLimitSpec


class SwitchTemplateSpec(_Strict):
    template: Id


class SwitchTemplate(_Strict):
    switch_template: SwitchTemplateSpec


class _Empty(_Strict):
    pass


class Suspend(_Strict):
    """Set the quota's status to ``suspended`` (the limit stays)."""

    suspend: _Empty = _Empty()


class Resume(_Strict):
    """Set the quota's status back to ``active``."""

    resume: _Empty = _Empty()


class AlertSpec(_Strict):
    severity: Severity = "warning"
    message: str = ""


class AlertAction(_Strict):
    alert: AlertSpec


ACTION_KINDS: Final = ("adjust_limit", "switch_template", "suspend", "resume", "alert")


def _action_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value in ("suspend", "resume") else None
    return _condition_kind(value)


def _bare_action(value: Any) -> Any:
    """``suspend`` / ``resume`` may be written as a bare word, and with a null value."""
    if isinstance(value, str) and value in ("suspend", "resume"):
        return {value: {}}
    if isinstance(value, Mapping) and len(value) == 1:
        ((k, v),) = value.items()
        if k in ("suspend", "resume") and v is None:
            return {k: {}}
    return value


Action = Annotated[
    Annotated[
        Annotated[AdjustLimit, Tag("adjust_limit")]
        | Annotated[SwitchTemplate, Tag("switch_template")]
        | Annotated[Suspend, Tag("suspend")]
        | Annotated[Resume, Tag("resume")]
        | Annotated[AlertAction, Tag("alert")],
        Discriminator(
            _action_kind,
            custom_error_type="invalid_action",
            custom_error_message="an action is a mapping with one key, one of "
            + ", ".join(ACTION_KINDS),
        ),
    ],
    BeforeValidator(_bare_action),
]
"""One action: a mapping with one key naming its kind (``suspend``/``resume`` may be bare)."""


# --- rules and policies ----------------------------------------------------------------------


class Hysteresis(_Strict):
    """When a rule that fired may fire again: its condition must be false again, and, for
    utilization conditions, clear the threshold by ``points`` percentage points, for at least
    ``for`` (event time)."""

    points: _Number = Decimal(0)
    for_: Duration = Field(default=0, alias="for")


class Rule(_Strict):
    name: Id
    when: Condition
    then: tuple[Action, ...] = Field(min_length=1)
    cooldown_seconds: Duration = 3600
    hysteresis: Hysteresis = Hysteresis()

    @model_validator(mode="before")
    @classmethod
    def _one_action(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            then = data.get("then")
            if then is not None and not isinstance(then, list | tuple):
                data["then"] = [then]
            if "cooldown" in data and "cooldown_seconds" not in data:
                data["cooldown_seconds"] = data.pop("cooldown")
        return data


class Scope(_Strict):
    """Which quotas a policy watches; every field left out matches everything. Tenant and entity
    ids are shell-style patterns (``acme-*``, ``team-?``); a plain id matches itself."""

    tenants: tuple[str, ...] | None = None
    levels: tuple[Level, ...] | None = None
    entity_ids: tuple[str, ...] | None = None
    resource_types: tuple[ResourceType, ...] | None = None
    tiers: tuple[Id, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: [v] if isinstance(v, str) else v for k, v in data.items()}
        return data

    def matches(
        self, tenant: str, level: str, entity: str, resource: str, tier: str | None
    ) -> bool:
        if self.tenants is not None and not any(fnmatchcase(tenant, p) for p in self.tenants):
            return False
        if self.levels is not None and level not in self.levels:
            return False
        if self.entity_ids is not None and not any(fnmatchcase(entity, p) for p in self.entity_ids):
            return False
        if self.resource_types is not None and resource not in self.resource_types:
            return False
        return self.tiers is None or (tier is not None and tier in self.tiers)


class Policy(_Strict):
    """A named, versioned set of rules over a scope."""

    TYPE: ClassVar[str] = "policy"

    name: Id
    version: int = Field(default=1, ge=1)
    description: str = ""
    enabled: bool = True
    scope: Scope = Scope()
    rules: tuple[Rule, ...] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique_rules(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        seen: set[str] = set()
        for r in rules:
            if r.name in seen:
                raise ValueError(f"rule name {r.name!r} appears more than once")
            seen.add(r.name)
        return rules

    @property
    def ref(self) -> str:
        """``<name>@<version>``: how actors and causes name this policy."""
        return f"{self.name}@{self.version}"


# --- files -----------------------------------------------------------------------------------


class PolicyFileError(ValueError):
    """A policy file that cannot be used; ``problems`` lists ``path: message`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


def _location(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    last: Any = None
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        elif "[" in str(p) or p == last:  # validator names; a union's tag before its field
            pass
        else:
            parts.append(str(p))
        last = p
    return ".".join(parts) or "policy"


def _errors(exc: ValidationError) -> list[tuple[str, tuple[Any, ...], str]]:
    """(type, loc, message) of each error, without the "at least 1 item" echo that a list
    reports when only its invalid items made it short."""
    errs = [
        (str(e["type"]), tuple(e["loc"]), str(e["msg"]).removeprefix("Value error, "))
        for e in exc.errors(include_url=False)
    ]
    return [
        e
        for e in errs
        if not (
            e[0] == "too_short"
            and any(o[1][: len(e[1])] == e[1] and len(o[1]) > len(e[1]) for o in errs)
        )
    ]


def parse_policies(obj: Any, source: str = "<input>") -> list[Policy]:
    """Policies from a parsed document: one policy (a mapping), a list of them, or a mapping
    ``{policies: [...]}``. Raises ``PolicyFileError`` naming every invalid field."""
    if isinstance(obj, Mapping) and set(obj) == {"policies"}:
        obj = obj["policies"]
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        raise PolicyFileError(source, ["the file holds no policy"])
    out: list[Policy] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        where = f"policies[{i}]" if isinstance(obj, list) else ""
        if not isinstance(item, Mapping):
            problems.append(f"{where or 'policy'}: must be a mapping, got {type(item).__name__}")
            continue
        try:
            out.append(Policy.model_validate(item))
        except ValidationError as exc:
            name = item.get("name")
            label = f" ({name})" if isinstance(name, str) else ""
            for _type, loc, msg in _errors(exc):
                problems.append(f"{_location(where, loc)}{label}: {msg}")
    names = [p.name for p in out]
    for n in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"policy name {n!r} appears more than once")
    if problems:
        raise PolicyFileError(source, problems)
    return out


def load_policies(path: str | Path) -> list[Policy]:
    """Policies from a ``.yaml``/``.yml`` or ``.json`` file (see ``parse_policies``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError(str(p), [exc.strerror or str(exc)]) from None
    try:
        if p.suffix.lower() == ".json":
            obj = json.loads(text, parse_float=Decimal)
        else:
            import yaml

            obj = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError: both name the line
        raise PolicyFileError(
            str(p), [f"not valid {p.suffix.lstrip('.') or 'YAML'}: {exc}"]
        ) from None
    return parse_policies(obj, str(p))
