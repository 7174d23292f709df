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


#: What the page says when Voila's cell failed (its traceback is hidden unless --show_tracebacks).
_APP_OR_ERROR_JS = """(sel) => {
  if (document.querySelector(sel)) return 'app';
  const text = document.body ? document.body.innerText : '';
  if (text.includes('There was an error when executing cell')) return 'cell error';
  return false;
}"""


def open_voila_app(page, server, app: str = ".wb-app", timeout_ms: int = 600_000) -> None:
    """Open a Voila server's page and wait until the widget `app` is drawn.

    Voila streams the page while the kernel runs the notebook, so the navigation is done at its
    first byte (`commit`); then the app or Voila's cell-error text is awaited. A page that stays
    at "Loading widget..." means the widget manager never finished loading the kernel's widget
    states (workbench/ui/live.py: a widget closed while the page loads). Failing
    says which of these it was, with the end of the server log."""
    page.goto(f"{server.url}/", wait_until="commit", timeout=timeout_ms)
    try:
        got = page.wait_for_function(_APP_OR_ERROR_JS, arg=app, timeout=timeout_ms).json_value()
    except Exception as err:
        text = page.evaluate("() => document.body ? document.body.innerText : ''")
        raise AssertionError(f"{app} never appeared; the page says {text[:300]!r}; server log:\n"
                             f"{server.log.read_text()[-2000:]}") from err
    assert got == "app", f"the notebook failed in Voila; server log:\n{server.log.read_text()[-3000:]}"
