"""A fresh checkout: the installed ``novaquota`` console script, run from an empty directory with
no ``NOVAQUOTA_DATA_DIR``, creates the directories it needs (``./var/worker``,
``./var/projections``), and the README's "Using it" block works as written.

Each test has its own topic prefix, consumer group and web ports, so it can share the broker with
the rest of the suite; ``novaquota kafka stop`` is never run here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
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

from novaquota.ops import kafka_local
from novaquota.streams.settings import Settings
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


# --- the README's "Using it" block, as written -----------------------------------------------


def readme_using_it() -> list[str]:
    """The command lines of the first ```sh block under "## Using it" in README.md."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^## Using it\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, 'README.md has no "## Using it" section'
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, 'no ```sh block under "## Using it"'
    return [line for line in block.group(1).splitlines() if line.strip()]


def expected_web_usage(events_file: Path) -> dict[str, float]:
    """Usage of project ``web`` of tenant ``acme`` implied by the file, computed here from the
    contract's rule (the newest event of each instance decides what it holds; at equal times a
    release wins, then the larger (source, id)), not with the product's code."""
    holdings = {
        "vm": ("vm_id", lambda d: {"cpu": d["cpu"], "memory": d["memory"], "instances": 1}),
        "floating_ip": ("ip_id", lambda d: {"floating_ips": 1}),
        "load_balancer": ("lb_id", lambda d: {"load_balancers": 1}),
    }
    releases = {"deleted", "released"}
    newest: dict[tuple[str, str], tuple[tuple[Any, ...], dict[str, float]]] = {}
    for line in events_file.read_text().splitlines():
        ev = json.loads(line)
        data = ev["data"]
        if data.get("tenant_id") != "acme" or data.get("project_id") != "web":
            continue
        kind, _, action = ev["type"].rpartition(".")
        if kind in holdings:
            id_field, held = holdings[kind]
            instance = (kind, data[id_field])
            released = action in releases
            amounts = {} if released else held(data)
        elif ev["type"] == "usage.reported":
            instance = ("usage", data["resource_id"])
            released = bool(data.get("released"))
            amounts = {} if released else dict(data["resources"])
        else:
            continue
        rank = (ev["time"], released, ev["source"], ev["id"])  # times are all UTC 'Z' here
        if instance not in newest or rank > newest[instance][0]:
            newest[instance] = (rank, amounts)
    usage: dict[str, float] = {}
    for _, amounts in newest.values():
        for res, amount in amounts.items():
            usage[res] = usage.get(res, 0) + amount
    return {res: amount for res, amount in usage.items() if amount}


def expected_web_cpu_quota(events_file: Path) -> dict[str, Any]:
    quota: dict[str, Any] = {}
    for line in events_file.read_text().splitlines():
        ev = json.loads(line)
        d = ev["data"]
        if ev["type"] == "quota.set" and (d["level"], d["entity_id"], d["resource_type"]) == (
            "project",
            "web",
            "cpu",
        ):
            quota = d
    assert quota, "examples/events.jsonl no longer sets a cpu quota for project web"
    return quota


def usage_matches(
    body: Any, usage: dict[str, float], cpu_quota: dict[str, Any]
) -> tuple[bool, str]:
    if not isinstance(body, dict) or "resources" not in body:
        return False, f"not a utilization answer: {body!r}"
    rows = {row["resource_type"]: row for row in body["resources"]}
    got = {res: rows[res]["used"] if res in rows else None for res in usage}
    if got != usage:
        return False, f"used {got}, expected {usage}"
    cpu = rows["cpu"]
    limit = cpu_quota["limit"]
    want = {
        "limit": limit,
        "burst_limit": cpu_quota.get("burst_limit"),
        "utilization": round(usage["cpu"] * 100 / limit, 3),
    }
    if {k: cpu[k] for k in want} != want:
        return False, f"cpu row {cpu}, expected {want}"
    return True, ""


