"""The enforcement step: load a tenant's state, decide, stage the change, say what to send.

Independent of Faust: it works on a ``streams.store.TenantStore`` (over the worker's RocksDB
and changelog in the worker, over dicts in tests and ``novaquota replay``), so every storage
rule is tested without a broker.

Exactly-once effect with at-least-once delivery
------------------------------------------------
The worker writes a batch's changes durably (changelog, then RocksDB) before it acknowledges
the batch's input offsets, and a tenant's rows of one batch reach the changelog as one record
batch (``streams.store.faust_base``): after a crash a tenant's stored state is that of some
batch boundary, whole, and input after the last committed offset is processed again. Two rules
make that harmless:

1. **Identity.** Every message that takes effect holds its (source, id) identity with its own
   position (stream and offset), written with the tenant's state. A message whose identity is
   held by its own position has taken effect: it is not applied again; one held by another
   position is a second message with that identity (a duplicate), and is ignored. A record that
   was never applied is applied whenever it comes, even after later records of its partition
   (Faust's drain loop can skip a record until a seek brings it back; docs/operations.md).
   Ticks, admission records and system totals carry no identity: a tenant's record keeps, for
   each of those streams, the offset of the last record applied (the guard).
2. **Outbox.** Outputs are sent after the state that produced them is durable, so a crash can
   lose outputs whose state was kept. The record keeps what each message sent until its offset
   is committed, and a message replayed as applied sends that again. Outputs carry
   deterministic ids, so a consumer that sees one twice can tell.

Messages forwarded between partitions (routing by ``data.tenant_id``) can arrive twice at
different offsets; they are ignored by their (source, id) identity (``Identities``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from novaquota.schemas.codec import Decoded
from novaquota.streams import quota as q
from novaquota.streams.store.records import (
    IDENTITY,
    SEP,
    SYSTEM,
    TenantRecord,
    identity_key,
    instance_key,
    tenant_of,
)
from novaquota.streams.store.tenant_store import TenantStore
from novaquota.streams.translate import encode_output, to_inputs

__all__ = [
    "SYSTEM",
    "Emit",
    "Enforcer",
    "Identities",
    "InjectedFault",
    "InstanceRows",
    "Rejection",
    "TenantRecord",
]

OUTBOX_LIMIT = 64


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


class InstanceRows(MutableMapping[str, q.InstanceState]):
    """The core's view of one tenant's instances over the store. Writes are held until
    ``commit``, so a message whose processing raises stages nothing. A row is the marker of
    the message that last changed it (stream and offset, cited by ``novaquota replay``), a
    newline, and the instance's state."""

    def __init__(self, store: TenantStore, tenant_id: str, marker: str) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.marker = marker.encode() + b"\n"
        self.prefix = instance_key(tenant_id, "")
        self.pending: dict[str, bytes | None] = {}
        """Current value of each row this message changed (None: deleted), until commit."""

    @property
    def touched(self) -> bool:
        return bool(self.pending)

    def __getitem__(self, key: str) -> q.InstanceState:
        data = (
            self.pending[key]
            if key in self.pending
            else self.store.get(instance_key(self.tenant_id, key), self.tenant_id)
        )
        if data is None:
            raise KeyError(key)
        if key not in self.pending:
            data = data.partition(b"\n")[2]
        return q.InstanceState.from_bytes(data)

    def __setitem__(self, key: str, value: q.InstanceState) -> None:
        self.pending[key] = value.to_bytes()

    def __delitem__(self, key: str) -> None:
        self.pending[key] = None

    def commit(self) -> None:
        """Stage the changed rows (the message took effect)."""
        for key, data in self.pending.items():
            row = None if data is None else self.marker + data
            self.store.put(instance_key(self.tenant_id, key), row, self.tenant_id)

    @staticmethod
    def parse(row: bytes) -> tuple[str, q.InstanceState]:
        """A stored row: (marker, state)."""
        marker, _, data = row.partition(b"\n")
        return marker.decode(), q.InstanceState.from_bytes(data)

    def __iter__(self) -> Iterator[str]:
        n = len(self.prefix)
        keys = {k[n:].decode() for k, _raw in self.store.scan(self.prefix, self.tenant_id)}
        keys.update(self.pending)
        for key in sorted(keys):
            if key not in self.pending or self.pending[key] is not None:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Identities:
    """First-wins message identities: ``(tenant, source, id)`` -> the message that holds it.

    CloudEvents names an event by (source, id), so a second message with the same pair has no
    effect, whatever its time or data (contract section 3). The identities are rows of their
    own in the tenant's keyed space, not part of the tenant record, so a busy tenant's week of
    ids does not ride along in every write of its record. A value is ``marker|time_us``: the
    marker (stream and offset) tells a redelivery of the same message (it may complete its
    effect) from a second message; the time lets an identity expire once the tenant's watermark
    is ``retention_us`` past it. Identities are kept per tenant: the same pair for two tenants
    names two messages.

    ``sweep`` deletes expired identities a bounded slice at a time; a lookup treats an expired
    one as absent, so what the sweep has reached never matters to a decision (and a replay
    decides alike).
    """

    def __init__(self, store: TenantStore, retention_us: int) -> None:
        self.store = store
        self.retention_us = retention_us

    key = staticmethod(identity_key)

    @staticmethod
    def _parse(raw: bytes) -> tuple[bytes, int | None]:
        marker, sep, t = raw.rpartition(b"|")
        if not sep:  # no time: expires only by the sweep
            return raw, None
        return marker, int(t)

    def holder(self, key: bytes, watermark_us: int, tenant: str | None = None) -> bytes | None:
        """The marker of the message that holds this identity, or None if it is free."""
        raw = self.store.get(key, tenant)
        if raw is None:
            return None
        marker, t = self._parse(raw)
        if t is not None and t < watermark_us - self.retention_us:
            return None
        return marker

    def hold(self, key: bytes, marker: str, time_us: int, tenant: str | None = None) -> None:
        self.store.put(key, f"{marker}|{time_us}".encode(), tenant)

    def sweep(
        self,
        rows: Iterator[tuple[bytes, bytes]],
        watermark_of: Callable[[str], int],
        budget: int,
        kind: bytes = IDENTITY,
    ) -> bytes | None:
        """Look at up to ``budget`` committed identities and delete the expired ones (values
        without a time are deleted too). Returns the key to start the next slice at, or None
        when the rows have been read to their end. ``kind``: the row kind swept (rejection
        rows age like identities)."""
        tenant = None
        watermark = 0
        for i, (key, raw) in enumerate(rows):
            if i >= budget:
                return key
            if not key.startswith(kind) or SEP.encode() not in key:
                continue
            name = tenant_of(key)
            if name != tenant:
                tenant = name
                watermark = watermark_of(tenant)
            _marker, t = self._parse(raw)
            if t is None or t < watermark - self.retention_us:
                self.store.put(key, None)
        return None


