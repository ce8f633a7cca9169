"""The whole command and event space through the worker's real step, without a broker.

Hypothesis writes logs of CloudEvents as producers would (contract sections 2-4): quotas at
tenant, project and user level (a limit of 0, a burst limit equal to the limit, zero burst and
grace seconds, soft and suspended quotas, windowed ``api_requests`` quotas, deletions, built-in
tiers) and resource events (fractional cpu, amounts of 0 and at the sanity cap, deletions that
arrive before their creations, re-sent (source, id) pairs with another ``time`` or ``data``).

Each record is encoded as bytes in both CloudEvents Kafka bindings and fed, twice, through
``decode`` -> ``with_tenant`` -> ``Enforcer.process`` over in-memory tables: world A takes each
message in the binding drawn for it, world B in the other one, so both worlds must end alike.
A ``DecodeError`` or ``Rejection`` is a dead letter; any other exception fails the test.

Every output must be a valid structured CloudEvent of its ``type`` (``schemas.outputs``) with
finite numbers. At the end, what the worker stores must agree with ``tests/support/reference.py``,
an independent recomputation over the same raw records: which records are dead letters, the
quotas in force, usage, the current ``api_requests`` windows and the open ``over_limit`` episodes.
The open episodes told by the outputs (opened once, resolved once) must be those in the state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, Literal

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from novaquota.schemas.codec import DecodeLimits, decode
from novaquota.schemas.exceptions import DecodeError
from novaquota.schemas.outputs import OUTPUT_MODELS
from novaquota.streams.enforce import Emit, Rejection
from novaquota.streams.settings import Settings
from novaquota.streams.translate import with_tenant
from tests.support import reference
from tests.support.world import StoreWorld

# --- the space -----------------------------------------------------------------------------

#: The worker's decode limits, from the settings' defaults (max_amount 1e12, skew 300 s).
LIMITS = DecodeLimits(
    max_amount=Settings.model_fields["max_amount"].default,
    max_clock_skew_seconds=Settings.model_fields["max_clock_skew_seconds"].default,
)
CAP = Decimal(10**12)
T0 = reference.parse_time_us("2026-11-20T10:00:00Z")
US = 1_000_000
SKEW_MS = 300_000

TENANTS = ("acme", "globex")
PROJECTS = ("web", "db")
USERS = ("alice", "bob")  # and a user named like its tenant
INSTANCE_IDS = ("r1", "r2", "r3")  # shared by every kind: namespaces must not collide
INTERFACES = ("eth0", "eth1")
EVENT_SOURCES = ("nova/compute/h1", "nova/compute/h2", "cinder/api", "gateway/edge")
COMMAND_SOURCES = ("novaquota/api", "ops/console")
TIERS = ("free", "developer", "startup", "growth", "enterprise")
Window = Literal["minute", "hour", "day", "month"]
WINDOWS: tuple[Window, ...] = ("minute", "hour", "day", "month")

#: decimal places a resource's amounts may have (counted things are whole)
PLACES = {
    "cpu": 3,
    "memory": 6,
    "gpu": 0,
    "storage": 6,
    "instances": 0,
    "volumes": 0,
    "load_balancers": 0,
    "floating_ips": 0,
    "bandwidth_in": 6,
    "connections": 0,
    "api_requests": 0,
}
#: what quotas are set on: mostly what the events use
QUOTA_RESOURCES = ("cpu", "cpu", "cpu", "memory", "instances", "storage", *PLACES, "api_requests")
REPORTED_RESOURCES = ("cpu", "memory", "storage", "gpu", "instances")
#: events whose instance holds size_gb of storage
SIZED = ("volume.created", "volume.resized", "snapshot.created", "backup.created")

ALLOCATIONS: dict[str, tuple[str, str, str]] = {
    # kind -> (create type, delete type, id field)
    "vm": ("vm.created", "vm.deleted", "vm_id"),
    "volume": ("volume.created", "volume.deleted", "volume_id"),
    "snapshot": ("snapshot.created", "snapshot.deleted", "snapshot_id"),
    "backup": ("backup.created", "backup.deleted", "backup_id"),
    "floating_ip": ("floating_ip.allocated", "floating_ip.released", "ip_id"),
    "load_balancer": ("load_balancer.created", "load_balancer.deleted", "lb_id"),
    "usage": ("usage.reported", "usage.reported", "resource_id"),
}
EVENT_TYPES = (
    "vm.created",
    "vm.created",
    "vm.resized",
    "vm.resized",
    "vm.deleted",
    "volume.created",
    "volume.resized",
    "volume.deleted",
    "snapshot.created",
    "snapshot.deleted",
    "backup.created",
    "backup.deleted",
    "floating_ip.allocated",
    "floating_ip.released",
    "load_balancer.created",
    "load_balancer.deleted",
    "usage.reported",
    "api.requests",
    "network.sampled",
)
COMMAND_TYPES = ("quota.set", "quota.set", "quota.set", "quota.deleted", "template.applied")
BURST_SECONDS = (None, 0, 1, 60, 3600)


@dataclass(frozen=True)
class Msg:
    """One input message as its producer meant it (encoded to bytes by ``encode``)."""

    category: str  # "event" (resource-events topic) or "command" (quota-commands topic)
    type: str
    source: str
    id: str
    time_us: int
    data: dict[str, Any]
    lag_ms: int = 0  # record timestamp = event time (ms) + lag
    tz: int = 0  # how `time` is spelled: 0 "Z", 1 "+00:00", 2 "+02:00", 3 "-05:30"
    binary: bool = False  # binding in world A (world B takes the other one)
    extension: bool = False  # carries an unknown extension attribute

    @property
    def tenant(self) -> str:
        return str(self.data["tenant_id"])

    def __repr__(self) -> str:
        t = (self.time_us - T0) / US
        data = {k: v for k, v in self.data.items() if k not in ("tenant_id", "actor")}
        shown = ", ".join(f"{k}={v}" for k, v in data.items())
        extra = f" lag={self.lag_ms}ms" if self.lag_ms < 0 else ""
        mode = "binary" if self.binary else "structured"
        head = f"{self.type} {self.source}#{self.id} t=+{t:g}s {self.tenant}"
        return f"<{head}: {shown}{extra} {mode}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """One line per message in Hypothesis' falsifying examples."""
        printer.text(repr(self))


