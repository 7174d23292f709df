"""Checks of lesson 01 (MACs of a block)."""
from __future__ import annotations

from collections.abc import Callable

from workbench.lessons import solutions as ref
from workbench.lessons.checks.core import CheckResult, _run


MAC_CASES = [(100, 384, 1536), (1500, 384, 1536), (7, 8, 32)]


def check_block_macs(fn: Callable[[int, int, int], dict]) -> CheckResult:
    """fn(frames, d_model, d_ff) -> {"projections", "scores", "ffn"} MACs of one block."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for case in MAC_CASES:
            got, want = f(*case), ref.block_macs(*case)
            if not isinstance(got, dict) or set(got) != set(want):
                return [f"block_macs{case} should return a dict with keys {sorted(want)}, "
                        f"got {got!r}"]
            for key in want:
                if int(got[key]) != want[key]:
                    problems.append(f"block_macs{case}[{key!r}] = {got[key]:,}, expected "
                                    f"{want[key]:,} (ratio {got[key] / want[key]:.3g})")
        return problems
    return _run("block_macs", fn, ref.block_macs, compare)


def check_crossover_frames(fn: Callable[[int, int], int]) -> CheckResult:
    """fn(d_model, d_ff) -> smallest T where the scores' MACs exceed the FFN's."""
    def compare(f: Callable) -> list[str]:
        problems = []
        for d, dff in ((384, 1536), (512, 2048), (64, 100)):
            got, want = f(d, dff), ref.crossover_frames(d, dff)
            if got != want:
                macs = ref.block_macs(int(got), d, dff) if isinstance(got, int) and got > 0 \
                    else None
                problems.append(f"crossover_frames({d}, {dff}) = {got!r}, expected {want}"
                                + (f" (at T = {got}: scores {macs['scores']:,} vs FFN "
                                   f"{macs['ffn']:,} MACs)" if macs else ""))
        return problems
    return _run("crossover_frames", fn, ref.crossover_frames, compare)
