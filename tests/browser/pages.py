"""Pieces the browser tests share (not a test module; imported as `from pages import ...`)."""
from __future__ import annotations

#: True once the WER readout shows a full-set result for a plan other than `prev` (the
#: readout's data-plan attribute is the plan key; data-kind is "quick" or "full").
WER_DONE_JS = """(prev) => {
  const el = document.querySelector('.wb-wer .wb-num');
  return el && el.dataset.kind === 'full' && el.dataset.plan !== prev;
}"""


def one_cell_notebook(cell_id: str, source: list[str]) -> dict:
    """An nbformat-4 notebook of one code cell (what Voila renders for a browser test)."""
    return {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {},
                       "outputs": [], "id": cell_id, "source": source}],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                        "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}
