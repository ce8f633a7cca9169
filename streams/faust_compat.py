"""Every use of Faust's (and mode's) private names, and every patch of their code, in one place.

The worker depends on a few internals that Faust does not expose: a table partition's RocksDB
database (prefix scans, the tenant index), the consumer's committed offsets, and four places
where Faust's behaviour has to change. ``install`` checks that the installed versions are the
ones these were written against and applies the patches once; ``PATCHED`` names each patched
function with a hash of its source as released, and a unit test fails when an upgrade changes
one of them, so a patch is never applied blindly over code it was not written for.

The patches:

- ``Consumer.on_buffer_full``: a no-op. Faust drops a partition from the active set when its
  agent buffer is under pressure and did not always put it back; the conductor already waits
  for room in a full buffer, which is all the back-pressure needed.
- ``ProducerBuffer.flush``: waits for every write buffered before it was called. Faust's
  returns after 0.1 s without a message leaving the buffer, so a commit or a rebalance could
  cover a message whose changelog writes were unsent.
- ``RocksDBOptions.as_options``: one block cache for every table and partition database, with
  the memtables charged to it, so RocksDB's memory is bounded by one setting.
- ``Consumer._drain_messages``: a record is marked read only once it is in its agents' buffers.
  Faust's loop raced each hand-over against a flow suspension and marked the record read
  whichever won, so a record waiting for room in a full buffer when flow stopped was never
  delivered, and without a later seek never read again. The copy calls the conductor only when
  nothing can make it wait (then directly, without ``wait_first``) and otherwise first waits for
  what it would wait for, racing a suspension, so a hand-over either completes or leaves
  nothing behind (``_HandOverGate``). Records of input partitions also wait while a rebalance
  is in progress: Faust clears the agents' buffers when it resumes flow at the end of one, after
  it has resumed and sought those partitions. A record not handed over is not marked
  read: its partition is sought back to it, in the consumer thread, only when the fetch position
  is past it (so never forward past where Faust's recovery put it), and the rest of that fetch
  for the partition is left. A later record that passes over such a record without any seek in
  between is not handed over either: the loop logs an error and seeks back (``_check_hole``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib import metadata
from typing import Any, cast

__all__ = [
    "PATCHED",
    "VERSIONS",
    "committed_offset",
    "flowing_partitions",
    "install",
    "kafka_producer",
    "open_dbs",
    "partition_db",
    "share_rocksdb_memory",
    "source_hash",
    "waiting_input",
    "write_partition",
]

log = logging.getLogger(__name__)

VERSIONS = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1"}
"""The releases whose internals this module was written against."""

PATCHED = {
    "faust.transport.consumer:Consumer.on_buffer_full": "c8961679e0bc",
    "faust.transport.producer:ProducerBuffer.flush": "26fbebb124ad",
    "faust.transport.producer:ProducerBuffer._send_pending": "4a9d5f932b56",
    "faust.stores.rocksdb:RocksDBOptions.as_options": "d2a1bea17736",
    "faust.transport.consumer:Consumer._drain_messages": "44a2500309e8",
}
"""Each patched function, with the first 12 hex digits of the SHA-256 of its released source."""


class UnsupportedVersion(RuntimeError):
    """The installed Faust or mode is not the release this module was written against."""


def source_hash(qualified: str) -> str:
    """SHA-256 (12 hex digits) of the source of ``module:Class.function`` as installed now
    (the original, even after ``install``: the patches keep it as ``__wrapped_original__``)."""
    module_name, _, attr_path = qualified.partition(":")
    obj: Any = __import__(module_name, fromlist=["_"])
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    obj = getattr(obj, "__wrapped_original__", obj)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:12]


def check_versions() -> None:
    wrong = {
        name: metadata.version(name)
        for name, want in VERSIONS.items()
        if metadata.version(name) != want
    }
    if wrong:
        raise UnsupportedVersion(
            f"streams.faust_compat was written for {VERSIONS}, found {wrong}: review the "
            "patches in streams/faust_compat.py against the new release, then update VERSIONS "
            "and PATCHED"
        )


_installed: dict[str, Any] = {}


def install(rocksdb_memory_bytes: int) -> None:
    """Check the versions and apply every patch (once per process)."""
    check_versions()
    share_rocksdb_memory(rocksdb_memory_bytes)
    if "patches" in _installed:
        return
    from faust.transport.consumer import Consumer
    from faust.transport.producer import ProducerBuffer

    _installed["patches"] = True
    _patch(Consumer, "on_buffer_full", _on_buffer_full)
    _patch(ProducerBuffer, "_send_pending", _counting_send_pending(ProducerBuffer._send_pending))
    _patch(ProducerBuffer, "flush", _flush_fully)
    _patch(Consumer, "_drain_messages", _drain_messages)


def _patch(owner: Any, name: str, replacement: Any) -> None:
    replacement.__wrapped_original__ = getattr(owner, name)
    setattr(owner, name, replacement)


# --- reads of private state --------------------------------------------------------------------


def partition_db(table: Any, partition: int) -> Any:
    """The RocksDB database of one partition of a Faust table (opened if it is not)."""
    return table.data._db_for_partition(partition)


def open_dbs(table: Any) -> dict[int, Any] | None:
    """The RocksDB databases a table has open, by partition (None for an in-memory store)."""
    dbs = getattr(table.data, "_dbs", None)
    return None if dbs is None else dict(dbs)


def write_partition(
    table: Any, partition: int, rows: Iterator[tuple[bytes, bytes | None]], offset: int
) -> None:
    """Write rows (None deletes) and the changelog offset they reach to one partition's
    RocksDB database, in one atomic ``WriteBatch``. The offset goes where Faust's own
    changelog writes keep it (``set_persisted_offset``), so its recovery resumes after it."""
    import rocksdict

    db = table.data._db_for_partition(partition)
    batch = rocksdict.WriteBatch(raw_mode=True)
    for key, value in rows:
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    batch.put(table.data.offset_key, str(offset).encode())
    db.write(batch)


def kafka_producer(app: Any) -> Any:
    """The aiokafka producer under Faust's (for record batches: ``create_batch``)."""
    return app.producer._ensure_producer()


