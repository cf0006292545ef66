"""Rendering of docs/benchmarks.md from results: tables, ratios, target verdicts, the trial-run heading."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import _earlier_sitting, _same_versions
from bench.config import SMALL, scale_from
from bench.report import flat_limit_mib, latency_table, number, rate_table, render, targets
from bench.results import EMAGE, ORTHANC, Better, Results, load

PAGE = "page of 100 (+ total count)"


def _results() -> Results:
    results = Results()
    for value in (100.0, 90.0, 110.0, 95.0, 105.0):
        results.record("stow", "1 client", "instances/s", "instances/s", EMAGE, value)
    for value in (40.0, 50.0, 45.0, 42.0, 48.0):
        results.record("stow", "1 client", "instances/s", "instances/s", ORTHANC, value)
    for value in (10.0, 12.0, 30.0):
        results.record("qido", PAGE, "latency", "ms", EMAGE, value, better=Better.LOWER)
    for value in (50.0, 60.0, 70.0):
        results.record("qido", PAGE, "latency", "ms", ORTHANC, value, better=Better.LOWER)
    for service, before, peak in (("ingest", 100.0, 140.0), ("catalog", 90.0, 300.0)):
        results.record("memory", service, "RSS before", "MiB", EMAGE, before, better=Better.LOWER)
        results.record("memory", service, "RSS peak", "MiB", EMAGE, peak, better=Better.LOWER)
        results.record("memory", service, "RSS after", "MiB", EMAGE, before, better=Better.LOWER)
    results.note("stow", "how it was measured")
    results.fact("qido", "bulk load", "1,000 instances/s")
    return results


def _context(name: str = "small") -> dict[str, object]:
    scale = {"name": name, "catalog_studies": 2000, "instances_per_study": 10, "ct_slices": 100}
    return {
        "scale": {**scale, "large_ingest_mib": 200, "repetitions": 5},
        "machine": {"cores": "2"},
        "versions": {"Orthanc": "1.10.1"},
        "started": "2026-11-28 04:00 UTC",
        "duration_s": 600,
        "command": "BENCH_SCALE=small make bench",
        "profile": "test9",
    }


def test_numbers_keep_three_significant_figures() -> None:
    values = (12345.6, 123.4, 12.34, 1.234, 0.1234)
    assert [number(v) for v in values] == ["12,346", "123", "12.3", "1.23", "0.123"]
    assert number(None) == "\u2013"


def test_rate_table_gives_medians_ranges_and_the_ratio() -> None:
    table = rate_table(_results().of("stow"))
    assert table[0] == "| case | quantity | e-mage | Orthanc | e-mage / Orthanc |"
    assert table[2] == "| 1 client | instances/s | 100 (90.0\u2013110) | 45.0 (40.0\u201350.0) | 2.22\u00d7 |"


def test_latency_table_gives_percentiles_per_system() -> None:
    table = latency_table(_results().of("qido"), ("p50", "p95"))
    emage_row = next(row for row in table if "| e-mage |" in row)
    assert emage_row.startswith("| page of 100 (+ total count) | e-mage | 12.0 | 28.2 | 10.0\u201330.0 | 3 |")
    assert "p50 0.20\u00d7" in emage_row


def test_targets_judge_the_run() -> None:
    verdicts = {verdict.target: verdict for verdict in targets(_results(), 200)}
    assert verdicts["STOW-RS, 1 client: \u2265 2\u00d7 Orthanc"].met is True
    assert verdicts["STOW-RS, 4 clients: \u2265 2\u00d7 Orthanc"].met is None
    assert verdicts["QIDO-RS page of 100: p95 < 20 ms"].met is False
    assert verdicts["QIDO-RS page of 100 (+ total count): p95 below Orthanc's"].met is True
    memory = verdicts["Memory: every service's RSS flat during the large ingest"]
    assert memory.met is False
    assert "catalog" in memory.measured


def test_flat_limit_is_a_quarter_of_the_study_up_to_100_mib() -> None:
    assert flat_limit_mib(200) == 50
    assert flat_limit_mib(2048) == 100


def test_a_reduced_scale_run_says_so_and_how_to_run_the_full_one() -> None:
    text = render(_context(), _results(), {"stow": "benchmarks/stow.png"})
    assert "**Reduced-scale trial run** (`BENCH_SCALE=small`)" in text
    assert "make bench  " in text
    assert "![STOW-RS ingest of a CT series](benchmarks/stow.png)" in text
    assert "- how it was measured" in text
    assert "| bulk load | 1,000 instances/s |" in text
    assert "Reduced-scale" not in render(_context("full"), _results(), {})


def test_failures_are_reported_not_hidden() -> None:
    results = _results()
    results.failures["wado"] = "BenchRequestError: boom"
    assert "**The scenario did not complete:** `BenchRequestError: boom`" in render(_context(), results, {})


def test_results_survive_a_round_trip(tmp_path: Path) -> None:
    results = _results()
    results.trace("memory", "e-mage: ingest", [(0.0, 100.0), (0.2, 120.0)])
    results.save(tmp_path / "results.json", _context())
    context, loaded = load(tmp_path / "results.json")
    assert context["profile"] == "test9"
    assert loaded == results


def test_scale_comes_from_the_environment() -> None:
    assert scale_from({}).name == "full"
    assert scale_from({"BENCH_SCALE": "small"}) == SMALL
    assert scale_from({"BENCH_SCALE": "small", "BENCH_REPETITIONS": "7"}).repetitions == 7


def test_a_second_sitting_replaces_its_scenarios_and_the_report_lists_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = {**_context(), "versions": {"e-mage": "abc123"}, "scenarios": ["qido", "stow", "memory"]}
    _results().save(tmp_path / "results.json", earlier)
    # The first sitting rewrote its report: docs/ differs from the commit, which changes no measurement.
    monkeypatch.setattr("bench.machine.emage_commit", lambda: "abc123 + 3 uncommitted file(s)")
    now = {
        "scale": earlier["scale"],
        "machine": earlier["machine"],
        "sittings": [{"started": "2026-11-28 06:00 UTC", "command": "python -m bench --only qido"}],
    }

    context, results = _earlier_sitting(tmp_path / "results.json", now, ["qido"])

    assert not results.of("qido")
    assert "qido" not in results.facts
    assert results.of("stow")
    assert results.notes["stow"] == ["how it was measured"]
    assert [sitting["started"] for sitting in context["sittings"]] == [
        "2026-11-28 04:00 UTC",
        "2026-11-28 06:00 UTC",
    ]
    assert context["sittings"][0]["scenarios"] == ["stow", "memory"]  # qido is the second sitting's now
    context["sittings"][1]["duration_s"] = 1800
    page = render(context, results, {})
    assert "Run in 2 sittings on the same commit" in page
    assert "Sizes: a QIDO-RS catalog of 2,000 studies / 20,000 instances; a CT series of 100 slices" in page
    assert "- 2026-11-28 04:00 UTC, 10 min, `BENCH_SCALE=small make bench`: stow, memory;" in page
    assert "- 2026-11-28 06:00 UTC, 30 min, `python -m bench --only qido`: " in page


def test_a_sitting_whose_scenarios_all_ran_again_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = {**_context(), "versions": {"e-mage": "abc123"}, "scenarios": ["qido"]}
    _results().save(tmp_path / "results.json", earlier)
    monkeypatch.setattr("bench.machine.emage_commit", lambda: "abc123")
    now = {"scale": earlier["scale"], "machine": earlier["machine"], "sittings": [{"started": "later"}]}
    context, _ = _earlier_sitting(tmp_path / "results.json", now, ["qido"])
    assert context["sittings"] == [{"started": "later"}]


def test_a_second_sitting_measuring_something_else_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = {**_context(), "versions": {"e-mage": "abc123"}, "scenarios": ["qido"]}
    _results().save(tmp_path / "results.json", earlier)
    same = {"scale": earlier["scale"], "machine": earlier["machine"], "sittings": []}

    def refused(now: dict[str, object], reason: str) -> None:
        with pytest.raises(SystemExit, match=reason):
            _earlier_sitting(tmp_path / "results.json", now, ["qido"])

    monkeypatch.setattr("bench.machine.emage_commit", lambda: "def456")
    refused(same, "measured e-mage abc123")
    monkeypatch.setattr("bench.machine.emage_commit", lambda: "abc123 + 1 uncommitted file(s)")
    refused({**same, "scale": {**earlier["scale"], "name": "full"}}, "another scale")  # type: ignore[dict-item]
    refused({**same, "machine": {"cores": "8"}}, "another machine")
    refused({**same, "sittings": [{"changes": ["services/ingest/src/x.py"]}]}, "uncommitted changes")
    with pytest.raises(SystemExit, match="versions differ"):
        _same_versions(
            {"Orthanc": "1.10.1", "e-mage": "abc123"}, {"Orthanc": "1.12.0", "e-mage": "abc123 + 1"}
        )
    _same_versions({"Orthanc": "1.10.1", "e-mage": "abc123"}, {"Orthanc": "1.10.1", "e-mage": "abc123 + 3"})
