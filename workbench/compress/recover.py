"""Recovery training: a compressed model learns back what compression took, from the original.

    recover(student, teacher, items, config) -> Recovered(model, history)   (inputs unchanged)

Knowledge distillation in the layer-wise form that suits structured pruning of a transformer
encoder (heads / FFN neurons removed, d_model kept): each student block's output is pulled
towards the teacher block's output, and the student's CTC posteriors towards the teacher's.

    loss = hidden_weight * mean_k MSE(h_s^k, h_t^k) / Var(h_t^k)     (valid frames only)
         + kd_weight     * KL(p_t || p_s) per valid frame             (CTC posteriors, T = 1)
         + ctc_weight    * CTC(labels)                                 (when items carry labels)

Hidden-state matching follows TinyBERT (Jiao et al. 2020, arXiv:1909.10351) and DistilHuBERT
(Chang et al. 2022, arXiv:2110.01900) for speech; normalising by the teacher's variance keeps
blocks with large activations from dominating. Only the student's blocks, final norm and head
train; its front-end stays frozen (compression plans rarely touch it, and it is cheap to keep).

Items are log-mel features with labels (`workbench.train.Item`, time_last=True). The teacher
runs under no_grad each step (~1/3 of the student's step), so nothing big is cached.

Quantization-aware training (`quant=` a plan with weight bits): during recovery the trainable
layers see their weights on the plan's b-bit grid in the forward pass, while gradients update
full-precision latent weights through the rounding (straight-through estimator, Bengio et al.
2013, arXiv:1308.3432; as in Jacob et al. 2018, arXiv:1712.05877). The returned model holds the
latent weights; quantize it with the same plan (`compress`, or `workbench apply`) — the grid is
computed from them exactly as in training. The front-end is frozen and not quantized in training.
"""
from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from workbench.compress.quantize import fake_quant_weight
from workbench.errors import WorkbenchError
from workbench.models.layers import lengths_to_pad_mask
from workbench.train import Item, collate, lr_at, make_batches
from workbench.compress.resolution import resolve
from workbench.compress.techniques import runtime_only, structure_only


@dataclass(frozen=True)
class RecoverConfig:
    steps: int = 600
    lr: float = 5e-4
    warmup: int = 40
    weight_decay: float = 0.01
    max_batch_frames: int = 12_000   # padded log-mel frames (100 Hz) per batch
    hidden_weight: float = 1.0
    kd_weight: float = 1.0
    ctc_weight: float = 0.2
    grad_clip: float = 1.0
    max_minutes: float | None = None  # stop early when the wall-clock budget is spent
    seed: int = 0

    def __post_init__(self) -> None:
        import math
        ints = {"steps": 1, "warmup": 0, "max_batch_frames": 100, "seed": 0}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise WorkbenchError(f"RecoverConfig.{name}: an integer >= {low}, got "
                                     f"{value!r:.30}.")
        floats = ("lr", "weight_decay", "hidden_weight", "kd_weight", "ctc_weight", "grad_clip")
        for name in floats + (("max_minutes",) if self.max_minutes is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value) or value < 0:
                raise WorkbenchError(f"RecoverConfig.{name}: a finite number >= 0, got "
                                     f"{value!r:.30}.")
        if not self.lr > 0 or (self.max_minutes is not None and not self.max_minutes > 0):
            raise WorkbenchError("RecoverConfig: lr and max_minutes must be > 0.")


@dataclass(frozen=True)
class Recovered:
    model: torch.nn.Module
    history: tuple[dict, ...]   # per step: loss terms, lr, seconds


class FakeQuantSTE(torch.nn.Module):
    """A weight parametrization: forward sees the b-bit grid, backward passes straight through."""

    def __init__(self, bits: int, granularity: str, symmetric: bool) -> None:
        super().__init__()
        self.bits, self.granularity, self.symmetric = bits, granularity, symmetric

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        grid, _, _ = fake_quant_weight(weight, self.bits, self.granularity, self.symmetric)
        return weight + (grid.to(weight.dtype) - weight).detach()


def _add_fake_quant(model: torch.nn.Module, quant) -> list[torch.nn.Module]:
    """Register FakeQuantSTE on the weight of every trainable layer `quant` gives weight bits."""
    from torch.nn.utils import parametrize

    from workbench.compress.lowrank import LowRankLinear
    done = []
    for path, cfg in resolve(quant, model, force=True).items():
        if cfg.quant is None or cfg.quant.weight_bits is None or _front_end(model, path + ".w"):
            continue
        layer = model.get_submodule(path)
        for target in ((layer.down, layer.up) if isinstance(layer, LowRankLinear) else (layer,)):
            parametrize.register_parametrization(target, "weight", FakeQuantSTE(
                cfg.quant.weight_bits, cfg.quant.granularity, cfg.quant.symmetric))
            done.append(target)
    return done


def _front_end(model: torch.nn.Module, name: str) -> bool:
    """True for a parameter / buffer name of the front-end (frozen during recovery)."""
    from workbench.models.base import role_of
    if name.startswith("blocks."):
        return False
    name = name.replace(".parametrizations.weight.original", ".weight")
    return role_of(model, name.rsplit(".", 1)[0] if "." in name else "") == "front-end"


