"""The tenant store: committed rows in a partitioned base, changes staged per tenant.

The enforcement step reads and changes a tenant's rows through ``TenantStore``. Changes are
staged in memory, per tenant, and leave the store as one set of rows per partition (``take``):
the worker writes them to its changelog and local RocksDB once per batch of messages
(``streams.store.faust_base``), tests and ``novaquota replay`` apply them to dicts
(``streams.store.memory``). A tenant record changed by several messages of a batch is serialised
once, when the batch is taken.

Reads see the staged changes; ``committed_record`` sees only what is durable (the HTTP views).

A message whose processing fails must leave its tenant as it was before that message, while
earlier messages of the same batch keep their effect. The store cannot copy a record on every
message (that is the serialisation the batch saves), so each successful step registers how to
redo it (``done``); ``discard`` drops the tenant's staged changes and hands back those steps,
which the caller runs again on the committed state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from novaquota.streams.store.records import (
    RECORD,
    SYSTEM,
    RecordCache,
    TenantRecord,
    record_key,
    tenant_of,
)

__all__ = ["Base", "Staged", "TenantStore"]

Row = tuple[bytes, bytes | None]
"""A key and its new value (None: deleted)."""


class Base(Protocol):
    """Committed rows, by partition."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def scan(
        self, partition: int, prefix: bytes, start: bytes = b""
    ) -> Iterator[tuple[bytes, bytes]]:
        """Rows whose key starts with ``prefix``, in key order, from ``start`` (inclusive)."""
        ...


@dataclass
class _Stage:
    partition: int
    record: TenantRecord | None = None
    rows: dict[bytes, bytes | None] = field(default_factory=dict)
    redo: list[Callable[[], object]] = field(default_factory=list)


