"""Order statistics of repeated measurements: medians with their range, and latency percentiles.

Pure functions over plain floats, so that the report says exactly how each number was computed.
Percentiles interpolate linearly between closest ranks (Hyndman & Fan type 7, numpy's default ``linear``):
with few samples a p99 is close to the maximum, which the report says beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 ≤ q ≤ 100) of ``values``, linearly interpolated between closest ranks."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass(frozen=True)
class Summary:
    """The distribution of one measured quantity: ``count`` samples."""

    count: int
    median: float
    minimum: float
    maximum: float
    p95: float
    p99: float


def summarize(values: Sequence[float]) -> Summary:
    return Summary(
        count=len(values),
        median=median(values),
        minimum=min(values),
        maximum=max(values),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
    )


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, None when the denominator is zero (nothing to compare with)."""
    if denominator == 0:
        return None
    return numerator / denominator
