"""Structure found from the recorded graph (workbench.graph): groups, exact surgery, refusals.

Parameter counts are computed by hand from each model's configuration, never read from the
pruned model; the pruned model must also equal the original with the removed units' consumer
columns zeroed (prune() checks that itself when given the example).
"""
import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

from toys import torchaudio_conformer, torchaudio_wav2vec2
from workbench.compress.prune import count_to_remove
from workbench.errors import PlanError
from workbench.graph import PrunedSelfAttention, count_params, discover, prune

D, H, FF, K, LAYERS = 80, 4, 256, 31, 2
PLAN = {"neurons": 0.5, "heads": 0.25, "channels": 0.25}


@pytest.fixture(scope="module")
def conformer():
    model = torchaudio_conformer(D, H, FF, LAYERS, K)
    example = (torch.randn(2, 50, D), torch.tensor([50, 40]))
    return model, example, discover(model, example)


@pytest.fixture(scope="module")
def wav2vec2():
    model = torchaudio_wav2vec2(aux_num_out=32)
    example = (torch.randn(1, 3200),)
    return model, example, discover(model, example)


def test_conformer_groups_are_found_by_kind_and_path(conformer):
    _, _, structure = conformer
    kinds = {g.path: (g.kind, g.size) for g in structure.groups}
    for i in range(LAYERS):
        assert kinds[f"conformer_layers.{i}.ffn1.sequential"] == ("neurons", FF)
        assert kinds[f"conformer_layers.{i}.ffn2.sequential"] == ("neurons", FF)
        assert kinds[f"conformer_layers.{i}.self_attn"] == ("heads", H)   # packed in_proj
        assert kinds[f"conformer_layers.{i}.conv_module.sequential"] == ("channels", D)
    assert len(structure.groups) == 4 * LAYERS
    # the residual stream (d_model) is never offered: it reaches the output
    assert any("model output" in r.reason for r in structure.refusals)


def test_conformer_glu_couples_value_and_gate_rows(conformer):
    _, _, structure = conformer
    group = structure.group("conformer_layers.0.conv_module.sequential")
    pw1 = ("conformer_layers.0.conv_module.sequential.0.weight", 0)
    for c, unit in enumerate(group.units):
        assert unit[pw1] == (c, c + D)  # GLU: value channel c with gate channel c + C


