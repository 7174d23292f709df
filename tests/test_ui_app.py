"""Headless tests of the workbench app (no browser): its state, its edits, its error area, and
that its readouts are the core's numbers.

The model is a tiny untrained Conformer-CTC and the eval set six random-feature utterances: the
app does not care what the WER is, only that it shows the core's WER for the current plan.
"""
from __future__ import annotations

import re
import time

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from workbench.compress import presets  # noqa: E402
from workbench.compress.targets import find_targets  # noqa: E402
from workbench.errors import PlanError  # noqa: E402
from workbench.evaluate import EvalSet  # noqa: E402
from workbench.latency import predict_latency  # noqa: E402
from workbench.plan import CompressionPlan, LayerConfig, QuantConfig  # noqa: E402
from workbench.engine.session import plan_key  # noqa: E402
from workbench.size import size  # noqa: E402
from workbench.ui import Workbench  # noqa: E402
from workbench.compress.resolution import plan_for_model, resolve  # noqa: E402
from toys import random_eval_set  # noqa: E402

COMPRESS_TAB = 1


def _eval_set(n: int = 6) -> EvalSet:
    return random_eval_set(n)


@pytest.fixture(scope="module")
def model(tiny_conformer):
    return tiny_conformer


@pytest.fixture(scope="module")
def session(model):
    from workbench.engine.session import Session
    return Session(model, _eval_set(), quick_utterances=3)


@pytest.fixture()
def wb(model, session):
    app = Workbench(model, session.eval_set, device="rpi4", audio_seconds=4.0, session=session)
    app.tabs.selected_index = COMPRESS_TAB
    app.wait()
    yield app
    app.session.cancel()


def _num(html: str, attr: str) -> str:
    match = re.search(rf"data-{attr}='([^']*)'", html)
    assert match, f"no data-{attr} in {html!r}"
    return match.group(1)


