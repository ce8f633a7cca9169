"""Run the enforcement worker in this process: ``run_worker(settings)`` (``novaquota worker``).

Logging: the Faust worker replaces the root logger's handlers when it starts; it is handed our
``dictConfig`` (``streams.logs.logging_config``) so that every line, Faust's and aiokafka's
included, comes out in the configured format (``NOVAQUOTA_LOG_FORMAT``, JSON by default) at
``NOVAQUOTA_LOG_LEVEL``. With JSON logs the worker's startup banner is left out, so that
standard output stays one JSON object per line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

from novaquota.streams.app import create_app
from novaquota.streams.logs import log_format_of, log_level_of, logging_config
from novaquota.streams.settings import Settings, ensure_dir

__all__ = ["FAUST_LOG_LEVELS", "limit_malloc_arenas", "run_worker", "worker_argv"]

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number


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


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``) before the worker's threads start.

    glibc gives threads arenas of their own, up to eight per core, and memory freed in one is
    not reused by another: RocksDB's and Faust's threads grew a loaded worker by ~120 MB of
    such arenas. Returns False where there is no glibc (then nothing changes)."""
    if arenas <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def run_worker(settings: Settings, extra_argv: list[str] | None = None) -> int:
    """Run a Faust worker in this process until it is stopped (SIGINT/SIGTERM)."""
    log_level_of(settings)  # a bad level or format fails here, before connecting anywhere
    if settings.malloc_arenas and not limit_malloc_arenas(settings.malloc_arenas):
        log.info("malloc arenas not capped: no glibc mallopt here")
    argv = worker_argv(settings, extra_argv)
    ensure_dir(settings.data_dir)  # Faust makes only the last component (./var/worker)
    qa = create_app(settings)
    qa.app.conf.logging_config = logging_config(settings)
    sys.argv = argv
    qa.app.main()
    return 0
