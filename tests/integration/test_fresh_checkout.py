"""A fresh checkout: the installed ``novaquota`` console script, run from an empty directory with
no ``NOVAQUOTA_DATA_DIR``, creates the directories it needs (``./var/worker``,
``./var/projections``). (The README's commands are run as written by ``test_readme.py``.)

Each test has its own topic prefix, consumer group and web ports, so it can share the broker with
the rest of the suite; ``novaquota kafka stop`` is never run here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.worker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT = 180.0  # worker start-up on a shared 2-core machine
USAGE_TIMEOUT = 90.0  # published events -> figures on the HTTP API


def novaquota_script() -> Path:
    """The console script ``make install`` put next to this interpreter."""
    found = shutil.which("novaquota", path=str(VENV_BIN))
    assert found, f"no novaquota console script in {VENV_BIN} (run `make install`)"
    return Path(found)


def fresh_env(kafka_bootstrap: str, prefix: str) -> dict[str, str]:
    """The caller's environment as a user's shell would have it, with this test's own topics,
    group and ports, and without any data-directory setting."""
    env = dict(os.environ)
    for name in ("NOVAQUOTA_DATA_DIR", "NOVAQUOTA_PROJECTIONS_DATA_DIR"):
        env.pop(name, None)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "NOVAQUOTA_TOPIC_PREFIX": prefix,
            "NOVAQUOTA_APP_ID": f"{prefix}enforcement",
            "NOVAQUOTA_PARTITIONS": "2",
            "NOVAQUOTA_WEB_PORT": str(free_port()),
            "NOVAQUOTA_PROJECTIONS_WEB_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def http_get(url: str, timeout: float = 3.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError:
        return 0, None
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Background:
    """A command started in its own session (so that stopping reaches its children)."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def alive(self) -> None:
        rc = self.proc.poll()
        assert rc is None, f"{self.proc.args!r} exited with {rc}:\n{tail(self.log)}"

    def wait_ready(self, url: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            if http_get(url, timeout=2.0)[0] == 200:
                return
            time.sleep(0.5)
        raise AssertionError(f"{url} not 200 within {timeout}s:\n{tail(self.log)}")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture
def background() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for b in started:
        b.stop()


def run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120.0) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{argv} exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def empty_checkout(tmp_path: Path) -> Path:
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    assert not any(cwd.iterdir())
    return cwd


# --- the installed commands create their directories ---------------------------------------


def test_worker_creates_its_data_dir_in_an_empty_directory(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, background: list[Background]
) -> None:
    novaquota = novaquota_script()
    cwd = empty_checkout(tmp_path)
    env = fresh_env(kafka_bootstrap, topic_prefix)
    run([str(novaquota), "topics", "create"], cwd=cwd, env=env)

    worker = Background([str(novaquota), "worker"], cwd=cwd, env=env, log=tmp_path / "worker.log")
    background.append(worker)
    worker.wait_ready(f"http://127.0.0.1:{env['NOVAQUOTA_WEB_PORT']}/readyz")
    worker.stop()

    data_dir = cwd / "var" / "worker"
    assert data_dir.is_dir(), f"no {data_dir}:\n{tail(worker.log)}"
    assert any(data_dir.iterdir()), "the worker kept no state in ./var/worker"


def test_projections_run_creates_its_data_dir_in_an_empty_directory(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, background: list[Background]
) -> None:
    novaquota = novaquota_script()
    cwd = empty_checkout(tmp_path)
    env = fresh_env(kafka_bootstrap, topic_prefix)
    run([str(novaquota), "topics", "create"], cwd=cwd, env=env)

    projections = Background(
        [str(novaquota), "projections", "run"],
        cwd=cwd,
        env=env,
        log=tmp_path / "projections.log",
    )
    background.append(projections)
    projections.wait_ready(f"http://127.0.0.1:{env['NOVAQUOTA_PROJECTIONS_WEB_PORT']}/readyz")
    projections.stop()
    assert projections.proc.returncode == 0, tail(projections.log)

    views = cwd / "var" / "projections" / "views"
    assert views.is_dir(), f"no {views}:\n{tail(projections.log)}"
    assert any(views.iterdir()), "the projection worker kept no view store"