def waiting_input(stream: Any) -> int:
    """Events waiting in an agent's input buffer."""
    return int(stream.channel.queue.qsize())


def flowing_partitions(app: Any) -> tuple[set[Any], set[Any]] | None:
    """The consumer's active and paused partitions (None before it has any)."""
    consumer = app.consumer
    active = getattr(consumer, "_active_partitions", None)
    if active is None:
        return None
    return set(active), set(getattr(consumer, "_paused_partitions", set()))


def committed_offset(app: Any, tp: Any) -> int | None:
    """The consumer's last committed offset of ``tp`` (None when nothing is committed)."""
    committed: Any = getattr(app.consumer, "_committed_offset", {})
    value = committed.get(tp)
    return None if value is None else int(value)


# --- flow control --------------------------------------------------------------------------


def _on_buffer_full(self: Any, tp: Any) -> None:
    return None


# --- the producer buffer's flush ---------------------------------------------------------------


def _counting_send_pending(send_one: Callable[..., Any]) -> Callable[..., Any]:
    async def _send_pending(self: Any, fut: Any) -> None:
        await send_one(self, fut)
        self.novaquota_sent = getattr(self, "novaquota_sent", 0) + 1

    return _send_pending


async def _flush_fully(self: Any, deadline_seconds: float = 120.0) -> None:
    """Wait until every message that was in the buffer when called has left (messages added
    meanwhile are not waited for, so a commit under load still completes), or log an error
    after ``deadline_seconds``."""
    started = time.monotonic()
    # the buffer is FIFO: once this many messages have been sent, all of these are out
    target = getattr(self, "novaquota_sent", 0) + self.size
    while self.size and getattr(self, "novaquota_sent", 0) < target:
        if self.state != "running":
            raise RuntimeError("Cannot flush: Producer not Running")
        if time.monotonic() - started > deadline_seconds:
            left = target - getattr(self, "novaquota_sent", 0)
            log.error("producer buffer not drained after %.0fs: %d left", deadline_seconds, left)
            return
        self.message_sent.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)