def _change(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per resource, how much a tenant's totals moved (empty when they did not)."""
    if after == before:
        return {}
    return {r: after.get(r, 0) - before.get(r, 0) for r in {*before, *after}}


class Enforcer:
    """Applies decoded messages to tenant state held in a ``TenantStore``."""

    def __init__(
        self,
        store: TenantStore,
        *,
        config: q.Config = q.DEFAULT_CONFIG,
        templates: Callable[[str], Any] | None = None,
        committed: Callable[[str], int] | None = None,
    ) -> None:
        self.store = store
        # Every message is deduplicated by (source, id) against its own rows (``Identities``).
        self.identities = Identities(store, config.dedup_retention_us)
        self.config = replace(config, external_dedup=True)
        # committed(stream) -> the consumer's committed offset: outbox entries below it can
        # never be replayed, so they are dropped.
        self.committed = committed
        self.templates = templates
        self.totals_delta: dict[str, int] = {}
        """Change of the last processed tenant's tenant-level totals (for system totals)."""
        self.last_deadline: int | None = None
        """Next event-time deadline of the tenant stored last (for tick scheduling)."""
        self.last_watermark: int = 0
        self.last_duplicate = False
        """True when the last processed message was a second message with a known identity."""
        self.fault_ids: frozenset[str] = frozenset()
        """Test-only: messages with these CloudEvent ids raise ``InjectedFault`` half-way
        through their processing, after the state was changed in memory (fault tests)."""
        self.listeners: list[Callable[[str, TenantRecord], None]] = []
        """Called with (tenant_id, record) after every staged change (metrics, caches)."""

    # -- state access ---------------------------------------------------------------------

    def load(self, tenant_id: str) -> tuple[TenantRecord, bool]:
        """The tenant's record with this batch's changes, and whether the tenant exists."""
        return self.store.record(tenant_id)

    def _store(self, tenant_id: str, rec: TenantRecord) -> None:
        self.store.put_record(tenant_id, rec)
        self.last_deadline = q.next_deadline(rec.state)
        self.last_watermark = rec.state.watermark_us
        for listener in self.listeners:
            listener(tenant_id, rec)

    def forget(self) -> None:
        """Drop cached and staged state (after a rebalance)."""
        self.store.forget()

    # -- processing -----------------------------------------------------------------------

    def process(self, decoded: Decoded, stream: str, offset: int) -> list[Emit]:
        """Apply one message read at ``offset`` of ``stream``; return what to send.

        Raises ``Rejection`` when the message cannot take effect. Whatever it raises, the
        tenant's state is as it was before the message (``_step``).
        """
        tenant = decoded.tenant_id
        if tenant is None:
            raise Rejection("missing_field", "data.tenant_id: required to route this message")
        self.last_duplicate = False
        self.totals_delta = {}
        with self._step(tenant, lambda: self._process(tenant, decoded, stream, offset)):
            return self._process(tenant, decoded, stream, offset)

    @contextlib.contextmanager
    def _step(self, tenant: str, redo: Callable[[], object]) -> Iterator[None]:
        """One step on one tenant. Changes are staged in the store; the parsed record is
        changed in place, so a step that raises may leave it half-changed. Then the tenant's
        staged changes are dropped and the earlier steps of the batch that made them are run
        again on the committed state; on success this step is kept for such a redo."""
        try:
            yield
        except BaseException:
            for step in self.store.discard(tenant):
                step()
                self.store.done(tenant, step)
            raise
        self.store.done(tenant, redo)

    def _process(self, tenant: str, decoded: Decoded, stream: str, offset: int) -> list[Emit]:
        rec, _exists = self.load(tenant)
        marker = f"{stream}:{offset}"
        identity = self.identities.key(tenant, decoded.source, decoded.id)
        holder = self.identities.holder(identity, rec.state.watermark_us, tenant)
        if holder is not None:
            if holder != marker.encode():
                self.last_duplicate = True  # a second message with this (source, id)
                return []
            # this very record took effect (its offset was not committed before a crash or a
            # rebalance): send its outputs again
            return self._resend(rec, tenant, stream, offset)
        try:
            inputs = to_inputs(decoded, self.templates)
        except ValueError as exc:
            raise Rejection("invalid_field", str(exc)) from exc
        if not inputs:
            return []
        rows = InstanceRows(self.store, tenant, marker)
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
        self.identities.hold(identity, marker, decoded.time_us, tenant)
        rec.guard[stream] = offset
        self._outbox(rec, stream, offset, emits)
        self._store(tenant, rec)
        self.totals_delta = delta
        return emits

    def _outbox(self, rec: TenantRecord, stream: str, offset: int, emits: list[Emit]) -> None:
        """Keep what this message sent until its offset is committed (rule 2)."""
        if self.committed is not None and rec.outbox:
            committed = self.committed
            if rec.outbox[0][1] < committed(rec.outbox[0][0]):  # the oldest is done with
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
        with self._step(tenant, lambda: self._tick(tenant, time_us, stream, offset)):
            return self._tick(tenant, time_us, stream, offset)

    def _tick(self, tenant: str, time_us: int, stream: str, offset: int) -> list[Emit]:
        rec, exists = self.load(tenant)
        if not exists:
            return []
        if rec.guard.get(stream, -1) >= offset:
            return self._resend(rec, tenant, stream, offset)
        delta: dict[str, int] = {}
        if isinstance(rec.state, q.SystemState):
            outputs = q.apply_system(rec.state, q.Tick(time_us), self.config)
            rows = None
        else:
            rows = InstanceRows(self.store, tenant, f"{stream}:{offset}")
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
        with self._step(tenant, lambda: self._admit(tenant, body, stream, offset)):
            return self._admit(tenant, body, stream, offset)

    def _admit(
        self, tenant: str, body: dict[str, Any], stream: str, offset: int
    ) -> tuple[Any, list[Emit]]:
        rec, exists = self.load(tenant)
        if rec.guard.get(stream, -1) >= offset:
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
        if not exists and not st.grants and not st.admissions and not st.buckets:
            return result, emits  # an unknown tenant without a grant: nothing to keep
        rec.guard[stream] = offset
        self._outbox(rec, stream, offset, emits)
        self._store(tenant, rec)
        return result, emits

    def system_totals(
        self, totals: dict[str, int], time_us: int, stream: str, offset: int
    ) -> list[Emit]:
        """Evaluate system quotas against the summed totals of all partitions."""
        with self._step(SYSTEM, lambda: self._system_totals(totals, time_us, stream, offset)):
            return self._system_totals(totals, time_us, stream, offset)

    def _system_totals(
        self, totals: dict[str, int], time_us: int, stream: str, offset: int
    ) -> list[Emit]:
        rec, _exists = self.load(SYSTEM)
        if rec.guard.get(stream, -1) >= offset:
            return []
        assert isinstance(rec.state, q.SystemState)
        outputs = q.apply_system(rec.state, q.SystemTotals(totals, time_us), self.config)
        emits = self._emits(SYSTEM, outputs, "system.totals", "novaquota/system-totals")
        rec.guard[stream] = offset
        self._outbox(rec, stream, offset, emits)
        self._store(SYSTEM, rec)
        return emits
