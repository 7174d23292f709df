"""The Export tab's ONNX export is a job of the engine's queue (no browser): it holds RUN_LOCK
while it runs, reports its stage, and its cancel button (Job.cancel) stops it before the next
stage with nothing written (docs/architecture.md, "The engine: background work").

The model is the tiny untrained Conformer-CTC and the eval set six random-feature utterances, as
in tests/test_ui_app.py. Cancellation is made deterministic without sleeps: the test clicks
"cancel" from an observer of the status widget, which runs in the job's thread when the job
reports a stage.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")
pytest.importorskip("onnxruntime")

from workbench.compress import presets  # noqa: E402
from workbench.engine.jobs import RUN_LOCK, USER  # noqa: E402
from workbench.export.apply import STAGES  # noqa: E402
from workbench.ui import Workbench  # noqa: E402
from toys import random_eval_set  # noqa: E402


@pytest.fixture(scope="module")
def session(tiny_conformer):
    from workbench.engine.session import Session
    return Session(tiny_conformer, random_eval_set(), quick_utterances=3)


@pytest.fixture()
def wb(tiny_conformer, session):
    app = Workbench(tiny_conformer, session.eval_set, device="rpi4", audio_seconds=4.0,
                    session=session)
    app.set_plan(presets.int8_everywhere())
    app.wait()
    yield app
    app.session.cancel()


def _record_stages(tab, cancel_at: str | None = None) -> list[tuple[str, bool]]:
    """(stage, RUN_LOCK held) for each stage the export reports; click cancel at `cancel_at`."""
    seen: list[tuple[str, bool]] = []

    def on_status(change) -> None:
        for stage in STAGES:
            if change["new"].startswith(f"exporting: {stage} "):
                seen.append((stage, RUN_LOCK.locked()))
                if stage == cancel_at:
                    tab.cancel_button.click()

    tab.onnx_status.observe(on_status, names="value")
    return seen


def test_export_job_holds_the_run_lock_and_reports_its_stages(wb, tmp_path):
    tab = wb.export
    out = tmp_path / "export"
    tab.out_dir.value = str(out)
    seen = _record_stages(tab)
    job = tab.start_export()
    assert tab.onnx.disabled and not tab.cancel_button.disabled
    assert job.wait(600), "the export job never finished (hang guard)"
    assert wb.errors.errors == [], wb.errors.errors[-1].traceback if wb.errors.errors else ""
    assert job.state == "done"
    stages = [s for s, _ in seen]
    # every stage, in order, but those of a calibration set (int8 weights only: none needed) and
    # of a conditions grid (the tab asks for none)
    assert stages == [s for s in STAGES if s not in ("calibration", "conditions")], stages
    assert all(held for _, held in seen), seen            # reported while holding the lock
    assert not RUN_LOCK.locked()                          # and let go of it at the end
    assert (out / "model.onnx").is_file() and "exported to" in tab.onnx_status.value
    assert json.loads((out / "report.json").read_text())["deliverable"] == "model.onnx"
    assert not tab.onnx.disabled and tab.cancel_button.disabled


@pytest.mark.parametrize("cancel_at", ["export", "latency", "write"])
def test_cancel_stops_the_export_at_its_next_stage_and_writes_nothing(wb, tmp_path, cancel_at):
    tab = wb.export
    out = tmp_path / "new" / "export"
    tab.out_dir.value = str(out)
    seen = _record_stages(tab, cancel_at=cancel_at)
    job = tab.start_export()
    assert job.wait(600), "the export job never finished (hang guard)"
    assert wb.errors.errors == [], wb.errors.errors[-1].traceback if wb.errors.errors else ""
    assert job.state == "cancelled"
    assert [s for s, _ in seen][-1] == cancel_at, seen    # no stage ran after the cancel
    assert list(tmp_path.iterdir()) == []                 # no output, no staging folder
    assert not RUN_LOCK.locked()
    assert "cancelled" in tab.onnx_status.value
    assert not tab.onnx.disabled and tab.cancel_button.disabled


def test_cancel_while_waiting_for_the_run_lock_runs_nothing(wb, tmp_path):
    tab = wb.export
    out = tmp_path / "export"
    tab.out_dir.value = str(out)
    seen = _record_stages(tab)
    with RUN_LOCK.hold(USER):           # another model run holds the lock: the export waits
        job = tab.start_export()
        tab.cancel_button.click()
    assert job.wait(600), "the export job never finished (hang guard)"
    assert job.state == "cancelled" and seen == []
    assert not out.exists() and "cancelled" in tab.onnx_status.value
    assert wb.errors.errors == []
