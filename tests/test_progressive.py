"""Progressive pruning while distilling (workbench.compress.progressive), on small models."""
from __future__ import annotations

import copy
import importlib

import pytest
import torch

from workbench.compress import compress
from workbench.compress import importance as imp
from workbench.compress.progressive import ProgressiveConfig, cubic_fraction, progressive_recover
from workbench.compress.progressive_units import GatedUnits
from workbench.compress.prune import count_to_remove
from workbench.compress.distill import RecoverConfig
from workbench.errors import PlanError, WorkbenchError
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
from workbench.size import size_of_compressed
from workbench.train import FitHooks

from toys import random_items

PLAN = (CompressionPlan()
        .with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
        .with_group("attention", LayerConfig(prune=PruneConfig(amount=0.5, structure="heads"))))


def _prune(amount: float, structure: str) -> LayerConfig:
    return LayerConfig(prune=PruneConfig(amount=amount, structure=structure))


#: Every structure in one plan, on the tiny Conformer: heads, neurons (ffn1 and ffn2), conv
#: channels, and unstructured masks both inside pruned modules (fc1 of the FFNs, the depthwise
#: conv: one-shot masks 30 % of what the cut leaves) and outside any (the CTC head).
MIXED = (CompressionPlan()
         .with_group("attention", _prune(0.5, "heads"))
         .with_group("ffn", _prune(0.5, "neurons"))
         .with_group("conv", _prune(0.25, "channels"))
         .with_layer("blocks.*.ffn1.fc1", _prune(0.3, "unstructured"))
         .with_layer("blocks.*.conv.depthwise", _prune(0.3, "unstructured"))
         .with_layer("ctc_head", _prune(0.6, "unstructured")))
UNSTRUCTURED = ("blocks.0.ffn1.fc1", "blocks.1.ffn1.fc1", "blocks.0.conv.depthwise",
                "blocks.1.conv.depthwise", "ctc_head")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(before[k], now[k]) for k in now)


class _Spy:
    """Wraps the recovery's training loop to see the model being trained (a real run)."""

    def __init__(self, monkeypatch) -> None:
        self.model = None
        module = importlib.import_module("workbench.compress.distill")
        real = module.fit

        def fit(model, *args, **kwargs):
            self.model = model
            return real(model, *args, **kwargs)
        monkeypatch.setattr(module, "fit", fit)


