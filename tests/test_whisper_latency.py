"""Autoregressive latency pricing of the full Whisper model (tiny random model; no model run)."""
import pytest
import torch

from workbench.models.whisper_ctc import WhisperCTCConfig
from workbench.models.whisper_decoder import WhisperDecoderConfig
from workbench.models.whisper_full import WhisperASR
from workbench.compress.resolution import resolve


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WhisperASR(WhisperCTCConfig(d_model=64, n_heads=4, n_layers=2, d_ff=128, n_ctx=1500,
                                       head_dim=16),
                      WhisperDecoderConfig(n_vocab=5000, n_ctx=64, d_model=64, n_heads=4,
                                           n_layers=2, d_ff=128)).eval()


def test_total_is_encoder_plus_tokens_times_step(model):
    from workbench.whisper_latency import whisper_latency
    lat = whisper_latency(model, "rpi5", audio_seconds=4.0, tokens=10)
    assert lat.tokens == 10
    # 10 tokens + end of text = 11 decoder runs (greedy_tokens: the prompt pass emits token 1,
    # each token fed back emits the next; end of text is never fed back)
    assert lat.total_ms == pytest.approx(lat.encoder.total_ms + lat.cross_kv.total_ms
                                         + 11 * lat.per_token_ms, rel=1e-9)
    assert lat.real_time_factor == pytest.approx(lat.total_ms / 4000.0)
    assert "simulated" in lat.source


def test_more_audio_costs_more_tokens_and_encoder(model):
    from workbench.whisper_latency import whisper_latency
    short, long = (whisper_latency(model, "rpi5", s) for s in (2.0, 8.0))
    assert long.tokens > short.tokens and long.encoder.total_ms > short.encoder.total_ms


def test_decoder_compression_lowers_the_per_token_cost(model):
    from workbench.compress import compress
    from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
    from workbench.whisper_latency import whisper_latency
    base = whisper_latency(model, "rpi5", 3.0, tokens=8)
    int8 = compress(model, CompressionPlan().with_default(LayerConfig(quant=QuantConfig(weight_bits=8))))
    pruned = compress(model, CompressionPlan().with_layer(
        "decoder.blocks.0.mlp", LayerConfig(prune=PruneConfig(structure="neurons", amount=0.5))))
    assert whisper_latency(int8, "rpi5", 3.0, tokens=8).per_token_ms < base.per_token_ms
    pruned_lat = whisper_latency(pruned, "rpi5", 3.0, tokens=8)
    assert pruned_lat.per_token_ms < base.per_token_ms
    assert pruned_lat.encoder.total_ms == pytest.approx(base.encoder.total_ms)
    emb = [x for x in base.step.layers if x.path == "decoder.token_embedding"]
    assert len(emb) == 1 and emb[0].role == "head"        # the tied projection is priced per token


def test_scripted_whisper_changes_are_valid_plans():
    from workbench.bench.whisper import scripted_whisper_changes
    model = WhisperASR(WhisperCTCConfig(n_layers=2, n_ctx=100),            # tiny.en widths
                       WhisperDecoderConfig(n_vocab=100, n_ctx=16, n_layers=2))
    plans = scripted_whisper_changes(20, seed=0, n_enc=2, n_dec=2)
    assert len(plans) == 20
    touched = {p.split(".")[0] for plan in plans for p in plan.layers}
    assert touched == {"encoder", "decoder"}
    for plan in plans:
        resolve(plan, model)                    # every path exists and every setting applies


def test_bench_whisper_is_a_cli_choice():
    from workbench.__main__ import build_parser
    args = build_parser().parse_args(["bench", "whisper", "--json"])
    assert args.what == "whisper"