def test_readme_using_it_block_runs_as_written(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, background: list[Background]
) -> None:
    lines = readme_using_it()
    cwd = empty_checkout(tmp_path)
    shutil.copytree(REPO / "examples", cwd / "examples")
    env = fresh_env(kafka_bootstrap, topic_prefix)
    port = env["NOVAQUOTA_WEB_PORT"]
    events_file = cwd / "examples" / "events.jsonl"
    usage = expected_web_usage(events_file)
    cpu_quota = expected_web_cpu_quota(events_file)
    # what the example file implies, checked by reading it (guards the recomputation above)
    assert usage == {
        "cpu": 8,
        "memory": 16384,
        "instances": 3,
        "floating_ips": 1,
        "load_balancers": 1,
        "gpu": 1,
    }
    broker_before = kafka_local.status(Settings(bootstrap_servers=kafka_bootstrap))
    assert broker_before["reachable"], broker_before

    done: list[str] = []
    for line in lines:
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] == "source":
            # `source .venv/bin/activate`: the venv's bin first on PATH
            assert argv[1:] == [".venv/bin/activate"], line
            env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
            env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
            done.append("activate")
        elif argv[:3] == ["novaquota", "kafka", "stop"]:
            done.append("kafka stop (skipped: the suite shares the broker)")
        elif argv[:3] == ["novaquota", "kafka", "start"]:
            started = json.loads(run(argv, cwd=cwd, env=env, timeout=300))
            assert started["reachable"], started
            # it found the running broker and started nothing
            assert started.get("external") or started.get("pid") == broker_before.get("pid"), (
                started,
                broker_before,
            )
            after = kafka_local.status(Settings(bootstrap_servers=kafka_bootstrap))
            assert after.get("pid") == broker_before.get("pid"), (after, broker_before)
            done.append("kafka start")
        elif argv[0] == "export":
            # `export NAME=$(command)`: the command's output becomes the variable
            name, _, command = line.split(None, 1)[1].split("#")[0].strip().partition("=")
            assert command.startswith("$(") and command.endswith(")"), line
            env[name] = run(shlex.split(command[2:-1]), cwd=cwd, env=env).strip()
            done.append(f"export {name}")
        elif argv[-1] == "&":
            assert argv[:-1] == ["novaquota", "worker"], line
            background.append(Background(argv[:-1], cwd=cwd, env=env, log=tmp_path / "worker.log"))
            done.append("worker &")
        elif argv[0] == "curl":
            # the block's port is the default one; this test's worker has its own
            assert any("localhost:6066" in a for a in argv), line
            argv = [a.replace("localhost:6066", f"localhost:{port}") for a in argv]
            argv = [a.replace("$NOVAQUOTA_TOKEN", env["NOVAQUOTA_TOKEN"]) for a in argv]
            worker = background[-1]
            deadline = time.monotonic() + READY_TIMEOUT + USAGE_TIMEOUT
            why = "no answer yet"
            while True:
                worker.alive()
                proc = subprocess.run(
                    [*argv, "--silent"], cwd=cwd, env=env, capture_output=True, timeout=30
                )
                try:
                    ok, why = usage_matches(json.loads(proc.stdout), usage, cpu_quota)
                except ValueError:
                    ok, why = False, f"curl exit {proc.returncode}: {proc.stdout[:300]!r}"
                if ok:
                    break
                assert time.monotonic() < deadline, f"{why}\n{tail(worker.log)}"
                time.sleep(1.0)
            done.append("curl")
        else:
            run(argv, cwd=cwd, env=env)
            done.append(" ".join(argv[:2]))

    assert done == [
        "activate",
        "kafka start",
        "novaquota topics",
        "export NOVAQUOTA_TOKEN",
        "worker &",
        "novaquota publish",
        "curl",
        "kafka stop (skipped: the suite shares the broker)",
    ], done
    assert (cwd / "var" / "worker").is_dir()
