"""Child processes of the CLI (workers started by ``demo`` and ``bench``): start, scrape, stop."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novaquota.streams.settings import ensure_dir

__all__ = [
    "cpu_seconds",
    "events_processed",
    "free_port",
    "http_status",
    "rss_mb",
    "spawn",
    "stop",
    "wait_ready",
    "worker_env",
]


def spawn(
    module: str, argv: tuple[str, ...], env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """``python -m module argv...`` in its own session (so stop() reaches its children), with
    stdout and stderr appended to ``log_path``."""
    ensure_dir(log_path.parent)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *argv],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM to the process group, SIGKILL if it is still there after ``timeout``.

    The group is signalled even when the leader has already exited, so that no child it left
    behind survives."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.poll()
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class HarnessAuth:
    """Credentials of the workers a harness starts: a token file with one admin token, and
    the workers' internal secret."""

    tokens_file: Path
    admin_token: str
    internal_secret: str

    def env(self) -> dict[str, str]:
        return {
            "NOVAQUOTA_TOKENS_FILE": str(self.tokens_file),
            "NOVAQUOTA_INTERNAL_SECRET": self.internal_secret,
        }

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@functools.cache
def harness_auth() -> HarnessAuth:
    """One set per harness process, in a private temporary directory (made on first use)."""
    from novaquota.streams.tokens import create_token

    path = Path(tempfile.mkdtemp(prefix="novaquota-auth-")) / "tokens.json"
    return HarnessAuth(path, create_token(path, "harness", "admin"), secrets.token_urlsafe(24))


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, JSON body) of a GET as the harness's admin; raises OSError when nothing
    answers or the status is an error."""
    req = urllib.request.Request(url, headers=harness_auth().headers())
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return int(resp.status), json.loads(resp.read())


def worker_env(
    *,
    bootstrap: str,
    topic_prefix: str,
    partitions: int,
    app_id: str,
    web_port: int,
    data_dir: Path,
    log_level: str = "WARNING",
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a worker process with its own port, data dir and consumer group,
    and the harness's credentials."""
    return {
        **(os.environ if base is None else base),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "NOVAQUOTA_TOPIC_PREFIX": topic_prefix,
        "NOVAQUOTA_PARTITIONS": str(partitions),
        "NOVAQUOTA_APP_ID": app_id,
        "NOVAQUOTA_WEB_PORT": str(web_port),
        "NOVAQUOTA_DATA_DIR": str(data_dir),
        "NOVAQUOTA_LOG_LEVEL": log_level,
        "PYTHONUNBUFFERED": "1",
        **harness_auth().env(),
    }


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], timeout: float, log_path: Path | None = None
) -> float:
    """Seconds until ``url``/readyz answers 200; raises RuntimeError if the process exits or
    the time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"process exited with {proc.returncode}:\n{tail}")
        if http_status(url + "/readyz") == 200:
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s (log: {log_path})")


def events_processed(url: str, timeout: float = 5.0) -> float:
    """The sum of ``quota_events_processed_total`` on a worker's /metrics (raises OSError)."""
    with urllib.request.urlopen(url + "/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("quota_events_processed_total{")
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MiB, or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
