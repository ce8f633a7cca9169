"""The enforcement step: load a tenant's state, decide, store, and say what to send.

Independent of Faust: it works on two byte-keyed mutable mappings (the Faust tables in the
worker, plain dicts in tests — the in-memory twin), so every storage rule is tested without a
broker.

Exactly-once effect with at-least-once delivery
------------------------------------------------
Faust writes each table change to local RocksDB at once and to its changelog topic
asynchronously; it flushes the producer before it commits input offsets. After a crash, input
after the last commit is processed again, while local state (or the changelog) may already hold
part of its effect. Three rules make every replay harmless:

1. **Guard.** A tenant's record carries, for each input stream (topic and partition), the offset
   of the last message applied to it, in the same value as the state. A message at or below that
   offset has taken effect already: it is not applied again.
2. **Repair.** Such a replayed message re-writes the rows it touched (the tenant record and its
   instance row) and re-sends the outputs it produced (kept in a small outbox in the record), so
   a changelog or output write lost in the crash is written again. Outputs carry deterministic
   ids, so a consumer that sees one twice can tell.
3. **Instance rows remember the message that last changed them** and their value before it.
   If an instance row was written but the tenant record was not, the replay computes from the
   earlier value, so the totals move exactly once.

Messages forwarded between partitions (routing by ``data.tenant_id``) can arrive twice at
different offsets; the core itself is idempotent for those (newest-wins per instance, dedup by
(source, id) for additive consumption).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from types import EllipsisType
from typing import Any

import orjson

from schemas.codec import Decoded
from streams import quota as q
from streams.translate import encode_output, to_inputs

__all__ = [
    "Emit",
    "Enforcer",
    "Identities",
    "InjectedFault",
    "InstanceRows",
    "Rejection",
    "TenantRecord",
    "instance_row_key",
]

SEP = "\x1f"
SYSTEM = "system"
OUTBOX_LIMIT = 64

Table = MutableMapping[bytes, bytes]
PrefixScan = Callable[[bytes], Iterator[tuple[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class Emit:
    """One record to send: topic suffix (contract name without prefix), key, value."""

    topic: str
    key: bytes
    value: bytes
    opened: tuple[str, str] | None = None
    """(resource_type, kind) when this record opens a violation episode (for metrics)."""


class InjectedFault(RuntimeError):
    """Raised for the ids in ``Enforcer.fault_ids`` (fault tests of the internal-error path)."""


class Rejection(Exception):
    """The message is well-formed but cannot take effect: dead-letter it with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def instance_row_key(tenant_id: str, instance_key: str) -> bytes:
    return f"{tenant_id}{SEP}{instance_key}".encode()


@dataclass
class TenantRecord:
    """What the tenants table holds per tenant: guard offsets, outbox, and the core state."""

    state: q.TenantState | q.SystemState
    guard: dict[str, int] = field(default_factory=dict)
    outbox: list[list[Any]] = field(default_factory=list)  # [stream, offset, [[topic, str]]]

    def to_bytes(self) -> bytes:
        head = orjson.dumps({"v": 1, "g": self.guard, "o": self.outbox})
        return head + b"\n" + self.state.to_bytes()

    @classmethod
    def from_bytes(cls, raw: bytes, *, system: bool = False) -> TenantRecord:
        head, _, body = raw.partition(b"\n")
        h = orjson.loads(head)
        state: q.TenantState | q.SystemState = (
            q.SystemState.from_bytes(body) if system else q.TenantState.from_bytes(body)
        )
        return cls(state, h.get("g", {}), h.get("o", []))

    @classmethod
    def new(cls, tenant_id: str) -> TenantRecord:
        if tenant_id == SYSTEM:
            return cls(q.SystemState())
        return cls(q.TenantState(tenant_id=tenant_id))

    @property
    def tenant(self) -> q.TenantState:
        assert isinstance(self.state, q.TenantState)
        return self.state


