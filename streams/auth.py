"""Who calls the HTTP API and what they may do (contract §6).

A request is authenticated once, into a ``Principal``: a subject (the audit ``actor``), a role
and, for every role but ``admin``, one tenant. ``authorize`` then decides an ``Action`` on a
tenant. Another tenant's data answers 404, never 403, so a token cannot learn which tenants
exist; a role that may not do something to its own tenant answers 403.

``Access`` is what the HTTP layers call: ``access(request, tenant_id, action)`` authenticates,
authorizes and returns the principal. Both servers (enforcement on 6066, projections on 6067)
also install ``middleware``: it answers 401 to every request without valid credentials but
those to ``OPEN_PATHS``, so a route added later is closed unless someone opens it.

Credentials are a bearer token: a static token (``nq_...``, ``streams.tokens``) or a JWT
checked against a JWKS (``JwtVerifier``). The workers of one deployment read each other's
``/internal/`` endpoints with a shared secret (``X-Novaquota-Internal``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import jwt
from aiohttp import web

from novaquota.streams.errors import ApiError
from novaquota.streams.http_errors import api_error_response

if TYPE_CHECKING:
    from novaquota.streams.settings import Settings
    from novaquota.streams.tokens import TokenStore

log = logging.getLogger(__name__)

__all__ = [
    "ACTIONS",
    "ANONYMOUS_ADMIN",
    "INTERNAL_HEADER",
    "LIVE_PATH",
    "OPEN_PATHS",
    "OPEN_PREFIXES",
    "ROLES",
    "WHOAMI_PATH",
    "WS_PROTOCOL",
    "Access",
    "Action",
    "BearerAuth",
    "JwtVerifier",
    "Principal",
    "Role",
    "add_whoami_route",
    "anonymous",
    "authorize",
    "authorize_limit_change",
    "build_access",
    "middleware",
    "offered_protocols",
    "ws_protocol_token",
]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/docs"})
"""Answer without credentials: probes and the Prometheus scraper carry none, and the API's
description (no tenant data) is read by browsers and client generators before they hold a token."""
OPEN_PREFIXES = ("/ui/",)
"""Open too, with everything under them: the dashboard's static shell and assets
(``projections.ui``) hold no data; the page reads every figure from the API with the user's own
token."""
INTERNAL_PREFIX = "/internal/"
INTERNAL_HEADER = "X-Novaquota-Internal"

Role = Literal["admin", "tenant-admin", "viewer", "service"]
ROLES: tuple[Role, ...] = ("admin", "tenant-admin", "viewer", "service")

Action = Literal["read", "check", "write", "admin"]
"""``read``: a tenant's views; ``check``: admission checks, reservations, publishing its
events; ``write``: change its quotas and apply templates; ``admin``: what spans tenants
(system figures, template definitions, internal endpoints)."""
ACTIONS: tuple[Action, ...] = ("read", "check", "write", "admin")

ALLOWED: dict[Role, frozenset[Action]] = {
    "admin": frozenset(ACTIONS),
    "tenant-admin": frozenset({"read", "check", "write"}),
    "viewer": frozenset({"read"}),
    "service": frozenset({"read", "check"}),
}


@dataclass(frozen=True)
class Principal:
    subject: str
    """Who, as the audit topic records it (``token:<name>``, ``jwt:<sub>``, ``anonymous``)."""
    role: Role
    tenant: str | None = None
    """The one tenant this principal acts for; None for an admin (every tenant)."""

    def sees(self, tenant_id: str) -> bool:
        return self.tenant is None or self.tenant == tenant_id


ANONYMOUS_ADMIN = Principal("anonymous", "admin")
PEER = Principal("peer", "admin")
"""Another worker of the deployment, proven by the internal secret (internal endpoints only)."""
PRINCIPAL_KEY = web.RequestKey("novaquota.principal", Principal)


def authorize(principal: Principal, action: Action, tenant_id: str | None) -> None:
    """Raise ``ApiError`` unless ``principal`` may do ``action`` on ``tenant_id`` (None: an
    action that spans tenants)."""
    if tenant_id is None:
        if principal.tenant is not None:
            raise ApiError(404, "not_found", "not found")
    elif not principal.sees(tenant_id):
        raise ApiError(404, "not_found", f"no tenant {tenant_id!r}")
    if action not in ALLOWED[principal.role]:
        raise ApiError(403, "forbidden", f"the role {principal.role} may not {action}")


def unauthorized(message: str = "a bearer token is required") -> ApiError:
    return ApiError(401, "unauthorized", message)


Authenticate = Callable[[Any], Principal]
"""Request → principal; raises ``ApiError(401)`` without valid credentials."""


class Access:
    """``access(request, tenant_id, action)``: authenticate, authorize, return the principal.

    The principal is kept on the request, so the middleware's authentication is not redone by
    the handler (a JWT's signature is checked once per request)."""

    def __init__(self, authenticate: Authenticate, internal_secret: str | None = None) -> None:
        self.authenticate = authenticate
        self._internal = internal_secret.encode() if internal_secret else None

    def principal(self, request: Any) -> Principal:
        if isinstance(request, MutableMapping):
            cached = request.get(PRINCIPAL_KEY)
            if cached is not None:
                return cast(Principal, cached)
            principal = self.authenticate(request)
            request[PRINCIPAL_KEY] = principal
            return principal
        return self.authenticate(request)

    async def resolve(self, request: web.Request) -> Principal:
        """``principal`` for the middleware: what may block (``BearerAuth.costly``) runs in a
        thread, so one slow identity provider or a first argon2 never stalls the event loop
        that also runs the worker's agents."""
        auth = self.authenticate
        if isinstance(auth, BearerAuth) and auth.costly(request):
            return await asyncio.to_thread(self.principal, request)
        return self.principal(request)

    def __call__(self, request: Any, tenant_id: str | None, action: Action) -> Principal:
        principal = self.principal(request)
        authorize(principal, action, tenant_id)
        return principal

    def internal(self, request: Any) -> Principal:
        """For ``/internal/`` endpoints: a peer with the shared secret, or an admin."""
        given = request.headers.get(INTERNAL_HEADER)
        if given is not None and self._internal is not None:
            if hmac.compare_digest(given.encode(), self._internal):
                return PEER
            raise unauthorized("wrong internal secret")
        return self(request, None, "admin")

    def peer_headers(self) -> dict[str, str]:
        """Headers with which this worker reads a peer's internal endpoints."""
        return {INTERNAL_HEADER: self._internal.decode()} if self._internal else {}


def anonymous(request: Any) -> Principal:
    """No authentication: every caller is an admin (local development only)."""
    return ANONYMOUS_ADMIN


LIVE_PATH = "/api/v1/quotas/live"
WS_PROTOCOL = "novaquota"
"""The WebSocket subprotocol the live feed selects; a browser, which cannot set
``Authorization`` on a WebSocket, offers it with ``bearer.<token>`` (``ws_protocol_token``)."""
WS_TOKEN_PREFIX = "bearer."


def offered_protocols(request: Any) -> list[str]:
    """The subprotocols a WebSocket upgrade offers (``Sec-WebSocket-Protocol``)."""
    raw = request.headers.get("Sec-WebSocket-Protocol") or ""
    return [p.strip() for p in raw.split(",") if p.strip()]


def ws_protocol_token(request: Any) -> str | None:
    """A browser's token on the live WebSocket: the offered subprotocols ``novaquota`` and
    ``bearer.<token>``. Read only for the live path (nowhere else is a token taken from
    anything but ``Authorization``, and never from the query string, which ends up in logs)."""
    if getattr(request, "path", None) != LIVE_PATH:
        return None
    offered = offered_protocols(request)
    if WS_PROTOCOL not in offered:
        return None
    tokens = [p[len(WS_TOKEN_PREFIX) :] for p in offered if p.startswith(WS_TOKEN_PREFIX)]
    return tokens[0] if len(tokens) == 1 and tokens[0] else None


def bearer_token(request: Any) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; without that header, on the
    live WebSocket only, the token a browser offers as a subprotocol; else None."""
    header = request.headers.get("Authorization")
    if header is None:
        return ws_protocol_token(request)
    scheme, _, value = header.partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


class JwtVerifier:
    """OIDC/JWT bearer tokens: signature against a JWKS (URL or file), expiry, issuer and
    audience; the role and tenant come from claims whose names are settings."""

    def __init__(
        self,
        jwks: str,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        algorithms: list[str] | None = None,
        subject_claim: str = "sub",
        role_claim: str = "novaquota_role",
        tenant_claim: str = "novaquota_tenant",
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms or ["RS256"]
        self.subject_claim = subject_claim
        self.role_claim = role_claim
        self.tenant_claim = tenant_claim
        self._client: jwt.PyJWKClient | None = None
        self._file: Path | None = None
        self._keys: jwt.PyJWKSet | None = None
        self._stamp: tuple[int, int] | None = None
        if jwks.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(jwks, cache_jwk_set=True, lifespan=300)
        else:
            self._file = Path(jwks)

    def _key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._file is not None
        st = self._file.stat()
        if self._keys is None or self._stamp != (st.st_mtime_ns, st.st_size):
            self._keys = jwt.PyJWKSet.from_json(self._file.read_text())
            self._stamp = (st.st_mtime_ns, st.st_size)
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None and len(self._keys.keys) == 1:
            return self._keys.keys[0].key
        return self._keys[str(kid)].key

    def verify(self, token: str) -> Principal:
        require = ["exp", self.subject_claim]
        require += ["iss"] if self.issuer else []
        require += ["aud"] if self.audience else []
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": require},
            )
        except (jwt.PyJWTError, KeyError, OSError) as exc:
            raise unauthorized(f"invalid token: {type(exc).__name__}") from None
        return self.principal(claims)

    def principal(self, claims: dict[str, Any]) -> Principal:
        role = claims.get(self.role_claim)
        tenant = claims.get(self.tenant_claim)
        if role not in ROLES:
            raise unauthorized(f"the token's {self.role_claim!r} claim is not a role")
        if tenant is not None and not isinstance(tenant, str):
            raise unauthorized(f"the token's {self.tenant_claim!r} claim is not a string")
        if role != "admin" and not tenant:
            raise unauthorized(f"the token has no {self.tenant_claim!r} claim")
        return Principal(f"jwt:{claims[self.subject_claim]}", cast(Role, role), tenant or None)


class BearerAuth:
    """The ``Authenticate`` of the workers: static tokens, JWTs, or anonymous when allowed."""

    def __init__(
        self,
        tokens: TokenStore | None = None,
        jwt_verifier: JwtVerifier | None = None,
        anonymous_role: Role | None = None,
    ) -> None:
        self.tokens = tokens
        self.jwt = jwt_verifier
        self.anonymous = Principal("anonymous", anonymous_role) if anonymous_role else None

    def costly(self, request: Any) -> bool:
        """Whether authenticating ``request`` may block: argon2 on a static token's first use,
        or a JWT (its JWKS may have to be fetched over the network)."""
        token = bearer_token(request)
        if token is None:
            return False
        if token.startswith("nq_"):
            return self.tokens is not None and self.tokens.costly(token)
        return self.jwt is not None

    def __call__(self, request: Any) -> Principal:
        token = bearer_token(request)
        if token is None:
            if self.anonymous is not None:
                return self.anonymous
            raise unauthorized()
        if token.startswith("nq_"):
            principal = self.tokens.verify(token) if self.tokens is not None else None
            if principal is None:
                raise unauthorized("invalid or revoked token")
            return principal
        if self.jwt is None:
            raise unauthorized("invalid token")
        return self.jwt.verify(token)


def build_access(settings: Settings) -> Access:
    """The ``Access`` the settings describe (the same for both servers); warns when anonymous
    callers are let in."""
    from novaquota.streams.tokens import TokenStore

    verifier = None
    if settings.jwt_jwks:
        verifier = JwtVerifier(
            settings.jwt_jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            algorithms=[a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()],
            subject_claim=settings.jwt_subject_claim,
            role_claim=settings.jwt_role_claim,
            tenant_claim=settings.jwt_tenant_claim,
        )
    role = cast(Role | None, settings.auth_anonymous)
    if role is not None:
        log.warning(
            "NOVAQUOTA_AUTH_ANONYMOUS is set: requests without credentials act as %s "
            "(for local development only)",
            role,
        )
    secret = settings.internal_secret.get_secret_value() if settings.internal_secret else None
    auth = BearerAuth(TokenStore(settings.tokens_file), verifier, role)
    return Access(auth, internal_secret=secret)


# -- HTTP ------------------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(access: Access, max_body_bytes: int | None = None) -> Any:
    """aiohttp middleware of both servers: authenticate every request but those to
    ``OPEN_PATHS`` and under ``OPEN_PREFIXES`` (401 without valid credentials), and refuse a
    declared body above ``max_body_bytes`` (413) before anything reads it."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return await handler(request)
        try:
            if request.path.startswith(INTERNAL_PREFIX):
                access.internal(request)
            else:
                await access.resolve(request)
            size = request.content_length
            if max_body_bytes is not None and size is not None and size > max_body_bytes:
                raise ApiError(413, "body_too_large", f"at most {max_body_bytes} bytes")
        except ApiError as exc:
            return api_error_response(exc)
        return await handler(request)

    return authenticate


Ceiling = tuple[int, int] | None
"""What a quota lets through, in micro-units: (limit, burst limit or limit). None: no quota in
force (none set, or suspended), so nothing is limited."""


WHOAMI_PATH = "/api/v1/auth/whoami"


def add_whoami_route(router: web.UrlDispatcher, access: Access) -> None:
    """``GET /api/v1/auth/whoami`` on an aiohttp router (both servers): the caller's principal
    and what its role allows, so a client (the dashboard) learns who a token is without
    probing. Any authenticated caller; it reveals nothing the token's holder does not know."""

    async def whoami(request: web.Request) -> web.Response:
        principal = access.principal(request)  # the middleware has authenticated it
        body = {
            "subject": principal.subject,
            "role": principal.role,
            "tenant_id": principal.tenant,
            "actions": sorted(ALLOWED[principal.role]),
        }
        return web.json_response(body)

    router.add_get(WHOAMI_PATH, whoami)


def authorize_limit_change(
    principal: Principal, level: str, before: Ceiling, after: Ceiling
) -> None:
    """A tenant-admin manages the quotas of its projects and users but cannot raise its own
    tenant-level quota (contract §6): raise 403 if ``after`` lets more through than ``before``.
    Lowering is allowed, and so is setting a quota where none was in force (that limits more);
    removing or suspending one is a raise."""
    if principal.role != "tenant-admin" or level != "tenant" or before is None:
        return
    if after is None or after[0] > before[0] or after[1] > before[1]:
        raise ApiError(403, "forbidden", "a tenant-admin cannot raise its own tenant's quota")
