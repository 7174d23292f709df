"""Lesson 08 (capstone) check: the mixed-precision rule."""
from __future__ import annotations

from collections.abc import Callable

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _run


def check_bits_by_role(fn: Callable[[dict, float], dict]) -> CheckResult:
    """fn(delta_wer_at_4_bits, tolerance) -> {role: 4 or 8}."""
    def compare(f: Callable) -> list[str]:
        problems = []
        cases = [({"front-end": 0.03, "attention": 0.004, "ffn": 0.01, "head": 0.0}, 0.01),
                 ({"attention": -0.002, "ffn": 0.2}, 0.0), ({"ffn": 0.05}, 0.1)]
        for deltas, tol in cases:
            got, want = f(dict(deltas), tol), ref.bits_by_role(deltas, tol)
            if not isinstance(got, dict) or set(got) != set(want):
                return [f"return one entry per role {sorted(want)}, got {got!r}"]
            for role in want:
                if got[role] != want[role]:
                    problems.append(f"tolerance {tol}: {role} (ΔWER {deltas[role]:+.3f} at 4 bits) "
                                    f"-> {got[role]}, expected {want[role]} (4 bits when ΔWER <= "
                                    f"tolerance, the boundary included)")
        return problems
    return _run("bits_by_role", fn, ref.bits_by_role, compare)
