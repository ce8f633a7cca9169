"""Who calls the HTTP API and what they may do (contract §6).

A request is authenticated once, into a ``Principal``: a subject (the audit ``actor``), a role
and, for every role but ``admin``, one tenant. ``authorize`` then decides an ``Action`` on a
tenant. Another tenant's data answers 404, never 403, so a token cannot learn which tenants
exist; a role that may not do something to its own tenant answers 403.

``Access`` is what the HTTP layers call: ``access(request, tenant_id, action)`` authenticates,
authorizes and returns the principal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from streams.errors import ApiError

__all__ = [
    "ACTIONS",
    "ANONYMOUS_ADMIN",
    "ROLES",
    "Access",
    "Action",
    "Principal",
    "Role",
    "authorize",
    "authorize_limit_change",
]

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


Authenticate = Callable[[Any], Principal]
"""Request → principal; raises ``ApiError(401)`` without valid credentials."""


class Access:
    """``access(request, tenant_id, action)``: authenticate, authorize, return the principal."""

    def __init__(self, authenticate: Authenticate) -> None:
        self.authenticate = authenticate

    def __call__(self, request: Any, tenant_id: str | None, action: Action) -> Principal:
        principal = self.authenticate(request)
        authorize(principal, action, tenant_id)
        return principal


def anonymous(request: Any) -> Principal:
    """No authentication: every caller is an admin (local development only)."""
    return ANONYMOUS_ADMIN


Ceiling = tuple[int, int] | None
"""What a quota lets through, in micro-units: (limit, burst limit or limit). None: no quota in
force (none set, or suspended), so nothing is limited."""


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
