"""The statistics the report is built on: percentiles, medians, ranges, ratios."""

from __future__ import annotations

import pytest

from bench.stats import median, percentile, ratio, summarize


def test_median_of_odd_and_even_counts() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_percentiles_interpolate_between_closest_ranks() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 99) == pytest.approx(9.91)


def test_percentile_of_one_sample_is_that_sample() -> None:
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_summary_has_median_range_and_tail() -> None:
    summary = summarize([10.0, 30.0, 20.0, 50.0, 40.0])
    assert (summary.count, summary.median, summary.minimum, summary.maximum) == (5, 30.0, 10.0, 50.0)
    assert summary.p95 == pytest.approx(48.0)
    assert summary.p99 == pytest.approx(49.6)


def test_ratio_without_a_denominator_is_none() -> None:
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(1.0, 0.0) is None
