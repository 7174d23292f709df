"""Predict-then-run for the lessons: a box to type a guess into *before* the cell that computes
the answer, then the answer next to the guess and the gap.

    guess = Predict("How many times faster is 50 % neuron pruning than dense on the Pi 5?", "x")
    ...                                   # the cell that computes `speedup`
    guess.reveal(speedup)                 # locks the box; shows guess, answer and the gap

Thin widget layer over `workbench.lessons.predict.Gap` (the wording and arithmetic live there).
Run headless, nobody types: the reveal says "no guess recorded" and the lesson goes on.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
from IPython.display import display

from workbench.lessons.predict import Gap


class Predict:
    """One prediction: a question, a text box for a number, and a reveal after the run."""

    def __init__(self, question: str, unit: str = "", guess: float | None = None,
                 show: bool = True) -> None:
        self.question, self.unit = question, unit
        self.box = widgets.Text(value="" if guess is None else str(guess),
                                placeholder="type a number, then run the next cells",
                                description="your guess:",
                                style={"description_width": "initial"})
        self.box.add_class("wb-predict-guess")
        self.answer_html = widgets.HTML()
        self.answer_html.add_class("wb-predict-answer")
        self.widget = widgets.VBox([widgets.HTML(f"<b>Predict first:</b> {html.escape(question)}"
                                                 + (f" ({html.escape(unit)})" if unit else "")),
                                    self.box, self.answer_html])
        self.widget.add_class("wb-predict")
        if show:
            display(self.widget)

    def guess(self) -> float | None:
        """The number typed in, or None when the box is empty or not a number."""
        text = self.box.value.strip().replace(",", "")
        try:
            return float(text) if text else None
        except ValueError:
            return None

    def reveal(self, answer: float) -> Gap:
        """Lock the guess and show it against `answer`; returns the Gap (printed as text too)."""
        gap = Gap(self.question, self.guess(), float(answer), self.unit)
        self.box.disabled = True
        self.answer_html.value = "<pre>" + html.escape(gap.text()) + "</pre>"
        return gap