def test_cubic_schedule_is_front_loaded_and_ends_at_one() -> None:
    fr = [cubic_fraction(k, 8) for k in range(9)]
    assert fr[0] == 0 and fr[-1] == 1
    steps = [b - a for a, b in zip(fr, fr[1:])]
    assert all(x > y for x, y in zip(steps, steps[1:]))      # each event removes less
    assert cubic_fraction(1, 3) == pytest.approx(1 - (2 / 3) ** 3)


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "activation"])
def test_progressive_reaches_the_plan_shapes(whisper_small, importance) -> None:
    before = _state(whisper_small)
    result = progressive_recover(
        whisper_small, PLAN, random_items(10),
        RecoverConfig(steps=8, lr=2e-3, warmup=2, max_batch_frames=400, ctc_weight=0.0),
        ProgressiveConfig(importance=importance, events=3, end_fraction=0.75), progress=False)
    oneshot = compress(whisper_small, PLAN)
    shapes = {k: v.shape for k, v in result.model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in oneshot.state_dict().items()}
    assert [b.attn.n_heads for b in result.model.blocks] == [1, 1]
    assert len(result.history) == 8
    # The cubic schedule over 3/4 of 8 steps: events after steps 2, 4, 6. Per block, of 64
    # neurons: round(64 * 0.704) = 45, then round(64 * 0.963) = 62, then 64; the one head of
    # two goes at the first event (round(0.704) = 1). Two blocks.
    assert [(e["event"], e["step"]) for e in result.events] == [(1, 2), (2, 4), (3, 6)]
    assert [e["removed"] for e in result.events] == [2 * (45 + 1), 2 * 17, 2 * 2]
    assert _unchanged(whisper_small, before)
    x = torch.randn(1, 80, 90)
    with torch.no_grad():
        assert torch.isfinite(result.model(x, torch.tensor([90]))[0]).all()


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "activation"])
def test_each_importance_cuts_the_units_that_write_nothing(whisper_small, importance) -> None:
    """A toy where head 0 of block 0, the even FFN neurons of block 0 and a random half of
    blocks.1.attn.q_proj's weights are dead: their out_proj / fc2 columns are zero (the
    weights: zero). Zero columns write nothing, so their gate gets no gradient (taylor) and
    they put nothing into the residual stream (activation: mean |output| x column norm); their
    other weights are x 0.1 for magnitude, so their L2 norms are the lowest, and x 3 for the
    others, so only the zero columns make them the least important. Each method must cut
    exactly those (lr 1e-10: the toy stays)."""
    toy = copy.deepcopy(whisper_small)
    attn, mlp, q = toy.blocks[0].attn, toy.blocks[0].mlp, toy.blocks[1].attn.q_proj
    even = torch.arange(0, 128, 2)
    weak = torch.randperm(q.weight.numel(), generator=torch.Generator().manual_seed(0))[:2048]
    scale = 0.1 if importance == "magnitude" else 3.0
    with torch.no_grad():
        attn.out_proj.weight[:, :32] = 0.0
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[:32] *= scale
            if proj.bias is not None:
                proj.bias[:32] *= scale
        mlp.fc2.weight[:, even] = 0.0
        mlp.fc1.weight[even] *= scale
        mlp.fc1.bias[even] *= scale
        q.weight.view(-1)[weak] = 0.0
    plan = (CompressionPlan().with_layer("blocks.0.attn", _prune(0.5, "heads"))
            .with_layer("blocks.0.mlp", _prune(0.5, "neurons"))
            .with_layer("blocks.1.attn.q_proj", _prune(0.5, "unstructured")))
    result = progressive_recover(
        toy, plan, random_items(6),
        RecoverConfig(steps=4, lr=1e-10, warmup=0, max_batch_frames=400, ctc_weight=0.0),
        ProgressiveConfig(importance=importance, events=2, end_fraction=0.5), progress=False)
    out = result.model.blocks[0]
    torch.testing.assert_close(out.attn.out_proj.weight, attn.out_proj.weight[:, 32:],
                               atol=1e-5, rtol=0)                  # head 1 kept, head 0 cut
    kept = torch.cdist(out.mlp.fc1.weight.detach(), mlp.fc1.weight.detach()).argmin(dim=1)
    assert sorted(kept.tolist()) == list(range(1, 128, 2))
    mask = result.model.blocks[1].attn.q_proj.weight_mask.view(-1)
    assert not bool(mask[weak].any()) and int((~mask).sum()) == 2048


def test_a_masked_unit_is_exactly_a_removed_unit(whisper_small) -> None:
    model = copy.deepcopy(whisper_small)
    attn, ffn = model.blocks[0].attn, model.blocks[0].mlp
    heads = GatedUnits("blocks.0.attn", attn, "heads", 1)
    neurons = GatedUnits("blocks.0.mlp", ffn, "neurons", 40)
    heads.prune_to(1)
    neurons.prune_to(40)
    x = torch.randn(2, 80, 70)
    lengths = torch.tensor([70, 50])
    with torch.no_grad():
        masked = model(x, lengths)[0]
        heads.cut()
        neurons.cut()
        cut = model(x, lengths)[0]
    assert attn.n_heads == 1 and ffn.fc1.out_features == 128 - 40
    torch.testing.assert_close(cut, masked, atol=1e-5, rtol=1e-5)


def test_a_masked_channel_is_exactly_a_removed_channel(tiny_conformer) -> None:
    """The conv module's LayerNorm mixes channels: while masked it runs on the live ones."""
    model = copy.deepcopy(tiny_conformer)
    conv = model.blocks[1].conv
    channels = GatedUnits("blocks.1.conv", conv, "channels", 20)
    channels.prune_to(20)
    x = torch.randn(2, 80, 70)
    lengths = torch.tensor([70, 50])
    with torch.no_grad():
        masked = model(x, lengths)[0]
        channels.cut()
        cut = model(x, lengths)[0]
    assert isinstance(conv.norm, torch.nn.LayerNorm) and conv.norm.normalized_shape == (44,)
    assert conv.depthwise.groups == 44 and conv.pointwise1.out_channels == 88
    torch.testing.assert_close(cut, masked, atol=1e-5, rtol=1e-5)