# --- the drain loop's hand-over ----------------------------------------------------------------


async def _drain_messages(self: Any, fetcher: Any) -> None:
    """``Consumer._drain_messages`` as released, except the lines marked ``novaquota``: a record
    is marked read only once its agents have it (see the module docstring)."""
    from faust.transport.consumer import CONSUMER_FETCHING

    # This is the background thread started by Fetcher, used to
    # constantly read messages using Consumer.getmany.
    # It takes Fetcher as argument, because we must be able to
    # stop it using `await Fetcher.stop()`.
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for
    gate = _HandOverGate(self)  # novaquota
    holes: dict[Any, _Hole] = {}  # novaquota: a record not handed over, by partition

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = getmany(timeout=1.0)
            left: set[Any] = set()  # novaquota: partitions whose rest of this fetch is left

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    # novaquota: nothing after a record that was not handed over, in the same
                    # fetch or in a later one that passes over it without a seek back to it
                    if left and tp in left:
                        continue
                    if holes and tp in holes and await _check_hole(self, holes, tp, offset):
                        left.add(tp)
                        continue
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:  # noqa: SIM102 (as released)
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        # novaquota: was `await self.wait_first(callback(message),
                        # self.suspend_flow.wait())`, and the record marked read whichever won
                        if gate.ready(tp):
                            await callback(message)
                        elif not await gate.hand_over(tp, message):
                            await _leave(self, holes, tp, offset)
                            left.add(tp)
                            continue
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                            offset,
                            message.key,
                            message.value,
                        )
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)


class _HandOverGate:
    """When a record can be handed to its agents, and its hand-over when it has to wait.

    Faust's conductor hands a record over after waiting, in turn, for its callback lock, flow
    control, the producer buffer to ebb and room in each subscribed agent buffer; for a full one
    it starts a ``put`` task that nothing cancels, so it may deliver the record after the
    hand-over was given up. Here the conductor is called only when none of these has to wait:
    it then runs to its end without yielding to the event loop, so no flow suspension can come
    in between (and it is awaited directly: 0.13 µs, where ``wait_first`` costs 50 to 74 µs).
    Until then the loop waits for each of them itself, racing a flow suspension.

    A record of an input partition also waits while a rebalance is in progress (changelog
    records do not: they are the recovery). Faust resumes input partitions before it seeks them
    to their committed offsets and then resumes flow control, which clears the agents' buffers:
    a record handed over in between, from a fetch made after that seek, was dropped from the
    buffer with its partition's position already past it.
    """

    def __init__(self, consumer: Any) -> None:
        app = consumer.app
        conductor = app.topics
        self.app = app
        self.consumer = consumer
        self.callback = consumer.callback
        self.suspended = consumer.suspend_flow
        self.flow_control = app.flow_control
        self.buffer = app.producer.buffer
        # TP -> the channels (agent buffers) its records go to; the lock the callback takes
        self.tp_index: Any = conductor._tp_index
        self.lock: Any = conductor._tp_to_callback_lock

    def ready(self, tp: Any) -> bool:
        """True when a record of ``tp`` can be handed over, and its hand-over cannot wait."""
        lock = self.lock
        buffer = self.buffer
        return (
            not self.suspended.is_set()
            and not self.withheld(tp)
            and not lock.locked()
            and not lock._waiters
            and self.flow_control.is_active()
            and buffer.size <= buffer.max_messages
            and self.full_queue(tp) is None
        )

    def withheld(self, tp: Any) -> bool:
        return bool(self.app.rebalancing) and not self.consumer._is_changelog_tp(tp)

    def full_queue(self, tp: Any) -> Any | None:
        """An agent buffer of ``tp`` that is full, if any."""
        for channel in self.tp_index.get(tp, ()):
            queue = channel.queue
            if queue.full():
                return queue
        return None

    def next_wait(self, tp: Any) -> Awaitable[None] | None:
        """What a hand-over of a record of ``tp`` would wait for first (None: nothing)."""
        lock = self.lock
        buffer = self.buffer
        if self.withheld(tp):
            return _rebalance_over(self.app)
        if lock.locked() or lock._waiters:
            return _lock_free(lock)
        if not self.flow_control.is_active():
            return self.flow_control.acquire()
        if buffer.size > buffer.max_messages:
            return buffer.wait_until_ebb()
        queue = self.full_queue(tp)
        return None if queue is None else _room_in(queue)

    async def hand_over(self, tp: Any, message: Any) -> bool:
        """Hand ``message`` over once nothing has to wait: True when its agents have it, False
        when flow was suspended (or the consumer stopped) first, and then none of them has it."""
        consumer = self.consumer
        suspended = self.suspended
        while not suspended.is_set():
            wait = self.next_wait(tp)
            if wait is None:
                await self.callback(message)  # cannot yield: see the class docstring
                return True
            if (await consumer.wait_first(wait, suspended.wait())).stopped:
                return False
        return False


