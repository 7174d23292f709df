"""profile(): MACs equal hand counts, the caller's model is untouched, foreign models work."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchaudio.models import Conformer, wav2vec2_model

from workbench.errors import WorkbenchError
from workbench.models import ROLE_NAMES, build_model, conformer_ctc
from workbench.layer_profile import profile

SECONDS = 2.0


@pytest.fixture(scope="module")
def whisper_small() -> nn.Module:
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=32, n_heads=2, n_layers=2, d_ff=64, n_ctx=200,
                       head_dim=16).eval()


@pytest.fixture(scope="module")
def whisper_profile(whisper_small: nn.Module):
    return profile(whisper_small, SECONDS, measure=True, repeats=3)


def _conformer_ta() -> nn.Module:
    torch.manual_seed(0)
    return Conformer(input_dim=80, num_heads=4, ffn_dim=128, num_layers=2,
                     depthwise_conv_kernel_size=31)


def _conformer_inputs(seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    frames = round(seconds * 100)
    return torch.randn(1, frames, 80), torch.tensor([frames])


def _wav2vec2_tiny() -> nn.Module:
    torch.manual_seed(0)
    return wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[(32, 10, 5), (32, 3, 2),
                                                                  (32, 2, 2)],
        extractor_conv_bias=False, encoder_embed_dim=64, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2,
        encoder_num_heads=4, encoder_attention_dropout=0.0, encoder_ff_interm_features=128,
        encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_norm_first=False,
        encoder_layer_drop=0.0, aux_num_out=29)


def _rows(p) -> dict:
    return {r.path: r for r in p.rows}


def test_macs_of_linear_conv_and_attention_equal_hand_counts(whisper_profile) -> None:
    rows = _rows(whisper_profile)
    t_in = 200                       # 2 s of mel frames at 100 Hz
    t = (t_in - 1) // 2 + 1          # after conv2 (k3, stride 2, pad 1): 100 frames at 50 Hz
    d, heads, dh, ff, head_w = 32, 2, 16, 64, 16
    assert rows["conv1"].macs == t_in * d * 80 * 3           # T_out * C_out * C_in/groups * k
    assert rows["conv2"].macs == t * d * d * 3
    assert rows["ctc_head.dwconv"].macs == t * head_w * 1 * 5  # depthwise: C_in/groups = 1
    assert rows["blocks.0.attn.q_proj"].macs == t * d * heads * dh
    assert rows["blocks.1.mlp.fc1"].macs == t * d * ff
    assert rows["blocks.1.mlp.fc2"].macs == t * ff * d
    assert rows["ctc_head.proj_out"].macs == t * head_w * 29
    scores = rows["blocks.0.attn.scores"]
    assert scores.macs == 2 * heads * t * t * dh               # QK^T and AV
    assert (scores.kind, scores.role, scores.heads, scores.head_dim) == (
        "attention_scores", "attention", heads, dh)
    assert scores.activation_bytes == heads * t * t * 4        # the fp32 score matrix


def test_rows_cover_every_parameter_and_have_roles(whisper_small, whisper_profile) -> None:
    assert whisper_profile.params == sum(p.numel() for p in whisper_small.parameters())
    roles = {r.path: r.role for r in whisper_profile.rows}
    assert roles["conv1"] == "front-end" and roles["blocks.0.mlp.fc1"] == "ffn"
    assert roles["blocks.0.attn_ln"] == "norm" and roles["ctc_head.proj_in"] == "head"
    assert all(r.role in ROLE_NAMES for r in whisper_profile.rows)
    paths = [r.path for r in whisper_profile.rows]
    # scores sit in execution order: after v_proj, before out_proj
    assert paths.index("blocks.0.attn.v_proj") < paths.index("blocks.0.attn.scores") < \
        paths.index("blocks.0.attn.out_proj")


def test_measured_times_and_role_tables(whisper_profile) -> None:
    p = whisper_profile
    assert all(r.time_ms is not None and r.time_ms >= 0 for r in p.rows)
    assert p.total_ms > 0 and p.repeats == 3
    by_role = p.by_role()
    assert sum(v.macs for v in by_role.values()) == p.macs
    assert sum(v.macs_share for v in by_role.values()) == pytest.approx(1.0, abs=1e-9)
    assert sum(v.time_share for v in by_role.values()) == pytest.approx(1.0, abs=1e-9)
    split = p.by_role(split_scores=True)
    assert split["attention scores"].macs + split["attention"].macs == by_role["attention"].macs
    assert p.peak_activation_bytes >= max(r.input_bytes + r.activation_bytes for r in p.rows)


def test_unmeasured_profile_has_no_times(whisper_small) -> None:
    p = profile(whisper_small, 1.0, measure=False)
    assert p.total_ms is None and all(r.time_ms is None for r in p.rows)
    assert p.by_role()["ffn"].time_ms is None


def test_vs_length_scores_grow_with_t_squared(whisper_small, whisper_profile) -> None:
    shares = whisper_profile.vs_length([1.0, 2.0, 4.0])
    assert shares[1.0]["attention scores"] < shares[2.0]["attention scores"] < \
        shares[4.0]["attention scores"]
    assert all(sum(s.values()) == pytest.approx(1.0) for s in shares.values())
    # the analytic scaling agrees with a real shape pass at 4 s
    exact = profile(whisper_small, 4.0, measure=False).by_role(split_scores=True)
    total = sum(v.macs for v in exact.values())
    for role, share in shares[4.0].items():
        assert share == pytest.approx(exact[role].macs / total, abs=0.01)


def test_profile_leaves_mode_and_weights_unchanged() -> None:
    model = _conformer_ta()          # BatchNorm1d: a train-mode forward would move its stats
    model.train()
    model.conformer_layers[0].ffn1.eval()   # a mixed mode must survive too
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    profile(model, 1.0, make_inputs=_conformer_inputs, repeats=2)
    assert {n: m.training for n, m in model.named_modules()} == modes
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)


def test_profile_works_on_torchaudio_conformer() -> None:
    model = _conformer_ta()
    p = profile(model, SECONDS, measure=False, make_inputs=_conformer_inputs)
    rows = _rows(p)
    t, d, heads = 200, 80, 4
    assert p.params == sum(x.numel() for x in model.parameters())
    mha = "conformer_layers.0.self_attn"
    assert rows[f"{mha}.in_proj"].macs == t * d * 3 * d
    assert rows[f"{mha}.scores"].macs == 2 * heads * t * t * (d // heads)
    assert rows[f"{mha}.out_proj"].macs == t * d * d
    dw = rows["conformer_layers.0.conv_module.sequential.2"]
    assert dw.macs == t * d * 1 * 31 and dw.role == "conv"
    assert rows["conformer_layers.0.ffn1.sequential.1"].role == "ffn"
    assert rows["conformer_layers.0.final_layer_norm"].role == "norm"
    assert {r.role for r in p.rows} >= {"attention", "ffn", "conv", "norm"}


def test_profile_works_on_small_wav2vec2() -> None:
    model = _wav2vec2_tiny()
    p = profile(model, 1.0, measure=True, repeats=2,
                make_inputs=lambda s: (torch.randn(1, round(16000 * s)),))
    rows = _rows(p)
    first = rows["feature_extractor.conv_layers.0.conv"]
    assert first.role == "front-end"
    assert first.macs == 3199 * 32 * 1 * 10          # (16000 - 10) // 5 + 1 output frames
    scores = rows["encoder.transformer.layers.0.attention.scores"]
    t = rows["encoder.transformer.layers.0.attention.q_proj"].positions
    assert scores.macs == 2 * 4 * t * t * 16
    assert rows["encoder.transformer.layers.0.feed_forward.intermediate_dense"].role == "ffn"
    assert rows["aux"].role == "head"
    assert all(r.time_ms is not None for r in p.rows)


def test_conformer_ctc_conv2d_front_end() -> None:
    model = conformer_ctc("tiny").eval()
    rows = _rows(profile(model, SECONDS, measure=False))
    conv1 = rows["subsample.conv1"]
    # Conv2d(1 -> C, k3, stride 2, pad 1) on (1, 1, T=200, F=80): 100 x 40 output positions
    assert conv1.positions == 100 * 40
    assert conv1.macs == 100 * 40 * conv1.out_width * 1 * 9
    assert conv1.role == "front-end"


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_non_positive_audio_is_refused(whisper_small, seconds) -> None:
    with pytest.raises(WorkbenchError, match="audio_seconds"):
        profile(whisper_small, seconds, measure=False)


def test_foreign_model_without_inputs_is_refused() -> None:
    with pytest.raises(WorkbenchError, match="make_inputs"):
        profile(_conformer_ta(), 1.0, measure=False)
