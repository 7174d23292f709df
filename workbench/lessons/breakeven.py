"""Lesson 09's crossover: from which audio length on a swap runs faster than the original, read
off its speed-up at a few lengths (measured in ONNX Runtime, or simulated by the latency model).

    c = crossover([1, 2, 5, 10], [0.8, 0.9, 1.1, 1.5])
    c.seconds     # 3.5: where the straight line from (2 s, 0.9x) to (5 s, 1.1x) reaches 1x
    str(c)        # '3.5 s (between 2 and 5 s)'

Pure: no model run and no timing, so it is tested on synthetic speed-ups with exact answers
(tests/test_lessons_breakeven.py). Speed-up = original time / swapped time; "faster" is > 1.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from workbench.errors import ArgumentError


@dataclass(frozen=True)
class Crossover:
    """Where a speed-up curve over audio lengths (s, ascending) crosses 1x.

    seconds: the shortest length from which on the swap is faster at every longer length
    measured, the speed-up interpolated linearly between the two measured lengths around the
    crossing (`between`). When the swap is faster at every measured length, the shortest one,
    an upper bound (`between` is None); None when it is not faster at the longest length.
    crossings: every length where the curve crosses 1x, ascending (a noisy or non-monotonic
    curve, e.g. one that pays at short lengths only, crosses more than once).
    """

    seconds: float | None
    between: tuple[float, float] | None
    lengths: tuple[float, ...]
    speedups: tuple[float, ...]
    crossings: tuple[float, ...]

    @property
    def faster_everywhere(self) -> bool:
        return all(s > 1 for s in self.speedups)

    def __str__(self) -> str:
        if self.seconds is None:
            text = f"none up to {self.lengths[-1]:g} s (slower at the longest length)"
        elif self.between is None:
            text = f"<= {self.seconds:g} s (faster at every length timed)"
        else:
            lo, hi = self.between
            text = f"{self.seconds:.1f} s (between {lo:g} and {hi:g} s)"
        others = [c for c in self.crossings if c != self.seconds]
        if others:
            text += "; also crosses 1x at " + ", ".join(f"{c:.1f} s" for c in others)
        return text


def _crossing(l0: float, s0: float, l1: float, s1: float) -> float:
    """The length between (l0, s0) and (l1, s1) where the straight line between them is 1x."""
    return l0 + (1.0 - s0) * (l1 - l0) / (s1 - s0)


def crossover(lengths: Sequence[float], speedups: Sequence[float]) -> Crossover:
    """The Crossover of speed-ups `speedups[i]` at audio lengths `lengths[i]` (seconds, strictly
    ascending, > 0; speed-ups finite and > 0, at least one point)."""
    ls = tuple(float(x) for x in lengths)
    ss = tuple(float(x) for x in speedups)
    if not ls or len(ls) != len(ss):
        raise ArgumentError(f"crossover: lengths and speedups need the same number (>= 1) of "
                            f"values; got {len(ls)} and {len(ss)}.")
    if not all(math.isfinite(x) and x > 0 for x in ls + ss):
        raise ArgumentError("crossover: lengths (s) and speed-ups must be finite and > 0; got "
                            f"lengths {list(ls)}, speed-ups {list(ss)}.")
    if any(b <= a for a, b in zip(ls, ls[1:])):
        raise ArgumentError(f"crossover: lengths must be strictly ascending; got {list(ls)}.")
    faster = [s > 1 for s in ss]
    crossings = tuple(_crossing(ls[i], ss[i], ls[i + 1], ss[i + 1])
                      for i in range(len(ls) - 1) if faster[i] != faster[i + 1])
    if not faster[-1]:
        return Crossover(None, None, ls, ss, crossings)
    last_slow = max((i for i, f in enumerate(faster) if not f), default=None)
    if last_slow is None:
        return Crossover(ls[0], None, ls, ss, crossings)
    at = _crossing(ls[last_slow], ss[last_slow], ls[last_slow + 1], ss[last_slow + 1])
    return Crossover(at, (ls[last_slow], ls[last_slow + 1]), ls, ss, crossings)
