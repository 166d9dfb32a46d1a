"""Stability rates: the one place a count of stable structures becomes a rate, for the summary, the
leaderboard, the analysis functions and validation alike, so a rate means the same thing everywhere.

The published rate is stable / relaxed (``records.is_relaxed``, as the published script counts);
``records.counts`` does the counting.
"""

from __future__ import annotations

import math

from phononbench.records import Col

Z_95 = 1.959963984540054


def rate(n_stable: int, n: int) -> float:
    """``n_stable / n``; NaN where there is nothing to divide by (never 0, which would read as a measurement)."""
    return n_stable / n if n else float("nan")


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_columns(n_stable: int, n_relaxed: int) -> dict:
    """The rate's columns: counts, rate and its 95% Wilson interval."""
    low, high = wilson_interval(n_stable, n_relaxed)
    return {Col.N_RELAXED: n_relaxed, Col.N_STABLE: n_stable, Col.STABILITY_RATE: rate(n_stable, n_relaxed),
            Col.CI_LOW: low, Col.CI_HIGH: high}