async def _lock_free(lock: asyncio.Lock) -> None:
    async with lock:
        pass


async def _rebalance_over(app: Any) -> None:
    while app.rebalancing:  # no event marks its end (App.on_rebalance_end)
        await asyncio.sleep(0.01)


async def _room_in(queue: Any) -> None:
    """Wait until ``queue`` has room, as ``asyncio.Queue.put`` does, without putting anything;
    or until it is cleared (mode's ``ThrowableQueue.clear`` cancels the waiting putters)."""
    loop = asyncio.get_running_loop()
    while queue.full():
        putter = loop.create_future()
        queue._putters.append(putter)
        try:
            await putter
        except asyncio.CancelledError:
            putter.cancel()
            with contextlib.suppress(ValueError):
                queue._putters.remove(putter)
            task = asyncio.current_task()
            if task is None or not task.cancelling():
                return  # cleared: the caller looks again
            if not queue.full() and not putter.cancelled():
                queue._wakeup_next(queue._putters)  # pass on a wake-up this waiter cannot take
            raise


class _Hole:
    """A record that was not handed over: where, and what its partition looked like then."""

    __slots__ = ("mark", "offset", "passed")

    def __init__(self, offset: int, mark: tuple[int, Any]) -> None:
        self.offset = offset
        self.mark = mark
        self.passed = False


def _mark(consumer: Any, tp: Any) -> tuple[int, Any]:
    """What changes when Faust moves a partition: a rebalance (a new assignment takes its
    position from the committed offset), or Faust's read offset set by a seek of its own (it is
    not set for a record that was not handed over, nor by ``_seek_back``)."""
    return consumer.app.rebalancing_count, consumer._read_offset.get(tp)


async def _leave(consumer: Any, holes: dict[Any, _Hole], tp: Any, offset: int) -> None:
    """A record was not handed over: it is not marked read, and its partition is sought back to
    it unless the position is there already (``_seek_back``)."""
    holes[tp] = _Hole(offset, _mark(consumer, tp))
    if consumer.should_stop:
        return
    sought = await _seek_back(consumer, tp, offset)
    log.info(
        "%s[%d]: flow stopped while offset %d was being handed over: left unread%s",
        tp.topic,
        tp.partition,
        offset,
        ", partition sought back to it" if sought else "",
    )


