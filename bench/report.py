"""``docs/benchmarks.md`` from a run's results: pure rendering, no I/O (the caller writes the text).

Rates are summarised per repetition (median and min-max of the repetitions' values); latencies over all
samples (p50, p95, p99, min-max). The ratio is always e-mage / Orthanc of the same statistic: above 1 e-mage
is faster for a rate, below 1 it is faster for a latency.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench.results import EMAGE, ORTHANC, Metric, Results
from bench.stats import Summary, ratio, summarize

MIB: Final = 1024 * 1024
DASH: Final = "\u2013"
"""En dash: ranges (min-max) and empty cells."""
TIMES: Final = "\u00d7"


@dataclass(frozen=True)
class ScenarioInfo:
    key: str
    title: str
    latency_percentiles: tuple[str, ...] = ("p50", "p95")


SCENARIOS: Final = (
    ScenarioInfo("reference", "Physical reference: loopback and the S3 store"),
    ScenarioInfo("qido", "QIDO-RS study search"),
    ScenarioInfo("stow", "STOW-RS ingest of a CT series"),
    ScenarioInfo("dimse", "DIMSE C-STORE ingest (dcmtk storescu)"),
    ScenarioInfo("wado", "WADO-RS retrieval"),
    ScenarioInfo("freshness", "Freshness", ("p50", "p95", "p99")),
    ScenarioInfo("memory", "Memory during a large ingest"),
)
SCENARIO_KEYS: Final = tuple(info.key for info in SCENARIOS)


# --- Numbers ----------------------------------------------------------------------------------------------


def number(value: float | None) -> str:
    """Three significant figures at most, thousands separated: 1,234 · 123 · 12.3 · 1.23 · 0.123."""
    if value is None:
        return DASH
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def with_range(summary: Summary) -> str:
    return f"{number(summary.median)} ({number(summary.minimum)}{DASH}{number(summary.maximum)})"


def percentile_of(summary: Summary, name: str) -> float:
    return {"p50": summary.median, "p95": summary.p95, "p99": summary.p99}[name]


def _systems(metrics: Sequence[Metric]) -> list[str]:
    present = list(dict.fromkeys(metric.system for metric in metrics))
    first = [system for system in (EMAGE, ORTHANC) if system in present]
    return first + [system for system in present if system not in first]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _ratio_text(emage: float | None, orthanc: float | None) -> str:
    if emage is None or orthanc is None:
        return DASH
    value = ratio(emage, orthanc)
    return DASH if value is None else f"{value:.2f}{TIMES}"


def rate_table(metrics: Sequence[Metric]) -> list[str]:
    """One row per (case, quantity), a column per system: median (min-max), and e-mage / Orthanc."""
    systems = _systems(metrics)
    keys = list(dict.fromkeys((metric.case, metric.quantity, metric.unit) for metric in metrics))
    compare = EMAGE in systems and ORTHANC in systems
    header = ["case", "quantity", *systems] + (["e-mage / Orthanc"] if compare else [])
    rows = []
    for case, quantity, unit in keys:
        cells: dict[str, Summary] = {
            metric.system: summarize(metric.values)
            for metric in metrics
            if (metric.case, metric.quantity) == (case, quantity)
        }
        row = [case, unit if unit == quantity else f"{quantity} ({unit})"]
        row += [with_range(cells[system]) if system in cells else DASH for system in systems]
        if compare:
            emage, orthanc = cells.get(EMAGE), cells.get(ORTHANC)
            row.append(_ratio_text(emage.median if emage else None, orthanc.median if orthanc else None))
        rows.append(row)
    return _table(header, rows)


def latency_table(metrics: Sequence[Metric], percentiles: Sequence[str]) -> list[str]:
    """One row per (case, system): percentiles over all samples, min-max, n; the ratio on e-mage's row."""
    header = [
        "case",
        "system",
        *(f"{name} (ms)" for name in percentiles),
        f"min{DASH}max (ms)",
        "n",
        "e-mage / Orthanc",
    ]
    rows = []
    cases = list(dict.fromkeys(metric.case for metric in metrics))
    for case in cases:
        in_case = {metric.system: summarize(metric.values) for metric in metrics if metric.case == case}
        for system in _systems([metric for metric in metrics if metric.case == case]):
            summary = in_case[system]
            compared = DASH
            if system == EMAGE and ORTHANC in in_case:
                orthanc = in_case[ORTHANC]
                compared = ", ".join(
                    f"{name} {_ratio_text(percentile_of(summary, name), percentile_of(orthanc, name))}"
                    for name in percentiles
                )
            rows.append(
                [
                    case,
                    system,
                    *(number(percentile_of(summary, name)) for name in percentiles),
                    f"{number(summary.minimum)}{DASH}{number(summary.maximum)}",
                    str(summary.count),
                    compared,
                ]
            )
    return _table(header, rows)


