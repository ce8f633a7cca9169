"""The Python client of the NovaCron Quota Stream HTTP API: admission checks, reservations and
event publishing, with typed results.

Two halves with the same methods: ``QuotaClient`` (blocking) and ``AsyncQuotaClient`` (asyncio).

    from novaquota.client import QuotaClient

    with QuotaClient("http://localhost:6066", token="nq_...") as quotas:
        answer = quotas.check("acme", {"cpu": 8, "memory": 16384}, project_id="web")
        if answer.allowed:
            grant = quotas.reserve("acme", {"cpu": 8}, resource_id="vm-42", ttl_seconds=120)
            ...  # create the VM; its vm.created event converts the grant into usage

The token (``novaquota tokens create``, or a JWT) is sent as ``Authorization: Bearer``; without
``token=`` the client uses the environment variable ``NOVAQUOTA_TOKEN``. The audit topic records
the token's principal as the actor of grants and releases.

Behaviour under failure (``ClientConfig``):

- each request has a timeout; a 503 (the tenant's partition is moving during a rebalance), a
  connection error or a timeout is retried with exponential backoff and jitter, honouring
  ``Retry-After``; 4xx answers are never retried (``QuotaApiError``);
- a reserve always carries an ``idempotency_key`` (one is made when none is given), so a retry
  can never hold capacity twice;
- after ``breaker_threshold`` consecutive failures the circuit opens for ``breaker_reset_seconds``:
  calls do not reach the network, and a check answers by policy: ``fail_open=True`` allows
  (``degraded=True``, no reservation), ``fail_open=False`` (the default) denies. One trial call
  goes through when the period ends (half-open); its success closes the circuit.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from novaquota.schemas.api import CheckResponse, GrantView

__all__ = [
    "AsyncQuotaClient",
    "BatchResult",
    "CircuitOpenError",
    "ClientConfig",
    "QuotaApiError",
    "QuotaClient",
    "QuotaClientError",
    "QuotaUnavailableError",
]

Amount = int | float | str | Decimal
RETRYABLE_STATUS = frozenset({502, 503, 504})


class QuotaClientError(Exception):
    """Base of the client's errors."""


