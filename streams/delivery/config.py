"""The delivery configuration (a YAML or JSON file): channels, routes, retries, rate limits.

Validated by pydantic; every error names the field (``channels.pager.routing_key: ...``) and
never echoes the value it found, since that value may be a secret somebody pasted by mistake.
Secrets are never written in the file: a secret field takes ``{env: NAME}`` or ``{file: PATH}``
and ``load_config`` reads them all up front, so a missing variable or file stops the worker
before it consumes anything.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from novaquota.schemas.common import AlertKind, Severity, ViolationKind
from novaquota.streams.delivery.exceptions import ConfigError

__all__ = [
    "KINDS",
    "MESSAGE_TYPES",
    "SEVERITIES",
    "Channel",
    "DeliveryConfig",
    "EmailChannel",
    "PagerDutyChannel",
    "RateLimit",
    "RetryPolicy",
    "Route",
    "SecretRef",
    "SlackChannel",
    "WebhookChannel",
    "load_config",
    "parse_config",
]

MessageType = Literal["quota.violation", "quota.violation_resolved", "quota.alert"]
MESSAGE_TYPES: Final[tuple[str, ...]] = get_args(MessageType)
SEVERITIES: Final[tuple[str, ...]] = get_args(Severity)  # in rising order
KINDS: Final[tuple[str, ...]] = (*get_args(ViolationKind), *get_args(AlertKind))
Kind = Literal[
    "over_limit",
    "over_burst",
    "burst_expired",
    "grace_expired",
    "window_exceeded",
    "budget_exceeded",
    "threshold",
    "burst",
    "soft_limit",
    "cost",
    "forecast",
    "anomaly",
    "policy",
]
assert set(get_args(Kind)) == set(KINDS), "Kind must list every violation and alert kind"

_CHANNEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_HEADERS: Final = frozenset(
    {"content-type", "idempotency-key", "x-novaquota-timestamp", "x-novaquota-signature"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretRef(_Strict):
    """Where a secret is read from: ``{env: NAME}`` or ``{file: PATH}`` (relative to the
    configuration file; its content without the trailing newline)."""

    env: str | None = None
    file: Path | None = None
    _value: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(
                "a secret is never written in the configuration: give {env: NAME} or {file: PATH}"
            )
        return data

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        if self.env is not None and _ENV_NAME.fullmatch(self.env) is None:
            raise ValueError(f"env must be an environment variable name, not {self.env!r}")
        return self

    def resolve(self, where: str, base_dir: Path, environ: Mapping[str, str]) -> None:
        if self.env is not None:
            value = environ.get(self.env)
            if not value:
                raise ConfigError(f"{where}: environment variable {self.env} is not set or empty")
        else:
            assert self.file is not None
            path = self.file if self.file.is_absolute() else base_dir / self.file
            try:
                value = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(
                    f"{where}: cannot read secret file {path}: {exc.strerror}"
                ) from None
            if not value:
                raise ConfigError(f"{where}: secret file {path} is empty")
        self._value = SecretStr(value)

    def get(self) -> str:
        if self._value is None:
            raise RuntimeError("secret not resolved: load the configuration with load_config")
        return self._value.get_secret_value()

    @property
    def resolved(self) -> bool:
        return self._value is not None


class RetryPolicy(_Strict):
    """Exponential backoff: attempt n (from 1) waits ``min(cap, base * factor**(n-1))`` before
    the next, ± ``jitter`` of it; a delivery gives up (dead letter) after ``max_attempts``
    attempts or once ``max_age_seconds`` have passed since its first attempt."""

    base_seconds: float = Field(default=1.0, gt=0, le=3600)
    factor: float = Field(default=2.0, ge=1, le=100)
    cap_seconds: float = Field(default=60.0, gt=0, le=86400)
    max_attempts: int = Field(default=8, ge=1, le=1000)
    max_age_seconds: float = Field(default=600.0, gt=0, le=7 * 86400)
    jitter: float = Field(default=0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _cap_above_base(self) -> RetryPolicy:
        if self.cap_seconds < self.base_seconds:
            raise ValueError("cap_seconds must be at least base_seconds")
        return self


class RateLimit(_Strict):
    """A token bucket: ``per_second`` sustained, bursts of up to ``burst`` requests."""

    per_second: float = Field(gt=0, le=100_000)
    burst: int | None = Field(default=None, ge=1, le=100_000)

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.per_second))


class _ChannelBase(_Strict):
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: attempts in flight at once on this channel (waiting retries do not count)
    concurrency: int = Field(default=4, ge=1, le=256)
    rate_limit: RateLimit | None = None
    #: overrides the top-level ``retry`` for this channel
    retry: RetryPolicy | None = None

    def secrets(self) -> Iterator[tuple[str, SecretRef]]:
        """(field name, reference) of every secret of the channel."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretRef):
                yield name, value


