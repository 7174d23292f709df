"""Waveform models in the engine and the dashboard: an eval set that caches the 16 kHz waveform
(load_eval_set(features="waveform")) feeds an adapted torchaudio wav2vec2 through evaluate,
Session and Workbench; a log-mel set given to it is refused, not silently misread."""
import pytest
import torch

from toys import torchaudio_conformer, torchaudio_wav2vec2
from workbench import Session, compress
from workbench.byo import adapt
from workbench.decode import greedy_decode
from workbench.errors import ArgumentError, WorkbenchError
from workbench.evaluate import EvalSet, evaluate, load_eval_set
from workbench.models import VOCAB
from workbench.paths import REAL_TEST
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig

LIMIT = 2


@pytest.fixture(scope="module")
def raw():
    torch.set_num_threads(1)
    return torchaudio_wav2vec2(aux_num_out=len(VOCAB))


@pytest.fixture(scope="module")
def model(raw):
    return adapt(raw)


@pytest.fixture(scope="module")
def short_test(tmp_path_factory):
    """The LIMIT shortest real_test utterances (~1 s each) as a manifest: the toy attends over
    all of its 200 frames per second, so the first ones (~5 s) cost more for the same
    properties."""
    from workbench.data import read_manifest, write_manifest
    shortest = sorted(read_manifest(REAL_TEST), key=lambda u: u.duration)[:LIMIT]
    return write_manifest(shortest, tmp_path_factory.mktemp("short") / "manifest.jsonl")


@pytest.fixture(scope="module")
def waves(short_test):
    return load_eval_set(short_test, limit=LIMIT, progress=False, features="waveform")


def test_waveform_eval_set_holds_the_audio(waves, short_test):
    from workbench.data import load_audio, read_manifest
    mels = load_eval_set(short_test, limit=LIMIT, progress=False)
    assert waves.feature_kind == "waveform" and mels.feature_kind == "log_mel"
    for utt, wave in zip(read_manifest(short_test)[:LIMIT], waves.features, strict=True):
        assert torch.equal(wave, load_audio(utt.audio_path).reshape(1, -1))
    # the same audio: seconds agree to a 10 ms hop per utterance
    assert abs(waves.seconds - mels.seconds) <= 0.01 * LIMIT
    assert waves.subset([1]).feature_kind == "waveform"


def test_evaluate_decodes_what_the_torchaudio_model_outputs(raw, model, waves):
    result = evaluate(model, waves)
    for wave, row in zip(waves.features, result.per_utterance, strict=True):
        with torch.no_grad():
            logits, _ = raw(wave)                      # the user's own model, batch of one
        (expected,) = greedy_decode(logits.log_softmax(-1), torch.tensor([logits.shape[1]]))
        assert row.hypothesis == expected


def test_session_equals_compress_then_evaluate(model, waves):
    plan = CompressionPlan().with_group(
        "ffn", LayerConfig(prune=PruneConfig(structure="neurons", amount=0.5)))
    session = Session(model, waves, quick_utterances=1)
    got = session.evaluate(plan, "full")
    ref = evaluate(compress(model, plan), waves)
    assert got.hypotheses == tuple(r.hypothesis for r in ref.per_utterance)
    assert got.wer == pytest.approx(ref.wer)


def test_dashboard_opens_on_a_waveform_model(model, waves):
    from workbench.ui import Workbench
    app = Workbench(model, waves, quick_utterances=1)
    assert app.session.eval_set.feature_kind == "waveform"
    assert app.session.baseline_full.wer == pytest.approx(evaluate(model, waves).wer)


def test_log_mel_set_on_a_waveform_model_is_refused(model):
    mels = load_eval_set(REAL_TEST, limit=1, progress=False)
    with pytest.raises(WorkbenchError, match="features='waveform'"):
        evaluate(model, mels)


def test_bad_feature_kind_is_refused():
    with pytest.raises(ArgumentError, match="features='mfcc'"):
        load_eval_set(REAL_TEST, limit=1, features="mfcc")
    with pytest.raises(ArgumentError, match="feature_kind 'mfcc'"):
        EvalSet("x", REAL_TEST, ("a",), ("a",), (torch.zeros(1, 10),), "mfcc")


def test_profile_and_latency_inputs_are_audio_seconds_of_waveform(model):
    from workbench.layer_profile import default_inputs
    wave, lengths = default_inputs(model)(1.5)
    assert wave.shape == (1, 1, 24_000) and lengths.tolist() == [24_000]   # 1.5 s at 16 kHz
    mel, _ = default_inputs(adapt(torchaudio_conformer()))(1.5)
    assert mel.shape == (1, 80, 150)                                        # 100 frames / s