async def _check_hole(consumer: Any, holes: dict[Any, _Hole], tp: Any, offset: int) -> bool:
    """True when a record of ``tp`` at ``offset`` passes over its record that was not handed
    over, with no seek since: then it is not handed over either, and the partition is sought
    back (once; if the record still does not come, it is gone from the log and reading goes on).
    Faust would take the missing offset for a gap and commit past it."""
    hole = holes[tp]
    if offset <= hole.offset or _mark(consumer, tp) != hole.mark:
        del holes[tp]  # read again from it (or before), or Faust has moved the partition since
        return False
    if hole.passed:
        log.error(
            "%s[%d]: offset %d still does not come after a seek back to it (%d came): it is "
            "no longer in the log; reading on",
            tp.topic,
            tp.partition,
            hole.offset,
            offset,
        )
        del holes[tp]
        return False
    hole.passed = True
    log.error(
        "%s[%d]: offset %d was not handed over and reading went on at %d without a seek back "
        "to it; seeking back",
        tp.topic,
        tp.partition,
        hole.offset,
        offset,
    )
    await _seek_back(consumer, tp, hole.offset)
    return True


async def _seek_back(consumer: Any, tp: Any, offset: int) -> bool | None:
    """Seek ``tp`` back to ``offset`` if its fetch position is past it: True when sought, False
    when the position is at or before ``offset`` already, None when there is no position to move
    (not assigned, or a new assignment whose position comes from the committed offset) or the
    consumer could not be asked.

    It runs in the consumer thread, as one step of its event loop: position changes happen
    there (records returned by a fetch, ``seek_to_committed``), so nothing moves the position
    between the check and the seek. A seek back thus never moves a position forward, past
    records that Faust's rebalance sought it back to after clearing them from the agents'
    buffers, as an unchecked seek landing after Faust's ``perform_seek`` would.
    """
    thread: Any = getattr(consumer, "_thread", None)
    try:
        return cast(
            "bool | None",
            await thread.call_thread(_seek_back_here, thread._ensure_consumer(), tp, offset),
        )
    except Exception as exc:  # e.g. the consumer thread stopped
        log.warning("%s[%d]: could not seek back to %d: %r", tp.topic, tp.partition, offset, exc)
        return None


def _seek_back_here(kafka_consumer: Any, tp: Any, offset: int) -> bool | None:
    """``_seek_back`` in the consumer thread, on its aiokafka consumer."""
    subscription = kafka_consumer._subscription
    if not subscription.is_assigned(tp):
        return None
    state = subscription.subscription.assignment.state_value(tp)
    if state is None or not state.has_valid_position:
        return None
    if state.position <= offset:
        return False
    kafka_consumer.seek(tp, offset)
    return True


# --- RocksDB memory ----------------------------------------------------------------------------

_shared_rocksdb: dict[str, Any] = {}


def share_rocksdb_memory(total_bytes: int) -> None:
    """One block cache for every table and partition database of this process, with the
    memtables charged to it through a write-buffer manager (RocksDB's documented way to cap the
    memory of many databases). Faust builds options per database with a cache of its own."""
    import rocksdict
    from faust.stores.rocksdb import RocksDBOptions

    cache = rocksdict.Cache(total_bytes)
    _shared_rocksdb["cache"] = cache
    _shared_rocksdb["write_buffers"] = (
        rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            total_bytes // 2, False, cache
        )
    )
    if "rocksdb" in _installed:
        return
    _installed["rocksdb"] = True
    own_options = RocksDBOptions.as_options

    def as_options(self: Any) -> Any:
        if not self.use_rocksdict:
            return own_options(self)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_max_open_files(self.max_open_files)
        opts.set_write_buffer_size(self.write_buffer_size)
        opts.set_target_file_size_base(self.target_file_size_base)
        opts.set_max_write_buffer_number(self.max_write_buffer_number)
        opts.set_write_buffer_manager(_shared_rocksdb["write_buffers"])
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(self.bloom_filter_size, block_based=True)
        table.set_block_cache(_shared_rocksdb["cache"])
        table.set_cache_index_and_filter_blocks(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        opts.set_block_based_table_factory(table)
        return opts

    _patch(RocksDBOptions, "as_options", as_options)
