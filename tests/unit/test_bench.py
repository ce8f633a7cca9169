"""The bench suite's pure parts: section selection, figures, comparison, plot, options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from novaquota.ops import bench
from novaquota.streams.settings import Settings

REPORT = {
    "when": "2026-11-28T12:00:00Z",
    "options": {"tenants": 10},
    "core": {"events_per_second": 50_000.0, "section_seconds": 2.0},
    "throughput": {
        "produce": {"events_per_second": 30_000.0},
        "raw_consume": {"events_per_second": 90_000.0},
        "faust_bare_agent": {"events_per_second": 5_000.0},
        "enforcement": {
            "events_per_second": 900.0,
            "cpu_us_per_message": 1500.0,
            "ratio_to_faust_bare_agent": 0.18,
            "log": "/tmp/x.log",
        },
    },
    "latency": {
        "loads": [
            {"offered_events_per_second": 300, "p50_ms": 20.0, "p99_ms": 80.0, "sustained": True},
            {"offered_events_per_second": 1000, "p50_ms": 9000.0, "p99_ms": 20000.0},
        ]
    },
    "memory": {"rss_samples": [[0, 100.0], [10, 120.0]], "slope_bytes_per_key": 900.0},
    "restart": {"keys": 10, "warm": {"seconds_to_serving": 3.0}, "cold": {"seconds_to_serving": 9}},
}


def test_flatten_takes_numbers_and_names_loads_by_rate() -> None:
    flat = bench.flatten(REPORT)
    assert flat["throughput.enforcement.events_per_second"] == 900.0
    assert flat["latency.loads[1000].p99_ms"] == 20000.0
    assert flat["restart.cold.seconds_to_serving"] == 9.0
    assert not any("sustained" in k or "options" in k or "rss_samples" in k for k in flat)


def test_compare_gives_new_over_old_ratios() -> None:
    new = json.loads(json.dumps(REPORT))
    new["throughput"]["enforcement"]["events_per_second"] = 1800.0
    new["latency"]["loads"][0]["p99_ms"] = 40.0
    del new["restart"]
    rows = {k: (o, n, r) for k, o, n, r in bench.compare(new, REPORT)}
    assert rows["throughput.enforcement.events_per_second"] == (900.0, 1800.0, 2.0)
    assert rows["latency.loads[300].p99_ms"][2] == 0.5
    assert not any(k.startswith("restart") for k in rows)  # only figures present in both
    assert not any(k.endswith("section_seconds") for k in rows)
    text = bench.format_compare(bench.compare(new, REPORT))
    assert "2.000" in text and "0.500" in text


def test_headline_sets_figures_against_the_design_targets() -> None:
    report = json.loads(json.dumps(REPORT))
    report["options"]["keys"] = 1_000_000
    report["memory"]["loaded_rss_mb"] = 240.0
    report["checks"] = {"reads": {"latency": {"p99_ms": 12.5}}}
    report["scaling"] = {"two_to_one": 1.7}
    rows = {r["path"]: r for r in bench.headline(report)}
    assert rows["throughput.enforcement.cpu_us_per_message"]["met"] is False  # 1,500 > 250
    assert rows["throughput.enforcement.ratio_to_faust_bare_agent"]["met"] is False  # < 0.5
    assert rows["scaling.two_to_one"]["met"] is True  # 1.7 >= 1.6
    assert rows["latency.loads[1000].p99_ms"]["met"] is False  # 20 s > 250 ms
    assert rows["memory.loaded_rss_mb"]["met"] is True  # 240 <= 250 at 1,000,000 keys
    assert rows["restart.warm.seconds_to_serving"]["met"] is False  # 3 s > 1 s
    assert rows["restart.cold.seconds_to_serving"]["met"] is True  # 9 s <= 60 s
    assert rows["checks.reads.latency.p99_ms"]["met"] is False
    assert "checks.batch.checks_per_s" not in rows  # absent figures are left out
    # memory and restart targets hold at 1,000,000 keys: smaller runs are not judged
    report["options"]["keys"] = 100_000
    rows = {r["path"]: r for r in bench.headline(report)}
    assert rows["memory.loaded_rss_mb"]["met"] is None
    text = bench.format_headline(bench.headline(report))
    assert "n/a  (at 100,000 keys)" in text and "≤250" in text


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "bench.png"
    bench.plot(REPORT, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bench.plot({"when": "x"}, tmp_path / "empty.png")  # missing sections still plot
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_unknown_section_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown section"):
        bench.run_bench(Settings(), only=["core", "nope"])


def test_every_section_has_the_common_signature() -> None:
    import inspect

    for name, fn in bench.SECTIONS.items():
        params = inspect.signature(fn).parameters
        for p in ("tenants", "seed", "partitions", "work_dir"):
            assert params[p].kind is inspect.Parameter.KEYWORD_ONLY, (name, p)


def test_optional_sections_record_why_they_were_skipped(tmp_path: Path) -> None:
    got = bench._optional("novaquota.ops.no_such_module_here", "section", x=1)
    assert "skipped" in got and "no_such_module_here" in got["skipped"]
    got = bench._optional("novaquota.ops.bench", "no_such_function")
    assert "skipped" in got


def _fake_core(settings: Settings, **kw: Any) -> dict[str, Any]:
    assert set(kw) == {"tenants", "seed", "partitions", "work_dir", "opts"}
    return {"events_per_second": 1234.0}


def _failing(settings: Settings, **kw: Any) -> dict[str, Any]:
    raise RuntimeError("worker died")


@pytest.fixture
def fake_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.SECTIONS, "core", _fake_core)
    monkeypatch.setitem(bench.SECTIONS, "latency", _failing)


def test_run_bench_runs_the_selected_sections(tmp_path: Path, fake_sections: None) -> None:
    report = bench.run_bench(Settings(), only=["core"], work_dir=tmp_path)
    assert report["core"]["events_per_second"] == 1234.0
    assert report["options"]["sections"] == ["core"]
    assert set(report) >= {"when", "machine", "targets", "core"}
    assert "latency" not in report


def test_a_failing_section_is_recorded_and_the_others_still_run(
    tmp_path: Path, fake_sections: None
) -> None:
    report = bench.run_bench(Settings(), only=["latency", "core"], work_dir=tmp_path)
    assert report["latency"]["error"] == "RuntimeError: worker died"
    assert report["core"]["events_per_second"] == 1234.0
    assert bench.main(["--only", "latency", "--work-dir", str(tmp_path)], Settings()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--only", "core,bogus"],
        ["--events", "0"],
        ["--latency-rates", "300,x"],
        ["--latency-rates", "0"],
        ["--compare", "/nonexistent/old.json"],
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(argv, Settings())
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_main_writes_json_plot_and_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_sections: None
) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps(REPORT))
    out, png = tmp_path / "new.json", tmp_path / "new.png"
    argv = ["--only", "core", "--out", str(out), "--plot", str(png), "--compare", str(old)]
    assert bench.main(argv, Settings()) == 0
    assert json.loads(out.read_text())["core"]["events_per_second"] == 1234.0
    assert png.exists()
    assert "core.events_per_second" in capsys.readouterr().out
