"""``novaquota projections``: the projection workers.

novaquota projections run [--port 6067] [--data-dir DIR] [--pricing FILE] [--no-emit]
novaquota projections rebuild [--keep-running] ...
novaquota projections status [--url URL]
novaquota projections report ...     (compliance reports)
novaquota projections backtest ...   (forecast backtests)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from novaquota.projections.config import ProjectionSettings
from novaquota.projections.exceptions import PricingError, ProjectionError
from novaquota.streams.settings import Settings

__all__ = ["build_parser", "main"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="HTTP host (default NOVAQUOTA_PROJECTIONS_WEB_HOST)")
    p.add_argument("--port", type=int, help="HTTP port (default 6067)")
    p.add_argument("--data-dir", type=Path, help="view store directory")
    p.add_argument("--pricing", type=Path, help="pricing catalogue JSON file")
    p.add_argument("--no-emit", action="store_true", help="views only: send no alerts")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="novaquota projections",
        description="Projection workers: usage history, cost, budgets, analytics.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("run", help="fold the log into the views and serve them over HTTP")
    _common(p)
    p = sub.add_parser("rebuild", help="drop the views and fold again from offset 0")
    _common(p)
    p.add_argument(
        "--keep-running", action="store_true", help="keep folding and serving once caught up"
    )
    p = sub.add_parser("status", help="position, lag and readiness of a running worker")
    p.add_argument("--url", help="worker base URL (default http://127.0.0.1:6067)")
    sub.add_parser("report", help="compliance reports (see `report --help`)", add_help=False)
    sub.add_parser("backtest", help="forecast backtests (see `backtest --help`)", add_help=False)
    return parser


def _psettings(args: argparse.Namespace) -> ProjectionSettings:
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["web_host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["web_port"] = args.port
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "pricing", None):
        overrides["pricing_file"] = args.pricing
    if getattr(args, "no_emit", False):
        overrides["emit"] = False
    return ProjectionSettings(**overrides)


async def serve(
    settings: Settings, psettings: ProjectionSettings, *, rebuild: bool, keep_running: bool
) -> int:
    from aiohttp import web

    from novaquota.projections.cost import load_catalogue
    from novaquota.projections.http import build_app
    from novaquota.projections.store import RocksStore
    from novaquota.projections.worker import ProjectionWorker
    from novaquota.streams.auth import build_access

    catalogue = load_catalogue(psettings.pricing_file)  # a bad file fails before anything else
    store = RocksStore(psettings.data_dir / "views")
    if rebuild:
        store.drop_views()
    worker = ProjectionWorker(settings, psettings, store=store, catalogue=catalogue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await worker.start()
    if keep_running or not rebuild:
        worker.start_operations()
    runner = web.AppRunner(build_app(worker, build_access(settings)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, psettings.web_host, psettings.web_port)
    await site.start()
    logging.getLogger("novaquota.projections").info(
        "projections serving on http://%s:%d", psettings.web_host, psettings.web_port
    )
    try:
        if rebuild and not keep_running:
            await worker.run(stop, until_caught_up=True)
            print(orjson.dumps(_summary(worker), option=orjson.OPT_INDENT_2).decode())
        else:
            await worker.run(stop)
    finally:
        await runner.cleanup()
        await worker.stop()
    return 0


def _summary(worker: Any) -> dict[str, Any]:
    from novaquota.projections.http import status_body

    return status_body(worker)


def _status(url: str | None) -> int:
    import os

    import httpx

    base = (url or f"http://127.0.0.1:{ProjectionSettings().web_port}").rstrip("/")
    token = os.environ.get("NOVAQUOTA_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(f"{base}/api/v1/projections/status", headers=headers, timeout=5.0)
    except httpx.HTTPError as exc:
        print(f"novaquota projections: no worker answers at {base}: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(resp.json(), option=orjson.OPT_INDENT_2).decode())
    return 0 if resp.status_code == 200 else 1


def _delegate(module: str, call: str, argv: list[str], settings: Settings | None) -> int:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        print(f"novaquota projections: {module} is not installed", file=sys.stderr)
        return 2
    fn = getattr(mod, call)
    result = fn(argv, settings) if settings is not None else fn(argv)
    return int(result)


def main(argv: list[str], settings: Settings) -> int:
    if argv and argv[0] == "report":
        return _delegate("novaquota.projections.compliance", "main", argv[1:], settings)
    if argv and argv[0] == "backtest":
        return _delegate("novaquota.projections.analytics.backtest", "main", argv[1:], None)
    args = build_parser().parse_args(argv)
    if args.action == "status":
        return _status(args.url)
    from novaquota.streams.logs import configure_logging

    configure_logging(settings)  # JSON lines by default, like the workers (NOVAQUOTA_LOG_FORMAT)
    try:
        psettings = _psettings(args)
        return asyncio.run(
            serve(
                settings,
                psettings,
                rebuild=args.action == "rebuild",
                keep_running=getattr(args, "keep_running", False),
            )
        )
    except PricingError as exc:
        print(f"novaquota projections: {exc}", file=sys.stderr)
        return 2
    except (ProjectionError, OSError) as exc:  # e.g. a missing topic, a port in use
        print(f"novaquota projections: {exc}", file=sys.stderr)
        return 1
