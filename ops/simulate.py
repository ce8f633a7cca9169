"""``novaquota simulate``: the seeded workload simulator (ops/workload.py), to Kafka or a file.

``--duration`` is event time: the simulator emits the quota setup (one ``template.applied`` per
tenant, project and user quotas, a system quota) and then every resource event of that span of
event time at a mean ``--rate`` (seasonality modulates it). With ``--out FILE`` it writes JSON
lines, the same bytes for the same options. Otherwise it publishes through the project's
producer: commands to the commands topic, events to the resource-events topic, keyed by tenant,
paced so that event time runs ``--speed`` times as fast as the wall clock (``--speed 0``: as fast
as the broker takes them). Event times never run ahead of the wall clock, so the worker's skew
check accepts every message.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from novaquota.ops.workload import US, Workload, WorkloadSpec, is_command, tenant_key, to_jsonl
from novaquota.schemas.common import parse_time_us
from novaquota.streams.settings import Settings, ensure_dir

__all__ = [
    "SimulationResult",
    "Workload",
    "WorkloadSpec",
    "default_start",
    "generate",
    "is_command",
    "main",
    "publish",
    "tenant_key",
    "write_jsonl",
]

#: where a file's event time starts unless --start says otherwise (fixed: same bytes every run)
FILE_EPOCH = datetime(2026, 11, 1, tzinfo=UTC)
STRUCTURED = [("content-type", b"application/cloudevents+json")]


@dataclass
class SimulationResult:
    commands: int = 0
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)
    misbehaving: list[str] = field(default_factory=list)
    first_time: str | None = None
    last_time: str | None = None

    def count(self, ev: dict[str, Any]) -> None:
        if is_command(ev):
            self.commands += 1
        else:
            self.events += 1
            self.first_time = self.first_time or ev["time"]
            self.last_time = ev["time"]
        self.by_type[ev["type"]] += 1

    def summary(self) -> str:
        types = ", ".join(f"{k} {v:,}" for k, v in sorted(self.by_type.items()))
        tiers = ", ".join(f"{k} {v:,}" for k, v in self.tiers.items())
        bad = ", ".join(self.misbehaving[:5]) + (" ..." if len(self.misbehaving) > 5 else "")
        return (
            f"{self.commands:,} commands, {self.events:,} resource events "
            f"({self.first_time} .. {self.last_time})\n"
            f"  tiers: {tiers}\n  misbehaving tenants: {bad or 'none'}\n  types: {types}"
        )


def generate(
    spec: WorkloadSpec,
    duration_s: float,
    *,
    setup: bool = True,
    result: SimulationResult | None = None,
) -> Iterator[dict[str, Any]]:
    """The setup commands, then the resource events of ``duration_s`` seconds of event time."""
    if duration_s <= 0:
        raise ValueError("duration must be > 0 seconds")
    wl = Workload(spec)
    if result is not None:
        result.tiers = Counter(wl.tier_of(i) for i in range(spec.tenants))
        result.misbehaving = sorted(wl.tenant(i) for i in wl.misbehaving)
    if setup:
        yield from wl.setup_commands()
    end = wl.time_us + int(duration_s * US)
    yield from wl.events_until(end)


def write_jsonl(
    path: str, spec: WorkloadSpec, duration_s: float, *, setup: bool = True
) -> SimulationResult:
    result = SimulationResult()
    if path != "-":
        ensure_dir(Path(path).parent)
    out = sys.stdout.buffer if path == "-" else open(path, "wb")  # noqa: SIM115
    try:
        buf: list[bytes] = []
        for ev in generate(spec, duration_s, setup=setup, result=result):
            result.count(ev)
            buf.append(to_jsonl(ev))
            if len(buf) >= 10_000:
                out.write(b"".join(buf))
                buf.clear()
        out.write(b"".join(buf))
        out.flush()
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return result


def default_start(now: datetime, duration_s: float, speed: float) -> datetime:
    """The earliest start that keeps every event time at or behind the wall clock."""
    behind = duration_s if speed == 0 else duration_s * max(0.0, 1 - 1 / speed)
    return (now - timedelta(seconds=behind)).replace(microsecond=0)


async def publish(
    settings: Settings,
    spec: WorkloadSpec,
    duration_s: float,
    *,
    speed: float = 1.0,
    setup: bool = True,
    progress: bool = False,
) -> SimulationResult:
    """Publish through the project's producer, paced by ``speed`` (0: unpaced)."""
    from novaquota.ops.publish import make_producer

    if speed < 0:
        raise ValueError("speed must be >= 0")
    result = SimulationResult()
    topics = settings.topics
    prod = make_producer(settings, linger_ms=20)
    await prod.start()
    pending: list[asyncio.Future[Any]] = []
    t0_us = int(spec.start.timestamp()) * US + spec.start.microsecond
    wall0 = time.monotonic()
    last_note = wall0
    try:
        for ev in generate(spec, duration_s, setup=setup, result=result):
            command = is_command(ev)
            if speed > 0 and not command:
                due = (_time_us(ev["time"]) - t0_us) / US / speed
                wait = due - (time.monotonic() - wall0)
                if wait > 0.005:
                    if pending:
                        await asyncio.gather(*pending)
                        pending.clear()
                    await asyncio.sleep(wait)
            topic = topics.quota_commands if command else topics.resource_events
            value = to_jsonl(ev)[:-1]
            pending.append(await prod.send(topic, value, key=tenant_key(ev), headers=STRUCTURED))
            result.count(ev)
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
            if progress and time.monotonic() - last_note >= 5:
                last_note = time.monotonic()
                print(
                    f"  {result.commands + result.events:,} published, event time {ev['time']}",
                    file=sys.stderr,
                    flush=True,
                )
        if pending:
            await asyncio.gather(*pending)
    finally:
        await prod.stop()
    return result


