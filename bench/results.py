"""What a run measured: samples per (scenario, case, quantity, system), notes, facts and traces.

Plain data, serialised to JSON beside the report so that it can be rendered again (``python -m bench
--render results.json``) and compared across runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

EMAGE = "e-mage"
ORTHANC = "Orthanc"


class Better(StrEnum):
    HIGHER = "higher"
    LOWER = "lower"


@dataclass
class Metric:
    """The samples of one quantity, for one system, in one case of a scenario (e.g. STOW, 4 clients)."""

    scenario: str
    case: str
    quantity: str
    unit: str
    system: str
    better: Better
    values: list[float] = field(default_factory=list)

    @property
    def is_latency(self) -> bool:
        return self.better is Better.LOWER


@dataclass
class Results:
    """Everything a run records, in the order it was recorded."""

    metrics: list[Metric] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    """Per scenario: how it was measured, through which path (rendered as a list)."""
    facts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """Per scenario: side numbers (bulk-load rates, result counts, sizes), rendered as a table."""
    failures: dict[str, str] = field(default_factory=dict)
    """Per scenario: why it could not complete (the report says so instead of leaving it out)."""
    traces: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    """Per scenario: named time series of (seconds, value), e.g. RSS of each process during an ingest."""

    def record(
        self,
        scenario: str,
        case: str,
        quantity: str,
        unit: str,
        system: str,
        value: float,
        *,
        better: Better = Better.HIGHER,
    ) -> None:
        self.metric(scenario, case, quantity, unit, system, better).values.append(value)

    def metric(
        self, scenario: str, case: str, quantity: str, unit: str, system: str, better: Better
    ) -> Metric:
        for metric in self.metrics:
            if (metric.scenario, metric.case, metric.quantity, metric.system) == (
                scenario,
                case,
                quantity,
                system,
            ):
                return metric
        metric = Metric(scenario, case, quantity, unit, system, better)
        self.metrics.append(metric)
        return metric

    def find(self, scenario: str, case: str, quantity: str, system: str) -> Metric | None:
        for metric in self.metrics:
            if (metric.scenario, metric.case, metric.quantity, metric.system) == (
                scenario,
                case,
                quantity,
                system,
            ):
                return metric
        return None

    def of(self, scenario: str) -> list[Metric]:
        return [metric for metric in self.metrics if metric.scenario == scenario and metric.values]

    def note(self, scenario: str, text: str) -> None:
        self.notes.setdefault(scenario, []).append(text)

    def fact(self, scenario: str, name: str, value: str) -> None:
        self.facts.setdefault(scenario, []).append((name, value))

    def trace(self, scenario: str, name: str, points: list[tuple[float, float]]) -> None:
        self.traces.setdefault(scenario, {})[name] = points

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        return cls(
            metrics=[
                Metric(**{**metric, "better": Better(metric["better"])}) for metric in data.get("metrics", [])
            ],
            notes={key: list(value) for key, value in data.get("notes", {}).items()},
            facts={
                key: [(name, text) for name, text in value] for key, value in data.get("facts", {}).items()
            },
            failures=dict(data.get("failures", {})),
            traces={
                scenario: {name: [(t, v) for t, v in points] for name, points in series.items()}
                for scenario, series in data.get("traces", {}).items()
            },
        )

    def save(self, path: Path, context: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"context": context, "results": self.to_json()}, indent=1) + "\n")


def load(path: Path) -> tuple[dict[str, Any], Results]:
    """The context (machine, versions, scale) and the results a run saved with :meth:`Results.save`."""
    data = json.loads(path.read_text())
    return data["context"], Results.from_json(data["results"])
