"""Memory bounds of the enforcement worker: the parsed-record cache and RocksDB's shared cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from novaquota.streams.store.records import RecordCache
from tests.support.world import StoreWorld


def test_record_cache_evicts_least_recently_used_past_its_budget() -> None:
    per = 100 * RecordCache.PARSED_PER_STORED_BYTE + 200
    cache = RecordCache(budget=3 * per)
    for key in "abc":
        cache.put(key, b"x" * 100, key.upper())
    assert cache.get("a", b"x" * 100) == "A"  # a is now the most recently used
    cache.put("d", b"x" * 100, "D")
    assert len(cache) == 3 and cache.size == 3 * per
    assert cache.get("b", b"x" * 100) is None  # the least recently used went
    assert [cache.get(k, b"x" * 100) for k in "acd"] == ["A", "C", "D"]


def test_record_cache_never_serves_a_record_of_other_bytes() -> None:
    cache = RecordCache(budget=10_000)
    cache.put("t", b"old", "parsed-old")
    assert cache.get("t", b"new") is None
    assert len(cache) == 0 and cache.size == 0  # the stale entry is gone with its cost


def test_record_cache_skips_a_record_larger_than_the_budget() -> None:
    cache = RecordCache(budget=1_000)
    cache.put("big", b"x" * 1_000, "B")
    assert len(cache) == 0 and cache.size == 0


def test_enforcer_cache_stays_inside_its_byte_budget() -> None:
    from datetime import UTC, datetime

    import orjson

    from novaquota.ops.workload import bulk_load
    from novaquota.schemas.codec import decode
    from novaquota.streams.translate import with_tenant

    budget = 200_000
    w = StoreWorld(cache_bytes=budget)
    enf, cache = w.enforcer, w.store.cache
    commands, events = bulk_load(2_000, 500, start=datetime(2026, 11, 1, tzinfo=UTC))
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    for offset, body in enumerate([*commands, *events]):
        d = decode(orjson.dumps(body), [], record_timestamp_ms=now_ms)
        enf.process(with_tenant(d, d.tenant_id), "qc:0", offset)
        assert cache.size <= budget
    tenants = [t for t, _raw in w.store.records(0)]
    assert len(tenants) == 200
    assert 0 < len(cache) < len(tenants)  # bounded, not emptied
    # an evicted tenant is parsed again from its stored bytes, and then cached
    evicted = next(t for t in tenants if t not in cache._items)
    rec, exists = enf.load(evicted)
    raw = w.store.stored(evicted)
    assert exists and raw is not None and rec.tenant.tenant_id == evicted
    assert cache.get(evicted, raw) is rec


def test_rocksdb_databases_share_one_cache(tmp_path: Path) -> None:
    rocksdict = pytest.importorskip("rocksdict")
    from faust.stores.rocksdb import RocksDBOptions

    from novaquota.streams.faust_compat import _shared_rocksdb, share_rocksdb_memory
    from novaquota.streams.store.rocksdb import rocksdb_options

    share_rocksdb_memory(64 * 2**20)
    cache = _shared_rocksdb["cache"]
    before = cache.get_usage()
    dbs = []
    for n in range(3):
        opts = rocksdb_options()
        opts.pop("driver")
        db = RocksDBOptions(**opts).open(tmp_path / f"db{n}")
        for i in range(2_000):
            db[f"k{i:05d}".encode()] = b"v" * 200
        dbs.append(db)
    # every database's memtables are charged to the one shared cache
    assert cache.get_usage() > before + 3 * 2_000 * 200 * 0.5
    for db in dbs:
        db.close()
    assert isinstance(cache, rocksdict.Cache)


def test_malloc_arenas_are_capped_where_glibc_is() -> None:
    import ctypes.util

    from novaquota.streams.runner import limit_malloc_arenas

    assert limit_malloc_arenas(0) is False  # 0 leaves glibc's default alone
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    if ctypes.util.find_library("c") and libc.startswith("glibc"):
        assert limit_malloc_arenas(2) is True