@dataclass
class Staged:
    """What a batch changed: per partition, per tenant, its rows (the record serialised).

    ``records`` keeps the parsed records with their new bytes, for the cache once durable."""

    rows: dict[int, list[list[Row]]] = field(default_factory=dict)
    records: list[tuple[str, bytes, TenantRecord]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def count(self) -> int:
        return sum(len(rows) for per in self.rows.values() for rows in per)


class TenantStore:
    """Tenant rows over a committed ``Base``, with per-tenant staged changes (module doc)."""

    def __init__(
        self, base: Base, partition_of: Callable[[str], int], *, cache_bytes: int = 64 * 2**20
    ) -> None:
        self.base = base
        self.partition_of = partition_of
        self.cache = RecordCache(cache_bytes)
        self._staged: dict[str, _Stage] = {}
        self.last_load_hit = False

    # -- reads ----------------------------------------------------------------------------

    def record(self, tenant: str) -> tuple[TenantRecord, bool]:
        """The tenant's record as staged or committed, and whether it exists. The object is
        the store's own: change it, then ``put_record`` it."""
        stage = self._staged.get(tenant)
        if stage is not None and stage.record is not None:
            self.last_load_hit = True
            return stage.record, True
        return self.committed_record(tenant)

    def committed_record(self, tenant: str) -> tuple[TenantRecord, bool]:
        """The durable record and whether it exists. Parsed records are cached keyed by their
        bytes, so a record changed by a batch or a changelog restore is never served stale."""
        raw = self.stored(tenant)
        self.last_load_hit = False
        if raw is None:
            return TenantRecord.new(tenant), False
        rec = self.cache.get(tenant, raw)
        if rec is not None:
            self.last_load_hit = True
            return rec, True
        return self._parse(tenant, raw), True

    def _parse(self, tenant: str, raw: bytes) -> TenantRecord:
        rec = TenantRecord.from_bytes(raw, system=tenant == SYSTEM)
        if tenant not in self._staged:
            self.cache.put(tenant, raw, rec)
        return rec

    def stored(self, tenant: str) -> bytes | None:
        """The tenant record's committed bytes."""
        return self.base.get(self.partition_of(tenant), record_key(tenant))

    def get(self, key: bytes, tenant: str | None = None) -> bytes | None:
        """A row, staged or committed (``tenant``: the key's, when the caller knows it)."""
        if tenant is None:
            tenant = tenant_of(key)
        stage = self._staged.get(tenant)
        if stage is not None and key in stage.rows:
            return stage.rows[key]
        return self.base.get(self.partition_of(tenant), key)

    def scan(self, prefix: bytes, tenant: str | None = None) -> Iterator[tuple[bytes, bytes]]:
        """One tenant's rows under ``prefix`` (which names the tenant), staged changes
        included, in key order."""
        if tenant is None:
            tenant = tenant_of(prefix)
        stage = self._staged.get(tenant)
        committed = self.base.scan(self.partition_of(tenant), prefix)
        if stage is None or not stage.rows:
            yield from committed
            return
        merged: dict[bytes, bytes | None] = dict(committed)
        merged.update((k, v) for k, v in stage.rows.items() if k.startswith(prefix))
        for k in sorted(merged):
            v = merged[k]
            if v is not None:
                yield k, v

    def records(self, partition: int) -> Iterator[tuple[str, bytes]]:
        """Every committed tenant record of a partition: (tenant, bytes)."""
        for key, raw in self.base.scan(partition, RECORD):
            yield key[1:].decode(), raw

    def current_records(self, partition: int) -> Iterator[tuple[str, TenantRecord]]:
        """Every tenant record of a partition as the next step would read it: staged changes
        included, tenants created by the staged batch too. The committed ones are parsed
        afresh (a scan must not fill the cache); a staged one is the store's own object."""
        staged = {
            t: s.record
            for t, s in self._staged.items()
            if s.partition == partition and s.record is not None
        }
        for key, raw in self.base.scan(partition, RECORD):
            tenant = key[1:].decode()
            rec = staged.pop(tenant, None)
            yield tenant, rec or TenantRecord.from_bytes(raw, system=tenant == SYSTEM)
        yield from sorted(staged.items())

    # -- changes --------------------------------------------------------------------------

    def _stage(self, tenant: str) -> _Stage:
        stage = self._staged.get(tenant)
        if stage is None:
            stage = self._staged[tenant] = _Stage(self.partition_of(tenant))
            # the parsed record will be changed in place: the cache must not serve it as the
            # committed one meanwhile
            self.cache.discard(tenant)
        return stage

    def put_record(self, tenant: str, rec: TenantRecord) -> None:
        self._stage(tenant).record = rec

    def put(self, key: bytes, value: bytes | None, tenant: str | None = None) -> None:
        """Stage a row (None deletes it)."""
        self._stage(tenant_of(key) if tenant is None else tenant).rows[key] = value

    def done(self, tenant: str, redo: Callable[[], object]) -> None:
        """A step on ``tenant`` succeeded: keep how to redo it (see ``discard``)."""
        stage = self._staged.get(tenant)
        if stage is not None:
            stage.redo.append(redo)

    def discard(self, tenant: str) -> list[Callable[[], object]]:
        """Drop the tenant's staged changes; returns the steps that made them, to redo."""
        self.cache.discard(tenant)
        stage = self._staged.pop(tenant, None)
        return [] if stage is None else stage.redo

    @property
    def pending(self) -> int:
        """Tenants with staged changes."""
        return len(self._staged)

    def take(self) -> Staged:
        """Hand out every staged change, grouped by partition and tenant, and clear them."""
        out = Staged()
        staged, self._staged = self._staged, {}
        for tenant, stage in staged.items():
            rows: list[tuple[bytes, bytes | None]] = sorted(stage.rows.items())
            if stage.record is not None:
                raw = stage.record.to_bytes()
                rows.insert(0, (record_key(tenant), raw))
                out.records.append((tenant, raw, stage.record))
            if rows:
                out.rows.setdefault(stage.partition, []).append(rows)
        return out

    def committed(self, staged: Staged) -> None:
        """``staged`` is durable: its records may be served from the cache."""
        for tenant, raw, rec in staged.records:
            if tenant not in self._staged:
                self.cache.put(tenant, raw, rec)

    def forget(self) -> None:
        """Drop cached and staged state (after a rebalance)."""
        self.cache.clear()
        self._staged.clear()
