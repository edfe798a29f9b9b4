"""Percentiles and tables of the benchmark reports (bench/lib/stats.py, bench/lib/report.py)."""

from __future__ import annotations

import math

import pytest

from bench.lib.report import table
from bench.lib.stats import Summary, fmt_ms, percentile


def test_percentile_interpolates_linearly() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(list(range(101)), 99) == 99.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan_and_bad_q_raises() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary() -> None:
    s = Summary.of([0.001 * i for i in range(1, 101)]).scaled(1000)
    assert (s.n, s.max) == (100, pytest.approx(100.0))
    assert s.mean == pytest.approx(50.5)
    assert s.p50 == pytest.approx(50.5)
    assert s.p99 == pytest.approx(99.01)
    assert math.isnan(Summary.of([]).p99)
    assert fmt_ms(math.nan) == "—"
    assert fmt_ms(1234.56) == "1,234.6"


def test_table_right_aligns_numeric_columns() -> None:
    text = table(["name", "p99 ms", "ratio"], [["a", "1,234", "1.02x"], ["b", "—", "0.9x"]])
    lines = text.splitlines()
    assert lines[0] == "| name | p99 ms | ratio |"
    assert lines[1] == "| --- | ---: | ---: |"
    assert lines[3] == "| b | — | 0.9x |"