class WebhookChannel(_ChannelBase):
    """POST of the record as JSON, signed with HMAC-SHA256 over ``<timestamp>.<body>``."""

    type: Literal["webhook"]
    url: AnyHttpUrl
    secret: SecretRef
    #: extra, non-secret request headers
    headers: dict[str, str] = {}

    @field_validator("headers")
    @classmethod
    def _own_headers(cls, v: dict[str, str]) -> dict[str, str]:
        taken = sorted(h for h in v if h.lower() in _RESERVED_HEADERS)
        if taken:
            raise ValueError(f"these headers are set by the worker: {', '.join(taken)}")
        return v


class SlackChannel(_ChannelBase):
    """A Slack incoming webhook; its URL is the credential, so it is a secret reference."""

    type: Literal["slack"]
    url: SecretRef


class PagerDutyChannel(_ChannelBase):
    """PagerDuty Events API v2: trigger on a violation or an alert, resolve on
    ``quota.violation_resolved``; ``dedup_key`` is the violation_id (or alert_id)."""

    type: Literal["pagerduty"]
    routing_key: SecretRef
    url: AnyHttpUrl = AnyHttpUrl("https://events.pagerduty.com/v2/enqueue")
    #: the ``payload.source`` of triggers
    source: str = Field(default="novaquota", min_length=1, max_length=255)


