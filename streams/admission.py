"""The admission desk of a worker: check-and-reserve requests as records on the internal
admission topic, answered by the tenant's agent (DESIGN.md: Faust writes tables only inside
stream processing, and one agent deciding in order is what makes a grant atomic).

- ``submit`` sends a request record to the tenant's home partition and waits for the agent's
  decision (a future resolved by ``resolve``); if the partition moves meanwhile the wait times
  out and the HTTP API answers 503, and a retry with the same ``idempotency_key`` gets the same
  grant.
- TTLs run on this owner's wall clock: ``note`` keeps the earliest grant expiry of each owned
  tenant, and ``expire_due`` (every second) sends one ``expire`` record per tenant whose grants
  are due; the agent releases them and audits each expiry.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from novaquota.streams import quota as q

if TYPE_CHECKING:
    from novaquota.streams.app import QuotaApp
    from novaquota.streams.enforce import TenantRecord

__all__ = ["AdmissionDesk", "AdmissionTimeout", "now_us"]

RESEND_EXPIRE_US = 10 * q.SEC_US
"""An ``expire`` record not yet acted on is sent again after this long."""


class AdmissionTimeout(Exception):
    """The tenant's agent did not answer in time (rebalance, overload)."""


def now_us() -> int:
    return time.time_ns() // 1000


class AdmissionDesk:
    def __init__(self, qa: QuotaApp) -> None:
        self.qa = qa
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.expiry: dict[int, dict[str, int]] = {}
        """partition -> tenant -> earliest grant expiry (wall clock, us)."""
        self._sent: dict[str, int] = {}
        """tenant -> when an expire record was last sent for it."""

    # -- requests ---------------------------------------------------------------------------

    async def submit(self, partition: int, body: dict[str, Any]) -> Any:
        """Send one request record and wait for the agent's result."""
        rid = body.setdefault("request_id", str(uuid.uuid4()))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            await self.qa.admission.send(
                key=body["tenant_id"].encode(), value=orjson.dumps(body), partition=partition
            )
            timeout = self.qa.settings.admission_timeout_seconds
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise AdmissionTimeout(body["tenant_id"]) from exc
        finally:
            self.pending.pop(rid, None)

    def resolve(self, request_id: str | None, result: Any) -> None:
        fut = self.pending.get(request_id or "")
        if fut is not None and not fut.done():
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    # -- TTL ----------------------------------------------------------------------------------

    def note(self, partition: int, tenant: str, rec: TenantRecord) -> None:
        """After every stored change of a tenant: its earliest grant expiry."""
        state = rec.state
        due = q.next_grant_expiry(state) if isinstance(state, q.TenantState) else None
        per = self.expiry.setdefault(partition, {})
        if due is None:
            per.pop(tenant, None)
            self._sent.pop(tenant, None)
        else:
            per[tenant] = due

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            for tenant in self.expiry.pop(p, {}):
                self._sent.pop(tenant, None)

    async def expire_due(self, owned: set[int]) -> int:
        """Send an ``expire`` record for every owned tenant with a grant past its TTL."""
        now = now_us()
        sent = 0
        for p in sorted(owned):
            for tenant, due in sorted(self.expiry.get(p, {}).items()):
                if due > now or self._sent.get(tenant, 0) > now - RESEND_EXPIRE_US:
                    continue
                self._sent[tenant] = now
                body = {
                    "op": "expire",
                    "request_id": str(uuid.uuid4()),
                    "tenant_id": tenant,
                    "now_us": now,
                }
                await self.qa.admission.send(
                    key=tenant.encode(), value=orjson.dumps(body), partition=p
                )
                sent += 1
        return sent
