"""Replays of a message the tenant record has applied, after a crash that lost some of its
writes: the record's changelog write reached the broker, a dedup mark written before it did not
(each changelog partition's batch is sent when it is due)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.codec import decode
from streams.enforce import Enforcer, dict_scan
from streams.translate import with_tenant

T0 = "2026-11-20T10:00:00Z"


def _event(type_: str, id_: str, time: str, **data: Any) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": id_,
            "source": "nova/compute",
            "type": type_,
            "time": time,
            "data": {"tenant_id": "t1", "project_id": "p1", "user_id": "u1", **data},
        }
    )


class World:
    def __init__(self) -> None:
        self.tenants: dict[bytes, bytes] = {}
        self.instances: dict[bytes, bytes] = {}
        self.dedup: dict[bytes, bytes] = {}
        self.enforcer = Enforcer(
            self.tenants, self.instances, dict_scan(self.instances), dedup=self.dedup
        )

    def process(self, raw: bytes, offset: int) -> None:
        now_ms = int(datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp() * 1000)
        d = decode(raw, [], record_timestamp_ms=now_ms)
        self.enforcer.process(with_tenant(d, "t1"), "re:0", offset)

    def usage(self) -> dict[str, int]:
        rec, _raw = self.enforcer.load("t1")
        return {r: a for r, a in rec.tenant.usage.get("Tt1", {}).items() if a}

    def windows(self) -> dict[str, list[int]]:
        rec, _raw = self.enforcer.load("t1")
        return dict(rec.tenant.windows)

    def crash(self) -> None:
        """A new process: nothing cached."""
        self.enforcer.forget()


def test_a_row_newer_than_the_replayed_message_is_kept() -> None:
    w = World()
    w.process(_event("vm.created", "e1", T0, vm_id="vm-1", cpu=2, memory=8192), 10)
    resized = _event("vm.resized", "e2", "2026-11-20T10:05:00Z", vm_id="vm-1", cpu=4, memory=1)
    w.process(resized, 11)
    row_before = dict(w.instances)
    w.crash()
    w.process(_event("vm.created", "e1", T0, vm_id="vm-1", cpu=2, memory=8192), 10)
    assert w.instances == row_before  # not set back to the older allocation
    assert w.usage()["cpu"] == 4_000_000


def test_a_lost_dedup_mark_is_rebuilt_so_a_later_duplicate_is_not_counted_twice() -> None:
    w = World()
    calls = orjson.dumps(
        {
            "specversion": "1.0",
            "id": "api-1",
            "source": "gateway",
            "type": "api.requests",
            "time": T0,
            "data": {"tenant_id": "t1", "project_id": "p1", "user_id": "u1", "count": 5},
        }
    )
    w.process(calls, 20)
    counted = w.windows()
    assert counted["Tt1\x1fapi_requests"][1] == 5_000_000
    w.dedup.clear()  # its mark did not reach the broker
    w.crash()
    w.process(calls, 20)  # redelivered
    assert len(w.dedup) == 1
    w.process(calls, 21)  # the same event published twice by its producer
    assert w.windows() == counted
