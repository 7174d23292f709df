"""The swaps reuse the modules they are built from (review 7, finding 31): a grouped FFN is the
FFN itself with grouped fc1 / fc2 (its forward, activation and dropout kept), and an attention
swap keeps its projections as they are, so a projection already factorized or quantized (a
compressed or recovered checkpoint swapped afterwards) keeps its form and its function."""
from __future__ import annotations

import copy

import pytest
import torch

from workbench.compress import compress
from workbench.compress.lowrank import LowRankLinear
from workbench.compress.swap_layers import GroupedLinear, WindowedSelfAttention
from workbench.models import build_model
from workbench.models.layers import FeedForward
from workbench.plan import CompressionPlan, LayerConfig, QuantConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=32, n_heads=4, n_layers=2, d_ff=64, n_ctx=1500,
                       head_dim=16).eval()


def test_a_grouped_ffn_is_the_ffn_with_grouped_linears(model) -> None:
    plan = CompressionPlan().with_group("ffn", LayerConfig(grouped_ffn={"groups": 2}))
    ffn = compress(model, plan).blocks[0].mlp
    assert type(ffn) is FeedForward and ffn.activation == model.blocks[0].mlp.activation
    assert isinstance(ffn.fc1, GroupedLinear) and isinstance(ffn.fc2, GroupedLinear)
    assert isinstance(ffn.dropout, torch.nn.Dropout)
    assert type(model.blocks[0].mlp.fc1) is torch.nn.Linear              # the input untouched


def _outputs_equal(a, b) -> None:
    x, lengths = torch.randn(1, 80, 120), torch.tensor([120])
    with torch.no_grad():
        torch.testing.assert_close(a(x, lengths)[0], b(x, lengths)[0], atol=1e-5, rtol=1e-5)


def test_a_quantized_projection_stays_quantized_through_a_swap(model) -> None:
    attn = "blocks.0.attn"
    compressed = compress(model, CompressionPlan().with_layer(f"{attn}.q_proj", LayerConfig(
        quant=QuantConfig(weight_bits=8))))
    # a window longer than the input: windowed attention computes full attention exactly
    swapped = compress(compressed, CompressionPlan().with_layer(attn, LayerConfig(
        windowed_attention={"window_s": 30.0})))
    block = swapped.get_submodule(attn)
    assert isinstance(block, WindowedSelfAttention)
    assert type(block.q_proj) is type(compressed.get_submodule(f"{attn}.q_proj"))
    _outputs_equal(swapped, compressed)


def test_a_low_rank_projection_keeps_its_factors_in_the_swap_layer(model) -> None:
    """(A plan cannot name an attention whose projection is already factorized: the layer
    itself is built, as a recovery or a later swap of such a checkpoint would.)"""
    compressed = compress(model, CompressionPlan().with_layer("blocks.0.attn.q_proj",
                                                              LayerConfig(rank=4)))
    source = compressed.blocks[0].attn
    assert isinstance(source.q_proj, LowRankLinear)
    swapped = copy.deepcopy(compressed)
    # a window longer than the input (120 mel frames -> 60 at the blocks) is full attention
    # exactly; 128, not 10_000: the blocked attention pads to whole windows (scores of
    # W x 3W per block: 1.2e9 floats at W = 10_000, 43 s; 49k at W = 128)
    swapped.blocks[0].attn = WindowedSelfAttention(source, window=128)
    assert isinstance(swapped.blocks[0].attn.q_proj, LowRankLinear)
    assert swapped.blocks[0].attn.q_proj is not source.q_proj           # a copy
    _outputs_equal(swapped, compressed)
