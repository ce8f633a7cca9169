"""Quota and template management over HTTP, and the status of accepted commands (contract §6).

Every change is a command published on the command topic, so the log stays the one source of
truth: the endpoints answer 202 with the ``command_id`` (a fresh UUID, source
``novaquota/api``) and a ``Location`` at ``GET /api/v1/commands/{id}`` to ask whether it took
effect.

- Bodies are validated with the models the worker decodes with, under the same limits, before
  anything is published: a bad body is a 400 and publishes nothing.
- A tenant's command is handled by the worker owning the tenant (forwarded there with its
  body). That worker holds the state the tenant-admin rule compares with and the rows that say
  whether the command took effect, so ``?wait=`` waits on local reads.
- Status: ``applied`` once the command's identity row is durable on the owner (the row the
  worker writes with the command's effect, ``streams.enforce.Identities``); ``rejected`` once
  the row the worker stages when it dead-letters a tenant's command is durable (reason and
  message, ``streams.store.records.rejection_key``); else ``pending``. Both rows expire like
  identities (``dedup_retention``, 7 days of the tenant's event time): an older command reads
  as ``pending``. ``template.defined`` has no tenant: its identity is kept in the global
  templates table, which every worker reads.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import orjson
from faust import web
from pydantic import ValidationError

from novaquota.schemas.amounts import to_micros
from novaquota.schemas.codec import DecodeLimits, encode
from novaquota.schemas.commands import (
    Command,
    QuotaDeleted,
    QuotaSet,
    QuotaSpec,
    TemplateApplied,
    TemplateDefined,
    TemplateSpec,
)
from novaquota.schemas.templates import BUILTIN_TEMPLATES
from novaquota.streams import quota as q
from novaquota.streams.admission import now_us
from novaquota.streams.agents import TEMPLATE_IDENTITY
from novaquota.streams.auth import Ceiling, Principal, authorize, authorize_limit_change
from novaquota.streams.checks import FORWARDED, _validation_message
from novaquota.streams.errors import ApiError
from novaquota.streams.store.records import identity_key, rejection_key, rejection_of
from novaquota.streams.web import LEVELS, quota_rows

if TYPE_CHECKING:
    from novaquota.streams.app import QuotaApp

__all__ = ["MAX_WAIT_SECONDS", "SOURCE", "Target", "parse_wait", "register"]

SOURCE = "novaquota/api"
"""The CloudEvent source of every command the API publishes."""
MAX_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.05
"""How often a waiting request reads the two rows again: two point reads of the local store,
cheaper than wiring the batch writer to wake waiters."""
FORWARD_MARGIN_SECONDS = 10.0

_WAIT = re.compile(r"(\d+(?:\.\d+)?)(ms|s)?")


def parse_wait(raw: str | None) -> float:
    """``?wait=``: seconds (``5s``, ``5``) or milliseconds (``500ms``), at most 30 s."""
    if raw is None or raw == "":
        return 0.0
    match = _WAIT.fullmatch(raw.strip())
    if match is None:
        raise ApiError(400, "invalid_wait", f"wait must look like 5s or 500ms, got {raw!r}")
    seconds = float(match[1]) / (1000 if match[2] == "ms" else 1)
    if seconds > MAX_WAIT_SECONDS:
        raise ApiError(400, "invalid_wait", f"wait is at most {MAX_WAIT_SECONDS:g}s")
    return seconds


@dataclass(frozen=True)
class Target:
    """What a status request needs besides the id: the tenant whose owner knows the command
    (none for a global ``template.defined``), and what to show once it is applied."""

    tenant_id: str | None = None
    level: str | None = None
    entity_id: str | None = None
    resource_type: str | None = None
    template: str | None = None
    source: str = SOURCE

    def location(self, command_id: str) -> str:
        params = {
            k: v for k, v in asdict(self).items() if v and not (k == "source" and v == SOURCE)
        }
        query = f"?{urlencode(params)}" if params else ""
        return f"/api/v1/commands/{command_id}{query}"

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Target:
        return cls(
            **{k: query.get(k) or None for k in ("tenant_id", "level", "entity_id")},
            resource_type=query.get("resource_type") or None,
            template=query.get("template") or None,
            source=query.get("source") or SOURCE,
        )

    @classmethod
    def of(cls, cmd: Command) -> Target:
        if isinstance(cmd, TemplateDefined):
            return cls(template=cmd.name)
        assert isinstance(cmd, QuotaSet | QuotaDeleted | TemplateApplied)
        return cls(
            tenant_id=cmd.tenant_id,
            level=cmd.level,
            entity_id=cmd.entity_id,
            resource_type=getattr(cmd, "resource_type", None),
        )


def _plain(value: Any) -> Any:
    """JSON-ready: Decimals as numbers (int when whole), tuples as lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _template_view(spec: TemplateSpec, builtin: bool) -> dict[str, Any]:
    body = _plain(spec.model_dump(exclude_none=True))
    return {**body, "builtin": builtin}


