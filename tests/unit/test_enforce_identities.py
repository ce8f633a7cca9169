"""The enforcement step without a broker: first-wins (source, id) identities for every input
type, their expiry against the watermark, and a failed message leaving state as it was."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from novaquota.schemas.codec import decode
from novaquota.streams.enforce import Identities, InjectedFault, Rejection
from novaquota.streams.quota.units import SEC_US
from novaquota.streams.store.records import IDENTITY
from novaquota.streams.translate import with_tenant
from tests.support.world import StoreWorld

T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
DAY = timedelta(days=1)


def _msg(type_: str, id_: str, t: datetime, source: str = "nova/compute", **data: Any) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": id_,
            "source": source,
            "type": type_,
            "time": t.isoformat().replace("+00:00", "Z"),
            "data": {"tenant_id": "t1", **data},
        }
    )


def _quota(id_: str, t: datetime, limit: float, **extra: Any) -> bytes:
    return _msg(
        "quota.set",
        id_,
        t,
        source="admin/cli",
        actor="ops",
        level="tenant",
        entity_id="t1",
        resource_type="cpu",
        limit=limit,
        **extra,
    )


class World(StoreWorld):
    def __init__(self) -> None:
        super().__init__()
        self.offset = 0

    def send(self, raw: bytes, stream: str = "re:0", offset: int | None = None) -> list[Any]:
        if offset is None:
            self.offset += 1
            offset = self.offset
        d = decode(raw, [], record_timestamp_ms=int((T0 + 30 * DAY).timestamp() * 1000))
        emits = self.enforcer.process(with_tenant(d, "t1"), stream, offset)
        return [orjson.loads(e.value) for e in emits]

    def cpu(self) -> int:
        rec, _raw = self.enforcer.load("t1")
        return rec.tenant.usage.get("Tt1", {}).get("cpu", 0) // 1_000_000

    def limit(self) -> int:
        rec, _raw = self.enforcer.load("t1")
        return int(rec.tenant.quotas["Tt1"]["cpu"][1]) // 1_000_000  # [limit_type, limit, ...]

    def snapshot(self) -> dict[bytes, bytes]:
        return self.rows()


def test_a_conflicting_resend_of_a_create_is_ignored() -> None:
    w = World()
    w.send(_quota("q1", T0, 10))
    w.send(_msg("vm.created", "c1", T0 + timedelta(minutes=1), vm_id="vm-1", cpu=5, memory=1))
    # same source and id, other data, later time
    out = w.send(_msg("vm.created", "c1", T0 + timedelta(hours=1), vm_id="vm-1", cpu=68, memory=1))
    assert out == []
    assert w.enforcer.last_duplicate
    assert w.cpu() == 5


def test_a_resent_create_after_the_delete_does_not_bring_the_vm_back() -> None:
    w = World()
    create = _msg("vm.created", "c1", T0, vm_id="vm-1", cpu=2, memory=1)
    w.send(create)
    w.send(_msg("vm.deleted", "d1", T0 + timedelta(minutes=5), vm_id="vm-1"))
    w.send(create)
    assert w.cpu() == 0


def test_a_resent_command_with_another_limit_is_ignored() -> None:
    w = World()
    w.send(_quota("q1", T0, 10), stream="qc:0")
    w.send(_quota("q1", T0 + DAY, 1), stream="qc:0")
    assert w.enforcer.last_duplicate
    assert w.limit() == 10


def test_the_same_id_from_another_source_is_another_message() -> None:
    w = World()
    w.send(_msg("vm.created", "c1", T0, source="nova/a", vm_id="vm-1", cpu=2, memory=1))
    w.send(_msg("vm.created", "c1", T0, source="nova/b", vm_id="vm-2", cpu=3, memory=1))
    assert w.cpu() == 5


def test_a_redelivery_of_the_same_record_is_not_a_duplicate() -> None:
    """After a crash the same record (same stream and offset) comes again: it may complete its
    effect, so it must not be taken for a second message."""
    w = World()
    raw = _msg("api.requests", "a1", T0, source="gateway", count=5)
    w.send(raw, offset=7)
    w.enforcer.forget()
    w.send(raw, offset=7)
    assert not w.enforcer.last_duplicate


def test_an_identity_expires_after_the_retention_of_event_time() -> None:
    w = World()
    w.send(_msg("vm.created", "c1", T0, vm_id="vm-1", cpu=2, memory=1))
    w.send(_msg("vm.deleted", "d1", T0 + timedelta(minutes=1), vm_id="vm-1"))
    # within 7 days the re-sent delete is a duplicate
    w.send(_msg("vm.created", "c2", T0 + 6 * DAY, vm_id="vm-2", cpu=1, memory=1))
    w.send(_msg("vm.deleted", "d1", T0 + timedelta(minutes=1), vm_id="vm-1"))
    assert w.enforcer.last_duplicate
    # 8 days later the identity has expired: the message is judged on its own again
    w.send(_msg("vm.created", "c3", T0 + 8 * DAY, vm_id="vm-3", cpu=1, memory=1))
    w.send(_msg("vm.deleted", "d1", T0 + timedelta(minutes=1), vm_id="vm-1"))
    assert not w.enforcer.last_duplicate
    assert w.cpu() == 2  # and, older than what vm-1 holds, it changes nothing


def test_the_sweep_deletes_expired_identities_a_slice_at_a_time() -> None:
    w = World()
    ids = w.enforcer.identities
    day = 86_400 * SEC_US
    for i in range(10):
        ids.hold(Identities.key("t1", "s", f"old-{i}"), f"re:0:{i}", 1 * day)
        ids.hold(Identities.key("t1", "s", f"new-{i}"), f"re:0:{i}", 9 * day)
    w.store.put(Identities.key("t2", "s", "untimed"), b"re:0:1")  # no time: swept
    w.commit()

    cursor: bytes | None = b""
    rounds = 0
    while cursor is not None:
        cursor = ids.sweep(w.base.scan(0, IDENTITY, cursor), lambda t: 10 * day, budget=4)
        w.commit()  # the deletes are staged, then written with the batch
        rounds += 1
    assert rounds == 6  # 21 rows, four a slice
    assert sorted(w.rows()) == sorted(Identities.key("t1", "s", f"new-{i}") for i in range(10))


def test_an_unexpected_exception_leaves_state_as_it_was() -> None:
    w = World()
    w.send(_quota("q1", T0, 4))
    w.send(_msg("vm.created", "c1", T0 + timedelta(minutes=1), vm_id="vm-1", cpu=2, memory=1))
    before = w.snapshot()
    w.enforcer.fault_ids = frozenset({"boom"})
    # raises after the core changed the record and an instance row in memory
    with pytest.raises(InjectedFault):
        w.send(_msg("vm.created", "boom", T0 + timedelta(minutes=2), vm_id="vm-2", cpu=9, memory=1))
    assert w.snapshot() == before
    assert w.cpu() == 2  # the cached record was not kept half-changed
    # the next message is applied normally, from the state before the failed one
    out = w.send(_msg("vm.created", "c3", T0 + timedelta(minutes=3), vm_id="vm-3", cpu=3, memory=1))
    assert w.cpu() == 5
    assert [o["data"]["kind"] for o in out if o["type"] == "quota.violation"] == ["over_limit"]


def test_a_failed_message_does_not_hold_its_identity() -> None:
    """A message that did not take effect (dead-lettered) leaves its identity free, so a
    corrected message with the same id still counts."""
    w = World()
    w.enforcer.fault_ids = frozenset({"c1"})
    with pytest.raises(InjectedFault):
        w.send(_msg("vm.created", "c1", T0, vm_id="vm-1", cpu=2, memory=1))
    assert w.identities() == {}
    w.enforcer.fault_ids = frozenset()
    w.send(_msg("vm.created", "c1", T0, vm_id="vm-1", cpu=2, memory=1))
    assert w.cpu() == 2


def test_a_rejected_message_changes_nothing() -> None:
    w = World()
    w.send(_msg("vm.created", "c1", T0, vm_id="vm-1", cpu=2, memory=1))
    before = w.snapshot()
    with pytest.raises(Rejection):
        w.send(
            _msg(
                "template.applied",
                "x1",
                T0,
                source="admin/cli",
                actor="ops",
                template="no-such-tier",
                level="tenant",
                entity_id="t1",
            ),
            stream="qc:0",
        )
    assert w.snapshot() == before