# --- strategies ----------------------------------------------------------------------------
# Built once and reused (functools.cache): building strategies on every draw made generating
# and shrinking a log many times slower than running it.


@cache
def choice(options: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(options)


@cache
def index(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n - 1)


@cache
def amounts(places: int) -> st.SearchStrategy[Decimal]:
    """Small whole numbers, decimals with up to ``places`` places, 0, the sanity cap and just
    below it (more digits than a float holds: the codec must keep them exact)."""
    return st.one_of(
        st.integers(1, 16).map(Decimal),
        st.integers(1, 10 ** (places + 3)).map(lambda n: Decimal(n).scaleb(-places)),
        st.just(Decimal(0)),
        st.sampled_from((CAP, CAP - Decimal(1).scaleb(-places))),
    )


@cache
def limits(places: int) -> st.SearchStrategy[Decimal]:
    """A quota's limit: 0 ("none of this resource") is as likely as any other kind."""
    return st.one_of(st.integers(1, 16).map(Decimal), st.just(Decimal(0)), amounts(places))


COUNTS = st.one_of(st.integers(1, 20).map(Decimal), st.just(CAP))
#: Within 3 h of T0 (no lateness, dedup or tombstone retention applies), many ties, and the
#: 300 s gauge TTL's edges.
TIMES = st.builds(
    lambda s, f: T0 + s * US + f,
    st.one_of(st.sampled_from([0, 1, 60, 299, 300, 301, 600, 3600]), st.integers(0, 3 * 3600)),
    st.sampled_from([0, 0, 0, 1, 500_000, 999_999]),
)
#: Kafka record timestamp minus event time, ms: within the allowed skew.
LAGS = st.one_of(st.just(0), st.integers(-(SKEW_MS - 1_000), 3_600_000))
OPTIONAL_AMOUNT = st.one_of(st.none(), amounts(0))
REPORTED = st.sets(st.sampled_from(REPORTED_RESOURCES), max_size=3)
TENANT = "<tenant>"  # stands for the message's tenant in generated fields
OPTIONAL_SIZE = st.one_of(st.none(), amounts(6))
RELEASED = st.one_of(st.none(), amounts(3))  # usage.reported released: true, maybe resources


def _needs(type_: str | None, *types: str) -> bool:
    return type_ is None or type_ in types


def event_fields(draw: st.DrawFn, type_: str | None) -> dict[str, Any]:
    """The fields a resource event of ``type_`` needs (``None``: of every type, so that a
    re-sent message can take new data whatever its type)."""
    f: dict[str, Any] = {
        "project_id": draw(choice((None, *PROJECTS))),
        "user_id": draw(choice((None, *USERS, TENANT))),
    }
    if type_ is None or type_ not in ("api.requests", "network.sampled"):
        f["instance"] = draw(choice(INSTANCE_IDS))
    if _needs(type_, "api.requests"):
        f["count"] = draw(COUNTS)
    if _needs(type_, "network.sampled"):
        f["interface_id"] = draw(choice(INTERFACES))
        f["bandwidth_in"] = draw(amounts(6))
        f["bandwidth_out"] = draw(amounts(6))
        f["connections"] = draw(amounts(0))
    if _needs(type_, "vm.created", "vm.resized"):
        f["cpu"] = draw(amounts(3))
        f["memory"] = draw(amounts(6))
        f["gpu"] = draw(OPTIONAL_AMOUNT)
    if _needs(type_, *SIZED):
        f["size_gb"] = draw(amounts(6))
    if _needs(type_, "snapshot.deleted", "backup.deleted"):
        f["deleted_size_gb"] = draw(OPTIONAL_SIZE)
    if _needs(type_, "usage.reported"):
        if draw(index(4)) == 3:
            f["released"] = draw(RELEASED)
        names = draw(REPORTED)
        f["resources"] = {r: draw(amounts(PLACES[r])) for r in sorted(names)}
    return f


def event_data(type_: str, tenant: str, f: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` of a resource event (contract section 3) from its fields."""
    data: dict[str, Any] = {"tenant_id": tenant}
    if f["project_id"] is not None:
        data["project_id"] = f["project_id"]
    if f["user_id"] is not None:
        data["user_id"] = tenant if f["user_id"] == TENANT else f["user_id"]
    kind, _, action = type_.partition(".")
    if type_ == "api.requests":
        data["count"] = f["count"]
    elif type_ == "network.sampled":
        for name in ("interface_id", "bandwidth_in", "bandwidth_out", "connections"):
            data[name] = f[name]
    elif type_ == "usage.reported":
        data["resource_id"] = f["instance"]
        if "released" in f:
            data["released"] = True
            if f["released"] is not None:
                data["resources"] = {"cpu": f["released"]}
        else:
            data["resources"] = dict(f["resources"])
    else:
        data[ALLOCATIONS[kind][2]] = f["instance"]
        if kind == "vm" and action != "deleted":
            data["cpu"], data["memory"] = f["cpu"], f["memory"]
            if f["gpu"] is not None:
                data["gpu"] = f["gpu"]
        elif kind in ("volume", "snapshot", "backup"):
            if action != "deleted":
                data["size_gb"] = f["size_gb"]
            elif kind != "volume" and f["deleted_size_gb"] is not None:
                data["size_gb"] = f["deleted_size_gb"]
    return data


def command_fields(draw: st.DrawFn, type_: str | None) -> dict[str, Any]:
    """The fields a command of ``type_`` needs (``None``: of every type)."""
    f: dict[str, Any] = {
        "actor": draw(choice(("ops", "alice@acme"))),
        "level": draw(choice(("tenant", "tenant", "project", "user"))),
        "project": draw(choice(PROJECTS)),
        "user": draw(choice((*USERS, TENANT))),
    }
    if _needs(type_, "template.applied"):
        f["template"] = draw(choice(TIERS))
    if _needs(type_, "quota.set", "quota.deleted"):
        f["resource_type"] = res = draw(choice(QUOTA_RESOURCES))
    if _needs(type_, "quota.set"):
        places = PLACES[res]
        f["limit"] = draw(limits(places))
        f["limit_type"] = draw(choice((None, None, "hard", "soft")))
        f["burst"] = draw(choice((None, None, None, Decimal(0), "above")))
        if f["burst"] == "above":
            f["burst"] = draw(amounts(places))
        f["burst_seconds"] = draw(choice(BURST_SECONDS))
        f["grace_seconds"] = draw(choice((None, 0, 1, 60, 86_400)))
        f["window"] = draw(choice(WINDOWS))
        f["status"] = draw(choice((None, None, "active", "suspended")))
        f["enforcement_action"] = draw(choice((None, "deny", "warn", "throttle", "notify")))
    return f


def command_data(type_: str, tenant: str, f: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` of a command (contract section 4) from its fields."""
    level = f["level"]
    entity = {"tenant": tenant, "project": f["project"], "user": f["user"]}[level]
    data: dict[str, Any] = {
        "actor": f["actor"],
        "tenant_id": tenant,
        "level": level,
        "entity_id": tenant if entity == TENANT else entity,
    }
    if type_ == "template.applied":
        data["template"] = f["template"]
        return data
    res = data["resource_type"] = f["resource_type"]
    if type_ == "quota.deleted":
        return data
    data["limit"] = limit = f["limit"]
    if f["limit_type"] is not None:
        data["limit_type"] = f["limit_type"]
    if f["burst"] is not None:
        # burst_limit >= limit, within the cap: equal to the limit, or above it
        data["burst_limit"] = min(limit + f["burst"], CAP)
        if f["burst_seconds"] is not None:
            data["burst_seconds"] = f["burst_seconds"]
    if f["limit_type"] == "soft" and f["grace_seconds"] is not None:
        data["grace_seconds"] = f["grace_seconds"]
    if res == "api_requests":
        data["window"] = f["window"]
    for name in ("status", "enforcement_action"):
        if f[name] is not None:
            data[name] = f[name]
    return data


def project(category: str, type_: str, tenant: str, f: Mapping[str, Any]) -> dict[str, Any]:
    if category == "command":
        return command_data(type_, tenant, f)
    return event_data(type_, tenant, f)


def _envelope(draw: st.DrawFn) -> dict[str, Any]:
    """How the producer wrote the envelope: one draw for binding, time zone and extension (few
    draws per message keep shrinking fast), simplest = structured, "Z", no extension."""
    variant = draw(index(20))
    return {
        "lag_ms": draw(LAGS),
        "binary": variant % 2 == 1,
        "tz": (0, 0, 1, 2, 3)[variant // 2 % 5],
        "extension": variant >= 10,
    }


# Steps are drawn independently of each other (a list shrinks by dropping elements) and turned
# into messages by ``materialize``, which numbers the ids and resolves references backwards.


@dataclass(frozen=True)
class Fresh:
    """A new message."""

    category: str
    type: str
    tenant: str
    fields: dict[str, Any]
    source: str
    time_us: int
    envelope: dict[str, Any]


@dataclass(frozen=True)
class DeleteFirst:
    """The deletion of an instance arrives before its creation (same tenant and instance),
    whose time is earlier, equal or later (``shift_us``)."""

    kind: str
    deletion: Fresh
    creation: Fresh
    shift_us: int


@dataclass(frozen=True)
class Again:
    """An earlier message (``back`` messages before the end) re-sent: the same (source, id)
    as it was, or with another time and/or data (the first one wins); or, with
    ``other_source``, its id used by another source (another message)."""

    back: int
    change: str
    other_source: int | None
    time_us: int
    event: dict[str, Any]
    command: dict[str, Any]
    envelope: dict[str, Any]


@st.composite
def fresh(draw: st.DrawFn, category: str | None = None, type_: str | None = None) -> Fresh:
    category = category or draw(choice(("event", "command")))
    if category == "event":
        type_ = type_ or draw(choice(EVENT_TYPES))
        fields = event_fields(draw, type_)
        source = draw(choice(EVENT_SOURCES))
    else:
        type_ = type_ or draw(choice(COMMAND_TYPES))
        fields = command_fields(draw, type_)
        source = draw(choice(COMMAND_SOURCES))
    return Fresh(
        category, type_, draw(choice(TENANTS)), fields, source, draw(TIMES), _envelope(draw)
    )


@cache
def fresh_of(category: str, type_: str) -> st.SearchStrategy[Fresh]:
    return fresh(category, type_)


@st.composite
def delete_first(draw: st.DrawFn) -> DeleteFirst:
    kind = draw(choice(tuple(sorted(ALLOCATIONS))))
    create_type, delete_type, _ = ALLOCATIONS[kind]
    deletion = draw(fresh_of("event", delete_type))
    creation = draw(fresh_of("event", create_type))
    shift = draw(choice((-1, 0, 1))) * draw(choice((1, US, 600 * US)))
    return DeleteFirst(kind, deletion, creation, shift)


@st.composite
def again(draw: st.DrawFn) -> Again:
    other = draw(choice((None, None, None, 0, 1, 2)))
    return Again(
        draw(index(6)),
        draw(choice(("nothing", "time", "data", "both"))),
        other,
        draw(TIMES),
        event_fields(draw, None),
        command_fields(draw, None),
        _envelope(draw),
    )


FRESH = fresh()
STEPS = st.one_of(FRESH, FRESH, delete_first())
STEPS_AGAIN = st.one_of(FRESH, FRESH, delete_first(), again())


def materialize(
    blocks: list[list[Fresh | DeleteFirst | Again]], future: tuple[int, int]
) -> list[Msg]:
    msgs: list[Msg] = []

    def new(step: Fresh, **changes: Any) -> Msg:
        prefix = "c" if step.category == "command" else "e"
        tenant = changes.pop("tenant", step.tenant)
        data = project(step.category, step.type, tenant, step.fields)
        data.update(changes.pop("data", {}))
        msg = Msg(
            step.category,
            step.type,
            step.source,
            f"{prefix}{len(msgs) + 1}",
            step.time_us,
            data,
            **step.envelope,
        )
        return replace(msg, **changes)

    for step in (s for block in blocks for s in block):
        if isinstance(step, Fresh):
            msgs.append(new(step))
        elif isinstance(step, DeleteFirst):
            same = {ALLOCATIONS[step.kind][2]: step.deletion.fields["instance"]}
            first = new(step.deletion, data=same)
            if step.kind == "usage":
                first = replace(first, data={**first.data, "released": True})
            msgs.append(first)
            second = new(step.creation, tenant=step.deletion.tenant, data=same)
            if step.kind == "usage":
                data = {k: v for k, v in second.data.items() if k != "released"}
                data.setdefault("resources", {"cpu": Decimal(1)})
                second = replace(second, data=data)
            msgs.append(replace(second, time_us=first.time_us + step.shift_us))
        elif msgs:
            orig = msgs[-1 - step.back % len(msgs)]
            fields = step.command if orig.category == "command" else step.event
            changed = step.change in ("data", "both")
            data = project(orig.category, orig.type, orig.tenant, fields) if changed else orig.data
            time_us = step.time_us if step.change in ("time", "both") else orig.time_us
            source = orig.source
            if step.other_source is not None:
                pool = COMMAND_SOURCES if orig.category == "command" else EVENT_SOURCES
                used = {m.source for m in msgs if m.id == orig.id}
                others = [s for s in pool if s not in used]
                if not others:
                    continue
                source = others[step.other_source % len(others)]
            msgs.append(replace(orig, source=source, time_us=time_us, data=data, **step.envelope))
    flag, position = future
    if flag == 9 and msgs:
        # One message whose time is more than the allowed skew ahead of its record timestamp:
        # a dead letter (future_time) for the worker and the reference alike.
        i = position % len(msgs)
        msgs[i] = replace(msgs[i], lag_ms=-(SKEW_MS + 1_000))
    return msgs


def logs(*, resend: bool = True) -> st.SearchStrategy[list[Msg]]:
    """Logs of commands and resource events in arrival order (about 20 messages on average:
    blocks of steps, as one list's average length is small)."""
    steps = STEPS_AGAIN if resend else STEPS
    blocks = st.lists(st.lists(steps, min_size=1, max_size=6), min_size=1, max_size=10)
    return st.tuples(blocks, st.tuples(index(10), index(64))).map(lambda b: materialize(*b))


VM = {"vm_id": "closing"}


def closing_events(msgs: list[Msg]) -> list[Msg]:
    """A last event per tenant at the latest time of the log, so that the worker's watermark
    (which commands move too) and the reference's (resource events only: the contract does not
    say whether a command's time moves the gauge TTL) end equal. It releases an instance that
    never held anything."""
    last = max(m.time_us for m in msgs)
    tenants = sorted({m.tenant for m in msgs})
    return [
        Msg("event", "vm.deleted", "tests/closing", f"closing-{t}", last, {"tenant_id": t, **VM})
        for t in tenants
    ]


# --- encoding (independent of the product's encoder: what a producer writes) ---------------


def _json(obj: Any) -> str:
    """JSON with every Decimal written as its exact literal."""
    if isinstance(obj, Decimal):
        return format(obj, "f")
    if isinstance(obj, Mapping):
        return "{" + ",".join(f"{json.dumps(k)}:{_json(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(_json(v) for v in obj) + "]"
    return json.dumps(obj)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _rfc3339(time_us: int, tz: int) -> str:
    offset_min = (0, 0, 120, -330)[tz]
    local = EPOCH + timedelta(microseconds=time_us + offset_min * 60 * US)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if local.microsecond:
        text += f".{local.microsecond:06d}"
    if tz == 0:
        return text + "Z"
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


Record = tuple[bytes, bytes, list[tuple[str, bytes]], int]


def encode(m: Msg, binary: bool) -> Record:
    """(key, value, headers, record timestamp ms) in one CloudEvents Kafka binding."""
    attrs: dict[str, Any] = {
        "specversion": "1.0",
        "id": m.id,
        "source": m.source,
        "type": m.type,
        "time": _rfc3339(m.time_us, m.tz),
    }
    if m.extension:
        attrs["partitionkey"] = m.tenant
    ts_ms = m.time_us // 1000 + m.lag_ms
    key = m.tenant.encode()
    if binary:
        headers = [(f"ce_{k}", str(v).encode()) for k, v in attrs.items()]
        headers.append(("content-type", b"application/json"))
        return key, _json(m.data).encode(), headers, ts_ms
    value = _json({**attrs, "datacontenttype": "application/json", "data": m.data})
    return key, value.encode(), [("content-type", b"application/cloudevents+json")], ts_ms


# --- the worker's step ---------------------------------------------------------------------


class World(StoreWorld):
    """One worker's store, fed record by record as the event and command agents do."""

    def __init__(self, *, batched: bool = False) -> None:
        super().__init__(batched=batched)
        self.offsets = {"qc:0": 0, "re:0": 0}

    def feed(self, category: str, record: Record) -> list[Emit] | str:
        """The emitted records, or the dead-letter reason."""
        key, value, headers, ts_ms = record
        stream = "qc:0" if category == "command" else "re:0"
        offset = self.offsets[stream]
        self.offsets[stream] += 1
        try:
            decoded = decode(value, headers, record_timestamp_ms=ts_ms, limits=LIMITS)
        except DecodeError as exc:
            return f"decode:{exc.reason}"
        tenant = decoded.tenant_id or key.decode()
        try:
            return self.enforcer.process(with_tenant(decoded, tenant), stream, offset)
        except Rejection as exc:
            return f"rejected:{exc.reason}"

    def usage(self, tenant: str) -> dict[tuple[str, str, str, str], Decimal]:
        state = self.enforcer.load(tenant)[0].tenant
        return {
            (tenant, LEVEL_NAMES[ekey[0]], ekey[1:], res): _from_micros(amount)
            for ekey, per in state.usage.items()
            for res, amount in per.items()
            if amount
        }

    def episodes(self, tenant: str) -> set[tuple[str, str, str, str, str]]:
        state = self.enforcer.load(tenant)[0].tenant
        out = set()
        for qk, kinds in state.episodes.items():
            ekey, _, res = qk.rpartition(SEP)
            for kind in kinds:
                out.add((tenant, LEVEL_NAMES[ekey[0]], ekey[1:], res, kind))
        return out

    def quotas(self, tenant: str) -> dict[tuple[str, str, str, str], dict[str, Any]]:
        state = self.enforcer.load(tenant)[0].tenant
        out = {}
        for ekey, per in state.quotas.items():
            for res, raw in per.items():
                ltype, limit, burst, burst_s, grace_s, window, status, action = raw[:8]
                out[(tenant, LEVEL_NAMES[ekey[0]], ekey[1:], res)] = {
                    "limit": _from_micros(limit),
                    "limit_type": ltype,
                    "burst_limit": None if burst is None else _from_micros(burst),
                    "burst_seconds": burst_s,
                    "grace_seconds": grace_s,
                    "window": window,
                    "status": status,
                    "enforcement_action": action,
                }
        return out

    def windows(self, tenant: str) -> dict[tuple[str, str, str, str], tuple[str, Decimal]]:
        """(tenant, level, entity, window) -> (start, count) of the latest window counted."""
        state = self.enforcer.load(tenant)[0].tenant
        out: dict[tuple[str, str, str, str], tuple[str, Decimal]] = {}
        for qk, counters in state.windows.items():
            ekey, _, res = qk.rpartition(SEP)
            assert res == "api_requests", qk
            for i, window in enumerate(WINDOWS):
                start, count = counters[2 * i], counters[2 * i + 1]
                key = (tenant, LEVEL_NAMES[ekey[0]], ekey[1:], window)
                out[key] = (_iso(start), _from_micros(count))
        return out


LEVEL_NAMES = {"T": "tenant", "P": "project", "U": "user", "S": "system"}
SEP = "\x1f"  # streams/quota/units.py: a quota key is entity key + SEP + resource type


def _from_micros(micros: int) -> Decimal:
    whole, frac = divmod(micros, 1_000_000)
    return Decimal(whole) if not frac else Decimal(micros).scaleb(-6).normalize()


def _iso(time_us: int) -> str:
    t = EPOCH + timedelta(microseconds=time_us)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- checks ----------------------------------------------------------------------------------


def _walk_numbers(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in _walk_numbers(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [x for i, v in enumerate(obj) for x in _walk_numbers(v, f"{path}[{i}]")]
    if isinstance(obj, int | float | Decimal) and not isinstance(obj, bool):
        return [(path, obj)]
    return []


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"output JSON holds the non-finite literal {name}")


def check_output(emit: Emit) -> dict[str, Any]:
    """A valid structured CloudEvent of an output type; returns its attributes and data."""
    assert emit.topic in ("quota-violations", "quota-alerts", "audit"), emit.topic
    event = json.loads(emit.value, parse_float=Decimal, parse_constant=_reject_constant)
    assert isinstance(event, dict), emit.value
    assert event.get("specversion") == "1.0", event
    for attr in ("id", "source", "type", "time"):
        assert isinstance(event.get(attr), str) and event[attr], (attr, event)
    reference.parse_time_us(event["time"])
    model = OUTPUT_MODELS.get(event["type"])
    assert model is not None, f"unknown output type {event['type']!r}"
    assert emit.topic == model.TOPIC, (emit.topic, model.TOPIC)
    data = event.get("data")
    assert isinstance(data, dict), event
    model.model_validate(data)
    for path, number in _walk_numbers(data):
        assert Decimal(number).is_finite(), (path, number, event)
    if event["type"] == "quota.alert":
        assert "utilization" in data, data
        util = data["utilization"]
        assert util is None or Decimal(util).is_finite(), data
        if data["kind"] == "threshold":
            # no threshold alert fires for a limit of 0 (whose utilization is null)
            assert util is not None, f"threshold alert without a utilization: {data}"
    return event


class EpisodeLog:
    """Open episodes as the outputs tell them: each opens once and resolves once."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str, str, str, str], str] = {}
        self.opened = 0

    def see(self, event: dict[str, Any]) -> None:
        if event["type"] not in ("quota.violation", "quota.violation_resolved"):
            return
        d = event["data"]
        key = (d["tenant_id"], d["level"], d["entity_id"], d["resource_type"], d["kind"])
        if event["type"] == "quota.violation":
            assert key not in self.open, f"episode {key} opened again while open: {d}"
            self.open[key] = d["violation_id"]
            self.opened += 1
        else:
            assert self.open.get(key) == d["violation_id"], f"resolves no open episode: {d}"
            del self.open[key]


def run(msgs: list[Msg]) -> None:
    if not msgs:
        return
    note("log:\n" + "\n".join(repr(m) for m in msgs))
    log = msgs + closing_events(msgs)
    # b differs from a in the binding of every record and in writing its state in batches
    # of three messages, as the worker does (a commits after every message)
    a, b = World(), World(batched=True)
    records: list[Record] = []
    outcomes: list[str] = []
    episodes = EpisodeLog()
    for m in log:
        rec_a, rec_b = encode(m, m.binary), encode(m, not m.binary)
        records.append(rec_a)
        got_a, got_b = a.feed(m.category, rec_a), b.feed(m.category, rec_b)
        if len(records) % 3 == 0:
            b.commit()
        assert got_a == got_b, f"the two bindings disagree on {m!r}: {got_a} / {got_b}"
        if isinstance(got_a, str):
            outcomes.append(got_a)
            event(f"dead letter: {got_a}")
            continue
        outcomes.append("ok")
        for emit in got_a:
            episodes.see(check_output(emit))
    b.commit()
    assert a.rows() == b.rows()

    df = reference.parse_records(records, sanity_cap=CAP)
    dead = {i for i, o in enumerate(outcomes) if o != "ok"}
    invalid = set(range(len(records))) - set(df["seq"])
    assert dead == invalid, "dead letters differ from the reference's invalid records: " + str(
        {i: (outcomes[i], log[i]) for i in sorted(dead ^ invalid)}
    )

    tenants = sorted({m.tenant for m in log})
    in_force = reference.quotas(df)
    want_quotas = {k: _quota_view(v) for k, v in in_force.items()}
    got_quotas = {k: v for t in tenants for k, v in a.quotas(t).items()}
    assert got_quotas == want_quotas, _diff("quotas", got_quotas, want_quotas)

    want_usage = reference.usage(df)
    got_usage = {k: v for t in tenants for k, v in a.usage(t).items()}
    assert got_usage == want_usage, _diff("usage", got_usage, want_usage)

    want_windows = _latest_windows(df)
    got_windows = {k: v for t in tenants for k, v in a.windows(t).items()}
    assert got_windows == want_windows, _diff("api_requests windows", got_windows, want_windows)

    state_open = {e for t in tenants for e in a.episodes(t)}
    assert state_open == set(episodes.open), _diff(
        "open episodes (state vs outputs)", state_open, set(episodes.open)
    )
    want_over = reference.expected_open_over_limit(want_usage, in_force)
    got_over = {e[:4] for e in state_open if e[4] == "over_limit"}
    assert got_over == want_over, _diff("open over_limit episodes", got_over, want_over)

    # what the examples reached (pytest --hypothesis-show-statistics)
    event(f"open over_limit episodes at the end: {min(len(want_over), 2)}")
    event(f"episodes opened: {min(episodes.opened, 3)}")
    event(f"dead letters: {min(len(dead), 2)}")
    event(f"messages: {len(msgs) // 8 * 8}+")
    event(f"quota commands: {min(sum(m.category == 'command' for m in msgs), 4)}")
    zero = [k for k, q in in_force.items() if q["limit"] == 0 and q["status"] == "active"]
    event(f"active zero-limit quotas with usage: {sum(bool(want_usage.get(k)) for k in zero)}")
    resent = len(log) - len({(m.category, m.source, m.id) for m in log})
    event(f"re-sent (source, id) pairs: {min(resent, 3)}")


def _quota_view(q: Mapping[str, Any]) -> dict[str, Any]:
    """The reference's quota in the worker's terms (seconds as ints)."""
    secs = {k: None if q[k] is None else int(q[k]) for k in ("burst_seconds", "grace_seconds")}
    return {
        "limit": q["limit"],
        "limit_type": q["limit_type"],
        "burst_limit": q["burst_limit"],
        **secs,
        "window": q["window"],
        "status": q["status"],
        "enforcement_action": q["enforcement_action"],
    }


def _latest_windows(df: Any) -> dict[tuple[str, str, str, str], tuple[str, Decimal]]:
    """Per entity and window kind, the latest window with requests and its count."""
    out: dict[tuple[str, str, str, str], tuple[str, Decimal]] = {}
    for window in WINDOWS:
        for (tenant, level, entity, start), count in reference.api_requests(df, window).items():
            key = (tenant, level, entity, window)
            if key not in out or start > out[key][0]:
                out[key] = (start, count)
    return out


def _diff(what: str, got: Any, want: Any) -> str:
    if isinstance(got, dict) and isinstance(want, dict):
        keys = sorted(set(got) | set(want), key=str)
        lines = [f"{k}: worker {got.get(k)} / reference {want.get(k)}" for k in keys]
        return f"{what} differ:\n  " + "\n  ".join(
            line for k, line in zip(keys, lines, strict=True) if got.get(k) != want.get(k)
        )
    return f"{what} differ: worker only {got - want}, reference only {want - got}"


# --- the property ----------------------------------------------------------------------------

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(msgs=logs())
def test_worker_step_agrees_with_the_reference_over_the_whole_input_space(msgs: list[Msg]) -> None:
    run(msgs)


def test_reference_duplicates_move_no_watermark() -> None:
    """The reference's reading of "a second message with the same (source, id) has no further
    effect" (contract sections 2 and 3): a re-sent gauge sample with a later time neither counts
    nor moves the watermark, so the first sample has not expired."""
    sample = Msg(
        "event",
        "network.sampled",
        "neutron/agent",
        "e1",
        T0,
        {
            "tenant_id": "acme",
            "interface_id": "eth0",
            "bandwidth_in": Decimal(5),
            "bandwidth_out": Decimal(0),
            "connections": Decimal(1),
        },
    )
    later = replace(sample, time_us=T0 + 600 * US, data={**sample.data, "bandwidth_in": 7})
    df = reference.parse_records([encode(sample, False), encode(later, True)])
    assert list(df["duplicate"]) == [False, True]
    assert reference.watermark(df) == {"acme": T0}
    assert reference.usage(df)[("acme", "tenant", "acme", "bandwidth_in")] == 5
