"""Event-time ticks: when a partition goes quiet, time still has to pass for it.

Burst and grace clocks, window closes and gauge expiry advance with event time. When no input
arrives, the owner of a partition writes a tick record (the event time it stands for) to the
internal ticks topic, co-partitioned with the inputs; ticks are processed like any input, so a
replay of the log sees the same ticks and decides the same way.

A tick's time is the partition's watermark (highest event time seen) plus the wall-clock time
that passed since the watermark last moved: live traffic (event time close to wall time) gets
ticks close to wall time, and a backfill of old events is not aged by the wall clock. Ticks are
written only when some tenant of the partition has a deadline that the tick would reach.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Ticker"]


class Ticker:
    def __init__(self, *, idle_us: int = 1_000_000, clock: Callable[[], float]) -> None:
        self.idle_us = idle_us
        self.clock = clock  # wall clock in seconds (time.time)
        self.deadlines: dict[int, dict[str, int]] = {}
        self.watermark: dict[int, int] = {}
        self.moved_at: dict[int, float] = {}

    def note(self, partition: int, tenant: str, deadline: int | None, watermark: int) -> None:
        """After a tenant's state was stored: its next deadline and the event time it reached."""
        due = self.deadlines.setdefault(partition, {})
        if deadline is None:
            due.pop(tenant, None)
        else:
            due[tenant] = deadline
        if watermark > self.watermark.get(partition, -1):
            self.watermark[partition] = watermark
        # quiet means no input at all, not a watermark that stopped rising (a backfill or a
        # shuffled replay must not be aged by the wall clock while it is still flowing)
        self.moved_at[partition] = self.clock()

    def due(self, partition: int, tick_us: int) -> list[str]:
        due = self.deadlines.get(partition, {})
        return sorted(t for t, d in due.items() if d <= tick_us)

    def pending(self, partitions: set[int]) -> list[tuple[int, int]]:
        """(partition, tick time) for each quiet partition with a deadline the tick reaches."""
        now = self.clock()
        out = []
        for p in sorted(partitions):
            wm = self.watermark.get(p)
            due = self.deadlines.get(p)
            if wm is None or not due:
                continue
            idle_us = int((now - self.moved_at[p]) * 1_000_000)
            if idle_us < self.idle_us:
                continue
            tick = wm + idle_us
            if min(due.values()) <= tick:
                out.append((p, tick))
        return out

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.deadlines.pop(p, None)
            self.watermark.pop(p, None)
            self.moved_at.pop(p, None)
