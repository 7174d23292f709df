"""Recovery training: a compressed model learns back what compression took, from the original.
(This file is the training; workbench/recovery.py is the `workbench recover` command around it:
plan splitting, data, the result cache and the checkpoint. Named distill.py, was recover.py.)

    recover(student, teacher, items, config) -> Recovered(model, history)   (inputs unchanged)

Knowledge distillation in the layer-wise form that suits structured pruning of a transformer
encoder (heads / FFN neurons removed, d_model kept): each student block's output is pulled
towards the teacher block's output, and the student's CTC posteriors towards the teacher's.

    loss = hidden_weight * mean_k MSE(h_s^k, h_t^k) / Var(h_t^k)     (valid frames only)
         + kd_weight     * KL(p_t || p_s) per valid frame             (CTC posteriors, T = 1)
         + ctc_weight    * CTC(labels)                                 (when items carry labels)

Recipe knobs beyond the loss weights (searched by workbench.search.recipe): `block_weights`
weights the hidden term per block (mean 1: which blocks get the most of the loss), and `train`
picks what trains — "all" (blocks, final norm, head), "changed_blocks" (the blocks the
compression changed), "changed_layers" (only the layers it changed) or "changed_layers+norms".
With the changed_* choices, leading blocks that did not change are frozen copies of the
teacher's, so a step starts at the first changed block from the teacher's cached output there
(fp16, like the cached stem) instead of running them: train only what changed, and skip it.

Hidden-state matching follows TinyBERT (Jiao et al. 2020, arXiv:1909.10351) and DistilHuBERT
(Chang et al. 2022, arXiv:2110.01900) for speech; normalising by the teacher's variance keeps
blocks with large activations from dominating. Only the student's blocks, final norm and head
train; its front-end stays frozen (compression plans rarely touch it, and it is cheap to keep).

Items are log-mel features with labels (`workbench.train.Item`, time_last=True). The teacher's
outputs are cached per item in fp16 (`Distiller`), so after the first epoch a step runs the
student only. The training loop is workbench.train.fit, shared with training and progressive
pruning (workbench.compress.progressive).

Quantization-aware training (`quant=` a plan with weight bits): during recovery the trainable
layers see their weights on the plan's b-bit grid in the forward pass, while gradients update
full-precision latent weights through the rounding (straight-through estimator, Bengio et al.
2013, arXiv:1308.3432; as in Jacob et al. 2018, arXiv:1712.05877). The returned model holds the
latent weights; quantize it with the same plan (`compress`, or `workbench apply`) — the grid is
computed from them exactly as in training. The front-end is frozen and not quantized in training.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from workbench.compress.quantize import fake_quant_weight
from workbench.compress.trainable import changed_parameters, first_trained_block
from workbench.errors import WorkbenchError
from workbench.models.layers import lengths_to_pad_mask
from workbench.train import FitHooks, Item, collate, fit
from workbench.compress.resolution import resolve
from workbench.compress.techniques import runtime_only, structure_only, techniques
from workbench.checks import check_model
from workbench.compress.lowrank import LowRankLinear
from workbench.models.base import role_of
from workbench.plan import CompressionPlan, LayerConfig


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
    train: str = "all"                       # what trains: one of TRAIN_CHOICES (module docstring)
    block_weights: tuple[float, ...] | None = None  # hidden term per block (None: all equal)

    def __post_init__(self) -> None:
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
        if self.train not in TRAIN_CHOICES:
            raise WorkbenchError(f"RecoverConfig.train: one of {', '.join(TRAIN_CHOICES)}, got "
                                 f"{self.train!r:.40}.")
        if self.block_weights is not None:
            w = self.block_weights
            if not isinstance(w, tuple) or not w or any(
                    isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
                    or v < 0 for v in w) or not sum(w) > 0:
                raise WorkbenchError(f"RecoverConfig.block_weights: a tuple of finite numbers "
                                     f">= 0 (one per block, not all 0), or None; got {w!r:.60}.")


#: RecoverConfig.train: what recovery trains (module docstring).
TRAIN_CHOICES = ("all", "changed_blocks", "changed_layers", "changed_layers+norms")


@dataclass(frozen=True)
class Recovered:
    model: torch.nn.Module
    history: tuple[dict, ...]   # per step: loss terms, lr, seconds
    events: tuple[dict, ...] = ()  # progressive pruning: one entry per pruning event


class FakeQuantSTE(torch.nn.Module):
    """A weight parametrization: forward sees the b-bit grid, backward passes straight through."""

    def __init__(self, bits: int, granularity: str, symmetric: bool) -> None:
        super().__init__()
        self.bits, self.granularity, self.symmetric = bits, granularity, symmetric

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        grid, _, _ = fake_quant_weight(weight, self.bits, self.granularity, self.symmetric)
        return weight + (grid.to(weight.dtype) - weight).detach()


def _add_fake_quant(model: torch.nn.Module, quant) -> list[torch.nn.Module]:
    """Register FakeQuantSTE on the weight of every trainable layer `quant` gives weight bits.
    A layer a technique rebuilt from Linears (low rank: down / up; grouped FFN: parts.G) has
    each of them fake-quantized with the layer's setting (the technique's `weight_parts`, as
    compress quantizes it)."""
    done = []
    for path, cfg in resolve(quant, model, force=True).items():
        if cfg.quant is None or cfg.quant.weight_bits is None or _front_end(model, path + ".w"):
            continue
        layer = model.get_submodule(path)
        parts = next((found for t in techniques() if t.weight_parts is not None
                      for found in [t.weight_parts(layer)] if found is not None), None)
        for target in (parts.values() if parts is not None else (layer,)):
            parametrize.register_parametrization(target, "weight", FakeQuantSTE(
                cfg.quant.weight_bits, cfg.quant.granularity, cfg.quant.symmetric))
            done.append(target)
    return done


def _front_end(model: torch.nn.Module, name: str) -> bool:
    """True for a parameter / buffer name of the front-end (frozen during recovery)."""
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


class Distiller:
    """The distillation loss of one (student, teacher, items) recovery, with the teacher's side
    cached per item: its stem output (the student shares the frozen stem), every block output
    and its CTC log-posteriors, in fp16, computed the first time an item is batched and reused
    afterwards (recovery sees each item ~10x; the teacher's forward is ~1/3 of a student step).
    The cache stops growing at `cache_mb`; items beyond it are recomputed every time.
    `with_config(cfg)` gives the same teacher and items with another recipe's loss weights,
    sharing this cache (a recipe search runs many recoveries on one teacher and corpus).

    Shapes per item: stem (T', D), blocks k x (T', D), log-posteriors (T', vocab).
    """

    def __init__(self, teacher: torch.nn.Module, items: Sequence[Item], cfg: RecoverConfig,
                 cache_mb: float = 1500.0) -> None:
        self.teacher, self.items, self.cfg = teacher, items, cfg
        self.cache: dict[int, tuple[torch.Tensor, ...]] = {}
        self._bytes = [0, int(cache_mb * 1e6)]    # [used, limit], shared with with_config copies
        self.start = 0     # first block the student runs (earlier ones: the teacher's cache)

    def with_config(self, cfg: RecoverConfig) -> Distiller:
        other = copy.copy(self)                   # shares teacher, items, cache and its budget
        other.cfg, other.start = cfg, 0
        return other

    @property
    def cache_bytes(self) -> int:
        return self._bytes[0]

    def warm(self, indices: Sequence[int]) -> None:
        """Compute (and cache, within the limit) the teacher's outputs of these items now."""
        self._teacher(list(indices))

    @torch.no_grad()
    def _teacher(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        todo = [i for i in indices if i not in self.cache]
        fresh: dict[int, tuple[torch.Tensor, ...]] = {}
        if todo:
            x, lengths, _, _ = collate([self.items[i] for i in todo], True)
            h, hl = self.teacher.stem(x, lengths)
            pad = lengths_to_pad_mask(hl, h.shape[1])
            outs, t = [], h
            for block in self.teacher.blocks:
                t = block(t, pad)
                outs.append(t)
            logp = self.teacher.head(t, hl).log_softmax(-1)
            for j, i in enumerate(todo):
                n = int(hl[j])
                entry = tuple(a[j, :n].to(torch.float16).clone() for a in (h, *outs, logp))
                fresh[i] = entry
                size = sum(a.numel() * 2 for a in entry)
                if self._bytes[0] + size <= self._bytes[1]:
                    self.cache[i] = entry
                    self._bytes[0] += size
        return [self.cache[i] if i in self.cache else fresh[i] for i in indices]

    def loss(self, model: torch.nn.Module, indices: list[int]) -> dict[str, torch.Tensor]:
        """The recovery loss of one batch (module docstring) for the student `model`."""
        cfg = self.cfg
        cached = self._teacher(indices)
        lengths = torch.tensor([c[0].shape[0] for c in cached])
        t_max = int(lengths.max())

        def pad(k: int) -> torch.Tensor:
            out = torch.zeros(len(cached), t_max, cached[0][k].shape[-1])
            for j, c in enumerate(cached):
                out[j, : c[k].shape[0]] = c[k].float()
            return out

        n_blocks = len(cached[0]) - 2
        h = pad(0)
        targets = [pad(1 + k) for k in range(n_blocks)]
        t_logp = pad(n_blocks + 1)
        valid = ~lengths_to_pad_mask(lengths, t_max)
        pad_mask = ~valid
        # Blocks before self.start are frozen, unchanged copies of the teacher's: their output
        # is the teacher's (cached), and their hidden term is 0.
        s = targets[self.start - 1] if self.start > 0 else h
        weights = cfg.block_weights or (1.0,) * n_blocks
        if len(weights) != n_blocks:
            raise WorkbenchError(f"RecoverConfig.block_weights: {len(weights)} weights for a "
                                 f"model of {n_blocks} blocks; give one per block.")
        hidden = h.new_zeros(())
        for k in range(self.start, n_blocks):
            s = model.blocks[k](s, pad_mask)
            target = targets[k]
            var = _masked_mean((target - _masked_mean(target, valid)) ** 2, valid).clamp_min(1e-6)
            hidden = hidden + weights[k] * _masked_mean((s - target) ** 2, valid) / var
        hidden = hidden / sum(weights)
        s_logp = model.head(s, lengths).log_softmax(-1)
        kd = _masked_mean((t_logp.exp() * (t_logp - s_logp)).sum(-1, keepdim=True), valid)
        ctc = h.new_zeros(())
        if cfg.ctc_weight > 0:
            labels = torch.cat([self.items[i].labels for i in indices])
            if labels.numel():
                label_lengths = torch.tensor([len(self.items[i].labels) for i in indices])
                ctc = F.ctc_loss(s_logp.transpose(0, 1), labels, lengths, label_lengths,
                                 blank=0, reduction="mean", zero_infinity=True)
        loss = cfg.hidden_weight * hidden + cfg.kd_weight * kd + cfg.ctc_weight * ctc
        return {"loss": loss, "hidden": hidden.detach(), "kd": kd.detach(), "ctc": ctc.detach()}


def check_recovery_inputs(student, teacher, items, config) -> RecoverConfig:
    """The checks every recovery makes before training (clear errors); returns the config."""
    check_model(student, "recover", "student")
    check_model(teacher, "recover", "teacher")
    if config is not None and not isinstance(config, RecoverConfig):
        raise WorkbenchError(f"recover(config=...): expected a RecoverConfig, got "
                             f"{type(config).__name__}.")
    if not items:
        raise WorkbenchError("recover: no training items.")
    if any(not it.time_last for it in items):
        raise WorkbenchError("recover: items must be log-mel features (time_last=True).")
    cfg = config or RecoverConfig()
    if cfg.train != "all" and student is teacher:
        raise WorkbenchError(f"RecoverConfig.train={cfg.train!r}: only for the one-shot recovery "
                             f"of a compressed student (progressive pruning and QAT without "
                             f"structure start from the teacher itself: nothing has changed "
                             f"yet); use train='all'.")
    return cfg


def frozen_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def trainable_params(model: torch.nn.Module, teacher: torch.nn.Module | None = None,
                     train: str = "all") -> list[torch.nn.Parameter]:
    """What trains (RecoverConfig.train, module docstring); sets requires_grad. "all":
    everything but the front-end; the changed_* choices compare `model` with `teacher`."""
    chosen = None if train == "all" else changed_parameters(model, teacher, train)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not _front_end(model, name) and (chosen is None or name in chosen))
        if p.requires_grad:
            params.append(p)
    return params


def recover(student: torch.nn.Module, teacher: torch.nn.Module, items: Sequence[Item],
            config: RecoverConfig | None = None, progress: bool = True,
            log: Callable[[dict], None] | None = None, quant=None,
            hooks: FitHooks | None = None, distiller: Distiller | None = None) -> Recovered:
    """Train a copy of `student` (a compressed `teacher`) to reproduce `teacher`.

    Neither argument is modified. Both are CTC models with stem / blocks / head (workbench
    models). `quant`: a plan whose weight bits are trained for (QAT, see the module docstring);
    `student` itself must then be unquantized. Returns the trained copy in eval mode (latent
    full-precision weights) and the per-step loss log. The loop is workbench.train.fit
    (`hooks`: its callbacks, e.g. a cancel check). `distiller`: a Distiller of this same
    teacher and `items` whose teacher-output cache to reuse (its loss weights are replaced by
    `config`'s).
    """
    cfg = check_recovery_inputs(student, teacher, items, config)
    if quant is not None and any(hasattr(m, "weight_bits") for m in student.modules()):
        raise WorkbenchError("recover: with quant= (QAT) the student must be unquantized: "
                             "compress it with the plan's structure only (see split_plan).")
    _check_pair(student, teacher)
    model = copy.deepcopy(student)
    fake_quantized = _add_fake_quant(model, quant) if quant is not None else []
    history = distill(model, teacher, items, cfg, desc="recover", progress=progress, log=log,
                      hooks=hooks, distiller=distiller)
    for layer in fake_quantized:  # keep the latent weights; the plan quantizes them again
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    return finish_recovery(model, history)


def distill(model: torch.nn.Module, teacher: torch.nn.Module, items: Sequence[Item],
            cfg: RecoverConfig, *, desc: str, progress: bool,
            log: Callable[[dict], None] | None, hooks: FitHooks | None,
            distiller: Distiller | None = None) -> list[dict]:
    """Train `model` in place towards `teacher` with the recovery loss (`Distiller`: teacher
    outputs cached, front-end frozen, cfg.train choosing what trains) in workbench.train.fit;
    returns the per-step log. The one training setup of recovery, QAT and progressive pruning.
    `distiller`: one of this teacher and `items` whose cache to reuse."""
    if distiller is not None and distiller.items is not items:
        raise WorkbenchError("recover(distiller=...): that Distiller was built on other items; "
                             "its cached teacher outputs would not match.")
    distiller = (distiller.with_config(cfg) if distiller is not None
                 else Distiller(frozen_teacher(teacher), items, cfg))
    params = trainable_params(model, teacher, cfg.train)
    # Leading blocks nothing trains in are the teacher's: start from its cached output there.
    distiller.start = 0 if cfg.train == "all" else first_trained_block(model)
    torch.manual_seed(cfg.seed)
    return fit(model, params, len(items), cfg, lambda idx, step: distiller.loss(model, idx),
               frames=[it.frames for it in items], desc=desc, progress=progress, log=log,
               hooks=hooks)


def finish_recovery(model: torch.nn.Module, history: Sequence[dict],
                    events: Sequence[dict] = ()) -> Recovered:
    """What every recovery returns: the trained copy in eval mode with all its parameters
    trainable again (training froze the front-end; a caller may fine-tune or take gradients
    next), and its logs."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return Recovered(model, tuple(history), tuple(events))


def split_plan(plan, teacher: torch.nn.Module, compressed: torch.nn.Module | None):
    """(structure, rest) of `plan` resolved on `teacher`: `structure` holds the entries that
    change shapes (pruning; low rank with the rank `compressed` actually got, so an energy
    setting becomes an explicit rank; with `compressed` None energy settings stay as given)
    as explicit per-layer entries; `rest` holds the quantization entries, to apply after
    recovery (export time). Layers kept dense are left out.
    """
    structure: dict[str, LayerConfig] = {}
    rest: dict[str, LayerConfig] = {}
    for path, cfg in resolve(plan, teacher).items():
        entry = structure_only(cfg)
        if compressed is not None and cfg.sets("low_rank"):
            layer = compressed.get_submodule(path)
            rank = layer.rank if isinstance(layer, LowRankLinear) else None
            entry = LayerConfig(**{**entry.values(), "rank": rank, "energy": None})
        if not entry.is_empty():
            structure[path] = entry
        runtime = runtime_only(cfg)             # what the runtime applies (quantization)
        if not runtime.is_empty():
            rest[path] = runtime
    return CompressionPlan(layers=structure), CompressionPlan(layers=rest)
