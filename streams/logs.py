"""Structured logs: one JSON object per line (``NOVAQUOTA_LOG_FORMAT=json``, the default) or
plain text (``text``), at ``NOVAQUOTA_LOG_LEVEL``.

Anything passed as ``extra={...}`` on a log call (``event_id``, ``tenant_id``, ...) becomes a
field of its own, so log pipelines can search by event id without parsing messages.

``configure_logging(settings)`` sets up the root logger of any process (projections, CLI);
``logging_config(settings)`` is the same as a ``logging.config.dictConfig`` mapping, which the
Faust worker applies when it starts (it replaces the root handlers at that point).
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
import time
from typing import IO, Any, Literal

import orjson

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "log_format_of",
    "log_level_of",
    "logging_config",
]

LOG_FORMATS = ("json", "text")
LogFormat = Literal["json", "text"]

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
# What the JSON object always starts with (a later ``extra`` cannot shadow these).
_RESERVED = frozenset({"ts", "level", "logger", "message", "exc_info", "stack_info"})


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD and k not in _RESERVED and not k.startswith("_")
    }


def _iso(created: float) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-28T14:05:09.123Z``."""
    secs = int(created)
    millis = int((created - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the record's
    extras, and ``exc_info`` / ``stack_info`` as text when present."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update(_extras(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            body["exc_info"] = record.exc_text
        if record.stack_info:
            body["stack_info"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(body, default=_jsonable).decode()
        except TypeError:  # e.g. an int beyond 64 bits, or non-str dict keys
            return orjson.dumps({k: _safe(v) for k, v in body.items()}).decode()


def _safe(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    return _jsonable(value)


class TextFormatter(logging.Formatter):
    """``2026-11-28T14:05:09.123Z WARNING novaquota.streams.agents: message event_id=...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in extras.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _text(value: Any) -> str:
    s = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return orjson.dumps(s).decode() if (not s or any(c.isspace() or c == '"' for c in s)) else s


def log_format_of(settings: Any) -> LogFormat:
    """``settings.log_format`` or, for settings without that field, ``NOVAQUOTA_LOG_FORMAT``;
    default ``json``. Raises ``ValueError`` for anything but json/text."""
    value = getattr(settings, "log_format", None) or os.environ.get("NOVAQUOTA_LOG_FORMAT")
    fmt = str(value or "json").strip().lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {value!r}")
    return "json" if fmt == "json" else "text"


def log_level_of(settings: Any) -> int:
    """The numeric level of ``settings.log_level`` (a name such as INFO, or a number)."""
    value = str(getattr(settings, "log_level", None) or "INFO").strip().upper()
    if value.isdigit():
        return int(value)
    level = logging.getLevelName("WARNING" if value == "WARN" else value)
    if not isinstance(level, int):
        raise ValueError(
            f"log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not {value!r}"
        )
    return level


def logging_config(settings: Any, stream: str = "ext://sys.stdout") -> dict[str, Any]:
    """A ``dictConfig`` mapping: one stream handler on the root logger with our formatter."""
    fmt = log_format_of(settings)
    level = log_level_of(settings)
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,  # module loggers exist before the worker starts
        "formatters": {"novaquota": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "novaquota",
                "stream": stream,
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def configure_logging(settings: Any, stream: IO[str] | None = None) -> None:
    """Replace the root logger's handlers with one that writes to ``stream`` (stderr by
    default, so that a CLI's stdout stays its output) in the configured format and level."""
    config = logging_config(settings)
    config["handlers"]["default"]["stream"] = stream if stream is not None else sys.stderr
    logging.config.dictConfig(config)
