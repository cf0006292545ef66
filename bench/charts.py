"""One PNG chart per scenario (matplotlib, Agg backend), beside ``docs/benchmarks.md``.

Rates: a bar per system and case at the median, the whisker spanning min-max of the repetitions. Latencies:
a bar at p50, the whisker up to p95 (log scale when the systems differ by more than 20x). Memory: the RSS of
every process over the ingest.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from bench.report import SCENARIOS, SERVICES
from bench.results import EMAGE, ORTHANC, Metric, Results
from bench.stats import summarize

COLOURS = {EMAGE: "#1f6fb2", ORTHANC: "#e07b39"}
OTHER_COLOURS = ("#6a9f58", "#9467bd", "#8c564b", "#7f7f7f")


def colours_of(systems: Sequence[str]) -> dict[str, str]:
    """A colour per system, e-mage and Orthanc always the same, the others in order of appearance."""
    others = [system for system in systems if system not in COLOURS]
    return {
        system: COLOURS.get(system) or OTHER_COLOURS[others.index(system) % len(OTHER_COLOURS)]
        for system in systems
    }


def _grouped(axes: Axes, metrics: Sequence[Metric], colours: dict[str, str], *, latency: bool) -> None:
    """Bars of each case side by side (only the systems measured in that case), with their whiskers."""
    cases = list(dict.fromkeys(metric.case for metric in metrics))
    labelled: set[str] = set()
    values: list[float] = []
    for position, case in enumerate(cases):
        present = [metric for metric in metrics if metric.case == case and metric.values]
        width = 0.8 / max(1, len(present))
        for index, metric in enumerate(present):
            summary = summarize(metric.values)
            low, high = (summary.median, summary.p95) if latency else (summary.minimum, summary.maximum)
            axes.bar(
                position + (index - (len(present) - 1) / 2) * width,
                summary.median,
                width,
                yerr=[[summary.median - low], [high - summary.median]],
                capsize=3,
                color=colours[metric.system],
                label=None if metric.system in labelled else metric.system,
            )
            labelled.add(metric.system)
            values += [summary.median, high]
    axes.set_xticks(range(len(cases)), [_wrap(case) for case in cases], fontsize=7)
    positive = [value for value in values if value > 0]
    if positive and max(positive) / min(positive) > 20:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
        axes.tick_params(axis="y", which="minor", labelsize=6)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)


def _minor_label(value: float, _: int) -> str:
    """Label the 2s and 5s between the powers of ten of a log axis, leave the others bare."""
    leading = f"{value:.0e}"[0]
    return f"{value:g}" if leading in "25" else ""


def _wrap(text: str, width: int = 14) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)


def _scenario_chart(results: Results, key: str, title: str, path: Path) -> bool:
    metrics = results.of(key)
    if not metrics:
        return False
    panels: list[tuple[str, list[Metric], bool]] = []
    for quantity in dict.fromkeys(metric.quantity for metric in metrics if not metric.is_latency):
        chosen = [metric for metric in metrics if metric.quantity == quantity and not metric.is_latency]
        panels.append((f"{quantity} (median, min-max)", chosen, False))
    latencies = [metric for metric in metrics if metric.is_latency]
    if latencies:
        panels.append(("ms (p50, whisker to p95)", latencies, True))
    colours = colours_of(list(dict.fromkeys(metric.system for metric in metrics)))
    widths = [max(4.5, 1.4 * len({metric.case for metric in chosen})) for _, chosen, _ in panels]
    figure, axes_list = plt.subplots(
        1, len(panels), figsize=(sum(widths), 4.4), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for axes, (label, chosen, latency) in zip(axes_list[0], panels, strict=True):
        _grouped(axes, chosen, colours, latency=latency)
        axes.set_ylabel(label)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _memory_chart(results: Results, path: Path) -> bool:
    traces = results.traces.get("memory", {})
    if not traces:
        return False
    systems = list(dict.fromkeys(name.split(": ", 1)[0] for name in traces))
    figure, axes_list = plt.subplots(1, len(systems), figsize=(6 * len(systems), 4.2), squeeze=False)
    for axes, system in zip(axes_list[0], systems, strict=True):
        for name, points in traces.items():
            owner, process = name.split(": ", 1)
            if owner != system or not points:
                continue
            style = "-" if process in SERVICES or owner != EMAGE else ":"
            axes.plot([t for t, _ in points], [v for _, v in points], style, label=process)
        axes.set_title(system)
        axes.set_xlabel("seconds")
        axes.set_ylabel("RSS (MiB)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle("RSS during one large STOW-RS ingest (dotted: infrastructure)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def warm_up() -> None:
    """Load the backend and the fonts now (a tiny figure drawn to memory)."""
    figure = plt.figure(figsize=(1, 1))
    figure.text(0.5, 0.5, "e-mage 0123456789")
    figure.savefig(io.BytesIO(), format="png")
    plt.close(figure)


def render(results: Results, folder: Path) -> dict[str, Path]:
    """Write ``<scenario>.png`` under ``folder`` for every scenario with data; return them by scenario."""
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for info in SCENARIOS:
        path = folder / f"{info.key}.png"
        if info.key == "memory":
            drawn = _memory_chart(results, path)
        else:
            drawn = _scenario_chart(results, info.key, info.title, path)
        if drawn:
            written[info.key] = path
    return written
