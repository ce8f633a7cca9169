"""The command line's conventions (contract section 7) without a broker: help text on every
option and sub-command, ``--version``, the exit-code table, ``--output json``.

Exit code 3 is produced for real by pointing ``KAFKA_BOOTSTRAP_SERVERS`` at a closed port; each
command must end on its own (the subprocess timeout only guards against a hang). The
broker-backed halves (exit 1 from ``publish``, JSON of the reports, progress bars) are in
tests/integration/test_cli_conventions.py.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from novaquota.ops import cli
from novaquota.ops.console import package_version
from novaquota.ops.exitcodes import ExitCode, code_for
from novaquota.projections import cli as projections_cli

ROOT = Path(__file__).resolve().parents[2]
CLOSED = "localhost:1"  # nothing listens on port 1: connections are refused at once


def run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "novaquota.ops.cli", *argv],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


# --- help ---------------------------------------------------------------------------------------


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree, the delegated commands' own parsers included."""
    yield "novaquota", cli.build_parser()
    for name, parser in cli.delegated_parsers().items():
        yield f"novaquota {name}", parser
    for name, parser in projections_cli.delegated_parsers().items():
        yield f"novaquota projections {name}", parser


def _walk(where: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, str | None]]:
    """(what, help) of every option, positional and sub-command below ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{where} {name} (sub-command)", helps.get(name)
                yield from _walk(f"{where} {name}", sub)
        else:
            label = "/".join(action.option_strings) or action.dest
            yield f"{where} {label}", action.help


def test_every_option_and_sub_command_has_help() -> None:
    seen = [item for where, p in _parsers() for item in _walk(where, p)]
    missing = [what for what, help_ in seen if not help_ or help_ == argparse.SUPPRESS]
    assert missing == []
    names = {what for what, _ in seen}
    # the walk reached the delegated parsers, not only the placeholders of the top parser
    assert "novaquota replay --until" in names
    assert "novaquota projections report --start" in names
    assert "novaquota projections backtest --seeds" in names
    assert "novaquota tokens create --role" in names
    assert "novaquota demo --tenants" in names


def test_every_delegated_command_is_walked() -> None:
    assert set(cli.delegated_parsers()) == set(cli.DELEGATED)
    assert set(projections_cli.delegated_parsers()) == set(projections_cli.DELEGATED)


# --- --version ----------------------------------------------------------------------------------


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"novaquota {package_version()}\n"
    assert package_version() not in ("", "unknown")


# --- the table ----------------------------------------------------------------------------------


def test_the_table() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "REJECTED": 1,
        "USAGE": 2,
        "KAFKA_UNREACHABLE": 3,
        "TIMEOUT": 4,
    }


def test_exceptions_map_to_the_table() -> None:
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    from novaquota.ops.kafka_local import KafkaLocalError, KafkaStartTimeout
    from novaquota.ops.topics import TopicMismatchError, TopicsNotListedError
    from novaquota.projections.log import LogReadError, LogReadTimeout

    assert code_for(KafkaConnectionError("x")) == ExitCode.KAFKA_UNREACHABLE
    assert code_for(TopicMismatchError("x")) == ExitCode.USAGE
    assert code_for(LogReadError("missing topic")) == ExitCode.USAGE
    for timeout in (
        KafkaStartTimeout("x"),
        TopicsNotListedError("x"),
        LogReadTimeout("x"),
        KafkaTimeoutError(),
        TimeoutError(),
    ):
        assert code_for(timeout) == ExitCode.TIMEOUT, timeout
    assert code_for(KafkaLocalError("no java")) == ExitCode.REJECTED
    assert code_for(PermissionError(13, "Permission denied", "/x")) == ExitCode.USAGE
    assert code_for(ZeroDivisionError()) is None  # a bug keeps its traceback
    assert code_for(ConnectionResetError()) is None


# --- exit 2: usage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["topics", "describe", "--bogus"],
        ["nosuchcommand"],
        ["publish", "/nonexistent/events.jsonl"],
        ["replay", "--until", "2026-11-01T00:00:00Z", "--bogus"],
        ["projections", "report", "--start", "yesterday", "--end", "2026-11-01T00:00:00Z"],
        ["projections", "status", "--bogus"],
        ["projections", "backtest", "--seeds", "0"],
        ["simulate", "--tenants", "0"],
        ["bench", "--only", "nosuchsection"],
        ["demo", "--rate", "-1"],
        ["tokens", "list", "--output", "yaml"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], tmp_path: Path) -> None:
    # a closed port: a command that reached for the broker before checking its input would
    # exit 3, not 2
    proc = run(*argv, env={"KAFKA_BOOTSTRAP_SERVERS": CLOSED, "NOVAQUOTA_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip()


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    proc = run("publish", str(tmp_path / "missing.jsonl"), env={"KAFKA_BOOTSTRAP_SERVERS": CLOSED})
    assert proc.returncode == 2
    assert f"cannot read {tmp_path / 'missing.jsonl'}" in proc.stderr


def test_bad_settings_are_usage_errors() -> None:
    proc = run("topics", "describe", env={"NOVAQUOTA_PARTITIONS": "many"})
    assert proc.returncode == 2
    assert "bad settings" in proc.stderr and "partitions" in proc.stderr


# --- exit 3: Kafka cannot be reached -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["topics", "describe"],
        ["topics", "create"],
        ["publish", "{events}"],
        ["replay", "--until", "2026-11-01T00:00:00Z"],
        [
            "projections",
            "report",
            "--start",
            "2026-11-01T00:00:00Z",
            "--end",
            "2026-11-02T00:00:00Z",
        ],
        ["projections", "rebuild", "--data-dir", "{tmp}/views", "--port", "0"],
        ["simulate", "--duration", "5"],
        ["worker"],
        ["bench", "--only", "throughput"],
        ["kafka", "status"],
    ],
)
def test_an_unreachable_broker_exits_3(argv: list[str], tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("{}\n")
    argv = [a.format(events=events, tmp=tmp_path) for a in argv]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": CLOSED,
        "NOVAQUOTA_DATA_DIR": str(tmp_path / "worker"),
        "NOVAQUOTA_KAFKA_CONNECT_TIMEOUT_SECONDS": "5",
        "NOVAQUOTA_TOKENS_FILE": str(tmp_path / "tokens.json"),
        "NOVAQUOTA_INTERNAL_SECRET": "s" * 24,
    }
    proc = run(*argv, env=env, timeout=90)
    assert proc.returncode == 3, proc.stderr[-3000:]
    if argv[0] != "kafka":
        assert f"cannot reach Kafka at {CLOSED}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_kafka_status_of_an_unreachable_broker_is_json_on_stdout() -> None:
    proc = run("kafka", "status", "--output", "json", env={"KAFKA_BOOTSTRAP_SERVERS": CLOSED})
    assert proc.returncode == 3
    status = json.loads(proc.stdout)
    assert status["reachable"] is False and status["bootstrap"] == CLOSED


# --- exit 4: timeout ----------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield srv.getsockname()[1]


def test_a_worker_that_does_not_answer_in_time_exits_4(silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}"
    proc = run("projections", "status", "--url", url, "--timeout", "0.5")
    assert proc.returncode == 4, proc.stderr
    assert "did not answer within 0.5 s" in proc.stderr
    assert proc.stdout == ""


def test_no_worker_at_all_exits_1() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run("projections", "status", "--url", f"http://127.0.0.1:{port}")
    assert proc.returncode == 1, proc.stderr
    assert "no worker answers" in proc.stderr


# --- exit 1 and --output json without a broker ----------------------------------------------------


def test_tokens_output_json(tmp_path: Path) -> None:
    env = {"NOVAQUOTA_TOKENS_FILE": str(tmp_path / "tokens.json")}
    proc = run("tokens", "create", "--name", "ci", "--role", "admin", "--output", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    created = json.loads(proc.stdout)
    assert created["name"] == "ci" and created["token"].startswith("nq_")
    text = run("tokens", "create", "--name", "svc", "--role", "viewer", "--tenant", "a", env=env)
    assert text.returncode == 0 and text.stdout.strip().startswith("nq_")
    assert len(text.stdout.strip().splitlines()) == 1  # the secret alone: $(...) works
    listed = run("tokens", "list", "--output", "json", env=env)
    assert [t["name"] for t in json.loads(listed.stdout)] == ["ci", "svc"]
    assert "nq_" not in listed.stdout
    table = run("tokens", "list", env=env)
    assert table.stdout.splitlines()[0].split() == ["name", "role", "tenant", "id", "created_at"]
    again = run("tokens", "create", "--name", "ci", "--role", "admin", env=env)
    assert again.returncode == 1 and "exists" in again.stderr  # rejected input
    gone = run("tokens", "revoke", "nosuch", "--output", "json", env=env)
    assert gone.returncode == 1 and gone.stdout == ""
    revoked = run("tokens", "revoke", "ci", "--output", "json", env=env)
    assert revoked.returncode == 0 and json.loads(revoked.stdout) == {"revoked": "ci"}


def test_schemas_simulate_and_backtest_output_json(tmp_path: Path) -> None:
    proc = run("schemas", "export", str(tmp_path / "schemas"), "--output", "json")
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout)["files"]
    assert files and all(Path(f).is_file() for f in files)

    out = tmp_path / "sim.jsonl"
    argv = ["simulate", "--tenants", "3", "--rate", "5", "--duration", "30", "--out", str(out)]
    proc = run(*argv, "--output", "json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["wrote_to"] == str(out)
    assert summary["commands"] + summary["events"] == len(out.read_text().splitlines())
    piped = run(*argv[:-1], "-", "--output", "json")
    assert piped.returncode == 2  # stdout is the events then

    argv = ["projections", "backtest", "--seeds", "1", "--days", "15", "--horizon", "12"]
    proc = run(*argv, "--origins", "1", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    assert "model_wins" in json.loads(proc.stdout)
    text = run(*argv, "--origins", "1")
    assert text.returncode == 0 and "MASE ratio" in text.stdout


def test_an_out_file_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = ["simulate", "--tenants", "2", "--duration", "5", "--out", str(blocker / "x.jsonl")]
    proc = run(*argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "a-file" in proc.stderr


def test_schemas_into_a_file_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run("schemas", "export", str(blocker / "sub"))
    assert proc.returncode == 2 and "cannot write" in proc.stderr


def test_timeouts_raised_inside_commands_exit_4(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other timeouts of the table, raised where the commands raise them."""
    from novaquota.ops import kafka_local
    from novaquota.projections import replay
    from novaquota.projections.log import LogReadTimeout

    def slow_start(settings: object, *, timeout: float) -> dict[str, object]:
        raise kafka_local.KafkaStartTimeout(f"the Kafka broker did not answer in {timeout:g} s")

    monkeypatch.setattr(kafka_local, "start", slow_start)
    assert cli.main(["kafka", "start", "--timeout", "1"]) == ExitCode.TIMEOUT
    assert "did not answer in 1 s" in capsys.readouterr().err

    def stalled(args: argparse.Namespace) -> int:
        raise LogReadTimeout("no records for 30s while reading t[0]")

    assert replay.run_cli(["--until", "2026-11-01T00:00:00Z"], replay.build_parser(), stalled) == 4
    assert "no records for 30s" in capsys.readouterr().err


def test_bench_output_json_is_the_report_alone(tmp_path: Path) -> None:
    argv = ["bench", "--only", "core", "--events", "2000", "--tenants", "50"]
    proc = run(*argv, "--output", "json", "--out", str(tmp_path / "bench.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["core"]["events_per_second"] > 0
    assert report == json.loads((tmp_path / "bench.json").read_text())
    text = run(*argv)
    assert text.returncode == 0 and text.stdout.split()[:4] == ["figure", "value", "target", "met"]
