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

from novaquota.ops.console import (
    Bar,
    add_output_option,
    add_progress_options,
    print_fields,
    print_json,
    progress_wanted,
)
from novaquota.ops.exitcodes import ExitCode
from novaquota.projections.config import ProjectionSettings
from novaquota.projections.exceptions import PricingError, ProjectionError
from novaquota.streams.settings import Settings

__all__ = ["DELEGATED", "build_parser", "delegated_parsers", "main"]


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
    add_output_option(p, "the summary once caught up (not with --keep-running)")
    add_progress_options(p)
    p = sub.add_parser("status", help="position, lag and readiness of a running worker")
    p.add_argument("--url", help="worker base URL (default http://127.0.0.1:6067)")
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the worker's answer (exit 4 past it; default 5)",
    )
    add_output_option(p, "the status")
    for name, help_ in DELEGATED.items():
        d = sub.add_parser(name, help=help_, add_help=False)
        d.add_argument("rest", nargs=argparse.REMAINDER, help=f"its options: `{name} --help`")
    return parser


#: Sub-commands with parsers of their own (``delegated_parsers``).
DELEGATED = {
    "report": "compliance reports (see `report --help`)",
    "backtest": "forecast backtests (see `backtest --help`)",
}


def delegated_parsers() -> dict[str, argparse.ArgumentParser]:
    from novaquota.projections.analytics import backtest
    from novaquota.projections.compliance import build_parser as report_parser

    return {"report": report_parser(), "backtest": backtest.build_parser()}


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
    settings: Settings,
    psettings: ProjectionSettings,
    *,
    rebuild: bool,
    keep_running: bool,
    output: str = "text",
    progress: bool = False,
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
            with Bar("folding the log", enabled=progress) as bar:
                watch = asyncio.ensure_future(_watch(worker, bar))
                try:
                    await worker.run(stop, until_caught_up=True)
                finally:
                    watch.cancel()
                _show(worker, bar)
            summary = _summary(worker)
            if output == "json":
                print_json(summary)
            else:
                print_fields(summary)
        else:
            await worker.run(stop)
    finally:
        await runner.cleanup()
        await worker.stop()
    return 0


def _show(worker: Any, bar: Bar) -> None:
    """Offsets folded of those to fold up to the start targets."""
    targets = worker.targets
    done = sum(min(worker.positions.get(k, 0), end) for k, end in targets.items())
    bar.update(done, sum(targets.values()))


async def _watch(worker: Any, bar: Bar) -> None:
    while True:
        _show(worker, bar)
        await asyncio.sleep(0.2)


def _summary(worker: Any) -> dict[str, Any]:
    from novaquota.projections.http import status_body

    return status_body(worker)


def _status(args: argparse.Namespace) -> int:
    import os

    import httpx

    base = (args.url or f"http://127.0.0.1:{ProjectionSettings().web_port}").rstrip("/")
    token = os.environ.get("NOVAQUOTA_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(f"{base}/api/v1/projections/status", headers=headers, timeout=args.timeout)
        body = resp.json()
    except httpx.TimeoutException:
        print(
            f"novaquota projections: the worker at {base} did not answer within {args.timeout:g} s",
            file=sys.stderr,
        )
        return ExitCode.TIMEOUT
    except httpx.HTTPError as exc:
        print(f"novaquota projections: no worker answers at {base}: {exc}", file=sys.stderr)
        return ExitCode.REJECTED
    except ValueError:
        print(
            f"novaquota projections: {base} answered {resp.status_code}, not JSON", file=sys.stderr
        )
        return ExitCode.REJECTED
    if args.output == "json":
        print_json(body)
    elif isinstance(body, dict):
        print_fields(body)
    else:
        print(body)
    return ExitCode.OK if resp.status_code == 200 else ExitCode.REJECTED


def _delegate(module: str, call: str, argv: list[str], settings: Settings | None) -> int:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        print(f"novaquota projections: {module} is not installed", file=sys.stderr)
        return ExitCode.USAGE
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
        return _status(args)
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
                output=getattr(args, "output", "text"),
                progress=progress_wanted(args),
            )
        )
    except PricingError as exc:  # --pricing: a bad file named on the command line
        print(f"novaquota projections: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except (ProjectionError, OSError) as exc:  # e.g. a missing topic, a port in use
        print(f"novaquota projections: {exc}", file=sys.stderr)
        return ExitCode.REJECTED
