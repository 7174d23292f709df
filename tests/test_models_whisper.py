"""WhisperCTC: pretrained weights mapped exactly once, parity with CTranslate2's own Whisper encoder,
shapes on any length, batch == per-item, the 30 s limit, and the Hugging Face loader."""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.errors import CheckpointError, WorkbenchError
from workbench.features import log_mel
from workbench.models import (ROLE_NAMES, VOCAB, WhisperCTC, WhisperCTCConfig, build_model,
                              load_whisper_ct2, load_whisper_hf, module_roles,
                              whisper_ctc_pretrained)
from workbench.models.ct2_reader import CT2File, default_whisper_dir, read_ct2
from workbench.models.whisper_weights import ct2_to_state_dict

# Parity tolerance vs CTranslate2 (both run in float32 from the same fp16-stored weights; the
# differences are summation order and kernels in GEMMs/attention, which depend on the CPU).
# Measured: max |diff| 8.9e-4 on encoder outputs up to |12.6| on a VNNI / AVX-512 CPU, 0.0104 on
# an AVX2-only CPU (2026-12-02), per-frame cosine >= 0.9999997. So the bound is relative to the
# output's range: 0.2 % of max |output| (~0.025 here); one mis-mapped tensor moves outputs by O(1)
# and the cosine far below 0.9999.
PARITY_MAX_REL = 2e-3
PARITY_MIN_COS = 0.9999
BATCH_TOL = 1e-4


@pytest.fixture(scope="module")
def pretrained() -> WhisperCTC:
    torch.set_num_threads(1)
    return whisper_ctc_pretrained()


