"""``novaquota demo`` end to end: it runs the worker and the simulated workload, prints where to
look, and stops everything, by ``--duration`` or by Ctrl-C, leaving no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.worker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def _ours(prefix: str) -> list[int]:
    """Live processes (not zombies) started with this demo's topic prefix in their environment."""
    needle = f"NOVAQUOTA_TOPIC_PREFIX={prefix}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if needle in env and state != "Z":
            pids.append(int(proc.name))
    return pids


def _start(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, *extra: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "NOVAQUOTA_TOPIC_PREFIX": prefix,
        "NOVAQUOTA_APP_ID": f"{prefix}demo",
        "NOVAQUOTA_PARTITIONS": "2",
        "NOVAQUOTA_WEB_PORT": str(free_port()),
        "NOVAQUOTA_DATA_DIR": str(tmp_path / "state"),
        "NOVAQUOTA_TOKENS_FILE": str(tmp_path / "tokens.json"),
        "NOVAQUOTA_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [
        sys.executable, "-m", "novaquota.ops.cli", "demo", "--rate", "40", "--tenants", "20",
        "--day-seconds", "30", "--projections-port", str(free_port()),
        "--log-dir", str(tmp_path / "logs"), *extra,
    ]  # fmt: skip
    out = open(tmp_path / "demo.out", "wb")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _output(tmp_path: Path) -> str:
    return (tmp_path / "demo.out").read_text(errors="replace")


def _wait_processed(proc: subprocess.Popen[bytes], tmp_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, _output(tmp_path)
        if any(
            int(n.replace(",", "")) > 0
            for n in re.findall(r"processed ([\d,]+)", _output(tmp_path))
        ):
            return
        time.sleep(1.0)
    raise AssertionError(f"the demo processed nothing within {timeout}s:\n{_output(tmp_path)}")


def _check_clean_exit(proc: subprocess.Popen[bytes], prefix: str, tmp_path: Path) -> str:
    try:
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = _output(tmp_path)
    assert rc == 0, out
    assert "demo stopped; nothing left running" in out
    for label in ("API:", "metrics:", "projections:", "dashboard:   http://127.0.0.1:"):
        assert label in out, out
    assert _ours(prefix) == [], f"left running: {_ours(prefix)}\n{out}"
    return out


def test_demo_runs_for_its_duration_and_stops_everything(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    proc = _start(kafka_bootstrap, topic_prefix, tmp_path, "--duration", "25")
    _wait_processed(proc, tmp_path, timeout=240)
    out = _check_clean_exit(proc, topic_prefix, tmp_path)
    assert "quotas applied for 20 tenants" in out


def test_demo_stops_everything_on_ctrl_c(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    proc = _start(kafka_bootstrap, topic_prefix, tmp_path)
    _wait_processed(proc, tmp_path, timeout=240)
    assert len(_ours(topic_prefix)) >= 2  # the demo and its worker at least
    proc.send_signal(signal.SIGINT)
    out = _check_clean_exit(proc, topic_prefix, tmp_path)
    assert "stopping ..." in out
