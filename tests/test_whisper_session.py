"""WhisperSession: same transcripts as compress + transcribe; a decoder-only change reuses the
cached encoder output; an encoder change restarts at the block it touches."""
import pytest
import torch

from workbench.evaluate import EvalSet
from workbench.models.whisper_ctc import WhisperCTCConfig
from workbench.models.whisper_decoder import WhisperDecoderConfig
from workbench.models.whisper_full import DecodeRules, WhisperASR

torch.set_num_threads(1)


class _Letters:
    """Stub tokenizer: token t -> a letter, so transcripts are words the scorer can compare."""

    def decode(self, ids):
        return " ".join("abcdefghijklmnopqrstuvwxyz"[t % 26] * 2 for t in ids)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    enc = WhisperCTCConfig(d_model=32, n_heads=4, n_layers=2, d_ff=64, n_ctx=200, head_dim=16)
    dec = WhisperDecoderConfig(n_vocab=60, n_ctx=64, d_model=32, n_heads=4, n_layers=2, d_ff=64)
    rules = DecodeRules(prompt=(50, 51), eot=49, suppress=(50, 51), suppress_begin=(0, 49),
                        timestamp_begin=52)
    model = WhisperASR(enc, dec, rules).eval()
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.1)
    feats = tuple(torch.randn(80, n) for n in (30, 45, 22, 60, 38, 27))
    es = EvalSet("toy", None, tuple(f"u{i}" for i in range(6)), ("aa bb",) * 6, feats)
    from workbench.whisper_session import WhisperSession
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
    _, session, _ = setup
    est = session.evaluate(_plans()[1], "quick")
    assert est.utterances == 3 and est.stderr >= 0.0 and "estimated" in est.source
