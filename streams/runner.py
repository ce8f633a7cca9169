"""Run the enforcement worker in this process: ``run_worker(settings)`` (``novaquota worker``).

Logging: the Faust worker replaces the root logger's handlers when it starts; it is handed our
``dictConfig`` (``streams.logs.logging_config``) so that every line, Faust's and aiokafka's
included, comes out in the configured format (``NOVAQUOTA_LOG_FORMAT``, JSON by default) at
``NOVAQUOTA_LOG_LEVEL``. With JSON logs the worker's startup banner is left out, so that
standard output stays one JSON object per line.
"""

from __future__ import annotations

import sys

from streams.app import create_app
from streams.logs import log_format_of, log_level_of, logging_config
from streams.settings import Settings

__all__ = ["FAUST_LOG_LEVELS", "run_worker", "worker_argv"]


FAUST_LOG_LEVELS = {
    "CRITICAL": "crit",
    "ERROR": "error",
    "WARNING": "warn",
    "WARN": "warn",
    "INFO": "info",
    "DEBUG": "debug",
}


def worker_argv(settings: Settings, extra_argv: list[str] | None = None) -> list[str]:
    """The Faust command line for ``settings`` (global options before the subcommand)."""
    argv = ["novaquota"]
    if log_format_of(settings) == "json":
        argv.append("--quiet")  # the banner is plain text; logs are unaffected
    argv += [
        "worker",
        "--loglevel",
        FAUST_LOG_LEVELS.get(settings.log_level.upper(), "info"),
        "--web-port",
        str(settings.web_port),
        "--web-host",
        settings.web_host,
    ]
    return argv + [a for a in (extra_argv or []) if a != "--"]


def run_worker(settings: Settings, extra_argv: list[str] | None = None) -> int:
    """Run a Faust worker in this process until it is stopped (SIGINT/SIGTERM)."""
    log_level_of(settings)  # a bad level or format fails here, before connecting anywhere
    argv = worker_argv(settings, extra_argv)
    qa = create_app(settings)
    qa.app.conf.logging_config = logging_config(settings)
    sys.argv = argv
    qa.app.main()
    return 0