def _test_wave(seconds: float, seed: int = 0) -> torch.Tensor:
    """A deterministic chirp + noise at 16 kHz (the parity compares encoders, any signal works)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16_000)) / 16_000
    return 0.3 * torch.sin(2 * math.pi * (200 + 100 * t) * t) + 0.05 * torch.randn(len(t), generator=g)


def test_every_ct2_encoder_tensor_is_used_exactly_once() -> None:
    ct2 = read_ct2(default_whisper_dir())
    mapped = ct2_to_state_dict(ct2)
    encoder = [n for n in ct2.variables if n.startswith("encoder/")]
    assert len(encoder) == 4 * 12 + 8  # 12 per layer; conv1/2 w+b, positions, ln w+b, num_heads
    assert mapped.uses == {n: 1 for n in encoder}
    assert set(mapped.ignored) == {n for n in ct2.variables if n.startswith("decoder/")}
    ours = {k for k in WhisperCTC().state_dict() if not k.startswith("ctc_head.")}
    # The positional table is checked against Whisper's sinusoid formula, then computed, not stored.
    assert set(mapped.state) == ours | {"positional_embedding"}
    assert mapped.config == WhisperCTCConfig()
    # a split of the fused qkv really is q, k, v: the key part of the fused bias is zero
    fused = ct2.variables["encoder/layer_0/self_attention/linear_0/weight"].astype(np.float32)
    np.testing.assert_array_equal(mapped.state["blocks.0.attn.k_proj.weight"].numpy(), fused[384:768])


def test_ct2_mapping_refuses_unknown_missing_or_unrepresentable_tensors() -> None:
    ct2 = read_ct2(default_whisper_dir())

    def with_variables(change) -> CT2File:  # a modified copy of the parsed file
        variables = OrderedDict(ct2.variables)
        change(variables)
        return dataclasses.replace(ct2, variables=variables)

    extra = with_variables(lambda v: v.__setitem__("encoder/layer_0/extra/weight", np.zeros(3)))
    with pytest.raises(CheckpointError, match=r"unused \['encoder/layer_0/extra/weight'\]"):
        ct2_to_state_dict(extra)
    missing = with_variables(lambda v: v.pop("encoder/layer_2/ffn/linear_1/bias"))
    with pytest.raises(CheckpointError, match=r"'encoder/layer_2/ffn/linear_1/bias' is missing"):
        ct2_to_state_dict(missing)

    def key_bias(v: OrderedDict) -> None:
        bias = v["encoder/layer_1/self_attention/linear_0/bias"].copy()
        bias[400] = 0.5
        v["encoder/layer_1/self_attention/linear_0/bias"] = bias
    with pytest.raises(CheckpointError, match=r"non-zero key bias"):
        ct2_to_state_dict(with_variables(key_bias))


def test_pretrained_weights_equal_the_file_and_head_is_seeded(pretrained: WhisperCTC) -> None:
    ct2 = read_ct2(default_whisper_dir())
    np.testing.assert_array_equal(pretrained.conv2.weight.detach().numpy(),
                                  ct2.variables["encoder/conv2/weight"].astype(np.float32))
    np.testing.assert_array_equal(pretrained.blocks[3].mlp.fc2.bias.detach().numpy(),
                                  ct2.variables["encoder/layer_3/ffn/linear_1/bias"].astype(np.float32))
    assert not pretrained.training and pretrained.conv1.weight.dtype == torch.float32
    again = load_whisper_ct2()
    for (name, a), b in zip(pretrained.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name  # the fresh CTC head is seeded, so loads are identical
    a, b = WhisperCTC(), WhisperCTC()
    assert torch.equal(a.ctc_head.proj_in.weight, b.ctc_head.proj_in.weight)
    # the head's fixed seed does not reset the caller's RNG: the next random init still differs
    assert not torch.equal(a.blocks[0].mlp.fc1.weight, b.blocks[0].mlp.fc1.weight)


def test_encoder_matches_ctranslate2(pretrained: WhisperCTC) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    mel = log_mel(_test_wave(30.0))
    assert mel.shape == (80, 3000)
    with torch.no_grad():
        h, lengths = pretrained.stem(mel[None], torch.tensor([3000]))
        for block in pretrained.blocks:
            h = block(h, None)
        ours = pretrained.ln_post(h)[0]
        encoded, _ = pretrained.encode(mel[None])
    assert torch.equal(encoded[0], ours) and lengths.tolist() == [1500]
    reference = ctranslate2.models.Whisper(str(default_whisper_dir()), device="cpu",
                                           compute_type="float32", intra_threads=1)
    out = reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None].numpy())))
    theirs = torch.from_numpy(np.array(out))[0]
    assert theirs.shape == ours.shape == (1500, 384)
    max_abs = (ours - theirs).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).min().item()
    assert max_abs < PARITY_MAX_REL * theirs.abs().max().item(), (max_abs, theirs.abs().max())
    assert cos > PARITY_MIN_COS, cos


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 17, 100, 301, 2999, 3000])
def test_output_shapes_for_any_length(pretrained: WhisperCTC, frames: int) -> None:
    with torch.no_grad():
        log_probs, lengths = pretrained(torch.randn(1, 80, frames))
    expected = (frames - 1) // 2 + 1
    assert log_probs.shape == (1, expected, len(VOCAB)) and lengths.tolist() == [expected]
    assert torch.isfinite(log_probs).all()
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(1, expected), atol=1e-5)


def test_over_30_seconds_is_refused_clearly(pretrained: WhisperCTC) -> None:
    with pytest.raises(WorkbenchError, match=r"3002 mel frames.*1500 positions.*Split the audio"):
        pretrained(torch.zeros(1, 80, 3002))


def test_bad_lengths_are_refused(pretrained: WhisperCTC) -> None:
    with pytest.raises(WorkbenchError, match="feat_lengths"):
        pretrained(torch.zeros(2, 80, 10), torch.tensor([10, 0]))
    with pytest.raises(WorkbenchError, match=r"features: expected shape \(batch, 80, frames\)"):
        pretrained(torch.zeros(2, 40, 10))


def test_batch_equals_per_item(pretrained: WhisperCTC) -> None:
    lengths = [1, 2, 3, 57, 200, 351]
    feats = [log_mel(_test_wave(n / 100 + 0.005, seed=n))[:, :n] for n in lengths]
    batch = torch.full((len(feats), 80, max(lengths)), 7.0)  # garbage padding must not leak
    for i, f in enumerate(feats):
        batch[i, :, : f.shape[-1]] = f
    with torch.no_grad():
        log_probs, out_lengths = pretrained(batch, torch.tensor(lengths))
        for i, f in enumerate(feats):
            alone, alone_len = pretrained(f[None], torch.tensor([f.shape[-1]]))
            n = int(alone_len)
            assert int(out_lengths[i]) == n
            diff = (log_probs[i, :n] - alone[0]).abs().max().item()
            assert diff < BATCH_TOL, (lengths[i], diff)


def test_roles_cover_every_parameter_owning_module() -> None:
    model = WhisperCTC()
    roles = module_roles(model)
    assert set(roles.values()) <= set(ROLE_NAMES) and "other" not in roles.values()
    owners = {name.rsplit(".", 1)[0] for name, _ in model.named_parameters()}
    assert owners == set(roles)
    assert roles["conv1"] == "front-end" and roles["blocks.2.attn.k_proj"] == "attention"
    assert roles["blocks.0.mlp.fc1"] == "ffn" and roles["blocks.0.mlp_ln"] == "norm"
    assert roles["ln_post"] == "norm" and roles["ctc_head.dwconv"] == "head"


class _Sneaky:
    """Unpickling this would run code (print); the weights-only loader must refuse it."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def _fake_hf_state(model: WhisperCTC) -> dict[str, torch.Tensor]:
    """Our weights under transformers' WhisperForConditionalGeneration names (what HF ships)."""
    sd, p = model.state_dict(), "model.encoder."
    out = {p + "conv1.weight": sd["conv1.weight"], p + "conv1.bias": sd["conv1.bias"],
           p + "conv2.weight": sd["conv2.weight"], p + "conv2.bias": sd["conv2.bias"],
           p + "embed_positions.weight": model.positional_embedding.clone(),
           p + "layer_norm.weight": sd["ln_post.weight"], p + "layer_norm.bias": sd["ln_post.bias"],
           "model.decoder.embed_tokens.weight": torch.zeros(8, 384),
           "proj_out.weight": torch.zeros(8, 384)}
    names = {"attn_ln": "self_attn_layer_norm", "mlp_ln": "final_layer_norm", "mlp.fc1": "fc1",
             "mlp.fc2": "fc2", "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj",
             "attn.v_proj": "self_attn.v_proj", "attn.out_proj": "self_attn.out_proj"}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            module, kind = ".".join(parts[2:-1]), parts[-1]
            out[f"{p}layers.{parts[1]}.{names[module]}.{kind}"] = value
    return {k: v.clone().contiguous() for k, v in out.items()}


