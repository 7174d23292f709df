"""Statistics the benchmarks share."""
from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile q in [0, 1] of values (nan for no values)."""
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)
