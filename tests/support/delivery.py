"""Delivery tests: output records built with the project's own models, local receivers (an
aiohttp webhook receiver that checks signatures, a fake Slack, a fake PagerDuty Events API,
aiosmtpd for mail) and a real ``novaquota deliver`` process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email import message_from_bytes
from pathlib import Path
from typing import Any

from aiohttp import web

from novaquota.schemas.codec import encode
from novaquota.schemas.outputs import QuotaAlert, QuotaViolation, QuotaViolationResolved
from novaquota.streams.delivery.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.support.worker import LoggedProcess, free_port

__all__ = [
    "DeliveryProcess",
    "Receivers",
    "alert_record",
    "resolved_record",
    "violation_record",
]

_T0 = datetime(2026, 11, 1, 10, tzinfo=UTC)


def _violation_fields(tenant: str, vid: str, severity: str, kind: str, t: float) -> dict[str, Any]:
    return {
        "violation_id": vid,
        "tenant_id": tenant,
        "level": "tenant",
        "entity_id": tenant,
        "resource_type": "cpu",
        "kind": kind,
        "limit_type": "hard",
        "limit": Decimal(4),
        "usage": Decimal(6),
        "detected_at": _T0 + timedelta(seconds=t),
        "cause_event_id": f"ev-{vid}",
        "enforcement_action": "deny",
        "severity": severity,
    }


def _us(t: float) -> int:
    return int((_T0 + timedelta(seconds=t)).timestamp() * 1_000_000)


def violation_record(
    tenant: str, vid: str, *, severity: str = "critical", kind: str = "over_limit", t: float = 0
) -> tuple[bytes, bytes]:
    """(key, value) of a ``quota.violation`` as the enforcement worker writes it."""
    data = QuotaViolation(**_violation_fields(tenant, vid, severity, kind, t))
    value = encode(
        QuotaViolation.TYPE,
        data,
        source="novaquota/enforcement",
        id=f"{vid}-opened",
        time_us=_us(t),
        subject=f"tenant/{tenant}/cpu",
    )
    return tenant.encode(), value


def resolved_record(
    tenant: str, vid: str, *, severity: str = "critical", kind: str = "over_limit", t: float = 60
) -> tuple[bytes, bytes]:
    data = QuotaViolationResolved(
        **_violation_fields(tenant, vid, severity, kind, 0),
        resolved_at=_T0 + timedelta(seconds=t),
        resolved_cause_event_id=f"ev-{vid}-end",
    )
    value = encode(
        QuotaViolationResolved.TYPE,
        data,
        source="novaquota/enforcement",
        id=f"{vid}-resolved",
        time_us=_us(t),
        subject=f"tenant/{tenant}/cpu",
    )
    return tenant.encode(), value


def alert_record(
    tenant: str,
    aid: str,
    *,
    severity: str = "warning",
    kind: str = "threshold",
    t: float = 0,
) -> tuple[bytes, bytes]:
    data = QuotaAlert(
        alert_id=aid,
        tenant_id=tenant,
        level="tenant",
        entity_id=tenant,
        resource_type="cpu",
        kind=kind,
        threshold=Decimal(80),
        utilization=Decimal("85.5"),
        severity=severity,
        message="cpu utilization crossed 80%",
        detected_at=_T0 + timedelta(seconds=t),
        cause_event_id=f"ev-{aid}",
    )
    value = encode(
        QuotaAlert.TYPE,
        data,
        source="novaquota/enforcement",
        id=aid,
        time_us=_us(t),
        subject=f"tenant/{tenant}/cpu",
    )
    return tenant.encode(), value


@dataclass
class Receivers:
    """Local servers on their own event loop in a thread; each records what it accepted.

    Webhooks: ``POST /hook/<name>`` checks the HMAC signature with the key of ``<name>`` and
    answers 401 to a bad one; ``fail_first[name] = n`` answers 503 to the first n requests;
    ``down`` names hooks that always answer 503. Slack: ``POST /slack/<name>``. PagerDuty:
    ``POST /pd/v2/enqueue`` checks the routing key (400 otherwise) and keeps triggers and
    resolves by dedup_key. Mail: an aiosmtpd server.
    """

    hook_keys: dict[str, str] = field(default_factory=dict)
    routing_key: str = ""
    fail_first: dict[str, int] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    #: seconds each webhook/PagerDuty answer waits (a slow receiver)
    delay: float = 0.0
    port: int = field(default_factory=free_port)
    smtp_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.hooks: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.hook_times: dict[str, list[float]] = defaultdict(list)
        self.requests: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.slack: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.pagerduty: list[dict[str, Any]] = []
        self.mails: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- handlers ----------------------------------------------------------------------------

    async def _hook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        with self.lock:
            self.requests[name] += 1
            n = self.requests[name]
        if self.delay:
            await asyncio.sleep(self.delay)
        ok = verify(
            self.hook_keys.get(name, ""),
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            body,
            now=time.time(),
        )
        if not ok:
            with self.lock:
                self.rejected[name] += 1
            return web.json_response({"error": "bad signature"}, status=401)
        if name in self.down or n <= self.fail_first.get(name, 0):
            return web.json_response({"error": "try later"}, status=503)
        payload = json.loads(body)
        if payload["idempotency_key"] != request.headers.get("Idempotency-Key"):
            return web.json_response({"error": "idempotency key mismatch"}, status=400)
        with self.lock:
            self.hooks[name].append(payload)
            self.hook_times[name].append(time.monotonic())
        return web.json_response({"ok": True})

    async def _slack(self, request: web.Request) -> web.Response:
        payload = await request.json()
        if not isinstance(payload.get("text"), str) or not isinstance(payload.get("blocks"), list):
            return web.Response(status=400, text="invalid_payload")
        with self.lock:
            self.slack[request.match_info["name"]].append(payload)
        return web.Response(text="ok")

    async def _pagerduty(self, request: web.Request) -> web.Response:
        event = await request.json()
        if self.delay:
            await asyncio.sleep(self.delay)
        if event.get("routing_key") != self.routing_key:
            return web.json_response({"status": "invalid event"}, status=400)
        if event.get("event_action") not in ("trigger", "resolve") or not event.get("dedup_key"):
            return web.json_response({"status": "invalid event"}, status=400)
        if event["event_action"] == "trigger" and not event.get("payload", {}).get("summary"):
            return web.json_response({"status": "invalid event"}, status=400)
        with self.lock:
            self.pagerduty.append(event)
        return web.json_response({"status": "success", "dedup_key": event["dedup_key"]}, status=202)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Receivers:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("receivers did not start")
        return self

    def _run(self) -> None:
        from aiosmtpd.controller import Controller

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_post("/hook/{name}", self._hook)
        app.router.add_post("/slack/{name}", self._slack)
        app.router.add_post("/pd/v2/enqueue", self._pagerduty)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        receivers = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with receivers.lock:
                    receivers.mails.append(message_from_bytes(envelope.content))
                return "250 Message accepted for delivery"

        self._smtp = Controller(Handler(), hostname="127.0.0.1", port=self.smtp_port)
        self._smtp.start()
        self._runner = runner
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None:
            self._smtp.stop()
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(30)

    # --- what arrived ------------------------------------------------------------------------

    def hook_keys_seen(self, name: str) -> list[str]:
        with self.lock:
            return [p["idempotency_key"] for p in self.hooks[name]]

    def slack_keys_seen(self, name: str) -> list[str]:
        with self.lock:
            texts = [p["blocks"][-1]["elements"][0]["text"] for p in self.slack[name]]
        return [t.split("`")[1] for t in texts]

    def pd_events(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.pagerduty)

    def mail_keys_seen(self) -> list[str]:
        with self.lock:
            return [str(m["X-Novaquota-Idempotency-Key"]) for m in self.mails]


class DeliveryProcess(LoggedProcess):
    """One real ``novaquota deliver`` process for a test deployment."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic_prefix: str,
        config: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "NOVAQUOTA_TOPIC_PREFIX": topic_prefix,
            "NOVAQUOTA_DELIVERY_CONFIG": str(config),
            "NOVAQUOTA_DELIVERY_WEB_PORT": str(self.port),
            "NOVAQUOTA_DELIVERY_START_FROM": "earliest",
            "NOVAQUOTA_DELIVERY_COMMIT_INTERVAL_SECONDS": "0.2",
            "NOVAQUOTA_SESSION_TIMEOUT_SECONDS": "6",
            "NOVAQUOTA_LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True) -> DeliveryProcess:
        self.spawn([sys.executable, "-m", "novaquota.ops.cli", "deliver"], self.env)
        if wait_ready:
            self.wait_ready()
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def health(self) -> dict[str, Any]:
        """The /healthz body; {} while nothing answers."""
        try:
            status, body = self.get("/healthz")
        except OSError:
            return {}
        return dict(json.loads(body)) if status in (200, 503) else {}

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"deliver exited with {self.proc.returncode}:\n{self.tail()}")
            h = self.health()
            if h.get("status") == "running" and h.get("assigned_partitions"):
                return
            time.sleep(0.3)
        raise TimeoutError(f"deliver not ready after {timeout}s:\n{self.tail()}")

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        _, text = self.get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            metric, _, rest = sample.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and got == want:
                return float(value)
        return 0.0

    def tail(self, n: int = 80) -> str:
        return super().tail(n)


def tls_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (PEM files: certificate, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class SecureSmtp:
    """aiosmtpd that requires STARTTLS and a login (``user``/``password``) before mail."""

    def __init__(self, cert: Path, key: Path, *, user: str, password: str) -> None:
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.port = free_port()
        self.mails: list[Any] = []
        self.logins: list[tuple[str, bool]] = []
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        outer = self

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> Any:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == user
                and data.password.decode() == password
            )
            outer.logins.append((data.login.decode() if ok else "?", ok))
            return AuthResult(success=ok, handled=False)  # unhandled: aiosmtpd answers 535

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                outer.mails.append(message_from_bytes(envelope.content))
                return "250 Message accepted for delivery"

        self.controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
        )

    def __enter__(self) -> SecureSmtp:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