def _check_pair(student, teacher) -> None:
    if len(student.blocks) != len(teacher.blocks):
        raise WorkbenchError(f"recover: the student has {len(student.blocks)} blocks, the teacher "
                             f"{len(teacher.blocks)}; layer-wise distillation needs the same depth "
                             f"(prune heads / neurons, not whole blocks).")
    s_stem = {k: v for k, v in student.state_dict().items() if _front_end(student, k)}
    t_stem = teacher.state_dict()
    changed = [k for k, v in s_stem.items() if k not in t_stem or t_stem[k].shape != v.shape
               or not torch.equal(t_stem[k], v)]
    if changed:
        raise WorkbenchError(f"recover: the student's front-end differs from the teacher's "
                             f"({changed[:3]}); recovery trains blocks and head only, so compress "
                             f"the front-end after recovery, or not at all.")


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T, ...) over valid (B, T) positions and trailing dims."""
    w = valid.to(x.dtype)
    while w.dim() < x.dim():
        w = w.unsqueeze(-1)
    return (x * w).sum() / (w.sum() * (x[0, 0].numel())).clamp_min(1.0)


def recover(student: torch.nn.Module, teacher: torch.nn.Module, items: Sequence[Item],
            config: RecoverConfig | None = None, progress: bool = True,
            log: Callable[[dict], None] | None = None, quant=None) -> Recovered:
    """Train a copy of `student` (a compressed `teacher`) to reproduce `teacher`.

    Neither argument is modified. Both are CTC models with stem / blocks / head (workbench
    models). `quant`: a plan whose weight bits are trained for (QAT, see the module docstring);
    `student` itself must then be unquantized. Returns the trained copy in eval mode (latent
    full-precision weights) and the per-step loss log.
    """
    from workbench.checks import check_model
    check_model(student, "recover", "student")
    check_model(teacher, "recover", "teacher")
    if config is not None and not isinstance(config, RecoverConfig):
        raise WorkbenchError(f"recover(config=...): expected a RecoverConfig, got "
                             f"{type(config).__name__}.")
    cfg = config or RecoverConfig()
    if not items:
        raise WorkbenchError("recover: no training items.")
    if any(not it.time_last for it in items):
        raise WorkbenchError("recover: items must be log-mel features (time_last=True).")
    if quant is not None and any(hasattr(m, "weight_bits") for m in student.modules()):
        raise WorkbenchError("recover: with quant= (QAT) the student must be unquantized: "
                             "compress it with the plan's structure only (see split_plan).")
    _check_pair(student, teacher)
    model = copy.deepcopy(student)
    fake_quantized = _add_fake_quant(model, quant) if quant is not None else []
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not _front_end(model, name))
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=cfg.lr)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model.train()
    history: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc="recover", disable=not progress, leave=False)
    batches: list[list[int]] = []
    step = 0
    while step < cfg.steps:
        if not batches:
            batches = make_batches(items, cfg.max_batch_frames, rng)
        x, lengths, labels, label_lengths = collate([items[i] for i in batches.pop()], True)
        with torch.no_grad():
            h, hl = teacher.stem(x, lengths)
            valid = ~lengths_to_pad_mask(hl, h.shape[1])  # True on real frames
            pad = ~valid
            targets, t = [], h
            for block in teacher.blocks:
                t = block(t, pad)
                targets.append(t)
            t_logp = teacher.head(t, hl).log_softmax(-1)
        s = h
        hidden = h.new_zeros(())
        for block, target in zip(model.blocks, targets):
            s = block(s, pad)
            var = _masked_mean((target - _masked_mean(target, valid)) ** 2, valid).clamp_min(1e-6)
            hidden = hidden + _masked_mean((s - target) ** 2, valid) / var
        hidden = hidden / len(targets)
        s_logp = model.head(s, hl).log_softmax(-1)
        kd = _masked_mean((t_logp.exp() * (t_logp - s_logp)).sum(-1, keepdim=True), valid)
        ctc = (F.ctc_loss(s_logp.transpose(0, 1), labels, hl, label_lengths, blank=0,
                          reduction="mean", zero_infinity=True)
               if cfg.ctc_weight > 0 and labels.numel() else h.new_zeros(()))
        loss = cfg.hidden_weight * hidden + cfg.kd_weight * kd + cfg.ctc_weight * ctc
        lr = lr_at(step, cfg)  # linear warm-up, cosine decay (same schedule as training)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        entry = {"step": step, "loss": loss.item(), "hidden": hidden.item(), "kd": kd.item(),
                 "ctc": ctc.item(), "lr": lr, "seconds": round(time.perf_counter() - start, 2)}
        history.append(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{entry['loss']:.3f}", kd=f"{entry['kd']:.3f}")
        if log is not None:
            log(entry)
        if cfg.max_minutes is not None and (time.perf_counter() - start) / 60 > cfg.max_minutes:
            break
    bar.close()
    from torch.nn.utils import parametrize
    for layer in fake_quantized:  # keep the latent weights; the plan quantizes them again
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return Recovered(model, tuple(history))


def split_plan(plan, teacher: torch.nn.Module, compressed: torch.nn.Module):
    """(structure, rest) of `plan` resolved on `teacher`: `structure` holds the entries that
    change shapes (pruning; low rank with the rank `compressed` actually got, so an energy
    setting becomes an explicit rank) as explicit per-layer entries; `rest` holds the
    quantization entries, to apply after recovery (export time). Layers kept dense are left out.
    """
    from workbench.compress.lowrank import LowRankLinear
    from workbench.plan import CompressionPlan, LayerConfig

    structure: dict[str, LayerConfig] = {}
    rest: dict[str, LayerConfig] = {}
    for path, cfg in resolve(plan, teacher).items():
        rank = None
        if cfg.sets("low_rank"):
            layer = compressed.get_submodule(path)
            rank = layer.rank if isinstance(layer, LowRankLinear) else None
        entry = LayerConfig(**{**structure_only(cfg).values(), "rank": rank, "energy": None})
        if not entry.is_empty():
            structure[path] = entry
        runtime = runtime_only(cfg)             # what the runtime applies (quantization)
        if not runtime.is_empty():
            rest[path] = runtime
    return CompressionPlan(layers=structure), CompressionPlan(layers=rest)
