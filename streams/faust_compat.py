"""Every use of Faust's (and mode's) private names, and every patch of their code, in one place.

The worker depends on a few internals that Faust does not expose: a table partition's RocksDB
database (prefix scans, the tenant index), the consumer's committed offsets, and three places
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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

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
