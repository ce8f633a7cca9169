"""The command line's conventions against the real broker (contract section 7): exit 1 for a
rejected line, ``--output json`` of every reporting command (standard output holds one JSON
document and nothing else), progress bars on a terminal and never on a pipe.

The halves that need no broker (help, ``--version``, exit codes 2, 3 and 4) are in
tests/unit/test_cli_conventions.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Stack
from tests.support.worker import Credentials, ProjectionProcess, provision

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNTIL = "2030-01-01T00:00:00Z"
BAR = "━"  # rich's bar segment


class Deployment:
    def __init__(self, stack: Stack, creds: Credentials) -> None:
        self.stack = stack
        self.creds = creds
        self.env = {
            **os.environ,
            **creds.env(),
            "PYTHONPATH": str(ROOT),
            "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
            "NOVAQUOTA_TOPIC_PREFIX": stack.prefix,
            "NOVAQUOTA_APP_ID": f"{stack.prefix}enforcement",
            "NOVAQUOTA_PARTITIONS": str(stack.partitions),
            "NOVAQUOTA_TOKEN": creds.admin_token,
            "TERM": "xterm-256color",
        }

    def run(self, *argv: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "novaquota.ops.cli", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.stack.tmp,
        )

    def json(self, *argv: str, code: int = 0) -> object:
        """Run with ``--output json``: exit ``code`` and standard output one JSON document."""
        proc = self.run(*argv, "--output", "json")
        assert proc.returncode == code, (argv, proc.stderr[-3000:])
        return json.loads(proc.stdout)

    def run_on_a_terminal(self, *argv: str, timeout: float = 180.0) -> tuple[int, str, str]:
        """(exit code, stdout, what reached the terminal) with standard error on a
        pseudo-terminal and standard output on a pipe."""
        master, slave = os.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "novaquota.ops.cli", *argv],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=slave,
            cwd=self.stack.tmp,
        )
        os.close(slave)
        seen: list[bytes] = []

        def drain() -> None:  # a full terminal buffer would block the command
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    return
                if not chunk:
                    return
                seen.append(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            out, _ = proc.communicate(timeout=timeout)
            reader.join(timeout=30)
        finally:
            os.close(master)
        return proc.returncode, out.decode(), b"".join(seen).decode(errors="replace")


@pytest.fixture
def dep(stack_factory: Callable[..., Stack], tmp_path: Path) -> Deployment:
    return Deployment(stack_factory(2), provision(tmp_path / "auth"))


def _events(dep: Deployment, name: str = "events.jsonl", *, bad: bool = True) -> Path:
    """A small simulated workload (setup commands and resource events), with a bad last line."""
    path = dep.stack.tmp / name
    argv = ["simulate", "--tenants", "3", "--rate", "20", "--duration", "60", "--out", str(path)]
    proc = dep.run(*argv)
    assert proc.returncode == 0, proc.stderr
    if bad:
        with path.open("a") as f:
            f.write('{"specversion": "1.0", "type": "vm.created"\n')
    return path


def test_publish_with_one_bad_line_exits_1_and_reports_it_as_json(dep: Deployment) -> None:
    path = _events(dep)
    lines = path.read_text().splitlines()
    summary = dep.json("publish", str(path), code=1)
    assert isinstance(summary, dict)
    assert summary["published"] == len(lines) - 1
    assert summary["rejected"] == 1
    assert summary["resource_events"] + summary["commands"] == summary["published"]
    [error] = summary["errors"]
    assert error["line"] == len(lines) and error["reason"] == "malformed_json"

    good = _events(dep, "good.jsonl", bad=False)
    assert dep.json("publish", str(good), code=0)["rejected"] == 0  # type: ignore[index]
    text = dep.run("publish", str(good))
    assert text.returncode == 0
    assert text.stdout.startswith(f"published {len(good.read_text().splitlines())} message(s)")


def test_every_reporting_command_prints_json(dep: Deployment) -> None:
    path = _events(dep, bad=False)
    published = dep.json("publish", str(path))
    assert isinstance(published, dict) and published["rejected"] == 0

    created = dep.json("topics", "create")
    assert isinstance(created, dict) and set(created.values()) == {"exists"}
    described = dep.json("topics", "describe")
    assert isinstance(described, list)
    assert all(t["exists"] and t["partitions"] == 2 for t in described)

    status = dep.json("kafka", "status")
    assert isinstance(status, dict) and status["reachable"] is True

    # replay: without --out the report itself is the JSON; with --out, a summary of it
    report = dep.json("replay", "--until", UNTIL)
    assert isinstance(report, dict) and report["report"] == "novaquota.replay"
    read = sum(p["records"] for p in report["log"]["partitions"])
    assert read == published["published"]
    out = dep.stack.tmp / "replay.html"
    summary = dep.json("replay", "--until", UNTIL, "--format", "html", "--out", str(out))
    assert summary == {
        "as_of": "2030-01-01T00:00:00.000000Z",
        "format": "html",
        "out": str(out),
        "partitions": len(report["log"]["partitions"]),
        "records_read": read,
    }
    assert out.read_text().lstrip().lower().startswith("<!doctype html")
    mixed = dep.run("replay", "--until", UNTIL, "--format", "csv", "--output", "json")
    assert mixed.returncode == 2 and mixed.stdout == ""

    period = ["--start", "2026-11-01T00:00:00Z", "--end", UNTIL]
    compliance = dep.json("projections", "report", *period)
    assert isinstance(compliance, dict) and compliance["report"] == "novaquota.compliance"
    out = dep.stack.tmp / "report.csv"
    summary = dep.json("projections", "report", *period, "--format", "csv", "--out", str(out))
    assert isinstance(summary, dict) and summary["records_read"] == read and out.exists()

    rebuilt = dep.json(
        "projections", "rebuild", "--data-dir", str(dep.stack.tmp / "views"), "--port", "0"
    )
    assert isinstance(rebuilt, dict) and rebuilt["ready"] is True
    assert rebuilt["folded"] > 0

    simulated = dep.json(
        "simulate", "--tenants", "2", "--rate", "5", "--duration", "10", "--speed", "0"
    )
    assert isinstance(simulated, dict) and simulated["events"] > 0


def test_projections_status_prints_json(dep: Deployment) -> None:
    process = ProjectionProcess(
        bootstrap=dep.stack.bootstrap,
        topic_prefix=dep.stack.prefix,
        data_dir=dep.stack.tmp,
        credentials=dep.creds,
        partitions=dep.stack.partitions,
    ).start()
    try:
        assert dep.stack.wait_for(process.ready, timeout=120)
        status = dep.json("projections", "status", "--url", process.url)
        assert isinstance(status, dict) and status["ready"] is True
        text = dep.run("projections", "status", "--url", process.url)
        assert text.returncode == 0 and "ready:" in text.stdout
    finally:
        process.stop()


def test_progress_bars_on_a_terminal_only(dep: Deployment) -> None:
    path = _events(dep, bad=False)

    rc, out, terminal = dep.run_on_a_terminal("publish", str(path), "--output", "json")
    assert rc == 0, terminal
    assert "publish: " in terminal and " sent, 0 rejected" in terminal and BAR in terminal
    assert json.loads(out)["rejected"] == 0  # the bar never reaches standard output

    piped = dep.run("publish", str(path))
    assert piped.returncode == 0
    assert " sent, 0 rejected" not in piped.stderr and BAR not in piped.stderr

    rc, out, terminal = dep.run_on_a_terminal("publish", str(path), "--no-progress")
    assert rc == 0 and BAR not in terminal and out.startswith("published")

    rc, out, terminal = dep.run_on_a_terminal("replay", "--until", UNTIL)
    assert rc == 0, terminal
    assert "reading the log" in terminal and BAR in terminal
    assert json.loads(out)["report"] == "novaquota.replay"
    piped = dep.run("replay", "--until", UNTIL)
    assert piped.returncode == 0 and BAR not in piped.stderr

    rc, out, terminal = dep.run_on_a_terminal(
        "projections", "report", "--start", "2026-11-01T00:00:00Z", "--end", UNTIL, "-q"
    )
    assert rc == 0 and BAR not in terminal

    views = str(dep.stack.tmp / "views")
    rc, out, terminal = dep.run_on_a_terminal(
        "projections", "rebuild", "--data-dir", views, "--port", "0"
    )
    assert rc == 0, terminal
    assert "folding the log" in terminal and BAR in terminal
    assert "ready:" in out
