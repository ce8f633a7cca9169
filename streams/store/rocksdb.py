"""RocksDB options of the worker's tables (the shared block cache is set up by
``streams.faust_compat.share_rocksdb_memory``)."""

from __future__ import annotations

from typing import Any

__all__ = ["rocksdb_options"]


def rocksdb_options() -> dict[str, Any]:
    """RocksDB per table and partition. Faust's defaults (3 x 64 MiB write buffers per
    database) multiply into gigabytes with 12 partitions and several tables. A fresh dict each
    time: Faust pops keys out of the one it is given. No block cache size here: one cache,
    with the memtables charged to it, serves every database
    (``faust_compat.share_rocksdb_memory``)."""
    return {
        "driver": "rocksdict",
        "write_buffer_size": 4 * 1024 * 1024,
        "max_write_buffer_number": 2,
    }
