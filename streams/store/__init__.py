"""Persistence of the enforcement state (see ``records`` for the key layout).

- ``records``: keys, the tenant record format, the parsed-record cache;
- ``tenant_store``: ``TenantStore``, reads over committed rows with per-tenant staged changes;
- ``faust_base``: the worker's committed rows (a Faust table's RocksDB) and the batched
  changelog writer;
- ``memory``: the in-memory twin, for tests and ``novaquota replay``;
- ``rocksdb``: RocksDB options of the worker's tables.
"""
