"""Checks of lesson 11 (first-partial latency)."""
from __future__ import annotations

import math
from collections.abc import Callable

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _run


def check_first_partial_ms(fn: Callable[[float, float, float, float], float]) -> CheckResult:
    """fn(chunk_s, lookahead_s, stem_s, compute_ms) -> ms until the first partial transcript."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for args in ((0.5, 0.0, 0.02, 41.0), (1.0, 0.25, 0.02, 80.0)):
            got, want = float(f(*args)), ref.first_partial_ms(*args)
            if not math.isclose(got, want, rel_tol=1e-9):
                problems.append(f"first_partial_ms{args} = {got:.4g}, expected {want:.4g} "
                                f"(seconds of audio to wait for, in ms, plus the compute)")
        return problems
    return _run("first_partial_ms", fn, ref.first_partial_ms, compare)
