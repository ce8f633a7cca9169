"""The enforcement worker: ``create_app(settings) -> QuotaApp``; topics and tables live here.

The agents (``streams.agents``) are glue only: decode, route, load state, call the pure domain
core (``streams.quota``), store, send. Everything a user can observe is declared in this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

import faust
import orjson

from novaquota.streams import faust_compat
from novaquota.streams.auth import build_access
from novaquota.streams.cors import cors_middleware
from novaquota.streams.http_errors import error_middleware
from novaquota.streams.metrics import Metrics
from novaquota.streams.settings import Settings
from novaquota.streams.store.rocksdb import rocksdb_options
from novaquota.streams.ticks import Ticker

__all__ = ["QuotaApp", "create_app"]

log = logging.getLogger(__name__)


class QuotaApp:
    """The Faust app plus the handles the agents and views need."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        faust_compat.install(settings.rocksdb_memory_mb * 2**20)
        self.settings = settings
        self.metrics = metrics or Metrics()
        t = settings.topics
        self.app = faust.App(
            settings.app_id,
            broker=[f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",")],
            broker_credentials=_credentials(settings),
            store="rocksdb://",
            datadir=str(settings.data_dir),
            web_enabled=True,
            web_host=settings.web_host,
            web_port=settings.web_port,
            canonical_url=settings.canonical_url,
            # Faust's own /router and /table views would serve tenant state to anyone.
            web_router_enabled=False,
            web_tables_enabled=False,
            # CORS first (preflights before authentication; its headers on every answer), then
            # one error shape for every answer, also the router's own 404 and 405.
            web_application_options={
                "middlewares": [cors_middleware(settings.cors_origin_set), error_middleware],
                "client_max_size": settings.max_body_bytes,
            },
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            topic_allow_declare=True,
            table_standby_replicas=1,
            processing_guarantee="at_least_once",
            broker_session_timeout=settings.session_timeout_seconds,
            broker_heartbeat_interval=max(1.0, settings.session_timeout_seconds / 10),
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            producer_compression_type=settings.compression_type,
            # Tenant records are kilobytes: with Kafka's default 16 KiB batches every few table
            # writes wait for a produce round trip.
            producer_max_batch_size=1024 * 1024,
            producer_max_request_size=4 * 1024 * 1024,
            producer_linger=settings.producer_linger_ms / 1000,
            # Bounded read-ahead. Unbounded (Faust's default), every poll decoded all that the
            # fetcher held, up to 1 MiB compressed per partition, into Python objects at once:
            # ~130 MB more RSS with a backlog and more CPU per message (GC over the live objects).
            # The agents' buffers keep Faust's 4,096 (the patched drain loop waits for room in a
            # full one without dropping anything: docs/operations.md, known issues).
            broker_max_poll_records=1000,
            consumer_max_fetch_size=256 * 1024,
            web_in_thread=False,
            autodiscover=False,
        )

        def raw_topic(name: str, *, internal: bool = False) -> faust.TopicT:
            return self.app.topic(
                name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=settings.partitions,
                internal=internal,
            )

        self.resource_events = raw_topic(t.resource_events)
        self.quota_commands = raw_topic(t.quota_commands)
        self.routed = raw_topic(t.routed)
        self.ticks = raw_topic(t.ticks)
        self.system_totals = raw_topic(t.system_totals)
        self.admission = raw_topic(t.admission)
        self.violations = raw_topic(t.quota_violations)
        self.alerts = raw_topic(t.quota_alerts)
        self.audit = raw_topic(t.audit)
        self.dead_letter = raw_topic(t.dead_letter)

        def table(name: str, *, global_: bool = False, **extra: Any) -> Any:
            factory = self.app.GlobalTable if global_ else self.app.Table
            tbl: Any = factory(
                name,
                key_type=bytes,
                value_type=bytes,
                partitions=settings.partitions,
                options=rocksdb_options(),
                **extra,
            )
            # bytes in, bytes out: Faust would pick JSON for these types
            tbl.key_serializer = "raw"
            tbl.value_serializer = "raw"
            return tbl

        # Everything about the tenants homed on a partition, in one keyed space
        # (streams.store.records), written in batches (streams.store.faust_base).
        self.state = table("state")
        from novaquota.streams.agents import home_partition
        from novaquota.streams.store.faust_base import ChangelogWriter, FaustBase
        from novaquota.streams.store.tenant_store import TenantStore

        n = settings.partitions
        # murmur2 in pure Python costs microseconds; a tenant's home is asked for on every read
        self.home = functools.lru_cache(maxsize=1 << 16)(lambda t: home_partition(t, n))
        self.store = TenantStore(
            FaustBase(self.state),
            self.home,
            cache_bytes=settings.state_cache_mb * 2**20,
        )
        self.writer = ChangelogWriter(self.app, self.state, max_batch_bytes=1024 * 1024)
        self.batch: Any = None  # streams.batch.Batch, made by agents.register
        # Custom templates (template.defined), readable by every worker.
        self.templates = table("templates", global_=True)
        self.ticker = Ticker(clock=time.time)
        # Tenant-level totals of each owned partition (summed for system quotas), and the
        # partitions whose tenants have been indexed since they were assigned.
        self.partition_totals: dict[int, dict[str, int]] = {}
        self.indexed: set[int] = set()
        self.active_inputs: frozenset[int] = frozenset()
        """Input partitions this worker owns as active (kept current on every rebalance)."""
        self.enforcer: Any = None
        self.checks: Any = None  # streams.checks.CheckService, made by web.register
        # who may call the HTTP API (streams.auth): tokens, JWTs, anonymous only if allowed
        self.access = build_access(settings)
        from novaquota.streams.admission import AdmissionDesk

        self.desk = AdmissionDesk(self)

        from novaquota.streams import agents, web

        agents.register(self)
        n_parts = settings.partitions

        def note_grants(tenant: str, rec: Any) -> None:
            self.desk.note(agents.home_partition(tenant, n_parts), tenant, rec)

        from novaquota.streams.enforce import Enforcer

        enforcer = self.enforcer
        assert isinstance(enforcer, Enforcer)  # made by agents.register
        enforcer.listeners.append(note_grants)
        web.register(self)
        from novaquota.streams import live_web

        self.live: Any = None  # streams.live_web.LiveHub
        live_web.register(self)
        self._register_timers()
        from novaquota.streams.observe import install

        install(self)

    def _register_timers(self) -> None:
        app = self.app

        @app.task
        async def quiet_libraries() -> None:
            # The worker's log setup leaves library loggers at DEBUG effective level; building
            # their debug records cost a third of the per-message time in profiles.
            level = max(logging.INFO, logging.getLevelName(self.settings.log_level.upper()))
            for name in ("aiokafka", "faust", "mode", "kafka"):
                logging.getLogger(name).setLevel(level)
            # Faust's Monitor sensor keeps per-message statistics for Faust's own web pages,
            # which the worker does not serve (its metrics are its own): about 45 us a message.
            with contextlib.suppress(KeyError):
                app.sensors.remove(app.monitor)

        input_topic = self.resource_events.get_topic_name()

        def actives() -> set[int]:
            return {
                tp.partition for tp in app.assignor.assigned_actives() if tp.topic == input_topic
            }

        from novaquota.streams.agents import home_partition

        system_home = home_partition("system", self.settings.partitions)

        our_topics = {
            self.resource_events.get_topic_name(),
            self.quota_commands.get_topic_name(),
            self.routed.get_topic_name(),
            self.ticks.get_topic_name(),
            self.system_totals.get_topic_name(),
            self.admission.get_topic_name(),
        }
        stalled_since: dict[Any, float] = {}
        progress_seen: dict[Any, tuple[int, float]] = {}

        @app.timer(interval=2.0, on_leader=False)
        async def unstall_partitions() -> None:
            """Watchdog over Faust hazards: after a restart or a rebalance a worker was seen
            ready and idle while some of its input partitions were left out of the consumer's
            active set (or paused), their lag never read, or with a record skipped by the drain
            loop so that commits stopped. An owned input partition that stays inactive for 10 s
            while nothing is rebalancing or recovering is resumed; one that holds lag without a
            commit for 30 s is read again from its committed offset. Either way the partition
            is first sought to its committed offset, as Faust's own recovery does before it
            resumes flow, so that a resume never passes over a record that Faust's drain loop
            marked read without delivering it (docs/operations.md, known issues)."""
            consumer: Any = app.consumer
            if app.rebalancing or not tables_recovered(app) or app.in_recovery:
                stalled_since.clear()
                return
            flowing = faust_compat.flowing_partitions(app)
            if flowing is None:
                return
            active, paused = flowing
            owned = {tp for tp in app.assignor.assigned_actives() if tp.topic in our_topics}
            now = time.monotonic()
            out = {tp for tp in owned if tp not in active or tp in paused}
            # and any owned partition with lag whose committed offset has not moved for 30 s
            for tp in owned:
                try:
                    high = consumer.highwater(tp)
                except Exception:  # not known yet for a new assignment
                    continue
                done = faust_compat.committed_offset(app, tp)
                if high is None or done is None or high <= done:
                    progress_seen.pop(tp, None)
                    continue
                last = progress_seen.get(tp)
                if last is None or last[0] != done:
                    progress_seen[tp] = (done, now)
                elif now - last[1] >= 30.0:
                    log.warning(
                        "%s[%d]: lag %d and no commit for %.0fs (active %s, paused %s, "
                        "flow %s); reading it again from its committed offset %d",
                        tp.topic,
                        tp.partition,
                        high - done,
                        now - last[1],
                        tp in active,
                        tp in paused,
                        consumer.flow_active,
                        done,
                    )
                    progress_seen[tp] = (done, now)
                    stalled_since[tp] = now - 10.0  # sought and resumed below
            out |= {tp for tp, t in stalled_since.items() if now - t >= 10.0}
            for tp in list(stalled_since):
                if tp not in out:
                    del stalled_since[tp]
            due = []
            for tp in out:
                since = stalled_since.setdefault(tp, now)
                if now - since >= 10.0:
                    due.append(tp)
            if not consumer.flow_active:
                log.warning("consumer flow was stopped while ready; resuming it")
                consumer.resume_flow()
                # resuming flow control clears the agents' buffers: what they held is read
                # again from the committed offsets (replays are recognised by their identity)
                app.flow_control.resume()
                for tp in owned:
                    done = faust_compat.committed_offset(app, tp)
                    if done is not None:
                        await consumer.seek(tp, done)
            if due:
                log.warning(
                    "resuming %d input partition(s) left inactive after a rebalance: %s",
                    len(due),
                    ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in due)),
                )
                for tp in due:
                    # records already processed come again as replays (Faust ignores their
                    # second ack, the guards their effect)
                    done = faust_compat.committed_offset(app, tp)
                    if done is not None:
                        await consumer.seek(tp, done)
                consumer.resume_partitions(set(due))
                for tp in due:
                    stalled_since.pop(tp, None)

        max_wait = self.settings.batch_max_wait_ms / 1000

        @app.task
        async def write_old_batches() -> None:
            """A batch is written by the agent that fills it, or when it runs dry; this
            writes one whose agents were stopped meanwhile (a rebalance clears their input).
            A loop, not a timer: waiting for the agents' lock is not an overrun."""
            while True:
                await asyncio.sleep(max_wait)
                if self.batch is not None:
                    await self.batch.flush_if_old()

        @app.timer(interval=1.0, on_leader=False)
        async def every_second() -> None:
            if app.rebalancing or not tables_recovered(app):
                return
            owned = actives()
            self.active_inputs = frozenset(owned)
            await self._index(owned - self.indexed)
            for partition, tick_us in self.ticker.pending(owned & self.indexed):
                await self.ticks.send(value=str(tick_us).encode(), partition=partition)
            await self.desk.expire_due(owned & self.indexed)
            # absolute totals of each owned partition, for the owner of the tenant "system"
            for p in sorted(owned & self.indexed):
                body = {
                    "totals": self.partition_totals.get(p, {}),
                    "watermark_us": self.ticker.watermark.get(p, 0),
                }
                await self.system_totals.send(
                    key=str(p).encode(), value=orjson.dumps(body), partition=system_home
                )

        async def on_assigned(app_: Any, assigned: set[Any], **kwargs: Any) -> None:
            self.active_inputs = frozenset(actives())

        async def on_revoked(app_: Any, revoked: set[Any], **kwargs: Any) -> None:
            gone = {tp.partition for tp in revoked if tp.topic == input_topic}
            self.active_inputs = frozenset(self.active_inputs - gone)
            self.ticker.forget(gone)
            self.indexed -= gone
            self.desk.forget(gone)
            for p in gone:
                self.partition_totals.pop(p, None)
            if self.batch is not None:
                # written before the partitions move: the new owner restores from the
                # changelog and reads on from the offsets committed after it
                async with self.batch.lock:
                    await self.batch.flush()
            if self.enforcer is not None:
                self.enforcer.forget()

        # mode's signal stubs do not describe async receivers
        app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

    def add_totals(self, partition: int, delta: dict[str, int]) -> None:
        if partition not in self.indexed:
            return  # the index scan of this partition will count it
        per = self.partition_totals.setdefault(partition, {})
        for r, d in delta.items():
            v = per.get(r, 0) + d
            if v:
                per[r] = v
            else:
                per.pop(r, None)

    async def _index(self, partitions: set[int]) -> None:
        """Scan the tenants of newly owned partitions: deadlines (ticks) and totals.

        One partition at a time, each in one go (so no change of that partition can fall
        between its scan and ``add_totals``), yielding to the event loop in between: with a
        hundred thousand tenants the whole scan takes seconds, and the HTTP API and the agents
        keep answering meanwhile."""
        for p in sorted(partitions):
            await asyncio.sleep(0)
            if self.app.rebalancing or p not in self.active_inputs:
                return  # moved meanwhile: the next round indexes what is owned then
            # under the batch's lock, so no write is in flight, and with the staged records: a
            # step not yet written has noted its deadline, which the committed record before
            # it would overwrite (its burst would then never expire)
            async with self.batch.lock:
                if self.app.rebalancing or p not in self.active_inputs:
                    return
                self._index_partition(p)

    def _index_partition(self, p: int) -> None:
        from novaquota.streams.enforce import SYSTEM
        from novaquota.streams.quota import next_deadline, tenant_totals

        totals: dict[str, int] = {}
        for tenant, rec in self.store.current_records(p):
            self.ticker.note(p, tenant, next_deadline(rec.state), rec.state.watermark_us)
            self.desk.note(p, tenant, rec)
            if tenant != SYSTEM:
                for r, a in tenant_totals(rec.tenant).items():
                    totals[r] = totals.get(r, 0) + a
        self.partition_totals[p] = totals
        self.indexed.add(p)


def tables_recovered(app: faust.App) -> bool:
    """True once table recovery (changelog replay) has finished after the last rebalance."""
    tables: Any = app.tables
    return bool(tables.recovery.completed.is_set())


def _credentials(settings: Settings) -> Any:
    if settings.sasl_mechanism:
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
        ssl_context = None
        if settings.security_protocol == "SASL_SSL":
            ssl_context = settings.kafka_client_config()["ssl_context"]
        return faust.SASLCredentials(
            username=settings.sasl_username or "",
            password=password,
            mechanism=settings.sasl_mechanism,
            ssl_context=ssl_context,
        )
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(settings.kafka_client_config()["ssl_context"])
    return None


def create_app(settings: Settings | None = None) -> QuotaApp:
    return QuotaApp(settings or Settings())