class InstanceRows(MutableMapping[str, q.InstanceState]):
    """The core's view of one tenant's instances, over the byte-keyed instances table.

    A row is ``[marker, previous, current]``: the message that last changed it and the value
    before that message (rule 3 of the module doc). Writes are held until ``commit``, so a
    message whose processing raises leaves the table as it was.
    """

    def __init__(
        self, table: Table, scan: PrefixScan, tenant_id: str, marker: str, replay_ok: bool
    ):
        self.table = table
        self.scan = scan
        self.tenant_id = tenant_id
        self.prefix = f"{tenant_id}{SEP}".encode()
        self.marker = marker
        # True when the tenant record has NOT applied this message: a row already changed by
        # it is read as its earlier value.
        self.replay_ok = replay_ok
        self.before: dict[str, bytes | None] = {}
        self.pending: dict[str, bytes | None] = {}
        """Current value of each row this message changed (None: deleted), until commit."""

    @property
    def touched(self) -> bool:
        return bool(self.pending)

    def _load(self, raw: bytes) -> bytes | None:
        marker, prev, cur = orjson.loads(raw)
        if self.replay_ok and marker == self.marker:
            return prev.encode() if prev is not None else None
        return cur.encode() if cur is not None else None

    def _raw(self, key: str) -> bytes | None:
        if key in self.before:
            return self.before[key]
        raw = self.table.get(instance_row_key(self.tenant_id, key))
        return None if raw is None else self._load(raw)

    def __getitem__(self, key: str) -> q.InstanceState:
        data = self.pending[key] if key in self.pending else self._raw(key)
        if data is None:
            raise KeyError(key)
        return q.InstanceState.from_bytes(data)

    def __setitem__(self, key: str, value: q.InstanceState) -> None:
        self._write(key, value.to_bytes())

    def __delitem__(self, key: str) -> None:
        self._write(key, None)

    def _write(self, key: str, data: bytes | None) -> None:
        if key not in self.before:
            self.before[key] = self._raw(key)
        self.pending[key] = data

    def commit(self) -> None:
        """Write the changed rows (the message took effect)."""
        for key, data in self.pending.items():
            prev = self.before[key]
            self.table[instance_row_key(self.tenant_id, key)] = orjson.dumps(
                [
                    self.marker,
                    prev.decode() if prev is not None else None,
                    data.decode() if data is not None else None,
                ]
            )

    def __iter__(self) -> Iterator[str]:
        n = len(self.prefix)
        stored = [(k[n:].decode(), raw) for k, raw in self.scan(self.prefix)]
        keys = {key for key, raw in stored if key in self.pending or self._load(raw) is not None}
        keys.update(self.pending)
        for key in sorted(keys):
            if key not in self.pending or self.pending[key] is not None:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def repair(self, keys: list[str]) -> None:
        """Re-write rows as they are, so a changelog record lost in a crash is sent again."""
        for key in keys:
            rk = instance_row_key(self.tenant_id, key)
            raw = self.table.get(rk)
            if raw is not None:
                self.table[rk] = raw


class Identities:
    """First-wins message identities: ``(tenant, source, id)`` -> the message that holds it.

    CloudEvents names an event by (source, id), so a second message with the same pair has no
    effect, whatever its time or data (contract section 3). The identities live in a table of
    their own, not in the tenant record, so a busy tenant's week of ids does not ride along in
    every write of its record. A value is ``marker|time_us``: the marker (stream and offset)
    tells a redelivery of the same message (it may complete its effect) from a second message;
    the time lets an identity expire once the tenant's watermark is ``retention_us`` past it.
    Identities are kept per tenant: the same pair for two tenants names two messages.

    ``sweep`` deletes expired identities from the local store a bounded slice at a time; a
    lookup treats an expired one as absent, so what the sweep has reached never matters to a
    decision (and a replay decides alike).
    """

    def __init__(self, table: Table, retention_us: int) -> None:
        self.table = table
        self.retention_us = retention_us

    @staticmethod
    def key(tenant: str, source: str, event_id: str) -> bytes:
        return f"{tenant}{SEP}{source}{SEP}{event_id}".encode()

    @staticmethod
    def _parse(raw: bytes) -> tuple[bytes, int | None]:
        marker, sep, t = raw.rpartition(b"|")
        if not sep:  # written before identities carried a time: expires only by the sweep
            return raw, None
        return marker, int(t)

    def holder(self, key: bytes, watermark_us: int) -> bytes | None:
        """The marker of the message that holds this identity, or None if it is free."""
        raw = self.table.get(key)
        if raw is None:
            return None
        marker, t = self._parse(raw)
        if t is not None and t < watermark_us - self.retention_us:
            return None
        return marker

    def hold(self, key: bytes, marker: str, time_us: int) -> None:
        self.table[key] = f"{marker}|{time_us}".encode()

    def sweep(
        self,
        rows: Iterator[tuple[bytes, bytes]],
        delete: Callable[[bytes], None],
        watermark_of: Callable[[str], int],
        budget: int,
    ) -> bytes | None:
        """Look at up to ``budget`` stored identities and delete the expired ones (legacy values
        without a time are deleted too). Returns the key to start the next slice at, or None
        when the store has been read to its end."""
        tenant = None
        watermark = 0
        for i, (key, raw) in enumerate(rows):
            if i >= budget:
                return key
            name, sep, _rest = key.partition(SEP.encode())
            if not sep:
                continue  # not an identity (the store's own bookkeeping)
            if name.decode() != tenant:
                tenant = name.decode()
                watermark = watermark_of(tenant)
            _marker, t = self._parse(raw)
            if t is None or t < watermark - self.retention_us:
                delete(key)
        return None


