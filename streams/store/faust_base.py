"""The worker's committed rows: a Faust table's RocksDB partitions and its changelog topic.

Faust declares the table (its changelog topic, standby replicas, recovery and the router that
tells which worker owns a key), and restores each partition's RocksDB from the changelog after
a rebalance or on a new machine. The worker does not write through the table API, which sends
one changelog record per write and writes RocksDB at once, ahead of its changelog. It writes a
batch of staged changes (``ChangelogWriter.write``) in this order:

1. every row to the changelog, one record batch per changelog partition (Kafka appends a record
   batch whole, so a tenant's rows of one batch land together or not at all), awaiting the
   broker's acknowledgement of each;
2. then, per partition, one RocksDB ``WriteBatch`` with the rows and the changelog offset reached
   (the offset Faust's recovery resumes from), so local state is never ahead of its changelog;
3. only then may the caller acknowledge the input offsets the batch consumed.

A failed write raises; the caller must stop the worker without acknowledging (it restarts and
processes the batch's input again).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from novaquota.streams import faust_compat
from novaquota.streams.store.tenant_store import Row, Staged

__all__ = ["ChangelogWriter", "FaustBase", "RdictBase", "rdict_scan"]

log = logging.getLogger(__name__)

RECORD_OVERHEAD = 24
"""Bytes a record adds to a record batch beyond its key and value (varint lengths, deltas),
generously: used to keep each tenant's rows inside one record batch."""


def rdict_scan(db: Any, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
    """Rows of a RocksDB database (rocksdict, raw mode) under ``prefix``, from ``start``."""
    for key, raw in db.items(from_key=max(prefix, start)):
        if not key.startswith(prefix):
            return
        yield key, raw


class FaustBase:
    """Committed rows, read from the RocksDB database of each partition of a Faust table
    (Faust's own row there, the changelog offset, sorts before every kind)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = faust_compat.partition_db(self.table, partition).get(key)
        return value

    def scan(
        self, partition: int, prefix: bytes, start: bytes = b""
    ) -> Iterator[tuple[bytes, bytes]]:
        return rdict_scan(faust_compat.partition_db(self.table, partition), prefix, start)


class RdictBase:
    """Committed rows in one RocksDB database, whatever the partition (benchmarks)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def get(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = self.db.get(key)
        return value

    def scan(
        self, partition: int, prefix: bytes, start: bytes = b""
    ) -> Iterator[tuple[bytes, bytes]]:
        return rdict_scan(self.db, prefix, start)


class ChangelogWriter:
    """Writes staged changes to the table's changelog, then its RocksDB (module doc)."""

    def __init__(self, app: Any, table: Any, *, max_batch_bytes: int) -> None:
        self.app = app
        self.table = table
        self.max_batch_bytes = max_batch_bytes

    async def write(self, staged: Staged) -> None:
        if not staged:
            return
        producer = faust_compat.kafka_producer(self.app)
        topic = self.table.changelog_topic.get_topic_name()
        sends: list[tuple[int, int, Any]] = []  # partition, records, delivery future
        for partition, tenants in sorted(staged.rows.items()):
            for rows in self._record_batches(tenants):
                batch, n = producer.create_batch(), 0
                for key, value in rows:
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        # one tenant's rows larger than a record batch: they go in two
                        log.warning("a tenant's changelog rows span more than one record batch")
                        future = await producer.send_batch(batch, topic, partition=partition)
                        sends.append((partition, n, future))
                        batch, n = producer.create_batch(), 0
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            raise RuntimeError(
                                f"a changelog record of {len(value or b'')} "
                                "bytes is larger than a record batch"
                            )
                    n += 1
                future = await producer.send_batch(batch, topic, partition=partition)
                sends.append((partition, n, future))
        reached: dict[int, int] = {}
        for partition, n, future in sends:
            meta = await future
            reached[partition] = max(reached.get(partition, -1), meta.offset + n - 1)
        for partition, tenants in staged.rows.items():
            faust_compat.write_partition(
                self.table, partition, (row for rows in tenants for row in rows), reached[partition]
            )

    def _record_batches(self, tenants: list[list[Row]]) -> Iterator[list[Row]]:
        """The rows of one partition cut into record batches, never across a tenant (a tenant
        larger than a batch gets batches of its own, see ``write``)."""
        current: list[Row] = []
        size = 0
        for rows in tenants:
            n = sum(len(k) + len(v or b"") + RECORD_OVERHEAD for k, v in rows)
            if current and size + n > self.max_batch_bytes:
                yield current
                current, size = [], 0
            current.extend(rows)
            size += n
        if current:
            yield current