class EmailChannel(_ChannelBase):
    """Plain-text mail over SMTP, with optional STARTTLS (or implicit TLS) and login."""

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    #: implicit TLS from the first byte (SMTPS, usually port 465)
    ssl: bool = False
    #: CA certificates (PEM) that sign the server's certificate, when not a public CA
    ca_file: Path | None = None
    username: str | None = None
    password: SecretRef | None = None
    sender: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)
    subject_prefix: str = "[novaquota]"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("sender")
    @classmethod
    def _sender(cls, v: str) -> str:
        if "@" not in v:
            raise ValueError("must be a mail address")
        return v

    @field_validator("to")
    @classmethod
    def _to(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if "@" not in a]
        if bad:
            raise ValueError(f"not mail addresses: {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _tls_and_login(self) -> EmailChannel:
        if self.ssl and self.starttls:
            raise ValueError("ssl and starttls exclude each other")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


Channel = Annotated[
    WebhookChannel | SlackChannel | PagerDutyChannel | EmailChannel, Field(discriminator="type")
]


class Route(_Strict):
    """Which records go to which channels. Every criterion given must match (a list matches
    any of its entries); a route without criteria matches everything. A record goes to the
    channels of every route it matches, each channel once."""

    name: str | None = None
    tenant_ids: list[str] = []
    tenant_prefixes: list[str] = []
    #: this severity or a higher one (info < warning < critical < emergency)
    min_severity: Severity | None = None
    severities: list[Severity] = []
    kinds: list[Kind] = []
    types: list[MessageType] = []
    channels: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_severity_rule(self) -> Route:
        if self.min_severity is not None and self.severities:
            raise ValueError("give min_severity or severities, not both")
        return self


class DeliveryConfig(_Strict):
    channels: dict[str, Channel] = Field(min_length=1)
    routes: list[Route] = Field(min_length=1)
    retry: RetryPolicy = RetryPolicy()

    @field_validator("channels")
    @classmethod
    def _names(cls, v: dict[str, Channel]) -> dict[str, Channel]:
        for name in v:
            if _CHANNEL_NAME.fullmatch(name) is None:
                raise ValueError(
                    f"channel name {name!r}: letters, digits, '_', '.', '-' (at most 64)"
                )
        return v

    @model_validator(mode="after")
    def _routes_name_channels(self) -> DeliveryConfig:
        for i, route in enumerate(self.routes):
            unknown = [c for c in route.channels if c not in self.channels]
            if unknown:
                raise ValueError(
                    f"routes[{i}].channels: unknown channel(s) {', '.join(unknown)}; "
                    f"configured: {', '.join(sorted(self.channels))}"
                )
        return self

    def retry_for(self, channel: str) -> RetryPolicy:
        return self.channels[channel].retry or self.retry

    def secret_values(self) -> list[str]:
        """Every resolved secret (for redaction), longest first."""
        values = [
            ref.get()
            for ch in self.channels.values()
            for _, ref in ch.secrets()
            if ref is not None and ref.resolved
        ]
        return sorted(set(values), key=len, reverse=True)


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("webhook", "slack", "pagerduty", "email") and out.startswith("channels."):
            continue  # the union's tag adds nothing to channels.<name>.<field>
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _messages(exc: ValidationError) -> list[str]:
    # Never ``str(exc)``: it prints the input, which may be a secret pasted in by mistake.
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        msg = str(err["msg"])
        if err["type"] == "union_tag_invalid":
            msg = "type must be one of webhook, slack, pagerduty, email"
        elif err["type"] == "union_tag_not_found":
            msg = "type is required (webhook, slack, pagerduty or email)"
        msg = msg.removeprefix("Value error, ")
        out.append(f"{_location(tuple(err['loc']))}: {msg}")
    return out


def parse_config(
    raw: Mapping[str, Any],
    *,
    base_dir: Path = Path("."),
    environ: Mapping[str, str] | None = None,
    origin: str = "delivery configuration",
) -> DeliveryConfig:
    """Validate ``raw`` and resolve every secret; ConfigError lists every problem found."""
    try:
        config = DeliveryConfig.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  {m}" for m in _messages(exc))
        raise ConfigError(f"{origin} is invalid:\n{lines}") from None
    env = os.environ if environ is None else environ
    for name, channel in config.channels.items():
        for field, ref in channel.secrets():
            ref.resolve(f"{origin}: channels.{name}.{field}", base_dir, env)
        if isinstance(channel, EmailChannel) and channel.ca_file is not None:
            ca = channel.ca_file if channel.ca_file.is_absolute() else base_dir / channel.ca_file
            if not ca.is_file():
                raise ConfigError(f"{origin}: channels.{name}.ca_file: {ca} is not a file")
            channel.ca_file = ca
        if isinstance(channel, SlackChannel) and not channel.url.get().startswith(
            ("https://", "http://")
        ):
            raise ConfigError(f"{origin}: channels.{name}.url: the secret is not an http(s) URL")
    return config


def load_config(path: Path | str, *, environ: Mapping[str, str] | None = None) -> DeliveryConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON file and ``parse_config`` it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read delivery configuration {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
        # Only the position: the offending line could hold a secret pasted in by mistake.
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else getattr(exc, "lineno", None)
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
        at = f" at line {line}" if line else ""
        raise ConfigError(f"{path}: not valid {kind}{at}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with channels and routes")
    return parse_config(raw, base_dir=path.parent, environ=environ, origin=str(path))
