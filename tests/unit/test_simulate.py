"""``novaquota simulate`` to a file: deterministic bytes, every tier, clear errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from novaquota.ops import simulate
from novaquota.ops.workload import WorkloadSpec
from novaquota.streams.settings import Settings


def _run(tmp_path: Path, name: str, *extra: str) -> bytes:
    out = tmp_path / name
    argv = ["--tenants", "30", "--rate", "10", "--duration", "300", "--out", str(out), *extra]
    assert simulate.main(argv, Settings()) == 0
    return out.read_bytes()


def test_file_output_is_deterministic(tmp_path: Path) -> None:
    a = _run(tmp_path, "a.jsonl", "--seed", "3")
    assert a == _run(tmp_path, "b.jsonl", "--seed", "3")
    assert a != _run(tmp_path, "c.jsonl", "--seed", "4")
    lines = [orjson.loads(x) for x in a.splitlines()]
    tiers = {e["data"]["template"] for e in lines if e["type"] == "template.applied"}
    assert tiers == {"free", "developer", "startup", "growth", "enterprise"}
    first_event = next(
        e
        for e in lines
        if e["type"].split(".")[0] in ("vm", "volume", "network", "api", "snapshot")
    )
    assert first_event["time"].startswith("2026-11-01T00:0")


def test_no_setup_and_start(tmp_path: Path) -> None:
    data = _run(tmp_path, "a.jsonl", "--no-setup", "--start", "2026-06-01T12:00:00Z")
    lines = [orjson.loads(x) for x in data.splitlines()]
    assert lines and all(not e["type"].startswith(("quota.", "template.")) for e in lines)
    assert all("2026-06-01T12:00:00" <= e["time"] < "2026-06-01T12:05:00.000001" for e in lines)


@pytest.mark.parametrize(
    "argv",
    [
        ["--tenants", "0"],
        ["--rate", "-1"],
        ["--duration", "abc"],
        ["--speed", "-2"],
        ["--seasonality", "3"],
        ["--start", "yesterday"],
    ],
)
def test_bad_options_are_usage_errors(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        simulate.main([*argv, "--out", str(tmp_path / "x")], Settings())
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_default_start_keeps_event_time_behind_the_wall_clock() -> None:
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    assert simulate.default_start(now, 600, 0) == datetime(2026, 11, 28, 11, 50, tzinfo=UTC)
    assert simulate.default_start(now, 600, 1) == now
    # 10x: event time covers 600 s in 60 s of wall time, so it must start 540 s behind
    assert simulate.default_start(now, 600, 10) == datetime(2026, 11, 28, 11, 51, tzinfo=UTC)


def test_generate_counts_and_duration() -> None:
    spec = WorkloadSpec(tenants=10, seed=1, events_per_second=5, seasonality=0)
    result = simulate.SimulationResult()
    evs = list(simulate.generate(spec, 1000, result=result))
    for e in evs:
        result.count(e)
    assert result.events == sum(1 for e in evs if not simulate.is_command(e))
    assert 4000 < result.events < 6000
    assert len(result.misbehaving) == 1 and sum(result.tiers.values()) == 10
    with pytest.raises(ValueError):
        list(simulate.generate(spec, 0))
