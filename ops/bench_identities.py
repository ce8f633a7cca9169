"""Bench section ``identities``: the (source, id) identity store at its retention's size.

Every input message holds its identity for 7 days of event time (contract section 3), so at
1,000,000 events a day a worker's identity store holds about 7,000,000 entries. This section
writes that many identities, shaped as the worker writes them, into one RocksDB database with
the worker's own options (the shared block cache with memtables charged to it), then reports
the process's resident memory, the size on disk, lookup latency (held and unknown identities)
and the sweep's rate. No broker is needed.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from novaquota.streams.enforce import Identities
from novaquota.streams.faust_compat import share_rocksdb_memory
from novaquota.streams.quota.units import SEC_US
from novaquota.streams.settings import Settings
from novaquota.streams.store.faust_base import RdictBase
from novaquota.streams.store.records import IDENTITY
from novaquota.streams.store.rocksdb import rocksdb_options
from novaquota.streams.store.tenant_store import TenantStore

__all__ = ["identities_section"]

DAY_US = 86_400 * SEC_US


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def identities_section(
    settings: Settings,
    *,
    count: int,
    tenants: int,
    seed: int,
    work_dir: Path,
    per_day: int = 1_000_000,
) -> dict[str, Any]:
    import rocksdict
    from faust.stores.rocksdb import RocksDBOptions

    rng = random.Random(seed)
    share_rocksdb_memory(settings.rocksdb_memory_mb * 2**20)
    path = work_dir / "identities"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    db: Any = rocksdict.Rdict(str(path), options=RocksDBOptions(**rocksdb_options()).as_options())
    store = TenantStore(RdictBase(db), lambda _tenant: 0)
    ids = Identities(store, retention_us=7 * DAY_US)
    names = [f"tenant-{i:06d}" for i in range(tenants)]
    rss_before = _rss_mb()
    sample: list[bytes] = []
    started = time.perf_counter()
    batch = rocksdict.WriteBatch(raw_mode=True)
    for i in range(count):
        key = Identities.key(
            rng.choice(names), f"nova/compute/host-{rng.randrange(64)}", uuid.uuid4().hex
        )
        t = i * DAY_US // per_day  # events spread evenly over count / per_day days
        batch.put(key, f"re:{i % 12}:{i}|{t}".encode())
        if i % 997 == 0:
            sample.append(key)
        if len(batch) >= 10_000:
            db.write(batch)
            batch = rocksdict.WriteBatch(raw_mode=True)
    db.write(batch)
    write_s = time.perf_counter() - started
    db.flush()
    watermark = count * DAY_US // per_day
    held, unknown = [], []
    for key in sample[:5000]:
        t0 = time.perf_counter()
        ids.holder(key, watermark)
        held.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        ids.holder(key + b"-x", watermark)
        unknown.append((time.perf_counter() - t0) * 1e6)
    rss_loaded = _rss_mb()
    disk_loaded = _disk_mb(path)
    # one more day of event time passes: the oldest day's identities expire
    started = time.perf_counter()
    cursor: bytes | None = b""
    while cursor is not None:
        cursor = ids.sweep(
            store.base.scan(0, IDENTITY, cursor or b""), lambda _t: watermark + DAY_US, 100_000
        )
        for rows in store.take().rows.get(0, []):
            for key, _none in rows:
                db.delete(key)
    sweep_s = time.perf_counter() - started
    left = sum(1 for _ in db.keys())  # noqa: SIM118 (an Rdict, not a dict)
    db.close()
    shutil.rmtree(path, ignore_errors=True)
    return {
        "identities": count,
        "per_day": per_day,
        "tenants": tenants,
        "write_per_s": round(count / write_s),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_loaded": round(rss_loaded, 1),
        "rss_mb_added": round(rss_loaded - rss_before, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rocksdb_memory_mb": settings.rocksdb_memory_mb,
        "disk_mb": round(disk_loaded, 1),
        "disk_bytes_per_identity": round(disk_loaded * 2**20 / count, 1),
        "lookup_held_us_p50": round(_percentile(held, 0.5), 1),
        "lookup_held_us_p99": round(_percentile(held, 0.99), 1),
        "lookup_unknown_us_p50": round(_percentile(unknown, 0.5), 1),
        "lookup_unknown_us_p99": round(_percentile(unknown, 0.99), 1),
        "sweep_rows_per_s": round(count / sweep_s),
        "left_after_sweep": left,
        "expected_left": min(count, 6 * per_day),
    }
