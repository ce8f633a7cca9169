"""The worker's write batch: input messages whose effects are staged, written once, then acked.

Every agent stages its messages' effects in the shared ``TenantStore`` and adds the message to
the one ``Batch``. The batch is written when it holds ``max_events`` messages, when its first
message has waited ``max_wait`` seconds, or when the agent that just added one has nothing
more waiting (so a lone message is not held back). Writing it:

1. takes the staged rows (each touched tenant's record serialised once) and writes them
   durably (``ChangelogWriter``: changelog record batches acknowledged, then RocksDB);
2. sends the outputs the batch's messages produced, in the order they were produced;
3. runs what waited for durability (admission answers);
4. acknowledges the batch's input messages, so Faust may commit their offsets.

A failed write stops the worker at once, without acknowledging anything: after the restart,
the batch's input is read again from the last committed offsets. The caller holds ``lock`` for
staging and writing alike, so no message is staged against rows whose write is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from novaquota.streams.enforce import Emit
from novaquota.streams.store.tenant_store import Staged, TenantStore

__all__ = ["WRITE_FAILED_EXIT", "Batch"]

log = logging.getLogger(__name__)

WRITE_FAILED_EXIT = 75
"""Process exit status after a failed state write (EX_TEMPFAIL: restart and it replays)."""


class Batch:
    def __init__(
        self,
        store: TenantStore,
        write: Callable[[Staged], Awaitable[None]],
        send: Callable[[Emit], Awaitable[None]],
        *,
        max_events: int,
        max_wait: float,
        on_written: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.store = store
        self.write = write
        self.send = send
        self.max_events = max_events
        self.max_wait = max_wait
        self.on_written = on_written
        """Called with (messages, tenants, seconds) after each write (metrics)."""
        self.on_durable: Callable[[list[str]], None] | None = None
        """Called with the tenants a written batch changed (the live feed's usage snapshots)."""
        self.lock = asyncio.Lock()
        self.events: list[Any] = []
        self.emits: list[Emit] = []
        self.after: list[Callable[[], None]] = []
        self.opened = 0.0

    def add(
        self,
        event: Any,
        emits: list[Emit] | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        """One message's part: its event (acked once written), outputs and a callback."""
        if not self.events:
            self.opened = time.monotonic()
        self.events.append(event)
        if emits:
            self.emits.extend(emits)
        if after is not None:
            self.after.append(after)

    def due(self, waiting: int) -> bool:
        """Whether to write now, given how many messages wait in the calling agent's buffer."""
        if not self.events:
            return False
        return (
            waiting == 0
            or len(self.events) >= self.max_events
            or time.monotonic() - self.opened >= self.max_wait
        )

    async def flush(self) -> None:
        """Write, send, answer, acknowledge (module doc). Call with ``lock`` held."""
        if not self.events and not self.store.pending:
            return
        started = time.monotonic()
        staged = self.store.take()
        events, emits, after = self.events, self.emits, self.after
        self.events, self.emits, self.after = [], [], []
        try:
            await self.write(staged)
            self.store.committed(staged)
            for emit in emits:
                await self.send(emit)
        except asyncio.CancelledError:
            raise  # the worker is stopping: nothing is acknowledged
        except BaseException:
            log.critical(
                "writing the state or the outputs of %d messages failed; stopping so that "
                "they are processed again after a restart",
                len(events),
                exc_info=True,
            )
            logging.shutdown()
            os._exit(WRITE_FAILED_EXIT)
        for callback in after:
            callback()
        for event in events:
            event.ack()
        if self.on_written is not None:
            self.on_written(len(events), len(staged.records), time.monotonic() - started)
        if self.on_durable is not None and staged.records:
            self.on_durable([tenant for tenant, _raw, _rec in staged.records])

    async def flush_if_old(self) -> None:
        """For a timer: write a batch whose first message has waited ``max_wait``."""
        if self.events and time.monotonic() - self.opened >= self.max_wait:
            async with self.lock:
                if self.events and time.monotonic() - self.opened >= self.max_wait:
                    await self.flush()