def test_conformer_plan_removes_exactly_the_hand_computed_parameters(conformer):
    model, example, structure = conformer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune(model, structure, PLAN, example)
    n, h, c = count_to_remove(FF, 0.5), count_to_remove(H, 0.25), count_to_remove(D, 0.25)
    dh = D // H
    ffn = n * (D + 1) + n * D                              # fc1 rows + bias, fc2 columns
    heads = 3 * h * dh * (D + 1) + h * dh * D              # in_proj rows + bias, out_proj cols
    chans = 2 * c * (D + 1) + c * (K + 1) + 2 * c + c * D  # GLU rows, depthwise, BN, pw2 cols
    expected = count_params(model) - LAYERS * (2 * ffn + heads + chans)
    assert pruned.params_after == expected == count_params(pruned.model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    attn = pruned.model.conformer_layers[0].self_attn
    assert isinstance(attn, PrunedSelfAttention) and attn.num_heads == H - h
    out, lengths = pruned.model(*example)
    assert out.shape == (2, 50, D) and torch.equal(lengths, example[1])


def test_zero_amount_plan_is_bit_identical(conformer):
    model, example, structure = conformer
    pruned = prune(model, structure, {"neurons": 0.0, "heads": 0.0, "channels": 0.0}, example)
    with torch.no_grad():
        a, b = model(*example)[0], pruned.model(*example)[0]
    assert torch.equal(a, b) and pruned.removed == {}


def test_pruned_conformer_onnx_matches_pytorch(conformer):
    ort = pytest.importorskip("onnxruntime")
    model, example, structure = conformer
    pruned = prune(model, structure, PLAN, example).model
    buf = io.BytesIO()
    torch.onnx.export(pruned, example, buf, dynamo=False, opset_version=17,
                      input_names=["x", "lengths"])
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": example[0].numpy(), "lengths": example[1].numpy()})[0]
    with torch.no_grad():
        ref = pruned(*example)[0].numpy()
    assert np.abs(got - ref).max() < 1e-4


def test_wav2vec2_heads_neurons_and_extractor_channels(wav2vec2):
    model, example, structure = wav2vec2
    kinds = {g.path: (g.kind, g.size) for g in structure.groups}
    for i in range(2):
        assert kinds[f"encoder.transformer.layers.{i}.attention"] == ("heads", 4)
        assert kinds[f"encoder.transformer.layers.{i}.feed_forward"] == ("neurons", 256)
    # the weight-normed positional conv is refused with the reason, not pruned
    assert any("parametrization" in r.reason for r in structure.refusals)
    pruned = prune(model, structure, {"neurons": 0.5, "heads": 0.25}, example)
    dh = 128 // 4
    per_layer = 128 * (128 + 1) + 128 * 128 + 3 * dh * (128 + 1) + dh * 128
    assert pruned.params_after == count_params(model) - 2 * per_layer
    assert pruned.model.encoder.transformer.layers[0].attention.num_heads == 3
    with torch.no_grad():
        assert pruned.model(*example)[0].shape == model(*example)[0].shape


class _GatedFFN(nn.Module):
    """SwiGLU FFN on a residual stream: x + down(silu(gate(x)) * up(x))."""

    def __init__(self, d: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(
            hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class _NormedFFN(nn.Module):
    """An FFN with a layer norm over its hidden units: no neuron can be removed alone."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(16, 24), nn.LayerNorm(24), nn.Linear(24, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x).relu()))


def test_gated_ffn_gate_and_up_rows_go_together():
    torch.manual_seed(0)
    model, example = _GatedFFN(), (torch.randn(3, 16),)
    structure = discover(model, example)
    (group,) = structure.groups
    assert group.kind == "neurons" and group.size == 24
    assert {a[0] for a in group.axes} >= {"gate.weight", "up.weight", "down.weight"}
    pruned = prune(model, structure, {"neurons": 0.5}, example)
    assert pruned.params_after == count_params(model) - 12 * (2 * (16 + 1) + 16)


def test_norm_over_hidden_units_is_refused_with_the_reason():
    structure = discover(_NormedFFN(), (torch.randn(3, 16),))
    assert structure.groups == ()
    assert any("single unit" in r.reason for r in structure.refusals)
    with pytest.raises(KeyError, match="single unit"):
        structure.group("")


def test_discover_leaves_a_training_model_as_it_was():
    """The recorded run is in eval mode: BatchNorm statistics untouched, dropout off (same
    groups as on the eval model), every module's mode restored after."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(24, 16)).train()
    model[3].eval()  # a mixed-mode model keeps its mixed modes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    example = (torch.randn(8, 16),)
    structure = discover(model, example)
    assert [m.training for m in model.modules()] == [True, True, True, True, False, True]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    reference = discover(copy.deepcopy(model).eval(), example)
    assert [(g.path, g.kind, g.size) for g in structure.groups] == [
        (g.path, g.kind, g.size) for g in reference.groups] != []


def test_tied_weights_stay_tied_and_count_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 12), nn.Linear(12, 8)
            self.c, self.d = nn.Linear(8, 12), nn.Linear(12, 8)
            self.c.weight = self.a.weight  # one tensor, two uses

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x).relu()) + self.d(self.c(x).relu())

    torch.manual_seed(0)
    model, example = Tied(), (torch.randn(2, 8),)
    structure = discover(model, example)
    assert len(structure.groups) == 1  # the shared rows tie both FFNs' neurons together
    pruned = prune(model, structure, {"neurons": 0.5}, example)
    assert pruned.model.c.weight is pruned.model.a.weight
    per_neuron = 8 + 1 + 8 + 1 + 8  # shared row, two biases, two consumer columns
    assert pruned.params_after == count_params(model) - 6 * per_neuron


def test_unknown_group_or_bad_amount_is_refused(conformer):
    model, example, structure = conformer
    with pytest.raises(PlanError, match="not a prunable group"):
        prune(model, structure, {"conformer_layers.0.nope": 0.5})
    with pytest.raises(PlanError, match=r"\[0, 1\)"):
        prune(model, structure, {"neurons": 1.5})
    with pytest.raises(PlanError, match="model output"):
        prune(model, structure, {"conformer_layers": 0.5})


def test_copy_is_deep(conformer):
    model, example, structure = conformer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune(model, structure, {"neurons": 0.0, "heads": 0.0}).model   # same shapes
    ours = {p.data_ptr() for p in model.parameters()}
    assert ours.isdisjoint(p.data_ptr() for p in pruned.parameters())        # no shared storage
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)                                                       # edit the copy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_one_rounding_rule_for_graph_and_compress():
    from workbench.graph.surgery import count_to_remove as graph_count
    assert graph_count is count_to_remove          # compress.prune re-exports the graph's rule
    assert [count_to_remove(n, a) for n, a in ((1536, 0.5), (6, 0.25), (4, 0.25), (80, 0.25),
                                               (2, 0.99), (5, 0.5))] == [768, 2, 1, 20, 1, 3]
    assert count_to_remove(2, 0.99, keep_one=False) == 2
