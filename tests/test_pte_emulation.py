"""Runtime emulation of XNNPACK's dynamic int8 ("qd8") for the .pte: the formula's properties,
and per layer, the emulated simulation equals what ExecuTorch's runtime computes."""
import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from workbench.export.emulation import fake_quant_xnnpack_qd8

pytest.importorskip("executorch")
pytestmark = pytest.mark.timeout(1200)


def test_qd8_rows_have_their_own_grid_and_half_a_step_error():
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    x[0] *= 100                                   # one loud frame must not coarsen the others
    x[1] = x[1].abs() + 1                          # all positive: the range still includes 0
    y = fake_quant_xnnpack_qd8(x[None], 1)[0]
    for row, out in zip(x, y):
        lo, hi = min(float(row.min()), 0.0), max(float(row.max()), 0.0)
        step = (hi - lo) / 255
        assert (out - row).abs().max() <= step / 2 * (1 + 1e-5) + 1e-7
        assert len(torch.unique(torch.round((out - out.min()) / step))) <= 256
    alone = fake_quant_xnnpack_qd8(x[2:3][None], 1)[0]
    assert torch.equal(alone, y[2:3])              # rows do not share a range
    per_tensor = fake_quant_xnnpack_qd8(x[None], 2)[0]
    assert (per_tensor[2:] - x[2:]).abs().max() > 5 * (y[2:] - x[2:]).abs().max()


def test_qd8_zero_is_exact_and_all_zero_rows_stay_zero():
    x = torch.tensor([[[0.0, 0.0, 0.0], [0.0, -1.0, 3.0]]])
    y = fake_quant_xnnpack_qd8(x, 1)
    assert torch.equal(y[0, 0], torch.zeros(3))
    assert y[0, 1, 0] == 0.0


def test_qd8_rejects_rows_wider_than_the_tensor():
    with pytest.raises(ValueError, match="qd8"):
        fake_quant_xnnpack_qd8(torch.zeros(4), 2)


class _One(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _near_tie_weights(rows: int, cols: int) -> torch.Tensor:
    """Weights where w / s and w * (1 / s) round to different int8 levels (s = max|w| / 127,
    float32): torchao quantizes with the second, the simulation with the first. Found by a
    deterministic search around (n + 1/2) * s, as fp16-valued checkpoints produce them."""
    g = torch.Generator().manual_seed(5)
    w = (torch.rand(rows, cols, generator=g) - 0.5) * 0.2
    w[:, 0] = 0.1                                          # max |w| = 0.1 in every row
    s = torch.tensor(0.1, dtype=torch.float32) / 127
    found = []
    for n in range(1, 120):
        c = torch.tensor((n + 0.5) * float(s), dtype=torch.float32)
        for _ in range(6):
            if torch.round(c / s) != torch.round(c * (1 / s)):
                found.append(c.clone())
                break
            c = torch.nextafter(c, torch.tensor(1.0))
        if len(found) == 4:
            break
    assert found, "no near-tie weight in this float32 range"
    for i, c in enumerate(found):
        w[i % rows, 1 + i] = c
    return w


@pytest.fixture(scope="module")
def small():
    """Small Whisper-CTC; one layer has channels under the quantizer's default weight-scale
    floor (max |w| < 127 * 2**-12) and one has near-tie weights."""
    from workbench.models import build_model
    torch.manual_seed(0)
    model = build_model("whisper_ctc", d_model=64, n_heads=2, n_layers=1, d_ff=128, n_ctx=1500,
                        head_dim=32).eval()
    with torch.no_grad():
        model.get_submodule("blocks.0.attn.out_proj").weight[:8] *= 0.01
        fc1 = model.get_submodule("blocks.0.mlp.fc1")
        fc1.weight.copy_(_near_tie_weights(*fc1.weight.shape))
    return model


@pytest.mark.parametrize("path,shape", [("blocks.0.mlp.fc1", (1, 37, 64)),
                                        ("blocks.0.attn.out_proj", (1, 50, 64)),
                                        ("conv1", (1, 80, 41)), ("conv2", (1, 64, 40))])
def test_each_emulated_layer_equals_the_pte_given_the_same_input(small, path, shape):
    # One plan layer exported alone through build_pte's own steps (the simulation's weights,
    # the plan's grid, XNNPACKQuantizer, XNNPACK lowering), run in ExecuTorch's runtime; the
    # simulation's layer with XNNPACK's input quantization emulated must give the same numbers
    # up to fp32 rounding, while the plain simulation (fp32 input) is visibly off. Inputs with
    # an offset and frames of very different loudness make per-row vs per-tensor ranges matter.
    from executorch.runtime import Runtime

    from workbench.compress import compress
    from workbench.export.reference_plans import int8_plan
    from workbench.export.emulation import emulate_xnnpack_dynamic
    from workbench.compress.techniques.quantization_runtime import pte_decide
    from workbench.export.executorch import (_Conv1dAs2d, _depthwise_fp32, _simulated_weights,
                                             lower_to_pte)
    from workbench.export.structural import layer_quant
    plan = int8_plan()
    kind, q = layer_quant(small, plan)[path]
    decision = _depthwise_fp32(small, pte_decide(path, kind, q))
    assert decision.method == "int8_dynamic" and decision.exact
    sim = compress(small, plan)
    one = replace(decision, path="layer")
    work = _One(copy.deepcopy(small.get_submodule(path)))
    _simulated_weights(work, _One(sim.get_submodule(path)), [one])
    if kind == "conv":
        work.layer = _Conv1dAs2d.of(work.layer)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g) * 2 + 0.3
    x = x * torch.linspace(0.05, 3.0, x.shape[1 if kind == "linear" else 2]).reshape(
        (1, -1, 1) if kind == "linear" else (1, 1, -1))
    blob = lower_to_pte(work.eval(), (x,), None, [one])
    pte = Runtime.get().load_program(blob).load_method("forward").execute([x])[0]
    emulated = emulate_xnnpack_dynamic(sim, [decision])
    with torch.no_grad():
        plain = sim.get_submodule(path)(x)
        emu = emulated.get_submodule(path)(x)
    scale = float(pte.abs().max())
    assert float((pte - emu).abs().max()) <= 2e-6 * scale
    assert float((pte - plain).abs().max()) > 100 * float((pte - emu).abs().max())


