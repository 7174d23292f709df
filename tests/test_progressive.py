"""Progressive pruning while distilling (workbench.compress.progressive), on small models."""
from __future__ import annotations

import pytest
import torch

from workbench.compress import compress
from workbench.compress.progressive import (ProgressiveConfig, _Gated, cubic_fraction,
                                            progressive_recover)
from workbench.compress.recover import RecoverConfig
from workbench.errors import PlanError, WorkbenchError
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
from workbench.train import Item

PLAN = (CompressionPlan()
        .with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
        .with_group("attention", LayerConfig(prune=PruneConfig(amount=0.5, structure="heads"))))


def _items(n: int = 10, seed: int = 0) -> list[Item]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = int(torch.randint(60, 120, (), generator=g))
        labels = torch.randint(1, 20, (int(torch.randint(3, 10, (), generator=g)),), generator=g)
        out.append(Item(torch.randn(80, t, generator=g), labels))
    return out


def test_cubic_schedule_is_front_loaded_and_ends_at_one() -> None:
    fr = [cubic_fraction(k, 8) for k in range(9)]
    assert fr[0] == 0 and fr[-1] == 1
    steps = [b - a for a, b in zip(fr, fr[1:])]
    assert all(x > y for x, y in zip(steps, steps[1:]))      # each event removes less


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "activation"])
def test_progressive_reaches_the_plan_shapes(whisper_small, importance) -> None:
    before = {k: v.clone() for k, v in whisper_small.state_dict().items()}
    result = progressive_recover(
        whisper_small, PLAN, _items(),
        RecoverConfig(steps=8, lr=2e-3, warmup=2, max_batch_frames=400, ctc_weight=0.0),
        ProgressiveConfig(importance=importance, events=3, end_fraction=0.75), progress=False)
    oneshot = compress(whisper_small, PLAN)
    shapes = {k: v.shape for k, v in result.model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in oneshot.state_dict().items()}
    assert [b.attn.n_heads for b in result.model.blocks] == [1, 1]
    assert len(result.history) == 8 and [e["event"] for e in result.events] == [1, 2, 3]
    removed = sum(e["removed"] for e in result.events)
    assert removed == 2 * (1 + 64)                           # 2 blocks: 1 of 2 heads, 64 of 128
    assert all(torch.equal(before[k], v) for k, v in whisper_small.state_dict().items())
    x = torch.randn(1, 80, 90)
    with torch.no_grad():
        assert torch.isfinite(result.model(x, torch.tensor([90]))[0]).all()


def test_a_masked_unit_is_exactly_a_removed_unit(whisper_small) -> None:
    import copy
    model = copy.deepcopy(whisper_small)
    attn, ffn = model.blocks[0].attn, model.blocks[0].mlp
    heads = _Gated("blocks.0.attn", attn, "heads", 1)
    neurons = _Gated("blocks.0.mlp", ffn, "neurons", 40)
    heads.prune_to(1, "magnitude")
    neurons.prune_to(40, "magnitude")
    x = torch.randn(2, 80, 70)
    lengths = torch.tensor([70, 50])
    with torch.no_grad():
        masked = model(x, lengths)[0]
        heads.cut()
        neurons.cut()
        cut = model(x, lengths)[0]
    assert attn.n_heads == 1 and ffn.fc1.out_features == 128 - 40
    torch.testing.assert_close(cut, masked, atol=1e-5, rtol=1e-5)


def test_progressive_refuses_quantization_in_the_plan(whisper_small) -> None:
    plan = PLAN.with_default(LayerConfig(quant=QuantConfig(weight_bits=8)))
    with pytest.raises(PlanError, match="progressive"):
        progressive_recover(whisper_small, plan, _items(2), RecoverConfig(steps=1),
                            progress=False)


def test_progressive_refuses_a_plan_without_heads_or_neurons(whisper_small) -> None:
    with pytest.raises(PlanError, match="no heads or neurons"):
        progressive_recover(whisper_small, CompressionPlan(), _items(2), RecoverConfig(steps=1),
                            progress=False)


def test_progressive_config_checks_its_fields() -> None:
    with pytest.raises(WorkbenchError, match="importance"):
        ProgressiveConfig(importance="random")
    with pytest.raises(WorkbenchError, match="events"):
        ProgressiveConfig(events=0)
    with pytest.raises(WorkbenchError, match="end_fraction"):
        ProgressiveConfig(end_fraction=1.5)
