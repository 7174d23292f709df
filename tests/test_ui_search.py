"""Headless: the dashboard's search panel runs the same search as `workbench search`, shows its
front, restores a point with one click, and can be cancelled."""
from __future__ import annotations

import re

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from toys import tiny_app  # noqa: E402


@pytest.fixture(scope="module")
def app(tiny_conformer):
    wb = tiny_app(tiny_conformer, 4)
    yield wb
    wb.session.cancel()


def test_search_panel_shows_the_front_and_restores_a_point(app):
    from workbench.search import EvaluatorSpec, SearchConfig, search
    panel = app.sensitivity.search
    panel.trials.value = 4
    panel.max_dwer.value = 0.0
    panel.start()
    panel.wait(1800)
    assert app.errors.errors == [], app.errors.text
    r = panel.result
    assert r is not None and r.complete and len(r.trials) == 4
    assert re.search(r"data-front='(\d+)'", panel.status.value).group(1) == str(len(r.front))
    assert len(panel.front.options) == len(r.front) >= 1
    # The same search from the core API gives the same front (same seed, same evaluator).
    same = search(EvaluatorSpec(device="rpi5", audio_seconds=2.0, model=app.core.model,
                                eval_set=app.session.eval_set),
                  SearchConfig(trials=4, batch=4), evaluator=panel_evaluator(app))
    assert [(t.number, t.best["size_bytes"]) for t in same.front] == \
           [(t.number, t.best["size_bytes"]) for t in r.front]
    # One click restores the point's plan (an undoable edit).
    last = len(r.front) - 1
    panel.front.value = last
    panel.restore_button.click()
    expected = r.space.plan(r.front[last].params)
    assert app.plan == expected


def panel_evaluator(app):
    from workbench.search import PlanEvaluator
    return PlanEvaluator(app.core.model, app.session, "rpi5", 2.0)


def test_search_panel_cancel_keeps_finished_trials(app):
    panel = app.sensitivity.search
    panel.trials.value = 8
    # the cancel button (Job.cancel) pressed once the first trials are in
    panel.progress.observe(lambda c: c["new"] >= 1 and panel.cancel.click(), names=["value"])
    panel.start()
    panel.wait(1800)
    r = panel.result
    assert r is not None and not r.complete
    assert "cancelled" in panel.status.value
    assert not panel.run.disabled and panel.cancel.disabled