def _time_us(iso: str) -> int:
    return parse_time_us(iso)


def _start(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="novaquota simulate",
        description="Seeded workload simulator: tenants of every tier, VM churn with daily "
        "seasonality, volumes, snapshots, network samples, API bursts, misbehaving tenants.",
    )
    p.add_argument("--tenants", type=_positive(int), default=100)
    p.add_argument("--rate", type=_positive(float), default=100.0, help="mean events/s")
    p.add_argument("--duration", type=_positive(float), default=60.0, help="seconds of event time")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", help="write JSON lines to this file (- for stdout), not to Kafka")
    p.add_argument(
        "--start",
        type=_start,
        help="event time of the first message (default: 2026-11-01T00:00:00Z for a file; for "
        "Kafka, as late as keeps every event time behind the wall clock)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="Kafka only: event time runs this many times as fast as the wall clock (0: no pacing)",
    )
    p.add_argument("--projects", type=_positive(int), default=2, help="projects per tenant")
    p.add_argument("--users", type=_positive(int), default=2, help="users per project")
    p.add_argument("--misbehaving", type=float, default=0.01, help="share of misbehaving tenants")
    p.add_argument("--seasonality", type=float, default=0.5, help="daily amplitude, 0 to 0.9")
    p.add_argument(
        "--day-seconds", type=_positive(float), default=86_400.0, help="length of the daily cycle"
    )
    p.add_argument("--no-setup", action="store_true", help="resource events only, no quotas")
    return p


def main(argv: list[str], settings: Settings) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.speed < 0:
        parser.error("--speed must be >= 0")
    if args.out is not None:
        start = args.start or FILE_EPOCH
    else:
        start = args.start or default_start(datetime.now(UTC), args.duration, args.speed)
    try:
        spec = WorkloadSpec(
            tenants=args.tenants,
            projects_per_tenant=args.projects,
            users_per_project=args.users,
            seed=args.seed,
            start=start,
            events_per_second=args.rate,
            seasonality=args.seasonality,
            day_seconds=args.day_seconds,
            misbehaving=args.misbehaving,
        )
    except ValueError as exc:
        parser.error(str(exc))
    setup = not args.no_setup
    if args.out is not None:
        result = write_jsonl(args.out, spec, args.duration, setup=setup)
        where = "stdout" if args.out == "-" else args.out
    else:
        result = asyncio.run(
            publish(settings, spec, args.duration, speed=args.speed, setup=setup, progress=True)
        )
        where = f"{settings.topics.quota_commands} and {settings.topics.resource_events}"
    print(f"simulate: wrote to {where}: {result.summary()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], Settings()))
