"""The view store: the projection state and its input position, written together in one batch.

Two backends with one interface: RocksDB (rocksdict, on disk) and an in-memory twin for tests.
Keys are namespaced (``<ns>\\x1f<parts...>``); values are JSON (orjson). The ``emit`` namespace
(the emitted ledger: ids already sent and the input position they were sent at) survives
``drop_views`` so that a rebuild never re-emits. Stored values carry a format version.
"""

from __future__ import annotations

import abc
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from novaquota.projections.exceptions import ProjectionError
from novaquota.projections.folds import DAY_MINUTES, Budget, Held, ProjectionState, QuotaChange
from novaquota.streams.settings import ensure_dir

__all__ = ["FORMAT_VERSION", "Loaded", "MemoryStore", "RocksStore", "ViewStore"]

FORMAT_VERSION: Final = 2  # 2: series stored per UTC day
SEP: Final = "\x1f"
_VIEW_NAMESPACES: Final = ("pos", "i", "g", "s", "q", "t", "b", "w", "x", "a", "v", "meta")
Position = dict[tuple[str, int], int]
log = logging.getLogger("novaquota.projections")


def _key(*parts: object) -> bytes:
    return SEP.join(str(p) for p in parts).encode()


def _parts(key: bytes) -> list[str]:
    return key.decode().split(SEP)


@dataclass
class Loaded:
    state: ProjectionState
    positions: Position = field(default_factory=dict)
    emitted_positions: Position = field(default_factory=dict)
    emitted_ids: set[str] = field(default_factory=set)


