"""The shipped demo (Whisper tiny.en encoder + CTC head): structure found from the recorded graph
agrees with the hand-written (name-based) one, and the issue-16 acceptance checks hold on it.

Acceptance (issue 16) on the demo: heads and neurons physically removed by one plan; the
parameter count equals the one computed by hand from the config (d 384, 6 heads of 64, FFN
1536, k_proj without bias); forward and ONNX export (the real export pipeline,
`build_export`) work; ORT within 1e-4 of PyTorch for the pruned fp32 model; `size()` equals
the ONNX initializer bytes within 2 %; a zero plan is bit-identical; the demo is not changed.
"""
import numpy as np
import onnx
import pytest
import torch

from workbench import compress, size
from workbench.compress.prune import count_to_remove
from workbench.errors import CheckpointError
from workbench.graph import count_params, discover, prune
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig

pytestmark = pytest.mark.slow

D, H, FF, LAYERS, HEAD_WIDTH = 384, 6, 1536, 4, 256   # WhisperCTCConfig() = tiny.en + CTC head


def _prune(structure: str, amount: float) -> LayerConfig:
    return LayerConfig(prune=PruneConfig(structure=structure, amount=amount))


PLAN = (CompressionPlan().with_group("ffn", _prune("neurons", 0.5))
        .with_group("attention", _prune("heads", 0.25)))


@pytest.fixture(scope="module")
def demo():
    from workbench.models import load_demo
    torch.set_num_threads(1)
    try:
        model = load_demo().eval()
    except CheckpointError as err:
        pytest.skip(f"demo model not trained: {err}")
    gen = torch.Generator().manual_seed(0)
    example = (torch.randn(2, 80, 100, generator=gen), torch.tensor([100, 80]))
    return model, example, discover(model, example)


@pytest.fixture(scope="module")
def exported(demo):
    from workbench.export import build_export
    model, _, _ = demo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = build_export(model, PLAN)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return out


def test_graph_finds_the_demo_heads_neurons_and_channels(demo):
    _, _, structure = demo
    found = {g.path: (g.kind, g.size) for g in structure.groups}
    for i in range(LAYERS):
        assert found[f"blocks.{i}.attn"] == ("heads", H)
        assert found[f"blocks.{i}.mlp"] == ("neurons", FF)
        attn = structure.group(f"blocks.{i}.attn")
        # k_proj has no bias in Whisper: its head slices are rows of the weight only
        names = {name for name, _ in attn.axes}
        assert f"blocks.{i}.attn.k_proj.weight" in names
        assert f"blocks.{i}.attn.k_proj.bias" not in names
        assert attn.units[1][(f"blocks.{i}.attn.q_proj.weight", 0)] == tuple(range(64, 128))
    # the stem's conv1 channels (conv1 -> gelu -> conv2) and the CTC head's channels
    # (proj_in -> gelu -> depthwise conv, + residual -> proj_out): found, named by producer
    assert found["conv1"] == ("channels", D)
    assert found["ctc_head"] == ("channels", HEAD_WIDTH)
    assert len(structure.groups) == 2 * LAYERS + 2
    reasons = {r.path: r.reason for r in structure.refusals}
    assert "model output" in reasons["ctc_head.proj_out"]      # the vocabulary stays
    assert "single unit" in reasons[""]                       # the residual stream (layer norms)


def test_graph_pruning_equals_the_name_based_pruning_of_compress(demo):
    model, example, structure = demo
    amounts = {**{f"blocks.{i}.attn": 0.25 for i in range(LAYERS)},
               **{f"blocks.{i}.mlp": 0.5 for i in range(LAYERS)}}
    by_graph = prune(model, structure, amounts, example)   # also checks pruned == masked
    by_name = compress(model, PLAN)
    a, b = by_graph.model.state_dict(), by_name.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)          # same units, same surgery
    assert [blk.attn.n_heads for blk in by_graph.model.blocks] == [H - 2] * LAYERS
    with torch.no_grad():
        assert torch.equal(by_graph.model(*example)[0], by_name(*example)[0])


def test_one_plan_removes_exactly_the_hand_computed_parameters(demo):
    model, example, _ = demo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = compress(model, PLAN)
    n, h, dh = count_to_remove(FF, 0.5), count_to_remove(H, 0.25), D // H
    assert (n, h) == (768, 2)
    per_layer = (n * (D + 1) + n * D              # fc1 rows + bias, fc2 columns
                 + 2 * h * dh * (D + 1)           # q, v rows + bias
                 + h * dh * D                     # k rows (no bias)
                 + h * dh * D)                    # out_proj columns
    expected = 7_739_933 - LAYERS * per_layer
    assert count_params(model) == 7_739_933
    assert count_params(pruned) == expected == size(model, PLAN).params
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        logp, lengths = pruned(*example)
    assert logp.shape == (2, 50, 29) and torch.isfinite(logp).all()


def test_zero_plan_is_bit_identical(demo):
    model, example, structure = demo
    zero = (CompressionPlan().with_group("ffn", _prune("neurons", 0.0))
            .with_group("attention", _prune("heads", 0.0)))
    with torch.no_grad():
        ref = model(*example)[0]
        assert torch.equal(compress(model, zero)(*example)[0], ref)
        graph_zero = prune(model, structure, {"heads": 0.0, "neurons": 0.0, "channels": 0.0})
        assert torch.equal(graph_zero.model(*example)[0], ref)


def test_pruned_demo_onnx_matches_pytorch_and_size(demo, exported):
    from workbench.export.positions import bytes_priced_elsewhere
    from workbench.onnx_tools.runtime import make_session
    model, _, _ = demo
    proto = onnx.ModelProto.FromString(exported.fp32)
    init_bytes = sum(int(np.prod(t.dims)) * 4 for t in proto.graph.initializer
                     if t.data_type == onnx.TensorProto.FLOAT)
    predicted = size(model, PLAN).total_bytes - bytes_priced_elsewhere(
        exported.computed_tables, set(model.state_dict()))
    assert abs(predicted - init_bytes) / init_bytes < 0.02
    # 4 blocks of pruned shapes in the file: fc1 (768, 384), q_proj (256, 384)
    shapes = {tuple(t.dims) for t in proto.graph.initializer}
    assert (768, 384) in shapes or (384, 768) in shapes
    assert (256, 384) in shapes or (384, 256) in shapes
    session = make_session(exported.fp32)
    gen = torch.Generator().manual_seed(1)
    features, lengths = torch.randn(1, 80, 300, generator=gen), torch.tensor([300])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (features.numpy(), lengths.numpy()), strict=True)))[0]
    with torch.no_grad():
        ref = exported.structural(features, lengths)[0].numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4