def test_a_mixed_plan_ends_exactly_where_one_shot_does(tiny_conformer, monkeypatch) -> None:
    """Heads, neurons, channels and unstructured in one run: the one-shot shapes, masks of the
    one-shot sparsity, the same size(); masked weights stay zero from their event on."""
    spy = _Spy(monkeypatch)
    zeros_per_step: list[dict[str, torch.Tensor]] = []

    class Watch(FitHooks):
        def after_step(self, step: int) -> None:
            zeros_per_step.append({p: spy.model.get_submodule(p).weight.detach() == 0
                                   for p in UNSTRUCTURED})

    before = _state(tiny_conformer)
    result = progressive_recover(
        tiny_conformer, MIXED, random_items(8),
        RecoverConfig(steps=6, lr=2e-3, warmup=1, max_batch_frames=400, ctc_weight=0.0),
        ProgressiveConfig(importance="taylor", events=3, end_fraction=0.6), progress=False,
        hooks=Watch())
    assert _unchanged(tiny_conformer, before)
    oneshot = compress(tiny_conformer, MIXED)
    got, ref = result.model.state_dict(), oneshot.state_dict()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
    block = result.model.blocks[0]
    assert block.attn.n_heads == 2 and block.ffn1.fc1.out_features == 64
    assert block.conv.depthwise.in_channels == 48 and block.conv.norm.normalized_shape == (48,)
    for path in UNSTRUCTURED:
        layer = result.model.get_submodule(path)
        mask = layer.weight_mask
        amount = 0.6 if path == "ctc_head" else 0.3
        assert int((~mask).sum()) == count_to_remove(mask.numel(), amount, keep_one=False)
        assert int((~mask).sum()) == int((~oneshot.get_submodule(path).weight_mask).sum())
        assert bool((layer.weight[~mask] == 0).all())
    assert size_of_compressed(result.model, tiny_conformer).total_bytes == \
        size_of_compressed(oneshot, tiny_conformer).total_bytes
    # Through training: none before the first event (events at 0.2, 0.4, 0.6 of 6 steps:
    # after steps 2, 3, 4), some in every layer after it, and once zero, zero at every later
    # step.
    assert [e["step"] for e in result.events] == [2, 3, 4]
    assert not any(bool(z.any()) for z in zeros_per_step[0].values())
    assert all(bool(z.any()) for z in zeros_per_step[1].values())
    for earlier, later in zip(zeros_per_step, zeros_per_step[1:]):
        assert all(bool((later[p] | ~earlier[p]).all()) for p in UNSTRUCTURED)
    assert sum(e["masked"] for e in result.events) > 0
    x = torch.randn(2, 80, 90)
    with torch.no_grad():
        assert torch.isfinite(result.model(x, torch.tensor([90, 60]))[0]).all()


def test_importance_is_rescored_at_every_event(whisper_small, monkeypatch) -> None:
    """Between the two events, the 8 strongest live neurons of block 0 and the 100 largest
    weights of blocks.1.attn.q_proj are made near-zero: scores taken at the second event go
    for exactly those; scores kept from before would have kept them."""
    spy = _Spy(monkeypatch)
    teacher = whisper_small
    order = torch.argsort(imp.neuron_importance(teacher.blocks[0].mlp), stable=True)
    strongest = order[-8:]
    q = teacher.blocks[1].attn.q_proj.weight.detach()
    largest = torch.argsort(q.abs().flatten(), stable=True)[-100:]

    class Sabotage(FitHooks):
        def after_step(self, step: int) -> None:
            if step != 1:                                 # the first event was at step 1
                return
            mlp, attn = spy.model.blocks[0].mlp, spy.model.blocks[1].attn
            with torch.no_grad():
                mlp.fc1.weight[strongest] *= 1e-3
                mlp.fc1.bias[strongest] *= 1e-3
                mlp.fc2.weight[:, strongest] *= 1e-3
                attn.q_proj.parametrizations.weight.original.view(-1)[largest] = 1e-7

    plan = (CompressionPlan().with_group("ffn", _prune(0.5, "neurons"))
            .with_layer("blocks.1.attn.q_proj", _prune(0.5, "unstructured")))
    result = progressive_recover(
        teacher, plan, random_items(6),
        RecoverConfig(steps=4, lr=1e-10, warmup=0, max_batch_frames=400, ctc_weight=0.0),
        ProgressiveConfig(importance="magnitude", events=2, end_fraction=0.5), progress=False,
        hooks=Sabotage())
    assert [e["step"] for e in result.events] == [1, 2]
    # Block 0: the first event removed the 56 weakest of 128 (round(64 * 0.875)), the second
    # the 8 sabotaged ones, so the 64 kept are ranks 56..119 of the teacher's ranking (the
    # trained weights moved by ~1e-10: kept rows are found by their nearest teacher row).
    kept_rows = result.model.blocks[0].mlp.fc1.weight.detach()
    kept = torch.cdist(kept_rows, teacher.blocks[0].mlp.fc1.weight.detach()).argmin(dim=1)
    assert sorted(kept.tolist()) == sorted(order[56:120].tolist())
    mask = result.model.blocks[1].attn.q_proj.weight_mask
    assert not bool(mask.view(-1)[largest].any())
    assert int((~mask).sum()) == 64 * 64 // 2


