"""workbench.lessons: every check passes its reference solution and fails a deliberately wrong
answer (a common mistake), naming what is wrong; the solutions agree with the workbench's own code
where it has one (profile MACs, latency roofline, size, compress)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from workbench.lessons import checks, solutions
from workbench.lessons.checks import CHECKS, CheckResult, LessonCheckError, core, lesson03
from workbench.lessons.predict import Gap


# ---- deliberately wrong answers: one common mistake each, and a word the message must contain --

def _wer_capped(r: str, h: str) -> float:          # divides by the longer sentence: never > 1
    return solutions.edit_distance(r.split(), h.split()) / max(len(r.split()), len(h.split()))


def _macs_no_av(t: int, d: int, dff: int) -> dict:  # forgets the A V product
    out = solutions.block_macs(t, d, dff)
    return {**out, "scores": t * t * d}


def _mask_by_value(w: torch.Tensor, amount: float) -> torch.Tensor:   # w, not |w|
    n = round(amount * w.numel())
    order = torch.argsort(w.flatten())
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[order[:n]] = False
    return mask.reshape(w.shape)


def _nm_along_outputs(w: torch.Tensor, n: int, m: int) -> torch.Tensor:   # groups down a column
    return solutions.nm_mask(w.T.contiguous(), n, m).T if w.shape[0] % m == 0 else \
        torch.ones_like(w, dtype=torch.bool)


def _prune_ffn_no_bias(fc1: nn.Linear, fc2: nn.Linear, keep: torch.Tensor):
    new1, new2 = solutions.prune_ffn(fc1, fc2, keep)
    new1.bias = nn.Parameter(fc1.bias.detach()[: len(keep)].clone())   # first k biases, not keep's
    return new1, new2


def _prune_ffn_in_place(fc1: nn.Linear, fc2: nn.Linear, keep: torch.Tensor):
    with torch.no_grad():
        fc1.weight.zero_()
    return solutions.prune_ffn(fc1, fc2, keep)


def _scores_no_bias(fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    return (fc1.weight.detach().pow(2).sum(1) + fc2.weight.detach().pow(2).sum(0)).sqrt()


def _taylor_abs_of_sum(fc1, fc2, grads):
    return ((fc1.weight * grads["fc1.weight"]).sum(1) + (fc2.weight * grads["fc2.weight"]).sum(0)
            + fc1.bias * grads["fc1.bias"]).abs().detach()


def _quant_wrong_divisor(w, bits, granularity, symmetric):   # 2^(b-1) instead of 2^(b-1) - 1
    groups = w.reshape(1, -1) if granularity == "per_tensor" else w.reshape(w.shape[0], -1)
    scale = groups.abs().amax(1, keepdim=True) / 2 ** (bits - 1)
    q = torch.clamp(torch.round(groups / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return (q * scale).reshape(w.shape), scale.flatten(), torch.zeros(scale.numel())


def _sqnr_20(ref, approx):
    return 20 * math.log10(float(ref.pow(2).sum() / (ref - approx).pow(2).sum()))


def _kmeans_no_iterations(w, bits):
    return solutions.kmeans_quantize(w, bits, iters=0)


def _gemm_no_cross_terms(x_q, w_q, s_x, zp_x, s_w, zp_w, s_y, zp_y):
    acc = x_q.long() @ w_q.long().T
    return torch.clamp(torch.round(acc * (s_x * s_w / s_y)) + zp_y, 0, 255).int()


def _svd_without_s(w, rank):
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return u[:, :rank], vh[:rank]


def _frobenius_squared(w, rank):
    return solutions.frobenius_error(w, rank) ** 2


def _roofline_sum(flops, bytes_moved, peak_gops, bandwidth_gbs, compute_efficiency=1.0,
                  memory_efficiency=1.0, overhead_ms=0.0):
    return (flops / (peak_gops * 1e9 * compute_efficiency)
            + bytes_moved / (bandwidth_gbs * 1e9 * memory_efficiency)) * 1e3 + overhead_ms


def _int8_no_zero_point(out, k, granularity="per_channel"):
    return out * k + 4 * (out if granularity == "per_channel" else 1)


def _shapes_top_level(model):
    return {name: (m.out_features, m.in_features) for name, m in model.named_children()
            if isinstance(m, nn.Linear)}


def _noise_amplitude_db(clean, noise, snr_db):      # 20 log10 convention on a power ratio
    gain = torch.sqrt(clean.pow(2).mean() / (noise.pow(2).mean() * 10 ** (snr_db / 20)))
    return clean + gain * noise


def _first_partial_no_stem(chunk_s, lookahead_s, stem_s, compute_ms):
    return (chunk_s + lookahead_s) * 1e3 + compute_ms


def _bits_strict(deltas, tolerance):          # < instead of <=: the boundary goes to 8 bits
    return {role: 4 if d < tolerance else 8 for role, d in deltas.items()}


def _whisper_cross_kv_per_step(encoder_ms, cross_kv_ms, per_token_ms, steps):
    return encoder_ms + steps * (cross_kv_ms + per_token_ms)    # K/V of the encoder each step


def _crossover_d_model(d_model, d_ff):
    return d_model


def _windowed_macs_unpadded(frames, window, heads, head_dim):   # forgets the partial last block
    return 2 * heads * frames * 3 * window * head_dim


def _local_attention_band(q, k, v, window):          # a sliding band |i - j| <= W, not blocks
    t = q.shape[-2]
    i = torch.arange(t)
    allowed = (i[:, None] - i[None, :]).abs() <= window
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def _linear_attention_unnormalised(q, k, v):          # forgets the denominator
    fq, fk = nn.functional.elu(q) + 1, nn.functional.elu(k) + 1
    return fq @ (fk.transpose(-1, -2) @ v)


WRONG = {
    "wer": (_wer_capped, "upper bound"),
    "block_macs": (_macs_no_av, "scores"),
    "crossover_frames": (_crossover_d_model, "expected"),
    "magnitude_mask": (_mask_by_value, "magnitudes"),
    "nm_mask": (_nm_along_outputs, "consecutive inputs"),
    "prune_ffn": (_prune_ffn_no_bias, "bias"),
    "neuron_scores": (_scores_no_bias, "bias"),
    "taylor_neuron_scores": (_taylor_abs_of_sum, "absolute value"),
    "linear_quantize": (_quant_wrong_divisor, "2^(b-1) - 1"),
    "sqnr_db": (_sqnr_20, "10 log10"),
    "kmeans_quantize": (_kmeans_no_iterations, "mean of its weights"),
    "integer_linear": (_gemm_no_cross_terms, "cross terms"),
    "truncated_svd": (_svd_without_s, "best possible"),
    "frobenius_error": (_frobenius_squared, "square root"),
    "roofline_ms": (_roofline_sum, "larger of the two"),
    "int8_bytes": (_int8_no_zero_point, "zero point"),
    "linear_shapes": (_shapes_top_level, "nested"),
    "add_noise": (_noise_amplitude_db, "measured"),
    "first_partial_ms": (_first_partial_no_stem, "expected"),
    "bits_by_role": (_bits_strict, "boundary included"),
    "whisper_ms": (_whisper_cross_kv_per_step, "once per utterance"),
    "windowed_scores_macs": (_windowed_macs_unpadded, "whole blocks"),
    "local_attention": (_local_attention_band, "neighbours"),
    "linear_attention": (_linear_attention_unnormalised, "normaliser"),
}


def test_every_check_has_a_solution_and_a_wrong_answer() -> None:
    assert set(WRONG) == set(CHECKS)
    assert all(callable(getattr(solutions, name)) for name in CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_passes_the_reference_solution(name: str) -> None:
    result = CHECKS[name](getattr(solutions, name))
    assert result.passed, result.text()
    assert result.function is getattr(solutions, name)
    assert "✓" in result.text()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_fails_a_wrong_answer_and_says_what_is_wrong(name: str) -> None:
    wrong, word = WRONG[name]
    result = CHECKS[name](wrong)
    assert result.status == "failed", f"check_{name} passed a wrong answer"
    assert not result
    assert word in result.text(), result.text()
    # the lesson goes on with the reference, not with the wrong function
    assert result.function is getattr(solutions, name)


def test_a_function_that_changes_its_input_fails() -> None:
    result = checks.check_prune_ffn(_prune_ffn_in_place)
    assert result.status == "failed" and "changed" in result.text()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_an_unfinished_stub_is_reported_and_the_reference_is_used(name: str) -> None:
    def stub(*args, **kwargs):
        raise NotImplementedError
    result = CHECKS[name](stub)
    assert result.status == "not implemented" and "not done yet" in result.text()
    assert result.function is getattr(solutions, name)


def test_an_exception_in_the_learner_code_is_shown_not_raised() -> None:
    def broken(weight, amount):
        return weight[amount]          # TypeError / IndexError inside the learner's code
    result = checks.check_magnitude_mask(broken)
    assert result.status == "failed" and "raised" in result.text()


def test_not_a_function_is_refused_with_a_message() -> None:
    result = checks.check_wer("wer")
    assert result.status == "failed" and "expected a function" in result.text()


def test_a_check_that_fails_its_own_reference_raises() -> None:
    # A broken reference must not pass silently through the "not implemented" path: here a
    # comparison that rejects everything, run on a stub.
    def stub(*args):
        raise NotImplementedError

    def compare(f):
        f(1.0)
        return ["always wrong"]
    with pytest.raises(LessonCheckError, match="own reference"):
        core._run("sqnr_db", stub, lambda x: x, compare)


def test_check_result_is_falsy_unless_passed() -> None:
    assert not CheckResult("x", "failed", ["p"]) and not CheckResult("x", "not implemented")
    assert CheckResult("x", "passed")


# ---- the solutions against the workbench's own code --------------------------------------------

def test_magnitude_mask_equals_compress_unstructured_pruning() -> None:
    from workbench.compress.prune import prune_unstructured_

    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    for amount in (0.2, 0.5, 0.8):
        pruned = copy.deepcopy(layer)
        prune_unstructured_(pruned, amount)
        assert torch.equal(pruned.weight_mask, solutions.magnitude_mask(layer.weight, amount))


def test_neuron_scores_equal_compress_importance() -> None:
    from workbench.compress.importance import neuron_importance

    torch.manual_seed(1)
    ffn = nn.Module()
    ffn.fc1, ffn.fc2 = nn.Linear(8, 24), nn.Linear(24, 8)
    assert torch.allclose(solutions.neuron_scores(ffn.fc1, ffn.fc2), neuron_importance(ffn),
                          rtol=1e-6)
    grads = {k: torch.randn_like(v) for k, v in ffn.named_parameters()}
    assert torch.allclose(solutions.taylor_neuron_scores(ffn.fc1, ffn.fc2, grads),
                          neuron_importance(ffn, "taylor", grads), rtol=1e-5)


def test_block_macs_equal_the_profile_of_the_demo_model() -> None:
    import workbench as wb

    model = wb.load_demo()
    prof = wb.profile(model, audio_seconds=4.0, measure=False)
    rows = {r.path: r for r in prof.rows}
    frames = rows["blocks.0.attn.scores"].positions
    d, dff = model.blocks[0].mlp.fc1.in_features, model.blocks[0].mlp.fc1.out_features
    macs = solutions.block_macs(frames, d, dff)
    assert macs["scores"] == rows["blocks.0.attn.scores"].macs
    assert macs["ffn"] == rows["blocks.0.mlp.fc1"].macs + rows["blocks.0.mlp.fc2"].macs
    assert macs["projections"] == sum(rows[f"blocks.0.attn.{p}_proj"].macs
                                      for p in ("q", "k", "v", "out"))


def test_crossover_is_where_scores_overtake_the_ffn() -> None:
    t = solutions.crossover_frames(384, 1536)
    before, at = solutions.block_macs(t - 1, 384, 1536), solutions.block_macs(t, 384, 1536)
    assert before["scores"] <= before["ffn"] and at["scores"] > at["ffn"]


def test_integer_linear_approximates_the_float_product() -> None:
    case = lesson03._gemm_case(3, zp_w=0)
    y_q = solutions.integer_linear(**case)
    x = case["s_x"] * (case["x_q"].double() - case["zp_x"])
    w = case["s_w"] * (case["w_q"].double() - case["zp_w"])
    y = x @ w.T
    y_hat = case["s_y"] * (y_q.double() - case["zp_y"])
    inside = (y > case["s_y"] * -case["zp_y"]) & (y < case["s_y"] * (255 - case["zp_y"]))
    assert inside.any()
    assert float((y - y_hat)[inside].abs().max()) <= case["s_y"] / 2 + 1e-9


def test_kmeans_beats_the_linear_grid_it_starts_from() -> None:
    w = core._weights((24, 40), seed=2)
    km, _, _ = solutions.kmeans_quantize(w, 3)
    start, _, _ = solutions.kmeans_quantize(w, 3, iters=0)
    assert solutions.sqnr_db(w, km) > solutions.sqnr_db(w, start)


def test_truncated_svd_product_equals_factorize() -> None:
    from workbench.compress.lowrank import factorize

    torch.manual_seed(2)
    layer = nn.Linear(24, 40, bias=False)
    u, v = solutions.truncated_svd(layer.weight, 6)
    low = factorize(layer, 6)
    assert torch.allclose(u @ v, low.up.weight @ low.down.weight, atol=1e-6)


# ---- predict-then-run: the gap -----------------------------------------------------------------

def test_gap_reports_factor_and_missing_guess() -> None:
    assert "factor of 2" in Gap("q", 2.0, 1.0).text()
    assert "within 10 %" in Gap("q", 1.05, 1.0, "x").text()
    assert "no guess" in Gap("q", None, 3.0).text()
    assert Gap("q", 0.0, 3.0).error == -3.0 and "off by 3" in Gap("q", 0.0, 3.0).text()


def test_predict_widget_reads_the_guess_and_locks_it_on_reveal() -> None:
    pytest.importorskip("ipywidgets")
    from workbench.ui.predict import Predict

    p = Predict("How many ms?", "ms", show=False)
    assert p.guess() is None
    p.box.value = "1,200"
    gap = p.reveal(600.0)
    assert p.box.disabled and gap.guess == 1200.0 and "factor of 2" in p.answer_html.value
    q = Predict("x", show=False)
    q.box.value = "not a number"
    assert q.reveal(1.0).guess is None


def test_whisper_ms_equals_the_whisper_latency_model() -> None:
    # the lesson-12 formula against workbench.whisper_latency on a tiny random full Whisper
    from workbench.models.whisper_ctc import WhisperCTCConfig
    from workbench.models.whisper_decoder import WhisperDecoderConfig
    from workbench.models.whisper_full import WhisperASR
    from workbench.whisper_latency import price_whisper, whisper_tables

    torch.manual_seed(0)
    model = WhisperASR(WhisperCTCConfig(d_model=64, n_heads=4, n_layers=2, d_ff=128, n_ctx=1500,
                                        head_dim=16),
                       WhisperDecoderConfig(n_vocab=5000, n_ctx=64, d_model=64, n_heads=4,
                                            n_layers=2, d_ff=128)).eval()
    for seconds, device in ((1.0, "rpi4"), (4.0, "rpi5"), (9.0, "jetson_orin_nano")):
        tables = whisper_tables(model, seconds)
        lat = price_whisper(tables, device, seconds)
        got = solutions.whisper_ms(lat.encoder.total_ms, lat.cross_kv.total_ms, lat.per_token_ms,
                                   tables[3])
        assert got == pytest.approx(lat.total_ms, rel=1e-12)
        # the common mistake is far off: the K/V of 1,500 positions priced at every step
        wrong = _whisper_cross_kv_per_step(lat.encoder.total_ms, lat.cross_kv.total_ms,
                                           lat.per_token_ms, tables[3])
        assert wrong > 1.01 * lat.total_ms


# ---- lesson 09: the attention swaps against the workbench's swap layers ------------------------

def _attention(seed: int, d: int = 24, heads: int = 3):
    from workbench.models.layers import MultiHeadSelfAttention

    torch.manual_seed(seed)
    return MultiHeadSelfAttention(d, heads).eval()


@pytest.mark.parametrize("t, window", [(23, 5), (20, 4), (7, 10), (50, 50)])
def test_local_attention_equals_the_windowed_swap_layer(t: int, window: int) -> None:
    from workbench.compress.swap_layers import WindowedSelfAttention

    layer = WindowedSelfAttention(_attention(3), window)
    q, k, v = (torch.randn(2, 3, t, 8, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    valid = torch.ones(2, t, dtype=torch.bool)
    assert torch.allclose(solutions.local_attention(q, k, v, window), layer.mix(q, k, v, valid),
                          atol=1e-5)


def test_linear_attention_equals_the_linear_swap_layer() -> None:
    from workbench.compress.swap_layers import LinearSelfAttention

    layer = LinearSelfAttention(_attention(4))
    q, k, v = (torch.randn(2, 3, 19, 8, generator=torch.Generator().manual_seed(10 + i))
               for i in range(3))
    valid = torch.ones(2, 19, dtype=torch.bool)
    assert torch.allclose(solutions.linear_attention(q, k, v), layer.mix(q, k, v, valid),
                          atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seconds, window_s", [(5.0, 1.0), (3.02, 1.0), (30.0, 0.5)])
def test_windowed_scores_macs_equal_the_latency_row_of_the_swap(seconds: float,
                                                                window_s: float) -> None:
    # the scores row the latency model prices for the windowed plan on the demo model
    import workbench as wb
    from workbench import CompressionPlan, LayerConfig
    from workbench.latency import layer_table

    model = wb.load_demo()
    plan = CompressionPlan().with_group("attention", LayerConfig(
        windowed_attention={"window_s": window_s}))
    row = next(r for r in layer_table(model, seconds, plan).layers
               if r.path == "blocks.0.attn.scores")
    full = next(r for r in layer_table(model, seconds).layers if r.path == "blocks.0.attn.scores")
    window = round(window_s * 50)                   # 50 frames / s at the Whisper blocks
    assert row.macs == solutions.windowed_scores_macs(full.positions, window, full.heads,
                                                      full.head_dim)


def test_every_check_of_every_lesson_module_is_in_the_table() -> None:
    # one module per lesson (review7 #33): a check written there but left out of CHECKS would
    # escape the tests above
    import importlib
    import pkgutil

    found = set()
    for info in pkgutil.iter_modules(checks.__path__):
        module = importlib.import_module(f"{checks.__name__}.{info.name}")
        found |= {name.removeprefix("check_") for name, value in vars(module).items()
                  if name.startswith("check_") and getattr(value, "__module__", "") ==
                  module.__name__}
    assert found == set(CHECKS)
