"""Architecture swaps (workbench.compress.swap_layers): each replacement, built from the original
weights, keeps the batching invariant (a padded batch equals each item alone on real frames) and
reduces to the original where theory says it must."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.compress.swap_layers import (GroupedLinear, LinearSelfAttention,
                                            PerformerSelfAttention, WindowedSelfAttention,
                                            assign_neurons, grouped_from, orthogonal_features)
from workbench.models.layers import FeedForward, MultiHeadSelfAttention, lengths_to_pad_mask

SWAPS = {
    "windowed": lambda a: WindowedSelfAttention(a, window=4),
    "linear": LinearSelfAttention,
    "performer": lambda a: PerformerSelfAttention(a, features=32, seed=1),
}


@pytest.fixture(scope="module")
def attn() -> MultiHeadSelfAttention:
    torch.manual_seed(0)
    return MultiHeadSelfAttention(32, 4, k_bias=False).eval()


@pytest.mark.parametrize("name", sorted(SWAPS))
def test_padded_batch_equals_each_item_alone(attn, name) -> None:
    swap = SWAPS[name](attn).eval()
    torch.manual_seed(1)
    lengths = torch.tensor([23, 9, 1])
    x = torch.randn(3, 23, 32)
    x[1, 9:] = 1e3            # garbage on padding must not leak into real frames
    with torch.no_grad():
        batch = swap(x, lengths_to_pad_mask(lengths, 23))
        assert torch.isfinite(batch).all()
        for i, n in enumerate(lengths.tolist()):
            alone = swap(x[i:i + 1, :n])
            torch.testing.assert_close(batch[i, :n], alone[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(SWAPS))
def test_swap_copies_the_projections_and_leaves_the_source_alone(attn, name) -> None:
    before = {k: v.clone() for k, v in attn.state_dict().items()}
    swap = SWAPS[name](attn)
    for key, value in before.items():
        torch.testing.assert_close(swap.state_dict()[key], value)
        assert swap.state_dict()[key].data_ptr() != attn.state_dict()[key].data_ptr()
    with torch.no_grad():
        swap.q_proj.weight.add_(1.0)
    torch.testing.assert_close(attn.state_dict()["q_proj.weight"], before["q_proj.weight"])


@pytest.mark.parametrize("window", [23, 40])
def test_a_window_covering_the_input_is_full_attention(attn, window) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 23, 32)
    pad = lengths_to_pad_mask(torch.tensor([23, 17]), 23)
    with torch.no_grad():
        torch.testing.assert_close(WindowedSelfAttention(attn, window)(x, pad), attn(x, pad),
                                   atol=1e-5, rtol=1e-5)


def test_a_small_window_sees_only_its_neighbourhood(attn) -> None:
    """Frame 0 with window 4 sees frames 0..7 (its block and the next): changing frame 12
    leaves it unchanged, changing frame 7 does not."""
    swap = WindowedSelfAttention(attn, 4).eval()
    torch.manual_seed(3)
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        y = swap(x)
        far, near = x.clone(), x.clone()
        far[0, 12] += 5.0
        near[0, 7] += 5.0
        assert torch.equal(swap(far)[0, 0], y[0, 0])
        assert not torch.allclose(swap(near)[0, 0], y[0, 0])


def test_linear_attention_matches_its_formula(attn) -> None:
    swap = LinearSelfAttention(attn).eval()
    torch.manual_seed(4)
    x = torch.randn(1, 7, 32)
    with torch.no_grad():
        q = swap.q_proj(x).view(1, 7, 4, 8).transpose(1, 2)
        k = swap.k_proj(x).view(1, 7, 4, 8).transpose(1, 2)
        v = swap.v_proj(x).view(1, 7, 4, 8).transpose(1, 2)
        fq, fk = nn.functional.elu(q) + 1, nn.functional.elu(k) + 1
        weights = fq @ fk.transpose(-1, -2)                         # (1, H, T, T)
        y = (weights / weights.sum(-1, keepdim=True)) @ v
        ref = swap.out_proj(y.transpose(1, 2).reshape(1, 7, 32))
        torch.testing.assert_close(swap(x), ref, atol=1e-5, rtol=1e-4)


def test_performer_approaches_softmax_attention_as_features_grow() -> None:
    """FAVOR+ is an unbiased estimate of the softmax kernel: with small q.k (where its variance
    is low) many features give a far closer output than few."""
    torch.manual_seed(5)
    attn = MultiHeadSelfAttention(32, 4).eval()
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj):
            proj.weight.mul_(0.3)
    x = torch.randn(1, 20, 32)
    with torch.no_grad():
        ref = attn(x)
        err = {m: float((PerformerSelfAttention(attn, m, seed=0)(x) - ref).abs().mean())
               for m in (8, 2048)}
    assert err[2048] < 0.3 * err[8], err


def test_orthogonal_features_are_orthogonal_within_a_block() -> None:
    w = orthogonal_features(16, 8, seed=0).double()
    gram = w[:8] @ w[:8].T
    off = gram - torch.diag(torch.diag(gram))
    assert off.abs().max() < 1e-5
    assert not torch.equal(w, orthogonal_features(16, 8, seed=1))


def test_grouped_ffn_of_a_block_diagonal_ffn_is_exact() -> None:
    """An FFN whose weights are already block-diagonal (up to a neuron permutation) loses
    nothing: the assignment finds the blocks."""
    torch.manual_seed(6)
    ffn = FeedForward(8, 16).eval()
    perm = torch.randperm(16)
    with torch.no_grad():
        w1 = torch.zeros(16, 8)
        w2 = torch.zeros(8, 16)
        w1[:8, :4] = torch.randn(8, 4)
        w1[8:, 4:] = torch.randn(8, 4)
        w2[:4, :8] = torch.randn(4, 8)
        w2[4:, 8:] = torch.randn(4, 8)
        ffn.fc1.weight.copy_(w1[perm])
        ffn.fc1.bias.copy_(torch.randn(16))
        ffn.fc2.weight.copy_(w2[:, perm])
    grouped = grouped_from(ffn, 2)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(grouped(x), ffn(x), atol=1e-5, rtol=1e-5)
    dense = sum(p.numel() for p in ffn.parameters() if p.dim() == 2)
    assert sum(p.numel() for p in grouped.parameters() if p.dim() == 2) == dense // 2


def test_neuron_assignment_is_balanced_and_complete() -> None:
    torch.manual_seed(7)
    groups = assign_neurons(torch.randn(24, 12), 3)
    assert groups.shape == (3, 8)
    assert sorted(groups.flatten().tolist()) == list(range(24))


def test_grouped_linear_is_block_diagonal() -> None:
    torch.manual_seed(8)
    layer = GroupedLinear([nn.Linear(3, 2), nn.Linear(3, 2)])
    x = torch.randn(4, 6)
    dense = torch.zeros(4, 6)
    with torch.no_grad():
        dense[:2, :3] = layer.parts[0].weight
        dense[2:, 3:] = layer.parts[1].weight
        bias = torch.cat([layer.parts[0].bias, layer.parts[1].bias])
        torch.testing.assert_close(layer(x), x @ dense.T + bias)


def test_grouped_ffn_refuses_groups_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="groups=3"):
        grouped_from(FeedForward(8, 16), 3)
