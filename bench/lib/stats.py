"""Summaries of latency samples: percentiles the way the tables print them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default); NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(values),
            sum(values) / len(values),
            percentile(values, 50),
            percentile(values, 95),
            percentile(values, 99),
            max(values),
        )

    def scaled(self, factor: float) -> Summary:
        """The same summary in other units (e.g. seconds to milliseconds)."""
        return Summary(
            self.n,
            self.mean * factor,
            self.p50 * factor,
            self.p95 * factor,
            self.p99 * factor,
            self.max * factor,
        )


def fmt_ms(value: float, digits: int = 1) -> str:
    """Milliseconds for a table cell; an em dash for NaN."""
    if math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}"
