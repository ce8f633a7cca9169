"""The README's ```` ```bash tested ```` blocks, run as written.

The blocks are joined, in order, into one bash script (``set -euo pipefail``), as a user would
paste them into one terminal: variables and background jobs of one block are there for the next.
It runs in an empty directory whose ``.venv`` is this interpreter's virtualenv, against the real
broker, with this test's own topics, consumer groups, web ports, token file, data directories and
Kafka home (so ``novaquota kafka start`` finds the broker answering and starts nothing). Each
block's output goes to a file of its own; the test checks that every block ran and exited 0, that
no answer was an API error, and what the walkthrough is meant to show: the quota applied, one check
allowed and one denied, the violation opened and then resolved, the quota change in the audit.
Every process the blocks started is stopped at the end, by process id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.readme import README, Block, blocks_marked_tested
from tests.support.worker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = README.parent
SCRIPT_TIMEOUT = 720.0  # worker and projection worker start-up on a shared 2-core machine included
API_ERROR = re.compile(r'"error":\s*\{\s*"code"')


def readme_env(kafka_bootstrap: str, prefix: str, tmp: Path) -> dict[str, str]:
    """A user's environment, with everything the README's commands write or bind made this
    test's own: topics and groups, ports, the token file, data directories, the broker's home."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NOVAQUOTA_") and k not in {"VIRTUAL_ENV", "KAFKA_BOOTSTRAP_SERVERS"}
    }
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "NOVAQUOTA_TOPIC_PREFIX": prefix,
            "NOVAQUOTA_APP_ID": f"{prefix}enforcement",
            "NOVAQUOTA_PARTITIONS": "2",
            "NOVAQUOTA_WEB_PORT": str(free_port()),
            "NOVAQUOTA_PROJECTIONS_WEB_PORT": str(free_port()),
            # never the shared ~/.cache/novaquota/kafka: `kafka start` must find nothing of its own
            "NOVAQUOTA_KAFKA_HOME": str(tmp / "kafka-home"),
            "NOVAQUOTA_LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def script(blocks: list[Block], outputs: Path, progress: Path) -> str:
    """One bash script: each block's output into its own file, a line in ``progress`` when a
    block starts and when all have ended."""
    parts = ["set -euo pipefail"]
    for i, block in enumerate(blocks):
        parts.append(f"echo {i} >> '{progress}'")
        parts.append(f"exec > '{outputs / f'{i}.out'}' 2>&1")
        parts.append(f"# --- {block.where()}")
        parts.append(block.body.rstrip("\n"))
    parts.append(f"echo end >> '{progress}'")
    return "\n".join(parts) + "\n"


