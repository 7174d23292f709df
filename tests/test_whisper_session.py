"""WhisperSession: same transcripts as compress + transcribe; a decoder-only change reuses the
cached encoder output; an encoder change restarts at the block it touches."""
import pytest
import torch

from toys import Letters, tiny_whisper_asr
from workbench.evaluate import EvalSet

torch.set_num_threads(1)


_Letters = Letters


@pytest.fixture(scope="module")
def setup():
    model = tiny_whisper_asr()
    feats = tuple(torch.randn(80, n) for n in (30, 45, 22, 60, 38, 27))
    es = EvalSet("toy", None, tuple(f"u{i}" for i in range(6)), ("aa bb",) * 6, feats)
    from workbench.engine.whisper_session import WhisperSession
    return model, WhisperSession(model, _Letters(), es, quick_utterances=3), es


def _plans():
    from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
    dec_only = CompressionPlan().with_layer(
        "decoder.blocks.1.mlp", LayerConfig(prune=PruneConfig(structure="neurons", amount=0.5)))
    enc_block1 = dec_only.with_layer("encoder.blocks.1.attn.q_proj",
                                     LayerConfig(quant=QuantConfig(weight_bits=4)))
    return dec_only, enc_block1


def test_session_equals_compress_then_transcribe(setup):
    from workbench.compress import compress
    from workbench.data import normalize_text
    from workbench.whisper_eval import transcribe
    model, session, es = setup
    for plan in _plans():
        ref = transcribe(compress(model, plan), _Letters(), es.features, normalize=False)
        assert session.evaluate(plan, "full").hypotheses == tuple(normalize_text(r) for r in ref)


def test_decoder_only_change_reuses_encoder_output(setup):
    model, session, _ = setup
    dec_only, enc_block1 = _plans()
    from workbench.plan import LayerConfig, PruneConfig, QuantConfig
    session.evaluate(enc_block1, "quick")
    other_dec = enc_block1.with_layer(
        "decoder.blocks.0.attn", LayerConfig(prune=PruneConfig(structure="heads", amount=0.25)))
    assert session.evaluate(other_dec, "quick").restart_block == session.n_enc + 2
    other_enc = enc_block1.with_layer("encoder.blocks.1.mlp.fc1",
                                      LayerConfig(quant=QuantConfig(weight_bits=6)))
    assert session.evaluate(other_enc, "quick").restart_block == 1    # input of encoder block 1
    assert model.decoder.blocks[1].mlp.fc1.out_features == 64          # baseline untouched


def test_quick_estimate_has_an_error_bar(setup):
    """The stderr is the paired one, recomputed here from independent transcripts:
    std(per-utterance word-error change) * sqrt(n) / reference words of the subset."""
    from workbench.compress import compress
    from workbench.evaluate import score
    from workbench.whisper_eval import transcribe
    from workbench.engine.whisper_session import WhisperSession
    model, _, es = setup
    plan = _plans()[1]
    # references: the baseline's own transcripts on odd utterances (0 errors there), so the
    # per-utterance changes differ and the standard error is not 0
    base = transcribe(model, _Letters(), es.features)
    texts = tuple(b if i % 2 else t for i, (b, t) in enumerate(zip(base, es.texts)))
    session = WhisperSession(model, _Letters(), EvalSet("toy refs", None, es.ids, texts,
                                                        es.features), quick_utterances=3)
    est = session.evaluate(plan, "quick")
    assert est.utterances == 3 and "estimated" in est.source
    idx = session.quick_indices
    refs = [texts[i] for i in idx]
    _, _, after = score(refs, transcribe(compress(model, plan), _Letters(),
                                         [es.features[i] for i in idx]))
    _, _, before = score(refs, [base[i] for i in idx])
    d = torch.tensor([a.word_errors - b.word_errors for a, b in zip(after, before)],
                     dtype=torch.float64)
    assert float(d.std()) > 0
    expected = float(d.std() * len(d) ** 0.5) / sum(a.words for a in after)
    assert est.stderr == pytest.approx(expected, rel=1e-9)


# ---- bad inputs: one test each; the error names the argument --------------------------------
def test_session_refuses_a_ctc_model(setup, whisper_small):
    from workbench.errors import ArgumentError
    from workbench.engine.whisper_session import WhisperSession
    _, _, es = setup
    with pytest.raises(ArgumentError, match=r"WhisperSession\(model=.*WhisperCTC.*Session"):
        WhisperSession(whisper_small, _Letters(), es)


