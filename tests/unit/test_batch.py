"""The write batch without a broker: when it is written, and what happens in which order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from novaquota.streams import batch as batch_module
from novaquota.streams.batch import WRITE_FAILED_EXIT, Batch
from novaquota.streams.enforce import Emit
from novaquota.streams.store.memory import MemoryBase
from novaquota.streams.store.records import instance_key
from novaquota.streams.store.tenant_store import Staged, TenantStore


class Event:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def ack(self) -> None:
        self.log.append(f"ack {self.name}")


def make(log: list[str], *, fail: bool = False, max_events: int = 3) -> tuple[Batch, MemoryBase]:
    base = MemoryBase()
    store = TenantStore(base, lambda _t: 0)

    async def write(staged: Staged) -> None:
        if fail:
            raise OSError("broker gone")
        log.append(f"write {staged.count()} rows")
        base.apply(staged)

    async def send(emit: Emit) -> None:
        log.append(f"send {emit.value.decode()}")

    return Batch(store, write, send, max_events=max_events, max_wait=60.0), base


def test_a_batch_is_due_when_full_when_old_or_when_nothing_waits() -> None:
    b, _base = make([], max_events=3)
    assert not b.due(waiting=0)  # empty
    b.add(Event([], "a"))
    assert b.due(waiting=0)
    assert not b.due(waiting=5)
    b.add(Event([], "b"))
    b.add(Event([], "c"))
    assert b.due(waiting=5)  # full
    b, _base = make([], max_events=3)
    b.add(Event([], "a"))
    b.opened -= 61
    assert b.due(waiting=5)  # waited max_wait


def test_state_is_written_before_outputs_answers_and_acks() -> None:
    log: list[str] = []
    b, base = make(log)
    b.store.put(instance_key("t1", "vm:1"), b"x")
    b.add(Event(log, "e1"), [Emit("quota-violations", b"t1", b"v1")], lambda: log.append("answer"))
    b.add(Event(log, "e2"))
    asyncio.run(b.flush())
    assert log == ["write 1 rows", "send v1", "answer", "ack e1", "ack e2"]
    assert base.dump() == {instance_key("t1", "vm:1"): b"x"}
    assert not b.events and not b.store.pending


def test_a_failed_write_stops_the_worker_without_acknowledging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[str] = []
    b, base = make(log, fail=True)
    exits: list[int] = []

    def exit_(status: int) -> Any:
        exits.append(status)
        raise SystemExit(status)

    monkeypatch.setattr(batch_module.os, "_exit", exit_)
    monkeypatch.setattr(batch_module.logging, "shutdown", lambda: None)
    b.store.put(instance_key("t1", "vm:1"), b"x")
    b.add(Event(log, "e1"), [Emit("quota-violations", b"t1", b"v1")])
    with pytest.raises(SystemExit):
        asyncio.run(b.flush())
    assert exits == [WRITE_FAILED_EXIT]
    assert log == []  # nothing sent, nothing acknowledged
    assert base.dump() == {}
