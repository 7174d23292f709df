"""Conformer-CTC: presets as data, shapes on any length, batch == per-item, roles, factories."""
from __future__ import annotations

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.models import (PRESETS, ROLE_NAMES, VOCAB, ConformerCTC, ConformerCTCConfig,
                              build_model, conformer_ctc, model_fingerprint, module_roles, role_of)
from workbench.models.conformer_ctc import subsampled_lengths

BATCH_TOL = 1e-4


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_presets_sizes() -> None:
    tiny, small = conformer_ctc("tiny"), conformer_ctc("small")
    assert tiny.config == PRESETS["tiny"] and len(tiny.blocks) == 2
    assert small.config.d_model == 144 and len(small.blocks) == 8
    assert 100_000 < _n_params(tiny) < 500_000
    assert 3_000_000 < _n_params(small) < 5_000_000
    assert conformer_ctc("tiny", d_model=32).config.d_model == 32
    with pytest.raises(WorkbenchError, match="preset='huge'"):
        conformer_ctc("huge")
    with pytest.raises(WorkbenchError, match=r"no fields \['width'\]"):
        conformer_ctc("tiny", width=3)
    with pytest.raises(WorkbenchError, match="divisible by n_heads"):
        ConformerCTCConfig(d_model=30, n_heads=4)


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 8, 9, 17, 100, 333])
def test_output_shapes_for_any_length(frames: int) -> None:
    torch.manual_seed(0)
    model = conformer_ctc("tiny").eval()
    with torch.no_grad():
        log_probs, lengths = model(torch.randn(1, 80, frames))
    expected = ((frames - 1) // 2) // 2 + 1  # two stride-2, pad-1 convs: ceil(ceil(T/2)/2)
    assert expected == -(-(-(-frames // 2)) // 2)  # noqa: B002 - negated floor division is ceil
    assert log_probs.shape == (1, expected, len(VOCAB)) and lengths.tolist() == [expected]
    assert torch.isfinite(log_probs).all()
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(1, expected), atol=1e-5)
    assert subsampled_lengths(torch.tensor([frames])).tolist() == [expected]


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_batch_equals_per_item(preset: str) -> None:
    torch.manual_seed(1)
    model = conformer_ctc(preset).eval()
    lengths = [1, 2, 3, 7, 40, 161]
    feats = [torch.randn(80, n) for n in lengths]
    batch = torch.full((len(feats), 80, max(lengths)), 5.0)  # garbage padding must not leak
    for i, f in enumerate(feats):
        batch[i, :, : f.shape[-1]] = f
    with torch.no_grad():
        log_probs, out_lengths = model(batch, torch.tensor(lengths))
        for i, f in enumerate(feats):
            alone, alone_len = model(f[None])
            n = int(alone_len)
            assert int(out_lengths[i]) == n
            diff = (log_probs[i, :n] - alone[0]).abs().max().item()
            assert diff < BATCH_TOL, (lengths[i], diff)


def test_training_mode_runs_and_backpropagates() -> None:
    torch.manual_seed(0)
    model = conformer_ctc("tiny").train()
    log_probs, lengths = model(torch.randn(2, 80, 50), torch.tensor([50, 31]))
    targets = torch.randint(1, len(VOCAB), (2, 4))
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, lengths,
                                        torch.tensor([4, 4]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_roles_cover_every_parameter_owning_module() -> None:
    model = conformer_ctc("tiny")
    roles = module_roles(model)
    assert set(roles.values()) <= set(ROLE_NAMES) and "other" not in roles.values()
    owners = {name.rsplit(".", 1)[0] for name, _ in model.named_parameters()}
    assert owners == set(roles)
    expected = {"subsample.conv1": "front-end", "subsample.proj": "front-end",
                "blocks.0.ffn1.fc1": "ffn", "blocks.1.ffn2.fc2": "ffn",
                "blocks.0.attn.q_proj": "attention", "blocks.0.conv.depthwise": "conv",
                "blocks.0.conv.pointwise1": "conv", "blocks.0.conv.norm": "norm",
                "blocks.1.final_ln": "norm", "blocks.0.conv_ln": "norm", "ctc_head": "head"}
    assert {k: roles[k] for k in expected} == expected
    assert role_of(model, "blocks.0.ffn1.fc1.0") == "ffn"  # a submodule a compressor may insert


def test_build_model_and_fingerprint() -> None:
    a = build_model("conformer_ctc", d_model=48, n_heads=4)
    assert isinstance(a, ConformerCTC) and a.config.d_model == 48
    b = build_model("conformer_ctc", d_model=48, n_heads=4)
    assert model_fingerprint(a) == model_fingerprint(b)  # architecture, not weight values
    assert model_fingerprint(a) != model_fingerprint(build_model("conformer_ctc"))
    with pytest.raises(WorkbenchError, match="unknown model family 'rnn'"):
        build_model("rnn")


def test_encode_until_restarts_exactly() -> None:
    torch.manual_seed(0)
    model = conformer_ctc("tiny").eval()
    x, lens = torch.randn(2, 80, 60), torch.tensor([60, 33])
    with torch.no_grad():
        full, out_lens = model(x, lens)
        h, h_lens = model.encode_until(x, lens, 1)  # input of block 1
        mask = torch.arange(h.shape[1])[None, :] >= h_lens[:, None]
        restarted = model.head(model.blocks[1](h, mask), h_lens).log_softmax(-1)
        stem_only, _ = model.encode_until(x, lens, 0)
    assert torch.equal(h_lens, out_lens)
    assert torch.allclose(restarted, full, atol=1e-6)
    assert torch.equal(stem_only, model.stem(x, lens)[0])
    with pytest.raises(ValueError, match=r"stop: must be in 0\.\.2"):
        model.encode_until(x, lens, 3)
