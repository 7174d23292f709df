"""Quantization-aware recovery of a grouped FFN quantized on the same FFN (grouped_ffn + quant):
every group's Linear trains on the layer's grid (the registry's `weight_parts`, as compress
quantizes it), and the recovered model compresses with the export plan onto that same grid.
Also: low rank + quant on the same layer, which the export plan could not name either."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from workbench.compress import compress
from workbench.compress.lowrank import LowRankLinear
from workbench.compress.quantize import BLOCK_SIZE
from workbench.compress.distill import (FakeQuantSTE, RecoverConfig, _add_fake_quant, recover,
                                        split_plan)
from workbench.compress.swap_layers import GroupedLinear
from workbench.errors import PlanError
from workbench.models import build_model
from workbench.plan import CompressionPlan, LayerConfig, QuantConfig

from toys import random_items

INT8 = QuantConfig(weight_bits=8)
INT4 = QuantConfig(weight_bits=4, granularity="per_block")


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=32, n_heads=4, n_layers=2, d_ff=64, n_ctx=1500,
                       head_dim=16).eval()


def _plan(quant: QuantConfig) -> CompressionPlan:
    return CompressionPlan().with_group("ffn", LayerConfig(grouped_ffn={"groups": 2},
                                                            quant=quant))


def _grouped_fcs(model) -> list[GroupedLinear]:
    layers = [getattr(b.mlp, fc) for b in model.blocks for fc in ("fc1", "fc2")]
    assert all(isinstance(layer, GroupedLinear) and layer.groups == 2 for layer in layers)
    return layers


def _levels(part, quant: QuantConfig) -> torch.Tensor:
    """The integer levels of a quantized Linear's weight (symmetric: w / scale per row or per
    block of BLOCK_SIZE input columns)."""
    scale = part.weight_scale
    if quant.granularity == "per_block":
        assert scale.shape == (part.out_features, math.ceil(part.in_features / BLOCK_SIZE))
        scale = scale.repeat_interleave(BLOCK_SIZE, dim=1)[:, :part.in_features]
    else:
        assert scale.shape == (part.out_features,)
        scale = scale[:, None]
    return part.weight / scale


def _run(model, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x, lens)[0]


@pytest.mark.parametrize("quant", [INT8, INT4], ids=["int8", "int4_block"])
def test_qat_fake_quantizes_every_group_like_compress(teacher, quant) -> None:
    """The QAT model's parts carry the layer's fake-quant, and its forward is the compressed
    model's (the same grid from the same weights: equal to float rounding)."""
    structure, rest = split_plan(_plan(quant), teacher, None)
    student = compress(teacher, structure)
    qat = compress(teacher, structure)
    done = _add_fake_quant(qat, rest)
    parts = [part for layer in _grouped_fcs(qat) for part in layer.parts]
    assert len(done) == len(parts) == 8 and {id(p) for p in done} == {id(p) for p in parts}
    for part in parts:
        (fq,) = part.parametrizations.weight
        assert isinstance(fq, FakeQuantSTE)
        assert (fq.bits, fq.granularity, fq.symmetric) == (quant.weight_bits,
                                                           quant.granularity, True)
    torch.manual_seed(1)
    x, lens = torch.randn(2, 80, 120), torch.tensor([120, 90])
    ref = _run(compress(student, rest, force=True), x, lens)
    got, fp32 = _run(qat, x, lens), _run(student, x, lens)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    # the float grouped model is much farther off (measured 1.5e-3 int8, 2e-2 int4): the grid
    # is really there
    assert (fp32 - ref).abs().max() > 5e-4


@pytest.mark.parametrize("quant", [INT8, INT4], ids=["int8", "int4_block"])
def test_recovered_grouped_ffn_compresses_onto_the_grid_it_trained_on(teacher, quant) -> None:
    """recover(quant=...) on the grouped student, then compress with the export plan: every
    part's weights are integer levels times its scales, and the QAT forward (fake-quant put
    back on the latent weights) equals the compressed model's output."""
    structure, rest = split_plan(_plan(quant), teacher, None)
    student = compress(teacher, structure)
    result = recover(student, teacher, random_items(6), RecoverConfig(
        steps=3, lr=3e-3, warmup=0, max_batch_frames=600, ctc_weight=0.0), progress=False,
        quant=rest)
    latent = result.model
    assert not any(hasattr(m, "parametrizations") for m in latent.modules())
    assert any(not torch.equal(a, b) for a, b in zip(latent.state_dict().values(),
                                                     student.state_dict().values()))
    compressed = compress(latent, rest, force=True)
    for layer in _grouped_fcs(compressed):
        for part in layer.parts:
            assert part.weight_bits == quant.weight_bits
            levels = _levels(part, quant)
            torch.testing.assert_close(levels, torch.round(levels), atol=1e-4, rtol=0)
            assert levels.abs().max() <= 2 ** (quant.weight_bits - 1) - 1 + 1e-4
    simulated = copy.deepcopy(latent)
    _add_fake_quant(simulated, rest)
    torch.manual_seed(2)
    x, lens = torch.randn(2, 80, 120), torch.tensor([120, 70])
    torch.testing.assert_close(_run(simulated, x, lens), _run(compressed, x, lens),
                               atol=1e-5, rtol=1e-5)


def test_low_rank_and_quant_on_one_layer_recover_and_compress(teacher) -> None:
    """The same for a layer low rank rebuilt (down / up): the export plan names the layer, and
    QAT fake-quantizes both factors."""
    plan = CompressionPlan().with_layer("blocks.0.mlp.fc2", LayerConfig(rank=8, quant=INT8))
    structure, rest = split_plan(plan, teacher, None)
    student = compress(teacher, structure)
    assert isinstance(student.blocks[0].mlp.fc2, LowRankLinear)
    qat = compress(teacher, structure)
    layer = qat.blocks[0].mlp.fc2
    assert {id(p) for p in _add_fake_quant(qat, rest)} == {id(layer.down), id(layer.up)}
    result = recover(student, teacher, random_items(4), RecoverConfig(
        steps=2, warmup=0, max_batch_frames=600), progress=False, quant=rest)
    compressed = compress(result.model, rest, force=True)
    for factor in (compressed.blocks[0].mlp.fc2.down, compressed.blocks[0].mlp.fc2.up):
        levels = _levels(factor, INT8)
        torch.testing.assert_close(levels, torch.round(levels), atol=1e-4, rtol=0)


def test_a_rebuilt_layer_takes_quantization_only(teacher) -> None:
    """Naming a layer a technique rebuilt with anything but quantization says so in one line."""
    grouped = compress(teacher, _plan(None))
    with pytest.raises(PlanError, match="GroupedLinear .*can only quantize it"):
        compress(grouped, CompressionPlan().with_layer("blocks.0.mlp.fc1",
                                                        LayerConfig(rank=4)), force=True)


def test_the_export_plan_exports_the_recovered_grouped_model(teacher) -> None:
    """What `workbench apply --plan export_plan.json --checkpoint <recovered>` builds: the
    export plan on the already grouped model quantizes both MatMuls of every grouped fc1 / fc2
    (it used to fail resolving: 'a GroupedLinear, which a plan cannot compress')."""
    from workbench.export import build_export
    structure, rest = split_plan(_plan(INT8), teacher, None)
    export = build_export(compress(teacher, structure), rest, force=True)
    assert all(len(export.layer_nodes[f"blocks.{b}.mlp.{fc}"]) == 2
               for b in (0, 1) for fc in ("fc1", "fc2"))
    assert {d.method for d in export.decisions} == {"int8_dynamic"}
