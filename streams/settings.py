"""One frozen settings object, read from the environment.

Every setting has an environment variable ``NOVAQUOTA_<NAME>`` (upper case); the broker address
also honours the conventional ``KAFKA_BOOTSTRAP_SERVERS``. Secrets are ``SecretStr`` so that they
never end up in logs or reprs.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_TOPIC_PREFIX", "Settings", "TopicNames", "ensure_dir"]

DEFAULT_TOPIC_PREFIX = "novacron."


def ensure_dir(path: Path | str) -> Path:
    """Create the directory ``path`` with any missing parents (no error if it exists) and
    return it as a ``Path``.

    The one helper through which every directory named by a setting or an option comes into
    being (the worker's ``data_dir``, the projections' view store, report and log files'
    parents): Faust and RocksDB create at most the last component, so a relative default such
    as ``./var/worker`` failed in a fresh checkout where ``var/`` did not exist yet."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class TopicNames:
    """The contract's topic names under one prefix (``NOVAQUOTA_TOPIC_PREFIX``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.resource_events = f"{prefix}resource-events"
        self.quota_commands = f"{prefix}quota-commands"
        self.quota_violations = f"{prefix}quota-violations"
        self.quota_alerts = f"{prefix}quota-alerts"
        self.audit = f"{prefix}audit"
        self.dead_letter = f"{prefix}dead-letter"
        self.delivery_dead_letter = f"{prefix}delivery-dead-letter"
        # Internal topics (not part of the public contract).
        self.routed = f"{prefix}internal-routed"
        self.ticks = f"{prefix}internal-ticks"
        self.system_totals = f"{prefix}internal-system-totals"
        self.admission = f"{prefix}internal-admission"
        self.live = f"{prefix}internal-live"

    def inputs(self) -> tuple[str, str]:
        return (self.resource_events, self.quota_commands)

    def outputs(self) -> tuple[str, ...]:
        return (
            self.quota_violations,
            self.quota_alerts,
            self.audit,
            self.dead_letter,
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NOVAQUOTA_", frozen=True, extra="ignore", populate_by_name=True
    )

    # --- Kafka connection -------------------------------------------------------------------
    bootstrap_servers: str = Field(
        default="localhost:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "NOVAQUOTA_BOOTSTRAP_SERVERS"),
    )
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    # The command line's check that the broker answers (`novaquota worker`, `projections run`,
    # `bench`): past this, the command exits with status 3 instead of retrying for ever.
    kafka_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    # --- Topics -----------------------------------------------------------------------------
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    partitions: int = Field(default=12, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # lz4 (native, via cramjam) costs a fraction of gzip, which aiokafka runs in pure Python
    compression: Literal["lz4", "zstd", "gzip", "snappy", "none"] = "lz4"
    # How long the worker's producer waits to fill a batch (outputs and changelog records).
    producer_linger_ms: int = Field(default=10, ge=0, le=1000)

    # --- Worker -----------------------------------------------------------------------------
    # Consumer group and table namespace. Unset, it is "novaquota-enforcement" under the
    # default topic prefix and "<prefix>enforcement" under any other, so that two deployments
    # with their own prefixes on one cluster never share a group or changelog topics.
    app_id: str = "novaquota-enforcement"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: Path = Path("./var/worker")
    log_level: str = "INFO"
    # A killed worker's partitions move after this long (Faust's default is 60 s).
    session_timeout_seconds: float = Field(default=15.0, gt=1)
    # Memory bounds: parsed tenant records kept hot (estimated parsed bytes), and one RocksDB
    # block cache shared by every table and partition, memtables charged to it.
    state_cache_mb: int = Field(default=32, ge=0)
    rocksdb_memory_mb: int = Field(default=128, ge=8)
    malloc_arenas: int = Field(default=2, ge=0)  # glibc M_ARENA_MAX for the worker (0: default)
    # The write batch: messages whose effects are written (changelog, then RocksDB) and acked
    # together. A batch is written at this many messages, when its first message has waited
    # this long, or as soon as nothing more is waiting.
    batch_max_events: int = Field(default=1000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    # How long the check API waits for the tenant's agent to decide a reserve (then 503).
    admission_timeout_seconds: float = Field(default=10.0, gt=0)

    # --- HTTP API authentication (contract section 6) ---------------------------------------
    # Where peers reach this worker's web server (Faust's canonical URL); unset, it is
    # http://<web_host>:<web_port>, which peers cannot use when bound to 0.0.0.0.
    advertised_url: str | None = None
    # Static API tokens, argon2-hashed (``novaquota tokens create``); re-read when it changes.
    tokens_file: Path = Path("./var/tokens.json")
    # Anonymous callers: off (unset or "false"), "true" (an admin), or the role they get.
    auth_anonymous: str | None = None
    # OIDC/JWT bearer tokens: a JWKS URL or file; unset, JWTs are refused.
    jwt_jwks: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: str = "RS256,ES256"
    jwt_subject_claim: str = "sub"
    jwt_role_claim: str = "novaquota_role"
    jwt_tenant_claim: str = "novaquota_tenant"
    # Shared by the workers of one deployment: how they read each other's internal endpoints.
    internal_secret: SecretStr | None = None
    # Requests with a larger body answer 413.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Browser origins allowed to call the API (CORS, both ports), comma-separated, exactly as
    # the browser sends them (https://dash.example.com); empty: no CORS headers at all.
    cors_origins: str = ""

    # --- Live feed (/api/v1/quotas/live) ----------------------------------------------------
    # The owner of a tenant publishes coalesced usage snapshots for the feed (off: subscribers
    # still get violations and alerts, but no usage_updated).
    live_publish: bool = True
    # Per client: messages waiting to be sent before it is called lagging and closed (at least
    # the rows one snapshot of a subscribed tenant can change), and the send buffers of its
    # socket (kernel and transport). Open subscriptions per worker are capped.
    live_client_queue: int = Field(default=1000, ge=1, le=100_000)
    live_socket_buffer_kb: int = Field(default=64, ge=4, le=16_384)
    live_max_clients: int = Field(default=1000, ge=0)

    # --- Dashboard (/ui/ on the projection workers) -----------------------------------------
    # Where the browser reaches the enforcement API (checks, quotas, the live WebSocket); the
    # page reads it from /ui/config.json. Unset: http://<the host the page was loaded from>:
    # <web_port>. That origin must be in the enforcement workers' NOVAQUOTA_CORS_ORIGINS.
    ui_api_url: str | None = None

    # --- Observability ----------------------------------------------------------------------
    log_format: str = "json"  # json or text (any case)
    metrics_top_n: int = Field(default=50, ge=0)  # per-entity series: the N most utilized
    ready_max_lag: int = Field(default=100_000, ge=0)  # /readyz: consumer lag bound (0: none)
    health_broker_timeout_seconds: float = Field(default=60.0, gt=0)

    # Test-only: messages with these CloudEvent ids (comma-separated) raise half-way through
    # their processing, so fault tests can drive the internal-error path. Never set in use.
    fault_event_ids: str = ""

    # --- Validation limits (contract section 3) ---------------------------------------------
    max_amount: float = 1e12  # sanity cap on any single amount
    max_clock_skew_seconds: float = 300.0  # event time ahead of record timestamp

    # --- Local broker (ops/kafka) -----------------------------------------------------------
    kafka_version: str = "4.4.0"  # newest release passing the suite: see ops/kafka_local.py
    kafka_home: Path = Path.home() / ".cache" / "novaquota" / "kafka"
    kafka_data_dir: Path | None = None  # broker storage; None means <kafka_home>/data
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)  # KRaft CONTROLLER listener
    kafka_heap: str = "-Xmx512m -Xms256m"  # JVM heap flags of the local broker

    @model_validator(mode="before")
    @classmethod
    def _app_id_follows_prefix(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("app_id"):
            prefix = data.get("topic_prefix")
            if prefix and prefix != DEFAULT_TOPIC_PREFIX:
                data = {**data, "app_id": f"{prefix}enforcement"}
        return data

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, v: str) -> str:
        fmt = v.strip().lower()
        if fmt not in ("json", "text"):
            raise ValueError(f"log format must be one of json, text, not {v!r}")
        return fmt

    @field_validator("auth_anonymous")
    @classmethod
    def _auth_anonymous(cls, v: str | None) -> str | None:
        """Normalized to None (off) or a role."""
        from novaquota.streams.auth import ROLES

        value = (v or "").strip().lower()
        if value in ("", "false", "0", "no", "off"):
            return None
        if value in ("true", "1", "yes", "on"):
            return "admin"
        if value not in ROLES:
            raise ValueError(f"auth_anonymous must be true, false or a role, not {v!r}")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins(cls, v: str) -> str:
        from novaquota.streams.cors import parse_origins

        parse_origins(v)  # ValueError names the bad entry
        return v

    @property
    def cors_origin_set(self) -> frozenset[str]:
        from novaquota.streams.cors import parse_origins

        return parse_origins(self.cors_origins)

    @property
    def canonical_url(self) -> str:
        return (self.advertised_url or f"http://{self.web_host}:{self.web_port}").rstrip("/")

    @property
    def compression_type(self) -> str | None:
        return None if self.compression == "none" else self.compression

    @cached_property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    def kafka_client_config(self) -> dict[str, Any]:
        """Keyword arguments shared by every aiokafka client we create."""
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_username
            cfg["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            cfg["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        return cfg