class QuotaApiError(QuotaClientError):
    """The API refused the request (4xx) or failed (500): not retried."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


BatchResult = CheckResponse | QuotaApiError
"""One entry of ``check_batch``: the answer, or the error of a check with bad input."""


def _batch_results(body: Any) -> list[BatchResult]:
    out: list[BatchResult] = []
    for entry in body["results"]:
        error = entry.get("error") if isinstance(entry, dict) else None
        if isinstance(error, dict):
            code, message = error.get("code", "invalid_request"), error.get("message", "")
            out.append(QuotaApiError(400, str(code), str(message)))
        else:
            out.append(CheckResponse.model_validate(entry))
    return out


class QuotaUnavailableError(QuotaClientError):
    """Retries used up: the service did not answer (503, timeouts, connection errors)."""


class CircuitOpenError(QuotaUnavailableError):
    """The circuit breaker is open: the call did not reach the network."""


@dataclass(frozen=True)
class ClientConfig:
    timeout_seconds: float = 5.0
    retries: int = 4
    """Retries after the first attempt, for 502/503/504, timeouts and connection errors."""
    backoff_seconds: float = 0.1
    backoff_max_seconds: float = 2.0
    breaker_threshold: int = 5
    """Consecutive failed calls (after their retries) that open the circuit."""
    breaker_reset_seconds: float = 30.0
    fail_open: bool = False
    """While the circuit is open, or when retries are used up: allow (True) or deny checks."""
    headers: Mapping[str, str] = field(default_factory=dict)


class _Breaker:
    """Consecutive-failure circuit breaker, shared by the threads or tasks of one client."""

    def __init__(self, threshold: int, reset_seconds: float) -> None:
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at >= self.reset_seconds:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        with self._lock:
            st = self.state
            if st == "closed":
                return True
            if st == "half-open" and not self._trial:
                self._trial = True  # one trial call at a time
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.opened_at = None
            self._trial = False

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            self._trial = False
            if self.failures >= self.threshold or self.opened_at is not None:
                self.opened_at = time.monotonic()


class _Core:
    """What both halves share: request bodies, backoff, breaker, result parsing."""

    def __init__(self, base_url: str, token: str | None, config: ClientConfig) -> None:
        self.base_url = base_url.rstrip("/")
        self.config = config
        self.breaker = _Breaker(config.breaker_threshold, config.breaker_reset_seconds)
        headers = {"accept": "application/json", **config.headers}
        token = token or os.environ.get("NOVAQUOTA_TOKEN")
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.headers = headers

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.config.backoff_max_seconds)
            except ValueError:
                pass
        cap = min(self.config.backoff_max_seconds, self.config.backoff_seconds * 2**attempt)
        return random.uniform(cap / 2, cap)

    @staticmethod
    def check_body(
        tenant_id: str,
        resources: Mapping[str, Amount],
        *,
        project_id: str | None = None,
        user_id: str | None = None,
        reserve: bool = False,
        ttl_seconds: int | None = None,
        resource_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "tenant_id": tenant_id,
            "resources": {r: _json_amount(a) for r, a in resources.items()},
        }
        for key, value in (
            ("project_id", project_id),
            ("user_id", user_id),
            ("ttl_seconds", ttl_seconds),
            ("resource_id", resource_id),
        ):
            if value is not None:
                body[key] = value
        if reserve:
            body["reserve"] = True
            body["idempotency_key"] = idempotency_key or str(uuid.uuid4())
        elif idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return body

    def degraded(self, why: str) -> CheckResponse:
        allowed = self.config.fail_open
        policy = "failing open: allowed" if allowed else "failing closed: denied"
        return CheckResponse(
            allowed=allowed,
            reason=f"quota service unavailable ({why}); {policy}",
            degraded=True,
        )

    @staticmethod
    def raise_for(resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            err = resp.json().get("error", {})
            code, message = str(err.get("code", "error")), str(err.get("message", resp.text))
        except ValueError:
            code, message = "error", resp.text
        raise QuotaApiError(resp.status_code, code, message)


def _json_amount(a: Amount) -> int | float | str:
    if isinstance(a, Decimal):
        return str(a)
    return a


def _check_payload(item: Mapping[str, Any]) -> dict[str, Any]:
    body = dict(item)
    body["resources"] = {r: _json_amount(a) for r, a in item["resources"].items()}
    if body.get("reserve") and not body.get("idempotency_key"):
        body["idempotency_key"] = str(uuid.uuid4())
    return body


class AsyncQuotaClient:
    """asyncio client (httpx). Use as ``async with AsyncQuotaClient(url) as c: ...``."""

    def __init__(
        self,
        base_url: str = "http://localhost:6066",
        *,
        token: str | None = None,
        config: ClientConfig | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = _Core(base_url, token, config or ClientConfig())
        self._http = httpx.AsyncClient(
            base_url=self._core.base_url,
            headers=self._core.headers,
            timeout=self._core.config.timeout_seconds,
            transport=transport,
        )

    @property
    def breaker_state(self) -> str:
        return self._core.breaker.state

    async def __aenter__(self) -> AsyncQuotaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        core = self._core
        if not core.breaker.allow():
            raise CircuitOpenError("circuit open")
        last: str = ""
        for attempt in range(core.config.retries + 1):
            try:
                resp = await self._http.request(method, path, **kw)
            except httpx.TransportError as exc:  # connection errors and timeouts
                last = f"{type(exc).__name__}: {exc}"
                retry_after = None
            else:
                if resp.status_code not in RETRYABLE_STATUS:
                    core.breaker.success()
                    core.raise_for(resp)
                    return resp
                last = f"HTTP {resp.status_code}"
                retry_after = resp.headers.get("retry-after")
            if attempt < core.config.retries:
                await asyncio.sleep(core.delay(attempt, retry_after))
        core.breaker.failure()
        raise QuotaUnavailableError(f"{method} {path}: {last}")

    async def _check(self, body: dict[str, Any]) -> CheckResponse:
        try:
            resp = await self._request("POST", "/api/v1/quotas/check", json=body)
        except QuotaUnavailableError as exc:
            return self._core.degraded(str(exc))
        return CheckResponse.model_validate(resp.json())

    async def check(
        self,
        tenant_id: str,
        resources: Mapping[str, Amount],
        *,
        project_id: str | None = None,
        user_id: str | None = None,
    ) -> CheckResponse:
        """May this scope take these resources now? Holds nothing."""
        return await self._check(
            _Core.check_body(tenant_id, resources, project_id=project_id, user_id=user_id)
        )

    async def reserve(
        self,
        tenant_id: str,
        resources: Mapping[str, Amount],
        *,
        project_id: str | None = None,
        user_id: str | None = None,
        resource_id: str | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> CheckResponse:
        """Check and hold atomically; ``reservation_id`` is set when granted."""
        return await self._check(
            _Core.check_body(
                tenant_id,
                resources,
                project_id=project_id,
                user_id=user_id,
                reserve=True,
                ttl_seconds=ttl_seconds,
                resource_id=resource_id,
                idempotency_key=idempotency_key,
            )
        )

    async def check_batch(self, checks: Sequence[Mapping[str, Any]]) -> list[BatchResult]:
        """Up to 100 checks (each a ``POST /check`` body) in one request, answered in order; a
        check with bad input is a ``QuotaApiError`` in its place (the others are answered)."""
        payload = {"checks": [_check_payload(c) for c in checks]}
        try:
            resp = await self._request("POST", "/api/v1/quotas/check:batch", json=payload)
        except QuotaUnavailableError as exc:
            return [self._core.degraded(str(exc)) for _ in checks]
        return _batch_results(resp.json())

    async def release(self, tenant_id: str, reservation_id: str) -> GrantView | None:
        """Give a grant back before its TTL (None: a scheduled reservation, cancelled async)."""
        resp = await self._request(
            "DELETE",
            f"/api/v1/quotas/reservations/{reservation_id}",
            params={"tenant_id": tenant_id},
        )
        body = resp.json()
        return GrantView.model_validate(body["released"]) if "released" in body else None

    async def reservations(self, tenant_id: str) -> dict[str, Any]:
        resp = await self._request(
            "GET", "/api/v1/quotas/reservations", params={"tenant_id": tenant_id}
        )
        result: dict[str, Any] = resp.json()
        return result

    @staticmethod
    async def publish(
        events: Iterable[Mapping[str, Any]], *, bootstrap_servers: str | None = None
    ) -> int:
        """Validate and publish CloudEvents (dicts) to the resource-events or commands topic
        (as ``novaquota publish`` does); returns how many were sent. Invalid events raise
        ``QuotaApiError`` (code = the codec's reason) and nothing is sent."""
        import orjson

        from novaquota.ops.publish import publish_lines
        from novaquota.schemas.codec import decode
        from novaquota.schemas.exceptions import DecodeError
        from novaquota.streams.settings import Settings

        lines = [(i + 1, orjson.dumps(ev)) for i, ev in enumerate(events)]
        now_ms = int(time.time() * 1000)
        for lineno, line in lines:
            try:
                decode(line, None, record_timestamp_ms=now_ms)
            except DecodeError as exc:
                raise QuotaApiError(400, exc.reason, f"event {lineno}: {exc.message}") from None
        settings = (
            Settings(bootstrap_servers=bootstrap_servers) if bootstrap_servers else Settings()
        )
        result = await publish_lines(lines, settings)
        return result.sent


class QuotaClient:
    """Blocking client (httpx), thread-safe. Use as ``with QuotaClient(url) as c: ...``."""

    def __init__(
        self,
        base_url: str = "http://localhost:6066",
        *,
        token: str | None = None,
        config: ClientConfig | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._core = _Core(base_url, token, config or ClientConfig())
        self._http = httpx.Client(
            base_url=self._core.base_url,
            headers=self._core.headers,
            timeout=self._core.config.timeout_seconds,
            transport=transport,
        )

    @property
    def breaker_state(self) -> str:
        return self._core.breaker.state

    def __enter__(self) -> QuotaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        core = self._core
        if not core.breaker.allow():
            raise CircuitOpenError("circuit open")
        last = ""
        for attempt in range(core.config.retries + 1):
            try:
                resp = self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                retry_after = None
            else:
                if resp.status_code not in RETRYABLE_STATUS:
                    core.breaker.success()
                    core.raise_for(resp)
                    return resp
                last = f"HTTP {resp.status_code}"
                retry_after = resp.headers.get("retry-after")
            if attempt < core.config.retries:
                time.sleep(core.delay(attempt, retry_after))
        core.breaker.failure()
        raise QuotaUnavailableError(f"{method} {path}: {last}")

    def _check(self, body: dict[str, Any]) -> CheckResponse:
        try:
            resp = self._request("POST", "/api/v1/quotas/check", json=body)
        except QuotaUnavailableError as exc:
            return self._core.degraded(str(exc))
        return CheckResponse.model_validate(resp.json())

    def check(
        self,
        tenant_id: str,
        resources: Mapping[str, Amount],
        *,
        project_id: str | None = None,
        user_id: str | None = None,
    ) -> CheckResponse:
        """May this scope take these resources now? Holds nothing."""
        return self._check(
            _Core.check_body(tenant_id, resources, project_id=project_id, user_id=user_id)
        )

    def reserve(
        self,
        tenant_id: str,
        resources: Mapping[str, Amount],
        *,
        project_id: str | None = None,
        user_id: str | None = None,
        resource_id: str | None = None,
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> CheckResponse:
        """Check and hold atomically; ``reservation_id`` is set when granted."""
        return self._check(
            _Core.check_body(
                tenant_id,
                resources,
                project_id=project_id,
                user_id=user_id,
                reserve=True,
                ttl_seconds=ttl_seconds,
                resource_id=resource_id,
                idempotency_key=idempotency_key,
            )
        )

    def check_batch(self, checks: Sequence[Mapping[str, Any]]) -> list[BatchResult]:
        """Up to 100 checks (each a ``POST /check`` body) in one request, answered in order; a
        check with bad input is a ``QuotaApiError`` in its place (the others are answered)."""
        payload = {"checks": [_check_payload(c) for c in checks]}
        try:
            resp = self._request("POST", "/api/v1/quotas/check:batch", json=payload)
        except QuotaUnavailableError as exc:
            return [self._core.degraded(str(exc)) for _ in checks]
        return _batch_results(resp.json())

    def release(self, tenant_id: str, reservation_id: str) -> GrantView | None:
        """Give a grant back before its TTL (None: a scheduled reservation, cancelled async)."""
        resp = self._request(
            "DELETE",
            f"/api/v1/quotas/reservations/{reservation_id}",
            params={"tenant_id": tenant_id},
        )
        body = resp.json()
        return GrantView.model_validate(body["released"]) if "released" in body else None

    def reservations(self, tenant_id: str) -> dict[str, Any]:
        resp = self._request("GET", "/api/v1/quotas/reservations", params={"tenant_id": tenant_id})
        result: dict[str, Any] = resp.json()
        return result

    @staticmethod
    def publish(
        events: Iterable[Mapping[str, Any]], *, bootstrap_servers: str | None = None
    ) -> int:
        """Validate and publish CloudEvents; see ``AsyncQuotaClient.publish``."""
        return asyncio.run(AsyncQuotaClient.publish(events, bootstrap_servers=bootstrap_servers))
