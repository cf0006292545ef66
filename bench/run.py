"""What every scenario works with: the running systems, the scale, the results, the data factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.config import Scale
from bench.data import SeriesFactory, UploadedSeries, ct_template
from bench.environment import BenchStack
from bench.results import Results


@dataclass
class Run:
    systems: BenchStack
    scale: Scale
    results: Results
    work: Path
    _series: SeriesFactory | None = None
    stored_ct: dict[str, UploadedSeries] = field(default_factory=dict)
    """System → a CT series it holds (stored by STOW-RS), retrieved by the WADO-RS scenario."""

    def series(self) -> SeriesFactory:
        if self._series is None:
            self._series = SeriesFactory(ct_template(self.scale.ct_slices, self.work / "data"))
        return self._series

    def scratch(self, name: str) -> Path:
        path = self.work / "tmp" / name
        path.mkdir(parents=True, exist_ok=True)
        return path