def _change(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per resource, how much a tenant's totals moved (empty when they did not)."""
    if after == before:
        return {}
    return {r: after.get(r, 0) - before.get(r, 0) for r in {*before, *after}}


def dict_scan(table: Table) -> PrefixScan:
    """Prefix scan over a plain dict (the in-memory twin of a RocksDB partition scan)."""

    def scan(prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k in sorted(table):
            if k.startswith(prefix):
                yield k, table[k]

    return scan


class RecordCache:
    """Parsed tenant records keyed by tenant and checked against the stored bytes, least
    recently used first out once their estimated size passes ``budget`` bytes.

    A parsed record takes about four times its stored bytes (measured on bulk-loaded tenants
    with ten quotas: 2.4 kB stored, 10 kB parsed), so a byte budget, not a count, is what keeps
    a worker with a million quotas inside its memory target."""

    PARSED_PER_STORED_BYTE = 4

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._items: dict[str, tuple[bytes, Any, int]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, raw: bytes) -> Any:
        """The record parsed from ``raw`` if it is cached (a record of other bytes is stale)."""
        hit = self._items.pop(key, None)
        if hit is None:
            return None
        if hit[0] != raw:
            self.size -= hit[2]
            return None
        self._items[key] = hit  # most recently used last
        return hit[1]

    def put(self, key: str, raw: bytes, rec: Any) -> None:
        self.discard(key)
        cost = len(raw) * self.PARSED_PER_STORED_BYTE + 200
        if cost > self.budget:
            return
        self._items[key] = (raw, rec, cost)
        self.size += cost
        while self.size > self.budget:
            oldest = next(iter(self._items))
            self.size -= self._items.pop(oldest)[2]

    def discard(self, key: str) -> None:
        hit = self._items.pop(key, None)
        if hit is not None:
            self.size -= hit[2]

    def clear(self) -> None:
        self._items.clear()
        self.size = 0


class Enforcer:
    """Applies decoded messages to tenant state held in two byte-keyed tables."""

    def __init__(
        self,
        tenants: Table,
        instances: Table,
        scan: PrefixScan,
        *,
        config: q.Config = q.DEFAULT_CONFIG,
        templates: Callable[[str], Any] | None = None,
        cache_bytes: int = 64 * 2**20,
        dedup: Table | None = None,
        committed: Callable[[str], int] | None = None,
    ) -> None:
        self.tenants = tenants
        self.instances = instances
        self.scan = scan
        # Every message is deduplicated by (source, id) against a table of its own (see
        # ``Identities``); without one (pure tests) the core keeps identities in the state.
        self.identities = (
            Identities(dedup, config.dedup_retention_us) if dedup is not None else None
        )
        self.config = replace(config, external_dedup=True) if dedup is not None else config
        # committed(stream) -> the consumer's committed offset: outbox entries below it can
        # never be replayed, so they are dropped.
        self.committed = committed
        self.templates = templates
        self._cache = RecordCache(cache_bytes)
        self.totals_delta: dict[str, int] = {}
        """Change of the last processed tenant's tenant-level totals (for system totals)."""
        self.last_deadline: int | None = None
        """Next event-time deadline of the tenant stored last (for tick scheduling)."""
        self.last_watermark: int = 0
        self.last_load_hit = False
        self.last_duplicate = False
        """True when the last processed message was a second message with a known identity."""
        self.fault_ids: frozenset[str] = frozenset()
        """Test-only: messages with these CloudEvent ids raise ``InjectedFault`` half-way
        through their processing, after the state was changed in memory (fault tests)."""
        self.listeners: list[Callable[[str, TenantRecord], None]] = []
        """Called with (tenant_id, record) after every stored change (metrics, caches)."""

    # -- state access ---------------------------------------------------------------------

    def load(
        self, tenant_id: str, raw: bytes | EllipsisType | None = ...
    ) -> tuple[TenantRecord, bytes | None]:
        """The tenant's record as stored now (or as ``raw``, its stored bytes, read by the
        caller). Parsed records are cached keyed by their stored bytes, so a change (by this
        worker or a changelog restore) is never served stale."""
        if raw is ...:
            raw = self.tenants.get(tenant_id.encode())
        self.last_load_hit = False
        if raw is None:
            self._cache.discard(tenant_id)
            return TenantRecord.new(tenant_id), None
        rec = self._cache.get(tenant_id, raw)
        if rec is not None:
            self.last_load_hit = True
            return rec, raw
        rec = TenantRecord.from_bytes(raw, system=tenant_id == SYSTEM)
        self._cache.put(tenant_id, raw, rec)
        return rec, raw

    def _store(self, tenant_id: str, rec: TenantRecord) -> None:
        raw = rec.to_bytes()
        self.tenants[tenant_id.encode()] = raw
        self.last_deadline = q.next_deadline(rec.state)
        self.last_watermark = rec.state.watermark_us
        self._cache.put(tenant_id, raw, rec)
        for listener in self.listeners:
            listener(tenant_id, rec)

    def forget(self) -> None:
        """Drop cached state (after a rebalance)."""
        self._cache.clear()

    # -- processing -----------------------------------------------------------------------

    def process(self, decoded: Decoded, stream: str, offset: int) -> list[Emit]:
        """Apply one message read at ``offset`` of ``stream``; return what to send.

        Raises ``Rejection`` when the message cannot take effect. Whatever it raises, state
        is as it was before the message: the record is changed only in memory until it is
        stored, instance rows and identities are written only once everything succeeded, and
        a failed message's parsed record is dropped from the cache.
        """
        tenant = decoded.tenant_id
        if tenant is None:
            raise Rejection("missing_field", "data.tenant_id: required to route this message")
        self.last_duplicate = False
        self.totals_delta = {}
        with self._rollback(tenant):
            return self._process(tenant, decoded, stream, offset)

    @contextlib.contextmanager
    def _rollback(self, tenant: str) -> Iterator[None]:
        """On any exception, drop the tenant's parsed record from the cache: the object may be
        half-mutated, while the stored bytes are still those from before the message."""
        try:
            yield
        except BaseException:
            self._cache.discard(tenant)
            raise

    def _process(self, tenant: str, decoded: Decoded, stream: str, offset: int) -> list[Emit]:
        rec, raw = self.load(tenant)
        marker = f"{stream}:{offset}"
        identity = None
        if self.identities is not None:
            identity = self.identities.key(tenant, decoded.source, decoded.id)
            holder = self.identities.holder(identity, rec.state.watermark_us)
            if holder is not None and holder != marker.encode():
                self.last_duplicate = True  # a second message with this (source, id)
                return []
        try:
            inputs = to_inputs(decoded, self.templates)
        except ValueError as exc:
            raise Rejection("invalid_field", str(exc)) from exc
        if not inputs:
            return []
        applied = rec.guard.get(stream, -1) >= offset
        rows = InstanceRows(self.instances, self.scan, tenant, marker, replay_ok=not applied)
        if applied:
            return self._repair(
                tenant, rec, raw, rows, inputs, identity, decoded.time_us, stream, offset
            )
        outputs: list[q.Output] = []
        system = isinstance(rec.state, q.SystemState)
        before = None if system else q.tenant_totals(rec.tenant)
        for inp in inputs:
            if isinstance(rec.state, q.SystemState):
                outputs.extend(q.apply_system(rec.state, inp, self.config))
            else:
                outputs.extend(q.apply(rec.tenant, rows, inp, self.config))
        rejected = [o for o in outputs if isinstance(o, q.Rejected)]
        if rejected and len(rejected) == len(outputs) and not rows.touched:
            # nothing changed: the message is dead-lettered with the core's reason
            self._cache.discard(tenant)
            r = rejected[0]
            raise Rejection(r.reason, r.message)
        if decoded.id in self.fault_ids:
            raise InjectedFault(f"injected fault for event id {decoded.id!r}")
        emits = self._emits(tenant, outputs, decoded.type, decoded.source)
        delta: dict[str, int] = {}
        if before is not None:
            delta = _change(before, q.tenant_totals(rec.tenant))
            if rec.tenant.purged:
                self._purge(rows)
        rows.commit()
        if identity is not None and self.identities is not None:
            self.identities.hold(identity, marker, decoded.time_us)
        rec.guard[stream] = offset
        self._outbox(rec, stream, offset, emits)
        self._store(tenant, rec)
        self.totals_delta = delta
        return emits

    def _repair(
        self,
        tenant: str,
        rec: TenantRecord,
        raw: bytes | None,
        rows: InstanceRows,
        inputs: list[q.Input],
        identity: bytes | None,
        time_us: int,
        stream: str,
        offset: int,
    ) -> list[Emit]:
        """A message the tenant record has applied came again (a crash before its offset was
        committed): send its writes again so none is lost, and its outputs from the outbox.

        The writes of one message go to several changelog partitions, and the producer sends
        each partition's batch when that batch is due, so a crash can leave the record on the
        broker without a row or identity that was written before it. A lost identity is
        rebuilt (the record counted this message, so it holds its identity). Rows are re-sent as
        they are: rebuilding a lost row from its allocation would be right on its own, but a
        record skipped by Faust's drain loop and replayed as applied would then get a row its
        usage never counted (docs/operations.md, known issues), so it waits for that fix."""
        if raw is not None:
            self.tenants[tenant.encode()] = raw
        if identity is not None and self.identities is not None:
            self.identities.hold(identity, f"{stream}:{offset}", time_us)
        keys: list[str] = []
        for inp in inputs:
            if isinstance(inp, q.Allocation):
                keys.append(inp.instance_key)
            elif isinstance(inp, q.Inventory):
                keys.extend(item[0] for item in inp.instances)
        rows.repair(keys)
        return self._resend(rec, tenant, stream, offset)

    def _outbox(self, rec: TenantRecord, stream: str, offset: int, emits: list[Emit]) -> None:
        """Keep what this message sent until its offset is committed (rule 2)."""
        if self.committed is not None and rec.outbox:
            committed = self.committed
            rec.outbox = [e for e in rec.outbox if e[1] >= committed(e[0])]
        if emits:
            rec.outbox.append([stream, offset, [[e.topic, e.value.decode()] for e in emits]])
            del rec.outbox[:-OUTBOX_LIMIT]

    def _purge(self, rows: InstanceRows) -> None:
        for key in list(rows):
            del rows[key]

    def _emits(
        self, tenant: str, outputs: list[q.Output], cause_type: str, cause_source: str
    ) -> list[Emit]:
        key = tenant.encode()
        emits = []
        for out in outputs:
            if isinstance(out, q.Rejected):
                continue
            topic, value = encode_output(out, cause_type=cause_type, cause_source=cause_source)
            opened = (out.resource_type, out.kind) if isinstance(out, q.ViolationOpened) else None
            emits.append(Emit(topic, key, value, opened))
        return emits

    @staticmethod
    def _resend(rec: TenantRecord, tenant: str, stream: str, offset: int) -> list[Emit]:
        """What a replayed message sent the first time (from the outbox, rule 2)."""
        key = tenant.encode()
        return [
            Emit(topic, key, value.encode())
            for s, o, sent in rec.outbox
            if s == stream and o == offset
            for topic, value in sent
        ]

    def tick(self, tenant: str, time_us: int, stream: str, offset: int) -> list[Emit]:
        """Advance one tenant's event time (tick records on the internal topic)."""
        self.totals_delta = {}
        with self._rollback(tenant):
            rec, raw = self.load(tenant)
            if raw is None:
                return []
            if rec.guard.get(stream, -1) >= offset:
                self.tenants[tenant.encode()] = raw
                return self._resend(rec, tenant, stream, offset)
            delta: dict[str, int] = {}
            if isinstance(rec.state, q.SystemState):
                outputs = q.apply_system(rec.state, q.Tick(time_us), self.config)
                rows = None
            else:
                rows = InstanceRows(self.instances, self.scan, tenant, f"{stream}:{offset}", True)
                before = q.tenant_totals(rec.tenant)
                outputs = q.apply(rec.tenant, rows, q.Tick(time_us), self.config)
                delta = _change(before, q.tenant_totals(rec.tenant))
            emits = self._emits(tenant, outputs, "tick", "novaquota/tick")
            if rows is not None:
                rows.commit()
            rec.guard[stream] = offset
            self._outbox(rec, stream, offset, emits)
            self._store(tenant, rec)
        self.totals_delta = delta
        return emits

    def admit(self, body: dict[str, Any], stream: str, offset: int) -> tuple[Any, list[Emit]]:
        """Apply one record of the internal admission topic (made by the check API):

        - ``check``: decide a check that changes state (a reserve, or tokens); returns the
          ``AdmissionResult``;
        - ``release``: the client gives a grant back; returns the released ``Grant`` or None;
        - ``expire``: the owner's clock passed TTLs; releases every grant expired at ``now_us``
          and returns the list of them.

        A record already applied (replay after a crash) changes nothing and returns None.
        """
        tenant = body["tenant_id"]
        with self._rollback(tenant):
            return self._admit(tenant, body, stream, offset)

    def _admit(
        self, tenant: str, body: dict[str, Any], stream: str, offset: int
    ) -> tuple[Any, list[Emit]]:
        rec, raw = self.load(tenant)
        if rec.guard.get(stream, -1) >= offset:
            if raw is not None:
                self.tenants[tenant.encode()] = raw
            return None, self._resend(rec, tenant, stream, offset)
        if isinstance(rec.state, q.SystemState):
            raise Rejection("reserved_tenant", "'system' takes no admission requests")
        st = rec.tenant
        now = int(body["now_us"])
        op = body["op"]
        result: Any
        outputs: list[q.Output] = []
        if op == "check":
            req = q.AdmissionRequest(
                request_id=body["request_id"],
                scope=q.Scope(tenant, body.get("project_id"), body.get("user_id")),
                resources={r: int(a) for r, a in body["resources"].items()},
                now_us=now,
                reserve=bool(body.get("reserve")),
                ttl_us=int(body.get("ttl_us") or 300 * q.SEC_US),
                resource_id=body.get("resource_id"),
                idempotency_key=body.get("idempotency_key"),
                actor=body.get("actor") or "",
            )
            result, audits = q.decide_admission(st, req)
            outputs.extend(audits)
        elif op == "release":
            result, audits = q.release_grant(
                st,
                body["grant_id"],
                "released",
                now_us=now,
                actor=body.get("actor") or "",
                cause=body["request_id"],
            )
            outputs.extend(audits)
        elif op == "expire":
            result = []
            for gid in sorted(st.grants):
                grant, audits = q.release_grant(
                    st, gid, "expired", now_us=now, actor="ttl", cause=body["request_id"]
                )
                if grant is not None:
                    result.append(grant)
                    outputs.extend(audits)
        else:
            raise Rejection("invalid_field", f"unknown admission op {op!r}")
        emits = self._emits(tenant, outputs, f"admission.{op}", "novaquota/admission")
        if raw is None and not st.grants and not st.admissions and not st.buckets:
            self._cache.discard(tenant)
            return result, emits  # an unknown tenant without a grant: nothing to keep
        rec.guard[stream] = offset
        self._outbox(rec, stream, offset, emits)
        self._store(tenant, rec)
        return result, emits

    def system_totals(
        self, totals: dict[str, int], time_us: int, stream: str, offset: int
    ) -> list[Emit]:
        """Evaluate system quotas against the summed totals of all partitions."""
        with self._rollback(SYSTEM):
            return self._system_totals(totals, time_us, stream, offset)

    def _system_totals(
        self, totals: dict[str, int], time_us: int, stream: str, offset: int
    ) -> list[Emit]:
        rec, _raw = self.load(SYSTEM)
        if rec.guard.get(stream, -1) >= offset:
            return []
        assert isinstance(rec.state, q.SystemState)
        outputs = q.apply_system(rec.state, q.SystemTotals(totals, time_us), self.config)
        emits = self._emits(SYSTEM, outputs, "system.totals", "novaquota/system-totals")
        rec.guard[stream] = offset
        self._outbox(rec, stream, offset, emits)
        self._store(SYSTEM, rec)
        return emits
