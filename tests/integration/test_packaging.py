"""The distribution as a user installs it: build the wheel, install the base package (the client)
into a fresh virtual environment, and check what lands in site-packages.

Needs the package registry (the build backend and the client's three dependencies are
downloaded), not the broker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from novaquota import __version__

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("streams", "projections", "schemas", "ops")

PROBE = """
import importlib.metadata as md, importlib.util as u, json, sys, sysconfig
import novaquota, novaquota.client
site = sysconfig.get_paths()["purelib"]
from pathlib import Path
print(json.dumps({
    "version": novaquota.__version__,
    "dist_version": md.version("novaquota"),
    "client": novaquota.client.__file__,
    "found": {m: u.find_spec(m) is not None for m in
              ["ops", "streams", "projections", "schemas", "faust", "rocksdict", "pandas",
               "aiokafka", "statsmodels", "testcontainers"]},
    "top_level": sorted(p.name for p in Path(site).iterdir()),
    "extras": md.metadata("novaquota").get_all("Provides-Extra"),
    "requires": md.requires("novaquota"),
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy, so that the checkout gets no build/ folder and a stale one cannot leak
    # into the wheel.
    src = tmp_path_factory.mktemp("src") / "novaquota"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "var", "*.egg-info"),
    )
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("novaquota-*.whl")
    return built


def test_the_wheel_holds_one_namespace_with_its_data(wheel: Path) -> None:
    assert wheel.name == f"novaquota-{__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"novaquota", f"novaquota-{__version__}.dist-info"}
    for folder in SOURCE_FOLDERS:
        assert f"novaquota/{folder}/__init__.py" in names
    for data in (
        "novaquota/py.typed",
        "novaquota/ops/kafka/pom.xml",
        "novaquota/ops/prometheus/alerts.yml",
        "novaquota/projections/templates/replay.html",
        "novaquota/projections/ui/index.html",
        f"novaquota-{__version__}.dist-info/licenses/LICENSE",
    ):
        assert data in names, data


def test_the_base_install_is_the_client_alone(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    probe = subprocess.run(
        [str(py), "-c", PROBE], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    got = json.loads(probe.stdout)
    assert got["version"] == got["dist_version"] == __version__
    assert got["client"].startswith(str(env_dir))
    assert not any(got["found"].values()), got["found"]
    generic = set(SOURCE_FOLDERS) & set(got["top_level"])
    assert not generic, f"generic top-level packages installed: {generic}"
    assert {"worker", "projections", "dev"} <= set(got["extras"])
    base = [r for r in got["requires"] if "extra ==" not in r]
    assert sorted(r.split("<")[0].split(">")[0].lower() for r in base) == [
        "httpx",
        "orjson",
        "pydantic",
    ]
    assert any("testcontainers" in r and 'extra == "dev"' in r for r in got["requires"])

    script = env_dir / "bin" / "novaquota"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert (version.returncode, version.stdout.strip()) == (0, f"novaquota {__version__}")
    worker = subprocess.run([str(script), "topics", "describe"], capture_output=True, text=True)
    assert worker.returncode == 2
    assert "pip install 'novaquota[worker]'" in worker.stderr, worker.stderr
