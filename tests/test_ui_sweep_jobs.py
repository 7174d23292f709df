"""Headless: the sensitivity tab's sweep runs as a job of the engine's queue (no thread of its
own, no sleeps), reports progress, can be cancelled, and a slider's WER still comes through."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from workbench.engine.jobs import JOBS  # noqa: E402
from workbench.evaluate import EvalSet  # noqa: E402
from workbench.ui import Workbench  # noqa: E402

WAIT = 900


def _eval_set(n: int = 3) -> EvalSet:
    gen = torch.Generator().manual_seed(0)
    feats = tuple(torch.randn(80, 120 + 40 * i, generator=gen) for i in range(n))
    return EvalSet("random", Path("/nonexistent/manifest.jsonl"),
                   tuple(f"u{i}" for i in range(n)), ("hello world", "press one", "thank you")[:n],
                   feats)


@pytest.fixture(scope="module")
def app(tiny_conformer):
    from workbench.session import Session
    session = Session(tiny_conformer, _eval_set(), quick_utterances=2)
    wb = Workbench(tiny_conformer, session.eval_set, device="rpi5", audio_seconds=2.0,
                   session=session)
    wb.wait()
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