def test_a_run_its_caller_stops_early_still_ends_at_the_plan_shapes(whisper_small) -> None:
    """should_stop() after step 1 of 8, before any event (the first is due at 2/8): the
    remaining events fire after training (step -1), so the result has the one-shot shapes."""
    class StopNow(FitHooks):
        def should_stop(self) -> bool:
            return True

    result = progressive_recover(
        whisper_small, PLAN, random_items(4),
        RecoverConfig(steps=8, lr=2e-3, warmup=0, max_batch_frames=400, ctc_weight=0.0),
        ProgressiveConfig(importance="magnitude", events=3, end_fraction=0.75), progress=False,
        hooks=StopNow())
    assert len(result.history) == 1
    assert [(e["event"], e["step"]) for e in result.events] == [(1, -1), (2, -1), (3, -1)]
    oneshot = compress(whisper_small, PLAN)
    assert {k: v.shape for k, v in result.model.state_dict().items()} == \
        {k: v.shape for k, v in oneshot.state_dict().items()}


def test_progressive_refuses_quantization_in_the_plan(whisper_small) -> None:
    plan = PLAN.with_default(LayerConfig(quant=QuantConfig(weight_bits=8)))
    with pytest.raises(PlanError, match="progressive pruning takes pruning only"):
        progressive_recover(whisper_small, plan, random_items(2), RecoverConfig(steps=1),
                            progress=False)


def test_progressive_refuses_low_rank_in_the_plan(whisper_small) -> None:
    plan = PLAN.with_layer("blocks.0.mlp.fc1", LayerConfig(rank=8))
    with pytest.raises(PlanError, match="factorize one-shot"):
        progressive_recover(whisper_small, plan, random_items(2), RecoverConfig(steps=1),
                            progress=False)


def test_progressive_refuses_a_plan_that_prunes_nothing(whisper_small) -> None:
    for plan in (CompressionPlan(), CompressionPlan().with_group("ffn", _prune(0.0, "neurons"))):
        with pytest.raises(PlanError, match="prunes nothing"):
            progressive_recover(whisper_small, plan, random_items(2), RecoverConfig(steps=1),
                                progress=False)


def test_progressive_refuses_to_prune_the_frozen_front_end(whisper_small) -> None:
    plan = CompressionPlan().with_layer("conv2", _prune(0.5, "unstructured"))
    with pytest.raises(PlanError, match=r"layers\['conv2'\]: part of the front-end"):
        progressive_recover(whisper_small, plan, random_items(2), RecoverConfig(steps=1),
                            progress=False)


def test_progressive_refuses_a_group_found_from_the_graph() -> None:
    from toys import torchaudio_conformer
    from workbench.byo import adapt
    model = adapt(torchaudio_conformer(layers=1))
    plan = CompressionPlan().with_group("ffn", _prune(0.5, "neurons"))
    with pytest.raises(PlanError, match="found from the recorded graph"):
        progressive_recover(model, plan, random_items(2), RecoverConfig(steps=1),
                            progress=False)


def test_progressive_refuses_channels_under_a_norm_that_mixes_them(tiny_conformer) -> None:
    model = copy.deepcopy(tiny_conformer)
    model.blocks[0].conv.norm = torch.nn.GroupNorm(4, 64)
    plan = CompressionPlan().with_layer("blocks.0.conv", _prune(0.5, "channels"))
    with pytest.raises(PlanError, match="GroupNorm"):
        progressive_recover(model, plan, random_items(2), RecoverConfig(steps=1),
                            progress=False)


def test_progressive_config_checks_its_fields(whisper_small) -> None:
    with pytest.raises(WorkbenchError, match="importance"):
        ProgressiveConfig(importance="random")
    with pytest.raises(WorkbenchError, match="events"):
        ProgressiveConfig(events=0)
    with pytest.raises(WorkbenchError, match="end_fraction"):
        ProgressiveConfig(end_fraction=1.5)
    with pytest.raises(WorkbenchError, match="end_fraction"):
        ProgressiveConfig(end_fraction=True)
    with pytest.raises(WorkbenchError, match="expected a ProgressiveConfig"):
        progressive_recover(whisper_small, PLAN, random_items(2), RecoverConfig(steps=1),
                            {"events": 2}, progress=False)
