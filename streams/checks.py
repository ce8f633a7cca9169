"""The admission check API (contract section 6) and the reservations endpoints.

Every worker answers for every tenant. A request for a tenant another worker owns is forwarded to
that worker with its body (Faust's router forwards only GET requests); a batch is split by owner
and forwarded in parts concurrently. On the owner:

- a check without ``reserve`` that takes no tokens is answered from the tenant's stored state,
  read at request time from the table the agent writes (never stale; the parsed state is cached
  keyed by the stored bytes, so any change invalidates it);
- a check with ``reserve``, or one that takes ``api_requests`` tokens, is a record on the
  internal admission topic decided by the tenant's agent, in order with the tenant's events;
- system quotas are read from a snapshot of the system state at most a few seconds old (the
  owner of the tenant ``system`` serves it to the others); ``as_of.system`` says how old.

During a rebalance, or when the tenant's agent does not answer in time, the answer is 503 with
``Retry-After``; clients retry (the Python client does), and a retried reserve with the same
``idempotency_key`` gets the same grant.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp.web import HTTPRequestEntityTooLarge
from faust import web
from faust.exceptions import SameNode
from pydantic import ValidationError

from novaquota.schemas.amounts import to_micros
from novaquota.schemas.api import MAX_BATCH, BatchCheckRequest, CheckRequest
from novaquota.schemas.codec import encode
from novaquota.schemas.common import format_time_us
from novaquota.schemas.exceptions import DecodeError
from novaquota.streams import quota as q
from novaquota.streams.admission import AdmissionTimeout, now_us
from novaquota.streams.app import tables_recovered
from novaquota.streams.enforce import SYSTEM
from novaquota.streams.web import ApiError, _num

if TYPE_CHECKING:
    from novaquota.streams.app import QuotaApp

__all__ = ["register"]

FORWARDED = "x-novaquota-forwarded"
SYSTEM_REFRESH_SECONDS = 1.0
FORWARD_TIMEOUT = aiohttp.ClientTimeout(total=30)


@functools.lru_cache(maxsize=4096)
def _time(time_us: int) -> str:
    return format_time_us(time_us)


def _error_body(exc: ApiError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": exc.message}}


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _level_view(c: q.LevelCheck) -> dict[str, Any]:
    return {
        "level": c.level,
        "entity_id": c.entity_id,
        "resource_type": c.resource_type,
        "limit": _num(c.limit),
        "burst_limit": _num(c.burst_limit),
        "used": _num(c.used),
        "reserved": _num(c.reserved),
        "requested": _num(c.requested),
        "available": _num(c.available),
        "using_burst": c.using_burst,
        "allowed": c.allowed,
        "kind": c.kind,
    }


def _grant_view(g: q.Grant) -> dict[str, Any]:
    return {
        "reservation_id": g.grant_id,
        "tenant_id": g.tenant_id,
        "project_id": g.project_id,
        "user_id": g.user_id,
        "resources": {r: _num(a) for r, a in sorted(g.resources.items())},
        "expires_at": format_time_us(g.expires_us),
        "resource_id": g.resource_id,
        "idempotency_key": g.idempotency_key,
        "granted_at": format_time_us(g.granted_at_us),
    }


class CheckService:
    """Answers checks for the tenants this worker owns; forwards the others."""

    def __init__(self, qa: QuotaApp) -> None:
        self.qa = qa
        self.system: q.SystemState | None = None
        self.system_at = 0.0  # wall clock of the snapshot
        from novaquota.streams.agents import home_partition

        partitions = qa.settings.partitions
        self.home = functools.lru_cache(maxsize=65536)(
            lambda tenant: home_partition(tenant, partitions)
        )
        self._hits = 0
        self._lookups = 0

    # -- ownership --------------------------------------------------------------------------

    def owner_url(self, tenant: str) -> str | None:
        """The URL of the worker owning ``tenant``, or None when it is this one."""
        app = self.qa.app
        try:
            url = app.router.key_store(self.qa.state.name, tenant)
        except KeyError:
            raise ApiError(503, "rebalancing", "partition owners are being reassigned") from None
        me = app.conf.canonical_url
        if (url.host, url.port) == (me.host, me.port):
            return None
        return str(url).rstrip("/")

    def ensure_serving(self, tenant: str) -> None:
        app = self.qa.app
        if app.rebalancing or not tables_recovered(app):
            raise ApiError(503, "rebalancing", "this worker is recovering its partitions")
        if self.home(tenant) not in self.qa.active_inputs:
            raise ApiError(503, "rebalancing", "the tenant's partition is moving")

    # -- state ------------------------------------------------------------------------------

    def tenant_state(self, tenant: str) -> tuple[q.TenantState, dict[str, Any]]:
        store = self.qa.store
        rec, exists = store.committed_record(tenant)
        self._lookups += 1
        if exists and store.last_load_hit:
            self._hits += 1
        if self._lookups >= 1000:
            self.qa.metrics.cache_hit_ratio.set(self._hits / self._lookups)
            self._hits = self._lookups = 0
        st = rec.tenant
        as_of: dict[str, Any] = {
            "event_time": _time(st.watermark_us) if st.watermark_us else None,
            "offsets": dict(rec.guard),
        }
        return st, as_of

    def system_as_of(self) -> dict[str, Any]:
        if self.system is None:
            return {"available": False}
        return {
            "available": True,
            "age_seconds": round(max(0.0, time.time() - self.system_at), 3),
            "event_time": _time(self.system.watermark_us) if self.system.watermark_us else None,
        }

    async def refresh_system(self) -> None:
        """Keep a recent snapshot of the system state (quotas and summed usage)."""
        qa = self.qa
        try:
            owner = self.owner_url(SYSTEM)
        except ApiError:
            return
        if owner is None:
            rec, _exists = qa.store.committed_record(SYSTEM)
            if isinstance(rec.state, q.SystemState):
                self.system, self.system_at = rec.state, time.time()
            return
        try:
            async with qa.app.http_client.get(
                f"{owner}/internal/system",
                headers=qa.access.peer_headers(),
                timeout=aiohttp.ClientTimeout(total=SYSTEM_REFRESH_SECONDS * 2),
            ) as resp:
                if resp.status != 200:
                    return
                body = await resp.read()
        except (TimeoutError, OSError):
            return
        snap = orjson.loads(body)
        if snap.get("state") is not None:
            self.system = q.SystemState.from_bytes(orjson.dumps(snap["state"]))
            self.system_at = float(snap["at"])

    # -- checks -----------------------------------------------------------------------------

    async def check_local(self, req: CheckRequest, actor: str) -> dict[str, Any]:
        self.ensure_serving(req.tenant_id)
        resources = {r: to_micros(a) for r, a in req.resources.items()}
        scope = q.Scope(req.tenant_id, req.project_id, req.user_id)
        st, as_of = self.tenant_state(req.tenant_id)
        now = now_us()
        if req.reserve or q.needs_agent(st, scope, resources):
            body = {
                "op": "check",
                "tenant_id": req.tenant_id,
                "project_id": req.project_id,
                "user_id": req.user_id,
                "resources": resources,
                "now_us": now,
                "reserve": req.reserve,
                "ttl_us": req.ttl_seconds * q.SEC_US,
                "resource_id": req.resource_id,
                "idempotency_key": req.idempotency_key,
                "actor": actor,
            }
            result = await self._submit(req.tenant_id, body)
            st, as_of = self.tenant_state(req.tenant_id)
        else:
            r = q.check(st, scope, resources, now)
            result = q.AdmissionResult(r.allowed, r.reason, r.checks, r.warnings)
        checks = [_level_view(c) for c in result.checks]
        allowed, reason = result.allowed, result.reason
        warnings = list(result.warnings)
        if self.system is not None:
            sys_result = q.check_system(self.system, resources, now)
            checks.extend(_level_view(c) for c in sys_result.checks)
            warnings.extend(sys_result.warnings)
            if not sys_result.allowed:
                reason = sys_result.reason if allowed else f"{reason}; {sys_result.reason}"
                allowed = False
        as_of["system"] = self.system_as_of()
        out: dict[str, Any] = {
            "allowed": allowed,
            "reason": reason,
            "checks": checks,
            "warnings": warnings,
            "as_of": as_of,
        }
        if result.reservation_id is not None:
            out["reservation_id"] = result.reservation_id
            out["expires_at"] = (
                format_time_us(result.expires_us) if result.expires_us is not None else None
            )
        if result.repeated:
            out["repeated"] = True
        return out

    async def _submit(self, tenant: str, body: dict[str, Any]) -> Any:
        try:
            result = await self.qa.desk.submit(self.home(tenant), body)
        except AdmissionTimeout:
            raise ApiError(
                503, "unavailable", "the tenant's agent did not answer in time; retry"
            ) from None
        if result is None:  # the record was a replay: the decision is not here
            raise ApiError(503, "unavailable", "the request was replayed; retry it")
        if isinstance(result, Exception):
            raise ApiError(400, getattr(result, "reason", "invalid"), str(result))
        return result

    async def release(self, tenant: str, grant_id: str, actor: str) -> dict[str, Any] | None:
        self.ensure_serving(tenant)
        body = {
            "op": "release",
            "tenant_id": tenant,
            "grant_id": grant_id,
            "now_us": now_us(),
            "actor": actor,
        }
        grant = await self.qa.desk.submit(self.home(tenant), body)
        return None if grant is None else _grant_view(grant)

    async def forward(
        self, url: str, path: str, payload: Any, headers: Mapping[str, str], method: str = "POST"
    ) -> tuple[int, bytes]:
        # The caller's own credentials: the owner authenticates and authorizes again.
        fwd = {k: v for k, v in headers.items() if k.lower() == "authorization"}
        fwd[FORWARDED] = "1"
        fwd["content-type"] = "application/json"
        try:
            async with self.qa.app.http_client.request(
                method,
                f"{url}{path}",
                data=orjson.dumps(payload),
                headers=fwd,
                timeout=FORWARD_TIMEOUT,
            ) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, OSError) as exc:
            msg = f"the owner of the tenant is unreachable: {exc}"
            raise ApiError(503, "unavailable", msg) from None


def register(qa: QuotaApp, json_response: Callable[..., web.Response]) -> CheckService:
    app = qa.app
    svc = CheckService(qa)
    qa.checks = svc
    metrics = qa.metrics

    @app.timer(interval=SYSTEM_REFRESH_SECONDS, on_leader=False)
    async def refresh_system_snapshot() -> None:
        await svc.refresh_system()

    access = qa.access

    def fail(exc: ApiError) -> web.Response:
        return json_response(_error_body(exc), status=exc.status, headers=exc.headers())

    async def read_json(view: web.View, request: web.Request) -> Any:
        """The body as JSON; at most ``max_body_bytes`` (aiohttp's ``client_max_size``), also
        when sent chunked without a length; nesting deeper than orjson's limit is a 400."""
        try:
            raw = await request.read()
        except HTTPRequestEntityTooLarge:
            limit = qa.settings.max_body_bytes
            raise ApiError(413, "body_too_large", f"at most {limit} bytes") from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None

    async def one(request: web.Request, req: CheckRequest, forwarded: bool) -> tuple[int, Any]:
        principal = access(request, req.tenant_id, "check")
        owner = svc.owner_url(req.tenant_id)
        if owner is not None:
            if forwarded:
                raise ApiError(503, "rebalancing", "ownership is moving; retry")
            status, body = await svc.forward(
                owner, "/api/v1/quotas/check", req.model_dump(mode="json"), request.headers
            )
            return status, orjson.loads(body)
        return 200, await svc.check_local(req, principal.subject)

    def parse_check(payload: Any) -> CheckRequest:
        try:
            return CheckRequest.model_validate(payload)
        except ValidationError as exc:
            raise ApiError(400, "invalid_request", _validation_message(exc)) from None

    class CheckView(web.View):
        async def post(self, request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                req = parse_check(await read_json(self, request))
                status, body = await one(request, req, bool(request.headers.get(FORWARDED)))
            except ApiError as exc:
                return fail(exc)
            finally:
                metrics.check_duration.observe(time.perf_counter() - started)
            return json_response(body, status=status)

        async def get(self, request: web.Request) -> web.Response:
            """The seed's form: one tenant-level check of one resource."""
            started = time.perf_counter()
            query = request.query
            try:
                missing = [k for k in ("entity_id", "resource_type", "amount") if not query.get(k)]
                if missing:
                    raise ApiError(400, "missing_parameter", f"required: {', '.join(missing)}")
                req = parse_check(
                    {
                        "tenant_id": query["entity_id"],
                        "resources": {query["resource_type"]: query["amount"]},
                    }
                )
                status, body = await one(request, req, bool(request.headers.get(FORWARDED)))
            except ApiError as exc:
                return fail(exc)
            finally:
                metrics.check_duration.observe(time.perf_counter() - started)
            return json_response(body, status=status)

    class BatchView(web.View):
        async def post(self, request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                payload = await read_json(self, request)
                checks_in = payload.get("checks") if isinstance(payload, dict) else None
                if isinstance(checks_in, list) and len(checks_in) > MAX_BATCH:
                    raise ApiError(
                        400, "batch_too_large", f"at most {MAX_BATCH} checks per request"
                    )
                try:
                    batch = BatchCheckRequest.model_validate(payload)
                except ValidationError as exc:
                    raise ApiError(400, "invalid_request", _validation_message(exc)) from None
                results = await answer_batch(request, batch.checks)
            except ApiError as exc:
                return fail(exc)
            finally:
                metrics.check_duration.observe(time.perf_counter() - started)
            return json_response({"results": results})

    async def answer_batch(request: web.Request, checks: Sequence[CheckRequest]) -> list[Any]:
        forwarded = bool(request.headers.get(FORWARDED))
        results: list[Any] = [None] * len(checks)
        remote: dict[str, list[int]] = {}
        local: list[int] = []
        actor = access.principal(request).subject
        for i, req in enumerate(checks):
            access(request, req.tenant_id, "check")
            owner = svc.owner_url(req.tenant_id)
            if owner is None:
                local.append(i)
            elif forwarded:
                raise ApiError(503, "rebalancing", "ownership is moving; retry")
            else:
                remote.setdefault(owner, []).append(i)

        async def run_remote(owner: str, idx: list[int]) -> None:
            payload = {"checks": [checks[i].model_dump(mode="json") for i in idx]}
            status, body = await svc.forward(
                owner, "/api/v1/quotas/check:batch", payload, request.headers
            )
            data = orjson.loads(body)
            if status != 200:
                err = data.get("error", {})
                raise ApiError(status, err.get("code", "upstream"), err.get("message", ""))
            for i, res in zip(idx, data["results"], strict=True):
                results[i] = res

        async def run_local(i: int) -> None:
            try:
                results[i] = await svc.check_local(checks[i], actor)
            except ApiError as exc:
                if exc.status == 503:
                    raise
                results[i] = _error_body(exc)

        simple = [i for i in local if not checks[i].reserve]
        for i in simple:  # read-only checks finish without awaiting anything
            await run_local(i)
        await asyncio.gather(
            *(run_remote(o, idx) for o, idx in remote.items()),
            *(run_local(i) for i in local if checks[i].reserve),
        )
        return results

    class ReservationsView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            """Scheduled reservations and admission grants of a tenant (or one entity)."""
            tenant = request.query.get("tenant_id") or ""
            try:
                if not tenant:
                    raise ApiError(400, "missing_tenant_id", "tenant_id is required")
                access(request, tenant, "read")
                try:
                    return await app.router.route_req(qa.state.name, tenant, self.web, request)
                except SameNode:
                    pass
                svc.ensure_serving(tenant)
                st, as_of = svc.tenant_state(tenant)
            except ApiError as exc:
                return fail(exc)
            level = request.query.get("level")
            entity = request.query.get("entity_id")
            scheduled = []
            for rid, raw in sorted(st.reservations.items()):
                r = q.Reservation.from_raw(rid, raw).to_dict()
                if level and (r["level"], r["entity_id"]) != (level, entity or tenant):
                    continue
                r["amount"] = _num(r["amount"])
                r["start"] = format_time_us(r.pop("start_us"))
                r["end"] = format_time_us(r.pop("end_us"))
                scheduled.append(r)
            grants = [
                _grant_view(g)
                for gid in sorted(st.grants)
                if (g := q.grant_of(st, gid)) is not None
            ]
            body = {"tenant_id": tenant, "scheduled": scheduled, "grants": grants, "as_of": as_of}
            return json_response(body)

        async def post(self, request: web.Request) -> web.Response:
            """Create a scheduled reservation: publishes ``reservation.created`` (202)."""
            try:
                payload = await read_json(self, request)
                if not isinstance(payload, dict):
                    raise ApiError(400, "invalid_request", "the body must be a JSON object")
                tenant = str(payload.get("tenant_id") or "")
                if not tenant:
                    raise ApiError(400, "missing_tenant_id", "tenant_id is required")
                principal = access(request, tenant, "check")
                data = {
                    "reservation_id": payload.get("reservation_id") or str(uuid.uuid4()),
                    "level": payload.get("level", "tenant"),
                    "entity_id": payload.get("entity_id") or tenant,
                    "tenant_id": tenant,
                    "resource_type": payload.get("resource_type"),
                    "amount": payload.get("amount"),
                    # the seed's names, start_time and end_time, are accepted as aliases
                    "start": payload.get("start", payload.get("start_time")),
                    "end": payload.get("end", payload.get("end_time")),
                    "purpose": payload.get("purpose", ""),
                    "actor": principal.subject,
                }
                command_id = await publish_command("reservation.created", tenant, data)
            except ApiError as exc:
                return fail(exc)
            return json_response(
                {"command_id": command_id, "reservation_id": data["reservation_id"]}, status=202
            )

    class ReservationView(web.View):
        async def delete(self, request: web.Request, reservation_id: str) -> web.Response:
            """Release an admission grant (200), or cancel a scheduled reservation (202)."""
            tenant = request.query.get("tenant_id") or ""
            try:
                if not tenant:
                    raise ApiError(400, "missing_tenant_id", "tenant_id is required")
                principal = access(request, tenant, "check")
                owner = svc.owner_url(tenant)
                if owner is not None:
                    if request.headers.get(FORWARDED):
                        raise ApiError(503, "rebalancing", "ownership is moving; retry")
                    status, body = await svc.forward(
                        owner,
                        f"/api/v1/quotas/reservations/{reservation_id}?tenant_id={tenant}",
                        None,
                        request.headers,
                        method="DELETE",
                    )
                    return json_response(orjson.loads(body), status=status)
                svc.ensure_serving(tenant)
                st, _ = svc.tenant_state(tenant)
                if reservation_id in st.grants:
                    released = await svc.release(tenant, reservation_id, principal.subject)
                    if released is not None:
                        return json_response({"released": released})
                elif reservation_id in st.reservations:
                    command_id = await publish_command(
                        "reservation.cancelled",
                        tenant,
                        {
                            "reservation_id": reservation_id,
                            "tenant_id": tenant,
                            "actor": principal.subject,
                        },
                    )
                    return json_response(
                        {"command_id": command_id, "reservation_id": reservation_id},
                        status=202,
                    )
                raise ApiError(404, "not_found", f"no live reservation {reservation_id!r}")
            except ApiError as exc:
                return fail(exc)
            except AdmissionTimeout:
                return fail(ApiError(503, "unavailable", "the tenant's agent did not answer"))

    async def publish_command(type_: str, tenant: str, data: dict[str, Any]) -> str:
        command_id = str(uuid.uuid4())
        try:
            value = encode(type_, data, source="novaquota/api", id=command_id, time_us=now_us())
        except (DecodeError, ValidationError, ValueError) as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        await qa.quota_commands.send(key=tenant.encode(), value=value)
        return command_id

    class SystemSnapshotView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            """The system state, for the other workers' checks (internal: a peer with the
            internal secret or an admin, checked by the middleware)."""
            rec, exists = qa.store.committed_record(SYSTEM)
            state = orjson.loads(rec.state.to_bytes()) if exists else None
            return json_response({"state": state, "at": time.time()})

    app.page("/api/v1/quotas/check")(CheckView)
    app.page("/api/v1/quotas/check:batch")(BatchView)
    app.page("/api/v1/quotas/reservations")(ReservationsView)
    app.page("/api/v1/quotas/reservations/{reservation_id}")(ReservationView)
    app.page("/internal/system")(SystemSnapshotView)
    return svc