def test_session_refuses_a_tokenizer_without_decode(setup):
    from workbench.errors import ArgumentError
    from workbench.engine.whisper_session import WhisperSession
    model, _, es = setup
    with pytest.raises(ArgumentError, match=r"tokenizer=.*decode"):
        WhisperSession(model, "tokenizer.json", es)


def test_session_refuses_a_manifest_path_as_eval_set(setup):
    from workbench.errors import ArgumentError
    from workbench.engine.whisper_session import WhisperSession
    model, _, _ = setup
    with pytest.raises(ArgumentError, match=r"eval_set=.*EvalSet.*load_eval_set"):
        WhisperSession(model, _Letters(), "data/real_test/manifest.jsonl")


def test_session_refuses_zero_quick_utterances(setup):
    from workbench.errors import ArgumentError
    from workbench.engine.whisper_session import WhisperSession
    model, _, es = setup
    with pytest.raises(ArgumentError, match=r"quick_utterances=0"):
        WhisperSession(model, _Letters(), es, quick_utterances=0)


def test_evaluate_refuses_a_string_plan(setup):
    from workbench.errors import PlanError
    _, session, _ = setup
    with pytest.raises(PlanError, match=r"WhisperSession.evaluate\(plan=.*preset"):
        session.evaluate("int8_everywhere", "quick")


def test_evaluate_refuses_an_unknown_kind(setup):
    from workbench.errors import ArgumentError
    from workbench.plan import CompressionPlan
    _, session, _ = setup
    with pytest.raises(ArgumentError, match=r"kind='fast'.*'quick', 'full'"):
        session.evaluate(CompressionPlan(), "fast")


def test_evaluate_refuses_a_path_the_model_lacks(setup):
    from workbench.errors import PlanError
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig
    _, session, _ = setup
    plan = CompressionPlan().with_layer("decoder.blocks.7.mlp.fc1",
                                        LayerConfig(quant=QuantConfig(weight_bits=8)))
    with pytest.raises(PlanError, match=r"decoder.blocks.7"):
        session.evaluate(plan, "quick")


def test_evaluate_refuses_a_cancel_that_is_not_callable(setup):
    from workbench.errors import ArgumentError
    from workbench.plan import CompressionPlan
    _, session, _ = setup
    with pytest.raises(ArgumentError, match=r"cancel=.*callable"):
        session.evaluate(CompressionPlan(), "quick", cancel=True)


def test_cancel_stops_a_run_and_leaves_no_result(setup):
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig
    from workbench.engine.session import Cancelled
    _, session, _ = setup
    plan = CompressionPlan().with_layer("encoder.blocks.0.mlp.fc1",
                                        LayerConfig(quant=QuantConfig(weight_bits=3)))
    with pytest.raises(Cancelled):
        session.evaluate(plan, "full", cancel=lambda: True)
    assert session.evaluate(plan, "full").utterances == 6   # computed afresh, not half-cached


def test_a_run_cancelled_midway_leaves_only_valid_states(setup):
    """Cancelled after the quick part and one block of the rest: the states it cached are
    reused, and the result equals compress + transcribe."""
    from workbench.compress import compress
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig
    from workbench.engine.session import Cancelled
    from workbench.whisper_eval import transcribe
    model, session, es = setup
    plan = CompressionPlan().with_layer("encoder.blocks.0.mlp.fc2",
                                        LayerConfig(quant=QuantConfig(weight_bits=5)))
    checks = []  # checks come before each of 2 encoder blocks and each decoder batch, per part
    with pytest.raises(Cancelled):
        session.evaluate(plan, "full", cancel=lambda: checks.append(1) or len(checks) > 4)
    result = session.evaluate(plan, "full")
    assert result.hypotheses == tuple(transcribe(compress(model, plan), _Letters(), es.features))


def test_submit_delivers_quick_then_full_of_the_plan(setup):
    from workbench.plan import CompressionPlan, LayerConfig, QuantConfig
    from workbench.engine.session import plan_key
    _, session, _ = setup
    plan = CompressionPlan().with_layer("decoder.blocks.0.mlp.fc2",
                                        LayerConfig(quant=QuantConfig(weight_bits=5)))
    got = []
    session.submit(plan, got.append, lambda err: got.append(err))
    session.wait(120)
    assert [r.kind for r in got] == ["quick", "full"]
    assert {r.plan_key for r in got} == {plan_key(plan)} and not session.quick_is_full