def _ceiling_of_spec(spec: QuotaSpec) -> Ceiling:
    if spec.status != "active":
        return None
    limit = to_micros(spec.limit)
    return limit, to_micros(spec.burst_limit) if spec.burst_limit is not None else limit


def _ceiling_of_quota(quota: q.Quota | None) -> Ceiling:
    if quota is None or quota.status != "active":
        return None
    return quota.limit, quota.burst_limit if quota.burst_limit is not None else quota.limit


class Manager:
    """Validates, authorizes and publishes management commands; answers their status."""

    def __init__(self, qa: QuotaApp) -> None:
        self.qa = qa
        self.limits = DecodeLimits(
            max_amount=qa.settings.max_amount,
            max_clock_skew_seconds=qa.settings.max_clock_skew_seconds,
        )

    # -- commands ---------------------------------------------------------------------------

    def validate(self, model: type[Command], data: dict[str, Any]) -> Any:
        try:
            return model.model_validate(data, context=self.limits)
        except ValidationError as exc:
            raise ApiError(400, "invalid_request", _validation_message(exc)) from None

    async def publish(self, cmd: Command, key: str) -> str:
        """Publish and wait for the broker's acknowledgement: a 202 means the command is in
        the log."""
        command_id = str(uuid.uuid4())
        value = encode(cmd.TYPE, cmd, source=SOURCE, id=command_id, time_us=now_us())
        delivered = await self.qa.quota_commands.send(key=key.encode(), value=value)
        await delivered
        return command_id

    def template(self, name: str) -> TemplateSpec | None:
        """A built-in tier or a custom template this worker has read."""
        if name in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[name]
        raw = self.qa.templates.get(name)
        return None if raw is None else TemplateSpec.model_validate_json(raw)

    def custom_templates(self) -> list[TemplateSpec]:
        found = []
        for key, raw in self.qa.templates.items():
            name = key if isinstance(key, bytes) else str(key).encode()
            if not name.startswith(TEMPLATE_IDENTITY) and name.decode() not in BUILTIN_TEMPLATES:
                found.append(TemplateSpec.model_validate_json(raw))
        return sorted(found, key=lambda t: t.name)

    def guard(self, principal: Principal, cmd: Command) -> None:
        """The tenant-admin rule (``streams.auth.authorize_limit_change``) against the
        tenant's committed quotas, for every quota the command would set or remove."""
        if not isinstance(cmd, QuotaSet | QuotaDeleted | TemplateApplied) or cmd.level != "tenant":
            return
        changes: list[tuple[str, Ceiling]]
        if isinstance(cmd, QuotaSet):
            changes = [(cmd.resource_type, _ceiling_of_spec(cmd))]
        elif isinstance(cmd, QuotaDeleted):
            changes = [(cmd.resource_type, None)]
        else:
            spec = self.template(cmd.template)  # unknown: the worker rejects it, nothing changes
            changes = (
                []
                if spec is None
                else [(s.resource_type, _ceiling_of_spec(s)) for s in spec.quotas]
            )
        state = self.qa.store.committed_record(cmd.tenant_id)[0].tenant
        for res, after in changes:
            before = _ceiling_of_quota(q.quota_of(state, "tenant", cmd.entity_id, res))
            authorize_limit_change(principal, cmd.level, before, after)

    # -- status -----------------------------------------------------------------------------

    def status(self, command_id: str, target: Target) -> dict[str, Any]:
        """The command's status from durable rows only (module doc)."""
        body: dict[str, Any] = {"command_id": command_id, "status": "pending"}
        if target.tenant_id is None:
            return {**body, **self._global_status(command_id, target)}
        tenant = target.tenant_id
        base = self.qa.store.base
        partition = self.qa.home(tenant)
        body["tenant_id"] = tenant
        rejected = base.get(partition, rejection_key(tenant, target.source, command_id))
        if rejected is not None:
            reason, message = rejection_of(rejected)
            return {**body, "status": "rejected", "reason": reason, "message": message}
        if base.get(partition, identity_key(tenant, target.source, command_id)) is None:
            return body
        body["status"] = "applied"
        if target.level and target.entity_id:
            rec, _exists = self.qa.store.committed_record(tenant)
            rows = quota_rows(
                rec.tenant, tenant, target.level, target.entity_id, target.resource_type
            )
            body["quotas"] = [
                r for r in rows if (r["level"], r["entity_id"]) == (target.level, target.entity_id)
            ]
            body["as_of"] = {"offsets": dict(rec.guard)}
        return body

    def _global_status(self, command_id: str, target: Target) -> dict[str, Any]:
        identity = TEMPLATE_IDENTITY + identity_key("", target.source, command_id)
        if self.qa.templates.get(identity) is None:
            return {}
        found: dict[str, Any] = {"status": "applied"}
        spec = self.template(target.template) if target.template else None
        if spec is not None:
            found["template"] = _template_view(spec, builtin=False)
        return found

    async def wait(self, command_id: str, target: Target, seconds: float) -> dict[str, Any]:
        """The status once applied or rejected, or pending when ``seconds`` have passed."""
        deadline = time.monotonic() + seconds
        while True:
            body = self.status(command_id, target)
            if body["status"] != "pending" or time.monotonic() >= deadline:
                return body
            await asyncio.sleep(POLL_SECONDS)


