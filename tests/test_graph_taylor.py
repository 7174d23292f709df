"""Taylor importance (|w * dL/dw| summed over a unit's slices) for groups found from the graph.

Checked two independent ways: on a workbench Whisper-CTC (which has the name-based path too)
the graph's choice equals compress()'s name-based Taylor choice (workbench.compress.importance);
on an adapted torchaudio Conformer the removed FFN neurons equal the ones computed here by hand
from the raw tensors and their CTC-loss gradients."""
import pytest
import torch

from toys import torchaudio_conformer
from workbench import compress, size
from workbench.byo import adapt
from workbench.compress.calibration_stats import CalibrationBatch, taylor_gradients
from workbench.compress.prune import count_to_remove
from workbench.errors import PlanError
from workbench.graph import discover, prune
from workbench.graph.surgery import choose
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig


def _taylor(structure: str, amount: float) -> LayerConfig:
    return LayerConfig(prune=PruneConfig(structure=structure, amount=amount,
                                         importance="taylor"))


def _calib(n_mels: int, frames: int = 60) -> list[CalibrationBatch]:
    gen = torch.Generator().manual_seed(3)
    return [CalibrationBatch(torch.randn(2, n_mels, frames, generator=gen),
                             torch.tensor([frames, frames - 10]),
                             torch.randint(1, 29, (2, 6), generator=gen), torch.tensor([6, 4]))]


def test_graph_taylor_choice_equals_the_name_based_one():
    from workbench.models import build_model
    torch.manual_seed(0)
    model = build_model("whisper_ctc", d_model=64, n_heads=4, n_layers=2, d_ff=128,
                        n_ctx=200).eval()
    grads = taylor_gradients(model, _calib(80))
    example = (torch.randn(2, 80, 60, generator=torch.Generator().manual_seed(1)),
               torch.tensor([60, 50]))
    structure = discover(model, example)
    amounts = {"blocks.0.attn": 0.5, "blocks.1.mlp": 0.5}
    by_graph = prune(model, structure, amounts, example, importance="taylor", grads=grads)
    plan = (CompressionPlan().with_layer("blocks.0.attn", _taylor("heads", 0.5))
            .with_layer("blocks.1.mlp", _taylor("neurons", 0.5)))
    by_name = compress(model, plan, grads=grads)
    a, b = by_graph.model.state_dict(), by_name.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    # and Taylor chose other neurons than magnitude would (else this test proves little)
    group = structure.group("blocks.1.mlp")
    assert choose(model, group, 0.5, "taylor", grads) != choose(model, group, 0.5)


@pytest.fixture(scope="module")
def conformer():
    return adapt(torchaudio_conformer())


def test_adapted_conformer_taylor_removes_the_hand_computed_neurons(conformer):
    calib = _calib(80)
    grads = taylor_gradients(conformer, calib)
    plan = CompressionPlan().with_group("ffn", _taylor("neurons", 0.5))
    pruned = compress(conformer, plan, calib)
    fc1 = "blocks.0.block.ffn1.sequential.1"
    fc2 = "blocks.0.block.ffn1.sequential.4"
    w1, b1 = conformer.get_submodule(fc1).weight, conformer.get_submodule(fc1).bias
    w2 = conformer.get_submodule(fc2).weight
    score = ((w1 * grads[f"{fc1}.weight"]).abs().sum(1) + (b1 * grads[f"{fc1}.bias"]).abs()
             + (w2 * grads[f"{fc2}.weight"]).abs().sum(0)).double()
    n = count_to_remove(256, 0.5)
    keep = sorted(set(range(256)) - set(torch.argsort(score, stable=True)[:n].tolist()))
    assert torch.equal(pruned.get_submodule(fc1).weight, w1[keep])
    assert torch.equal(pruned.get_submodule(fc2).weight, w2[:, keep])
    magnitude = compress(conformer, CompressionPlan().with_group(
        "ffn", LayerConfig(prune=PruneConfig(structure="neurons", amount=0.5))))
    assert not torch.equal(magnitude.get_submodule(fc1).weight, pruned.get_submodule(fc1).weight)
    # size() needs no gradients here: every neuron owns the same number of slices
    assert size(conformer, plan).params == sum(p.numel() for p in pruned.parameters())


def test_taylor_then_unstructured_taylor_sees_sliced_gradients(conformer):
    """The structural step slices the gradients with the weights, so an unstructured Taylor
    mask on a pruned layer runs on matching shapes."""
    plan = (CompressionPlan().with_group("ffn", _taylor("neurons", 0.5))
            .with_layer("blocks.0.block.ffn1.sequential.4", LayerConfig(prune=PruneConfig(
                structure="unstructured", amount=0.5, importance="taylor"))))
    pruned = compress(conformer, plan, _calib(80))
    w = pruned.get_submodule("blocks.0.block.ffn1.sequential.4").weight
    assert w.shape == (80, 128)
    assert int((w == 0).sum()) == w.numel() // 2


def test_taylor_without_gradients_is_refused(conformer):
    group = conformer.graph_structure.group("blocks.0.block.ffn1.sequential")
    with pytest.raises(PlanError, match="no gradient"):
        choose(conformer, group, 0.5, "taylor", {})
    with pytest.raises(PlanError, match="unknown method"):
        choose(conformer, group, 0.5, "random")