def flat_limit_mib(study_mib: float) -> float:
    """The RSS growth a streaming ingest may show: min(100 MiB, 25 % of the study)."""
    return min(100.0, 0.25 * study_mib)


def memory_table(metrics: Sequence[Metric], study_mib: float) -> list[str]:
    """Per process: RSS before, peak and after; growth (peak - before); flat or not (e-mage services)."""
    limit = flat_limit_mib(study_mib)
    rows = []
    processes = list(dict.fromkeys((metric.system, metric.case) for metric in metrics))
    for system, process in processes:
        values = {
            metric.quantity: metric.values[-1]
            for metric in metrics
            if (metric.system, metric.case) == (system, process) and metric.values
        }
        before, peak, after = values.get("RSS before"), values.get("RSS peak"), values.get("RSS after")
        growth = peak - before if peak is not None and before is not None else None
        verdict = DASH
        if process in SERVICES and growth is not None:
            verdict = "flat" if growth < limit else "grows"
        rows.append([system, process, number(before), number(peak), number(after), number(growth), verdict])
    return _table(
        [
            "system",
            "process",
            "RSS before (MiB)",
            "peak (MiB)",
            "after (MiB)",
            "growth (MiB)",
            f"< {limit:.0f} MiB?",
        ],
        rows,
    )


SERVICES: Final = ("ingest", "catalog", "consent", "access", "audit")


# --- Targets ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None
    """None: not measured in this run."""

    @property
    def word(self) -> str:
        return {True: "met", False: "**not met**", None: "not measured"}[self.met]


def _median(results: Results, scenario: str, case: str, quantity: str, system: str) -> float | None:
    metric = results.find(scenario, case, quantity, system)
    return summarize(metric.values).median if metric and metric.values else None


def _latency(results: Results, scenario: str, case: str, system: str, name: str) -> float | None:
    metric = results.find(scenario, case, "latency", system) or results.find(scenario, case, "delay", system)
    return percentile_of(summarize(metric.values), name) if metric and metric.values else None


def _ratio_target(
    results: Results, scenario: str, case: str, quantity: str, factor: float, label: str
) -> Verdict:
    emage = _median(results, scenario, case, quantity, EMAGE)
    orthanc = _median(results, scenario, case, quantity, ORTHANC)
    if emage is None or orthanc is None or orthanc == 0:
        return Verdict(label, DASH, None)
    value = emage / orthanc
    return Verdict(
        label, f"{value:.2f}{TIMES} ({number(emage)} vs {number(orthanc)} {quantity})", value >= factor
    )


def _below(value: float | None, limit: float, label: str, unit: str = "ms") -> Verdict:
    if value is None:
        return Verdict(label, DASH, None)
    return Verdict(label, f"{number(value)} {unit}", value < limit)


