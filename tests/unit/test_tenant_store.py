"""The batched write path without a broker: staged changes, a failure inside a batch, a crash
between batches, and how a batch's rows are grouped for the changelog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from novaquota.schemas.codec import decode
from novaquota.streams.enforce import InjectedFault, InstanceRows
from novaquota.streams.store.faust_base import ChangelogWriter
from novaquota.streams.store.memory import MemoryBase
from novaquota.streams.store.records import TenantRecord, instance_key, record_key
from novaquota.streams.store.tenant_store import TenantStore
from novaquota.streams.translate import with_tenant
from tests.support.world import StoreWorld

T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)


def _msg(type_: str, id_: str, minutes: int, tenant: str = "t1", **data: Any) -> bytes:
    extra = {"source": "admin/cli", "actor": "ops"} if type_.startswith("quota.") else {}
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": id_,
            "source": extra.pop("source", "nova/compute"),
            "type": type_,
            "time": (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
            "data": {"tenant_id": tenant, **extra, **data},
        }
    )


def _quota(id_: str, limit: float, tenant: str = "t1") -> bytes:
    return _msg(
        "quota.set",
        id_,
        0,
        tenant,
        level="tenant",
        entity_id=tenant,
        resource_type="cpu",
        limit=limit,
    )


def _vm(id_: str, minutes: int, vm: str, cpu: float, tenant: str = "t1") -> bytes:
    return _msg("vm.created", id_, minutes, tenant, vm_id=vm, cpu=cpu, memory=1)


class World(StoreWorld):
    def send(self, raw: bytes, offset: int, stream: str = "re:0") -> list[dict[str, Any]]:
        d = decode(raw, [], record_timestamp_ms=int((T0 + timedelta(days=1)).timestamp() * 1000))
        assert d.tenant_id is not None
        emits = self.enforcer.process(with_tenant(d, d.tenant_id), stream, offset)
        return [orjson.loads(e.value) for e in emits]

    def cpu(self, tenant: str = "t1") -> int:
        rec, _exists = self.enforcer.load(tenant)
        return rec.tenant.usage.get(f"T{tenant}", {}).get("cpu", 0) // 1_000_000


LOG = [
    _quota("q1", 10),
    _vm("c1", 1, "vm-1", 4),
    _vm("c2", 2, "vm-2", 4),
    _vm("c3", 3, "vm-3", 4),  # over the limit: a violation opens
    _vm("c4", 4, "vm-4", 1, tenant="t2"),
    _msg("vm.deleted", "d1", 5, vm_id="vm-1"),  # back under: it resolves
]


def _reference_rows() -> dict[bytes, bytes]:
    w = World()
    for offset, raw in enumerate(LOG):
        w.send(raw, offset)
    return w.rows()


def test_staged_changes_are_read_back_and_written_once_committed() -> None:
    w = World(batched=True)
    for offset, raw in enumerate(LOG[:3]):
        w.send(raw, offset)
    assert w.cpu() == 8  # read through the staged changes
    assert w.rows() == {}  # nothing committed yet
    assert w.store.committed_record("t1")[1] is False
    w.commit()
    assert w.store.committed_record("t1")[0].tenant.usage["Tt1"]["cpu"] == 8_000_000
    assert w.store.pending == 0


def test_a_batch_writes_each_tenant_record_once(monkeypatch: pytest.MonkeyPatch) -> None:
    w = World(batched=True)
    calls: list[int] = []
    to_bytes = TenantRecord.to_bytes

    def counting(self: TenantRecord) -> bytes:
        calls.append(1)
        return to_bytes(self)

    monkeypatch.setattr(TenantRecord, "to_bytes", counting)
    for offset, raw in enumerate(LOG):
        w.send(raw, offset)
    staged = w.store.take()
    assert len(calls) == 2  # t1 and t2, whatever the number of messages
    (per_tenant,) = staged.rows.values()  # one partition in memory
    assert [rows[0][0] for rows in per_tenant] == [record_key("t1"), record_key("t2")]
    # a tenant's rows travel together: its record first, then its instances and identities
    t1 = dict(per_tenant[0])
    row = t1[instance_key("t1", "vm:vm-1")]
    assert row is not None
    marker, vm1 = InstanceRows.parse(row)
    assert marker == "re:0:5" and not vm1.live  # deleted by the message at offset 5


def test_batched_and_per_message_commits_store_the_same_rows() -> None:
    w = World(batched=True)
    for offset, raw in enumerate(LOG):
        w.send(raw, offset)
        if offset in (1, 4):
            w.commit()
    w.commit()
    assert w.rows() == _reference_rows()


def test_a_failure_inside_a_batch_keeps_the_batch_s_earlier_messages() -> None:
    w = World(batched=True)
    w.enforcer.fault_ids = frozenset({"boom"})
    w.send(LOG[0], 0)
    w.send(LOG[1], 1)
    with pytest.raises(InjectedFault):  # after the core changed t1's record in memory
        w.send(_vm("boom", 2, "vm-9", 7), 2)
    assert w.cpu() == 4  # the earlier messages were done again on the committed state
    for offset, raw in enumerate(LOG[2:], start=3):
        w.send(raw, offset)
    w.commit()
    rows = w.rows()
    reference = _reference_rows()
    assert {k for k in rows if b"boom" in k or b"vm-9" in k} == set()
    assert w.cpu() == 8 and w.cpu("t2") == 1
    assert {k for k in rows} == {k for k in reference}


def test_a_crash_between_batches_replays_to_the_same_state_and_resends_outputs() -> None:
    w = World(batched=True)
    sent: list[dict[str, Any]] = []
    for offset, raw in enumerate(LOG[:4]):
        sent += w.send(raw, offset)
    w.commit()  # durable; the crash comes before the input offsets are committed
    opened = [o for o in sent if o["type"] == "quota.violation"]
    assert len(opened) == 1
    w.send(LOG[4], 4)  # staged, then lost
    w.crash()
    again: list[dict[str, Any]] = []
    for offset, raw in enumerate(LOG):  # input from the last committed offset: all of it
        again += w.send(raw, offset)
    w.commit()
    assert w.rows() == _reference_rows()
    # the applied messages changed nothing and sent their outputs again, with the same ids
    assert [o for o in again if o["type"] == "quota.violation"] == opened
    assert w.cpu() == 8


def test_rows_of_other_tenants_are_untouched_by_a_discard() -> None:
    store = TenantStore(MemoryBase(), lambda _t: 0)
    store.put(instance_key("a", "vm:1"), b"x")
    store.put(instance_key("b", "vm:1"), b"y")
    assert store.discard("a") == []
    assert store.get(instance_key("a", "vm:1")) is None
    assert store.get(instance_key("b", "vm:1")) == b"y"


def test_record_batches_never_split_a_tenant() -> None:
    writer = ChangelogWriter(None, None, max_batch_bytes=100)
    tenants = [
        [(b"ra", b"x" * 30)],
        [(b"rb", b"x" * 30), (b"ib\x1f1", b"x" * 10)],  # 70 bytes with overheads: a new batch
        [(b"rc", b"x" * 200)],  # larger than a batch: one of its own
        [(b"rd", b"x")],
    ]
    batches = list(writer._record_batches(tenants))
    assert [[k for k, _v in b] for b in batches] == [
        [b"ra"],
        [b"rb", b"ib\x1f1"],
        [b"rc"],
        [b"rd"],
    ]


def test_a_record_delivered_after_later_records_of_its_partition_still_counts() -> None:
    """Faust's drain loop can mark a record read without delivering it; a seek brings it back
    after later records of the same partition took effect. It is applied then, once."""
    w = World(batched=True)
    order = [0, 1, 2, 4, 5, 3, 3, 5]  # 3 comes late, then 3 and 5 come again (replays)
    for offset in order:
        w.send(LOG[offset], offset)
    w.commit()
    assert w.rows().keys() == _reference_rows().keys()
    assert w.cpu() == 8 and w.cpu("t2") == 1


def test_a_partition_scan_sees_the_staged_batch() -> None:
    """The worker indexes a newly owned partition (deadlines for ticks, totals) while a batch
    may be staged: the scan must see the staged records, or a burst opened by the batch would
    have its expiry deadline overwritten by the committed record before it, and never fire."""
    from novaquota.streams.quota import next_deadline

    w = World(batched=True)
    burst = _msg(
        "quota.set",
        "q1",
        0,
        level="tenant",
        entity_id="t1",
        resource_type="cpu",
        limit=4,
        burst_limit=8,
        burst_seconds=120,
    )
    w.send(burst, 0)
    w.commit()
    w.send(_vm("c1", 1, "vm-1", 6), 1)  # above the limit, within the burst: a deadline
    w.send(_vm("c2", 1, "vm-2", 1, tenant="t2"), 2)  # a tenant the batch creates

    committed = {t: TenantRecord.from_bytes(raw) for t, raw in w.store.records(0)}
    assert set(committed) == {"t1"}
    assert next_deadline(committed["t1"].state) is None

    current = dict(w.store.current_records(0))
    assert set(current) == {"t1", "t2"}
    assert next_deadline(current["t1"].state) is not None
    assert current["t1"].tenant.usage["Tt1"]["cpu"] == 6_000_000
    w.commit()
    assert dict(w.store.current_records(0)).keys() == {"t1", "t2"}
