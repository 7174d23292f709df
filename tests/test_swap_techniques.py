"""The architecture swaps as registered techniques: plan entries, compress, latency pricing
(linear in length where it is), the engine's arithmetic table, ONNX export with ORT parity,
and one test per bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.compress import compress
from workbench.compress.swap_layers import (GroupedLinear, LinearSelfAttention,
                                            PerformerSelfAttention, WindowedSelfAttention)
from workbench.compress.techniques import structure_only
from workbench.errors import PlanError
from workbench.latency import layer_table, table_for_plan
from workbench.models import build_model
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, plan_from_json

SWAPS = {
    "windowed_attention": ({"window_s": 0.2}, WindowedSelfAttention),
    "linear_attention": ({}, LinearSelfAttention),
    "performer_attention": ({"features": 16}, PerformerSelfAttention),
    "grouped_ffn": ({"groups": 2}, GroupedLinear),     # the FFN stays; fc1 / fc2 are grouped
}


def _swapped(module, name: str) -> bool:
    target = module.fc1 if name == "grouped_ffn" else module
    return isinstance(target, SWAPS[name][1])


@pytest.fixture(scope="module")
def model():
    """A small random Whisper-CTC (50 frames per second at the blocks, like tiny.en)."""
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=32, n_heads=4, n_layers=2, d_ff=64, n_ctx=1500,
                       head_dim=16).eval()


def _plan(name: str, setting=None) -> CompressionPlan:
    role = "ffn" if name == "grouped_ffn" else "attention"
    return CompressionPlan().with_group(role, LayerConfig(**{name: setting or SWAPS[name][0]}))


@pytest.mark.parametrize("name", sorted(SWAPS))
def test_plan_entry_compresses_every_block_and_round_trips(model, name) -> None:
    plan = _plan(name)
    assert plan_from_json(plan.to_json()) == plan
    small = compress(model, plan)
    where = "mlp" if name == "grouped_ffn" else "attn"
    assert all(_swapped(getattr(b, where), name) for b in small.blocks)
    assert not any(_swapped(getattr(b, where), name) for b in model.blocks)  # untouched
    entry = plan.groups[0].config
    assert structure_only(entry) == entry          # applied in PyTorch before the ONNX export
    x = torch.randn(2, 80, 90)
    lengths = torch.tensor([90, 61])
    with torch.no_grad():
        out, out_len = small(x, lengths)
        alone, _ = small(x[1:, :, :61], lengths[1:])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1, : out_len[1]], alone[0], atol=1e-4, rtol=1e-4)


def test_window_in_seconds_becomes_frames_at_the_blocks(model) -> None:
    small = compress(model, _plan("windowed_attention", {"window_s": 0.2}))
    assert small.blocks[0].attn.window == 10            # 0.2 s at 50 frames per second


def test_grouped_ffn_halves_the_ffn_weights(model) -> None:
    small = compress(model, _plan("grouped_ffn"))
    ffn = lambda m: sum(p.numel() for p in m.blocks[0].mlp.parameters() if p.dim() == 2)  # noqa
    assert ffn(small) * 2 == ffn(model)


def test_swaps_compose_with_head_pruning(model) -> None:
    plan = CompressionPlan().with_group("attention", LayerConfig(
        prune=PruneConfig(amount=0.5, structure="heads"), windowed_attention={"window_s": 0.2}))
    small = compress(model, plan)
    attn = small.blocks[0].attn
    assert isinstance(attn, WindowedSelfAttention) and attn.n_heads == 2
    assert attn.q_proj.out_features == 2 * attn.head_dim


def _scores(table, block=0):
    return next(r for r in table.layers if r.path == f"blocks.{block}.attn.scores")


def test_windowed_scores_are_priced_linear_in_length(model) -> None:
    plan = _plan("windowed_attention", {"window_s": 0.2})           # W = 10 frames
    dense = layer_table(model, 4.0)
    table = layer_table(model, 4.0, plan)
    row, ref = _scores(table), _scores(dense)
    t = ref.positions                                                # 200 frames
    dh = ref.head_dim                                                # 32 / 4 heads = 8
    assert row.macs == 2 * 4 * t * 30 * dh                           # H * T * 3W * Dh, x2
    assert ref.macs == 2 * 4 * t * t * dh
    assert row.linear_in_length
    assert _scores(table.at_seconds(8.0)).macs == 2 * row.macs       # linear, not quadratic
    assert _scores(dense.at_seconds(8.0)).macs == 4 * ref.macs
    assert layer_table(model, 8.0, plan).macs == table.at_seconds(8.0).macs


def test_linear_and_performer_attention_are_one_kernelized_attention(model) -> None:
    """One base, two feature maps: both swaps are a KernelizedAttention and are priced by one
    formula, 2 H T m (Dh + 1) + H T x (feature-map MACs per position), linear in T: linear
    attention m = Dh with a free map (elu + 1), Performer m random features projected from q and
    k (2 m Dh)."""
    from workbench.compress.swap_layers import KernelizedAttention
    dense = _scores(layer_table(model, 4.0))
    h, t, dh, m = dense.heads, dense.positions, dense.head_dim, 16
    linear = _scores(layer_table(model, 4.0, _plan("linear_attention")))
    performer = _scores(layer_table(model, 4.0, _plan("performer_attention", {"features": m})))
    assert linear.macs == 2 * h * t * dh * (dh + 1) and linear.output_bytes == h * t * dh * 4
    assert performer.macs == 2 * h * t * m * (dh + 1) + h * t * 2 * m * dh
    assert performer.output_bytes == h * t * m * 4
    assert linear.linear_in_length and performer.linear_in_length
    for name in ("linear_attention", "performer_attention"):
        assert isinstance(compress(model, _plan(name)).blocks[0].attn, KernelizedAttention)


@pytest.mark.parametrize("name", sorted(SWAPS))
def test_engine_arithmetic_table_equals_the_shape_pass(model, name) -> None:
    """table_for_plan (the sliders' path: arithmetic on the dense table) prices a swap like a
    shape pass of the compressed model: same MACs and weights (per block)."""
    plan = _plan(name)
    exact = layer_table(model, 4.0, plan)
    quick = table_for_plan(layer_table(model, 4.0), model, plan)
    assert quick.macs == exact.macs
    assert quick.weight_bytes == exact.weight_bytes
    fields = ("path", "op", "macs", "params", "input_bytes", "output_bytes", "in_width",
              "out_width")
    assert ([tuple(getattr(r, f) for f in fields) for r in quick.layers]
            == [tuple(getattr(r, f) for f in fields) for r in exact.layers])
    if name != "grouped_ffn":
        assert quick.macs < layer_table(model, 4.0).macs or name == "windowed_attention"


def test_linear_attention_costs_less_than_full_at_long_audio(model) -> None:
    for name in ("linear_attention", "performer_attention", "windowed_attention"):
        long = layer_table(model, 30.0, _plan(name))
        assert _scores(long).macs < _scores(layer_table(model, 30.0)).macs / 10, name


@pytest.mark.parametrize("name", sorted(SWAPS))
def test_onnx_export_runs_in_ort_like_pytorch(model, name, tmp_path) -> None:
    from workbench.onnx_tools.exporter import export_fp32, to_bytes
    from workbench.onnx_tools.runtime import make_session
    small = compress(model, _plan(name))
    session = make_session(to_bytes(export_fp32(small, example_frames=100)))
    for frames in (57, 300):                       # the time axis stays dynamic
        torch.manual_seed(frames)
        x = torch.randn(1, 80, frames)
        ort_out, ort_len = session.run(None, {"features": x.numpy(),
                                              "feat_lengths": np.array([frames])})
        with torch.no_grad():
            ref, ref_len = small(x, torch.tensor([frames]))
        assert int(ort_len[0]) == int(ref_len[0])
        assert np.abs(ort_out - ref.numpy()).max() < 1e-4


# ---- bad inputs: one test each, the message names the input ----

def test_window_must_be_positive() -> None:
    with pytest.raises(PlanError, match="window_s"):
        LayerConfig(windowed_attention={"window_s": 0})


def test_attention_swap_on_an_ffn_is_refused(model) -> None:
    plan = CompressionPlan(layers={"blocks.0.mlp": LayerConfig(linear_attention={})})
    with pytest.raises(PlanError, match="blocks.0.mlp"):
        compress(model, plan)


def test_two_attention_swaps_on_one_module_are_refused(model) -> None:
    plan = CompressionPlan(layers={"blocks.0.attn": LayerConfig(
        linear_attention={}, windowed_attention={"window_s": 1.0})})
    with pytest.raises(PlanError, match="one swap per module"):
        compress(model, plan)


def test_groups_that_do_not_divide_the_widths_are_refused(model) -> None:
    plan = CompressionPlan(layers={"blocks.0.mlp": LayerConfig(grouped_ffn={"groups": 3})})
    with pytest.raises(PlanError, match="groups=3"):
        compress(model, plan)


def test_performer_features_must_be_a_positive_count() -> None:
    with pytest.raises(PlanError, match="features"):
        LayerConfig(performer_attention={"features": 0})


def test_unknown_feature_map_is_refused() -> None:
    with pytest.raises(PlanError, match="feature_map"):
        LayerConfig(linear_attention={"feature_map": "relu"})
