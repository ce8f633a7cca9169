"""``novaquota deliver``: run the delivery worker.

novaquota deliver [--config FILE] [--port N] [--check]

The configuration comes from ``--config`` or ``NOVAQUOTA_DELIVERY_CONFIG``; an invalid file
(or a secret that cannot be read) stops the worker before it consumes anything, exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from novaquota.ops.console import add_output_option, print_json
from novaquota.ops.exitcodes import ExitCode
from novaquota.streams.delivery.config import DeliveryConfig, load_config
from novaquota.streams.delivery.exceptions import ConfigError
from novaquota.streams.delivery.settings import DeliverySettings
from novaquota.streams.settings import Settings

__all__ = ["build_parser", "main", "print_check", "summary"]

log = logging.getLogger("novaquota.delivery")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="novaquota deliver",
        description="Deliver violations and alerts to webhooks, Slack, PagerDuty and email.",
    )
    p.add_argument(
        "--config",
        type=Path,
        help="channels and routes, YAML or JSON (default NOVAQUOTA_DELIVERY_CONFIG)",
    )
    p.add_argument("--host", help="HTTP host of /healthz and /metrics")
    p.add_argument("--port", type=int, help="HTTP port (default NOVAQUOTA_DELIVERY_WEB_PORT, 6068)")
    p.add_argument(
        "--check", action="store_true", help="validate the configuration, print a summary, exit"
    )
    add_output_option(p, "with --check: the summary")
    return p


def summary(config: DeliveryConfig) -> dict[str, Any]:
    """What the configuration says, without a secret (secrets show where they come from)."""

    def describe(ch: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": ch.type}
        for name, ref in ch.secrets():
            out[name] = {"env": ref.env} if ref.env else {"file": str(ref.file)}
        for name in ("url", "host", "port", "to"):
            value = getattr(ch, name, None)
            if value is not None and name not in out:
                out[name] = value if isinstance(value, int | list) else str(value)
        return out

    return {
        "channels": {n: describe(c) for n, c in config.channels.items()},
        "routes": [r.model_dump(exclude_defaults=True) for r in config.routes],
        "retry": config.retry.model_dump(),
    }


async def _serve(settings: Settings, dsettings: DeliverySettings, config: DeliveryConfig) -> int:
    from aiohttp import web

    from novaquota.streams.delivery.web import build_app
    from novaquota.streams.delivery.worker import DeliveryWorker

    worker = DeliveryWorker(settings, dsettings, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_app(worker), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, dsettings.web_host, dsettings.web_port)
    await site.start()
    log.info("delivery worker serving on http://%s:%d", dsettings.web_host, dsettings.web_port)
    try:
        await worker.start()
        await worker.run(stop)
    finally:
        await worker.stop()
        await runner.cleanup()
    return 0


def main(argv: Sequence[str], settings: Settings | None = None) -> int:
    from novaquota.streams.logs import configure_logging

    args = build_parser().parse_args(list(argv))
    settings = settings or Settings()
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["web_host"] = args.host
    if args.port is not None:
        overrides["web_port"] = args.port
    if args.config is not None:
        overrides["config"] = args.config
    dsettings = DeliverySettings(**overrides)
    if dsettings.config is None:
        print(
            "novaquota deliver: give --config FILE or set NOVAQUOTA_DELIVERY_CONFIG",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    try:
        config = load_config(dsettings.config)
    except ConfigError as exc:
        print(f"novaquota deliver: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.check:
        if args.output == "json":
            print_json(summary(config))
        else:
            print_check(summary(config))
        return ExitCode.OK
    configure_logging(settings)
    from novaquota.ops.topics import check_reachable

    asyncio.run(check_reachable(settings))  # exit 3 at once rather than retrying for ever
    return asyncio.run(_serve(settings, dsettings, config))


def print_check(doc: dict[str, Any]) -> None:
    """The ``--check`` summary as text: one line a channel, one a route."""
    for name, ch in doc["channels"].items():
        where = ", ".join(f"{k}={v}" for k, v in ch.items() if k != "type")
        print(f"channel {name}: {ch['type']} ({where})")
    for i, route in enumerate(doc["routes"]):
        print(f"route {i}: {route}")