@pytest.mark.parametrize("path", ["blocks.0.mlp.fc1", "blocks.0.attn.out_proj"])
def test_pte_weights_are_the_simulations_grid(small, path):
    # One-hot input rows read the int8 weights back out of the .pte (a one-hot row quantizes
    # exactly: 1 -> level 127 of a 0..1 range): every weight equals the simulation's, including
    # near-tie weights and channels under the quantizer's default 2**-12 scale floor, which
    # XNNPACKQuantizer's own defaults put one level / one coarser grid apart.
    from executorch.runtime import Runtime

    from workbench.compress import compress
    from workbench.export.reference_plans import int8_plan
    from workbench.compress.techniques.quantization_runtime import pte_decide
    from workbench.export.executorch import _depthwise_fp32, _simulated_weights, lower_to_pte
    from workbench.export.structural import layer_quant
    plan = int8_plan()
    kind, q = layer_quant(small, plan)[path]
    one = replace(_depthwise_fp32(small, pte_decide(path, kind, q)), path="layer")
    sim_layer = compress(small, plan).get_submodule(path)
    work = _One(copy.deepcopy(small.get_submodule(path)))
    _simulated_weights(work, _One(sim_layer), [one])
    eye = torch.eye(sim_layer.in_features)[None]
    blob = lower_to_pte(work.eval(), (eye,), None, [one])
    got = Runtime.get().load_program(blob).load_method("forward").execute([eye])[0][0]
    want = (sim_layer.weight + sim_layer.bias[:, None]).detach().T
    step = sim_layer.weight_scale.min()
    assert float((got - want).abs().max()) < 0.01 * float(step)


def test_rerounding_the_float_weights_would_put_near_ties_one_level_apart(small):
    # The control for the test above: lowering fc1's float weights (no _simulated_weights)
    # lets torchao round w * (1 / s) itself, and the near-tie weights land one level off.
    from executorch.runtime import Runtime

    from workbench.compress import compress
    from workbench.export.reference_plans import int8_plan
    from workbench.compress.techniques.quantization_runtime import pte_decide
    from workbench.export.executorch import _depthwise_fp32, lower_to_pte
    from workbench.export.structural import layer_quant
    path = "blocks.0.mlp.fc1"
    plan = int8_plan()
    kind, q = layer_quant(small, plan)[path]
    one = replace(_depthwise_fp32(small, pte_decide(path, kind, q)), path="layer")
    sim_layer = compress(small, plan).get_submodule(path)
    eye = torch.eye(sim_layer.in_features)[None]
    blob = lower_to_pte(_One(copy.deepcopy(small.get_submodule(path))).eval(), (eye,), None,
                        [one])
    got = Runtime.get().load_program(blob).load_method("forward").execute([eye])[0][0]
    want = (sim_layer.weight + sim_layer.bias[:, None]).detach().T
    off = (got - want).abs() > 0.5 * float(sim_layer.weight_scale.min())
    assert 1 <= int(off.sum()) <= 8
