"""The in-memory twin of the worker's store: committed rows in dicts, applied at once.

Used by the unit tests of the enforcement step and by ``novaquota replay``. Rows are kept per
kind and tenant, so a tenant's prefix scan costs that tenant's rows, not the whole store.
"""

from __future__ import annotations

from collections.abc import Iterator

from novaquota.streams.store.records import tenant_of
from novaquota.streams.store.tenant_store import Staged, TenantStore

__all__ = ["MemoryBase", "MemoryStore"]


class MemoryBase:
    """Committed rows (one partition: partitions do not matter in memory)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[bytes, str], dict[bytes, bytes]] = {}

    def get(self, partition: int, key: bytes) -> bytes | None:
        per = self.rows.get((key[:1], tenant_of(key)))
        return None if per is None else per.get(key)

    def scan(
        self, partition: int, prefix: bytes, start: bytes = b""
    ) -> Iterator[tuple[bytes, bytes]]:
        if len(prefix) > 1:  # one tenant's rows
            per = self.rows.get((prefix[:1], tenant_of(prefix)), {})
            candidates = sorted(per.items())
        else:
            candidates = sorted(
                (k, v)
                for (kind, _t), per in self.rows.items()
                if kind == prefix
                for k, v in per.items()
            )
        for k, v in candidates:
            if k.startswith(prefix) and k >= start:
                yield k, v

    def apply(self, staged: Staged) -> None:
        for per_partition in staged.rows.values():
            for rows in per_partition:
                for key, value in rows:
                    slot = (key[:1], tenant_of(key))
                    if value is None:
                        per = self.rows.get(slot)
                        if per is not None:
                            per.pop(key, None)
                            if not per:
                                del self.rows[slot]
                    else:
                        self.rows.setdefault(slot, {})[key] = value

    def dump(self) -> dict[bytes, bytes]:
        """Every row (tests)."""
        return {k: v for per in self.rows.values() for k, v in per.items()}


class MemoryStore(TenantStore):
    """A tenant store whose changes are applied to its ``MemoryBase`` after every step."""

    base: MemoryBase

    def __init__(self, *, cache_bytes: int = 64 * 2**20) -> None:
        super().__init__(MemoryBase(), lambda _tenant: 0, cache_bytes=cache_bytes)

    def done(self, tenant: str, redo: object) -> None:
        self.flush()

    def flush(self) -> None:
        staged = self.take()
        self.base.apply(staged)
        self.committed(staged)
