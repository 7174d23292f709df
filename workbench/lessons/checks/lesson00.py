"""Checks of lesson 00 (word error rate)."""
from __future__ import annotations

import math
from collections.abc import Callable

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _run


WER_CASES = [("turn on the light", "turn on the light"),
             ("turn on the kitchen light", "turn on the light"),             # 1 deletion
             ("set a timer", "set the timer please"),                        # 1 sub + 1 ins
             ("call mom", "call tom now"),                                   # 1 sub + 1 ins
             ("yes", "no no no")]                                            # WER 3 > 1


def check_wer(fn: Callable[[str, str], float]) -> CheckResult:
    """fn(reference, hypothesis) -> WER = (S + D + I) / N words."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for r, h in WER_CASES:
            got, want = f(r, h), ref.wer(r, h)
            if not isinstance(got, (int, float)) or not math.isclose(got, want, abs_tol=1e-9):
                hint = (" (insertions count too: WER has no upper bound of 1)" if want > 1 else
                        " (count substitutions, deletions and insertions; divide by the number "
                        "of reference words)")
                problems.append(f"wer({r!r}, {h!r}) = {got!r}, expected {want:.4g}{hint}")
        return problems
    return _run("wer", fn, ref.wer, compare)
