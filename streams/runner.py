"""Run the enforcement worker in this process: ``run_worker(settings)`` (``novaquota worker``)."""

from __future__ import annotations

import sys

from streams.app import create_app
from streams.settings import Settings

__all__ = ["FAUST_LOG_LEVELS", "run_worker"]


FAUST_LOG_LEVELS = {
    "CRITICAL": "crit",
    "ERROR": "error",
    "WARNING": "warn",
    "WARN": "warn",
    "INFO": "info",
    "DEBUG": "debug",
}


def run_worker(settings: Settings, extra_argv: list[str] | None = None) -> int:
    """Run a Faust worker in this process until it is stopped (SIGINT/SIGTERM)."""
    qa = create_app(settings)
    argv = [
        "novaquota",
        "worker",
        "--loglevel",
        FAUST_LOG_LEVELS.get(settings.log_level.upper(), "info"),
        "--web-port",
        str(settings.web_port),
        "--web-host",
        settings.web_host,
    ]
    extra = [a for a in (extra_argv or []) if a != "--"]
    sys.argv = argv + extra
    qa.app.main()
    return 0