def targets(results: Results, study_mib: float) -> list[Verdict]:
    """QUALITY.md's performance bars, judged on this run's numbers."""
    verdicts = [
        _ratio_target(
            results, "stow", "1 client", "instances/s", 2.0, f"STOW-RS, 1 client: ≥ 2{TIMES} Orthanc"
        ),
        _ratio_target(
            results, "stow", "4 clients", "instances/s", 2.0, f"STOW-RS, 4 clients: ≥ 2{TIMES} Orthanc"
        ),
        _ratio_target(
            results, "dimse", "storescu, 1 association", "instances/s", 1.5, f"C-STORE: ≥ 1.5{TIMES} Orthanc"
        ),
    ]
    page = next((m.case for m in results.of("qido") if m.case.startswith("page of 100")), "page of 100")
    verdicts.append(
        _below(_latency(results, "qido", page, EMAGE, "p95"), 20, "QIDO-RS page of 100: p95 < 20 ms")
    )
    for case in dict.fromkeys(metric.case for metric in results.of("qido")):
        emage = _latency(results, "qido", case, EMAGE, "p95")
        orthanc = _latency(results, "qido", case, ORTHANC, "p95")
        label = f"QIDO-RS {case}: p95 below Orthanc's"
        if emage is None or orthanc is None:
            verdicts.append(Verdict(label, DASH, None))
        else:
            verdicts.append(Verdict(label, f"{number(emage)} vs {number(orthanc)} ms", emage < orthanc))
    wado = _median(results, "wado", "whole study", "MB/s", EMAGE)
    s3_rates = [
        rate
        for rate in (
            _median(results, "reference", f"GET, {n} in flight", "MB/s", "S3 (SeaweedFS)") for n in (1, 4)
        )
        if rate is not None
    ]
    label = "WADO-RS whole study: ≥ 80 % of the S3 store's GET rate"
    if wado is None or not s3_rates:
        verdicts.append(Verdict(label, DASH, None))
    else:
        best = max(s3_rates)
        verdicts.append(
            Verdict(label, f"{wado / best:.0%} ({number(wado)} vs {number(best)} MB/s)", wado >= 0.8 * best)
        )
    verdicts += [
        _below(
            _latency(results, "wado", "first frame of a slice", EMAGE, "p95"),
            100,
            "Time to first frame: p95 < 100 ms",
        ),
        _below(
            _latency(results, "freshness", "STOW acknowledged → visible in QIDO", EMAGE, "p99"),
            500,
            "STOW → visible in QIDO: p99 < 500 ms",
        ),
        _below(
            _latency(results, "freshness", "consent revoked → access denied", EMAGE, "p99"),
            1000,
            "Consent revoked → denied: p99 < 1 s",
        ),
    ]
    growth = {
        metric.case: metric
        for metric in results.of("memory")
        if metric.system == EMAGE and metric.case in SERVICES and metric.quantity == "RSS peak"
    }
    label = "Memory: every service's RSS flat during the large ingest"
    if not growth:
        verdicts.append(Verdict(label, DASH, None))
    else:
        deltas = {}
        for service, peak in growth.items():
            before = results.find("memory", service, "RSS before", EMAGE)
            if before and before.values:
                deltas[service] = peak.values[-1] - before.values[-1]
        worst = max(deltas, key=lambda name: deltas[name])
        limit = flat_limit_mib(study_mib)
        verdicts.append(
            Verdict(
                label,
                f"largest growth {worst} +{number(deltas[worst])} MiB (limit {limit:.0f})",
                deltas[worst] < limit,
            )
        )
    return verdicts


# --- The document -----------------------------------------------------------------------------------------


def _key_values(values: Mapping[str, str]) -> list[str]:
    return _table(["", ""], [[key, value] for key, value in values.items()])


