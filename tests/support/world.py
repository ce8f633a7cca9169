"""The enforcement step over an in-memory store, as the unit tests drive it."""

from __future__ import annotations

from novaquota.streams.enforce import Enforcer
from novaquota.streams.store.memory import MemoryBase, MemoryStore
from novaquota.streams.store.records import IDENTITY
from novaquota.streams.store.tenant_store import TenantStore


class StoreWorld:
    """An ``Enforcer`` over a ``MemoryBase``. Unbatched, every step is committed at once (as
    ``novaquota replay`` runs); batched, changes stay staged until ``commit`` (as the worker
    runs), and ``crash`` loses what is staged."""

    def __init__(self, *, batched: bool = False, cache_bytes: int = 64 * 2**20) -> None:
        self.store: TenantStore
        if batched:
            self.base = MemoryBase()
            self.store = TenantStore(self.base, lambda _tenant: 0, cache_bytes=cache_bytes)
        else:
            memory = MemoryStore(cache_bytes=cache_bytes)
            self.base, self.store = memory.base, memory
        self.enforcer = Enforcer(self.store)

    def rows(self) -> dict[bytes, bytes]:
        """Every committed row."""
        return self.base.dump()

    def identities(self) -> dict[bytes, bytes]:
        return {k: v for k, v in self.rows().items() if k.startswith(IDENTITY)}

    def commit(self) -> None:
        """Write the staged batch (the worker's flush, without Kafka)."""
        staged = self.store.take()
        self.base.apply(staged)
        self.store.committed(staged)

    def crash(self) -> None:
        """A new process: staged changes and caches are gone, committed rows stay."""
        self.store.forget()
