"""Recovery you can watch (issue 14, deliverable 4), without a browser: the engine's watched
recovery job (losses per step, a WER estimate of the model being trained every k steps,
cancel), and the dashboard's Recover tab on top of it (live plot, cancel, "use as baseline":
the sliders then work on the recovered model, and the trade-off history marks the baselines).

Small models (a tiny random Conformer-CTC) trained for a few steps on the shipped calibration
prompts; random-feature eval sets. The numbers are compared with the same computation done
directly (evaluate, Session), so a wrong model, set or step shows up as a different number.
"""
from __future__ import annotations

import re

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from workbench.compress import compress, presets  # noqa: E402
from workbench.compress.resolution import resolve  # noqa: E402
from workbench.engine.jobs import RUN_LOCK, JobQueue  # noqa: E402
from workbench.engine.recovery_job import Recipe, subset, watch_recovery  # noqa: E402
from workbench.engine.session import Session, plan_key  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.evaluate import evaluate  # noqa: E402
from workbench.models import load_checkpoint  # noqa: E402
from workbench.paths import CALIB  # noqa: E402
from workbench.plan import CompressionPlan, LayerConfig, QuantConfig  # noqa: E402
from workbench.recovery import recover_plan  # noqa: E402
from workbench.ui import Workbench  # noqa: E402
from workbench.ui.state import ORIGINAL  # noqa: E402
from toys import random_eval_set  # noqa: E402

PLAN = presets.prune_ffn_neurons(0.5)


@pytest.fixture(scope="module")
def model(tiny_conformer):
    return tiny_conformer


@pytest.fixture(scope="module")
def eval_set():
    return random_eval_set(6)


def _num(html: str, attr: str) -> str:
    match = re.search(rf"data-{attr}='([^']*)'", html)
    assert match, f"no data-{attr} in {html!r}"
    return match.group(1)


# ---- the engine job ---------------------------------------------------------------------------
def test_recipe_refuses_bad_settings():
    with pytest.raises(WorkbenchError, match="Recipe.kind"):
        Recipe(kind="prune harder")
    with pytest.raises(WorkbenchError, match="Recipe.every"):
        Recipe(every=0)
    with pytest.raises(WorkbenchError, match="Recipe.minutes"):
        Recipe(minutes=0)
    assert Recipe(steps=4, minutes=None).config().max_minutes is None


def test_watched_recovery_estimates_the_model_being_trained_and_trains_as_unwatched(
        model, eval_set, tmp_path):
    """Estimates at steps 0, 2, 4 on the probe; step 0 is the pruned student before training
    (its WER computed here directly); the losses equal an unwatched run's (the estimates do not
    disturb training); the result is measured on the whole set from the saved checkpoint."""
    probe = subset(eval_set, [1, 3, 4])
    steps, estimates, progress, done = [], [], [], []
    job = watch_recovery(PLAN, model, probe, Recipe(steps=4, minutes=None, every=2),
                         measure=eval_set, manifests=[CALIB], out_dir=tmp_path / "watched",
                         on_step=steps.append, on_estimate=estimates.append,
                         on_progress=lambda d, t: progress.append((d, t)), on_done=done.append,
                         queue=JobQueue(workers=1))
    assert job.wait(600)
    assert job.state == "done", job.error
    assert [e.step for e in estimates] == [0, 2, 4]
    assert all(e.utterances == 3 and "3 held-out utterances" in e.source for e in estimates)
    assert estimates[0].wer == pytest.approx(evaluate(compress(model, PLAN), probe).wer)
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and progress[-1] == (4, 4)
    watched = done[0]
    assert watched.trained_now and watched.measured_on == eval_set.name
    saved = load_checkpoint(tmp_path / "watched" / "model.safetensors")
    assert watched.measured.wer == pytest.approx(evaluate(saved, eval_set).wer)
    assert watched.measured.utterances == len(eval_set)
    plain = []
    recover_plan(PLAN, model, out_dir=tmp_path / "plain",
                 config=Recipe(steps=4, minutes=None).config(), manifests=[CALIB],
                 progress=False, evaluate_sets=False, log=plain.append)
    assert [e["loss"] for e in steps] == pytest.approx([e["loss"] for e in plain], rel=1e-6)
    assert not RUN_LOCK.locked()


def test_a_cancelled_watched_recovery_saves_nothing(model, eval_set, tmp_path):
    holder, done = {}, []

    def on_progress(step: int, total: int) -> None:
        if step == 1:
            holder["job"].cancel()

    holder["job"] = job = watch_recovery(
        PLAN, model, subset(eval_set, [0, 1]), Recipe(steps=50, minutes=None, every=5),
        manifests=[CALIB], out_dir=tmp_path / "r", on_progress=on_progress,
        on_done=done.append, queue=JobQueue(workers=1))
    assert job.wait(600)
    assert job.state == "cancelled" and done == [None]
    assert not (tmp_path / "r" / "model.safetensors").exists()
    assert not RUN_LOCK.locked()


# ---- the Recover tab --------------------------------------------------------------------------
@pytest.fixture()
def app(model, eval_set):
    session = Session(model, eval_set, quick_utterances=2)
    wb = Workbench(model, eval_set, device="rpi5", audio_seconds=2.0, session=session)
    wb.wait()
    wb.tabs.selected_index = list(wb.tabs.titles).index("Recover")
    yield wb
    wb.session.cancel()