class ViewStore(abc.ABC):
    """Backend-independent logic over a few key-value primitives."""

    @abc.abstractmethod
    def _write(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None: ...

    @abc.abstractmethod
    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None:
        """Release the backend (nothing to release unless a backend says so)."""
        return None

    # --- reading ---------------------------------------------------------------------------

    def load(self) -> Loaded:
        st = ProjectionState()
        out = Loaded(st)
        meta = dict(self._scan(_key("meta", "")))
        version = meta.get(_key("meta", "version"))
        if version is not None and int(version) > FORMAT_VERSION:
            raise ProjectionError(
                f"view store format {int(version)} is newer than this release ({FORMAT_VERSION})"
            )
        if version is not None and int(version) < FORMAT_VERSION:
            # views are derived data: an older layout is dropped and refolded from offset 0
            log.warning("view store format %s is older: rebuilding the views", int(version))
            self.drop_views()
            return out
        wm = meta.get(_key("meta", "watermark"))
        st.watermark = int(wm) if wm else 0
        for k, v in self._scan(_key("pos", "")):
            _, topic, part = _parts(k)
            out.positions[(topic, int(part))] = int(v)
        for k, v in self._scan(_key("e", "pos", "")):
            _, _, topic, part = _parts(k)
            out.emitted_positions[(topic, int(part))] = int(v)
        for k, _v in self._scan(_key("e", "id", "")):
            out.emitted_ids.add(_parts(k)[2])
        for k, v in self._scan(_key("i", "")):
            _, tenant, ikey = _parts(k)
            st.instances.setdefault(tenant, {})[ikey] = Held.from_json(orjson.loads(v))
        for k, v in self._scan(_key("g", "")):
            _, tenant, ikey = _parts(k)
            st.gauges.setdefault(tenant, {})[ikey] = Held.from_json(orjson.loads(v))
        for k, v in self._scan(_key("s", "")):
            _, t, lvl, e, rt, _day = _parts(k)
            per = st.series.setdefault((t, lvl, e, rt), {})
            per.update({int(r[0]): [r[1], r[2], r[3]] for r in orjson.loads(v)})
        for k, v in self._scan(_key("q", "")):
            _, t, lvl, e, rt = _parts(k)
            st.quotas[(t, lvl, e, rt)] = [QuotaChange.from_json(c) for c in orjson.loads(v)]
        for k, v in self._scan(_key("t", "")):
            st.templates[_parts(k)[1]] = orjson.loads(v)
        for k, v in self._scan(_key("b", "")):
            _, t, lvl, e = _parts(k)
            st.budgets[(t, lvl, e)] = Budget.from_json(orjson.loads(v))
        for k, v in self._scan(_key("w", "")):
            st.tenant_watermark[_parts(k)[1]] = int(v)
        for k, v in self._scan(_key("x", "")):
            o = orjson.loads(v)
            st.deleted_tenants[_parts(k)[1]] = (int(o[0]), int(o[1]), str(o[2]), str(o[3]))
        for k, v in self._scan(_key("a", "")):
            _, source, eid = _parts(k)
            st.api_seen[(source, eid)] = int(v)
        for k, v in self._scan(_key("v", "")):
            st.open_violations[_parts(k)[1]] = orjson.loads(v)
        st.reindex()
        return out

    # --- writing ---------------------------------------------------------------------------

    def commit(self, state: ProjectionState, positions: Position) -> None:
        """The changed part of the state and the position after it, in one atomic write."""
        d = state.dirty
        puts: dict[bytes, bytes] = {}
        deletes: list[bytes] = []
        dumps = orjson.dumps
        instances, gauges = state.instances, state.gauges
        for tenant, ikey in d.instances:
            h = instances[tenant][ikey]
            puts[f"i{SEP}{tenant}{SEP}{ikey}".encode()] = dumps(
                (h.order, h.project, h.user, h.resources, h.origin)
            )
        for tenant, ikey in d.gauges:
            h = gauges[tenant][ikey]
            puts[f"g{SEP}{tenant}{SEP}{ikey}".encode()] = dumps(
                (h.order, h.project, h.user, h.resources, h.origin)
            )
        for sk, day in d.series:
            per = state.series[sk]
            lo, hi = day * DAY_MINUTES, (day + 1) * DAY_MINUTES
            if len(per) <= DAY_MINUTES:
                rows = sorted([m, *row] for m, row in per.items() if lo <= m < hi)
            else:
                rows = [[m, *per[m]] for m in range(lo, hi) if m in per]
            puts[f"s{SEP}{sk[0]}{SEP}{sk[1]}{SEP}{sk[2]}{SEP}{sk[3]}{SEP}{day}".encode()] = dumps(
                rows
            )
        for qk in d.quotas:
            puts[_key("q", *qk)] = orjson.dumps([c.to_json() for c in state.quotas[qk]])
        for name in d.templates:
            puts[_key("t", name)] = orjson.dumps(state.templates[name])
        for bk in d.budgets:
            budget = state.budgets.get(bk)
            if budget is None:
                deletes.append(_key("b", *bk))
            else:
                puts[_key("b", *bk)] = orjson.dumps(budget.to_json())
        for tenant in d.tenants:
            if tenant in state.tenant_watermark:
                puts[_key("w", tenant)] = str(state.tenant_watermark[tenant]).encode()
            if tenant in state.deleted_tenants:
                puts[_key("x", tenant)] = orjson.dumps(list(state.deleted_tenants[tenant]))
        for source, eid, t in d.api_seen:
            puts[_key("a", source, eid)] = str(t).encode()
        for vid in d.violations:
            v = state.open_violations.get(vid)
            if v is None:
                deletes.append(_key("v", vid))
            else:
                puts[_key("v", vid)] = orjson.dumps(v, default=str)
        for (topic, part), offset in positions.items():
            puts[_key("pos", topic, part)] = str(offset).encode()
        puts[_key("meta", "watermark")] = str(state.watermark).encode()
        puts[_key("meta", "version")] = str(FORMAT_VERSION).encode()
        self._write(puts, deletes)
        d.clear()

    def record_emitted(self, ids: list[str], positions: Position) -> None:
        puts = {_key("e", "id", i): b"1" for i in ids}
        for (topic, part), offset in positions.items():
            puts[_key("e", "pos", topic, part)] = str(offset).encode()
        self._write(puts, [])

    def drop_views(self) -> None:
        """Delete every view and position; keep the emitted ledger."""
        deletes = [k for ns in _VIEW_NAMESPACES for k, _ in self._scan(_key(ns, ""))]
        self._write({}, deletes)

    def dump(self) -> dict[str, Any]:
        """Every view key and value (tests compare rebuilds with it)."""
        return {
            k.decode(): v.decode()
            for ns in _VIEW_NAMESPACES
            if ns != "pos"
            for k, v in self._scan(_key(ns, ""))
        }


class MemoryStore(ViewStore):
    """The in-memory twin (tests, and ``--in-memory`` runs)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def _write(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        for k in deletes:
            self.data.pop(k, None)
        self.data.update(puts)

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k in sorted(self.data):
            if k.startswith(prefix):
                yield k, self.data[k]


class RocksStore(ViewStore):
    """RocksDB via rocksdict, with a bounded block cache and write buffer."""

    def __init__(self, path: Path, *, cache_mib: int = 64) -> None:
        from rocksdict import BlockBasedOptions, Cache, Options, Rdict

        ensure_dir(path)  # with its parents: ./var/projections/views in a fresh checkout
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(32 * 1024 * 1024)
        opts.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(cache_mib * 1024 * 1024))
        opts.set_block_based_table_factory(table)
        self.path = path
        try:
            self._db = Rdict(str(path), opts)
        except Exception as exc:  # rocksdict raises a bare Exception (e.g. the LOCK is held)
            raise ProjectionError(
                f"cannot open the view store {path}: {exc} (is another worker using it?)"
            ) from None

    def _write(self, puts: dict[bytes, bytes], deletes: list[bytes]) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        for k in deletes:
            wb.delete(k)
        for k, v in puts.items():
            wb.put(k, v)
        self._db.write(wb)

    def _scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self._db.items(from_key=prefix):
            if not isinstance(k, bytes) or not k.startswith(prefix):
                break
            yield k, v

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
