"""Recovery by distillation and checkpoints of structurally compressed models (tiny models)."""
from pathlib import Path

import pytest
import torch

from workbench.compress import compress
from workbench.compress.lowrank import LowRankLinear
from workbench.compress.distill import RecoverConfig, recover, split_plan
from workbench.errors import WorkbenchError
from workbench.models import load_checkpoint, model_fingerprint, save_checkpoint
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig

from toys import random_items

PRUNE = (CompressionPlan()
         .with_group("ffn", LayerConfig(prune=PruneConfig(amount=0.5, structure="neurons")))
         .with_group("attention", LayerConfig(prune=PruneConfig(amount=0.5, structure="heads"))))


#: Optimizer steps of the recovery tests. 15, not 40: the properties hold with a wide margin
#: (measured, seed 0: distance ratio after 10 / 15 steps 0.31 / 0.20 for the tiny Conformer and
#: 0.15 / 0.08 for the small Whisper vs the 0.7 asserted; QAT 0.50 after 10 vs the 0.8 asserted),
#: at ~40 % of the CPU time.
STEPS = 15


@torch.no_grad()
def _distance(student, teacher, items) -> float:
    """Mean squared difference of the last block's outputs over valid frames, relative to the
    teacher's (what layer-wise distillation minimises, at the deepest block)."""
    err, ref = 0.0, 0.0
    for it in items:
        x, lens = it.x[None], torch.tensor([it.frames])
        t, tl = teacher.encode_until(x, lens, len(teacher.blocks))
        s, _ = student.encode_until(x, lens, len(student.blocks))
        err += float((s - t).pow(2).sum())
        ref += float((t - t.mean()).pow(2).sum())
    return err / ref


@pytest.mark.parametrize("family", ["whisper_small", "tiny_conformer"])
def test_recovery_moves_the_student_towards_the_teacher(family, request):
    teacher = request.getfixturevalue(family)
    student = compress(teacher, PRUNE)
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.state_dict().items()}
    items, held_out = random_items(12), random_items(6, seed=1)
    result = recover(student, teacher, items, RecoverConfig(steps=STEPS, lr=3e-3, warmup=5,
                                                            max_batch_frames=600, ctc_weight=0.0),
                     progress=False)
    assert len(result.history) == STEPS
    assert _distance(result.model, teacher, held_out) < 0.7 * _distance(student, teacher, held_out)
    # Neither input changed; the front-end was frozen.
    assert all(torch.equal(before_t[k], v) for k, v in teacher.state_dict().items())
    assert all(torch.equal(before_s[k], v) for k, v in student.state_dict().items())
    new = result.model.state_dict()
    front = [k for k in new if not k.startswith(("blocks.", "ctc_head", "ln_post"))]
    assert front and all(torch.equal(new[k], before_s[k]) for k in front)
    changed = [k for k in new if k.startswith("blocks.") and not torch.equal(new[k], before_s[k])]
    assert len(changed) > len(new) // 2
    assert not result.model.training


def test_recovery_refuses_a_changed_front_end(whisper_small):
    student = compress(whisper_small, CompressionPlan().with_layer(
        "conv1", LayerConfig(quant=QuantConfig(weight_bits=4))))
    with pytest.raises(WorkbenchError, match="front-end"):
        recover(student, whisper_small, random_items(2), RecoverConfig(steps=1), progress=False)
    with pytest.raises(WorkbenchError, match="no training items"):
        recover(whisper_small, whisper_small, [], progress=False)


def test_split_plan_keeps_shapes_and_defers_quantization(whisper_small):
    plan = PRUNE.with_default(LayerConfig(quant=QuantConfig(weight_bits=8))).with_layer(
        "blocks.1.attn.out_proj", LayerConfig(energy=0.5))
    compressed = compress(whisper_small, plan)
    structure, rest = split_plan(plan, whisper_small, compressed)
    layer = compressed.get_submodule("blocks.1.attn.out_proj")
    if isinstance(layer, LowRankLinear):  # the energy setting became its explicit rank
        assert structure.layers["blocks.1.attn.out_proj"].rank == layer.rank
    assert all(c.quant is None and c.energy is None for c in structure.layers.values())
    assert all(c.quant is not None and c.prune is None for c in rest.layers.values())
    again = compress(whisper_small, structure)
    assert model_fingerprint(again) == model_fingerprint(compress(whisper_small, plan.with_default(
        LayerConfig())))


def test_structured_checkpoint_round_trip(whisper_small, tmp_path: Path):
    structure = PRUNE.with_layer("blocks.0.mlp.fc2", LayerConfig(rank=16))
    model = compress(whisper_small, structure)
    with torch.no_grad():  # weights unlike anything a fresh build would produce
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(model, tmp_path / "pruned.safetensors", structure=structure,
                           dtype=torch.float32)
    loaded = load_checkpoint(path)
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert loaded.blocks[0].attn.n_heads == 1
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    x = torch.randn(2, 80, 90)
    lens = torch.tensor([90, 70])
    torch.testing.assert_close(loaded(x, lens)[0], model(x, lens)[0], atol=0, rtol=0)
    # Without the structure the file does not fit the family's model, and says so.
    plain = tmp_path / "plain.safetensors"
    save_checkpoint(model, plain, dtype=torch.float32)
    with pytest.raises(WorkbenchError, match="mis-shaped"):
        load_checkpoint(plain)


def test_quantization_aware_recovery_repairs_low_bit_damage(whisper_small):
    """QAT: 3-bit weights everywhere hurt; training with the grid in the forward pass (latent
    weights updated through the rounding) brings the quantized model closer to the teacher."""
    teacher = whisper_small
    quant = CompressionPlan(default=LayerConfig(quant=QuantConfig(weight_bits=3)))
    items, held_out = random_items(12), random_items(6, seed=1)
    naive = compress(teacher, quant)
    result = recover(teacher, teacher, items, RecoverConfig(steps=STEPS, lr=2e-3, warmup=5,
                                                            max_batch_frames=600, ctc_weight=0.0),
                     progress=False, quant=quant)
    # The returned model holds latent weights (plain layers); the plan quantizes them again.
    assert not any(hasattr(m, "weight_bits") or hasattr(m, "parametrizations")
                   for m in result.model.modules())
    assert set(result.model.state_dict()) == set(teacher.state_dict())
    qat = compress(result.model, quant)
    assert _distance(qat, teacher, held_out) < 0.8 * _distance(naive, teacher, held_out)
    with pytest.raises(WorkbenchError, match="unquantized"):
        recover(naive, teacher, items, RecoverConfig(steps=1), progress=False, quant=quant)