def _errors(wb) -> str:
    return wb.errors.errors[-1].traceback or wb.errors.text if wb.errors.errors else ""


def test_recover_tab_refuses_a_plan_with_nothing_to_recover(app):
    app.set_plan(CompressionPlan().with_default(LayerConfig(quant=QuantConfig(weight_bits=8))))
    app.recovery.start_button.click()
    assert "removes no structure" in app.errors.text
    assert app.recovery.job is None and not app.recovery.start_button.disabled


def test_recover_tab_cancel_stops_the_run_and_keeps_no_result(app, tmp_path):
    tab = app.recovery
    app.set_plan(PLAN)
    tab.manifests, tab.out_dir = [CALIB], tmp_path / "r"
    tab.steps.value, tab.minutes.value, tab.every.value = 50, 0.0, 5
    # the cancel button pressed once the first step is in (from the job's own callback)
    tab.progress.observe(lambda c: c["new"] >= 1 and tab.cancel_button.click(), names=["value"])
    tab.start_button.click()
    tab.wait(600)
    assert tab.job.state == "cancelled", _errors(app)
    assert _num(tab.status.value, "state") == "cancelled"
    assert 1 <= int(_num(tab.status.value, "steps")) < 50
    assert tab.use_button.disabled and tab.watched is None
    assert not tab.start_button.disabled and tab.cancel_button.disabled
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_recover_tab_plots_the_run_and_its_result_becomes_the_baseline(app, model, eval_set,
                                                                        tmp_path):
    tab = app.recovery
    plan = PLAN.with_default(LayerConfig(quant=QuantConfig(weight_bits=8)))
    app.set_plan(plan, "prune half the FFN neurons, int8")
    app.wait()
    assert "2 utterances" in tab.about.value and "quick subset" in tab.about.value
    tab.manifests, tab.out_dir = [CALIB], tmp_path / "r"
    tab.steps.value, tab.minutes.value, tab.every.value = 3, 0.0, 1
    tab.start_button.click()
    tab.wait(600)
    assert app.errors.errors == [], _errors(app)
    assert _num(tab.status.value, "state") == "done"
    assert (_num(tab.status.value, "steps"), _num(tab.status.value, "estimates")) == ("3", "4")
    loss, estimate, measured = tab.figure.figure.data
    assert list(loss.x) == [1, 2, 3] and list(estimate.x) == [0, 1, 2, 3]
    assert "estimate on 2 held-out utterances" in estimate.name
    assert "measured on all 6 utterances" in measured.name
    saved = load_checkpoint(tmp_path / "r" / "model.safetensors")
    wer = evaluate(saved, eval_set).wer
    assert float(_num(tab.result.value, "wer")) == pytest.approx(wer, abs=1e-6)
    assert measured.y[0] == pytest.approx(wer)
    before = app.state.history
    assert all(p.baseline == ORIGINAL for p in before)

    assert not tab.use_button.disabled
    tab.use_button.click()
    tab.rebase_job.wait(600)
    assert app.errors.errors == [], _errors(app)
    label = "recovered model #1 (distill)"
    assert app.baseline == label and app.recovery is tab     # the tab (and its plot) stays
    assert tab.figure.figure.data[0].x == loss.x
    assert sum(p.numel() for p in app.core.model.parameters()) < \
        sum(p.numel() for p in model.parameters())             # the pruned shapes
    # the plan now holds what recovery did not bake in: the int8, no pruning
    assert app.plan == CompressionPlan.from_json((tmp_path / "r" / "export_plan.json").read_text())
    rest = resolve(app.plan, saved)
    assert rest and all(c.prune is None and c.quant.weight_bits == 8 for c in rest.values())
    # the sliders' WER is the recovered model's, as a Session on it computes it
    fresh = Session(saved, eval_set, quick_utterances=2)
    assert app.session.baseline_full.wer == pytest.approx(fresh.baseline_full.wer, abs=1e-12)
    assert float(_num(app._baseline_note.value, "wer")) == pytest.approx(
        fresh.baseline_full.wer, abs=1e-6)
    app.wait()
    assert app.state.wer.plan_key == plan_key(app.plan)
    assert app.state.wer.wer == pytest.approx(fresh.evaluate(app.plan, "full").wer, abs=1e-12)
    on_top = CompressionPlan().with_default(LayerConfig(quant=QuantConfig(weight_bits=4)))
    app.set_plan(on_top, "4-bit on the recovered model")
    app.wait()
    assert app.state.wer.wer == pytest.approx(fresh.evaluate(on_top, "full").wer, abs=1e-12)
    # the history keeps the original model's points and marks the new baseline's own point
    history = app.state.history
    assert history[: len(before)] == before
    mine = [p for p in history if p.baseline == label]
    assert mine[0].plan == CompressionPlan() and mine[0].label == f"baseline: {label}"
    assert mine[0].wer == pytest.approx(fresh.baseline_full.wer, abs=1e-12)
    app.tabs.selected_index = list(app.tabs.titles).index("Trade-offs")
    assert app.errors.errors == [], _errors(app)
    assert any("[on the original model]" in text for text, _ in app.tradeoffs.history.options)
    with pytest.raises(WorkbenchError, match="measured on the original model"):
        app.tradeoffs.restore(0)              # its plan would mean another model here