def _wait_full(app: Workbench, timeout: float = 600.0) -> None:
    """Until the header shows the measured WER of the current plan (the timeout is a hang guard,
    not a time budget: a loaded 2-core machine may take minutes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.wait(timeout)
        est = app.state.wer
        if est is not None and est.kind == "full" and est.plan_key == plan_key(app.plan):
            return
        time.sleep(0.02)
    raise AssertionError("the full WER of the current plan never arrived")


def test_preset_sets_the_documented_plan_and_every_row_shows_it(wb, model):
    wb.compress.apply_preset("int8_everywhere")
    assert wb.plan == presets.int8_everywhere()
    bits_rows = [r for r in wb.compress.rows.values() if r.bits is not None]
    assert bits_rows and all(r.bits.value == 8 for r in bits_rows)

    wb.compress.apply_preset("prune_ffn_neurons")
    assert wb.plan == presets.prune_ffn_neurons()
    ffn = [p for p, t in find_targets(model).items() if t.kind == "ffn"]
    assert len(ffn) == 4  # two FFNs (Macaron) in each of the two blocks
    for path in ffn:
        assert wb.compress.rows[path].prune.value == pytest.approx(0.5, abs=1e-9)
        assert wb.compress.rows[path].structure.value == "neurons"
    assert all(r.bits.value == 32 for r in bits_rows)  # the preset replaced the int8 plan


def test_undo_and_redo_restore_plans_and_rows(wb):
    start = wb.plan
    wb.compress.apply_preset("int8_everywhere")
    int8 = wb.plan
    row = wb.compress.rows["blocks.0.ffn1.fc1"]
    row.bits.value = 4
    assert wb.plan.layers["blocks.0.ffn1.fc1"].quant.weight_bits == 4
    wb.compress.undo.click()
    assert wb.plan == int8 and row.bits.value == 8
    wb.compress.undo.click()
    assert wb.plan == start and row.bits.value == 32
    assert wb.compress.undo.disabled
    wb.compress.redo.click()
    assert wb.plan == int8
    wb.compress.rows["blocks.1.attn"].prune.value = 0.25   # a new edit clears the redo stack
    assert wb.state.redo_stack == ()
    assert wb.compress.redo.disabled


def test_restoring_a_history_point_restores_its_plan_exactly(wb):
    plans = [presets.int8_everywhere(),
             CompressionPlan().with_layer("blocks.1.ffn2.fc2",
                                          LayerConfig(quant=QuantConfig(weight_bits=3))),
             presets.prune_attention_heads()]
    for p in plans:
        wb.set_plan(p, "test")
        _wait_full(wb)
    keys = [h.key for h in wb.state.history]
    for p in plans:
        assert plan_key(p) in keys
    target = next(i for i, h in enumerate(wb.state.history) if h.key == plan_key(plans[1]))
    wb.tradeoffs.restore(target)
    assert wb.plan == plans[1]
    assert wb.plan.to_json() == plans[1].to_json()
    assert wb.compress.rows["blocks.1.ffn2.fc2"].bits.value == 3
    _wait_full(wb)
    assert _num(wb.header.wer.value, "plan") == plan_key(plans[1])
    wb.state.undo()     # restoring is an ordinary, undoable edit
    assert wb.plan == plans[2]


def test_readouts_are_the_core_numbers(wb, model):
    plan = (CompressionPlan()
            .with_layer("blocks.0.ffn1.fc1", LayerConfig(quant=QuantConfig(weight_bits=4)))
            .with_layer("blocks.0.ffn1", LayerConfig.model_validate(
                {"prune": {"amount": 0.25, "structure": "neurons"}})))
    wb.set_plan(plan)
    _wait_full(wb)
    assert int(_num(wb.header.size.value, "bytes")) == size(model, plan).total_bytes
    # the UI rescales the traced graph of a 1 s clip (graph.ops_at_scale): equal up to rounding
    expected = predict_latency(model, "rpi4", 4.0, plan)
    assert float(_num(wb.header.latency.value, "ms")) == pytest.approx(expected.total_ms,
                                                                       rel=1e-4)
    assert _num(wb.header.memory.value, "fits") == str(expected.memory.fits).lower()
    full = wb.session.evaluate(plan, "full")
    assert float(_num(wb.header.wer.value, "wer")) == pytest.approx(full.wer, abs=1e-9)
    assert _num(wb.header.wer.value, "kind") == "full"
    assert "simulated" in wb.header.latency.value
    wb.header.device.value = "cortex_m7_stm32h743"
    expected = predict_latency(model, "cortex_m7_stm32h743", 4.0, plan)
    assert float(_num(wb.header.latency.value, "ms")) == pytest.approx(expected.total_ms,
                                                                       rel=1e-4)
    # runtime x threads change the number the way predict_latency says
    wb.header.device.value = "rpi4_a72"
    wb.header.runtime.value = "tflite"
    wb.header.threads.value = 1
    expected = predict_latency(model, "rpi4_a72", 4.0, plan, runtime="tflite", threads=1)
    assert float(_num(wb.header.latency.value, "ms")) == pytest.approx(expected.total_ms,
                                                                       rel=1e-4)
    assert "tflite, 1 thread(s)" in wb.header.latency.value
    wb.header.device.value = "cortex_m7_stm32h743"
    assert wb.state.runtime == "" and wb.state.threads == 0       # defaults of the new device
    # Other audio lengths rescale the cached table (LayerTable.at_seconds): within a frame of
    # rounding of the exact shape pass.
    wb.header.audio.value = 2.5
    expected = predict_latency(model, "cortex_m7_stm32h743", 2.5, plan)
    assert float(_num(wb.header.latency.value, "ms")) == pytest.approx(expected.total_ms,
                                                                       rel=0.01)


def test_a_stale_result_never_overwrites_a_newer_one(wb):
    old = presets.int8_everywhere()
    stale = wb.session.evaluate(old, "full")
    new = presets.prune_attention_heads()
    wb.set_plan(new)
    _wait_full(wb)
    shown = wb.state.wer
    wb.controller._on_result(stale)       # an old plan's result arriving late
    assert wb.state.wer is shown and wb.state.wer.plan_key == plan_key(new)
    quick = wb.session.evaluate(new, "quick")
    wb.controller._on_result(quick)       # a quick estimate after the full result
    assert wb.state.wer.kind == "full"
    # Many edits in a row: whatever finishes last, the shown WER is the current plan's.
    for amount in (0.05, 0.1, 0.15, 0.2):
        wb.compress.rows["blocks.0.attn"].prune.value = amount
    _wait_full(wb)
    assert wb.state.wer.plan_key == plan_key(wb.plan)


def test_an_invalid_edit_is_shown_in_the_error_area_and_changes_nothing(wb):
    path = "blocks.0.ffn1.fc1"
    wb.compress.rows[path].rank.value = 16
    row = wb.compress.rows["blocks.0.ffn1"]
    row.structure.value = "unstructured"    # amount 0 so far: a valid edit
    before = wb.plan
    assert wb.errors.errors == []
    row.prune.value = 0.3                   # unstructured + low rank on fc1: a PlanError
    assert wb.plan == before
    assert any(e.type_name == PlanError.__name__ and path in e.message for e in wb.errors.errors)
    assert "editing blocks.0.ffn1" in wb.errors.text
    assert wb.errors.widget.layout.display == "flex"
    assert row.prune.value == 0.0            # the rejected value does not stay on screen
    wb.errors.clear()
    assert wb.errors.widget.layout.display == "none"


def test_an_exception_in_any_callback_is_shown_with_its_traceback(wb):
    def broken(_change):
        raise RuntimeError("boom in a callback")

    wb.state.observe(wb.errors.guard("a test observer", broken), names=["device"])
    wb.header.device.value = "rpi5_a76"      # the observer runs and raises
    assert wb.state.device == "rpi5_a76"
    shown = wb.errors.errors[-1]
    assert shown.where == "a test observer" and shown.type_name == "RuntimeError"
    assert "boom in a callback" in wb.errors._html.value
    assert "Traceback" in shown.traceback and "<details>" in wb.errors._html.value


def test_every_tab_draws_without_errors(wb):
    for i in range(len(wb.tabs.children)):
        wb.tabs.selected_index = i
    assert wb.errors.errors == []
    assert wb.profile.layers_fig.figure.data and wb.profile.hotspots.value.count("<code>") == 5
    assert "reference" in wb.listen.transcripts.value
    assert '"format_version": 1' in wb.export.json.value


def test_export_saves_the_current_plan_for_this_model(wb, model, tmp_path):
    wb.set_plan(presets.int4_ffn_int8_attention())
    wb.tabs.selected_index = len(wb.tabs.children) - 1
    wb.export.path.value = str(tmp_path / "sub" / "plan.json")
    wb.export.save_button.click()
    saved = CompressionPlan.from_json((tmp_path / "sub" / "plan.json").read_text())
    assert saved == plan_for_model(presets.int4_ffn_int8_attention(), model)
    assert resolve(saved, model) == resolve(wb.plan, model)    # the fingerprint matches
    assert "plan.json" in wb.export.status.value
    assert wb.export.json.value == saved.to_json()


def test_export_after_recovery_holds_the_recovered_model(wb, model, tmp_path):
    """The Export tab sends a structure-removing plan to the Recover tab; recovered there (2
    steps on the shipped calibration set) and used as the baseline, the ONNX export holds the
    recovered model with the plan's int8 (the pruning is baked in, so nothing is left to
    recover). Replaces the export's old 'recover first', which held the run lock throughout."""
    from workbench.models import load_checkpoint, model_fingerprint
    from workbench.paths import CALIB

    pruned = presets.prune_ffn_neurons(0.5).with_default(
        LayerConfig(quant=QuantConfig(weight_bits=8)))
    wb.set_plan(pruned)
    wb.tabs.selected_index = len(wb.tabs.children) - 1
    assert "removes structure" in wb.export.recover_hint.value
    assert "Recover" in wb.export.recover_hint.value
    tab = wb.recovery
    tab.manifests, tab.out_dir = [CALIB], tmp_path / "recovered"
    tab.steps.value, tab.minutes.value, tab.every.value = 2, 0.0, 1
    tab.start_button.click()
    tab.wait(600)
    assert wb.errors.errors == [], wb.errors.errors[-1].traceback if wb.errors.errors else ""
    tab.use().wait(600)
    assert wb.errors.errors == [], wb.errors.errors[-1].traceback if wb.errors.errors else ""
    recovered = load_checkpoint(tmp_path / "recovered" / "model.safetensors")
    wb.tabs.selected_index = len(wb.tabs.children) - 1
    assert "Nothing to recover" in wb.export.recover_hint.value
    rest = resolve(wb.plan, recovered)          # what is left on top: the int8, no pruning
    assert rest and all(c.prune is None and c.quant.weight_bits == 8 for c in rest.values())
    out = tmp_path / "export"
    wb.export.out_dir.value = str(out)
    wb.export.onnx.click()
    wb.export.worker.wait(600)
    assert wb.errors.errors == [], wb.errors.errors[-1].traceback if wb.errors.errors else ""
    assert (out / "model.onnx").is_file() and "exported to" in wb.export.onnx_status.value
    import json
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["fingerprint"] == model_fingerprint(recovered)
    assert model_fingerprint(recovered) != model_fingerprint(model)


