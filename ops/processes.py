"""Child processes of the CLI (workers started by ``demo`` and ``bench``): start, scrape, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

__all__ = ["events_processed", "spawn", "stop"]


def spawn(
    module: str, argv: tuple[str, ...], env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """``python -m module argv...`` in its own session (so stop() reaches its children), with
    stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM to the process group, SIGKILL if it is still there after ``timeout``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def events_processed(url: str, timeout: float = 5.0) -> float:
    """The sum of ``quota_events_processed_total`` on a worker's /metrics (raises OSError)."""
    with urllib.request.urlopen(url + "/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("quota_events_processed_total{")
    )
