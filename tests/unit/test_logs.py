"""Structured logs: JSON lines with extras as fields, text alternative, level and format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from decimal import Decimal

import pytest

from novaquota.streams.logs import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    log_format_of,
    log_level_of,
    logging_config,
)
from novaquota.streams.runner import worker_argv
from novaquota.streams.settings import Settings


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("novaquota.streams.agents")
    rec = logger.makeRecord(
        "novaquota.streams.agents", logging.WARNING, __file__, 1, msg, args, None, extra=extra
    )
    rec.created = 1_795_870_000.25  # 2026-11-28T12:46:40.250Z
    return rec


def test_json_line_carries_extras_as_fields() -> None:
    line = JsonFormatter().format(
        _record("dead-lettered %s: %s", "t[0]@5", "malformed_json", event_id="ev-1", tenant_id="a")
    )
    body = json.loads(line)
    assert body == {
        "ts": "2026-11-28T12:46:40.250Z",
        "level": "WARNING",
        "logger": "novaquota.streams.agents",
        "message": "dead-lettered t[0]@5: malformed_json",
        "event_id": "ev-1",
        "tenant_id": "a",
    }
    assert "\n" not in line


def test_json_line_renders_odd_values_and_exceptions() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = logging.getLogger("x").makeRecord(
            "x",
            logging.ERROR,
            __file__,
            1,
            "failed",
            (),
            __import__("sys").exc_info(),
            extra={"amount": Decimal("1.5"), "raw": b"\xffkey", "huge": 2**80, "n": 3},
        )
    body = json.loads(JsonFormatter().format(rec))
    assert body["amount"] == "1.5"
    assert body["raw"] == "\ufffdkey"
    assert body["huge"] == str(2**80)
    assert body["n"] == 3
    assert body["exc_info"].startswith("Traceback") and "RuntimeError: boom" in body["exc_info"]


def test_extras_cannot_shadow_the_base_fields() -> None:
    rec = _record("hello")
    rec.__dict__["level"] = "fake"
    body = json.loads(JsonFormatter().format(rec))
    assert body["level"] == "WARNING"


def test_text_line_appends_extras() -> None:
    line = TextFormatter().format(_record("dead-lettered", event_id="ev 1", tenant_id="acme"))
    assert line == (
        '2026-11-28T12:46:40.250Z WARNING streams.agents: dead-lettered event_id="ev 1" '
        "tenant_id=acme"
    )


def test_format_and_level_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOVAQUOTA_LOG_FORMAT", raising=False)
    assert log_format_of(Settings()) == "json"
    monkeypatch.setenv("NOVAQUOTA_LOG_FORMAT", "TEXT")
    assert log_format_of(Settings()) == "text"
    monkeypatch.setenv("NOVAQUOTA_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log format must be one of json, text"):
        log_format_of(Settings())
    monkeypatch.delenv("NOVAQUOTA_LOG_FORMAT")
    assert log_level_of(Settings(log_level="debug")) == logging.DEBUG
    assert log_level_of(Settings(log_level="WARN")) == logging.WARNING
    with pytest.raises(ValueError, match="log level must be one of"):
        log_level_of(Settings(log_level="loud"))


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_configure_logging_writes_json_lines_at_the_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOVAQUOTA_LOG_FORMAT", "json")
    early = logging.getLogger("novaquota.test.early")  # exists before configuration
    out = io.StringIO()
    configure_logging(Settings(log_level="WARNING"), stream=out)
    early.info("not shown")
    early.warning("shown", extra={"event_id": "e-9"})
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["event_id"] == "e-9"
    assert json.loads(line)["logger"] == "novaquota.test.early"


def test_worker_logging_config_is_a_valid_dict_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVAQUOTA_LOG_FORMAT", "text")
    cfg = logging_config(Settings(log_level="ERROR"))
    assert cfg["disable_existing_loggers"] is False
    assert cfg["root"]["level"] == logging.ERROR
    assert cfg["formatters"]["novaquota"]["()"] == "novaquota.streams.logs.TextFormatter"


def test_worker_argv_leaves_out_the_banner_for_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVAQUOTA_LOG_FORMAT", "json")
    argv = worker_argv(Settings(web_port=7000, log_level="DEBUG"), ["--", "--debug"])
    assert argv[:3] == ["novaquota", "--quiet", "worker"]
    assert argv[argv.index("--loglevel") + 1] == "debug"
    assert argv[-1] == "--debug" and "--" not in argv
    monkeypatch.setenv("NOVAQUOTA_LOG_FORMAT", "text")
    assert "--quiet" not in worker_argv(Settings())