def _scope_tenant(data: Mapping[str, Any]) -> str | None:
    """The tenant a scoped command's raw data names, to authorize before validating it (the
    actor it is validated with is the principal). None: a system-level command."""
    level = data.get("level", "tenant")
    if level == "system":
        return None
    tenant = data.get("tenant_id") or (data.get("entity_id") if level == "tenant" else None)
    if not isinstance(tenant, str) or not tenant:
        raise ApiError(400, "missing_tenant_id", f"tenant_id is required for level {level}")
    return tenant


def _merge_path(payload: dict[str, Any], path: Mapping[str, str]) -> dict[str, Any]:
    """The body with the path's fields; a body that names them differently is refused."""
    for k, v in path.items():
        if k in payload and payload[k] != v:
            raise ApiError(
                400, "invalid_request", f"{k} is {v!r} in the path, {payload[k]!r} in the body"
            )
    return {**payload, **path}


def register(qa: QuotaApp, json_response: Callable[..., web.Response]) -> Manager:
    app = qa.app
    mgr = Manager(qa)

    def fail(exc: ApiError) -> web.Response:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return json_response(exc.body(), status=exc.status, headers=headers)

    async def read_object(view: web.View, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        raw = await view.web.read_request_content(request)
        try:
            payload = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiError(400, "invalid_request", "the body must be a JSON object")
        return raw, payload

    async def forward(request: web.Request, url: str, raw: bytes, wait: float) -> web.Response:
        """The same request to the tenant's owner; its answer, with its ``Location``."""
        if request.headers.get(FORWARDED):
            raise ApiError(503, "rebalancing", "ownership is moving; retry")
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        headers.update({FORWARDED: "1", "content-type": "application/json"})
        timeout = aiohttp.ClientTimeout(total=wait + FORWARD_MARGIN_SECONDS)
        try:
            async with app.http_client.request(
                request.method,
                f"{url}{request.url.path_qs}",
                data=raw,
                headers=headers,
                timeout=timeout,
            ) as resp:
                body = await resp.read()
                location = resp.headers.get("Location")
                status = resp.status
        except (TimeoutError, OSError) as exc:
            raise ApiError(
                503, "unavailable", f"the owner of the tenant is unreachable: {exc}"
            ) from None
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(
                503, "unavailable", f"the owner answered {status} without JSON"
            ) from None
        return json_response(
            answer, status=status, headers={"Location": location} if location else None
        )

    async def accepted(cmd: Command, key: str, wait: float) -> web.Response:
        """Publish; 202 pending, or (with ``wait``) the status once known."""
        command_id = await mgr.publish(cmd, key)
        target = Target.of(cmd)
        body = {"command_id": command_id, "status": "pending", "type": cmd.TYPE}
        if wait > 0:
            body = {**body, **await mgr.wait(command_id, target, wait)}
        status = 202 if body["status"] == "pending" else 200
        return json_response(body, status=status, headers={"Location": target.location(command_id)})

    async def submit(
        view: web.View,
        request: web.Request,
        model: type[Command],
        build: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> web.Response:
        """A tenant's command: authorize, validate, go to the owner, guard, publish."""
        try:
            wait = parse_wait(request.query.get("wait"))
            raw, payload = await read_object(view, request)
            data = build(payload)
            tenant = _scope_tenant(data)
            if tenant is None:
                principal = qa.access(request, None, "admin")
            else:
                principal = qa.access(request, tenant, "write")
            cmd = mgr.validate(model, {**data, "actor": principal.subject})
            owner = qa.checks.owner_url(cmd.tenant_id)
            if owner is not None:
                return await forward(request, owner, raw, wait)
            qa.checks.ensure_serving(cmd.tenant_id)
            mgr.guard(principal, cmd)
            return await accepted(cmd, cmd.tenant_id, wait)
        except ApiError as exc:
            return fail(exc)

    def path_scope(level: str, entity_id: str, resource_type: str) -> dict[str, str]:
        if level not in LEVELS:
            raise ApiError(400, "invalid_level", f"level must be one of {', '.join(LEVELS)}")
        return {"level": level, "entity_id": entity_id, "resource_type": resource_type}

    def with_query_tenant(request: web.Request, data: dict[str, Any]) -> dict[str, Any]:
        tenant = request.query.get("tenant_id")
        return _merge_path(data, {"tenant_id": tenant}) if tenant else data

    class QuotasView(web.View):
        async def post(self, request: web.Request) -> web.Response:
            """Create or replace a quota: the body is ``quota.set`` data (``level``: tenant
            unless given, as for the other entity-scoped endpoints)."""

            def build(payload: dict[str, Any]) -> dict[str, Any]:
                return {"level": "tenant", **with_query_tenant(request, payload)}

            return await submit(self, request, QuotaSet, build)

    class QuotaView(web.View):
        async def put(
            self, request: web.Request, level: str, entity_id: str, resource_type: str
        ) -> web.Response:
            """Create or replace the quota the path names (body: the quota's other fields)."""

            def build(payload: dict[str, Any]) -> dict[str, Any]:
                scope = path_scope(level, entity_id, resource_type)
                return with_query_tenant(request, _merge_path(payload, scope))

            return await submit(self, request, QuotaSet, build)

        async def delete(
            self, request: web.Request, level: str, entity_id: str, resource_type: str
        ) -> web.Response:
            """Remove the quota the path names (``quota.deleted``)."""

            def build(payload: dict[str, Any]) -> dict[str, Any]:
                scope = path_scope(level, entity_id, resource_type)
                return with_query_tenant(request, _merge_path(payload, scope))

            return await submit(self, request, QuotaDeleted, build)

    class TemplatesView(web.View):
        async def get(self, request: web.Request) -> web.Response:
            """Built-in tiers and the custom templates this worker has read. Any principal
            may list them (they are not a tenant's data)."""
            try:
                principal = qa.access.principal(request)
                authorize(principal, "read", principal.tenant)
            except ApiError as exc:
                return fail(exc)
            builtin = [_template_view(t, True) for t in BUILTIN_TEMPLATES.values()]
            custom = [_template_view(t, False) for t in mgr.custom_templates()]
            return json_response({"templates": builtin + custom})

        async def post(self, request: web.Request) -> web.Response:
            """Define a custom template (``template.defined``; spans tenants: admin only)."""
            try:
                wait = parse_wait(request.query.get("wait"))
                _raw, payload = await read_object(self, request)
                principal = qa.access(request, None, "admin")
                cmd = mgr.validate(TemplateDefined, {**payload, "actor": principal.subject})
                return await accepted(cmd, "system", wait)
            except ApiError as exc:
                return fail(exc)

    class ApplyView(web.View):
        async def post(self, request: web.Request, name: str) -> web.Response:
            """Apply a template to an entity (``template.applied``; level tenant by default)."""

            def build(payload: dict[str, Any]) -> dict[str, Any]:
                data = with_query_tenant(request, _merge_path(payload, {"template": name}))
                return {"level": "tenant", **data}

            return await submit(self, request, TemplateApplied, build)

    class CommandView(web.View):
        async def get(self, request: web.Request, command_id: str) -> web.Response:
            """``pending``, ``applied`` (with the entity's quotas) or ``rejected`` (with the
            dead-letter reason); ``?wait=`` waits for an outcome."""
            try:
                wait = parse_wait(request.query.get("wait"))
                target = Target.from_query(request.query)
                if target.level == "tenant" and target.entity_id and not target.tenant_id:
                    target = Target(**{**asdict(target), "tenant_id": target.entity_id})
                if target.tenant_id is None:
                    qa.access(request, None, "read")
                else:
                    qa.access(request, target.tenant_id, "read")
                    owner = qa.checks.owner_url(target.tenant_id)
                    if owner is not None:
                        return await forward(request, owner, b"", wait)
                    qa.checks.ensure_serving(target.tenant_id)
                body = await mgr.wait(command_id, target, wait)
            except ApiError as exc:
                return fail(exc)
            return json_response(body, status=202 if body["status"] == "pending" else 200)

    # the more specific template paths first: /api/v1/quotas/{level}/{entity_id}/{resource_type}
    # would match them too
    app.page("/api/v1/quotas/templates")(TemplatesView)
    app.page("/api/v1/quotas/templates/{name}/apply")(ApplyView)
    app.page("/quotas/templates/{name}/apply")(ApplyView)
    app.page("/api/v1/quotas/{level}/{entity_id}/{resource_type}")(QuotaView)
    app.page("/api/v1/commands/{command_id}")(CommandView)
    # beside the GET list of streams.web on the same path
    app.page("/api/v1/quotas")(QuotasView)
    return mgr
