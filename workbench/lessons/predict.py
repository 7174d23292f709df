"""Predict-then-run, the pure part: how far a learner's guess was from the computed answer.

The widget that records the guess lives in `workbench.ui.predict` (imported by notebooks only);
this module has no widget so the gap and its wording are testable without ipywidgets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Gap:
    """A guess against the answer. `ratio` = guess / answer (None when either is 0)."""

    question: str
    guess: float | None
    answer: float
    unit: str = ""

    @property
    def error(self) -> float | None:
        return None if self.guess is None else self.guess - self.answer

    @property
    def ratio(self) -> float | None:
        if self.guess is None or self.answer == 0 or self.guess == 0:
            return None
        return self.guess / self.answer

    def text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.guess is None:
            return (f"{self.question}\n  answer: {self.answer:.4g}{unit} (no guess recorded: "
                    f"next time, type one in before running the cell)")
        line = f"{self.question}\n  your guess {self.guess:.4g}{unit}, answer {self.answer:.4g}{unit}"
        if self.ratio is not None:
            factor = max(self.ratio, 1 / self.ratio) if self.ratio > 0 else math.inf
            verdict = ("within 10 %: well predicted" if factor <= 1.1 else
                       f"off by a factor of {factor:.3g}" if math.isfinite(factor) else
                       "wrong sign")
            line += f": {verdict}"
        else:
            line += f": off by {abs(self.error):.4g}{unit}"
        return line

    def __repr__(self) -> str:
        return self.text()
