"""size(): exact bytes by hand on single layers, fp32 identity, and plan pricing == measurement."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workbench.compress import CalibrationBatch, compress, presets
from workbench.plan import CompressionPlan, GroupEntry, LayerConfig, PruneConfig, QuantConfig
from workbench.size import WeightSpec, size, size_of_compressed, storage_bytes


@pytest.fixture(scope="module")
def model(tiny_conformer) -> nn.Module:
    return tiny_conformer


def _fp32_bytes(m: nn.Module) -> int:
    """4 bytes per parameter + every persistent buffer in its own dtype."""
    buffers = {k for k, _ in m.named_buffers()}
    return (4 * sum(p.numel() for p in m.parameters())
            + sum(t.numel() * t.element_size() for k, t in m.state_dict().items() if k in buffers))


def _single(out: int = 48, k: int = 100) -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"fc": nn.Linear(k, out)})


def _plan(**quant) -> CompressionPlan:
    return CompressionPlan(layers={"fc": LayerConfig(quant=QuantConfig(**quant))})


def test_untouched_plan_is_fp32_params_plus_buffers(model: nn.Module,
                                                    whisper_small: nn.Module) -> None:
    for m in (model, whisper_small):
        report = size(m, CompressionPlan())
        assert report.total_bytes == report.baseline_bytes == _fp32_bytes(m)
        assert report.ratio == 1.0 and report.params == sum(p.numel() for p in m.parameters())
    # whisper's positional table is a formula (a non-persistent buffer), not stored: not counted
    assert "positional_embedding" not in whisper_small.state_dict()


def test_int8_per_channel_single_linear_by_hand() -> None:
    # 48 x 100 int8 weights + fp32 scale and int8 zero point per output channel + fp32 bias
    row = size(_single(), _plan(weight_bits=8)).layer("fc")
    assert (row.weight_bytes, row.scale_bytes, row.zero_point_bytes) == (4800, 48 * 4, 48)
    assert row.other_bytes == 48 * 4 and row.total_bytes == 4800 + 192 + 48 + 192
    assert row.baseline_bytes == 4 * (48 * 100 + 48)
    tensor = size(_single(), _plan(weight_bits=8, granularity="per_tensor")).layer("fc")
    assert (tensor.weight_bytes, tensor.scale_bytes, tensor.zero_point_bytes) == (4800, 4, 1)


def test_4bit_block_single_linear_by_hand() -> None:
    # MatMulNBits: K = 100 -> 4 blocks of 32 (K padded to 128); each block of one row packs
    # 32 x 4 bits = 16 bytes and has one fp32 scale; symmetric: no zero points.
    row = size(_single(), _plan(weight_bits=4, granularity="per_block")).layer("fc")
    assert (row.weight_bytes, row.scale_bytes, row.zero_point_bytes) == (48 * 4 * 16, 48 * 4 * 4, 0)
    # asymmetric: 4 zero points per row packed 4-bit -> 2 bytes per row
    asym = size(_single(), _plan(weight_bits=4, granularity="per_block", symmetric=False))
    assert asym.layer("fc").zero_point_bytes == 48 * 2
    # other widths: packed bits + per-channel fp32 scale (3 bits x 4800 = 1800 bytes)
    three = size(_single(), _plan(weight_bits=3)).layer("fc")
    assert (three.weight_bytes, three.scale_bytes, three.zero_point_bytes) == (1800, 192, 0)
    fp16 = size(_single(), _plan(weight_bits=16)).layer("fc")
    assert (fp16.weight_bytes, fp16.scale_bytes) == (9600, 0)
    act = size(_single(), _plan(weight_bits=8, act_bits=8)).layer("fc")
    assert (act.scale_bytes, act.zero_point_bytes) == (192 + 4, 48 + 1)


def test_unstructured_sparsity_index_by_hand() -> None:
    # 90 % of 4800 weights removed: 480 fp32 values; bitmap 600 bytes vs CSR 4*480 + 4*49 = 2116
    plan = CompressionPlan(layers={"fc": LayerConfig(prune=PruneConfig(amount=0.9))})
    report = size(_single(), plan)
    row = report.layer("fc")
    assert (row.weight_bytes, row.index_bytes) == (480 * 4, 600)
    assert "bitmap" in row.format and row.dense_bytes == 4 * 4800 + 4 * 48
    assert "no speed-up on CPU" in report.note
    # very sparse: 100 of 4 x 4096 weights left -> CSR 4 x 100 + 4 x 5 = 420 < bitmap 2048
    spec = WeightSpec(out=4, k=4096, bits=32, nnz=100)
    sizes = storage_bytes(spec)
    assert sizes["index"] == min(math.ceil(4 * 4096 / 8), 4 * 100 + 4 * 5) == 420
    assert "CSR" in str(sizes["format"])
    # int8 at 10 % sparsity: values 4320 + bitmap 600 > 4800 dense -> stays dense
    dense = size(_single(), CompressionPlan(layers={"fc": LayerConfig(
        prune=PruneConfig(amount=0.1), quant=QuantConfig(weight_bits=8))})).layer("fc")
    assert dense.index_bytes == 0 and dense.weight_bytes == 4800


def test_priced_plan_equals_measured_compressed_model(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    calib = [CalibrationBatch(torch.randn(2, 80, 60, generator=g), torch.tensor([60, 41]),
                              torch.randint(1, 29, (2, 6), generator=g), torch.tensor([6, 3]))]
    plans = [presets.int8_everywhere(), presets.int4_everywhere(), presets.fp16_everywhere(),
             presets.prune_ffn_neurons(0.5), presets.prune_attention_heads(0.5),
             CompressionPlan(
                 default=LayerConfig(quant=QuantConfig(weight_bits=5, symmetric=False, act_bits=8),
                                     prune=PruneConfig(amount=0.5, structure="heads",
                                                       importance="taylor")),
                 groups=(GroupEntry(role="conv", config=LayerConfig(
                     prune=PruneConfig(amount=0.3, structure="channels"))),
                         GroupEntry(role="ffn", blocks=(1,), config=LayerConfig(
                             prune=PruneConfig(amount=0.5, structure="neurons",
                                               importance="taylor"), energy=0.6))),
                 layers={"blocks.0.attn.q_proj": LayerConfig(rank=8),
                         "blocks.0.ffn2.fc1": LayerConfig(prune=PruneConfig(amount=0.8)),
                         "ctc_head": LayerConfig(quant=QuantConfig(weight_bits=2,
                                                                   granularity="per_tensor"))})]
    for plan in plans:
        priced = size(model, plan, calib)
        measured = size_of_compressed(compress(model, plan, calib), model)
        assert priced == measured, plan.to_json()
        assert priced.total_bytes < priced.baseline_bytes
    assert any(row.kind == "low_rank" for row in priced.layers)


def test_structured_pruning_bytes(model: nn.Module) -> None:
    report = size(model, presets.prune_ffn_neurons(0.5))
    assert report.baseline_bytes - report.total_bytes == 4 * 2 * 2 * 64 * (64 + 1 + 64)
    assert report.baseline_params - report.params == 2 * 2 * 64 * (64 + 1 + 64)


def test_int8_everywhere_ratio(whisper_small: nn.Module) -> None:
    report = size(whisper_small, presets.int8_everywhere())
    # every weight goes from 4 to 1 byte (+5 bytes per output channel); biases and norms
    # stay fp32, so the ratio is just under 4 minus what those cost
    weights = sum(m.weight.numel() for m in whisper_small.modules()
                  if isinstance(m, (nn.Linear, nn.Conv1d)))
    channels = sum(m.weight.shape[0] for m in whisper_small.modules()
                   if isinstance(m, (nn.Linear, nn.Conv1d)))
    rest = _fp32_bytes(whisper_small) - 4 * weights
    assert report.total_bytes == weights + 5 * channels + rest


def test_precomputed_spectra_give_the_same_report(model: nn.Module) -> None:
    from workbench.compress.lowrank import spectra
    plan = presets.low_rank_ffn(0.4).with_layer(
        "blocks.1.ffn1", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
    table = spectra(model)
    fast = size(model, plan, spectra=table)
    assert fast == size(model, plan) == size_of_compressed(compress(model, plan), model)
    assert sum(row.kind == "low_rank" for row in fast.layers) == 8