def render(
    context: Mapping[str, Any],
    results: Results,
    charts: Mapping[str, str],
    *,
    chart_link: Callable[[str], str] = lambda path: path,
) -> str:
    """The Markdown of ``docs/benchmarks.md``. ``context``: scale, machine, versions, command, timing."""
    scale: Mapping[str, Any] = context["scale"]
    study_mib = float(scale["large_ingest_mib"])
    lines = ["# Benchmarks: e-mage side by side with Orthanc", ""]
    if scale["name"] != "full":
        lines += [
            f"> **Reduced-scale trial run** (`BENCH_SCALE={scale['name']}`): a catalog of "
            f"{scale['catalog_studies']:,} studies / "
            f"{scale['catalog_studies'] * scale['instances_per_study']:,} "
            f"instances instead of 100,000 / 1,000,000, a {scale['ct_slices']}-slice CT series instead of "
            "500, a "
            f"{scale['large_ingest_mib']} MiB large ingest instead of 2 GiB, on a machine shared with other "
            "work. It shows that the harness measures what it should and gives first orders of magnitude; "
            "it is not the issue's benchmark. The full run: `make bench` (see *Reproduce*).",
            "",
        ]
    sittings = context.get("sittings") or []
    if len(sittings) > 1:
        lines += [
            f"Run in {len(sittings)} sittings on the same commit, the stack started from empty data for "
            f"each (profile `{context.get('profile', '?')}`); {scale['repetitions']} repetitions of every "
            "scenario, both systems in the same sitting, interleaved (each repetition alternates which "
            "system goes first):",
            "",
            *(
                f"- {sitting.get('started', '?')}, {float(sitting.get('duration_s') or 0) / 60:.0f} min, "
                f"`{sitting.get('command', '?')}`: {', '.join(sitting.get('scenarios') or [])}; load average "
                f"(1, 5, 15 min) at start {sitting.get('load average at start (1, 5, 15 min)', '?')}, at end "
                f"{sitting.get('load average at end (1, 5, 15 min)', '?')}"
                for sitting in sittings
            ),
            "",
        ]
    else:
        lines += [
            f"Run {context.get('started', '?')}, {float(context.get('duration_s', 0)) / 60:.0f} min, "
            f"`{context.get('command', 'make bench')}`; stack profile `{context.get('profile', '?')}`; "
            f"{scale['repetitions']} repetitions of every scenario, both systems in the same run, "
            "interleaved (each repetition alternates which system goes first).",
            "",
        ]
    lines += [
        f"Sizes: a QIDO-RS catalog of {scale['catalog_studies']:,} studies / "
        f"{scale['catalog_studies'] * scale['instances_per_study']:,} instances; a CT series of "
        f"{scale['ct_slices']} slices for STOW-RS, C-STORE and WADO-RS; a {scale['large_ingest_mib']:,} MiB "
        "study for the memory scenario.",
        "",
        "## Machine",
        "",
        *_key_values(context.get("machine", {})),
        "",
        "The benchmark client runs on the same cores as both systems (and, on a shared machine, beside other "
        "work): absolute numbers are this machine's; the ratios are the comparison.",
        "",
        "## Versions",
        "",
        *_key_values(context.get("versions", {})),
        "",
        "## How to read",
        "",
        f"- Rates (instances/s, MB/s): median of the repetitions, (min{DASH}max).",
        "- Latencies and delays: percentiles over all samples (linear interpolation between closest ranks; "
        "with "
        f"few samples a p99 is close to the maximum), min{DASH}max, and the number of samples n.",
        "- e-mage / Orthanc: the ratio of the same statistic. For rates above 1 means e-mage is faster; for "
        "latencies below 1 does.",
        "- e-mage is measured on its public path (the gateway, with a Keycloak token, policy decision and "
        "audit event on every request) unless a row says otherwise; Orthanc on its DICOMweb plugin or DICOM "
        "port with "
        "HTTP Basic credentials.",
        "",
        "## Targets (QUALITY.md)",
        "",
        *_table(
            ["target", "measured", "verdict"],
            [[v.target, v.measured, v.word] for v in targets(results, study_mib)],
        ),
        "",
    ]
    if scale["name"] != "full":
        lines += [
            "At reduced scale the verdicts are indicative: the QIDO-RS ones in particular need the full "
            "catalog.",
            "",
        ]
    for info in SCENARIOS:
        metrics = results.of(info.key)
        failure = results.failures.get(info.key)
        if not metrics and not failure and info.key not in results.notes:
            continue
        lines += [f"## {info.title}", ""]
        lines += [f"- {note}" for note in results.notes.get(info.key, [])]
        if results.notes.get(info.key):
            lines.append("")
        if failure:
            lines += [f"**The scenario did not complete:** `{failure}`", ""]
        rates = [metric for metric in metrics if not metric.is_latency]
        latencies = [metric for metric in metrics if metric.is_latency]
        if info.key == "memory":
            lines += [*memory_table(metrics, study_mib), ""]
        else:
            if rates:
                lines += [*rate_table(rates), ""]
            if latencies:
                lines += [*latency_table(latencies, info.latency_percentiles), ""]
        if results.facts.get(info.key):
            lines += [*_table(["", ""], [[name, value] for name, value in results.facts[info.key]]), ""]
        if info.key in charts:
            lines += [f"![{info.title}]({chart_link(charts[info.key])})", ""]
    lines += [
        "## Reproduce",
        "",
        "```sh",
        "make bench                       # the issue's scale: 100,000 studies / 1,000,000 instances, "
        "2 GiB ingest",
        "BENCH_SCALE=small make bench     # this reduced-scale trial",
        "BENCH_REPETITIONS=7 make bench   # more repetitions (at least 5)",
        ".venv/bin/python -m bench --render docs/benchmarks/results.json   # re-render this page",
        "```",
        "",
        "Raw samples of this run: `docs/benchmarks/results.json`. What each scenario sends, and why: "
        "`bench/README.md`. Where the time goes (profiles) and what would close each target not met: "
        "`docs/performance.md`.",
        "",
    ]
    return "\n".join(lines)
