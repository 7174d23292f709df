"""A grouped FFN with quantized weights: each group's Linear is fake-quantized with the FFN's
quant setting (its own scales), size() prices exactly what compress builds, and the ONNX
Runtime export quantizes every group's MatMul and runs like the simulation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.compress import compress
from workbench.compress.quantize import sqnr_db
from workbench.compress.swap_layers import GroupedLinear
from workbench.models import build_model
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
from workbench.size import size, size_of_compressed

INT8 = QuantConfig(weight_bits=8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("whisper_ctc", d_model=32, n_heads=4, n_layers=2, d_ff=64, n_ctx=1500,
                       head_dim=16).eval()


def _plan(quant=INT8, groups: int = 2, prune=None) -> CompressionPlan:
    return CompressionPlan().with_group("ffn", LayerConfig(
        grouped_ffn={"groups": groups}, quant=quant, prune=prune))


def test_each_group_is_quantized_on_its_own_grid(model) -> None:
    grouped = compress(model, _plan(quant=None))
    both = compress(model, _plan())
    for fc in ("fc1", "fc2"):
        layer, ref = getattr(both.blocks[0].mlp, fc), getattr(grouped.blocks[0].mlp, fc)
        assert isinstance(layer, GroupedLinear) and layer.groups == 2
        for part, dense in zip(layer.parts, ref.parts):
            assert part.weight_bits == 8
            assert part.weight_scale.shape == (dense.out_features,)     # per channel, per part
            levels = torch.round(part.weight / part.weight_scale[:, None])
            torch.testing.assert_close(part.weight, levels * part.weight_scale[:, None])
            assert levels.abs().max() <= 127
            # int8 per channel on a random (roughly Gaussian) weight: ~40 dB; 35 dB leaves room
            assert sqnr_db(dense.weight, part.weight) > 35.0


def test_int8_grouped_ffn_output_stays_close_to_the_float_grouped_ffn(model) -> None:
    grouped = compress(model, _plan(quant=None)).blocks[0].mlp
    both = compress(model, _plan()).blocks[0].mlp
    torch.manual_seed(1)
    x = torch.randn(3, 40, 32)
    with torch.no_grad():
        assert sqnr_db(grouped(x), both(x)) > 30.0


@pytest.mark.parametrize("quant", [INT8, QuantConfig(weight_bits=8, granularity="per_tensor"),
                                   QuantConfig(weight_bits=8, symmetric=False),
                                   QuantConfig(weight_bits=4, granularity="per_block"), None],
                         ids=["int8_channel", "int8_tensor", "int8_asym", "int4_block", "fp32"])
@pytest.mark.parametrize("prune", [None, PruneConfig(amount=0.5, structure="neurons")],
                         ids=["dense", "neurons_50"])
def test_size_prices_exactly_what_compress_builds(model, quant, prune) -> None:
    plan = _plan(quant=quant, prune=prune)
    assert size(model, plan).total_bytes == size_of_compressed(compress(model, plan),
                                                               model).total_bytes


def test_int8_grouped_ffn_bytes_by_hand(model) -> None:
    """Per block: fc1 (32 -> 64) and fc2 (64 -> 32) in 2 groups: parts of 16 x 32 and 32 x 16
    int8 weights, one fp32 scale and one int8 zero point per output row of each part, fp32
    biases; everything else of the model as in the float grouped plan."""
    grouped = size(model, _plan(quant=None)).total_bytes
    int8 = size(model, _plan()).total_bytes
    d, f, g, blocks = 32, 64, 2, 2
    fp32_weights = 4 * (d * f // g + f * d // g)                   # grouped fc1 + fc2 weights
    int8_weights = (d * f // g + f * d // g) + (4 + 1) * (f + d)   # + scales and zero points
    assert grouped - int8 == blocks * (fp32_weights - int8_weights)


def test_onnx_runtime_export_quantizes_every_group_and_matches_the_simulation(model) -> None:
    from workbench.export import build_export
    from workbench.onnx_tools.runtime import make_session

    export = build_export(model, _plan())
    # one MatMul per group, each quantized (the export refuses a layer whose fp32 weight is left)
    assert all(len(export.layer_nodes[f"blocks.{b}.mlp.{fc}"]) == 2
               for b in (0, 1) for fc in ("fc1", "fc2"))
    assert {d.method for d in export.decisions} == {"int8_dynamic"}
    session = make_session(export.model)
    torch.manual_seed(2)
    x = torch.randn(1, 80, 120)
    out, _ = session.run(None, {"features": x.numpy(), "feat_lengths": np.array([120])})
    with torch.no_grad():
        sim, _ = export.sim(x, torch.tensor([120]))
        fp32, _ = compress(model, _plan(quant=None))(x, torch.tensor([120]))
    # ORT also quantizes the activations on the fly (dynamic int8): close to the simulation,
    # much closer than the float grouped model is to zero
    assert sqnr_db(sim, torch.from_numpy(out)) > 25.0
    assert sqnr_db(fp32, sim) > 25.0


def test_latency_prices_the_groups_at_8_bits_on_both_table_paths(model) -> None:
    from workbench.latency import layer_table, table_for_plan
    plan = _plan()
    exact = layer_table(model, 2.0, plan)                               # shape pass
    quick = table_for_plan(layer_table(model, 2.0), model, plan)        # the sliders' arithmetic
    assert (exact.macs, exact.weight_bytes) == (quick.macs, quick.weight_bytes)
    ffn = [r for r in exact.layers if ".mlp.fc" in r.path]
    assert len(ffn) == 8 and {r.precision for r in ffn} == {"int8"}     # 2 blocks x 2 x 2 parts