def processes_with(marker: str) -> list[int]:
    """Ids of the processes whose environment holds ``marker`` (this test's unique topic
    prefix): what the blocks started, including anything that left the script's process group."""
    needle = marker.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop_all(pgid: int, marker: str, timeout: float = 60.0) -> None:
    """SIGTERM the script's process group and every process carrying ``marker``; SIGKILL what
    is left after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        for pid in processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not processes_with(marker):
                return
            time.sleep(0.2)


def json_documents(text: str) -> list[Any]:
    """The JSON objects in a block's output (curl prints one answer after another, with or
    without a newline between them); other lines are skipped."""
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while (start := text.find("{", i)) != -1:
        try:
            doc, end = decoder.raw_decode(text, start)
        except ValueError:
            i = start + 1
            continue
        docs.append(doc)
        i = end
    return docs


class Run:
    """The outputs of the blocks after the script ran."""

    def __init__(self, blocks: list[Block], outputs: Path, kafka_home: Path) -> None:
        self.blocks = blocks
        self.outputs = outputs
        self.kafka_home = kafka_home

    def output(self, i: int) -> str:
        path = self.outputs / f"{i}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def of(self, needle: str) -> tuple[Block, str]:
        """The one tested block whose text contains ``needle``, and its output."""
        hits = [i for i, b in enumerate(self.blocks) if needle in b.body]
        assert len(hits) == 1, f"{len(hits)} tested README blocks contain {needle!r}"
        return self.blocks[hits[0]], self.output(hits[0])


@pytest.fixture
def readme_run(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[Run]:
    blocks = blocks_marked_tested(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```bash tested block"
    venv = Path(sys.prefix)
    assert (venv / "bin" / "activate").is_file(), f"{venv} is not a virtualenv (run `make install`)"
    assert (venv / "bin" / "novaquota").is_file(), f"no novaquota console script in {venv}/bin"

    cwd = tmp_path / "checkout"
    cwd.mkdir()
    (cwd / ".venv").symlink_to(venv, target_is_directory=True)
    shutil.copytree(REPO / "examples", cwd / "examples")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    progress = tmp_path / "progress"
    (tmp_path / "readme.sh").write_text(script(blocks, outputs, progress))
    env = readme_env(kafka_bootstrap, topic_prefix, tmp_path)
    marker = f"NOVAQUOTA_TOPIC_PREFIX={topic_prefix}"

    with open(tmp_path / "script.out", "wb") as out:
        proc = subprocess.Popen(
            ["bash", str(tmp_path / "readme.sh")],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            rc: int | None = proc.wait(SCRIPT_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
        started = progress.read_text().split() if progress.exists() else []
        run = Run(blocks, outputs, Path(env["NOVAQUOTA_KAFKA_HOME"]))
        last = started[-1] if started else None
        if rc != 0 or last != "end":
            i = int(last) if last and last != "end" else len(blocks) - 1
            logs = "\n".join(
                f"--- {name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:])
                for name in ("worker.log", "projections.log")
                if (p := cwd / name).exists()
            )
            pytest.fail(
                f"the README's tested blocks stopped at block {i} ({blocks[i].where()}), "
                f"{'timed out' if rc is None else f'exit status {rc}'}:\n{blocks[i].body}\n"
                f"--- its output:\n{run.output(i)[-4000:]}\n{logs}"
            )
        yield run
    finally:
        stop_all(proc.pid, marker)
    assert not processes_with(marker), "a process the README started is still running"


def test_readme_tested_blocks_run_and_show_the_walkthrough(readme_run: Run) -> None:
    run = readme_run
    for i, block in enumerate(run.blocks):
        out = run.output(i)
        assert not API_ERROR.search(out), f"an API error in {block.where()}:\n{out[-3000:]}"

    # `kafka start` found the test's broker answering and started nothing
    _, out = run.of("novaquota kafka start")
    assert "not starting another" in out, out
    assert not (run.kafka_home / "broker.pid").exists(), "`kafka start` started a broker"

    # the quota, set through the API, is applied
    _, out = run.of(""""resource_type": "cpu", "limit": 4}'""")
    (answer,) = json_documents(out)
    assert answer["status"] == "applied", answer
    assert [(q["resource_type"], q["limit"]) for q in answer["quotas"]] == [("cpu", 4)], answer

    # one admission check allowed, one denied with a reason naming the quota
    _, out = run.of('"resources": {"cpu": 6}')
    checks = [d for d in json_documents(out) if "allowed" in d]
    assert [c["allowed"] for c in checks] == [True, False], checks
    assert "cpu" in checks[1]["reason"] and "limit 4" in checks[1]["reason"], checks[1]

    # the VMs are published, all accepted
    _, out = run.of('"type": "vm.created"')
    assert "published 3 message(s)" in out and "rejected 0" in out, out

    # the violation opens: usage 5 of 4 cores, over_limit open
    _, out = run.of("grep over_limit")
    cpu = cpu_row(json_documents(out)[-1])
    assert (cpu["used"], cpu["limit"], cpu["open_violations"]) == (5, 4, ["over_limit"]), cpu

    # one VM deleted: back to 3 of 4, nothing open
    _, out = run.of("grep -v over_limit")
    cpu = cpu_row(json_documents(out)[-1])
    assert (cpu["used"], cpu["limit"], cpu["open_violations"]) == (3, 4, []), cpu

    # the audit names the quota change and who made it
    _, out = run.of('"$VIEWS/api/v1/audit?tenant_id=acme"; echo')
    (audit,) = json_documents(out)
    changes = [
        r
        for r in audit["records"]
        if r["type"] == "audit.command_applied" and r["details"]["action"] == "audit.quota_set"
    ]
    assert [(r["actor"], r["details"]["subject"]) for r in changes] == [
        ("token:me", "quota/tenant/acme/cpu")
    ], audit

    # the policies validate, autogrow is loaded and listed from the command topic
    _, out = run.of("novaquota policy validate")
    assert "autogrow@1: 1 rule(s) (grow)" in out and "idle-shrink@1" in out, out
    assert "published policy.set autogrow@1" in out, out
    assert re.search(r"^autogrow\s+1\s+True\s+grow$", out, re.M), out

    # what-if: with 6 cores acme's over_limit episode of the walkthrough would not have opened
    _, out = run.of("acme-6-cores.yaml --tenant acme")
    html = run.outputs.parent / "checkout" / "what-if.html"
    assert html.read_bytes().startswith(b"<!DOCTYPE html>"), html
    (summary,) = [d for d in json_documents(out) if "actual" in d]
    assert summary["actual"]["opened_by_kind"]["over_limit"] >= 1, summary
    assert summary["proposed"]["opened_by_kind"]["over_limit"] == 0, summary


def cpu_row(utilization: dict[str, Any]) -> dict[str, Any]:
    rows = {r["resource_type"]: r for r in utilization["resources"]}
    assert "cpu" in rows, utilization
    return rows["cpu"]
