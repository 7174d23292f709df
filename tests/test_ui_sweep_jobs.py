"""Headless: the sensitivity tab's sweep runs as a job of the engine's queue (no thread of its
own, no sleeps), reports progress, can be cancelled, and a slider's WER still comes through."""
from __future__ import annotations


import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from workbench.engine.jobs import JOBS  # noqa: E402
from toys import tiny_app  # noqa: E402

WAIT = 900


@pytest.fixture(scope="module")
def app(tiny_conformer):
    wb = tiny_app(tiny_conformer, 3)
    yield wb
    wb.session.cancel()


def test_sweep_runs_as_a_job_and_reports_progress(app):
    tab = app.sensitivity
    tab.sparsities.value, tab.bits.value = "0.5", "4"
    tab.start()
    assert tab._job.name == "sweep" and tab._job.priority < 30
    tab.wait(WAIT)
    assert tab._job.state == "done"
    assert tab.table is not None and tab.table.complete and tab.table.cells
    assert tab.progress.value == tab.progress.max == len(tab.table.cells)
    assert tab.status.value.startswith("done")
    assert not tab.run.disabled and tab.cancel.disabled


def test_a_cancelled_sweep_stops_and_the_queue_serves_on(app):
    tab = app.sensitivity
    tab.sparsities.value, tab.bits.value = "0.25, 0.5, 0.75", "8, 4, 2"
    tab.start()
    tab._job.cancel()
    tab.wait(WAIT)
    assert tab._job.state == "cancelled"
    assert tab.status.value.startswith("cancelled")
    assert not tab.run.disabled and tab.cancel.disabled
    after = JOBS.submit(lambda job: "served", name="after")
    assert after.wait(WAIT) and after.result == "served"
