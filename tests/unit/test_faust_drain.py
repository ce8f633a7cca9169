"""The drain loop marks a record read only once its agent has it (``faust_compat._drain_messages``,
issue #13).

No broker: a real Faust app, consumer (aiokafka driver), conductor and agent buffer, with Faust's
consumer thread replaced by one partition's log in memory (its fetch position kept by a real
aiokafka ``SubscriptionState``). Each test runs the real drain loop, stock or patched, and
suspends flow while a record is being handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import faust
import pytest
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import ConsumerRecord
from faust.transport.consumer import Consumer
from faust.types import TP
from mode.utils.futures import maybe_async

from novaquota.streams import faust_compat

TP0 = TP("events", 0)

Drain = Callable[[Any, Any], Coroutine[Any, Any, None]]
STOCK: Drain = getattr(Consumer._drain_messages, "__wrapped_original__", Consumer._drain_messages)
PATCHED: Drain = faust_compat._drain_messages


class Log:
    """One partition's log and fetch position, as the aiokafka consumer in Faust's consumer
    thread holds them: a fetch returns up to ``batch`` records from the position and moves it on."""

    def __init__(self, n: int, batch: int, start: int = 0) -> None:
        self.records = [
            ConsumerRecord("events", 0, i, 0, 0, None, b"%d" % i, None, 0, 2, []) for i in range(n)
        ]
        self.batch = batch
        self._subscription = SubscriptionState()  # read by faust_compat._seek_back_here
        self._subscription.assign_from_user({TP0})
        self._subscription.seek(TP0, start)
        self.seeks: list[int] = []
        self.fetches = 0

    def state(self) -> Any:
        return self._subscription.subscription.assignment.state_value(TP0)

    @property
    def position(self) -> int:
        return int(self.state().position)

    def seek(self, tp: Any, offset: int) -> None:  # AIOKafkaConsumer.seek
        self.seeks.append(offset)
        self._subscription.seek(tp, offset)

    def fetch(self) -> dict[Any, list[Any]]:
        self.fetches += 1
        start = self.position
        got = self.records[start : start + self.batch]
        if got:
            self.state().consumed_to(start + len(got))
        return {TP0: got} if got else {}


class Thread:
    """Faust's consumer thread (``AIOKafkaConsumerThread``) as far as the consumer uses it.
    ``held`` holds every call into the thread until set; ``failing`` makes that many raise."""

    def __init__(self, log: Log, committed: dict[Any, int]) -> None:
        self.log = log
        self.committed = committed
        self.held: asyncio.Event | None = None
        self.failing = 0

    async def getmany(self, active_partitions: set[Any], timeout: float) -> dict[Any, list[Any]]:
        records = self.log.fetch() if TP0 in active_partitions else {}
        if not records:
            await asyncio.sleep(0.002)
        return records

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.held is not None:
            await self.held.wait()
        if self.failing:
            self.failing -= 1
            raise RuntimeError("consumer thread did not answer")
        return await maybe_async(fun(*args, **kwargs))

    def _ensure_consumer(self) -> Log:
        return self.log

    def seek(self, tp: Any, offset: int) -> None:
        self.log.seek(tp, offset)

    async def seek_to_committed(self) -> dict[Any, int | None]:
        offset = self.committed.get(TP0)
        if offset:
            self.log.seek(TP0, offset)
        return {TP0: offset}

    def assignment(self) -> set[Any]:
        return {TP0}

    def highwater(self, tp: Any) -> int:
        return len(self.log.records)


class Worker:
    """The app with one agent buffer of ``buffer`` records on partition 0 of ``events``, whose
    agent takes a record (and commits after it) only while allowed to."""

    def __init__(
        self,
        drain: Drain,
        *,
        n: int,
        batch: int,
        buffer: int = 4,
        rebalancing: bool = False,
        committed: int = 0,
    ) -> None:
        self.drain = drain
        self.rebalancing = rebalancing
        self.n = n
        self.app = faust.App(
            f"drain-test-{id(self)}", broker="kafka://localhost:1", web_enabled=False
        )
        channel: Any = self.app.topic("events", value_serializer="raw").clone(
            is_iterator=True, maxsize=buffer
        )
        self.app.topics.add(channel)
        self.queue = channel.queue
        consumer: Any = self.app.consumer
        # as in the worker (faust_compat._on_buffer_full); read when the conductor builds its
        # handler for the partition
        consumer.on_buffer_full = lambda tp: None
        self.committed: dict[Any, int] = {TP0: committed} if committed else {}
        self.log = Log(n, batch, start=committed)
        self.thread = Thread(self.log, self.committed)
        consumer._thread = self.thread
        self.consumer = consumer
        self.fetcher = _Fetcher()
        self.seen: list[int] = []
        self.agent_runs = asyncio.Event()
        self.budget: int | None = None  # records the agent may still take, None: any
        self.tasks: list[asyncio.Future[Any]] = []

    async def __aenter__(self) -> Worker:
        await self.app.topics.on_partitions_assigned({TP0})
        self.consumer._set_active_tps({TP0})
        self.app.flow_control.resume()
        if self.rebalancing:
            self.app.on_rebalance_start()
        self.tasks = [
            asyncio.ensure_future(self.drain(self.consumer, self.fetcher)),
            asyncio.ensure_future(self.agent()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.fetcher._stopped.set()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def agent(self) -> None:
        while True:
            await self.agent_runs.wait()
            if self.budget is not None:
                if self.budget == 0:
                    self.agent_runs.clear()
                    continue
                self.budget -= 1
            event = await self.queue.get()
            offset = event.message.offset
            self.seen.append(offset)
            self.committed[TP0] = offset + 1

    def waiting_for_room(self) -> bool:
        return self.queue.full() and bool(self.queue._putters)

    async def revoke(self) -> None:
        """What ``App._on_partitions_revoked`` does to flow (aiokafka calls
        ``on_rebalance_start`` first)."""
        self.app.on_rebalance_start()
        self.consumer.stop_flow()
        self.app.flow_control.suspend()
        self.consumer.pause_partitions({TP0})
        self.app.flow_control.clear()

    async def recover(self) -> None:
        """What ``Recovery.on_recovery_completed`` does to flow."""
        self.consumer.resume_partitions({TP0})
        await self.consumer.perform_seek()
        self.app.flow_control.resume()
        self.consumer.resume_flow()


class _Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True


async def settle() -> None:
    await asyncio.sleep(0.02)


async def stop_flow_while_handing_over(w: Worker) -> None:
    """Flow control suspended until the first fetch of 12 is in, then the consumer's flow
    stopped while the hand-over of offset 0 waits, then both resumed; wait for the rest."""
    w.agent_runs.set()
    w.app.flow_control.suspend()
    assert await until(lambda: w.log.position == 12)
    await settle()
    w.consumer.stop_flow()
    await settle()
    w.app.flow_control.resume()
    w.consumer.resume_flow()  # the next fetch starts at 12, past offset 0
    await until(lambda: len(w.seen) >= w.n, timeout=1.0)
    await settle()


def run(coro: Awaitable[Worker]) -> Worker:
    async def main() -> Worker:
        return await coro

    return asyncio.run(main())


# --- the race: flow stopped while a record is being handed over ---------------------------------


async def stopped_while_waiting_for_room(drain: Drain) -> Worker:
    """The agent's buffer is full and the drain loop waits for room for offset 4 when flow is
    stopped; flow is resumed without a seek (as the worker's watchdog resumes it)."""
    async with Worker(drain, n=12, batch=12) as w:
        assert await until(w.waiting_for_room)
        w.consumer.stop_flow()
        await settle()
        w.agent_runs.set()
        await settle()
        w.consumer.resume_flow()
        await until(lambda: len(w.seen) >= w.n, timeout=1.0)
        await settle()
    return w


async def stopped_while_waiting_for_flow_control(drain: Drain) -> Worker:
    """The hand-over of offset 0 waits for flow control when the consumer's flow is stopped
    (no agent buffer is full, so the conductor starts no ``put`` of its own)."""
    async with Worker(drain, n=12, batch=12) as w:
        await stop_flow_while_handing_over(w)
    return w


Race = Callable[[Drain], Awaitable[Worker]]


@pytest.mark.parametrize(
    ("race", "left"),
    [
        pytest.param(stopped_while_waiting_for_room, 4, id="full-agent-buffer"),
        pytest.param(stopped_while_waiting_for_flow_control, 0, id="flow-control"),
    ],
)
def test_a_record_not_handed_over_is_read_again(race: Race, left: int) -> None:
    w = run(race(PATCHED))
    assert w.seen == list(range(w.n))  # every offset once, in order, no gap
    assert w.log.seeks == [left]  # the partition was sought back to the record left


@pytest.mark.parametrize(
    ("race", "seen"),
    [
        # the conductor's own put for the full buffer delivers 4 once there is room
        pytest.param(stopped_while_waiting_for_room, [0, 1, 2, 3, 4], id="full-agent-buffer"),
        pytest.param(stopped_while_waiting_for_flow_control, [], id="flow-control"),
    ],
)
def test_stock_faust_skips_records_in_the_same_race(race: Race, seen: list[int]) -> None:
    """Faust's own loop in the same race: the record is marked read whether it was delivered
    or not, the rest of the fetch is dropped, and nothing seeks back."""
    w = run(race(STOCK))
    assert w.seen == seen
    assert w.log.seeks == []


# --- the seek back against Faust's recovery ----------------------------------------------------


async def revoked_while_waiting_for_room(drain: Drain) -> Worker:
    """The agent has taken (and committed) offsets 0 and 1, 2-5 fill its buffer, and offset 6
    waits for room when the partitions are revoked: flow stops and the buffer is cleared. The
    drain loop's seek back reaches the consumer thread only after Faust's recovery has sought
    the partition to its committed offset, 2, and resumed flow."""
    async with Worker(drain, n=12, batch=12) as w:
        w.budget = 2
        w.agent_runs.set()
        assert await until(lambda: w.seen == [0, 1] and w.waiting_for_room())
        w.thread.held = asyncio.Event()
        await w.revoke()
        await settle()
        await w.recover()  # perform_seek does not go through call_thread in this harness
        w.app.on_rebalance_end()
        w.thread.held.set()
        w.budget = None
        w.agent_runs.set()
        await until(lambda: len(w.seen) >= w.n, timeout=1.0)
        await settle()
    return w


def test_a_late_seek_back_never_moves_the_position_past_faust_recovery() -> None:
    w = run(revoked_while_waiting_for_room(PATCHED))
    assert w.seen == list(range(w.n))
    assert w.log.seeks == [2]  # Faust's seek to the committed offset only


def test_stock_faust_recovers_this_one_by_its_seek_to_committed() -> None:
    w = run(revoked_while_waiting_for_room(STOCK))
    assert w.seen == list(range(w.n))


def test_an_unchecked_seek_back_would_lose_the_cleared_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The previous attempt: seeking to the record left, after Faust's recovery, moved the
    position past 2-5, which the revocation had cleared from the agent's buffer."""

    def seek_anyway(kafka_consumer: Any, tp: Any, offset: int) -> bool:
        kafka_consumer.seek(tp, offset)
        return True

    monkeypatch.setattr(faust_compat, "_seek_back_here", seek_anyway)
    w = run(revoked_while_waiting_for_room(PATCHED))
    assert w.log.seeks == [2, 6]
    assert sorted(set(range(w.n)) - set(w.seen)) == [2, 3, 4, 5]


# --- records fetched while a rebalance completes ----------------------------------------------


async def fetched_while_a_rebalance_completes(drain: Drain, committed: int) -> Worker:
    """Flow is active while a rebalance's recovery completes (standby partitions are read then),
    and the input partition is already resumed when its records are fetched from the committed
    offset; then Faust seeks it to its committed offset (aiokafka seeks only to one above 0) and
    resumes flow control, which clears the agent's buffer."""
    async with Worker(drain, n=12, batch=12, rebalancing=True, committed=committed) as w:
        assert await until(lambda: w.log.fetches >= 1)
        await settle()
        await w.consumer.perform_seek()
        w.app.flow_control.resume()
        w.consumer.resume_flow()
        w.app.on_rebalance_end()
        w.agent_runs.set()
        await until(lambda: len(w.seen) >= w.n - committed, timeout=1.0)
        await settle()
    return w


@pytest.mark.parametrize("committed", [0, 3])
def test_input_records_wait_for_the_rebalance_to_complete(committed: int) -> None:
    w = run(fetched_while_a_rebalance_completes(PATCHED, committed))
    # Faust's seek to the committed offset came after the fetch: the fetch is read again, and
    # Faust's read offset (the next offset after its own seek, the last one read after a
    # record) lets its last record through twice, in order, as its stock loop does
    again = [w.n - 1] if committed else []
    assert w.seen == list(range(committed, w.n)) + again
    assert w.log.seeks == ([committed] if committed else [])


def test_stock_faust_loses_the_records_it_hands_over_before_the_buffers_are_cleared() -> None:
    w = run(fetched_while_a_rebalance_completes(STOCK, 0))
    assert sorted(set(range(w.n)) - set(w.seen)) == [0, 1, 2, 3, 4]


# --- an offset passed over without a seek back to it --------------------------------------------


def test_a_record_passed_over_without_a_seek_stops_the_partition_and_seeks_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> Worker:
        async with Worker(PATCHED, n=20, batch=12) as w:
            w.thread.failing = 1  # the seek back after the hand-over does not reach the thread
            await stop_flow_while_handing_over(w)
        return w

    with caplog.at_level(logging.INFO, logger="novaquota.streams.faust_compat"):
        w = run(scenario())
    assert w.seen == list(range(w.n))
    assert w.log.seeks == [0]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "events[0]: offset 0 was not handed over and reading went on at 12 without a seek "
        "back to it; seeking back"
    ]


# --- the direct hand-over ----------------------------------------------------------------------


@pytest.mark.parametrize("buffer", [4096, 4])
def test_records_are_handed_over_in_order_without_wait_first_while_there_is_room(
    buffer: int,
) -> None:
    waits: list[tuple[Any, ...]] = []

    async def scenario() -> Worker:
        async with Worker(PATCHED, n=500, batch=100, buffer=buffer) as w:
            wait_first = w.consumer.wait_first

            async def counting(*coros: Any, **kwargs: Any) -> Any:
                waits.append(coros)
                return await wait_first(*coros, **kwargs)

            w.consumer.wait_first = counting
            w.agent_runs.set()
            assert await until(lambda: len(w.seen) >= w.n)
            await settle()
        return w

    w = run(scenario())
    assert w.seen == list(range(w.n))
    assert w.log.seeks == []
    if buffer > w.n:
        assert waits == []  # every record handed over directly
    else:
        assert waits  # waited for room, and then handed over