def test_device_file_upload_and_settings_the_runtime_cannot_run(wb, model):
    """A bad device file is refused with the field named; a good one is priced; 5-bit weights
    are marked as not runnable as set before any export."""
    import json as _json

    from workbench.latency.hardware import load_edge_device
    data = _json.loads(open(load_edge_device("rpi4_a72").path).read())
    data["clock_mhz"]["value"] = -1
    wb.errors.clear()
    upload = wb.errors.guard("loading the device file", wb.header._file_uploaded)
    upload({"new": [{"name": "bad.json",
                                        "content": _json.dumps(data).encode()}]})
    assert any("bad.json" in e.message and "clock_mhz" in e.message for e in wb.errors.errors)
    assert wb.state.device_file == ""
    data["clock_mhz"]["value"] = 3000
    data["name"] = "my_fast_a72"
    upload({"new": [{"name": "good.json",
                                        "content": _json.dumps(data).encode()}]})
    assert wb.state.device_file.endswith(".json")
    assert "my_fast_a72" in wb.header.latency.value
    wb.set_plan(CompressionPlan().with_layer("blocks.0.ffn1.fc1",
                                             LayerConfig(quant=QuantConfig(weight_bits=5))))
    assert "wb-unsupported" in wb.header.latency.value and "5-bit" in wb.header.latency.value
    wb.header.device.value = "rpi5_a76"
    assert wb.state.device_file == ""
    wb.errors.clear()
