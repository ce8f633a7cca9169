"""The four channel kinds: what each sends (pure payload builders) and how (one attempt).

An attempt either returns (delivered) or raises ``DeliveryError`` saying whether a retry may
help. Error messages are made of status codes and exception type names only, never a URL, a
header or a response body, so that no secret can reach a log or a dead-letter header (the
worker redacts the configured secrets on top of that).
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import ssl
import time
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol

import aiohttp

from novaquota.streams.delivery.config import (
    Channel,
    EmailChannel,
    PagerDutyChannel,
    SlackChannel,
    WebhookChannel,
)
from novaquota.streams.delivery.exceptions import DeliveryError
from novaquota.streams.delivery.records import Notification, dumps
from novaquota.streams.delivery.signing import signature_headers

__all__ = [
    "ATTEMPT_HEADER",
    "IDEMPOTENCY_HEADER",
    "Sender",
    "email_message",
    "make_sender",
    "pagerduty_event",
    "slack_payload",
    "webhook_body",
    "webhook_headers",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
ATTEMPT_HEADER = "X-Novaquota-Attempt"
USER_AGENT = "novaquota-delivery/1"
_PD_SEVERITY = {
    "info": "info",
    "warning": "warning",
    "critical": "critical",
    "emergency": "critical",
}
_SLACK_EMOJI = {
    "info": ":information_source:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
    "emergency": ":fire:",
}


# --- payloads (pure) -------------------------------------------------------------------------


def webhook_body(n: Notification) -> bytes:
    """The same bytes on every attempt and every redelivery of the record."""
    body = {
        "idempotency_key": n.idempotency_key,
        "type": n.type,
        "id": n.id,
        "tenant_id": n.tenant_id,
        "severity": n.severity,
        "kind": n.kind,
        "summary": n.summary(),
        "event": n.event_json(),
    }
    return dumps(body)


def webhook_headers(
    n: Notification, body: bytes, key: str, *, timestamp: int, attempt: int
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: n.idempotency_key,
        ATTEMPT_HEADER: str(attempt),
        **signature_headers(key, timestamp, body),
    }


def slack_payload(n: Notification) -> dict[str, Any]:
    """An incoming-webhook message: ``text`` (notifications, fallback) and Block Kit blocks."""
    d = n.data
    headline = f"{_SLACK_EMOJI.get(n.severity, '')} *{n.summary()}*".strip()
    fields = [
        f"*Tenant:* {d.tenant_id}",
        f"*Scope:* {d.level} `{d.entity_id}`",
        f"*Resource:* {d.resource_type}",
        f"*Kind:* {n.kind}",
        f"*Severity:* {n.severity}",
        f"*Type:* {n.type}",
    ]
    return {
        "text": n.summary(),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f} for f in fields],
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"idempotency key `{n.idempotency_key}`"}],
            },
        ],
    }


def pagerduty_event(n: Notification, routing_key: str, source: str) -> dict[str, Any]:
    """Events API v2: ``resolve`` for ``quota.violation_resolved``, ``trigger`` otherwise;
    ``dedup_key`` is the violation_id (or the alert_id)."""
    if n.is_resolve:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": n.dedup_key}
    event = n.event_json()
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": n.dedup_key,
        "payload": {
            "summary": n.summary()[:1024],
            "source": source,
            "severity": _PD_SEVERITY.get(n.severity, "error"),
            "timestamp": event["data"].get("detected_at") or event.get("time"),
            "component": n.data.resource_type,
            "group": n.tenant_id,
            "class": n.kind,
            "custom_details": {
                "type": n.type,
                "idempotency_key": n.idempotency_key,
                **event["data"],
            },
        },
    }


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def _message_id(key: str) -> str:
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@novaquota>"


def email_message(n: Notification, cfg: EmailChannel) -> EmailMessage:
    """Plain text; ``Message-ID`` is derived from the idempotency key, so a redelivered mail
    carries the same id (mail clients thread or drop it)."""
    msg = EmailMessage()
    msg["Subject"] = f"{cfg.subject_prefix} {n.summary()}".strip()[:250]
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["Message-ID"] = _message_id(n.idempotency_key)
    msg["Date"] = formatdate(usegmt=True)
    msg["X-Novaquota-Idempotency-Key"] = n.idempotency_key
    event = n.event_json()
    lines = [
        n.summary(),
        "",
        *(f"{k}: {_text(v)}" for k, v in event["data"].items() if v is not None),
        "",
        f"type: {n.type}",
        f"event id: {event.get('id')}",
        f"event time: {event.get('time')}",
        f"idempotency key: {n.idempotency_key}",
    ]
    msg.set_content("\n".join(lines) + "\n")
    return msg


# --- senders ---------------------------------------------------------------------------------


class Sender(Protocol):
    name: str

    async def attempt(self, n: Notification, attempt: int) -> None: ...


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the backoff decides


async def _post(
    session: aiohttp.ClientSession,
    label: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
) -> None:
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            await resp.read()
            status = resp.status
            retry_after = _retry_after(resp.headers.get("Retry-After"))
    except TimeoutError:
        raise DeliveryError(f"{label}: no answer within {timeout:g} s", retryable=True) from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(
            f"{label}: request failed ({type(exc).__name__})", retryable=True
        ) from None
    if 200 <= status < 300:
        return
    retryable = status in (408, 425, 429) or status >= 500
    raise DeliveryError(f"{label}: HTTP {status}", retryable=retryable, retry_after=retry_after)


class WebhookSender:
    def __init__(
        self,
        name: str,
        cfg: WebhookChannel,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.session = session
        self.clock = clock

    async def attempt(self, n: Notification, attempt: int) -> None:
        body = webhook_body(n)
        headers = {
            **self.cfg.headers,
            **webhook_headers(
                n, body, self.cfg.secret.get(), timestamp=int(self.clock()), attempt=attempt
            ),
        }
        await _post(
            self.session, "webhook", str(self.cfg.url), body, headers, self.cfg.timeout_seconds
        )


class SlackSender:
    def __init__(self, name: str, cfg: SlackChannel, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.cfg = cfg
        self.session = session

    async def attempt(self, n: Notification, attempt: int) -> None:
        body = dumps(slack_payload(n))
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        await _post(
            self.session, "slack", self.cfg.url.get(), body, headers, self.cfg.timeout_seconds
        )


class PagerDutySender:
    def __init__(self, name: str, cfg: PagerDutyChannel, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.cfg = cfg
        self.session = session

    async def attempt(self, n: Notification, attempt: int) -> None:
        event = pagerduty_event(n, self.cfg.routing_key.get(), self.cfg.source)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        await _post(
            self.session,
            "pagerduty",
            str(self.cfg.url),
            dumps(event),
            headers,
            self.cfg.timeout_seconds,
        )


def _tls(cfg: EmailChannel) -> ssl.SSLContext:
    cafile = str(cfg.ca_file) if cfg.ca_file is not None else None
    return ssl.create_default_context(cafile=cafile)  # verifies the certificate and host name


def _smtp_send(cfg: EmailChannel, msg: EmailMessage) -> None:
    smtp: smtplib.SMTP
    if cfg.ssl:
        smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=_tls(cfg))
    else:
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
    with smtp:
        if cfg.starttls:
            smtp.starttls(context=_tls(cfg))
        if cfg.username is not None and cfg.password is not None:
            smtp.login(cfg.username, cfg.password.get())
        smtp.send_message(msg)


class EmailSender:
    """stdlib smtplib in a thread: one connection per mail, which is what a handful of alerts
    a minute needs."""

    def __init__(self, name: str, cfg: EmailChannel) -> None:
        self.name = name
        self.cfg = cfg

    async def attempt(self, n: Notification, attempt: int) -> None:
        msg = email_message(n, self.cfg)
        try:
            await asyncio.to_thread(_smtp_send, self.cfg, msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            retryable = any(400 <= c < 500 for c in codes)
            raise DeliveryError(
                f"email: recipients refused (SMTP {', '.join(map(str, codes))})",
                retryable=retryable,
            ) from None
        except smtplib.SMTPResponseException as exc:
            code = int(exc.smtp_code)
            raise DeliveryError(
                f"email: SMTP {code} ({type(exc).__name__})", retryable=not 500 <= code < 600
            ) from None
        except ssl.SSLCertVerificationError:
            raise DeliveryError(
                "email: the server's certificate is not trusted (see ca_file)", retryable=False
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"email: {type(exc).__name__}", retryable=True) from None


def make_sender(name: str, cfg: Channel, session: aiohttp.ClientSession) -> Sender:
    if isinstance(cfg, WebhookChannel):
        return WebhookSender(name, cfg, session)
    if isinstance(cfg, SlackChannel):
        return SlackSender(name, cfg, session)
    if isinstance(cfg, PagerDutyChannel):
        return PagerDutySender(name, cfg, session)
    return EmailSender(name, cfg)
