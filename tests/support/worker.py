"""Run real ``novaquota worker`` processes for integration tests."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novaquota.ops.processes import HarnessAuth
from novaquota.streams.tokens import create_token

__all__ = [
    "Credentials",
    "PolicyProcess",
    "ProjectionProcess",
    "WorkerProcess",
    "free_port",
    "provision",
]


@dataclass(frozen=True)
class Credentials(HarnessAuth):
    """A test deployment's token file, its admin token and the workers' internal secret (the
    bench harness's ``HarnessAuth``), and more tokens made on demand."""

    def token(self, name: str, role: str, tenant: str | None = None) -> str:
        return create_token(self.tokens_file, name, role, tenant)


def provision(directory: Path) -> Credentials:
    """The credentials kept in ``directory`` (made on first use): every worker of a test
    shares them, as the workers of one deployment share a token file."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens_file = directory / "tokens.json"
    saved = directory / "credentials.json"
    if saved.exists():
        raw = json.loads(saved.read_text())
        return Credentials(tokens_file, raw["admin_token"], raw["internal_secret"])
    creds = Credentials(
        tokens_file, create_token(tokens_file, "test-admin", "admin"), secrets.token_urlsafe(24)
    )
    body = {"admin_token": creds.admin_token, "internal_secret": creds.internal_secret}
    saved.write_text(json.dumps(body))
    return creds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoggedProcess:
    """A ``novaquota`` process of a test, in a session of its own, writing to ``log_path``:
    how the test helpers start, read, kill and stop theirs."""

    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 60.0) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


class WorkerProcess(LoggedProcess):
    """One worker process with its own web port and data dir, sharing the app id of its group."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic_prefix: str,
        data_dir: Path,
        app_id: str | None = None,
        partitions: int = 4,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir / f"worker-{self.port}.log"
        self.credentials = provision(data_dir)
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "NOVAQUOTA_TOPIC_PREFIX": topic_prefix,
            "NOVAQUOTA_APP_ID": app_id or f"{topic_prefix}enforcement",
            "NOVAQUOTA_PARTITIONS": str(partitions),
            "NOVAQUOTA_WEB_PORT": str(self.port),
            "NOVAQUOTA_DATA_DIR": str(data_dir / f"state-{self.port}"),
            "NOVAQUOTA_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **self.credentials.env(),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True, timeout: float = 120.0) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.spawn([sys.executable, "-m", "novaquota.ops.cli", "worker"], self.env)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """GET as the test deployment's admin."""
        return self.request("GET", path, token=self.credentials.admin_token, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, Any]:
        """(status, JSON body or text) of one request, with ``token`` as bearer if given."""
        hdrs = {"content-type": "application/json", **(headers or {})}
        if token is not None:
            hdrs["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            body = err.read()
            try:
                return err.code, json.loads(body or b"null")
            except ValueError:
                return err.code, body.decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                status, _ = self.get("/readyz", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.tail()}")


class ProjectionProcess(LoggedProcess):
    """One ``novaquota projections run`` process reading a test deployment's topics, with the
    deployment's credentials (its HTTP API authenticates like the enforcement workers')."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic_prefix: str,
        data_dir: Path,
        credentials: Credentials,
        partitions: int = 4,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir / "projections"
        self.log_path = data_dir / "projections.log"
        self.env = {
            **os.environ,
            **credentials.env(),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "NOVAQUOTA_TOPIC_PREFIX": topic_prefix,
            "NOVAQUOTA_APP_ID": f"{topic_prefix}enforcement",
            "NOVAQUOTA_PARTITIONS": str(partitions),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ProjectionProcess:
        argv = [
            sys.executable,
            "-m",
            "novaquota.ops.cli",
            "projections",
            "run",
            "--port",
            str(self.port),
        ]
        argv += ["--data-dir", str(self.data_dir), "--no-emit"]
        self.spawn(argv, self.env)
        return self

    def ready(self) -> bool:
        """``/readyz`` answers 200: caught up with the log."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError):
            return False


class PolicyProcess(LoggedProcess):
    """One ``novaquota policy run`` (or ``rebuild --keep-running``) process of a test
    deployment, with its credentials; its state directory outlives the process, so a second
    one started on it is a restart."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic_prefix: str,
        data_dir: Path,
        credentials: Credentials,
        partitions: int = 4,
    ) -> None:
        self.port = free_port()
        self.credentials = credentials
        self.state_dir = data_dir / "policy"
        self.log_path = data_dir / "policy.log"
        self.env = {
            **os.environ,
            **credentials.env(),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "NOVAQUOTA_TOPIC_PREFIX": topic_prefix,
            "NOVAQUOTA_APP_ID": f"{topic_prefix}enforcement",
            "NOVAQUOTA_PARTITIONS": str(partitions),
            "PYTHONUNBUFFERED": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, rebuild: bool = False) -> PolicyProcess:
        action = ["rebuild", "--keep-running"] if rebuild else ["run"]
        argv = [
            sys.executable,
            "-m",
            "novaquota.ops.cli",
            "policy",
            *action,
            "--port",
            str(self.port),
        ]
        argv += ["--data-dir", str(self.state_dir)]
        self.spawn(argv, self.env)
        return self

    def get(self, path: str) -> tuple[int, Any]:
        """GET as the deployment's admin; (0, None) while nothing answers."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            headers={"authorization": f"Bearer {self.credentials.admin_token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, None
        except (urllib.error.URLError, OSError):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"policy worker exited:\n{self.tail()}") from None
            return 0, None