def test_hugging_face_layout_round_trip(pretrained: WhisperCTC, tmp_path: Path) -> None:
    from safetensors.torch import save_file
    save_file(_fake_hf_state(pretrained), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"encoder_attention_heads": 6, "d_model": 384}')
    loaded = load_whisper_hf(tmp_path)
    assert loaded.config == WhisperCTCConfig()
    for (name, a), b in zip(pretrained.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # the same through pytorch_model.bin (read with weights_only=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(_fake_hf_state(pretrained), bin_dir / "pytorch_model.bin")
    assert torch.equal(load_whisper_hf(bin_dir).blocks[1].attn.q_proj.weight,
                       pretrained.blocks[1].attn.q_proj.weight)


def test_hugging_face_layout_refuses_incomplete_or_unknown(pretrained: WhisperCTC,
                                                          tmp_path: Path) -> None:
    from safetensors.torch import save_file
    state = _fake_hf_state(pretrained)
    del state["model.encoder.layers.2.fc1.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model\.encoder\.layers\.2\.fc1\.bias' is missing"):
        load_whisper_hf(tmp_path)
    state = _fake_hf_state(pretrained)
    state["model.encoder.layers.0.self_attn.k_proj.bias"] = torch.zeros(384)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unused \['model\.encoder\.layers\.0\.self_attn"):
        load_whisper_hf(tmp_path)
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"model.encoder.conv1.weight": _Sneaky()}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: contains pickled code"):
        load_whisper_hf(evil)
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        load_whisper_hf(tmp_path / "empty")


def test_build_model_gives_an_untrained_whisper() -> None:
    model = build_model("whisper_ctc")
    assert isinstance(model, WhisperCTC) and model.config == WhisperCTCConfig()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 7_739_933  # Whisper tiny encoder 7,632,384 + CTC head 107,549
    with pytest.raises(WorkbenchError, match="no fields"):
        build_model("whisper_ctc", width=3)
